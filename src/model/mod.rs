//! Three-tower model bundles: parsed from `model.json` +
//! `weights.safetensors`, validated against a snapshot's schema, and run
//! over blocks of candidate rows inside the store.
//!
//! A bundle is checked completely when it is added to a snapshot (and again
//! when a snapshot holding it is pinned): the format tag, every tensor's
//! presence, dtype and shape, the chain of shapes from the cross inputs
//! through every layer to each head, the columns the inputs read (present,
//! of the right type), vocabulary and bucket tables, and that the bundle's
//! `space@version` names an embedding of the snapshot with the bundle's
//! `item_dim`. Every refusal is [`Error::Bundle`] naming the field.

mod score;
pub(crate) mod spec;

use crate::kernels::gemm;
use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::schema::{ColumnGroup, ColumnKind, Schema};

pub(crate) use score::ModelScratch;
pub(crate) use score::{Prepared, SegmentInputs};
use spec::{bad, FusionSpec, InputSpec, LayerSpec, Spec, TransformSpec};
pub use spec::{Activation, BUNDLE_FORMAT};

/// A model bundle as a pinned snapshot holds it: the model, its file, and
/// (if the bundle was added with precomputing) one file per segment, in
/// segment order, of the item part of the first upper layer.
#[derive(Debug)]
pub(crate) struct LoadedModel {
    pub model: std::sync::Arc<Model>,
    pub file: std::sync::Arc<crate::format::container::Container>,
    pub pre: Vec<PreFile>,
}

/// One segment's precomputed item part of the first upper layer.
#[derive(Debug)]
pub(crate) struct PreFile {
    pub def: crate::schema::EmbeddingDef,
    pub file: std::sync::Arc<crate::format::container::Container>,
    pub segment: u64,
    pub offset: usize,
    pub stride: usize,
    pub rows: usize,
}

impl PreFile {
    pub(crate) fn column(&self) -> crate::read::columns::EmbeddingColumn<'_> {
        crate::read::columns::EmbeddingColumn::new(
            &self.def,
            &self.file.map[self.offset..self.offset + self.rows * self.stride],
            self.stride,
        )
    }
}

/// A dense layer in PyTorch `nn.Linear` layout: `y = act(x @ W.T + b)`.
#[derive(Debug, Clone)]
pub(crate) struct Dense {
    pub inp: usize,
    pub out: usize,
    /// `[out, inp]`, row-major.
    pub w: Vec<f32>,
    /// `[out]` (zeros when the layer has no bias).
    pub b: Vec<f32>,
    pub act: Activation,
    /// `w` ready for the matrix product (for the first upper layer: only
    /// the columns after the user vector's, which is applied per query).
    pub pack: gemm::Weights,
}

/// An embedding table `[rows, dim]`.
#[derive(Debug, Clone)]
pub(crate) struct Table {
    pub rows: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Table {
    #[inline]
    pub(crate) fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.dim..(r + 1) * self.dim]
    }
}

/// Where an item-side input reads its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ColumnRef {
    Profile(String),
    Stat(String),
}

#[derive(Debug, Clone)]
pub(crate) enum Transform {
    Identity,
    Log1p,
    Bucketize { bounds: Vec<f32>, table: Table },
}

/// One cross-tower input, resolved against weights and schema.
#[derive(Debug, Clone)]
pub(crate) enum Input {
    ItemNumeric {
        column: ColumnRef,
        transform: Transform,
    },
    ItemCategorical {
        column: String,
        table: Table,
    },
    UserDense {
        name: String,
        dim: usize,
    },
    UserByItem {
        name: String,
        column: String,
        dim: usize,
        default: Vec<f32>,
    },
}

impl Input {
    pub(crate) fn dim(&self) -> usize {
        match self {
            Input::ItemNumeric {
                transform: Transform::Bucketize { table, .. },
                ..
            } => table.dim,
            Input::ItemNumeric { .. } => 1,
            Input::ItemCategorical { table, .. } => table.dim,
            Input::UserDense { dim, .. } | Input::UserByItem { dim, .. } => *dim,
        }
    }
}

