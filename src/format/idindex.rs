//! The per-segment id index: ids in row order plus an open-addressing hash
//! table of `(id, row + 1)` slots, built at write time and used in place from
//! the map.
//!
//! Since format version 3 the slots form buckets of four (one 64-byte line):
//! an id's home is the first slot of its home bucket, and at load factor at
//! most 0.5 about 96% of ids sit in their home bucket, so a lookup is one
//! line and a well-predicted branch. Files of versions 1 and 2 have
//! one-slot buckets (home slot anywhere, load factor at most 0.7) and read as
//! before. Collisions probe linearly in both layouts, bounded by the
//! build-time maximum distance.

use crate::error::{Error, Result};
use crate::kernels::bucket;

/// Slots per bucket in format version 3 (one 64-byte line).
pub(crate) const BUCKET: usize = 4;

/// Slots per bucket of an id index file of format `version`.
pub(crate) fn bucket_width(version: u32) -> usize {
    if version >= 3 {
        BUCKET
    } else {
        1
    }
}

/// The fixed hash of the format (splitmix64's finalizer). Part of the format:
/// changing it changes where ids live in every id index.
#[inline]
pub(crate) fn hash(id: u64) -> u64 {
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Home slot of `id` in a table of `slots` slots (Lemire's fastrange).
#[inline]
pub(crate) fn home(id: u64, slots: u64) -> u64 {
    fastrange(hash(id), slots)
}

/// The slot among `slots` that hash `h` selects (Lemire's fastrange).
#[inline]
pub(crate) fn fastrange(h: u64, slots: u64) -> u64 {
    ((h as u128 * slots as u128) >> 64) as u64
}

/// An id with its [`hash`], computed once and used by every table the
/// query probes (the dedupe set, id indexes, the id directory).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Hashed {
    pub id: u64,
    pub h: u64,
}

impl Hashed {
    #[inline]
    pub(crate) fn new(id: u64) -> Hashed {
        Hashed { id, h: hash(id) }
    }
}

/// Bloom filter bits per id (about 1% false positives with 7 probes in a
/// 512-bit block).
const BLOOM_BITS_PER_ID: u64 = 10;
/// Bits set per id.
pub(crate) const BLOOM_K: u32 = 7;

/// Number of 64-byte Bloom blocks for `rows` ids (at least 1).
pub(crate) fn bloom_blocks_for(rows: u64) -> u64 {
    (rows.saturating_mul(BLOOM_BITS_PER_ID))
        .div_ceil(512)
        .max(1)
}

/// The Bloom block of `id` and the 512-bit mask of its 7 bits: the block
/// is chosen by the home hash (fastrange), the bits by 9-bit fields of a
/// second mix of it.
#[inline]
pub(crate) fn bloom_pos(id: u64, blocks: u64) -> (usize, [u64; 8]) {
    let k = BloomHash::new(id);
    (k.block(blocks as usize), k.mask())
}

/// The two hashes of an id a Bloom test needs (block choice and bit
/// positions), computed once per id and tested against many filters.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct BloomHash {
    h: u64,
    g: u64,
}

impl BloomHash {
    #[inline]
    pub(crate) fn new(id: u64) -> BloomHash {
        let h = hash(id);
        BloomHash {
            h,
            g: hash(h ^ 0x6A09_E667_F3BC_C909),
        }
    }

    /// The block among `blocks` (fastrange of the home hash).
    #[inline]
    fn block(&self, blocks: usize) -> usize {
        ((self.h as u128 * blocks as u128) >> 64) as usize
    }

    /// The 512-bit mask of the id's 7 bits (9-bit fields of `g`).
    fn mask(&self) -> [u64; 8] {
        let mut g = self.g;
        let mut mask = [0u64; 8];
        for _ in 0..BLOOM_K {
            let bit = (g & 511) as usize;
            mask[bit / 64] |= 1 << (bit % 64);
            g >>= 9;
        }
        mask
    }
}

/// Builds the Bloom filter for `ids`: `bloom_blocks_for(len)` blocks of 8
/// little-endian u64 words.
pub(crate) fn build_bloom(ids: &[u64]) -> Vec<[u64; 8]> {
    let blocks = bloom_blocks_for(ids.len() as u64);
    let mut f = vec![[0u64; 8]; blocks as usize];
    for &id in ids {
        let (b, m) = bloom_pos(id, blocks);
        for (w, x) in f[b].iter_mut().zip(m) {
            *w |= x;
        }
    }
    f
}

