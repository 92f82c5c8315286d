//! Compiling a parsed bundle ([`Spec`]) against its weights and a
//! snapshot's schema into a [`Model`]: every check the bundle contract
//! (`docs/BUNDLE.md`) makes of the weights and the columns, in the order a
//! reader of `model.json` meets them, and the packing of weights for the
//! scorer. Each step is a function; `compile` runs them.

use super::parts::{
    ColumnRef, Dense, FirstLayer, FusionPlan, Head, Input, Mmoe, Normalize, Table, Transform,
};
use super::spec::{
    bad, Activation, FusionSpec, InputSpec, LayerSpec, Spec, TransformSpec, UpperPart,
};
use super::tower::ItemTower;
use super::Model;
use crate::error::{Error, Result};
use crate::kernels::gemm;
use crate::schema::{ColumnGroup, ColumnKind, Schema};
use std::sync::Arc;

/// A bundle's `weights.safetensors`, as parsed, and whether the bundle is
/// v2 (which allows float16 and bfloat16 tensors besides float32); and
/// the weights the store converted to the bundle's precision when it was
/// added, read in place of the tensors of the same names
/// (`super::precision`).
pub(super) struct Tensors<'a> {
    pub st: &'a safetensors::SafeTensors<'a>,
    pub overlay: Option<&'a safetensors::SafeTensors<'a>>,
    pub v2: bool,
}

impl Model {
    pub(super) fn compile(
        spec: Spec,
        st: &Tensors<'_>,
        schema: &Schema,
        json: String,
    ) -> Result<Model> {
        let key = embedding_key(&spec.space, &spec.version, spec.item_dim, schema)?;
        let inputs = inputs("cross.inputs", &spec.inputs, st, schema)?;
        let cross_in: usize = inputs.iter().map(Input::dim).sum();
        let se = se(&spec, st, inputs.len())?;
        let dense_in: usize = (inputs.iter())
            .filter(|i| matches!(i, Input::UserDense { .. }))
            .map(Input::dim)
            .sum();
        // SE scales every input per row, the user_dense ones too: then
        // they cannot be folded into a per-query bias.
        let split = se.is_empty() && !spec.cross.is_empty() && dense_in > 0 && dense_in < cross_in;
        let row_in = if split { cross_in - dense_in } else { cross_in };
        let (cross, cross_out) = layers(st, "cross", &spec.cross, cross_in)?;
        let item_tower = match &spec.item_tower {
            // The item tower runs in f32 whatever the scorer's precision.
            Some(t) => {
                let f32_only = Tensors {
                    st: st.st,
                    overlay: None,
                    v2: st.v2,
                };
                Some(Arc::new(ItemTower::compile(
                    t,
                    &f32_only,
                    schema,
                    spec.item_dim,
                )?))
            }
            None => None,
        };
        let (ud, id) = (spec.user_dim, spec.item_dim);
        let upper_in = upper_width(&spec, cross_out)?;
        let (upper, width) = layers(st, "upper", &spec.upper, upper_in)?;
        let mmoe = match &spec.mmoe {
            Some(m) => Some(mmoe(m, st, width, &spec.heads)?),
            None => None,
        };
        let head_in = mmoe.as_ref().map_or(width, |m| m.dim);
        let heads = heads(&spec, st, schema, head_in)?;
        let head_layer = (mmoe.is_none() && heads.iter().all(|h| h.tower.is_empty()))
            .then(|| stacked_heads(&heads, width));
        let pack_cross0 = match cross.first() {
            Some(c0) if split => per_row_columns(c0, &inputs, row_in),
            _ => gemm::Weights::new(&[], 0, 0, 0),
        };
        let first = match upper.first() {
            Some(w0) => first_layer(&spec.upper_inputs, w0, ud, id, cross_out),
            None => FirstLayer::default(),
        };
        // The item vector is read per row unless nothing reads it.
        let reads_item = spec
            .upper_inputs
            .iter()
            .any(|p| matches!(p, UpperPart::Item | UpperPart::Dot | UpperPart::Hadamard));
        let a_item = if reads_item { id } else { 0 };
        let pack_a = if upper.is_empty() || first.per_query() {
            gemm::Weights::new(&[], 0, 0, 0)
        } else {
            first.pack_a(a_item, id, cross_out, None)
        };
        let out0 = upper.first().map_or(0, |d| d.out);
        let pack_item = gemm::Weights::new(
            &first.item,
            id,
            id,
            if first.item.is_empty() { 0 } else { out0 },
        );
        // Without a "cross" part the first layer reads none of the cross
        // output: zero columns (the `A` rows still carry it).
        let zeros;
        let cross_cols = if first.cross.is_empty() {
            zeros = vec![0f32; out0 * cross_out];
            &zeros
        } else {
            &first.cross
        };
        let pack_cross = gemm::Weights::new(cross_cols, cross_out, cross_out, out0);
        let fusion = fusion(&spec.fusion, &heads, schema)?;
        Ok(Model {
            key,
            name: spec.name,
            v2: spec.v2,
            space: spec.space,
            version: spec.version,
            user_dim: ud,
            item_dim: id,
            inputs,
            cross_in,
            split,
            row_in,
            pack_cross0,
            se,
            cross,
            cross_out,
            item_tower,
            upper_parts: spec.upper_inputs,
            upper_in,
            upper,
            first,
            a_item,
            pack_a,
            width,
            mmoe,
            head_layer,
            heads,
            fusion,
            pack_item,
            pack_cross,
            json,
            precision: crate::kernels::Precision::F32,
            converted: None,
            f32_twin: None,
        })
    }
}

