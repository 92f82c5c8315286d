//! The per-segment id index: ids in row order plus an open-addressing hash
//! table of `(id, row + 1)` slots, built at write time and used in place from
//! the map. One lookup touches one 16-byte slot in the common case (load
//! factor at most 0.7, linear probing bounded by the build-time maximum).

use crate::error::{Error, Result};

/// Slots per id: the table holds `ceil(rows / MAX_LOAD) + 1` slots.
const MAX_LOAD: f64 = 0.7;

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
    ((hash(id) as u128 * slots as u128) >> 64) as u64
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

/// Number of slots for `rows` ids.
pub(crate) fn slots_for(rows: u64) -> u64 {
    (rows as f64 / MAX_LOAD).ceil() as u64 + 1
}

/// Builds the table for `ids` (which must be unique). Returns the slots as
/// `[id, row + 1]` pairs and the largest probe distance.
pub(crate) fn build(ids: &[u64]) -> (Vec<[u64; 2]>, u32) {
    let slots = slots_for(ids.len() as u64);
    let mut table = vec![[0u64; 2]; slots as usize];
    let mut max_probe = 0u32;
    for (row, &id) in ids.iter().enumerate() {
        let mut s = home(id, slots);
        let mut d = 0u32;
        while table[s as usize][1] != 0 {
            s += 1;
            if s == slots {
                s = 0;
            }
            d += 1;
        }
        table[s as usize] = [id, row as u64 + 1];
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
}

impl<'a> IdIndexView<'a> {
    /// Row of `id`, if the segment holds it. Never returns a row that is out
    /// of range or whose id (in the ids block) differs, even if the table bytes
    /// are damaged: such damage reads as "absent" (and `verify()` reports it).
    #[inline]
    pub(crate) fn find(&self, id: u64) -> Option<usize> {
        self.probe(id).filter(|&row| self.ids[row] == id)
    }

    /// The slot of `id`'s table entry if present, without checking the ids
    /// block (the query path checks `ids[row] == id` later, after
    /// prefetching, so that the two cache misses overlap). The row is
    /// bounds-checked against the ids block.
    #[inline]
    pub(crate) fn probe(&self, id: u64) -> Option<usize> {
        let slots = self.table.len() as u64;
        if slots == 0 {
            return None;
        }
        let mut s = home(id, slots) as usize;
        for _ in 0..=self.max_probe {
            let [sid, row1] = self.table[s];
            if row1 == 0 {
                return None;
            }
            if sid == id {
                let row = (row1 - 1) as usize;
                return (row < self.ids.len()).then_some(row);
            }
            s += 1;
            if s == self.table.len() {
                s = 0;
            }
        }
        None
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

    /// Address of `id`'s home slot (to prefetch).
    #[inline]
    pub(crate) fn home_addr(&self, id: u64) -> *const u8 {
        let slots = self.table.len() as u64;
        if slots == 0 {
            return self.table.as_ptr() as *const u8;
        }
        self.table[home(id, slots) as usize].as_ptr() as *const u8
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
