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
mod fuse;
mod heads;
mod inputs;
mod json;
mod parts;
mod precision;
mod score;
pub(crate) mod spec;
mod tower;

use crate::kernels::gemm;

use crate::error::{Error, Result};
use crate::schema::Schema;

pub use example::ExampleBundle;
pub use fuse::Fusion;
pub(crate) use inputs::ByItem;
pub use inputs::UserInputs;
pub(crate) use parts::{ColumnRef, Dense, FirstLayer, FusionPlan, Head, Input, Mmoe, Transform};
pub(crate) use score::ModelScratch;
pub(crate) use score::{Feed, Parallel, Prepared, SegmentInputs};
use spec::bad;
pub(crate) use spec::UpperPart;
pub use spec::{Activation, BUNDLE_FORMAT, BUNDLE_FORMAT_V2, DEFAULT_BUNDLE_NAME};
pub use tower::{BundleHeader, ItemTowerBundle, ITEM_TOWER_FORMAT};
pub(crate) use tower::{ItemTower, TowerColumns, TOWER_BUNDLE_NAME};

/// A model bundle as a pinned snapshot holds it: the model, its file, and
/// (if the bundle was added with precomputing) one file per segment, in
/// segment order, of the item part of the first upper layer.
#[derive(Debug)]
pub(crate) struct LoadedModel {
    pub model: std::sync::Arc<Model>,
    pub file: std::sync::Arc<crate::format::container::Container>,
    pub pre: Vec<PreFile>,
}

/// An item-tower-only bundle as a pinned snapshot holds it.
#[derive(Debug)]
pub(crate) struct LoadedTower {
    pub tower: std::sync::Arc<ItemTowerBundle>,
    pub file: std::sync::Arc<crate::format::container::Container>,
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
    /// The bundle's name (`"default"` unless `model.json` gives one).
    name: String,
    /// Whether the bundle is contract v2.
    v2: bool,
    space: String,
    version: String,
    pub(crate) user_dim: usize,
    pub(crate) item_dim: usize,
    pub(crate) inputs: Vec<Input>,
    pub(crate) cross_in: usize,
    /// Whether the `user_dense` inputs' part of the first cross layer runs
    /// once per query (into `Prepared::c0`) rather than per row: when there
    /// is a cross tower, it reads both `user_dense` and per-item inputs,
    /// and no SE block scales them per row.
    pub(crate) split: bool,
    /// Values per row the cross tower reads: `cross_in`, less the
    /// `user_dense` inputs if `split`.
    pub(crate) row_in: usize,
    /// If `split`, the first cross layer's columns for the per-row inputs.
    pub(crate) pack_cross0: gemm::Weights,
    /// `cross.se.layers` (empty: no SE gating).
    pub(crate) se: Vec<Dense>,
    pub(crate) cross: Vec<Dense>,
    /// Width of the cross tower's output (`cross_in` without layers).
    pub(crate) cross_out: usize,
    /// `item_tower` (the writer computes the vectors of items added
    /// without one with it).
    pub(crate) item_tower: Option<std::sync::Arc<ItemTower>>,
    /// `upper.inputs`, in order.
    pub(crate) upper_parts: Vec<UpperPart>,
    /// Width of the upper network's input.
    pub(crate) upper_in: usize,
    /// `upper.layers` (may be empty in v2).
    pub(crate) upper: Vec<Dense>,
    /// The first upper layer's columns by part.
    pub(crate) first: FirstLayer,
    /// Width of the item vector in a row of the scorer's `A` matrix
    /// (`item_dim`, or 0 when no part reads the item vector).
    pub(crate) a_item: usize,
    /// The first upper layer over `A` rows, when it does not depend on the
    /// user (no `dot` or `hadamard`); else built per query.
    pub(crate) pack_a: gemm::Weights,
    /// Width of the shared upper output (the upper input without layers).
    pub(crate) width: usize,
    pub(crate) mmoe: Option<Mmoe>,
    /// All heads as one layer `[heads, width]`, when every head reads the
    /// shared upper output directly (no MMoE, no towers).
    pub(crate) head_layer: Option<Dense>,
    pub(crate) heads: Vec<Head>,
    pub(crate) fusion: FusionPlan,
    /// Item-vector columns of the first upper layer (for precomputing).
    pub(crate) pack_item: gemm::Weights,
    /// Cross-output columns of the first upper layer (when the item part
    /// is precomputed).
    pub(crate) pack_cross: gemm::Weights,
    json: String,
    /// The products the dense layers run ([`Model::precision`]).
    pub(crate) precision: crate::kernels::Precision,
    /// At a precision other than f32: the converted weights, as stored
    /// with the bundle (a safetensors file, `precision.rs`).
    pub(crate) converted: Option<std::sync::Arc<Vec<u8>>>,
    /// At a precision other than f32: the same bundle at f32, which
    /// [`crate::Query::exact`] rescores with.
    pub(crate) f32_twin: Option<std::sync::Arc<Model>>,
}

