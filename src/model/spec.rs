//! `model.json`: the bundle's configuration, parsed field by field so that
//! every error names the field at fault (`cross.inputs[2].transform`).
//!
//! The contract is `docs/BUNDLE.md` (v1 and v2). Unknown keys are refused
//! (a misspelt `"activaton"` must not be silently ignored), and so are the
//! v2 parts in a bundle tagged v1.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The format tag of a contract v1 bundle.
pub const BUNDLE_FORMAT: &str = "vstore.three_tower.v1";
/// The format tag of a contract v2 bundle (a superset of v1).
pub const BUNDLE_FORMAT_V2: &str = "vstore.three_tower.v2";
/// The name of a bundle whose `model.json` gives none (every v1 bundle).
pub const DEFAULT_BUNDLE_NAME: &str = "default";

/// A parsed `model.json`, not yet checked against weights or a schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spec {
    /// Whether the bundle is tagged v2.
    pub v2: bool,
    pub name: String,
    pub space: String,
    pub version: String,
    pub user_dim: usize,
    pub item_dim: usize,
    pub inputs: Vec<InputSpec>,
    /// `cross.se.layers` (empty: no SE gating).
    pub se: Vec<LayerSpec>,
    pub cross: Vec<LayerSpec>,
    pub item_tower: Option<ItemTowerSpec>,
    /// `upper.inputs`, in order.
    pub upper_inputs: Vec<UpperPart>,
    pub upper: Vec<LayerSpec>,
    pub mmoe: Option<MmoeSpec>,
    pub heads: Vec<HeadSpec>,
    pub fusion: FusionSpec,
}

/// One part of the upper network's input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpperPart {
    User,
    Item,
    Cross,
    Dot,
    Hadamard,
}

impl UpperPart {
    pub(crate) fn name(self) -> &'static str {
        match self {
            UpperPart::User => "user",
            UpperPart::Item => "item",
            UpperPart::Cross => "cross",
            UpperPart::Dot => "dot",
            UpperPart::Hadamard => "hadamard",
        }
    }
}

/// `item_tower`: item profile inputs through a chain of layers to
/// `item_dim` outputs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ItemTowerSpec {
    pub inputs: Vec<InputSpec>,
    pub layers: Vec<LayerSpec>,
}

/// `upper.mmoe`: experts, and one softmax gate per head (in head order).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct MmoeSpec {
    pub experts: Vec<Vec<LayerSpec>>,
    pub gates: Vec<LayerSpec>,
}