/// Number of slots for `rows` ids in buckets of `width` slots: at load
/// factor at most 0.5 in four-slot buckets (format 3), `ceil(rows / 0.7) + 1`
/// single slots in formats 1 and 2. Either way at least one slot is empty.
pub(crate) fn slots_for(rows: u64, width: usize) -> u64 {
    if width == BUCKET {
        BUCKET as u64 * ((rows as f64 / 0.5 / BUCKET as f64).ceil() as u64).max(1)
    } else {
        (rows as f64 / 0.7).ceil() as u64 + 1
    }
}

/// Home slot of `id` (the first slot of its home bucket) in a table of
/// `slots` slots in buckets of `width`.
#[inline]
pub(crate) fn home_slot(id: u64, slots: u64, width: usize) -> usize {
    home(id, slots / width as u64) as usize * width
}

/// Builds the table for `ids` (which must be unique) in the current layout
/// (four-slot buckets). Returns the slots as `[id, row + 1]` pairs and the
/// largest probe distance from an id's home slot.
pub(crate) fn build(ids: &[u64]) -> (Vec<[u64; 2]>, u32) {
    let slots = slots_for(ids.len() as u64, BUCKET);
    let mut table = vec![[0u64; 2]; slots as usize];
    let mut max_probe = 0u32;
    for (row, &id) in ids.iter().enumerate() {
        let mut s = home_slot(id, slots, BUCKET);
        let mut d = 0u32;
        while table[s][1] != 0 {
            s += 1;
            if s == table.len() {
                s = 0;
            }
            d += 1;
        }
        table[s] = [id, row as u64 + 1];
        max_probe = max_probe.max(d);
    }
    (table, max_probe)
}

/// A read-only view of one segment's id index, borrowed from its map.
#[derive(Clone, Copy)]
pub(crate) struct IdIndexView<'a> {
    pub ids: &'a [u64],
    pub table: &'a [[u64; 2]],
    pub max_probe: u32,
    pub bloom: &'a [[u64; 8]],
    /// Slots per bucket: 4 in format 3, 1 in older files.
    pub width: usize,
    /// Buckets (`table.len() / width`).
    pub buckets: u64,
}