/// How head values are fused into one score.
#[derive(Debug, Clone)]
pub(crate) enum Fusion {
    /// `sum w_i p_i`; `w` has one weight per head (0 for heads not named).
    WeightedSum(Vec<f64>),
    /// `prod p_i^w_i` over heads with a nonzero weight.
    Product(Vec<f64>),
    /// `sum w_i / (rank_i + alpha)^beta`.
    Rank { w: Vec<f64>, alpha: f64, beta: f64 },
}

/// A head: one output of the last upper layer, activated and calibrated.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub name: String,
    pub act: Activation,
    pub neg_sampling_rate: Option<f64>,
}

/// A validated three-tower model, ready to score. Obtained from a snapshot
/// ([`crate::Snapshot::model`]) or, to check a bundle without a store,
/// [`Model::load`].
#[derive(Debug, Clone)]
pub struct Model {
    /// `space@version`.
    key: String,
    space: String,
    version: String,
    pub(crate) user_dim: usize,
    pub(crate) item_dim: usize,
    pub(crate) inputs: Vec<Input>,
    pub(crate) cross_in: usize,
    /// Whether the `user_dense` inputs' part of the first cross layer runs
    /// once per query (into `Prepared::c0`) rather than per row: when there
    /// is a cross tower and it reads both `user_dense` and per-item inputs.
    pub(crate) split: bool,
    /// Values per row the cross tower reads: `cross_in`, less the
    /// `user_dense` inputs if `split`.
    pub(crate) row_in: usize,
    /// If `split`, the first cross layer's columns for the per-row inputs.
    pub(crate) pack_cross0: gemm::Weights,
    pub(crate) cross: Vec<Dense>,
    pub(crate) upper: Vec<Dense>,
    /// All heads as one layer `[heads, last upper width]` (activation unused).
    pub(crate) head_layer: Dense,
    pub(crate) heads: Vec<Head>,
    pub(crate) fusion: Fusion,
    /// Item-vector columns of the first upper layer (for precomputing).
    pub(crate) pack_item: gemm::Weights,
    /// Cross-output columns of the first upper layer (when the item part
    /// is precomputed).
    pub(crate) pack_cross: gemm::Weights,
    json: String,
}

/// A user-side input a model needs with each query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInputSpec {
    /// The input's name in `model.json`.
    pub name: String,
    /// Values per vector.
    pub dim: usize,
    /// `Some(column)` for a `user_by_item` input (a map from the item's
    /// value of that categorical column to a vector), `None` for `user_dense`.
    pub by_item_column: Option<String>,
}

fn tensor<'a>(
    st: &'a safetensors::SafeTensors<'a>,
    field: &str,
    name: &str,
    shape: Option<&[usize]>,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let t = st.tensor(name).map_err(|_| {
        bad(
            field,
            format!("tensor {name:?} is not in weights.safetensors"),
        )
    })?;
    if t.dtype() != safetensors::Dtype::F32 {
        return Err(bad(
            field,
            format!("tensor {name:?} is {:?}; tensors must be F32", t.dtype()),
        ));
    }
    let got = t.shape().to_vec();
    if let Some(want) = shape {
        if got != want {
            return Err(bad(
                field,
                format!("tensor {name:?} has shape {got:?}; expected {want:?}"),
            ));
        }
    }
    let data: Vec<f32> = t
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if data.len() != got.iter().product::<usize>() {
        return Err(bad(
            field,
            format!(
                "tensor {name:?} holds {} values for shape {got:?}",
                data.len()
            ),
        ));
    }
    if let Some(i) = data.iter().position(|x| !x.is_finite()) {
        return Err(bad(
            field,
            format!(
                "tensor {name:?} element {i} is {}; weights must be finite",
                data[i]
            ),
        ));
    }
    Ok((got, data))
}

fn table(
    st: &safetensors::SafeTensors<'_>,
    field: &str,
    name: &str,
    rows: Option<usize>,
) -> Result<Table> {
    let (shape, data) = tensor(st, field, name, None)?;
    match shape[..] {
        [r, d] if r >= 1 && d >= 1 && rows.is_none_or(|want| want == r) => Ok(Table {
            rows: r,
            dim: d,
            data,
        }),
        _ => Err(bad(
            field,
            match rows {
                Some(want) => format!(
                    "embedding table {name:?} has shape {shape:?}; expected [{want}, e] (one row per bucket)"
                ),
                None => format!(
                    "embedding table {name:?} has shape {shape:?}; expected [vocabulary, e] with both at least 1"
                ),
            },
        )),
    }
}