/// `heads[i].normalize`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NormalizeSpec {
    pub column: String,
    pub bounds: Vec<f32>,
    pub values: Vec<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TransformSpec {
    Identity,
    Log1p,
    Bucketize(Vec<f32>),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum InputSpec {
    ItemNumeric {
        column: String,
        transform: TransformSpec,
        embedding: Option<String>,
    },
    ItemCategorical {
        column: String,
        embedding: String,
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

/// Activation after a layer or head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `max(x, 0)`.
    Relu,
    /// `1 / (1 + e^-x)`.
    Sigmoid,
    /// `x`.
    Identity,
    /// `e^x` (heads only).
    Exp,
}

impl Activation {
    /// The name used in `model.json`.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Identity => "identity",
            Activation::Exp => "exp",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LayerSpec {
    pub weight: String,
    pub bias: Option<String>,
    pub activation: Activation,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HeadSpec {
    pub name: String,
    pub layer: LayerSpec,
    pub neg_sampling_rate: Option<f64>,
    /// `heads[i].tower.layers` (empty: none).
    pub tower: Vec<LayerSpec>,
    pub normalize: Option<NormalizeSpec>,
}

/// A fusion as `model.json` (or a query) gives it; head and column names
/// are checked against a model when it is compiled ([`super::compile`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FusionSpec {
    WeightedSum(Vec<(String, f64)>),
    /// `prod p_h^w_h * prod x_C^a_C` (`columns` v2 only).
    Product {
        weights: Vec<(String, f64)>,
        columns: Vec<(String, f64)>,
    },
    ClickWeighted {
        base: String,
        weights: Vec<(String, f64)>,
    },
    /// Terms (head, weight, exponent).
    OffsetProduct(Vec<(String, f64, f64)>),
    Rank {
        weights: Vec<(String, f64)>,
        alpha: f64,
        beta: f64,
    },
    /// Terms (head, weight, alpha, beta).
    RankPerHead(Vec<(String, f64, f64, f64)>),
}

impl FusionSpec {
    /// Every head the fusion names, with the field that names it.
    pub(crate) fn heads(&self) -> Vec<(String, &str)> {
        let mut out: Vec<(String, &str)> = Vec::new();
        match self {
            FusionSpec::WeightedSum(w)
            | FusionSpec::Product { weights: w, .. }
            | FusionSpec::Rank { weights: w, .. } => {
                out.extend(w.iter().map(|(h, _)| (format!("weights.{h}"), h.as_str())))
            }
            FusionSpec::ClickWeighted { base, weights } => {
                out.push(("base".to_string(), base.as_str()));
                out.extend(
                    weights
                        .iter()
                        .map(|(h, _)| (format!("weights.{h}"), h.as_str())),
                );
            }
            FusionSpec::OffsetProduct(t) => {
                out.extend(t.iter().map(|(h, ..)| (format!("terms.{h}"), h.as_str())))
            }
            FusionSpec::RankPerHead(t) => {
                out.extend(t.iter().map(|(h, ..)| (format!("terms.{h}"), h.as_str())))
            }
        }
        out
    }

    /// The fusion kind's name in `model.json`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            FusionSpec::WeightedSum(_) => "weighted_sum",
            FusionSpec::Product { .. } => "product",
            FusionSpec::ClickWeighted { .. } => "click_weighted",
            FusionSpec::OffsetProduct(_) => "offset_product",
            FusionSpec::Rank { .. } => "rank",
            FusionSpec::RankPerHead(_) => "rank_per_head",
        }
    }
}

pub(crate) fn bad(field: impl Into<String>, what: impl Into<String>) -> Error {
    Error::Bundle {
        field: field.into(),
        what: what.into(),
    }
}

/// A JSON object being read, with the path that names it in errors.
struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

impl<'a> Obj<'a> {
    fn new(path: &str, v: &'a Value) -> Result<Self> {
        match v {
            Value::Object(map) => Ok(Obj {
                path: path.to_string(),
                map,
            }),
            other => Err(bad(
                display(path),
                format!("must be an object, found {}", kind(other)),
            )),
        }
    }

    fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// Refuses keys other than `allowed`.
    fn only(&self, allowed: &[&str]) -> Result<()> {
        for k in self.map.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(bad(
                    self.field(k),
                    format!("unknown key; expected one of [{}]", allowed.join(", ")),
                ));
            }
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key)
    }

    fn req(&self, key: &str) -> Result<&'a Value> {
        self.get(key)
            .ok_or_else(|| bad(self.field(key), "is required but missing"))
    }

    fn str(&self, key: &str) -> Result<&'a str> {
        match self.req(key)? {
            Value::String(s) if !s.is_empty() => Ok(s),
            Value::String(_) => Err(bad(self.field(key), "must not be empty")),
            other => Err(bad(
                self.field(key),
                format!("must be a string, found {}", kind(other)),
            )),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(_) => self.str(key).map(Some),
        }
    }

    fn dim(&self, key: &str) -> Result<usize> {
        let v = self.req(key)?;
        match v.as_u64() {
            Some(n) if n >= 1 && n <= MAX_DIM as u64 => Ok(n as usize),
            _ => Err(bad(
                self.field(key),
                format!("must be an integer from 1 to {MAX_DIM}, found {v}"),
            )),
        }
    }

    fn num(&self, key: &str) -> Result<f64> {
        num(&self.field(key), self.req(key)?)
    }

    fn arr(&self, key: &str) -> Result<&'a Vec<Value>> {
        match self.req(key)? {
            Value::Array(a) => Ok(a),
            other => Err(bad(
                self.field(key),
                format!("must be an array, found {}", kind(other)),
            )),
        }
    }
}

/// Largest dimension any vector or layer may have (keeps sizes sane
/// before any allocation).
pub(crate) const MAX_DIM: usize = 1 << 16;

fn display(path: &str) -> String {
    if path.is_empty() {
        "model.json".into()
    } else {
        path.into()
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn num(field: &str, v: &Value) -> Result<f64> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(bad(field, format!("must be a finite number, found {v}"))),
    }
}

fn f32_list(field: &str, v: &Value) -> Result<Vec<f32>> {
    let Value::Array(a) = v else {
        return Err(bad(field, format!("must be an array, found {}", kind(v))));
    };
    a.iter()
        .enumerate()
        .map(|(i, x)| {
            let f = num(&format!("{field}[{i}]"), x)?;
            let g = f as f32;
            if g.is_finite() {
                Ok(g)
            } else {
                Err(bad(format!("{field}[{i}]"), "overflows f32"))
            }
        })
        .collect()
}