/// Parses `weights.safetensors` bytes.
fn safetensors_of(weights: &[u8]) -> Result<safetensors::SafeTensors<'_>> {
    safetensors::SafeTensors::deserialize(weights).map_err(|e| {
        // The parser names no tensor for a shape that disagrees with its
        // byte range or a range past the data; say which one it is.
        let which = tensor_at_fault(weights).map_or(String::new(), |w| format!(" ({w})"));
        bad(
            "weights.safetensors",
            format!("is not a valid safetensors file: {e}{which}"),
        )
    })
}

/// In a safetensors file the parser refused, the first tensor (by data
/// offset) whose shape and dtype disagree with its `data_offsets`, or
/// whose bytes lie past the end of the data: its name and the numbers.
/// `None` if the header itself cannot be read or no tensor is at fault.
fn tensor_at_fault(weights: &[u8]) -> Option<String> {
    let n = u64::from_le_bytes(weights.get(..8)?.try_into().ok()?);
    let header_end = usize::try_from(n).ok()?.checked_add(8)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(weights.get(8..header_end)?).ok()?;
    let data = (weights.len() - header_end) as u64;
    let mut tensors: Vec<(u64, u64, &String, &serde_json::Value)> = header
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .filter_map(|(name, t)| {
            let o = t.get("data_offsets")?.as_array()?;
            Some((o.first()?.as_u64()?, o.get(1)?.as_u64()?, name, t))
        })
        .collect();
    tensors.sort_by_key(|t| (t.0, t.1));
    for (start, end, name, t) in tensors {
        let dtype = t.get("dtype").and_then(|d| d.as_str()).unwrap_or("?");
        let width: u64 = match dtype {
            "F64" | "I64" | "U64" => 8,
            "F32" | "I32" | "U32" => 4,
            "F16" | "BF16" | "I16" | "U16" => 2,
            "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
            _ => continue,
        };
        let shape: Option<Vec<u64>> = (t.get("shape").and_then(|s| s.as_array()))
            .and_then(|s| s.iter().map(|d| d.as_u64()).collect());
        let Some(shape) = shape else { continue };
        let need = shape.iter().try_fold(width, |a, &d| a.checked_mul(d));
        if end < start || need != Some(end - start) {
            let need = need.map_or("more than 2^64".to_string(), |b| b.to_string());
            return Some(format!(
                "tensor {name:?}: shape {shape:?} of {dtype} needs {need} bytes, its data_offsets [{start}, {end}] hold {}",
                end.saturating_sub(start)
            ));
        }
        if end > data {
            return Some(format!(
                "tensor {name:?}: data_offsets [{start}, {end}] end past the {data} data bytes the file holds"
            ));
        }
    }
    None
}

