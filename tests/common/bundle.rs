//! A small three-tower bundle built in memory, for tests that need a valid
//! bundle (and mutate it into invalid ones).

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// `model.json` as a JSON value and the tensors of `weights.safetensors`.
#[derive(Clone)]
pub struct Bundle {
    pub json: Value,
    pub tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

/// Deterministic small weights.
fn weights(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i * 7 + salt * 13) % 17) as f32 - 8.0) / 32.0)
        .collect()
}

impl Bundle {
    /// A bundle for `prerank@{version}` over the columns of the tests'
    /// common schema (`category`, `price`, `ctr_1d`): every input kind, two
    /// cross layers, two upper layers, a calibrated sigmoid head and an exp
    /// head, weighted-sum fusion. The user vector has 4 components.
    pub fn tiny(version: &str, item_dim: usize) -> Bundle {
        let json = json!({
            "format": "vstore.three_tower.v1",
            "space": "prerank", "version": version,
            "user_dim": 4, "item_dim": item_dim,
            "cross": {
                "inputs": [
                    {"kind": "item_numeric", "column": "ctr_1d", "transform": "log1p"},
                    {"kind": "item_numeric", "column": "price",
                     "transform": {"bucketize": [0.0, 10.0]}, "embedding": "emb.price"},
                    {"kind": "item_categorical", "column": "category", "embedding": "emb.category"},
                    {"kind": "user_dense", "name": "user_stats", "dim": 2},
                    {"kind": "user_by_item", "name": "user_category_ctr", "column": "category",
                     "dim": 1, "default": [0.0]}
                ],
                "layers": [
                    {"weight": "cross.0.weight", "bias": "cross.0.bias", "activation": "relu"},
                    {"weight": "cross.2.weight", "bias": "cross.2.bias", "activation": "sigmoid"}
                ]
            },
            "upper": {"layers": [
                {"weight": "upper.0.weight", "bias": "upper.0.bias", "activation": "relu"},
                {"weight": "upper.2.weight", "bias": "upper.2.bias", "activation": "identity"}
            ]},
            "heads": [
                {"name": "click", "weight": "heads.click.weight", "bias": "heads.click.bias",
                 "activation": "sigmoid", "neg_sampling_rate": 0.2},
                {"name": "value", "weight": "heads.value.weight", "bias": "heads.value.bias",
                 "activation": "exp"}
            ],
            "fusion": {"kind": "weighted_sum", "weights": {"click": 1.0, "value": 0.1}}
        });
        let cross_in = 1 + 2 + 3 + 2 + 1;
        let shapes: Vec<(&str, Vec<usize>)> = vec![
            ("emb.price", vec![3, 2]),
            ("emb.category", vec![5, 3]),
            ("cross.0.weight", vec![6, cross_in]),
            ("cross.0.bias", vec![6]),
            ("cross.2.weight", vec![3, 6]),
            ("cross.2.bias", vec![3]),
            ("upper.0.weight", vec![8, 4 + item_dim + 3]),
            ("upper.0.bias", vec![8]),
            ("upper.2.weight", vec![5, 8]),
            ("upper.2.bias", vec![5]),
            ("heads.click.weight", vec![1, 5]),
            ("heads.click.bias", vec![1]),
            ("heads.value.weight", vec![1, 5]),
            ("heads.value.bias", vec![1]),
        ];
        let tensors = shapes
            .into_iter()
            .enumerate()
            .map(|(i, (n, s))| {
                let len = s.iter().product();
                (n.to_string(), (s, weights(len, i)))
            })
            .collect();
        Bundle { json, tensors }
    }

    /// An item-tower-only bundle (`vstore.item_tower.v1`) for
    /// `{space}@{version}` over the common schema's profile columns:
    /// `category` (a table of 5 rows by 3), `price` as is and bucketized
    /// (a table of 3 rows by 2), then 6 -> 4 (relu) -> `item_dim`
    /// (identity). [`Bundle::tower_reference`] computes it in f64.
    pub fn tower_only(space: &str, version: &str, item_dim: usize) -> Bundle {
        let json = json!({
            "format": "vstore.item_tower.v1",
            "space": space, "version": version, "item_dim": item_dim,
            "item_tower": Self::tower_json(),
        });
        let mut b = Bundle {
            json,
            tensors: BTreeMap::new(),
        };
        b.add_tower_tensors(item_dim, 0);
        b
    }