fn activation(field: &str, v: &Value, head: bool) -> Result<Activation> {
    let s = v.as_str().unwrap_or("");
    match s {
        "relu" => Ok(Activation::Relu),
        "sigmoid" => Ok(Activation::Sigmoid),
        "identity" => Ok(Activation::Identity),
        "exp" if head => Ok(Activation::Exp),
        _ => Err(bad(
            field,
            format!(
                "{v} is not an activation; expected one of [relu, sigmoid, identity{}]",
                if head { ", exp" } else { "" }
            ),
        )),
    }
}

fn layer(o: &Obj<'_>, head: bool) -> Result<LayerSpec> {
    Ok(LayerSpec {
        weight: o.str("weight")?.to_string(),
        bias: o.opt_str("bias")?.map(str::to_string),
        activation: match o.get("activation") {
            None => Activation::Identity,
            Some(v) => activation(&o.field("activation"), v, head)?,
        },
    })
}

fn layers(parent: &Obj<'_>) -> Result<Vec<LayerSpec>> {
    let path = parent.field("layers");
    parent
        .arr("layers")?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let o = Obj::new(&format!("{path}[{i}]"), v)?;
            o.only(&["weight", "bias", "activation"])?;
            layer(&o, false)
        })
        .collect()
}

fn input(o: &Obj<'_>) -> Result<InputSpec> {
    let k = o.str("kind")?;
    match k {
        "item_numeric" => {
            o.only(&["kind", "column", "transform", "embedding"])?;
            let field = o.field("transform");
            let transform = match o.get("transform") {
                None => TransformSpec::Identity,
                Some(Value::String(s)) if s == "identity" => TransformSpec::Identity,
                Some(Value::String(s)) if s == "log1p" => TransformSpec::Log1p,
                Some(v @ Value::Object(_)) => {
                    let t = Obj::new(&field, v)?;
                    t.only(&["bucketize"])?;
                    let f = t.field("bucketize");
                    let b = f32_list(&f, t.req("bucketize")?)?;
                    check_bounds(&f, &b)?;
                    TransformSpec::Bucketize(b)
                }
                Some(v) => {
                    return Err(bad(
                        field,
                        format!(
                            "{v} is not a transform; expected \"identity\", \"log1p\" or {{\"bucketize\": [...]}}"
                        ),
                    ))
                }
            };
            let embedding = o.opt_str("embedding")?.map(str::to_string);
            match (&transform, &embedding) {
                (TransformSpec::Bucketize(_), None) => {
                    return Err(bad(
                        o.field("embedding"),
                        "is required with a bucketize transform (a table [buckets, e])",
                    ))
                }
                (TransformSpec::Identity | TransformSpec::Log1p, Some(_)) => {
                    return Err(bad(
                        o.field("embedding"),
                        "is only allowed with a bucketize transform",
                    ))
                }
                _ => {}
            }
            Ok(InputSpec::ItemNumeric {
                column: o.str("column")?.to_string(),
                transform,
                embedding,
            })
        }
        "item_categorical" => {
            o.only(&["kind", "column", "embedding"])?;
            Ok(InputSpec::ItemCategorical {
                column: o.str("column")?.to_string(),
                embedding: o.str("embedding")?.to_string(),
            })
        }
        "user_dense" => {
            o.only(&["kind", "name", "dim"])?;
            Ok(InputSpec::UserDense {
                name: o.str("name")?.to_string(),
                dim: o.dim("dim")?,
            })
        }
        "user_by_item" => {
            o.only(&["kind", "name", "column", "dim", "default"])?;
            let dim = o.dim("dim")?;
            let default = match o.get("default") {
                None => vec![0.0; dim],
                Some(v) => f32_list(&o.field("default"), v)?,
            };
            if default.len() != dim {
                return Err(bad(
                    o.field("default"),
                    format!("has {} values; dim is {dim}", default.len()),
                ));
            }
            Ok(InputSpec::UserByItem {
                name: o.str("name")?.to_string(),
                column: o.str("column")?.to_string(),
                dim,
                default,
            })
        }
        other => Err(bad(
            o.field("kind"),
            format!(
                "{other:?} is not an input kind; expected one of [item_numeric, item_categorical, user_dense, user_by_item]"
            ),
        )),
    }
}

