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
use crate::kernels::gemm::{quantized, NARROW};
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
                    let (q, scales) = quantized(&d.w, d.inp);
                    let q = q.iter().map(|&x| x as u8).collect();
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
        Model::load_stored(
            json,
            weights,
            precision,
            Some(&converted),
            schema,
            Some(model),
        )
    }

    /// A bundle as stored: `model.json`, `weights.safetensors`, and at a
    /// precision other than f32 the converted weights kept with it, read
    /// in place of the tensors they convert. Every converted tensor must
    /// be one of the weights, of the same shape, at `precision`, and every
    /// layer the precision converts must have one. `f32`, if given, is
    /// the bundle already loaded at f32 (the exact-mode twin; loaded here
    /// otherwise).
    pub(crate) fn load_stored(
        json: &[u8],
        weights: &[u8],
        precision: Precision,
        converted: Option<&[u8]>,
        schema: &Schema,
        f32: Option<Model>,
    ) -> Result<Model> {
        let spec = spec::parse_stored(json)?;
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
            let twin = match f32 {
                Some(m) => m,
                None => Model::load_stored(json, weights, Precision::F32, None, schema, None)?,
            };
            model.f32_twin = Some(Arc::new(twin));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Dtype, ExampleBundle};

    fn schema() -> Schema {
        Schema::new()
            .embedding("prerank", "v1", ExampleBundle::DIM as u32, Dtype::F16)
            .categorical("category", 0)
            .stat("ctr_1d", 0.0)
            .stat("impressions_7d", 0.0)
    }

    /// A safetensors file of one tensor.
    fn one(name: &str, dtype: safetensors::Dtype, shape: Vec<usize>, bytes: &[u8]) -> Vec<u8> {
        let view = safetensors::tensor::TensorView::new(dtype, shape, bytes).unwrap();
        safetensors::serialize([(name, view)], None).unwrap()
    }

    #[test]
    fn converted_weights_that_do_not_fit_the_bundle_are_refused_by_name() {
        let (json, weights) = ExampleBundle::new("prerank", "v1").files();
        let s = schema();
        let m = Model::load(&json, &weights, &s).unwrap();
        let d = m.converted_layers().next().expect("a converted layer");
        let (name, shape) = (d.tensor.clone(), vec![d.out, d.inp]);
        let n: usize = shape.iter().product();
        let load = |p, c: &[u8]| Model::load_stored(&json, &weights, p, Some(c), &s, None);
        let err = |r: Result<Model>| r.expect_err("refused").to_string();
        // Wrong dtype, wrong shape, a name the weights lack.
        let e = err(load(
            Precision::Bf16,
            &one(&name, safetensors::Dtype::I8, shape.clone(), &vec![0; n]),
        ));
        assert!(e.contains(&name) && e.contains("BF16"), "{e}");
        let e = err(load(
            Precision::Bf16,
            &one(&name, safetensors::Dtype::BF16, vec![n], &vec![0; 2 * n]),
        ));
        assert!(e.contains(&name), "{e}");
        let e = err(load(
            Precision::Bf16,
            &one("nope", safetensors::Dtype::BF16, vec![1], &[0, 0]),
        ));
        assert!(
            e.contains("\"nope\"") && e.contains("not in weights.safetensors"),
            "{e}"
        );
        // int8 without its scales; scales of no int8 tensor.
        let e = err(load(
            Precision::Int8,
            &one(&name, safetensors::Dtype::I8, shape.clone(), &vec![0; n]),
        ));
        assert!(e.contains(&name) && e.contains("scales"), "{e}");
        let e = err(load(
            Precision::Int8,
            &one(
                &scale_name(&name),
                safetensors::Dtype::F32,
                vec![d.out],
                &vec![0; 4 * d.out],
            ),
        ));
        assert!(e.contains("#scale"), "{e}");
        // A converted copy that leaves a layer out; none at all; one at f32.
        let c = one(&name, safetensors::Dtype::BF16, shape, &vec![0; 2 * n]);
        if m.converted_layers().count() > 1 {
            let e = err(load(Precision::Bf16, &c));
            assert!(e.contains("has no converted copy"), "{e}");
        }
        let e = err(Model::load_stored(
            &json,
            &weights,
            Precision::Bf16,
            None,
            &s,
            None,
        ));
        assert!(e.contains("without its converted weights"), "{e}");
        let e = err(load(Precision::F32, &c));
        assert!(e.contains("f32 bundle with converted weights"), "{e}");
    }

    #[test]
    fn an_item_tower_bundle_is_refused_below_f32() {
        let s = Schema::new()
            .embedding("prerank", "v1", ExampleBundle::DIM as u32, Dtype::F16)
            .categorical("category", 0)
            .categorical("brand", 0)
            .numeric("price", 0.0);
        let (json, weights) = ExampleBundle::new("prerank", "v1").item_tower_files();
        let e = crate::Bundle::load_at(&json, &weights, &s, Precision::Int8).expect_err("refused");
        assert!(
            matches!(&e, crate::Error::Bundle { field, .. } if field == "precision"),
            "{e}"
        );
        assert!(crate::Bundle::load_at(&json, &weights, &s, Precision::F32).is_ok());
    }
}