/// `space@version`, checked against the snapshot: it must hold that
/// embedding, with the bundle's `item_dim`.
/// The embedding `space@version` a bundle is for, which `schema` must hold
/// with dimension `item_dim`.
pub(super) fn embedding_key(
    space: &str,
    version: &str,
    item_dim: usize,
    schema: &Schema,
) -> Result<String> {
    let key = format!("{space}@{version}");
    let Some(def) = schema.embedding_def(&key) else {
        // The field at fault: the space if the snapshot holds no
        // version of it, else the version.
        let keys = schema.embedding_keys();
        let space_known = keys
            .iter()
            .any(|k| k.split_once('@').is_some_and(|(s, _)| s == space));
        return Err(bad(
            if space_known { "version" } else { "space" },
            format!(
                "the bundle is for {key}, which the snapshot does not hold; it holds [{}]",
                keys.join(", ")
            ),
        ));
    };
    if def.dim as usize != item_dim {
        return Err(bad(
            "item_dim",
            format!("is {item_dim}; embedding {key} has dimension {}", def.dim),
        ));
    }
    Ok(key)
}

/// The cross tower's inputs, each resolved against the schema and the
/// weights ([`input`]); user input names unique.
pub(super) fn inputs(
    path: &str,
    list: &[InputSpec],
    st: &Tensors<'_>,
    schema: &Schema,
) -> Result<Vec<Input>> {
    let mut inputs = Vec::with_capacity(list.len());
    let mut names: Vec<&str> = Vec::new();
    for (i, inp) in list.iter().enumerate() {
        let field = format!("{path}[{i}]");
        inputs.push(input(&field, inp, st, schema)?);
        if let InputSpec::UserDense { name, .. } | InputSpec::UserByItem { name, .. } = inp {
            if names.contains(&name.as_str()) {
                return Err(bad(
                    format!("{field}.name"),
                    format!("user input {name:?} is declared twice"),
                ));
            }
            names.push(name);
        }
    }
    Ok(inputs)
}

/// One cross-tower input (`field` names it in errors): the column it reads
/// present and of the kind it needs, its tables of the right shape.
fn input(field: &str, inp: &InputSpec, st: &Tensors<'_>, schema: &Schema) -> Result<Input> {
    Ok(match inp {
        InputSpec::ItemNumeric {
            column,
            transform,
            embedding,
        } => {
            let column = numeric(schema, &format!("{field}.column"), column, "item_numeric")?;
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
            categorical(schema, field, column)?;
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
            categorical(schema, field, column)?;
            Input::UserByItem {
                name: name.clone(),
                column: column.clone(),
                dim: *dim,
                default: default.clone(),
            }
        }
    })
}