/// An object of numbers by name (`weights`, `columns`), in file order.
fn named_numbers(o: &Obj<'_>, key: &str) -> Result<Vec<(String, f64)>> {
    let field = o.field(key);
    let w = Obj::new(&field, o.req(key)?)?;
    w.map
        .iter()
        .map(|(name, v)| Ok((name.clone(), num(&format!("{field}.{name}"), v)?)))
        .collect()
}

/// Parses a fusion object (`path` names it in errors). `v2` allows the v2
/// kinds and `columns`. Head and column names are checked when the fusion
/// is compiled against a model.
fn fusion(f: &Obj<'_>, v2: bool, new: bool) -> Result<FusionSpec> {
    let spec = fusion_kind(f, v2)?;
    if !new {
        return Ok(spec);
    }
    // A fusion whose every term is zero scores every item the same (the
    // order would fall to item ids): a mistake, not a ranking.
    let nonzero = |x: &f64| *x != 0.0;
    let (reads, key) = match &spec {
        FusionSpec::WeightedSum(w) | FusionSpec::Rank { weights: w, .. } => {
            (w.iter().any(|(_, x)| nonzero(x)), "weights")
        }
        FusionSpec::Product { weights, columns } => (
            weights.iter().chain(columns).any(|(_, x)| nonzero(x)),
            "weights",
        ),
        FusionSpec::ClickWeighted { .. } => (true, "base"),
        FusionSpec::OffsetProduct(t) => {
            (t.iter().any(|(_, w, a)| nonzero(w) && nonzero(a)), "terms")
        }
        FusionSpec::RankPerHead(t) => (t.iter().any(|(_, w, _, _)| nonzero(w)), "terms"),
    };
    if !reads {
        return Err(bad(
            f.field(key),
            "gives no head (or column) a non-zero term: every item would score the same",
        ));
    }
    Ok(spec)
}

/// [`fusion`]'s parse of each kind.
fn fusion_kind(f: &Obj<'_>, v2: bool) -> Result<FusionSpec> {
    let kind = f.str("kind")?;
    let v2_only = |k: &str| -> Result<()> {
        if v2 {
            Ok(())
        } else {
            Err(bad(
                f.field("kind"),
                format!("{k:?} is a contract v2 fusion kind; tag the bundle {BUNDLE_FORMAT_V2:?}"),
            ))
        }
    };
    let nonneg = |field: String, x: f64, why: &str| -> Result<f64> {
        if x >= 0.0 {
            Ok(x)
        } else {
            Err(bad(field, format!("must be >= 0 ({why}), found {x}")))
        }
    };
    Ok(match kind {
        "weighted_sum" => {
            f.only(&["kind", "weights"])?;
            FusionSpec::WeightedSum(named_numbers(f, "weights")?)
        }
        "product" => {
            if v2 {
                f.only(&["kind", "weights", "columns"])?;
            } else {
                f.only(&["kind", "weights"])?;
            }
            let columns = match f.get("columns") {
                None => Vec::new(),
                Some(_) => named_numbers(f, "columns")?,
            };
            FusionSpec::Product {
                weights: named_numbers(f, "weights")?,
                columns,
            }
        }
        "rank" => {
            f.only(&["kind", "weights", "alpha", "beta"])?;
            let alpha = nonneg(f.field("alpha"), f.num("alpha")?, "an offset of ranks")?;
            let beta = nonneg(
                f.field("beta"),
                f.num("beta")?,
                "a better rank must not score less",
            )?;
            FusionSpec::Rank {
                weights: named_numbers(f, "weights")?,
                alpha,
                beta,
            }
        }
        "click_weighted" => {
            v2_only(kind)?;
            f.only(&["kind", "base", "weights"])?;
            FusionSpec::ClickWeighted {
                base: f.str("base")?.to_string(),
                weights: named_numbers(f, "weights")?,
            }
        }
        "offset_product" => {
            v2_only(kind)?;
            f.only(&["kind", "terms"])?;
            let field = f.field("terms");
            let t = Obj::new(&field, f.req("terms")?)?;
            let mut terms = Vec::new();
            for (h, v) in t.map {
                let o = Obj::new(&format!("{field}.{h}"), v)?;
                o.only(&["weight", "exponent"])?;
                let w = nonneg(
                    o.field("weight"),
                    o.num("weight")?,
                    "1 + w * p must stay positive",
                )?;
                terms.push((h.clone(), w, o.num("exponent")?));
            }
            FusionSpec::OffsetProduct(terms)
        }
        "rank_per_head" => {
            v2_only(kind)?;
            f.only(&["kind", "terms"])?;
            let field = f.field("terms");
            let t = Obj::new(&field, f.req("terms")?)?;
            let mut terms = Vec::new();
            for (h, v) in t.map {
                let o = Obj::new(&format!("{field}.{h}"), v)?;
                o.only(&["weight", "alpha", "beta"])?;
                let a = nonneg(
                    o.field("alpha"),
                    o.num("alpha")?,
                    "a better rank must not score less",
                )?;
                let b = nonneg(
                    o.field("beta"),
                    o.num("beta")?,
                    "rank^alpha + beta must stay positive",
                )?;
                terms.push((h.clone(), o.num("weight")?, a, b));
            }
            FusionSpec::RankPerHead(terms)
        }
        other => {
            let kinds = if v2 {
                "weighted_sum, product, rank, click_weighted, offset_product, rank_per_head"
            } else {
                "weighted_sum, product, rank"
            };
            return Err(bad(
                f.field("kind"),
                format!("{other:?} is not a fusion kind; expected one of [{kinds}]"),
            ));
        }
    })
}