/// A validated bundle of either kind [`crate::Transaction::add_model`]
/// takes: a three-tower model (which may carry its version's item tower)
/// or an item-tower-only bundle.
///
/// ```
/// use vstore::{Bundle, Dtype, ExampleBundle, Schema};
/// let schema = Schema::new()
///     .embedding("prerank", "v1", ExampleBundle::DIM as u32, Dtype::F16)
///     .categorical("category", 0)
///     .categorical("brand", 0)
///     .numeric("price", 0.0);
/// let (json, weights) = ExampleBundle::new("prerank", "v1").item_tower_files();
/// let b = Bundle::load(&json, &weights, &schema)?;
/// assert!(matches!(b, Bundle::Tower(_)) && b.has_item_tower());
/// assert_eq!(b.key(), "prerank@v1");
/// # Ok::<(), vstore::Error>(())
/// ```
#[derive(Debug, Clone)]
pub enum Bundle {
    /// A three-tower model (`vstore.three_tower.v1` or `.v2`).
    Model(Box<Model>),
    /// An item-tower-only bundle (`vstore.item_tower.v1`).
    Tower(ItemTowerBundle),
}

impl Bundle {
    /// Parses and validates a bundle of any format this build reads,
    /// chosen by `model.json`'s `format`, against `schema` (see
    /// [`Model::load`] and [`ItemTowerBundle::load`]).
    pub fn load(json: &[u8], weights: &[u8], schema: &Schema) -> Result<Bundle> {
        if spec::format_tag(json).as_deref() == Some(ITEM_TOWER_FORMAT) {
            ItemTowerBundle::load(json, weights, schema).map(Bundle::Tower)
        } else {
            Model::load(json, weights, schema).map(|m| Bundle::Model(Box::new(m)))
        }
    }

    /// [`Bundle::load`], converted to `precision` ([`Model::load_at`]). An
    /// item-tower-only bundle runs f32 only: another precision is refused
    /// (field `precision`).
    pub fn load_at(
        json: &[u8],
        weights: &[u8],
        schema: &Schema,
        precision: crate::kernels::Precision,
    ) -> Result<Bundle> {
        if precision == crate::kernels::Precision::F32 {
            return Bundle::load(json, weights, schema);
        }
        if spec::format_tag(json).as_deref() == Some(ITEM_TOWER_FORMAT) {
            return Err(bad(
                "precision",
                format!(
                    "an item-tower-only bundle runs in f32; {} applies to three-tower bundles",
                    precision.name()
                ),
            ));
        }
        Model::load_at(json, weights, schema, precision).map(|m| Bundle::Model(Box::new(m)))
    }

    /// A bundle as stored ([`Model::load_stored`] for a three-tower one).
    fn load_stored(
        json: &[u8],
        weights: &[u8],
        precision: crate::kernels::Precision,
        converted: Option<&[u8]>,
        schema: &Schema,
    ) -> Result<Bundle> {
        if spec::format_tag(json).as_deref() == Some(ITEM_TOWER_FORMAT) {
            if precision != crate::kernels::Precision::F32 || converted.is_some() {
                return Err(bad("precision", "an item-tower-only bundle is f32"));
            }
            ItemTowerBundle::load_as(json, weights, schema, false).map(Bundle::Tower)
        } else {
            Model::load_stored(json, weights, precision, converted, schema, None)
                .map(|m| Bundle::Model(Box::new(m)))
        }
    }

    /// The precision the bundle's layers run at (an item-tower-only
    /// bundle: f32).
    pub fn precision(&self) -> crate::kernels::Precision {
        match self {
            Bundle::Model(m) => m.precision(),
            Bundle::Tower(_) => crate::kernels::Precision::F32,
        }
    }

