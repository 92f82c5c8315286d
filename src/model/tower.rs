//! The item tower (`item_tower`, contract v2): the network that made an
//! embedding version's vectors from item profile columns. The writer runs
//! it for items added without a vector for that version, a block of rows
//! at a time with the scorer's matrix kernel; a query never runs it.
//!
//! It comes inside a three-tower v2 bundle or alone, as an item-tower-only
//! bundle (`"format": "vstore.item_tower.v1"`: `space`, `version`,
//! `item_dim` and `item_tower` only), which is how a store that serves only
//! two-tower queries publishes it.

use std::sync::Arc;

use super::compile::{self, Tensors};
use super::parts::{ColumnRef, Dense, Input};
use super::score::{item_input, layer, Col};
use super::spec::{self, bad};
use crate::error::{Error, Result};
use crate::kernels::gemm::Start;
use crate::schema::Schema;

/// `format` of an item-tower-only bundle.
pub const ITEM_TOWER_FORMAT: &str = "vstore.item_tower.v1";

/// The name under which a store records an item-tower-only bundle (its
/// bundle id is `space@version#.item_tower`): a name no `model.json` can
/// give, since bundle names may not start with a dot.
pub(crate) const TOWER_BUNDLE_NAME: &str = ".item_tower";

/// What `model.json` says about a bundle before it is validated: its
/// format, the embedding version it is for and whether it carries an item
/// tower (for a tool that must declare the version before a store exists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleHeader {
    /// `format` (`vstore.three_tower.v1`, `vstore.three_tower.v2` or
    /// `vstore.item_tower.v1`).
    pub format: String,
    /// `space@version`.
    pub key: String,
    /// `item_dim`.
    pub item_dim: usize,
    /// Whether the bundle is item-tower-only or carries `item_tower`.
    pub has_item_tower: bool,
}

impl BundleHeader {
    /// Reads the header fields of `model.json` bytes (an error names the
    /// field that is missing or of the wrong type).
    pub fn read(json: &[u8]) -> Result<BundleHeader> {
        spec::header(json)
    }

    /// Whether the bundle is item-tower-only.
    pub fn is_item_tower_only(&self) -> bool {
        self.format == ITEM_TOWER_FORMAT
    }
}

/// Rows computed per block.
const BLOCK: usize = 64;

/// A validated item tower: item inputs (profile columns only) through
/// dense layers to `item_dim` values.
#[derive(Debug, Clone)]
pub(crate) struct ItemTower {
    pub(crate) inputs: Vec<Input>,
    pub(crate) layers: Vec<Dense>,
    /// Width of the concatenated inputs.
    pub(crate) in_width: usize,
    pub(crate) item_dim: usize,
}

/// The columns an item tower reads, one per input, in input order.
#[derive(Debug)]
pub(crate) struct TowerColumns<'a>(Vec<Col<'a>>);

impl<'a> TowerColumns<'a> {
    /// Numeric inputs read `f32` values, categorical ones `u32` (missing
    /// rows hold the column's default, as stored). `numeric(name)` and
    /// `categorical(name)` give a profile column's values by name.
    pub(crate) fn new(
        tower: &ItemTower,
        mut numeric: impl FnMut(&str) -> Result<&'a [f32]>,
        mut categorical: impl FnMut(&str) -> Result<&'a [u32]>,
    ) -> Result<TowerColumns<'a>> {
        let cols = (tower.inputs.iter())
            .map(|inp| match inp {
                Input::ItemNumeric {
                    column: ColumnRef::Profile(n),
                    ..
                } => numeric(n).map(Col::F32),
                Input::ItemCategorical { column, .. } => categorical(column).map(Col::U32),
                // Refused when the tower is compiled.
                _ => Err(Error::InvalidInput(
                    "the item tower reads item profile columns only".into(),
                )),
            })
            .collect::<Result<_>>()?;
        Ok(TowerColumns(cols))
    }
}