fn dense(
    st: &safetensors::SafeTensors<'_>,
    field: &str,
    l: &LayerSpec,
    inp: usize,
) -> Result<Dense> {
    let (shape, w) = tensor(st, &format!("{field}.weight"), &l.weight, None)?;
    let out = match shape[..] {
        [o, i] if i == inp && o >= 1 => o,
        _ => {
            return Err(bad(
                format!("{field}.weight"),
                format!(
                    "tensor {:?} has shape {shape:?}; expected [out, {inp}] (nn.Linear layout, its input is {inp} wide)",
                    l.weight
                ),
            ))
        }
    };
    let b = match &l.bias {
        Some(name) => tensor(st, &format!("{field}.bias"), name, Some(&[out]))?.1,
        None => vec![0.0; out],
    };
    Ok(Dense {
        pack: gemm::Weights::new(&w, inp, inp, out),
        inp,
        out,
        w,
        b,
        act: l.activation,
    })
}

fn fusion_weights(heads: &[Head], named: &[(String, f64)]) -> Vec<f64> {
    heads
        .iter()
        .map(|h| {
            named
                .iter()
                .find(|(n, _)| *n == h.name)
                .map_or(0.0, |(_, w)| *w)
        })
        .collect()
}

impl Model {
    /// Parses and validates a bundle (`model.json` bytes and
    /// `weights.safetensors` bytes) against `schema`. This is the check a
    /// snapshot applies when a bundle is added; any failure is
    /// [`Error::Bundle`] naming the field.
    ///
    /// ```no_run
    /// # fn main() -> vstore::Result<()> {
    /// let snap = vstore::Store::open("/data/store")?.snapshot();
    /// let json = std::fs::read("bundle/model.json").unwrap();
    /// let weights = std::fs::read("bundle/weights.safetensors").unwrap();
    /// let model = vstore::Model::load(&json, &weights, snap.schema())?;
    /// println!("{} heads: {:?}", model.key(), model.head_names());
    /// # Ok(()) }
    /// ```
    pub fn load(json: &[u8], weights: &[u8], schema: &Schema) -> Result<Model> {
        let spec = spec::parse(json)?;
        let st = safetensors::SafeTensors::deserialize(weights).map_err(|e| {
            bad(
                "weights.safetensors",
                format!("is not a valid safetensors file: {e}"),
            )
        })?;
        Self::compile(
            spec,
            &st,
            schema,
            String::from_utf8_lossy(json).into_owned(),
        )
    }

