//! The example three-tower bundle: the sizes `docs/DESIGN.md` ("Model
//! bundle contract") uses, with seeded random weights. `vstore-tool demo`,
//! the benchmarks and the examples all score with it, so it is written
//! once, here.

/// A three-tower bundle of the example sizes, generated on demand:
///
/// - cross inputs `log1p(ctr_1d)` (1), bucketized `impressions_7d` through
///   a 4-wide table (4), `category` through an 8-wide table (8), the user's
///   `user_stats` (8) and `user_category_ctr` looked up by `category` (1):
///   22 values → 64 → 32 (relu);
/// - upper network: user vector (64) + item vector (64) + cross (32) = 160
///   → 256 → 128 (relu);
/// - heads `click` (sigmoid, trained with 10% negative sampling), `like`
///   (sigmoid), `watch_time` (exp); weighted-sum fusion 1.0 / 0.5 / 0.01.
///
/// Weights are He-initialised (normal, scaled by `sqrt(2 / fan_in) / 2`)
/// from a fixed seed, so the same parameters give the same bytes.
///
/// ```
/// use vstore::{Dtype, ExampleBundle, Model, Schema};
/// let (json, weights) = ExampleBundle::new("prerank", "v1").files();
/// let schema = Schema::new()
///     .embedding("prerank", "v1", ExampleBundle::DIM as u32, Dtype::F16)
///     .categorical("category", 0)
///     .stat("ctr_1d", 0.0)
///     .stat("impressions_7d", 0.0);
/// let model = Model::load(&json, &weights, &schema)?;
/// assert_eq!(model.head_names(), ["click", "like", "watch_time"]);
/// # Ok::<(), vstore::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ExampleBundle {
    /// The embedding space the bundle scores (`space` of `model.json`).
    pub space: String,
    /// The embedding version (`version` of `model.json`).
    pub version: String,
    /// Rows of the `category` table: category codes below this have their
    /// own row (codes at or above it are outside the vocabulary).
    pub categories: u32,
    /// Bucket boundaries of `impressions_7d` (three, so four buckets).
    pub impression_buckets: [f32; 3],
}

impl ExampleBundle {
    /// User and item vector dimension of the example bundle.
    pub const DIM: usize = 64;

    /// The example bundle for `space@version`, with 200 categories and
    /// impression buckets at 100, 1,000 and 10,000.
    pub fn new(space: &str, version: &str) -> ExampleBundle {
        ExampleBundle {
            space: space.to_string(),
            version: version.to_string(),
            categories: 200,
            impression_buckets: [100.0, 1000.0, 10000.0],
        }
    }

    /// The bundle's two files: (`model.json`, `weights.safetensors`).
    pub fn files(&self) -> (Vec<u8>, Vec<u8>) {
        (self.json().into_bytes(), self.weights())
    }

