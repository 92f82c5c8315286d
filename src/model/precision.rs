//! A bundle's precision ([`Precision`]): which of its weights are
//! converted, the converted copy the store keeps with the bundle (a
//! safetensors file of the same tensor names: bf16, or int8 with each
//! tensor's per-row scales beside it as `NAME#scale`, f32), and loading a
//! bundle with that copy read in place of the tensors it converts.
//!
//! The layers converted are the dense blocks the scorer multiplies in
//! bulk: the cross tower, the upper network, the MMoE experts and the head
//! towers, each layer wider than `gemm::NARROW` outputs. Heads, gates,
//! embedding tables, SE blocks, calibration, fusion and the item tower stay
//! f32 (the item tower writes stored vectors; the rest is a small share of
//! the work and sets the score's scale).

use super::compile::Tensors;
use super::parts::Dense;
use super::spec::{self, bad};
use super::{safetensors_of, Model};
use crate::error::Result;
use crate::kernels::gemm::NARROW;
use crate::kernels::Precision;
use crate::schema::Schema;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What the name of an int8 tensor's per-row scales ends with.
const SCALE_SUFFIX: &str = "#scale";

/// The name of int8 tensor `name`'s per-row scales in the converted
/// weights.
pub(super) fn scale_name(name: &str) -> String {
    format!("{name}{SCALE_SUFFIX}")
}

/// `w` (`[rows, cols]`) quantized per row as the int8 kernels do
/// (`kernels::gemm::dequantized`): int8 bytes and the scales.
fn quantize(w: &[f32], cols: usize) -> (Vec<u8>, Vec<f32>) {
    let (mut q, mut scales) = (Vec::with_capacity(w.len()), Vec::new());
    for row in w.chunks(cols.max(1)) {
        let s = row.iter().fold(0f32, |m, x| m.max(x.abs())) / 127.0;
        let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
        q.extend(
            row.iter()
                .map(|&x| (x * inv).round_ties_even().clamp(-127.0, 127.0) as i8 as u8),
        );
        scales.push(s);
    }
    (q, scales)
}

impl Model {
    /// The layers a precision other than f32 converts.
    fn converted_layers(&self) -> impl Iterator<Item = &Dense> {
        let experts = self.mmoe.iter().flat_map(|m| m.experts.iter().flatten());
        let towers = self.heads.iter().flat_map(|h| h.tower.iter());
        (self
            .cross
            .iter()
            .chain(&self.upper)
            .chain(experts)
            .chain(towers))
        .filter(|d| d.out > NARROW && !d.tensor.is_empty())
    }