/// Checks that `col` is a categorical profile column, for the input `field`.
fn categorical(schema: &Schema, field: &str, col: &str) -> Result<()> {
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
}

/// A stack of dense layers (`prefix.layers[i]`) starting `width` wide;
/// returns them and the last one's width (`width` if there are none).
pub(super) fn layers(
    st: &Tensors<'_>,
    prefix: &str,
    specs: &[LayerSpec],
    mut width: usize,
) -> Result<(Vec<Dense>, usize)> {
    let mut out = Vec::with_capacity(specs.len());
    for (i, l) in specs.iter().enumerate() {
        let d = dense(st, &format!("{prefix}.layers[{i}]"), l, width)?;
        width = d.out;
        out.push(d);
    }
    Ok((out, width))
}

/// The first cross layer's weights for the per-row inputs only (the
/// `user_dense` columns run once per query).
fn per_row_columns(c0: &Dense, inputs: &[Input], row_in: usize) -> gemm::Weights {
    let mut w = Vec::with_capacity(c0.out * row_in);
    for j in 0..c0.out {
        let mut off = 0;
        for inp in inputs {
            if !matches!(inp, Input::UserDense { .. }) {
                w.extend_from_slice(&c0.w[j * c0.inp + off..][..inp.dim()]);
            }
            off += inp.dim();
        }
    }
    gemm::Weights::new(&w, row_in, row_in, c0.out)
}

/// A numeric column (profile or statistics) named by `field`, resolved as
/// filters resolve a numeric name; `user` says what needs it.
pub(super) fn numeric(schema: &Schema, field: &str, column: &str, user: &str) -> Result<ColumnRef> {
    match schema.numeric_column(column) {
        Some((ColumnGroup::Stats, _)) => Ok(ColumnRef::Stat(column.to_string())),
        Some((ColumnGroup::Profile, c)) => {
            if !matches!(c.kind, ColumnKind::Numeric { .. }) {
                return Err(bad(
                    field,
                    format!("profile column {column:?} is categorical; {user} needs a numeric profile or statistics column"),
                ));
            }
            Ok(ColumnRef::Profile(column.to_string()))
        }
        None => Err(bad(
            field,
            format!("no numeric column {column:?} in the profile or statistics columns"),
        )),
    }
}

/// `cross.se.layers`: from one value per cross input (its mean) to one
/// scale per input.
fn se(spec: &Spec, st: &Tensors<'_>, n_inputs: usize) -> Result<Vec<Dense>> {
    if spec.se.is_empty() {
        return Ok(Vec::new());
    }
    let (se, out) = layers(st, "cross.se", &spec.se, n_inputs)?;
    if out != n_inputs {
        let last = spec.se.len() - 1;
        return Err(bad(
            format!("cross.se.layers[{last}].weight"),
            format!(
                "the SE chain ends {out} wide; it must give one scale per cross input ({n_inputs})"
            ),
        ));
    }
    Ok(se)
}

/// The width of the upper network's input (`upper.inputs` concatenated),
/// checking that `dot` and `hadamard` have vectors of one length.
fn upper_width(spec: &Spec, cross_out: usize) -> Result<usize> {
    let mut w = 0;
    for (i, p) in spec.upper_inputs.iter().enumerate() {
        w += match p {
            UpperPart::User => spec.user_dim,
            UpperPart::Item => spec.item_dim,
            UpperPart::Cross => cross_out,
            UpperPart::Dot | UpperPart::Hadamard => {
                if spec.user_dim != spec.item_dim {
                    return Err(bad(
                        format!("upper.inputs[{i}]"),
                        format!(
                            "{:?} needs user_dim == item_dim; they are {} and {}",
                            p.name(),
                            spec.user_dim,
                            spec.item_dim
                        ),
                    ));
                }
                if *p == UpperPart::Dot {
                    1
                } else {
                    spec.item_dim
                }
            }
        };
    }
    Ok(w)
}