    /// Reads and validates the bundle stored in `c` under bundle id `id`.
    /// Every byte is checksummed first; a bundle that fails validation is
    /// a corrupt file (it passed when added).
    pub(crate) fn from_container(
        c: &crate::format::container::Container,
        id: &str,
        schema: &Schema,
    ) -> Result<Bundle> {
        let crate::format::meta::Body::Bundle(b) = &c.meta.body else {
            return Err(Error::corrupt(&c.path, "not a model bundle file"));
        };
        if b.key != id {
            return Err(Error::corrupt(
                &c.path,
                format!(
                    "holds the bundle for {}; the manifest names it for {id}",
                    b.key
                ),
            ));
        }
        c.ensure_verified()?;
        let json = c.extent(&b.json, b.json.len, "model.json")?;
        let weights = c.extent(&b.weights, b.weights.len, "weights.safetensors")?;
        let precision = crate::kernels::Precision::from_code(b.precision).ok_or_else(|| {
            Error::corrupt(&c.path, format!("unknown precision code {}", b.precision))
        })?;
        let converted = match &b.converted {
            Some(e) => Some(c.extent(e, e.len, "converted weights")?),
            None => None,
        };
        let bundle =
            Bundle::load_stored(json, weights, precision, converted, schema).map_err(|e| {
                Error::corrupt(&c.path, format!("stored bundle does not validate: {e}"))
            })?;
        if bundle.bundle_id() != id {
            return Err(Error::corrupt(
                &c.path,
                format!(
                    "model.json is for {}; the file is for {id}",
                    bundle.bundle_id()
                ),
            ));
        }
        Ok(bundle)
    }

    /// How the store records the bundle.
    pub(crate) fn bundle_id(&self) -> String {
        match self {
            Bundle::Model(m) => m.bundle_id(),
            Bundle::Tower(t) => t.bundle_id(),
        }
    }

    /// The `space@version` the bundle belongs to.
    pub fn key(&self) -> &str {
        match self {
            Bundle::Model(m) => m.key(),
            Bundle::Tower(t) => &t.key,
        }
    }

    /// The item tower the bundle carries, if any.
    pub(crate) fn item_tower(&self) -> Option<&std::sync::Arc<ItemTower>> {
        match self {
            Bundle::Model(m) => m.item_tower.as_ref(),
            Bundle::Tower(t) => Some(&t.tower),
        }
    }

    /// Whether the bundle is item-tower-only or carries an item tower.
    pub fn has_item_tower(&self) -> bool {
        self.item_tower().is_some()
    }
}

/// The store's record of bundle `name` of `key` (see [`Model::bundle_id`]).
pub(crate) fn bundle_id(key: &str, name: &str) -> String {
    if name == DEFAULT_BUNDLE_NAME {
        key.to_string()
    } else {
        format!("{key}#{name}")
    }
}

