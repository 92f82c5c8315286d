//! `model.json`: the bundle's configuration, parsed field by field so that
//! every error names the field at fault (`cross.inputs[2].transform`).
//!
//! The contract is `docs/DESIGN.md` ("Model bundle contract"). Unknown
//! keys are refused (a misspelt `"activaton"` must not be silently ignored).

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The format tag a bundle must carry.
pub const BUNDLE_FORMAT: &str = "vstore.three_tower.v1";

/// A parsed `model.json`, not yet checked against weights or a schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Spec {
    pub space: String,
    pub version: String,
    pub user_dim: usize,
    pub item_dim: usize,
    pub inputs: Vec<InputSpec>,
    pub cross: Vec<LayerSpec>,
    pub upper: Vec<LayerSpec>,
    pub heads: Vec<HeadSpec>,
    pub fusion: FusionSpec,
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
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FusionSpec {
    WeightedSum(Vec<(String, f64)>),
    Product(Vec<(String, f64)>),
    Rank {
        weights: Vec<(String, f64)>,
        alpha: f64,
        beta: f64,
    },
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

fn weights(o: &Obj<'_>, heads: &[HeadSpec]) -> Result<Vec<(String, f64)>> {
    let field = o.field("weights");
    let w = Obj::new(&field, o.req("weights")?)?;
    let mut out = Vec::new();
    for (name, v) in w.map {
        if !heads.iter().any(|h| &h.name == name) {
            return Err(bad(
                format!("{field}.{name}"),
                format!(
                    "names no head; the heads are [{}]",
                    heads
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        out.push((name.clone(), num(&format!("{field}.{name}"), v)?));
    }
    Ok(out)
}

/// Parses `model.json` bytes.
pub(crate) fn parse(json: &[u8]) -> Result<Spec> {
    let root: Value = serde_json::from_slice(json)
        .map_err(|e| bad("model.json", format!("is not valid JSON: {e}")))?;
    let o = Obj::new("", &root)?;
    // The tag first: a bundle of another format may well have keys this
    // one does not know, and the tag is what is wrong with it.
    let format = o.str("format")?;
    if format != BUNDLE_FORMAT {
        return Err(bad(
            "format",
            format!("is {format:?}; this build reads {BUNDLE_FORMAT:?}"),
        ));
    }
    o.only(&[
        "format", "space", "version", "user_dim", "item_dim", "cross", "upper", "heads", "fusion",
    ])?;
    let cross = Obj::new("cross", o.req("cross")?)?;
    cross.only(&["inputs", "layers"])?;
    let inputs: Vec<InputSpec> = cross
        .arr("inputs")?
        .iter()
        .enumerate()
        .map(|(i, v)| input(&Obj::new(&format!("cross.inputs[{i}]"), v)?))
        .collect::<Result<_>>()?;
    if inputs.is_empty() {
        return Err(bad("cross.inputs", "needs at least one input"));
    }
    let upper = Obj::new("upper", o.req("upper")?)?;
    upper.only(&["layers"])?;
    let upper_layers = layers(&upper)?;
    if upper_layers.is_empty() {
        return Err(bad("upper.layers", "needs at least one layer"));
    }
    let mut heads = Vec::new();
    for (i, v) in o.arr("heads")?.iter().enumerate() {
        let h = Obj::new(&format!("heads[{i}]"), v)?;
        h.only(&["name", "weight", "bias", "activation", "neg_sampling_rate"])?;
        let name = h.str("name")?.to_string();
        if heads.iter().any(|x: &HeadSpec| x.name == name) {
            return Err(bad(
                h.field("name"),
                format!("head {name:?} is declared twice"),
            ));
        }
        let layer = layer(&h, true)?;
        let neg_sampling_rate = match h.get("neg_sampling_rate") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let f = h.field("neg_sampling_rate");
                let a = num(&f, v)?;
                if !(a > 0.0 && a <= 1.0) {
                    return Err(bad(f, format!("must be in (0, 1], found {a}")));
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
        heads.push(HeadSpec {
            name,
            layer,
            neg_sampling_rate,
        });
    }
    if heads.is_empty() {
        return Err(bad("heads", "needs at least one head"));
    }
    let f = Obj::new("fusion", o.req("fusion")?)?;
    let fusion = match f.str("kind")? {
        "weighted_sum" => {
            f.only(&["kind", "weights"])?;
            FusionSpec::WeightedSum(weights(&f, &heads)?)
        }
        "product" => {
            f.only(&["kind", "weights"])?;
            let w = weights(&f, &heads)?;
            // p^w needs p > 0: only sigmoid and exp heads are positive.
            for (name, wt) in &w {
                let act = heads
                    .iter()
                    .find(|h| &h.name == name)
                    .map_or(Activation::Identity, |h| h.layer.activation);
                if *wt != 0.0 && !matches!(act, Activation::Sigmoid | Activation::Exp) {
                    return Err(bad(
                        format!("fusion.weights.{name}"),
                        format!(
                            "product fusion raises heads to powers, so its heads must be positive (sigmoid or exp); head {name:?} is {}",
                            act.name()
                        ),
                    ));
                }
            }
            FusionSpec::Product(w)
        }
        "rank" => {
            f.only(&["kind", "weights", "alpha", "beta"])?;
            let alpha = f.num("alpha")?;
            if alpha < 0.0 {
                return Err(bad("fusion.alpha", format!("must be >= 0, found {alpha}")));
            }
            let beta = f.num("beta")?;
            if beta < 0.0 {
                return Err(bad(
                    "fusion.beta",
                    format!("must be >= 0 (a better rank must not score less), found {beta}"),
                ));
            }
            FusionSpec::Rank {
                weights: weights(&f, &heads)?,
                alpha,
                beta,
            }
        }
        other => {
            return Err(bad(
                "fusion.kind",
                format!(
                    "{other:?} is not a fusion kind; expected one of [weighted_sum, product, rank]"
                ),
            ))
        }
    };
    Ok(Spec {
        space: o.str("space")?.to_string(),
        version: o.str("version")?.to_string(),
        user_dim: o.dim("user_dim")?,
        item_dim: o.dim("item_dim")?,
        inputs,
        cross: layers(&cross)?,
        upper: upper_layers,
        heads,
        fusion,
    })
}