/// `upper.mmoe`: every expert over the `width` upper outputs, to one
/// common dimension; the gates `[experts, width]`, stacked in head order.
fn mmoe(
    m: &super::spec::MmoeSpec,
    st: &Tensors<'_>,
    width: usize,
    heads: &[super::spec::HeadSpec],
) -> Result<Mmoe> {
    let n_heads = heads.len();
    let mut experts = Vec::new();
    let mut dim = None;
    for (i, e) in m.experts.iter().enumerate() {
        let path = format!("upper.mmoe.experts[{i}]");
        let (layers, out) = layers(st, &path, e, width)?;
        match dim {
            Some(d) if d != out => {
                return Err(bad(
                    format!("{path}.layers[{}].weight", e.len() - 1),
                    format!("expert {i} gives {out} values; expert 0 gives {d} (experts map to one common dimension)"),
                ))
            }
            _ => dim = Some(out),
        }
        experts.push(layers);
    }
    let n = experts.len();
    let mut w = Vec::with_capacity(n_heads * n * width);
    let mut b = Vec::with_capacity(n_heads * n);
    for (h, g) in heads.iter().zip(&m.gates) {
        let field = format!("upper.mmoe.gates.{}", h.name);
        let d = dense(st, &field, g, width)?;
        if d.out != n {
            return Err(bad(
                format!("{field}.weight"),
                format!(
                    "tensor {:?} has {} rows; a gate has one row per expert ({n})",
                    g.weight, d.out
                ),
            ));
        }
        w.extend_from_slice(&d.w);
        b.extend_from_slice(&d.b);
    }
    Ok(Mmoe {
        experts,
        gates: Dense::new(w, b, width, n_heads * n, Activation::Identity),
        dim: dim.unwrap_or(0),
    })
}

/// The heads: each one's tower over its `head_in`-wide input, its own
/// one-output layer, and its normalization.
fn heads(spec: &Spec, st: &Tensors<'_>, schema: &Schema, head_in: usize) -> Result<Vec<Head>> {
    let mut heads = Vec::new();
    for (i, h) in spec.heads.iter().enumerate() {
        let field = format!("heads[{i}]");
        let (tower, width) = layers(st, &format!("{field}.tower"), &h.tower, head_in)?;
        let (_, w) = tensor(
            st,
            &format!("{field}.weight"),
            &h.layer.weight,
            Some(&[1, width]),
        )
        .map_err(|e| match e {
            Error::Bundle { field, what } => Error::Bundle {
                field,
                what: format!("{what} (a head maps its {width} inputs to one value)"),
            },
            e => e,
        })?;
        let b = match &h.layer.bias {
            Some(name) => tensor(st, &format!("{field}.bias"), name, Some(&[1]))?.1,
            None => vec![0.0],
        };
        let normalize = match &h.normalize {
            None => None,
            Some(n) => Some(Normalize {
                column: numeric(
                    schema,
                    &format!("{field}.normalize.column"),
                    &n.column,
                    "normalize",
                )?,
                bounds: n.bounds.clone(),
                values: n.values.iter().map(|&v| v as f32).collect(),
            }),
        };
        heads.push(Head {
            name: h.name.clone(),
            act: h.layer.activation,
            neg_sampling_rate: h.neg_sampling_rate,
            tower,
            out: Dense::new(w, b, width, 1, Activation::Identity),
            normalize,
        });
    }
    Ok(heads)
}

/// Every head's layer as one `[heads, width]` layer, for models whose heads
/// all read the shared upper output directly.
fn stacked_heads(heads: &[Head], width: usize) -> Dense {
    let w = heads.iter().flat_map(|h| h.out.w.iter().copied()).collect();
    let b = heads.iter().map(|h| h.out.b[0]).collect();
    Dense::new(w, b, width, heads.len(), Activation::Identity)
}

/// The first upper layer's columns, split by the part of the upper input
/// they multiply.
fn first_layer(parts: &[UpperPart], w0: &Dense, ud: usize, id: usize, co: usize) -> FirstLayer {
    let mut f = FirstLayer {
        out: w0.out,
        ..FirstLayer::default()
    };
    let mut off = 0;
    for p in parts {
        let (dst, n) = match p {
            UpperPart::User => (&mut f.user, ud),
            UpperPart::Item => (&mut f.item, id),
            UpperPart::Cross => (&mut f.cross, co),
            UpperPart::Dot => (&mut f.dot, 1),
            UpperPart::Hadamard => (&mut f.hadamard, id),
        };
        for j in 0..w0.out {
            dst.extend_from_slice(&w0.w[j * w0.inp + off..][..n]);
        }
        off += n;
    }
    f
}