/// `(space@version, name)` of a bundle id.
pub(crate) fn split_bundle_id(id: &str) -> (&str, &str) {
    id.split_once('#').unwrap_or((id, DEFAULT_BUNDLE_NAME))
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
        let st = safetensors_of(weights)?;
        let st = compile::Tensors {
            st: &st,
            overlay: None,
            v2: spec.v2,
        };
        Self::compile(
            spec,
            &st,
            schema,
            String::from_utf8_lossy(json).into_owned(),
        )
    }

    /// The definition of the precomputed item part of the first upper
    /// layer (`W0[:, item columns] @ item_vec`, one row of the layer's width
    /// per item) stored as `dtype`.
    pub(crate) fn precompute_def(
        &self,
        dtype: crate::schema::Dtype,
    ) -> crate::schema::EmbeddingDef {
        // The default bundle's rows keep the name they had before bundles
        // were named.
        let version = if self.name == DEFAULT_BUNDLE_NAME {
            format!("{}.upper0", self.version)
        } else {
            format!("{}.{}.upper0", self.version, self.name)
        };
        crate::schema::EmbeddingDef::new(&self.space, &version, self.upper[0].out as u32, dtype)
    }

    /// Computes the precomputed rows `first..first + out.len() / width` of
    /// embedding column `emb` into `out`.
    pub(crate) fn precompute_rows(
        &self,
        emb: &crate::read::columns::EmbeddingColumn<'_>,
        first: usize,
        out: &mut [f32],
    ) {
        debug_assert!(self.precompute_refusal().is_none());
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

    /// Multiply-adds per candidate of the whole model as written (SE block,
    /// cross tower, upper network, experts and gates, head towers, heads),
    /// before the tower split saves any.
    pub fn macs_per_item(&self) -> usize {
        let layers = self.se.iter().chain(&self.cross).chain(&self.upper);
        let mmoe = self
            .mmoe
            .iter()
            .flat_map(|m| m.experts.iter().flatten().chain([&m.gates]));
        let heads = self
            .heads
            .iter()
            .flat_map(|h| h.tower.iter().chain([&h.out]));
        layers.chain(mmoe).chain(heads).map(|d| d.inp * d.out).sum()
    }

    /// Multiply-adds per candidate this store runs: the user part of the
    /// first upper layer, and (when the first cross layer is split, as it
    /// is without SE gating) the `user_dense` part of the first cross
    /// layer, are computed once per query, not per candidate. What
    /// budgets charge per row and [`crate::QueryResult::multiply_adds`]
    /// counts.
    pub fn macs_per_item_split(&self) -> usize {
        let dense_in: usize = (self.inputs.iter())
            .map(|i| match i {
                Input::UserDense { dim, .. } => *dim,
                _ => 0,
            })
            .sum();
        let cross_user = match (self.split, self.cross.first()) {
            (true, Some(d)) => dense_in * d.out,
            _ => 0,
        };
        self.macs_per_item() - self.first.user.len() - cross_user
    }

    /// How the store records the bundle: `space@version` for the bundle
    /// named `"default"`, `space@version#name` for any other.
    pub(crate) fn bundle_id(&self) -> String {
        bundle_id(&self.key, &self.name)
    }

    /// The bundle's name (`"default"` for a bundle whose `model.json`
    /// gives none, as every contract v1 bundle).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bundle contract the bundle follows: 1 or 2.
    pub fn contract(&self) -> u32 {
        if self.v2 {
            2
        } else {
            1
        }
    }

    /// Whether the bundle carries the item tower that made its version's
    /// vectors (`item_tower`).
    pub fn has_item_tower(&self) -> bool {
        self.item_tower.is_some()
    }

    /// Why the item part of the first upper layer cannot be precomputed
    /// for this model, or `None` if it can.
    pub fn precompute_refusal(&self) -> Option<String> {
        if self.upper.is_empty() {
            return Some(
                "upper.layers is empty, so there is no first upper layer to precompute".into(),
            );
        }
        if self.first.per_query() {
            return Some("upper.inputs has dot or hadamard: the first upper layer's item columns depend on the user vector".into());
        }
        if self.first.item.is_empty() {
            return Some(
                "upper.inputs has no \"item\" part: the first layer does not read the item vector"
                    .into(),
            );
        }
        None
    }

    /// A one-line description of the model's parts, for listings: inputs,
    /// SE, cross and upper layers, experts and gates, head towers,
    /// normalization and fusion.
    pub fn describe(&self) -> String {
        let mut parts = vec![format!("{} cross inputs", self.inputs.len())];
        if !self.se.is_empty() {
            parts.push(format!("SE {} layers", self.se.len()));
        }
        let widths = |ds: &[Dense]| {
            ds.iter()
                .map(|d| d.out.to_string())
                .collect::<Vec<_>>()
                .join("-")
        };
        if !self.cross.is_empty() {
            parts.push(format!("cross {}", widths(&self.cross)));
        }
        parts.push(format!(
            "upper [{}] {} wide, {}",
            self.upper_parts
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(","),
            self.upper_in,
            if self.upper.is_empty() {
                "no layers".to_string()
            } else {
                widths(&self.upper)
            }
        ));
        if let Some(m) = &self.mmoe {
            parts.push(format!(
                "MMoE {} experts x {}, {} gates",
                m.experts.len(),
                m.dim,
                self.heads.len()
            ));
        }
        let towers = self.heads.iter().filter(|h| !h.tower.is_empty()).count();
        if towers > 0 {
            parts.push(format!("{towers} head towers"));
        }
        let norm = self.heads.iter().filter(|h| h.normalize.is_some()).count();
        if norm > 0 {
            parts.push(format!("{norm} normalized heads"));
        }
        if self.item_tower.is_some() {
            parts.push("item tower".to_string());
        }
        parts.push(format!("fusion {}", self.fusion.kind()));
        parts.join("; ")
    }
}
