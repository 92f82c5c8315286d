//! Vectors the store computes with an embedding version's item tower: for
//! items added without a vector for a version that has one
//! ([`Transaction::add_items`] computes them from the batch's profile), and
//! again at commit for every computed row of a version whose tower changed
//! in the transaction or whose rows were added before the tower
//! ([`Transaction::add_embedding`] with vectors left out). Each computed row
//! is marked in its embedding file (format version 5), so it can be told
//! from a vector the caller gave and recomputed when the tower changes.

use std::sync::Arc;

use super::transaction::Transaction;
use crate::error::{Error, Result};
use crate::format::encode::{self, ScalarColumn};
use crate::model::{ItemTower, TowerColumns};
use crate::schema::{EmbeddingDef, Schema};

impl Transaction<'_> {
    /// The item tower of embedding `key` in the snapshot being built: its
    /// item-tower-only bundle's, else that of a three-tower bundle of `key`
    /// carrying one (all carry the same; see `add_model`).
    pub(super) fn tower_of(&self, key: &str) -> Option<Arc<ItemTower>> {
        self.towers
            .get(key)
            .map(|t| t.tower.tower.clone())
            .or_else(|| {
                (self.bundles.values())
                    .filter(|b| b.model.key() == key)
                    .find_map(|b| b.model.item_tower.clone())
            })
    }

    /// Commit step (before anything is written): refuses a version with
    /// rows that have no vector (`unfilled`) and no item tower to compute
    /// them.
    pub(super) fn refuse_unfilled(&self) -> Result<()> {
        for (key, id) in &self.unfilled {
            if self.schema.embedding_def(key).is_some() && self.tower_of(key).is_none() {
                return Err(Error::InvalidInput(format!(
                    "embedding {key} has no vector for item id {id} and {key} has no item \
                     tower to compute one: give a vector for every live item, or add a bundle \
                     with {key}'s item tower in the same transaction"
                )));
            }
        }
        Ok(())
    }

    /// Commit step, before anything is written: computes again the
    /// computed rows of every version in `stale` that has an item tower
    /// (the rows of one without keep their vectors; `refuse_unfilled` ran
    /// first), and checks the column can hold them. Returns the embedding
    /// files to write ([`Transaction::write_recomputed`]).
    pub(super) fn recompute_stale(&mut self) -> Result<Vec<Recomputed>> {
        let stale = std::mem::take(&mut self.stale);
        self.unfilled.clear();
        let mut out = Vec::new();
        for key in stale {
            let Some(def) = self.schema.embedding_def(&key).cloned() else {
                continue;
            };
            if let Some(t) = self.tower_of(&key) {
                for s in 0..self.segments.len() {
                    out.extend(self.recompute(&def, &t, s)?);
                }
            }
        }
        Ok(out)
    }

    /// Segment `s`'s embedding file of `def` with its computed rows
    /// computed by `tower` from the segment's profile (other rows copied as
    /// stored), or `None` if no row of it was computed.
    fn recompute(
        &self,
        def: &EmbeddingDef,
        tower: &ItemTower,
        s: usize,
    ) -> Result<Option<Recomputed>> {
        let key = def.key();
        let seg = self.segment(s);
        let Some(bitmap) = seg.computed_bitmap(&key) else {
            return Ok(None);
        };
        let (stride, d, rows) = (def.dtype.row_stride(def.dim), def.dim as usize, seg.rows());
        let emb = seg
            .embedding_opt(&key)
            .ok_or_else(|| skew(&key, &self.schema))?;
        let mut bytes = Vec::with_capacity(rows * stride);
        for r in 0..rows {
            bytes.extend_from_slice(&emb.row_bytes(r)[..stride]);
        }
        let cols = TowerColumns::new(
            tower,
            |n| Ok(seg.numeric(n)?.values()),
            |n| Ok(seg.categorical(n)?.values()),
        )?;
        let (mut vals, mut tmp) = (Vec::new(), Vec::new());
        for (first, len) in runs(&bitmap, rows) {
            vals.resize(len * d, 0f32);
            if let Some((row, column)) = tower.compute(&cols, first, &mut vals) {
                return Err(input_not_finite(def, seg.ids()[row], column));
            }
            check_computed(def, &seg.ids()[first..first + len], &vals)?;
            for (i, v) in vals.chunks_exact(d).enumerate() {
                let at = (first + i) * stride;
                encode::encode_row(def.dtype, v, &mut bytes[at..at + stride], &mut tmp);
            }
        }
        Ok(Some(Recomputed {
            segment: s,
            def: def.clone(),
            bitmap,
            bytes,
        }))
    }

    /// Commit step: writes the embedding files [`Transaction::recompute_stale`]
    /// planned, in place of the segments' old ones. The precomputed
    /// first-layer parts of the rewritten segments are dropped, so the
    /// commit computes them again from the new vectors.
    pub(super) fn write_recomputed(&mut self, plan: Vec<Recomputed>) -> Result<()> {
        for p in plan {
            let (s, key) = (p.segment, p.def.key());
            let seg_id = self.segments[s].meta.id;
            let stride = p.def.dtype.row_stride(p.def.dim);
            let name = self.fresh_name(seg_id, &format!("emb-{key}"), "vcol");
            let file = encode::write_embedding_raw(
                &*self.w.fs,
                &self.path(&name),
                seg_id,
                (p.bytes.len() / stride) as u64,
                &p.def,
                Some(&p.bitmap),
                p.bytes.chunks_exact(stride),
            )?;
            let meta = &mut self.segments[s].meta;
            let entry = (meta.embeddings.iter_mut())
                .find(|e| e.key == key)
                .expect("the segment was read from it");
            let old = std::mem::replace(&mut entry.file, file).name;
            for b in self.bundles.values_mut() {
                if b.model.key() == key {
                    if let Some((_, have)) = &mut b.pre {
                        have.remove(&seg_id);
                    }
                }
            }
            self.reopen(s)?;
            // A file this transaction wrote and just replaced is garbage
            // now; one from the base snapshot stays with it.
            if self.written.remove(&old) {
                let _ = self.w.fs.remove(&self.path(&old));
            }
        }
        Ok(())
    }
}