impl ItemTower {
    /// Compiles `spec` (checked against `schema` and the weights); fields
    /// are named `item_tower.…` in errors.
    pub(super) fn compile(
        t: &spec::ItemTowerSpec,
        st: &Tensors<'_>,
        schema: &Schema,
        item_dim: usize,
    ) -> Result<ItemTower> {
        let inputs = compile::inputs("item_tower.inputs", &t.inputs, st, schema)?;
        for (i, inp) in inputs.iter().enumerate() {
            if let Input::ItemNumeric {
                column: ColumnRef::Stat(c),
                ..
            } = inp
            {
                return Err(bad(
                    format!("item_tower.inputs[{i}].column"),
                    format!(
                        "{c:?} is a statistics column; the item tower reads profile columns only \
                         (statistics change too fast for a cached vector: they belong in the cross tower)"
                    ),
                ));
            }
        }
        let in_width = inputs.iter().map(Input::dim).sum();
        let (layers, out) = compile::layers(st, "item_tower", &t.layers, in_width)?;
        if out != item_dim {
            return Err(bad(
                format!("item_tower.layers[{}].weight", t.layers.len() - 1),
                format!(
                    "the item tower ends {out} wide; it must give item_dim ({item_dim}) values"
                ),
            ));
        }
        Ok(ItemTower {
            inputs,
            layers,
            in_width,
            item_dim,
        })
    }

    /// Whether `other` computes the same function: the same inputs (columns,
    /// transforms, tables) and layers (weights, biases, activations),
    /// compared value for value as the store holds them (f32).
    pub(crate) fn same_as(&self, other: &ItemTower) -> bool {
        self.item_dim == other.item_dim
            && self.inputs == other.inputs
            && self.layers.len() == other.layers.len()
            && (self.layers.iter().zip(&other.layers)).all(|(a, b)| {
                a.inp == b.inp
                    && a.out == b.out
                    && a.act == b.act
                    && same_bits(&a.w, &b.w)
                    && same_bits(&a.b, &b.b)
            })
    }

    /// FLOPs per item (2 per multiply-add of the dense layers).
    pub(crate) fn flops_per_item(&self) -> usize {
        self.layers.iter().map(|d| 2 * d.inp * d.out).sum()
    }

    /// A one-line description: inputs, layer widths, FLOPs per item.
    pub(crate) fn describe(&self) -> String {
        let widths: Vec<String> = std::iter::once(self.in_width)
            .chain(self.layers.iter().map(|l| l.out))
            .map(|w| w.to_string())
            .collect();
        format!(
            "{} profile inputs, layers {}, {} FLOP per item",
            self.inputs.len(),
            widths.join("-"),
            self.flops_per_item()
        )
    }

    /// Computes the vectors of rows `first..first + out.len() / item_dim`
    /// of `cols` into `out` (row-major, f32), a block at a time. Returns
    /// the first row (of `cols`) one of whose inputs is not finite (`log1p`
    /// of -1 or less), with the input's column, if there is one: its
    /// vector would be what the layers' ReLUs made of a NaN, finite and
    /// wrong, so the caller refuses it.
    #[must_use]
    pub(crate) fn compute(
        &self,
        cols: &TowerColumns<'_>,
        first: usize,
        out: &mut [f32],
    ) -> Option<(usize, &str)> {
        let d = self.item_dim;
        let n = out.len() / d;
        let widest = (self.layers.iter().map(|l| l.out))
            .chain([self.in_width])
            .max()
            .unwrap_or(0);
        let mut x = vec![0f32; BLOCK * widest];
        let mut y = vec![0f32; BLOCK * widest];
        let mut done = 0;
        let mut bad = None;
        while done < n {
            let m = BLOCK.min(n - done);
            for r in 0..m {
                let row = first + done + r;
                let xr = &mut x[r * self.in_width..(r + 1) * self.in_width];
                let mut o = 0;
                for (inp, col) in self.inputs.iter().zip(&cols.0) {
                    if !item_input(inp, *col, row, &mut xr[o..o + inp.dim()]) && bad.is_none() {
                        bad = Some((row, inp.column()));
                    }
                    o += inp.dim();
                }
            }
            let dst = &mut out[done * d..(done + m) * d];
            let last = self.layers.len() - 1;
            for (li, l) in self.layers.iter().enumerate() {
                let start = Start::Bias(&l.b);
                if li == last {
                    layer(l, m, &x, l.inp, &l.pack, dst, d, start, &[]);
                } else {
                    layer(l, m, &x, l.inp, &l.pack, &mut y, l.out, start, &[]);
                    std::mem::swap(&mut x, &mut y);
                }
            }
            done += m;
        }
        bad
    }
}