    fn compile(
        spec: Spec,
        st: &safetensors::SafeTensors<'_>,
        schema: &Schema,
        json: String,
    ) -> Result<Model> {
        let key = format!("{}@{}", spec.space, spec.version);
        let Some(def) = schema.embedding_def(&key) else {
            // The field at fault: the space if the snapshot holds no
            // version of it, else the version.
            let keys = schema.embedding_keys();
            let space_known = keys
                .iter()
                .any(|k| k.split_once('@').is_some_and(|(s, _)| s == spec.space));
            return Err(bad(
                if space_known { "version" } else { "space" },
                format!(
                    "the bundle is for {key}, which the snapshot does not hold; it holds [{}]",
                    keys.join(", ")
                ),
            ));
        };
        if def.dim as usize != spec.item_dim {
            return Err(bad(
                "item_dim",
                format!(
                    "is {}; embedding {key} has dimension {}",
                    spec.item_dim, def.dim
                ),
            ));
        }
        let mut inputs = Vec::with_capacity(spec.inputs.len());
        let mut names: Vec<&str> = Vec::new();
        for (i, inp) in spec.inputs.iter().enumerate() {
            let field = format!("cross.inputs[{i}]");
            let categorical = |col: &str| -> Result<()> {
                let j = schema.profile_index(col).map_err(|_| {
                    bad(
                        format!("{field}.column"),
                        format!(
                            "no categorical profile column {col:?}; the profile columns are [{}]",
                            schema
                                .profile
                                .iter()
                                .map(|c| c.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    )
                })?;
                match schema.profile[j].kind {
                    ColumnKind::Categorical { .. } => Ok(()),
                    ColumnKind::Numeric { .. } => Err(bad(
                        format!("{field}.column"),
                        format!("profile column {col:?} is numeric; this input needs a categorical column"),
                    )),
                }
            };
            let compiled = match inp {
                InputSpec::ItemNumeric {
                    column,
                    transform,
                    embedding,
                } => {
                    // Resolved as filters resolve a numeric name.
                    let column = match schema.numeric_column(column) {
                        Some((ColumnGroup::Stats, _)) => ColumnRef::Stat(column.clone()),
                        Some((ColumnGroup::Profile, c)) => {
                            if !matches!(c.kind, ColumnKind::Numeric { .. }) {
                                return Err(bad(
                                    format!("{field}.column"),
                                    format!("profile column {column:?} is categorical; item_numeric needs a numeric profile or statistics column"),
                                ));
                            }
                            ColumnRef::Profile(column.clone())
                        }
                        None => {
                            return Err(bad(
                                format!("{field}.column"),
                                format!(
                                "no numeric column {column:?} in the profile or statistics columns"
                            ),
                            ))
                        }
                    };
                    let transform = match transform {
                        TransformSpec::Identity => Transform::Identity,
                        TransformSpec::Log1p => Transform::Log1p,
                        TransformSpec::Bucketize(bounds) => Transform::Bucketize {
                            bounds: bounds.clone(),
                            table: table(
                                st,
                                &format!("{field}.embedding"),
                                embedding.as_deref().unwrap_or(""),
                                Some(bounds.len() + 1),
                            )?,
                        },
                    };
                    Input::ItemNumeric { column, transform }
                }
                InputSpec::ItemCategorical { column, embedding } => {
                    categorical(column)?;
                    Input::ItemCategorical {
                        column: column.clone(),
                        table: table(st, &format!("{field}.embedding"), embedding, None)?,
                    }
                }
                InputSpec::UserDense { name, dim } => Input::UserDense {
                    name: name.clone(),
                    dim: *dim,
                },
                InputSpec::UserByItem {
                    name,
                    column,
                    dim,
                    default,
                } => {
                    categorical(column)?;
                    Input::UserByItem {
                        name: name.clone(),
                        column: column.clone(),
                        dim: *dim,
                        default: default.clone(),
                    }
                }
            };
            if let InputSpec::UserDense { name, .. } | InputSpec::UserByItem { name, .. } = inp {
                if names.contains(&name.as_str()) {
                    return Err(bad(
                        format!("{field}.name"),
                        format!("user input {name:?} is declared twice"),
                    ));
                }
                names.push(name);
            }
            inputs.push(compiled);
        }
        let cross_in: usize = inputs.iter().map(Input::dim).sum();
        let dense_in: usize = (inputs.iter())
            .filter(|i| matches!(i, Input::UserDense { .. }))
            .map(Input::dim)
            .sum();
        let split = !spec.cross.is_empty() && dense_in > 0 && dense_in < cross_in;
        let row_in = if split { cross_in - dense_in } else { cross_in };
        let mut width = cross_in;
        let mut cross = Vec::new();
        for (i, l) in spec.cross.iter().enumerate() {
            let d = dense(st, &format!("cross.layers[{i}]"), l, width)?;
            width = d.out;
            cross.push(d);
        }
        let mut upper = Vec::new();
        let mut width = spec.user_dim + spec.item_dim + width;
        for (i, l) in spec.upper.iter().enumerate() {
            let d = dense(st, &format!("upper.layers[{i}]"), l, width)?;
            width = d.out;
            upper.push(d);
        }
        let mut heads = Vec::new();
        let mut hw = Vec::new();
        let mut hb = Vec::new();
        for (i, h) in spec.heads.iter().enumerate() {
            let field = format!("heads[{i}]");
            let (_, w) = tensor(
                st,
                &format!("{field}.weight"),
                &h.layer.weight,
                Some(&[1, width]),
            )
            .map_err(|e| match e {
                Error::Bundle { field, what } => Error::Bundle {
                    field,
                    what: format!(
                        "{what} (a head maps the last upper layer's {width} outputs to one value)"
                    ),
                },
                e => e,
            })?;
            let b = match &h.layer.bias {
                Some(name) => tensor(st, &format!("{field}.bias"), name, Some(&[1]))?.1[0],
                None => 0.0,
            };
            hw.extend_from_slice(&w);
            hb.push(b);
            heads.push(Head {
                name: h.name.clone(),
                act: h.layer.activation,
                neg_sampling_rate: h.neg_sampling_rate,
            });
        }
        let head_layer = Dense {
            pack: gemm::Weights::new(&hw, width, width, heads.len()),
            inp: width,
            out: heads.len(),
            w: hw,
            b: hb,
            act: Activation::Identity,
        };
        // The first cross layer's weights for the per-row inputs only.
        let pack_cross0 = match cross.first() {
            Some(c0) if split => {
                let mut w = Vec::with_capacity(c0.out * row_in);
                for j in 0..c0.out {
                    let mut off = 0;
                    for inp in &inputs {
                        if !matches!(inp, Input::UserDense { .. }) {
                            w.extend_from_slice(&c0.w[j * cross_in + off..][..inp.dim()]);
                        }
                        off += inp.dim();
                    }
                }
                gemm::Weights::new(&w, row_in, row_in, c0.out)
            }
            _ => gemm::Weights::new(&[], 0, 0, 0),
        };
        let (ud, id) = (spec.user_dim, spec.item_dim);
        let w0 = &upper[0];
        let pack_item = gemm::Weights::new(&w0.w[ud..], w0.inp, id, w0.out);
        let pack_cross = gemm::Weights::new(&w0.w[ud + id..], w0.inp, w0.inp - ud - id, w0.out);
        // The user part of the first upper layer runs once per query.
        let u0 = &mut upper[0];
        u0.pack = gemm::Weights::new(
            &u0.w[spec.user_dim..],
            u0.inp,
            u0.inp - spec.user_dim,
            u0.out,
        );
        let fusion = match &spec.fusion {
            FusionSpec::WeightedSum(w) => Fusion::WeightedSum(fusion_weights(&heads, w)),
            FusionSpec::Product(w) => Fusion::Product(fusion_weights(&heads, w)),
            FusionSpec::Rank {
                weights,
                alpha,
                beta,
            } => Fusion::Rank {
                w: fusion_weights(&heads, weights),
                alpha: *alpha,
                beta: *beta,
            },
        };
        Ok(Model {
            key,
            space: spec.space,
            version: spec.version,
            user_dim: spec.user_dim,
            item_dim: spec.item_dim,
            inputs,
            cross_in,
            split,
            row_in,
            pack_cross0,
            cross,
            upper,
            head_layer,
            heads,
            fusion,
            pack_item,
            pack_cross,
            json,
        })
    }

    /// Reads and validates the bundle stored in `c` (a bundle file named by
    /// a manifest under `key`). Every byte is checksummed first; a bundle
    /// that fails validation is a corrupt file (it passed when added).
    pub(crate) fn from_container(
        c: &crate::format::container::Container,
        key: &str,
        schema: &Schema,
    ) -> Result<Model> {
        let crate::format::meta::Body::Bundle(b) = &c.meta.body else {
            return Err(Error::corrupt(&c.path, "not a model bundle file"));
        };
        if b.key != key {
            return Err(Error::corrupt(
                &c.path,
                format!(
                    "holds the bundle for {}; the manifest names it for {key}",
                    b.key
                ),
            ));
        }
        c.ensure_verified()?;
        let json = c.extent(&b.json, b.json.len, "model.json")?;
        let weights = c.extent(&b.weights, b.weights.len, "weights.safetensors")?;
        let m = Model::load(json, weights, schema).map_err(|e| {
            Error::corrupt(&c.path, format!("stored bundle does not validate: {e}"))
        })?;
        if m.key() != key {
            return Err(Error::corrupt(
                &c.path,
                format!("model.json is for {}; the file is for {key}", m.key()),
            ));
        }
        Ok(m)
    }

    /// The definition of the precomputed item part of the first upper
    /// layer (`W0[:, item columns] @ item_vec`, one row of the layer's width
    /// per item) stored as `dtype`.
    pub(crate) fn precompute_def(
        &self,
        dtype: crate::schema::Dtype,
    ) -> crate::schema::EmbeddingDef {
        crate::schema::EmbeddingDef::new(
            &self.space,
            &format!("{}.upper0", self.version),
            self.upper[0].out as u32,
            dtype,
        )
    }

    /// Computes the precomputed rows `first..first + out.len() / width` of
    /// embedding column `emb` into `out`.
    pub(crate) fn precompute_rows(
        &self,
        emb: &crate::read::columns::EmbeddingColumn<'_>,
        first: usize,
        out: &mut [f32],
    ) {
        let (id, h) = (self.item_dim, self.upper[0].out);
        let m = out.len() / h;
        let mut a = vec![0f32; m * id];
        for r in 0..m {
            emb.decode(first + r, &mut a[r * id..(r + 1) * id]);
        }
        gemm::matmul(m, &a, id, &self.pack_item, out, h, gemm::Start::Zero, false);
    }

    /// `space@version`: the embedding version the bundle belongs to, and the
    /// version queries must name.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Dimension of the user vector a query passes.
    pub fn user_dim(&self) -> usize {
        self.user_dim
    }

    /// Dimension of the item vectors (the embedding's).
    pub fn item_dim(&self) -> usize {
        self.item_dim
    }

    /// Head names, in `model.json` order (the order of per-head outputs).
    pub fn head_names(&self) -> Vec<&str> {
        self.heads.iter().map(|h| h.name.as_str()).collect()
    }

    /// The user-side inputs every query must pass, in `model.json` order.
    pub fn user_inputs(&self) -> Vec<UserInputSpec> {
        self.inputs
            .iter()
            .filter_map(|i| match i {
                Input::UserDense { name, dim } => Some(UserInputSpec {
                    name: name.clone(),
                    dim: *dim,
                    by_item_column: None,
                }),
                Input::UserByItem {
                    name, dim, column, ..
                } => Some(UserInputSpec {
                    name: name.clone(),
                    dim: *dim,
                    by_item_column: Some(column.clone()),
                }),
                _ => None,
            })
            .collect()
    }

    /// The bundle's `model.json`, as published.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// Multiply-adds per candidate of the whole model as written (cross
    /// tower, upper network, heads), before the tower split saves any.
    pub fn macs_per_item(&self) -> usize {
        self.cross
            .iter()
            .chain(&self.upper)
            .chain(std::iter::once(&self.head_layer))
            .map(|d| d.inp * d.out)
            .sum()
    }

    /// Multiply-adds per candidate this store runs: the user part of the
    /// first upper layer is computed once per query, not per candidate.
    pub fn macs_per_item_split(&self) -> usize {
        self.macs_per_item() - self.user_dim * self.upper[0].out
    }
}

/// The user-side inputs of a three-tower query: `user_dense` vectors and
/// `user_by_item` maps, by the names `model.json` gives them.
///
/// ```
/// let inputs = vstore::UserInputs::new()
///     .dense("user_stats", vec![0.1; 8])
///     .by_item("user_category_ctr", [(3u32, vec![0.02]), (7, vec![0.05])]);
/// assert_eq!(inputs.names().count(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct UserInputs {
    pub(crate) dense: HashMap<String, Vec<f32>>,
    pub(crate) by_item: HashMap<String, ByItem>,
}

/// One `user_by_item` map, laid out for the per-candidate look-up: entries
/// sorted by key (the last value given for a key wins, as in a map), and,
/// when the keys are small integers (as category codes usually are), a
/// table from key to entry, so that a look-up is one index instead of a
/// hash (docs/PERF.md).
#[derive(Debug, Clone, Default)]
pub(crate) struct ByItem {
    entries: Vec<(u32, Vec<f32>)>,
    /// `direct[key]` = entry index + 1, or 0 if absent; empty if the keys
    /// are too sparse for it (then look-ups search `entries`).
    direct: Vec<u32>,
}

impl ByItem {
    fn new(entries: impl IntoIterator<Item = (u32, Vec<f32>)>) -> ByItem {
        let mut entries: Vec<(u32, Vec<f32>)> = entries.into_iter().collect();
        // Stable, so equal keys keep their order; keep the last of each.
        entries.sort_by_key(|e| e.0);
        let mut kept: Vec<(u32, Vec<f32>)> = Vec::with_capacity(entries.len());
        for e in entries {
            match kept.last_mut() {
                Some(last) if last.0 == e.0 => *last = e,
                _ => kept.push(e),
            }
        }
        let span = kept.last().map_or(0, |e| e.0 as usize + 1);
        let direct = if span <= 8 * kept.len() + 1024 {
            let mut d = vec![0u32; span];
            for (i, e) in kept.iter().enumerate() {
                d[e.0 as usize] = i as u32 + 1;
            }
            d
        } else {
            Vec::new()
        };
        ByItem {
            entries: kept,
            direct,
        }
    }