impl<'a> IdIndexView<'a> {
    /// A view of a table in buckets of `width` slots ([`bucket_width`]).
    pub(crate) fn new(
        ids: &'a [u64],
        table: &'a [[u64; 2]],
        max_probe: u32,
        bloom: &'a [[u64; 8]],
        width: usize,
    ) -> IdIndexView<'a> {
        IdIndexView {
            ids,
            table,
            max_probe,
            bloom,
            width,
            buckets: (table.len() / width) as u64,
        }
    }

    /// Row of `id`, if the segment holds it. Never returns a row that is out
    /// of range or whose id (in the ids block) differs, even if the table bytes
    /// are damaged: such damage reads as "absent" (and `verify()` reports it).
    #[inline]
    pub(crate) fn find(&self, id: u64) -> Option<usize> {
        self.probe(id).filter(|&row| self.ids[row] == id)
    }

    /// The row of `id`'s table entry if present, without checking the ids
    /// block (the query path checks `ids[row] == id` later, after
    /// prefetching, so that the two cache misses overlap). The row is
    /// bounds-checked against the ids block.
    #[inline]
    pub(crate) fn probe(&self, id: u64) -> Option<usize> {
        self.probe_hashed(Hashed::new(id))
    }

    /// [`IdIndexView::probe`] with the id's hash computed by the caller.
    #[inline]
    pub(crate) fn probe_hashed(&self, k: Hashed) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let s = self.home_slot_hashed(k.h);
        match self.in_bucket(s, k.id) {
            Some(found) => found,
            None => self.probe_from(k.id, s + self.width, self.width as u32),
        }
    }

    /// [`IdIndexView::probe`] limited to `id`'s home bucket (one cache
    /// line): `Some(found)` if that settles it, `None` if the bucket is full
    /// without `id` (the entry may lie beyond: [`IdIndexView::probe`]).
    #[inline]
    pub(crate) fn probe_home(&self, k: Hashed) -> Option<Option<usize>> {
        if self.table.is_empty() {
            return Some(None);
        }
        self.in_bucket(self.home_slot_hashed(k.h), k.id)
    }

    /// Looks for `id` in the bucket starting at slot `s`: `Some(row)` if it
    /// is there, `Some(None)` if the bucket has an empty slot (so `id` is not
    /// in the table), `None` if the bucket is full without it.
    #[inline]
    fn in_bucket(&self, s: usize, id: u64) -> Option<Option<usize>> {
        let row = |row1: u64| {
            let row = (row1 - 1) as usize;
            (row < self.ids.len()).then_some(row)
        };
        if self.width == BUCKET {
            // Linear probing without deletions fills every bucket from its
            // first slot: the occupied slots are a prefix. So the first slot
            // holding `id` or empty (an empty slot reads as id 0) settles
            // it, and a bucket without either is full. (A damaged table
            // breaks the prefix; then an id may read as absent, never as
            // another id's row: rows are confirmed against the ids block.)
            let b: &[[u64; 2]; BUCKET] = self.table.get(s..s + BUCKET)?.try_into().ok()?;
            settle(b, id, self.ids.len())
        } else {
            let [sid, row1] = *self.table.get(s)?;
            if row1 == 0 {
                Some(None)
            } else if sid == id {
                Some(row(row1))
            } else {
                None
            }
        }
    }

    /// Linear probing for `id` from slot `s`, `d` slots past its home.
    fn probe_from(&self, id: u64, mut s: usize, d: u32) -> Option<usize> {
        for _ in d..=self.max_probe {
            if s >= self.table.len() {
                s = 0;
            }
            let [sid, row1] = self.table[s];
            if row1 == 0 {
                return None;
            }
            if sid == id {
                let row = (row1 - 1) as usize;
                return (row < self.ids.len()).then_some(row);
            }
            s += 1;
        }
        None
    }

    /// The table as four-slot buckets (format version 3 and later), for
    /// lookups without the layout checks; `None` for older layouts and an
    /// empty table.
    pub(crate) fn buckets(&self) -> Option<Buckets<'a>> {
        let (buckets, rest) = self.table.as_chunks::<BUCKET>();
        (self.width == BUCKET && !buckets.is_empty() && rest.is_empty()).then_some(Buckets {
            buckets,
            rows: self.ids.len(),
        })
    }

    /// Home slot of `id` (first slot of its home bucket).
    #[inline]
    pub(crate) fn home_slot(&self, id: u64) -> usize {
        self.home_slot_hashed(hash(id))
    }

    /// Home slot of the id whose [`hash`] is `h`.
    #[inline]
    fn home_slot_hashed(&self, h: u64) -> usize {
        fastrange(h, self.buckets) as usize * self.width
    }

    /// Whether the segment may hold `id` (false: it certainly does not).
    #[inline]
    pub(crate) fn may_contain(&self, id: u64) -> bool {
        self.may_contain_hash(&BloomHash::new(id))
    }

    /// [`IdIndexView::may_contain`] with the id's hashes computed once: the
    /// block's bits tested one by one, without branches.
    #[inline]
    pub(crate) fn may_contain_hash(&self, k: &BloomHash) -> bool {
        if self.bloom.is_empty() {
            return true;
        }
        let blk = &self.bloom[k.block(self.bloom.len())];
        let mut g = k.g;
        let mut all = 1u64;
        for _ in 0..BLOOM_K {
            let bit = (g & 511) as usize;
            all &= blk[bit / 64] >> (bit % 64);
            g >>= 9;
        }
        all & 1 == 1
    }

    /// Address of the home bucket of the id whose [`hash`] is `h` (to
    /// prefetch).
    #[inline]
    pub(crate) fn home_addr(&self, h: u64) -> *const u8 {
        self.slot_addr(self.home_slot_hashed(h))
    }

    /// Address of the bucket after the home bucket of the id whose [`hash`]
    /// is `h` (to prefetch when the home bucket is full without it).
    #[inline]
    pub(crate) fn next_addr(&self, h: u64) -> *const u8 {
        let s = self.home_slot_hashed(h) + self.width;
        self.slot_addr(if s < self.table.len() { s } else { 0 })
    }

    /// Address of slot `s` (of the table's start if out of range).
    #[inline]
    fn slot_addr(&self, s: usize) -> *const u8 {
        self.table
            .get(s)
            .map_or(self.table.as_ptr(), |x| x as *const [u64; 2]) as *const u8
    }

    /// Checks that every id maps back to its row and the table holds exactly
    /// the ids (what `verify()` runs on top of the checksums).
    pub(crate) fn check(&self, path: &std::path::Path) -> Result<()> {
        for (row, &id) in self.ids.iter().enumerate() {
            match self.find(id) {
                Some(r) if r == row => {}
                Some(r) => {
                    return Err(Error::corrupt(
                        path,
                        format!("id {id} at row {row} is indexed at row {r} (duplicate id?)"),
                    ))
                }
                None => {
                    return Err(Error::corrupt(
                        path,
                        format!("id {id} at row {row} is missing from the hash table"),
                    ))
                }
            }
        }
        if let Some(id) = self.ids.iter().find(|&&id| !self.may_contain(id)) {
            return Err(Error::corrupt(
                path,
                format!("id {id} is missing from the Bloom filter"),
            ));
        }
        let occupied = self.table.iter().filter(|s| s[1] != 0).count();
        if occupied != self.ids.len() {
            return Err(Error::corrupt(
                path,
                format!(
                    "hash table holds {occupied} entries for {} rows",
                    self.ids.len()
                ),
            ));
        }
        Ok(())
    }
}