    /// The converted weights for `precision` as a safetensors file (`None`
    /// at f32): each converted layer's tensor under its own name.
    fn convert(&self, precision: Precision) -> Result<Option<Vec<u8>>> {
        if precision == Precision::F32 {
            return Ok(None);
        }
        let mut tensors: BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> =
            BTreeMap::new();
        for d in self.converted_layers() {
            let shape = vec![d.out, d.inp];
            match precision {
                Precision::F32 => unreachable!("returned above"),
                Precision::Bf16 => {
                    let bytes = (d.w.iter())
                        .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                        .collect();
                    tensors.insert(d.tensor.clone(), (safetensors::Dtype::BF16, shape, bytes));
                }
                Precision::Int8 => {
                    let (q, scales) = quantize(&d.w, d.inp);
                    tensors.insert(d.tensor.clone(), (safetensors::Dtype::I8, shape, q));
                    let s = scales.iter().flat_map(|x| x.to_le_bytes()).collect();
                    tensors.insert(
                        scale_name(&d.tensor),
                        (safetensors::Dtype::F32, vec![d.out], s),
                    );
                }
            }
        }
        let views = tensors
            .iter()
            .map(|(name, (dtype, shape, bytes))| {
                let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                    .map_err(|e| bad("weights", format!("converting {name:?}: {e}")))?;
                Ok((name.as_str(), view))
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes = safetensors::serialize(views, None)
            .map_err(|e| bad("weights", format!("writing the converted weights: {e}")))?;
        Ok(Some(bytes))
    }

    /// Repacks every converted layer's weights (and the first layer's
    /// pieces) for `precision`.
    fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
        let experts = self
            .mmoe
            .iter_mut()
            .flat_map(|m| m.experts.iter_mut().flatten());
        let towers = self.heads.iter_mut().flat_map(|h| h.tower.iter_mut());
        for d in (self
            .cross
            .iter_mut()
            .chain(&mut self.upper)
            .chain(experts)
            .chain(towers))
        .filter(|d| !d.tensor.is_empty())
        {
            d.pack = d.pack.at(precision);
        }
        for w in [
            &mut self.pack_cross0,
            &mut self.pack_a,
            &mut self.pack_item,
            &mut self.pack_cross,
        ] {
            *w = w.at(precision);
        }
    }

    /// The products the model's dense layers run: [`Precision::F32`]
    /// unless the bundle was added at another precision
    /// ([`crate::Transaction::add_model_at`]) or loaded with
    /// [`Model::load_at`].
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// [`Model::load`], converted to `precision`: the weights of the dense
    /// layers (cross tower, upper network, MMoE experts, head towers) are
    /// rounded to it, exactly as the store converts them when the bundle
    /// is added at that precision, so this model scores as the stored one
    /// does.
    ///
    /// ```
    /// use vstore::{Dtype, ExampleBundle, Model, Precision, Schema};
    /// let schema = Schema::new()
    ///     .embedding("prerank", "v1", ExampleBundle::DIM as u32, Dtype::F16)
    ///     .categorical("category", 0)
    ///     .stat("ctr_1d", 0.0)
    ///     .stat("impressions_7d", 0.0);
    /// let (json, weights) = ExampleBundle::new("prerank", "v1").files();
    /// let m = Model::load_at(&json, &weights, &schema, Precision::Bf16)?;
    /// assert_eq!(m.precision(), Precision::Bf16);
    /// # Ok::<(), vstore::Error>(())
    /// ```
    pub fn load_at(
        json: &[u8],
        weights: &[u8],
        schema: &Schema,
        precision: Precision,
    ) -> Result<Model> {
        let model = Model::load(json, weights, schema)?;
        let Some(converted) = model.convert(precision)? else {
            return Ok(model);
        };
        Model::load_stored(json, weights, precision, Some(&converted), schema)
    }

    /// A bundle as stored: `model.json`, `weights.safetensors`, and at a
    /// precision other than f32 the converted weights kept with it, read
    /// in place of the tensors they convert. Every converted tensor must
    /// be one of the weights, of the same shape, at `precision`, and every
    /// layer the precision converts must have one.
    pub(crate) fn load_stored(
        json: &[u8],
        weights: &[u8],
        precision: Precision,
        converted: Option<&[u8]>,
        schema: &Schema,
    ) -> Result<Model> {
        let spec = spec::parse(json)?;
        let st = safetensors_of(weights)?;
        let overlay = match (precision, converted) {
            (Precision::F32, None) => None,
            (Precision::F32, Some(_)) => {
                return Err(bad("weights", "f32 bundle with converted weights"))
            }
            (p, None) => {
                return Err(bad(
                    "weights",
                    format!("{} bundle without its converted weights", p.name()),
                ))
            }
            (_, Some(bytes)) => {
                Some(safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
                    bad(
                        "weights",
                        format!("converted weights are not safetensors: {e}"),
                    )
                })?)
            }
        };
        if let Some(o) = &overlay {
            let want = match precision {
                Precision::Int8 => safetensors::Dtype::I8,
                _ => safetensors::Dtype::BF16,
            };
            for (name, t) in o.tensors() {
                if let Some(base) = name.strip_suffix(SCALE_SUFFIX) {
                    let rows = o.tensor(base).ok().map(|b| b.shape().first().copied());
                    if precision != Precision::Int8
                        || t.dtype() != safetensors::Dtype::F32
                        || rows.is_none()
                        || t.shape() != [rows.flatten().unwrap_or(0)]
                    {
                        return Err(bad(
                            "weights",
                            format!("converted tensor {name:?} is not the per-row scales of an int8 tensor"),
                        ));
                    }
                    continue;
                }
                let original = st.tensor(&name).map_err(|_| {
                    bad(
                        "weights",
                        format!("converted tensor {name:?} is not in weights.safetensors"),
                    )
                })?;
                if t.dtype() != want || t.shape() != original.shape() {
                    return Err(bad(
                        "weights",
                        format!(
                            "converted tensor {name:?} is {:?} {:?}; expected {want:?} {:?}",
                            t.dtype(),
                            t.shape(),
                            original.shape()
                        ),
                    ));
                }
                if precision == Precision::Int8 && o.tensor(&scale_name(&name)).is_err() {
                    return Err(bad(
                        "weights",
                        format!("converted tensor {name:?} has no per-row scales"),
                    ));
                }
            }
        }
        let st = Tensors {
            st: &st,
            overlay: overlay.as_ref(),
            v2: spec.v2,
        };
        let mut model = Self::compile(
            spec,
            &st,
            schema,
            String::from_utf8_lossy(json).into_owned(),
        )?;
        if let Some(o) = &overlay {
            if let Some(d) = model
                .converted_layers()
                .find(|d| o.tensor(&d.tensor).is_err())
            {
                return Err(bad(
                    "weights",
                    format!("tensor {:?} has no converted copy", d.tensor),
                ));
            }
        }
        model.set_precision(precision);
        model.converted = converted.map(|c| Arc::new(c.to_vec()));
        if precision != Precision::F32 {
            model.f32_twin = Some(Arc::new(Model::load(json, weights, schema)?));
        }
        Ok(model)
    }

    /// The same bundle at f32 (for [`crate::Query::exact`]; `None` at
    /// f32).
    pub(crate) fn f32_twin(&self) -> Option<&Model> {
        self.f32_twin.as_deref()
    }

    /// The converted weights the store keeps with the bundle (`None` at
    /// f32).
    pub(crate) fn converted(&self) -> Option<&[u8]> {
        self.converted.as_deref().map(Vec::as_slice)
    }
}