/// Whether `a` and `b` hold the same f32 values bit for bit.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// An item-tower-only bundle (`"format": "vstore.item_tower.v1"`),
/// validated against a snapshot's schema. A store takes it with
/// [`crate::Transaction::add_model`]; this type checks one without a store
/// and describes it.
///
/// ```
/// # use vstore::*;
/// let schema = Schema::new().numeric("price", 0.0).embedding("item", "v1", 2, Dtype::F32);
/// let json = br#"{"format": "vstore.item_tower.v1", "space": "item", "version": "v1",
///   "item_dim": 2, "item_tower": {"inputs": [{"kind": "item_numeric", "column": "price"}],
///   "layers": [{"weight": "w", "bias": "b", "activation": "identity"}]}}"#;
/// let w: Vec<u8> = [1f32, -1.0].iter().flat_map(|x| x.to_le_bytes()).collect();
/// let b = [0u8; 8];
/// let weights = safetensors::serialize(
///     [("w", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2, 1], &w).unwrap()),
///      ("b", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![2], &b).unwrap())],
///     None,
/// ).unwrap();
/// let t = ItemTowerBundle::load(json, &weights, &schema)?;
/// assert_eq!(t.key(), "item@v1");
/// # Ok::<(), vstore::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ItemTowerBundle {
    /// `space@version`.
    pub(crate) key: String,
    pub(crate) tower: Arc<ItemTower>,
}

impl ItemTowerBundle {
    /// Parses and validates an item-tower-only bundle (`model.json` of
    /// format [`ITEM_TOWER_FORMAT`] and its weights) against `schema`: the
    /// version exists with dimension `item_dim`, the inputs read profile
    /// columns of the right kinds, the layers chain to `item_dim` values.
    /// Any failure is [`Error::Bundle`] naming the field.
    pub fn load(json: &[u8], weights: &[u8], schema: &Schema) -> Result<ItemTowerBundle> {
        Self::load_as(json, weights, schema, true)
    }

    /// [`ItemTowerBundle::load`] of a bundle being added (`new`) or of one
    /// a store holds (checks added since bundles were first stored left
    /// out, as for three-tower bundles).
    pub(crate) fn load_as(
        json: &[u8],
        weights: &[u8],
        schema: &Schema,
        new: bool,
    ) -> Result<ItemTowerBundle> {
        let t = spec::parse_item_tower_bundle(json, new)?;
        let st = super::safetensors_of(weights)?;
        let st = Tensors {
            st: &st,
            overlay: None,
            v2: true,
        };
        let key = compile::embedding_key(&t.space, &t.version, t.item_dim, schema)?;
        let tower = ItemTower::compile(&t.tower, &st, schema, t.item_dim)?;
        Ok(ItemTowerBundle {
            key,
            tower: Arc::new(tower),
        })
    }

    /// The embedding version the tower computes vectors of
    /// (`space@version`).
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A one-line description: inputs, layer widths, FLOPs per item.
    pub fn describe(&self) -> String {
        self.tower.describe()
    }

    /// How the store records the bundle (`space@version#.item_tower`).
    pub(crate) fn bundle_id(&self) -> String {
        super::bundle_id(&self.key, TOWER_BUNDLE_NAME)
    }
}