/// A format-3 id index table as its four-slot buckets (at least one), for
/// the query's home-bucket lookups ([`IdIndexView::buckets`]).
#[derive(Clone, Copy)]
pub(crate) struct Buckets<'a> {
    buckets: &'a [[[u64; 2]; BUCKET]],
    /// Rows in the ids block (a row found is below it).
    rows: usize,
}

impl Buckets<'_> {
    /// The home bucket of the id whose [`hash`] is `h`.
    #[inline(always)]
    fn home(&self, h: u64) -> usize {
        fastrange(h, self.buckets.len() as u64) as usize
    }

    /// Address of the home bucket of the id whose [`hash`] is `h` (to
    /// prefetch).
    #[inline(always)]
    pub(crate) fn home_addr(&self, h: u64) -> *const u8 {
        self.buckets.as_ptr().wrapping_add(self.home(h)) as *const u8
    }

    /// [`IdIndexView::probe_home`]: `Some(found)` if `k`'s home bucket
    /// settles it (`found`: the row, bounds-checked against the ids block
    /// but not confirmed, or `None` if the id is absent), `None` if the
    /// bucket is full without it.
    #[inline(always)]
    pub(crate) fn probe_home(&self, k: Hashed) -> Option<Option<usize>> {
        settle(self.buckets.get(self.home(k.h))?, k.id, self.rows)
    }
}