impl FirstLayer {
    /// The first upper layer's weights over a row of the scorer's `A`
    /// matrix, `[item vector (a_item wide: id or 0) | cross output (co)]`:
    /// the item columns (plus, given the user vector, the `hadamard`
    /// columns scaled by it and the `dot` column times it) and the cross
    /// columns (zeros where a part is not an input).
    pub(crate) fn pack_a(
        &self,
        a_item: usize,
        id: usize,
        co: usize,
        user: Option<&[f32]>,
    ) -> gemm::Weights {
        let out = self.out;
        let k = a_item + co;
        let mut w = vec![0f32; out * k];
        for j in 0..out {
            let row = &mut w[j * k..(j + 1) * k];
            if a_item > 0 {
                if !self.item.is_empty() {
                    row[..id].copy_from_slice(&self.item[j * id..(j + 1) * id]);
                }
                if let Some(u) = user {
                    if !self.hadamard.is_empty() {
                        for (i, x) in row[..id].iter_mut().enumerate() {
                            *x += self.hadamard[j * id + i] * u[i];
                        }
                    }
                    if !self.dot.is_empty() {
                        for (i, x) in row[..id].iter_mut().enumerate() {
                            *x += self.dot[j] * u[i];
                        }
                    }
                }
            }
            if !self.cross.is_empty() {
                row[a_item..].copy_from_slice(&self.cross[j * co..(j + 1) * co]);
            }
        }
        gemm::Weights::new(&w, k, k, out)
    }
}