    /// The vector for `key`, if the map has one.
    #[inline]
    pub(crate) fn get(&self, key: u32) -> Option<&[f32]> {
        let i = if self.direct.is_empty() {
            self.entries.binary_search_by_key(&key, |e| e.0).ok()?
        } else {
            (*self.direct.get(key as usize)? as usize).checked_sub(1)?
        };
        Some(&self.entries[i].1)
    }

    /// Every entry, by ascending key.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &[f32])> {
        self.entries.iter().map(|(k, v)| (*k, &v[..]))
    }
}

impl UserInputs {
    /// No inputs (for a model whose cross tower reads item columns only).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the `user_dense` input `name`.
    pub fn dense(mut self, name: &str, values: Vec<f32>) -> Self {
        self.dense.insert(name.to_string(), values);
        self
    }

    /// Sets the `user_by_item` input `name`: a vector per value of the
    /// input's categorical column (absent values take the bundle's default).
    pub fn by_item(
        mut self,
        name: &str,
        entries: impl IntoIterator<Item = (u32, Vec<f32>)>,
    ) -> Self {
        self.by_item.insert(name.to_string(), ByItem::new(entries));
        self
    }

    /// Names of every input set.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.dense
            .keys()
            .chain(self.by_item.keys())
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::ByItem;