/// Parses a fusion object given with a query (any contract v2 kind).
pub(crate) fn query_fusion(json: &[u8]) -> Result<FusionSpec> {
    let root = super::json::parse(json, "fusion", "fusion")?;
    fusion(&Obj::new("fusion", &root)?, true, true)
}

/// A chain of layers under `parent.key` (`{"layers": [...]}`); `None` if
/// the key is absent.
fn chain(parent: &Obj<'_>, key: &str) -> Result<Option<Vec<LayerSpec>>> {
    let Some(v) = parent.get(key) else {
        return Ok(None);
    };
    let o = Obj::new(&parent.field(key), v)?;
    o.only(&["layers"])?;
    let l = layers(&o)?;
    if l.is_empty() {
        return Err(bad(o.field("layers"), "needs at least one layer"));
    }
    Ok(Some(l))
}

fn cross_inputs(o: &Obj<'_>) -> Result<Vec<InputSpec>> {
    let path = o.field("inputs");
    let inputs: Vec<InputSpec> = o
        .arr("inputs")?
        .iter()
        .enumerate()
        .map(|(i, v)| input(&Obj::new(&format!("{path}[{i}]"), v)?))
        .collect::<Result<_>>()?;
    if inputs.is_empty() {
        return Err(bad(path, "needs at least one input"));
    }
    Ok(inputs)
}

fn item_tower(o: &Obj<'_>) -> Result<ItemTowerSpec> {
    o.only(&["inputs", "layers"])?;
    let inputs = cross_inputs(o)?;
    for (i, inp) in inputs.iter().enumerate() {
        if matches!(
            inp,
            InputSpec::UserDense { .. } | InputSpec::UserByItem { .. }
        ) {
            return Err(bad(
                format!("{}[{i}].kind", o.field("inputs")),
                "the item tower reads item profile columns only (item_numeric, item_categorical)",
            ));
        }
    }
    let layers = layers(o)?;
    if layers.is_empty() {
        return Err(bad(o.field("layers"), "needs at least one layer"));
    }
    Ok(ItemTowerSpec { inputs, layers })
}

fn upper_inputs(upper: &Obj<'_>) -> Result<Vec<UpperPart>> {
    let Some(_) = upper.get("inputs") else {
        return Ok(vec![UpperPart::User, UpperPart::Item, UpperPart::Cross]);
    };
    let path = upper.field("inputs");
    let mut parts = Vec::new();
    for (i, v) in upper.arr("inputs")?.iter().enumerate() {
        let part = match v.as_str() {
            Some("user") => UpperPart::User,
            Some("item") => UpperPart::Item,
            Some("cross") => UpperPart::Cross,
            Some("dot") => UpperPart::Dot,
            Some("hadamard") => UpperPart::Hadamard,
            _ => {
                return Err(bad(
                    format!("{path}[{i}]"),
                    format!(
                    "{v} is not an upper input; expected one of [user, item, cross, dot, hadamard]"
                ),
                ))
            }
        };
        if parts.contains(&part) {
            return Err(bad(
                format!("{path}[{i}]"),
                format!("{:?} is listed twice", part.name()),
            ));
        }
        parts.push(part);
    }
    if parts.is_empty() {
        return Err(bad(path, "needs at least one part"));
    }
    Ok(parts)
}

