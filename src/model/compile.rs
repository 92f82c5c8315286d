//! Compiling a parsed bundle ([`Spec`]) against its weights and a
//! snapshot's schema into a [`Model`]: every check the bundle contract
//! (docs/DESIGN.md, "Model bundle contract") makes of the weights and the
//! columns, in the order a reader of `model.json` meets them, and the
//! packing of weights for the scorer. Each step is a function; `compile`
//! runs them.

use super::parts::{ColumnRef, Dense, Fusion, Head, Input, Table, Transform};
use super::spec::{bad, Activation, FusionSpec, InputSpec, LayerSpec, Spec, TransformSpec};
use super::Model;
use crate::error::{Error, Result};
use crate::kernels::gemm;
use crate::schema::{ColumnGroup, ColumnKind, Schema};

/// Safetensors file of a bundle, as parsed.
type Tensors<'a> = safetensors::SafeTensors<'a>;

impl Model {
    pub(super) fn compile(
        spec: Spec,
        st: &Tensors<'_>,
        schema: &Schema,
        json: String,
    ) -> Result<Model> {
        let key = embedding_key(&spec, schema)?;
        let inputs = inputs(&spec, st, schema)?;
        let cross_in: usize = inputs.iter().map(Input::dim).sum();
        let dense_in: usize = (inputs.iter())
            .filter(|i| matches!(i, Input::UserDense { .. }))
            .map(Input::dim)
            .sum();
        let split = !spec.cross.is_empty() && dense_in > 0 && dense_in < cross_in;
        let row_in = if split { cross_in - dense_in } else { cross_in };
        let (cross, cross_out) = layers(st, "cross", &spec.cross, cross_in)?;
        let upper_in = spec.user_dim + spec.item_dim + cross_out;
        let (mut upper, width) = layers(st, "upper", &spec.upper, upper_in)?;
        let (heads, head_layer) = heads(&spec, st, width)?;
        let pack_cross0 = match cross.first() {
            Some(c0) if split => per_row_columns(c0, &inputs, row_in),
            _ => gemm::Weights::new(&[], 0, 0, 0),
        };
        let (ud, id) = (spec.user_dim, spec.item_dim);
        let w0 = &upper[0];
        let pack_item = gemm::Weights::new(&w0.w[ud..], w0.inp, id, w0.out);
        let pack_cross = gemm::Weights::new(&w0.w[ud + id..], w0.inp, w0.inp - ud - id, w0.out);
        // The user part of the first upper layer runs once per query.
        let u0 = &mut upper[0];
        u0.pack = gemm::Weights::new(&u0.w[ud..], u0.inp, u0.inp - ud, u0.out);
        let fusion = fusion(&spec.fusion, &heads);
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
}

/// `space@version`, checked against the snapshot: it must hold that
/// embedding, with the bundle's `item_dim`.
fn embedding_key(spec: &Spec, schema: &Schema) -> Result<String> {
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
    Ok(key)
}

/// The cross tower's inputs, each resolved against the schema and the
/// weights ([`input`]); user input names unique.
fn inputs(spec: &Spec, st: &Tensors<'_>, schema: &Schema) -> Result<Vec<Input>> {
    let mut inputs = Vec::with_capacity(spec.inputs.len());
    let mut names: Vec<&str> = Vec::new();
    for (i, inp) in spec.inputs.iter().enumerate() {
        let field = format!("cross.inputs[{i}]");
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
fn layers(
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

/// The heads, and all of them as one layer `[heads, width]` over the last
/// upper layer's `width` outputs.
fn heads(spec: &Spec, st: &Tensors<'_>, width: usize) -> Result<(Vec<Head>, Dense)> {
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
    Ok((heads, head_layer))
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

/// The fusion, its weights one per head (0 for heads it does not name).
fn fusion(spec: &FusionSpec, heads: &[Head]) -> Fusion {
    match spec {
        FusionSpec::WeightedSum(w) => Fusion::WeightedSum(fusion_weights(heads, w)),
        FusionSpec::Product(w) => Fusion::Product(fusion_weights(heads, w)),
        FusionSpec::Rank {
            weights,
            alpha,
            beta,
        } => Fusion::Rank {
            w: fusion_weights(heads, weights),
            alpha: *alpha,
            beta: *beta,
        },
    }
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