/// Compiles a fusion against the model's heads and the snapshot's columns
/// (`fusion.…` fields name what is wrong).
pub(super) fn fusion(spec: &FusionSpec, heads: &[Head], schema: &Schema) -> Result<FusionPlan> {
    let index = |field: String, name: &str| -> Result<usize> {
        heads.iter().position(|h| h.name == name).ok_or_else(|| {
            bad(
                format!("fusion.{field}"),
                format!(
                    "{name:?} names no head; the heads are [{}]",
                    heads
                        .iter()
                        .map(|h| h.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    };
    for (field, name) in spec.heads() {
        index(field, name)?;
    }
    let per_head = |named: &[(String, f64)]| -> Vec<f64> {
        heads
            .iter()
            .map(|h| {
                named
                    .iter()
                    .find(|(n, _)| *n == h.name)
                    .map_or(0.0, |(_, w)| *w)
            })
            .collect()
    };
    let positive = |name: &str, field: String, why: &str| -> Result<()> {
        let act = heads
            .iter()
            .find(|h| h.name == name)
            .map_or(Activation::Identity, |h| h.act);
        if matches!(act, Activation::Sigmoid | Activation::Exp) {
            Ok(())
        } else {
            Err(bad(
                field,
                format!(
                    "{why}, so its heads must be positive (sigmoid or exp); head {name:?} is {}",
                    act.name()
                ),
            ))
        }
    };
    Ok(match spec {
        FusionSpec::WeightedSum(w) => FusionPlan::WeightedSum(per_head(w)),
        FusionSpec::Product { weights, columns } => {
            for (name, wt) in weights {
                if *wt != 0.0 {
                    positive(
                        name,
                        format!("fusion.weights.{name}"),
                        "product fusion raises heads to powers",
                    )?;
                }
            }
            let columns = columns
                .iter()
                .map(|(c, a)| {
                    Ok((
                        numeric(
                            schema,
                            &format!("fusion.columns.{c}"),
                            c,
                            "a product fusion column",
                        )?,
                        *a,
                    ))
                })
                .collect::<Result<_>>()?;
            FusionPlan::Product {
                w: per_head(weights),
                columns,
            }
        }
        FusionSpec::ClickWeighted { base, weights } => FusionPlan::ClickWeighted {
            base: index("base".into(), base)?,
            w: per_head(weights),
        },
        FusionSpec::OffsetProduct(terms) => {
            for (name, w, a) in terms {
                if *w != 0.0 && *a != 0.0 {
                    positive(
                        name,
                        format!("fusion.terms.{name}"),
                        "offset_product raises 1 + w * p to powers",
                    )?;
                }
            }
            FusionPlan::OffsetProduct(
                heads
                    .iter()
                    .map(|h| {
                        terms
                            .iter()
                            .find(|t| t.0 == h.name)
                            .map_or((0.0, 0.0), |t| (t.1, t.2))
                    })
                    .collect(),
            )
        }
        FusionSpec::Rank {
            weights,
            alpha,
            beta,
        } => FusionPlan::Rank {
            w: per_head(weights),
            alpha: *alpha,
            beta: *beta,
        },
        FusionSpec::RankPerHead(terms) => FusionPlan::RankPerHead(
            heads
                .iter()
                .map(|h| {
                    terms
                        .iter()
                        .find(|t| t.0 == h.name)
                        .map_or((0.0, 0.0, 0.0), |t| (t.1, t.2, t.3))
                })
                .collect(),
        ),
    })
}

fn tensor(
    st: &Tensors<'_>,
    field: &str,
    name: &str,
    shape: Option<&[usize]>,
) -> Result<(Vec<usize>, Vec<f32>)> {
    let converted = st.overlay.and_then(|o| o.tensor(name).ok());
    let is_converted = converted.is_some();
    let t = match converted {
        Some(t) => t,
        None => st.st.tensor(name).map_err(|_| {
            bad(
                field,
                format!("tensor {name:?} is not in weights.safetensors"),
            )
        })?,
    };
    let decode: fn([u8; 2]) -> f32 = match t.dtype() {
        safetensors::Dtype::F32 => |_| 0.0,
        // Converted to int8 by the store: per-row scales beside it
        // (`super::precision` checked both).
        safetensors::Dtype::I8 if is_converted => |_| 0.0,
        // Converted by the store (`super::precision` checked the dtype).
        safetensors::Dtype::BF16 if is_converted => |b| half::bf16::from_le_bytes(b).to_f32(),
        safetensors::Dtype::F16 if st.v2 => |b| half::f16::from_le_bytes(b).to_f32(),
        safetensors::Dtype::BF16 if st.v2 => |b| half::bf16::from_le_bytes(b).to_f32(),
        d => {
            let allowed = if st.v2 {
                "F32, F16 or BF16"
            } else {
                "F32 (F16 and BF16 need contract v2)"
            };
            return Err(bad(
                field,
                format!("tensor {name:?} is {d:?}; tensors must be {allowed}"),
            ));
        }
    };
    let got = t.shape().to_vec();
    if let Some(want) = shape {
        if got != want {
            return Err(bad(
                field,
                format!("tensor {name:?} has shape {got:?}; expected {want:?}"),
            ));
        }
    }
    let data: Vec<f32> = if t.dtype() == safetensors::Dtype::I8 {
        let scales = st
            .overlay
            .and_then(|o| o.tensor(&super::precision::scale_name(name)).ok())
            .map(|s| {
                s.data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect::<Vec<f32>>()
            })
            .unwrap_or_default();
        let cols = got.get(1).copied().unwrap_or(1).max(1);
        (t.data().iter().enumerate())
            .map(|(i, &q)| q as i8 as f32 * scales.get(i / cols).copied().unwrap_or(f32::NAN))
            .collect()
    } else if t.dtype() == safetensors::Dtype::F32 {
        t.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.data()
            .chunks_exact(2)
            .map(|c| decode([c[0], c[1]]))
            .collect()
    };
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

fn table(st: &Tensors<'_>, field: &str, name: &str, rows: Option<usize>) -> Result<Table> {
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

fn dense(st: &Tensors<'_>, field: &str, l: &LayerSpec, inp: usize) -> Result<Dense> {
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
    Ok(Dense::new(w, b, inp, out, l.activation).named(&l.weight))
}