fn mmoe(o: &Obj<'_>, heads: &[HeadSpec]) -> Result<MmoeSpec> {
    o.only(&["experts", "gates"])?;
    let path = o.field("experts");
    let mut experts = Vec::new();
    for (i, v) in o.arr("experts")?.iter().enumerate() {
        let e = Obj::new(&format!("{path}[{i}]"), v)?;
        e.only(&["layers"])?;
        let l = layers(&e)?;
        if l.is_empty() {
            return Err(bad(e.field("layers"), "needs at least one layer"));
        }
        experts.push(l);
    }
    if experts.len() < 2 {
        return Err(bad(path, "needs at least two experts"));
    }
    let field = o.field("gates");
    let g = Obj::new(&field, o.req("gates")?)?;
    for name in g.map.keys() {
        if !heads.iter().any(|h| &h.name == name) {
            return Err(bad(
                format!("{field}.{name}"),
                format!("names no head; the heads are [{}]", head_names(heads)),
            ));
        }
    }
    let mut gates = Vec::new();
    for h in heads {
        let Some(v) = g.get(&h.name) else {
            return Err(bad(
                format!("{field}.{}", h.name),
                format!(
                    "head {:?} has no gate; with mmoe every head needs one",
                    h.name
                ),
            ));
        };
        let o = Obj::new(&format!("{field}.{}", h.name), v)?;
        o.only(&["weight", "bias"])?;
        gates.push(layer(&o, false)?);
    }
    Ok(MmoeSpec { experts, gates })
}

pub(crate) fn head_names(heads: &[HeadSpec]) -> String {
    heads
        .iter()
        .map(|h| h.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn normalize(o: &Obj<'_>) -> Result<NormalizeSpec> {
    o.only(&["column", "bucketize", "values"])?;
    let f = o.field("bucketize");
    let bounds = f32_list(&f, o.req("bucketize")?)?;
    check_bounds(&f, &bounds)?;
    let vf = o.field("values");
    let Value::Array(vals) = o.req("values")? else {
        return Err(bad(vf, "must be an array of numbers"));
    };
    let values = vals
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = num(&format!("{vf}[{i}]"), v)?;
            // The scorer divides by the value as f32: it must stay a
            // positive finite f32.
            if x > 0.0 && (x as f32) > 0.0 && (x as f32).is_finite() {
                Ok(x)
            } else {
                Err(bad(
                    format!("{vf}[{i}]"),
                    format!("must be > 0 and a finite f32 (a divisor), found {x}"),
                ))
            }
        })
        .collect::<Result<Vec<f64>>>()?;
    if values.len() != bounds.len() + 1 {
        return Err(bad(
            vf,
            format!(
                "has {} values; {} boundaries make {} buckets, one value each",
                values.len(),
                bounds.len(),
                bounds.len() + 1
            ),
        ));
    }
    Ok(NormalizeSpec {
        column: o.str("column")?.to_string(),
        bounds,
        values,
    })
}

/// Bucket boundaries: at least one, strictly increasing.
fn check_bounds(f: &str, b: &[f32]) -> Result<()> {
    if b.is_empty() {
        return Err(bad(f, "needs at least one boundary"));
    }
    if let Some(i) = b.windows(2).position(|w| w[0] >= w[1]) {
        return Err(bad(
            format!("{f}[{}]", i + 1),
            format!(
                "boundaries must be strictly increasing ({} follows {})",
                b[i + 1],
                b[i]
            ),
        ));
    }
    Ok(())
}

fn head(h: &Obj<'_>, v2: bool, new: bool) -> Result<HeadSpec> {
    if v2 {
        h.only(&[
            "name",
            "weight",
            "bias",
            "activation",
            "neg_sampling_rate",
            "tower",
            "normalize",
        ])?;
    } else {
        h.only(&["name", "weight", "bias", "activation", "neg_sampling_rate"])?;
    }
    let layer = layer(h, true)?;
    let neg_sampling_rate = match h.get("neg_sampling_rate") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let f = h.field("neg_sampling_rate");
            let a = num(&f, v)?;
            if !(a > 0.0 && a <= 1.0) {
                return Err(bad(f, format!("must be in (0, 1], found {a}")));
            }
            // Calibrated values are f32: below the smallest normal f32 the
            // rate would make every value of the head 0.
            if new && a < f64::from(f32::MIN_POSITIVE) {
                return Err(bad(
                    f,
                    format!(
                        "is {a}, below {:e} (the smallest normal f32: every calibrated value \
                         would read 0)",
                        f32::MIN_POSITIVE
                    ),
                ));
            }
            if layer.activation != Activation::Sigmoid {
                return Err(bad(
                    f,
                    "calibrates a probability: only allowed on a sigmoid head",
                ));
            }
            Some(a)
        }
    };
    let normalize = match h.get("normalize") {
        None => None,
        Some(v) => Some(normalize(&Obj::new(&h.field("normalize"), v)?)?),
    };
    Ok(HeadSpec {
        name: h.str("name")?.to_string(),
        layer,
        neg_sampling_rate,
        tower: chain(h, "tower")?.unwrap_or_default(),
        normalize,
    })
}