    #[test]
    fn by_item_lookups_agree_with_a_map_for_dense_and_sparse_keys() {
        // Small keys (a direct table), keys far apart (searched), and
        // repeated keys (the last value wins, as when collecting a map).
        let dense: Vec<(u32, Vec<f32>)> = (0..300u32)
            .filter(|k| k % 3 != 1)
            .map(|k| (k, vec![k as f32, 1.0]))
            .chain([(5, vec![-5.0, 2.0])])
            .collect();
        let sparse: Vec<(u32, Vec<f32>)> = (0..50u32)
            .map(|k| (k * 1_000_003 % 4_000_000_000, vec![k as f32]))
            .chain([(u32::MAX, vec![9.0]), (0, vec![-1.0])])
            .collect();
        for entries in [dense, sparse] {
            let m = ByItem::new(entries.clone());
            let want: std::collections::HashMap<u32, Vec<f32>> = entries.into_iter().collect();
            assert_eq!(m.iter().count(), want.len());
            for (k, v) in &want {
                assert_eq!(m.get(*k), Some(&v[..]), "key {k}");
            }
            for k in [1u32, 4, 298, 299, 300, 301, 10_000, 1_000_004, u32::MAX - 1] {
                assert_eq!(m.get(k), want.get(&k).map(|v| &v[..]), "key {k}");
            }
            let keys: Vec<u32> = m.iter().map(|e| e.0).collect();
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "entries by ascending key"
            );
        }
        assert!(!ByItem::new([(3u32, vec![1.0])]).direct.is_empty());
        assert!(ByItem::new([(3_000_000u32, vec![1.0])]).direct.is_empty());
        assert_eq!(ByItem::new([]).get(0), None);
    }
}
