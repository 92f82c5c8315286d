//! Model-bundle operations of a transaction: adding a bundle (validated
//! against the snapshot being built, optionally with a precomputed item
//! part per segment) and dropping one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::transaction::{Transaction, TxBundle};
use crate::error::{Error, Result};
use crate::format::encode;
use crate::model::Model;

impl Transaction<'_> {
    /// Adds a three-tower model bundle (`model.json` and
    /// `weights.safetensors` bytes), replacing any bundle of the same
    /// `space@version`. The bundle is validated completely against the
    /// snapshot being built (see [`Model::load`]), so an embedding version
    /// added earlier in this transaction may carry its bundle in the same
    /// publish. Returns the bundle's `space@version`.
    pub fn add_model(&mut self, json: &[u8], weights: &[u8]) -> Result<String> {
        self.add_model_with(json, weights, None)
    }

    /// [`Transaction::add_model`], and precompute the item part of the
    /// model's first upper layer (`W0[:, item columns] @ item_vec`, which
    /// does not change within an embedding version) for every item, stored
    /// as `dtype` (one row of the layer's width per item, kept up to date by
    /// every later publish). Queries then skip that part of the product
    /// and gather the stored row instead: fewer FLOPs, more bytes (with
    /// `F16`, rounding the precomputed part to about 3 significant digits).
    ///
    /// The store keeps the precomputed part per segment of items, so the
    /// snapshot must hold items when this transaction commits
    /// ([`Transaction::commit`] refuses it otherwise), and a later publish
    /// that leaves the snapshot with no items at all drops it (the bundle
    /// stays; add it precomputed again once there are items).
    pub fn add_model_precomputed(
        &mut self,
        json: &[u8],
        weights: &[u8],
        dtype: crate::schema::Dtype,
    ) -> Result<String> {
        self.add_model_with(json, weights, Some(dtype))
    }

    /// [`Transaction::add_model`], with the item part precomputed as `pre`
    /// if given ([`Transaction::add_model_precomputed`]).
    pub(super) fn add_model_with(
        &mut self,
        json: &[u8],
        weights: &[u8],
        pre: Option<crate::schema::Dtype>,
    ) -> Result<String> {
        self.w.check_poisoned()?;
        let model = Model::load(json, weights, &self.schema)?;
        let key = model.key().to_string();
        let name = self.fresh_name(0, &format!("model-{key}"), "vbnd");
        let r = encode::write_bundle(&*self.w.fs, &self.path(&name), &key, json, weights);
        let file = self.w.poison(r)?;
        self.bundles.insert(
            key.clone(),
            TxBundle {
                file,
                model: Arc::new(model),
                pre: pre.map(|d| (d, BTreeMap::new())),
            },
        );
        Ok(key)
    }

    /// Writes the precomputed first-layer files that segments lack.
    pub(super) fn write_precomputed(&mut self) -> Result<()> {
        let keys: Vec<String> = self.bundles.keys().cloned().collect();
        for key in keys {
            let b = &self.bundles[&key];
            let Some((dtype, have)) = &b.pre else {
                continue;
            };
            let (dtype, model) = (*dtype, b.model.clone());
            let def = model.precompute_def(dtype);
            let missing: Vec<usize> = (0..self.segments.len())
                .filter(|&s| !have.contains_key(&self.segments[s].meta.id))
                .collect();
            for s in missing {
                let seg_id = self.segments[s].meta.id;
                let name = self.fresh_name(seg_id, &format!("pre-{key}"), "vcol");
                let path = self.path(&name);
                let seg = self.segment(s);
                let emb = seg
                    .embedding_opt(&key)
                    .ok_or_else(|| self.skew_error(&key))?;
                let file = encode::write_embedding_computed(
                    &*self.w.fs,
                    &path,
                    seg_id,
                    seg.rows() as u64,
                    &def,
                    256,
                    |first, out| model.precompute_rows(&emb, first, out),
                )?;
                if let Some((_, have)) = &mut self.bundles.get_mut(&key).expect("key listed").pre {
                    have.insert(seg_id, file);
                }
            }
        }
        Ok(())
    }

    /// [`Error::VersionSkew`] for `key`, which the snapshot does not hold.
    pub(super) fn skew_error(&self, key: &str) -> Error {
        Error::VersionSkew {
            snapshot: self.number,
            requested: key.to_string(),
            available: self.schema.embedding_keys(),
        }
    }

    /// [`Transaction::add_model`] from a bundle directory holding
    /// `model.json` and `weights.safetensors`.
    pub fn add_model_dir(&mut self, dir: impl AsRef<Path>) -> Result<String> {
        let dir = dir.as_ref();
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read(&p).map_err(|e| Error::io("read", p, e))
        };
        let json = read("model.json")?;
        let weights = read("weights.safetensors")?;
        self.add_model(&json, &weights)
    }

    /// Removes the model bundle for `key` (`space@version`).
    pub fn drop_model(&mut self, key: &str) -> Result<()> {
        self.w.check_poisoned()?;
        if self.bundles.remove(key).is_none() {
            return Err(Error::NoModel {
                snapshot: self.number,
                requested: key.to_string(),
                available: self.bundles.keys().cloned().collect(),
            });
        }
        Ok(())
    }
}