/// `model.json`'s `format`, if it is JSON with a string there.
pub(crate) fn format_tag(json: &[u8]) -> Option<String> {
    let root: Value = serde_json::from_slice(json).ok()?;
    Some(root.get("format")?.as_str()?.to_string())
}

/// The header fields of `model.json` (see [`super::BundleHeader`]).
pub(crate) fn header(json: &[u8]) -> Result<super::BundleHeader> {
    let root: Value = serde_json::from_slice(json)
        .map_err(|e| bad("model.json", format!("is not valid JSON: {e}")))?;
    let o = Obj::new("", &root)?;
    let format = o.str("format")?.to_string();
    Ok(super::BundleHeader {
        has_item_tower: format == super::ITEM_TOWER_FORMAT || o.get("item_tower").is_some(),
        format,
        key: format!("{}@{}", o.str("space")?, o.str("version")?),
        item_dim: o.dim("item_dim")?,
    })
}

/// An item-tower-only bundle (`"format": "vstore.item_tower.v1"`).
#[derive(Debug, Clone)]
pub(crate) struct TowerSpec {
    pub space: String,
    pub version: String,
    pub item_dim: usize,
    pub tower: ItemTowerSpec,
}

/// Parses the `model.json` bytes of an item-tower-only bundle.
/// `new`: a bundle being added (a key given twice is refused), not one a
/// store holds (see [`parse_stored`]).
pub(crate) fn parse_item_tower_bundle(json: &[u8], new: bool) -> Result<TowerSpec> {
    let root = if new {
        super::json::parse(json, "model.json", "")?
    } else {
        serde_json::from_slice(json)
            .map_err(|e| bad("model.json", format!("is not valid JSON: {e}")))?
    };
    let o = Obj::new("", &root)?;
    let format = o.str("format")?;
    if format != super::ITEM_TOWER_FORMAT {
        return Err(bad(
            "format",
            format!(
                "is {format:?}; an item-tower-only bundle is {:?}",
                super::ITEM_TOWER_FORMAT
            ),
        ));
    }
    o.only(&["format", "space", "version", "item_dim", "item_tower"])?;
    Ok(TowerSpec {
        space: o.str("space")?.to_string(),
        version: o.str("version")?.to_string(),
        item_dim: o.dim("item_dim")?,
        tower: item_tower(&Obj::new("item_tower", o.req("item_tower")?)?)?,
    })
}

/// Parses `model.json` bytes (contract v1 or v2).
pub(crate) fn parse(json: &[u8]) -> Result<Spec> {
    parse_as(json, true)
}

/// [`parse`] of a bundle a store already holds: the checks added after
/// bundles could first be stored (a key given twice, a fusion with no
/// non-zero term, a calibration rate below the smallest normal f32) are
/// not applied, so that a store written before them keeps opening and
/// scoring as it did.
pub(crate) fn parse_stored(json: &[u8]) -> Result<Spec> {
    parse_as(json, false)
}