    fn json(&self) -> String {
        let (space, version, dim) = (&self.space, &self.version, Self::DIM);
        let buckets = self
            .impression_buckets
            .iter()
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            r#"{{
  "format": "vstore.three_tower.v1",
  "space": "{space}", "version": "{version}",
  "user_dim": {dim}, "item_dim": {dim},
  "cross": {{
    "inputs": [
      {{"kind": "item_numeric", "column": "ctr_1d", "transform": "log1p"}},
      {{"kind": "item_numeric", "column": "impressions_7d",
       "transform": {{"bucketize": [{buckets}]}}, "embedding": "emb.imp_bucket"}},
      {{"kind": "item_categorical", "column": "category", "embedding": "emb.category"}},
      {{"kind": "user_dense", "name": "user_stats", "dim": 8}},
      {{"kind": "user_by_item", "name": "user_category_ctr", "column": "category",
       "dim": 1, "default": [0.0]}}
    ],
    "layers": [
      {{"weight": "cross.0.weight", "bias": "cross.0.bias", "activation": "relu"}},
      {{"weight": "cross.2.weight", "bias": "cross.2.bias", "activation": "relu"}}
    ]
  }},
  "upper": {{
    "layers": [
      {{"weight": "upper.0.weight", "bias": "upper.0.bias", "activation": "relu"}},
      {{"weight": "upper.2.weight", "bias": "upper.2.bias", "activation": "relu"}}
    ]
  }},
  "heads": [
    {{"name": "click", "weight": "heads.click.weight", "bias": "heads.click.bias",
     "activation": "sigmoid", "neg_sampling_rate": 0.1}},
    {{"name": "like", "weight": "heads.like.weight", "bias": "heads.like.bias",
     "activation": "sigmoid"}},
    {{"name": "watch_time", "weight": "heads.wt.weight", "bias": "heads.wt.bias",
     "activation": "exp"}}
  ],
  "fusion": {{"kind": "weighted_sum", "weights": {{"click": 1.0, "like": 0.5, "watch_time": 0.01}}}}
}}
"#
        )
    }

    /// An item-tower-only bundle (`vstore.item_tower.v1`) for the same
    /// `space@version`: the profile columns `category` (through a 16-wide
    /// table of [`ExampleBundle::categories`] rows), `brand` (an 8-wide
    /// table of 5,000 rows) and `price` (`log1p`, and bucketized at 10,
    /// 100 and 1,000 through a 4-wide table): 29 values → 256 → 128 (relu)
    /// → 64 (identity), 96,768 FLOP per item. Seeded weights, like the
    /// three-tower bundle's.
    ///
    /// ```
    /// use vstore::{Dtype, ExampleBundle, ItemTowerBundle, Schema};
    /// let (json, weights) = ExampleBundle::new("prerank", "v1").item_tower_files();
    /// let schema = Schema::new()
    ///     .embedding("prerank", "v1", ExampleBundle::DIM as u32, Dtype::F16)
    ///     .categorical("category", 0)
    ///     .categorical("brand", 0)
    ///     .numeric("price", 0.0);
    /// let tower = ItemTowerBundle::load(&json, &weights, &schema)?;
    /// assert_eq!(tower.key(), "prerank@v1");
    /// # Ok::<(), vstore::Error>(())
    /// ```
    pub fn item_tower_files(&self) -> (Vec<u8>, Vec<u8>) {
        let (space, version, dim) = (&self.space, &self.version, Self::DIM);
        let json = format!(
            r#"{{
  "format": "vstore.item_tower.v1",
  "space": "{space}", "version": "{version}", "item_dim": {dim},
  "item_tower": {{
    "inputs": [
      {{"kind": "item_categorical", "column": "category", "embedding": "tower.category"}},
      {{"kind": "item_categorical", "column": "brand", "embedding": "tower.brand"}},
      {{"kind": "item_numeric", "column": "price", "transform": "log1p"}},
      {{"kind": "item_numeric", "column": "price",
       "transform": {{"bucketize": [10.0, 100.0, 1000.0]}}, "embedding": "tower.price_bucket"}}
    ],
    "layers": [
      {{"weight": "tower.0.weight", "bias": "tower.0.bias", "activation": "relu"}},
      {{"weight": "tower.1.weight", "bias": "tower.1.bias", "activation": "relu"}},
      {{"weight": "tower.2.weight", "bias": "tower.2.bias", "activation": "identity"}}
    ]
  }}
}}
"#
        );
        let shapes: Vec<(String, Vec<usize>)> = [
            ("tower.category", vec![self.categories as usize, 16]),
            ("tower.brand", vec![5000, 8]),
            ("tower.price_bucket", vec![4, 4]),
            ("tower.0.weight", vec![256, 29]),
            ("tower.0.bias", vec![256]),
            ("tower.1.weight", vec![128, 256]),
            ("tower.1.bias", vec![128]),
            ("tower.2.weight", vec![dim, 128]),
            ("tower.2.bias", vec![dim]),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect();
        (
            json.into_bytes(),
            Self::random_weights(&shapes, 0x17E3_70E8_0000_0001),
        )
    }

    fn weights(&self) -> Vec<u8> {
        let shapes: [(&str, &[usize]); 16] = [
            ("emb.imp_bucket", &[4, 4]),
            ("emb.category", &[self.categories as usize, 8]),
            ("cross.0.weight", &[64, 22]),
            ("cross.0.bias", &[64]),
            ("cross.2.weight", &[32, 64]),
            ("cross.2.bias", &[32]),
            ("upper.0.weight", &[256, 160]),
            ("upper.0.bias", &[256]),
            ("upper.2.weight", &[128, 256]),
            ("upper.2.bias", &[128]),
            ("heads.click.weight", &[1, 128]),
            ("heads.click.bias", &[1]),
            ("heads.like.weight", &[1, 128]),
            ("heads.like.bias", &[1]),
            ("heads.wt.weight", &[1, 128]),
            ("heads.wt.bias", &[1]),
        ];
        let shapes: Vec<(String, Vec<usize>)> = (shapes.iter())
            .map(|(n, s)| (n.to_string(), s.to_vec()))
            .collect();
        Self::random_weights(&shapes, 0x7777_1234_5678_9ABD)
    }

    /// A `weights.safetensors` of F32 tensors `(name, shape)`, drawn from a
    /// seeded normal and He-scaled (`sqrt(2 / fan_in) / 2`, fan-in the
    /// second dimension of a matrix, 16 for a vector): the weights of this
    /// example, reusable for other example or benchmark bundles.
    pub fn random_weights(shapes: &[(String, Vec<usize>)], seed: u64) -> Vec<u8> {
        let mut r = SplitMix(seed);
        let raw: Vec<(&str, &[usize], Vec<u8>)> = (shapes.iter())
            .map(|(name, shape)| {
                let fan_in = if shape.len() == 2 { shape[1] } else { 16 };
                let scale = (2.0 / fan_in as f64).sqrt();
                let bytes = (0..shape.iter().product::<usize>())
                    .flat_map(|_| ((r.normal() * scale * 0.5) as f32).to_le_bytes())
                    .collect();
                (name.as_str(), &shape[..], bytes)
            })
            .collect();
        let views = raw.iter().map(|(name, shape, bytes)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.to_vec(),
                bytes,
            )
            .expect("shapes match the byte counts");
            (name.to_string(), view)
        });
        safetensors::serialize(views, None).expect("in-memory serialization")
    }
}

/// splitmix64, with a Box-Muller normal: the weights' deterministic source.
struct SplitMix(u64);

impl SplitMix {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let u = self.uniform().max(1e-300);
        let v = self.uniform();
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}