/// Looks for `id` in bucket `b` of a table whose ids block has `rows`
/// rows: `Some(row)` if it is there (the row bounds-checked), `Some(None)`
/// if the bucket has an empty slot first (so `id` is not in the table),
/// `None` if the bucket is full without it.
#[inline(always)]
fn settle(b: &[[u64; 2]; BUCKET], id: u64, rows: usize) -> Option<Option<usize>> {
    let row1 = b[bucket::first_stop(b, id, 0)?][1];
    Some(
        row1.checked_sub(1)
            .map(|r| r as usize)
            .filter(|&r| r < rows),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<u64> {
        (0..n).map(|i| hash(i ^ 0x5555) % 1_000_000_007).collect()
    }

    fn view<'a>(ids: &'a [u64], table: &'a [[u64; 2]], max_probe: u32) -> IdIndexView<'a> {
        IdIndexView::new(ids, table, max_probe, &[], BUCKET)
    }

    #[test]
    fn bucketed_table_finds_every_id_and_only_those() {
        for n in [0u64, 1, 3, 4, 5, 100, 5_000] {
            let mut ids = ids(n);
            ids.sort_unstable();
            ids.dedup();
            let (table, max_probe) = build(&ids);
            assert_eq!(table.len() as u64, slots_for(ids.len() as u64, BUCKET));
            assert_eq!(table.len() % BUCKET, 0);
            assert!(table.len() >= 2 * ids.len(), "load factor above 0.5");
            let v = view(&ids, &table, max_probe);
            let mut in_home = 0;
            for (row, &id) in ids.iter().enumerate() {
                assert_eq!(v.find(id), Some(row), "id {id} of {n}");
                match v.probe_home(Hashed::new(id)) {
                    Some(r) => {
                        assert_eq!(r, Some(row));
                        in_home += 1;
                    }
                    None => assert_eq!(v.probe(id), Some(row)),
                }
                // The prefetch addresses lie in the table.
                let range = table.as_ptr_range();
                for a in [v.home_addr(hash(id)), v.next_addr(hash(id))] {
                    let a = a as *const [u64; 2];
                    assert!(range.start <= a && a < range.end);
                }
            }
            if n >= 100 {
                // Bucketized linear probing at load 0.5 keeps about 96% of
                // ids in their home bucket.
                assert!(in_home * 100 >= ids.len() * 90, "{in_home} of {n}");
            }
            // The bucket view answers as the view, prefetches in the table.
            match v.buckets() {
                None => assert_eq!(n, 0),
                Some(b) => {
                    for k in ids.iter().chain(&[0, 1_000_000_007, u64::MAX]) {
                        let k = Hashed::new(*k);
                        assert_eq!(b.probe_home(k), v.probe_home(k), "id {}", k.id);
                        assert_eq!(b.home_addr(k.h), v.home_addr(k.h));
                    }
                }
            }
            for i in 0..2_000u64 {
                let absent = 1_000_000_007 + i;
                assert_eq!(v.find(absent), None);
                assert_eq!(v.probe(absent), None);
                assert!(matches!(
                    v.probe_home(Hashed::new(absent)),
                    None | Some(None)
                ));
            }
        }
    }

    #[test]
    fn entries_fill_each_bucket_from_its_first_slot() {
        // The lookup stops at a bucket with an empty slot, which is only
        // right if occupied slots form a prefix of every bucket.
        let ids = ids(3_000);
        let (table, _) = build(&ids);
        for b in table.chunks(BUCKET) {
            let occ: Vec<bool> = b.iter().map(|s| s[1] != 0).collect();
            let first_empty = occ.iter().position(|o| !o).unwrap_or(BUCKET);
            assert!(occ[first_empty..].iter().all(|o| !o), "{occ:?}");
        }
    }

    #[test]
    fn id_zero_is_not_confused_with_empty_slots() {
        // Empty slots are all zeros: id 0 must only match a slot whose row
        // is set.
        let ids = [5u64, 7, 9];
        let (table, max_probe) = build(&ids);
        let v = view(&ids, &table, max_probe);
        assert_eq!(v.probe(0), None);
        let ids = [5u64, 0, 9];
        let (table, max_probe) = build(&ids);
        let v = view(&ids, &table, max_probe);
        assert_eq!(v.find(0), Some(1));
    }

    #[test]
    fn single_slot_layout_of_older_files_reads() {
        // Formats 1 and 2: home slot anywhere, ceil(rows / 0.7) + 1 slots.
        let ids = ids(1_000);
        let slots = slots_for(ids.len() as u64, 1);
        assert_eq!(slots, 1_430);
        let mut table = vec![[0u64; 2]; slots as usize];
        let mut max_probe = 0;
        for (row, &id) in ids.iter().enumerate() {
            let (mut s, mut d) = (home(id, slots) as usize, 0);
            while table[s][1] != 0 {
                s = (s + 1) % table.len();
                d += 1;
            }
            table[s] = [id, row as u64 + 1];
            max_probe = max_probe.max(d);
        }
        let v = IdIndexView::new(&ids, &table, max_probe, &[], 1);
        for (row, &id) in ids.iter().enumerate() {
            assert_eq!(v.find(id), Some(row));
            assert_eq!(
                v.probe_home(Hashed::new(id)).unwrap_or_else(|| v.probe(id)),
                Some(row)
            );
        }
        assert_eq!(v.find(1_000_000_007), None);
    }

    #[test]
    fn damaged_rows_read_as_absent() {
        let ids = ids(50);
        let (mut table, max_probe) = build(&ids);
        for s in table.iter_mut().filter(|s| s[1] != 0) {
            s[1] = 1_000; // out of range
        }
        let v = view(&ids, &table, max_probe);
        assert!(ids.iter().all(|&id| v.probe(id).is_none()));
        let b = v.buckets().unwrap();
        for &id in &ids {
            let k = Hashed::new(id);
            assert!(matches!(b.probe_home(k), None | Some(None)));
            assert_eq!(b.probe_home(k), v.probe_home(k));
        }
        // A table that is not whole buckets is not viewed as buckets.
        let short = &table[..table.len() - 1];
        assert!(view(&ids, short, max_probe).buckets().is_none());
        assert!(IdIndexView::new(&ids, &table, max_probe, &[], 1)
            .buckets()
            .is_none());
    }
}
