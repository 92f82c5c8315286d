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

mod compile;
mod example;
mod inputs;
mod parts;
mod score;
pub(crate) mod spec;

use crate::kernels::gemm;

use crate::error::{Error, Result};
use crate::schema::Schema;

pub use example::ExampleBundle;
pub(crate) use inputs::ByItem;
pub use inputs::UserInputs;
pub(crate) use parts::{ColumnRef, Dense, Fusion, Head, Input, Transform};
pub(crate) use score::ModelScratch;
pub(crate) use score::{Prepared, SegmentInputs};
use spec::bad;
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
