//! Model-bundle operations of a transaction: adding a bundle (validated
//! against the snapshot being built, optionally with a precomputed item
//! part per segment) and dropping one.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::transaction::{Transaction, TxBundle, TxTower};
use crate::error::{Error, Result};
use crate::format::encode;
use crate::kernels::Precision;
use crate::model::{bundle_id, split_bundle_id, Bundle};

impl Transaction<'_> {
    /// Adds a three-tower model bundle (`model.json` and
    /// `weights.safetensors` bytes) under its name (`name` in `model.json`,
    /// `"default"` if it gives none), replacing the bundle of that name for
    /// the same `space@version` if there is one; bundles of other names
    /// stay. The bundle is validated completely against the snapshot being
    /// built (see [`crate::Model::load`]), so an embedding version added
    /// earlier in this transaction may carry its bundle in the same
    /// publish. Returns the bundle's `space@version`.
    ///
    /// An item-tower-only bundle (`"format": "vstore.item_tower.v1"`) is
    /// taken too, replacing the version's previous one. A version has one
    /// item tower: a bundle carrying one that differs from the tower
    /// another bundle of the version carries is refused (field
    /// `item_tower`). When the version's tower is new or changes, the
    /// commit computes every vector the store computed for it again.
    pub fn add_model(&mut self, json: &[u8], weights: &[u8]) -> Result<String> {
        self.add_model_with(json, weights, None, Precision::F32)
    }

    /// [`Transaction::add_model`], the bundle's dense layers (cross tower,
    /// upper network, MMoE experts, head towers) running at `precision`:
    /// their weights are converted now and stored with the bundle, and
    /// every query of the bundle multiplies at that precision, on AMX
    /// where the CPU has it ([`Precision`]; heads, calibration and fusion
    /// stay f32). An item-tower-only bundle is f32 only.
    pub fn add_model_at(
        &mut self,
        json: &[u8],
        weights: &[u8],
        precision: Precision,
    ) -> Result<String> {
        self.add_model_with(json, weights, None, precision)
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
        self.add_model_with(json, weights, Some(dtype), Precision::F32)
    }

    /// [`Transaction::add_model`], with the item part precomputed as `pre`
    /// if given ([`Transaction::add_model_precomputed`]), the layers at
    /// `precision` ([`Transaction::add_model_at`]).
    pub fn add_model_with(
        &mut self,
        json: &[u8],
        weights: &[u8],
        pre: Option<crate::schema::Dtype>,
        precision: Precision,
    ) -> Result<String> {
        self.w.check_poisoned()?;
        let bundle = Bundle::load_at(json, weights, &self.schema, precision)?;
        if pre.is_some() {
            let why = match &bundle {
                Bundle::Model(m) => m.precompute_refusal(),
                Bundle::Tower(_) => Some("an item-tower-only bundle has no upper network".into()),
            };
            if let Some(why) = why {
                return Err(Error::Bundle {
                    field: "upper".into(),
                    what: format!("cannot precompute the first layer's item part: {why}"),
                });
            }
        }
        let key = bundle.key().to_string();
        let id = bundle.bundle_id();
        self.check_one_tower(&bundle, &id)?;
        let before = self.tower_of(&key);
        let file_tag = id.replace('#', ".");
        let name = self.fresh_name(0, &format!("model-{file_tag}"), "vbnd");
        let converted = match &bundle {
            Bundle::Model(m) => m.converted(),
            Bundle::Tower(_) => None,
        };
        let r = encode::write_bundle(
            &*self.w.fs,
            &self.path(&name),
            &id,
            (json, weights),
            precision,
            converted,
        );
        let file = self.w.poison(r)?;
        match bundle {
            Bundle::Model(model) => {
                self.bundles.insert(
                    id,
                    TxBundle {
                        file,
                        model: Arc::new(*model),
                        pre: pre.map(|d| (d, BTreeMap::new())),
                    },
                );
            }
            Bundle::Tower(t) => {
                let tower = Arc::new(t);
                self.towers.insert(key.clone(), TxTower { file, tower });
            }
        }
        // A new or changed tower computes the version's computed rows again
        // at commit (rows added from now on are computed with it already).
        if let Some(after) = self.tower_of(&key) {
            let has_computed =
                (0..self.segments.len()).any(|s| self.segment(s).computed_bitmap(&key).is_some());
            if has_computed && before.is_none_or(|b| !b.same_as(&after)) {
                self.stale.insert(key.clone());
            }
        }
        Ok(key)
    }

    /// One item tower per embedding version: refuses `bundle` (to be
    /// stored as `id`) if it carries an item tower other than one that
    /// another bundle of its version carries (the bundle it replaces
    /// aside).
    fn check_one_tower(&self, bundle: &Bundle, id: &str) -> Result<()> {
        let Some(mine) = bundle.item_tower() else {
            return Ok(());
        };
        let key = bundle.key();
        let others = (self.towers.get(key))
            .filter(|t| t.tower.bundle_id() != id)
            .map(|t| (t.tower.bundle_id(), t.tower.tower.clone()))
            .into_iter()
            .chain(
                (self.bundles.iter())
                    .filter(|(bid, b)| b.model.key() == key && bid.as_str() != id)
                    .filter_map(|(bid, b)| b.model.item_tower.clone().map(|t| (bid.clone(), t))),
            );
        for (other, t) in others {
            if !t.same_as(mine) {
                return Err(Error::Bundle {
                    field: "item_tower".into(),
                    what: format!(
                        "differs from the item tower of {key} that bundle {other} carries; an \
                         embedding version has one item tower (give the same one, or none)"
                    ),
                });
            }
        }
        Ok(())
    }

    /// Writes the precomputed first-layer files that segments lack.
    pub(super) fn write_precomputed(&mut self) -> Result<()> {
        let ids: Vec<String> = self.bundles.keys().cloned().collect();
        for id in ids {
            let b = &self.bundles[&id];
            let key = b.model.key().to_string();
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
                let name =
                    self.fresh_name(seg_id, &format!("pre-{}", id.replace('#', ".")), "vcol");
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
                    |first, out| {
                        model.precompute_rows(&emb, first, out);
                        let d = (def.dim as usize).max(1);
                        for (i, v) in out.chunks_exact(d).enumerate() {
                            if let Some(j) = encode::unholdable(dtype, v) {
                                return Err(Error::InvalidInput(format!(
                                    "bundle {id}: item {}'s precomputed item part (the first upper \
                                     layer times its {key} vector) has component {j} = {}, which \
                                     {} cannot hold; precompute as a wider type (f32) or not at all",
                                    seg.ids()[first + i],
                                    v[j],
                                    if v[j].is_finite() { dtype.name() } else { "the store" }
                                )));
                            }
                        }
                        Ok(())
                    },
                )?;
                if let Some((_, have)) = &mut self.bundles.get_mut(&id).expect("id listed").pre {
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
            // A device or pipe (e.g. a link to /dev/zero) would be read
            // without end: a bundle's files are regular files.
            let meta = std::fs::metadata(&p).map_err(|e| Error::io("stat", &p, e))?;
            if !meta.is_file() {
                return Err(Error::Bundle {
                    field: name.to_string(),
                    what: format!("{} is not a regular file", p.display()),
                });
            }
            std::fs::read(&p).map_err(|e| Error::io("read", p, e))
        };
        let json = read("model.json")?;
        let weights = read("weights.safetensors")?;
        self.add_model(&json, &weights)
    }

    /// Removes the model bundle for `key` (`space@version`) when the
    /// snapshot holds exactly one for it ([`Error::ModelChoice`] naming
    /// them if it holds several; see [`Transaction::drop_model_named`]).
    pub fn drop_model(&mut self, key: &str) -> Result<()> {
        self.drop_bundle(key, None)
    }

    /// Removes the model bundle named `name` for `key` (`space@version`).
    pub fn drop_model_named(&mut self, key: &str, name: &str) -> Result<()> {
        self.drop_bundle(key, Some(name))
    }

    /// Removes the item-tower-only bundle of `key` (`space@version`). The
    /// vectors it computed stay; items added later need a vector for `key`
    /// unless a three-tower bundle of `key` carries the tower.
    pub fn drop_item_tower(&mut self, key: &str) -> Result<()> {
        self.w.check_poisoned()?;
        if self.towers.remove(key).is_none() {
            return Err(Error::InvalidInput(format!(
                "the snapshot holds no item-tower-only bundle for {key} (it holds them for [{}])",
                self.towers.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }

    fn drop_bundle(&mut self, key: &str, name: Option<&str>) -> Result<()> {
        self.w.check_poisoned()?;
        let names: Vec<String> = (self.bundles.keys())
            .map(|id| split_bundle_id(id))
            .filter(|(k, _)| *k == key)
            .map(|(_, n)| n.to_string())
            .collect();
        if names.is_empty() {
            let mut available: Vec<String> = (self.bundles.keys())
                .map(|id| split_bundle_id(id).0.to_string())
                .collect();
            available.dedup();
            return Err(Error::NoModel {
                snapshot: self.number,
                requested: key.to_string(),
                available,
            });
        }
        let chosen = match name {
            Some(n) => names.iter().find(|x| *x == n),
            None if names.len() == 1 => names.first(),
            None => None,
        };
        let Some(n) = chosen else {
            return Err(Error::ModelChoice {
                snapshot: self.number,
                key: key.to_string(),
                requested: name.map(str::to_string),
                names,
            });
        };
        self.bundles.remove(&bundle_id(key, n));
        Ok(())
    }
}
