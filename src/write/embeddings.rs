//! Embedding-version operations of a transaction: adding a version (a new
//! embedding file for every segment) and dropping one (with its bundle).

use std::collections::BTreeMap;

use super::transaction::Transaction;
use crate::error::{Error, Result};
use crate::format::dropped::{self, DROPPED_VERSIONS_KEY};
use crate::format::encode;
use crate::format::meta::EmbeddingRef;
use crate::schema::{EmbeddingDef, Schema};

impl Transaction<'_> {
    /// Adds embedding version `def` with vectors for live items (`ids` and
    /// row-major f32 `vectors`, `ids.len() * dim` values). The snapshot then
    /// holds it beside the versions it already has.
    ///
    /// Every live item needs a vector, but those left out may be computed
    /// by the version's item tower: add a bundle carrying it (an
    /// item-tower-only bundle, or a three-tower bundle with `item_tower`)
    /// in the same transaction, and the commit computes them from the
    /// items' profiles. Without one, [`Transaction::commit`] refuses,
    /// naming an item left without a vector.
    ///
    /// A version dropped earlier in the store's history is refused: its
    /// name belongs to the dropped model, whose user vectors would be
    /// scored against the new vectors without an error. Name the new model
    /// anew; if the vectors do come from the dropped version's model, call
    /// [`Transaction::forget_dropped_version`] first.
    pub fn add_embedding(&mut self, def: EmbeddingDef, ids: &[u64], vectors: &[f32]) -> Result<()> {
        self.w.check_poisoned()?;
        let key = def.key();
        if self.schema.embedding_def(&key).is_some() {
            return Err(Error::InvalidInput(format!(
                "the snapshot already holds embedding {key}"
            )));
        }
        if let Some(n) = self.dropped_versions()?.get(&key) {
            return Err(Error::InvalidInput(format!(
                "embedding {key} was dropped in snapshot {n}: a version string names one trained \
                 model, and user vectors of the dropped model would be scored against these \
                 vectors without an error; name the new model anew (a new version or a training \
                 run id), or, if these vectors come from the dropped version's model, forget the \
                 drop first (Transaction::forget_dropped_version; vstore-tool add-embedding \
                 --same-model-as-dropped)"
            )));
        }
        let mut schema = self.schema.clone();
        schema.embeddings.push(def.clone());
        // The columns are the stored schema's (see `validate_stored`).
        schema.validate_stored()?;
        encode::check_vectors(&def, ids, vectors)?;
        self.check_ids_unique(ids)?;
        self.check_indexes()?;
        let mut rows_of: Vec<Vec<Option<usize>>> = (0..self.segments.len())
            .map(|s| vec![None; self.segment(s).rows()])
            .collect();
        for (i, &id) in ids.iter().enumerate() {
            let (s, row) = self.lookup(id).ok_or_else(|| Error::UnknownId {
                id,
                snapshot: self.number,
                context: format!("embedding {key}, input row {i}"),
            })?;
            rows_of[s][row] = Some(i);
        }
        // Live rows left without a vector: computed at commit by the
        // version's item tower, if it has one by then.
        let mut missing: Vec<Vec<u64>> = Vec::with_capacity(rows_of.len());
        let mut first_missing = None;
        for (s, rows) in rows_of.iter().enumerate() {
            let seg = self.segment(s);
            let mut bm = vec![0u64; rows.len().div_ceil(64)];
            for (r, x) in rows.iter().enumerate() {
                if x.is_none() && !seg.is_deleted(r) {
                    bm[r / 64] |= 1 << (r % 64);
                    first_missing.get_or_insert(seg.ids()[r]);
                }
            }
            missing.push(bm);
        }
        let r = self.write_embedding(def, vectors, rows_of, &missing, schema);
        self.w.poison(r)?;
        if let Some(id) = first_missing {
            self.stale.insert(key.clone());
            self.unfilled.insert(key, id);
        }
        Ok(())
    }

    /// Writes an embedding file of `def` for every segment (row `r` of
    /// segment `s` takes input row `rows_of[s][r]`, zeros where none; the
    /// rows set in `computed[s]` are marked as computed), then takes
    /// `schema` and reopens every segment.
    pub(super) fn write_embedding(
        &mut self,
        def: EmbeddingDef,
        vectors: &[f32],
        rows_of: Vec<Vec<Option<usize>>>,
        computed: &[Vec<u64>],
        schema: Schema,
    ) -> Result<()> {
        let key = def.key();
        let d = def.dim as usize;
        let zeros = vec![0f32; d];
        for (s, rows) in rows_of.iter().enumerate() {
            let seg_id = self.segments[s].meta.id;
            let name = self.fresh_name(seg_id, &format!("emb-{key}"), "vcol");
            let it = rows.iter().map(|x| match x {
                Some(i) => &vectors[i * d..(i + 1) * d],
                None => &zeros[..],
            });
            let file = encode::write_embedding_group(
                &*self.w.fs,
                &self.path(&name),
                seg_id,
                rows.len() as u64,
                &def,
                Some(&computed[s]),
                it,
            )?;
            self.segments[s].meta.embeddings.push(EmbeddingRef {
                key: key.clone(),
                file,
            });
        }
        self.schema = schema;
        for s in 0..self.segments.len() {
            self.reopen(s)?;
        }
        Ok(())
    }

    /// Removes embedding version `key` from the snapshot (its files stay
    /// with older snapshots until collected).
    pub fn drop_embedding(&mut self, key: &str) -> Result<()> {
        self.w.check_poisoned()?;
        if self.schema.embedding_def(key).is_none() {
            return Err(Error::VersionSkew {
                snapshot: self.number,
                requested: key.to_string(),
                available: self.schema.embedding_keys(),
            });
        }
        let mut gone = self.dropped_versions()?;
        gone.insert(key.to_string(), self.number);
        self.set_dropped_versions(&gone);
        self.schema.embeddings.retain(|d| d.key() != key);
        // A bundle belongs to its embedding version and retires with it.
        self.bundles
            .retain(|id, _| crate::model::split_bundle_id(id).0 != key);
        self.towers.remove(key);
        self.stale.remove(key);
        self.unfilled.remove(key);
        for s in &mut self.segments {
            s.meta.embeddings.retain(|e| e.key != key);
        }
        for s in 0..self.segments.len() {
            let r = self.reopen(s);
            self.w.poison(r)?;
        }
        Ok(())
    }
}