    /// This bundle as contract v2 carrying the item tower of
    /// [`Bundle::tower_only`] (weights drawn with `salt`).
    pub fn with_tower(mut self, salt: usize) -> Bundle {
        let item_dim = self.json["item_dim"].as_u64().unwrap() as usize;
        self.json["format"] = json!("vstore.three_tower.v2");
        self.json["item_tower"] = Self::tower_json();
        self.add_tower_tensors(item_dim, salt);
        self
    }

    /// This bundle with its item tower's weights drawn with `salt` (a
    /// different tower of the same shape).
    pub fn with_salt(mut self, salt: usize) -> Bundle {
        let item_dim = self.json["item_dim"].as_u64().unwrap() as usize;
        self.add_tower_tensors(item_dim, salt);
        self
    }

    fn tower_json() -> Value {
        json!({
            "inputs": [
                {"kind": "item_categorical", "column": "category", "embedding": "tower.category"},
                {"kind": "item_numeric", "column": "price"},
                {"kind": "item_numeric", "column": "price",
                 "transform": {"bucketize": [1.0, 10.0]}, "embedding": "tower.price"}
            ],
            "layers": [
                {"weight": "tower.0.weight", "bias": "tower.0.bias", "activation": "relu"},
                {"weight": "tower.1.weight", "bias": "tower.1.bias", "activation": "identity"}
            ]
        })
    }

    fn add_tower_tensors(&mut self, item_dim: usize, salt: usize) {
        let shapes: Vec<(&str, Vec<usize>)> = vec![
            ("tower.category", vec![5, 3]),
            ("tower.price", vec![3, 2]),
            ("tower.0.weight", vec![4, 6]),
            ("tower.0.bias", vec![4]),
            ("tower.1.weight", vec![item_dim, 4]),
            ("tower.1.bias", vec![item_dim]),
        ];
        for (i, (n, s)) in shapes.into_iter().enumerate() {
            let len = s.iter().product();
            self.tensors
                .insert(n.to_string(), (s, weights(len, 100 + i + salt)));
        }
    }

    /// The item tower of this bundle (see [`Bundle::tower_only`]) in f64,
    /// for an item whose `category` and `price` read as given (missing:
    /// the column's default already applied).
    pub fn tower_reference(&self, category: u32, price: f32) -> Vec<f64> {
        let t = |n: &str| &self.tensors[n];
        let (cat, pb) = (t("tower.category"), t("tower.price"));
        let mut x: Vec<f64> = Vec::new();
        let c = if (category as usize) < cat.0[0] {
            category as usize
        } else {
            0
        };
        x.extend(cat.1[c * 3..c * 3 + 3].iter().map(|&v| v as f64));
        x.push(price as f64);
        let b = [1.0f32, 10.0].iter().filter(|&&t| t <= price).count();
        x.extend(pb.1[b * 2..b * 2 + 2].iter().map(|&v| v as f64));
        let dense = |x: &[f64], w: &str, b: &str, relu: bool| -> Vec<f64> {
            let (ws, wv) = t(w);
            let bv = &t(b).1;
            (0..ws[0])
                .map(|o| {
                    let y = bv[o] as f64
                        + (0..ws[1])
                            .map(|i| wv[o * ws[1] + i] as f64 * x[i])
                            .sum::<f64>();
                    if relu {
                        y.max(0.0)
                    } else {
                        y
                    }
                })
                .collect()
        };
        let h = dense(&x, "tower.0.weight", "tower.0.bias", true);
        dense(&h, "tower.1.weight", "tower.1.bias", false)
    }

    /// `model.json` and `weights.safetensors` bytes.
    pub fn bytes(&self) -> (Vec<u8>, Vec<u8>) {
        let raw: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(n, (s, v))| {
                (
                    n.clone(),
                    s.clone(),
                    v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views = raw.iter().map(|(n, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        });
        let st = safetensors::serialize(views, None).unwrap();
        (serde_json::to_vec_pretty(&self.json).unwrap(), st)
    }

    /// Writes `model.json` and `weights.safetensors` into `dir`.
    pub fn write(&self, dir: &std::path::Path) {
        std::fs::create_dir_all(dir).unwrap();
        let (j, w) = self.bytes();
        std::fs::write(dir.join("model.json"), j).unwrap();
        std::fs::write(dir.join("weights.safetensors"), w).unwrap();
    }
}