/// [`parse`], with the checks for new bundles (`new`) or without.
fn parse_as(json: &[u8], new: bool) -> Result<Spec> {
    let root = if new {
        super::json::parse(json, "model.json", "")?
    } else {
        serde_json::from_slice(json)
            .map_err(|e| bad("model.json", format!("is not valid JSON: {e}")))?
    };
    let o = Obj::new("", &root)?;
    // The tag first: a bundle of another format may well have keys this
    // one does not know, and the tag is what is wrong with it.
    let format = o.str("format")?;
    let v2 = match format {
        BUNDLE_FORMAT => false,
        BUNDLE_FORMAT_V2 => true,
        super::ITEM_TOWER_FORMAT => {
            return Err(bad(
                "format",
                format!(
                    "is {format:?}: an item-tower-only bundle, which computes item vectors and \
                     scores nothing (a store takes it with add_model; a three-tower model is \
                     {BUNDLE_FORMAT:?} or {BUNDLE_FORMAT_V2:?})"
                ),
            ))
        }
        _ => {
            return Err(bad(
                "format",
                format!(
                    "is {format:?}; this build reads {BUNDLE_FORMAT:?} and {BUNDLE_FORMAT_V2:?}"
                ),
            ))
        }
    };
    let top: &[&str] = if v2 {
        &[
            "format",
            "name",
            "space",
            "version",
            "user_dim",
            "item_dim",
            "cross",
            "item_tower",
            "upper",
            "heads",
            "fusion",
        ]
    } else {
        &[
            "format", "space", "version", "user_dim", "item_dim", "cross", "upper", "heads",
            "fusion",
        ]
    };
    o.only(top)?;
    let cross = Obj::new("cross", o.req("cross")?)?;
    cross.only(if v2 {
        &["inputs", "layers", "se"]
    } else {
        &["inputs", "layers"]
    })?;
    let inputs = cross_inputs(&cross)?;
    let upper = Obj::new("upper", o.req("upper")?)?;
    upper.only(if v2 {
        &["inputs", "layers", "mmoe"]
    } else {
        &["layers"]
    })?;
    let upper_layers = match upper.get("layers") {
        None if v2 => Vec::new(),
        _ => layers(&upper)?,
    };
    if upper_layers.is_empty() && !v2 {
        return Err(bad("upper.layers", "needs at least one layer"));
    }
    let mut heads: Vec<HeadSpec> = Vec::new();
    for (i, v) in o.arr("heads")?.iter().enumerate() {
        let h = head(&Obj::new(&format!("heads[{i}]"), v)?, v2, new)?;
        if heads.iter().any(|x| x.name == h.name) {
            return Err(bad(
                format!("heads[{i}].name"),
                format!("head {:?} is declared twice", h.name),
            ));
        }
        heads.push(h);
    }
    if heads.is_empty() {
        return Err(bad("heads", "needs at least one head"));
    }
    let mmoe = match upper.get("mmoe") {
        None => None,
        Some(v) => Some(mmoe(&Obj::new("upper.mmoe", v)?, &heads)?),
    };
    let item_tower = match o.get("item_tower") {
        None => None,
        Some(v) => Some(item_tower(&Obj::new("item_tower", v)?)?),
    };
    let name = match o.opt_str("name")? {
        Some(n) => {
            crate::schema::check_bundle_name(n).map_err(|what| bad("name", what))?;
            n.to_string()
        }
        None => DEFAULT_BUNDLE_NAME.to_string(),
    };
    Ok(Spec {
        v2,
        name,
        space: o.str("space")?.to_string(),
        version: o.str("version")?.to_string(),
        user_dim: o.dim("user_dim")?,
        item_dim: o.dim("item_dim")?,
        inputs,
        se: chain(&cross, "se")?.unwrap_or_default(),
        // Absent or empty: the cross input goes on unchanged.
        cross: match cross.get("layers") {
            None => Vec::new(),
            Some(_) => layers(&cross)?,
        },
        item_tower,
        upper_inputs: upper_inputs(&upper)?,
        upper: upper_layers,
        mmoe,
        heads,
        fusion: fusion(&Obj::new("fusion", o.req("fusion")?)?, v2, new)?,
    })
}

#[cfg(test)]
mod tests {
    use super::{parse, parse_stored};
    use crate::model::ExampleBundle;

    /// Checks added after bundles were first stored apply to bundles being
    /// added only: a store written before them keeps opening.
    #[test]
    fn stored_bundles_skip_the_checks_added_since() {
        let (json, _) = ExampleBundle::new("prerank", "v1").files();
        let text = String::from_utf8(json).unwrap();
        // A key given twice (serde_json keeps the last).
        let twice = text.replacen('{', r#"{"space": "prerank","#, 1);
        assert!(parse(twice.as_bytes()).is_err());
        assert_eq!(parse_stored(twice.as_bytes()).unwrap().space, "prerank");
        // A fusion with no non-zero term, and a rate below f32's normals.
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["fusion"]["weights"] = serde_json::json!({});
        v["heads"][0]["neg_sampling_rate"] = serde_json::json!(1e-50);
        let odd = serde_json::to_vec(&v).unwrap();
        assert!(parse(&odd).is_err());
        parse_stored(&odd).unwrap();
    }
}