impl Transaction<'_> {
    /// Forgets that embedding version `key` was dropped earlier in the
    /// store's history, so [`Transaction::add_embedding`] takes that name
    /// again: for vectors made by the same model as the dropped ones (a
    /// version dropped by mistake, say). Returns whether it had been
    /// dropped. Vectors of another model need another name.
    pub fn forget_dropped_version(&mut self, key: &str) -> Result<bool> {
        let mut gone = self.dropped_versions()?;
        let was = gone.remove(key).is_some();
        self.set_dropped_versions(&gone);
        Ok(was)
    }

    /// The versions dropped earlier in the store's history, as this
    /// transaction sees them (see [`DROPPED_VERSIONS_KEY`]).
    fn dropped_versions(&self) -> Result<BTreeMap<String, u64>> {
        let value = self.user_meta.get(DROPPED_VERSIONS_KEY);
        let base = self.base.as_ref().map_or(0, |b| b.number());
        dropped::parse(value.map(String::as_str), base)
    }

    fn set_dropped_versions(&mut self, gone: &BTreeMap<String, u64>) {
        match dropped::encode(gone) {
            Some(v) => self.user_meta.insert(DROPPED_VERSIONS_KEY.to_string(), v),
            None => self.user_meta.remove(DROPPED_VERSIONS_KEY),
        };
    }
}