/// One segment's embedding file of one version, recomputed and encoded,
/// waiting to be written.
#[derive(Debug)]
pub(super) struct Recomputed {
    segment: usize,
    def: EmbeddingDef,
    bitmap: Vec<u64>,
    /// Every row, `stride` bytes each.
    bytes: Vec<u8>,
}

/// The vectors `tower` computes for every row of a batch's `profile`
/// columns (those of `schema`, in its order), row-major; `ids` are the
/// batch's (an error names the item).
pub(super) fn compute_for_batch(
    tower: &ItemTower,
    def: &EmbeddingDef,
    schema: &Schema,
    profile: &[ScalarColumn],
    ids: &[u64],
) -> Result<Vec<f32>> {
    let rows = ids.len();
    let col = |name: &str| -> Result<&[u32]> {
        let i = schema.profile_index(name)?;
        Ok(&profile[i].values)
    };
    let cols = TowerColumns::new(tower, |n| col(n).map(bytemuck::cast_slice), |n| col(n))?;
    let mut out = vec![0f32; rows * tower.item_dim];
    if let Some((row, column)) = tower.compute(&cols, 0, &mut out) {
        return Err(input_not_finite(def, ids[row], column));
    }
    Ok(out)
}

/// The refusal of an item whose item-tower input is not finite.
fn input_not_finite(def: &EmbeddingDef, id: u64, column: &str) -> Error {
    Error::InvalidInput(format!(
        "the item tower of {} cannot compute item {id}'s vector: its input from column \
         {column:?} is not finite (log1p of a value of -1 or less)",
        def.key()
    ))
}

/// Checks vectors the item tower of `def` computed for items `ids`: the
/// column must hold them (finite, in range of its dtype); a refusal names
/// the item and says the tower computed it.
pub(super) fn check_computed(def: &EmbeddingDef, ids: &[u64], values: &[f32]) -> Result<()> {
    encode::check_vectors(def, ids, values).map_err(|e| {
        Error::InvalidInput(format!(
            "the item tower of {} computed a vector the column cannot hold: {e}",
            def.key()
        ))
    })
}

/// A computed-rows bitmap of `rows` rows with every row set.
pub(super) fn all_rows(rows: usize) -> Vec<u64> {
    let mut bm = vec![u64::MAX; rows.div_ceil(64)];
    if !rows.is_multiple_of(64) {
        if let Some(last) = bm.last_mut() {
            *last = (1u64 << (rows % 64)) - 1;
        }
    }
    bm
}

/// The runs of consecutive set bits among the first `rows` bits of
/// `bitmap`, as (first row, length).
fn runs(bitmap: &[u64], rows: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = Vec::new();
    for r in 0..rows {
        if bitmap[r / 64] >> (r % 64) & 1 == 1 {
            match out.last_mut() {
                Some((f, n)) if *f + *n == r => *n += 1,
                _ => out.push((r, 1)),
            }
        }
    }
    out
}

fn skew(key: &str, schema: &Schema) -> Error {
    Error::InvalidInput(format!(
        "embedding {key} is not in the schema (it has [{}])",
        schema.embedding_keys().join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::{all_rows, runs};

    #[test]
    fn runs_and_full_bitmaps_cover_exactly_the_set_rows() {
        assert_eq!(all_rows(0), Vec::<u64>::new());
        assert_eq!(all_rows(64), vec![u64::MAX]);
        assert_eq!(all_rows(65), vec![u64::MAX, 1]);
        assert_eq!(runs(&all_rows(130), 130), vec![(0, 130)]);
        let bm = vec![0b1011_0000u64 | 1 << 63, 0b1];
        assert_eq!(runs(&bm, 70), vec![(4, 2), (7, 1), (63, 2)]);
        // Bits past `rows` are ignored.
        assert_eq!(runs(&[u64::MAX], 3), vec![(0, 3)]);
    }
}
