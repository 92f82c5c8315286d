//! The in-memory id directory of a snapshot of several segments: the live
//! ids of every segment (or of every segment but the largest, when that
//! one holds at least half of the live rows), each mapped to its segment
//! and row in one open-addressing table. A candidate lookup probes the
//! directory and, if it leaves the largest segment out, that segment's own
//! id index: at most two probes however many segments the snapshot has,
//! instead of a Bloom test per segment until the id is found.
//!
//! Leaving a dominant segment out keeps the directory small where that
//! matters most: a store shaped by live updates (a large base plus small
//! recent segments) gets a directory of only the recent rows, which stays
//! in cache, and most candidates then cost one probe of the base, as in a
//! single-segment snapshot. A store of equal segments gets a directory of
//! all of them, and every candidate costs one probe of it.
//!
//! It is built from the segments' ids blocks and deletion bitmaps (not from
//! their hash tables), after their checksums are verified (a flipped bit in
//! an ids block would otherwise map an id to another item's row), once per
//! snapshot, on the first candidate query or
//! on [`crate::Snapshot::prepare_id_directory`]. Nothing of it is stored on
//! disk. It costs `16 B × (live rows it holds) / 0.7` of memory.
//!
//! The table is made of 64-byte buckets of four 16-byte slots
//! `[id, segment | row << 32]` (an empty slot's second word is all ones),
//! as the id index's: an id's home is the first slot of its home bucket,
//! collisions probe linearly on, so a lookup is one cache line compared at
//! once (`kernels::bucket`) and, for the ids whose home bucket is full
//! without them, the next.

use crate::error::Result;
use crate::format::idindex::{fastrange, home, Hashed};
use crate::kernels::bucket;
use crate::read::segment::Segment;

/// Slots per live id: the table holds `ceil(live / MAX_LOAD / 4) + 1`
/// buckets (at least 4).
const MAX_LOAD: f64 = 0.7;

/// Slots per bucket.
const WIDTH: usize = 4;

/// An empty slot's second word (no segment index reaches `u32::MAX`).
const EMPTY: u64 = u64::MAX;

/// Bytes per bucket: four 16-byte slots, one cache line.
const BUCKET_BYTES: usize = 64;

/// Live id → `(segment index, row)` for one snapshot's segments (other
/// than [`Directory::largest`], if set).
#[derive(Debug)]
pub(crate) struct Directory {
    /// The segment left out, if any: the one with the most live rows (the
    /// first of them on a tie), when it holds at least half of them.
    pub(crate) largest: Option<usize>,
    /// The buckets (page-aligned anonymous memory, so each bucket is one
    /// cache line; see `io::mmap::anon_table`).
    table: memmap2::MmapMut,
    /// Largest probe distance in slots from an id's home slot, seen while
    /// building (bounds every lookup).
    max_probe: u32,
}

impl Directory {
    /// Builds the directory of the live rows of `segs` (at least two),
    /// leaving out the largest segment if it holds at least half of them. Segments are taken newest (last) first and
    /// the first live row of an id wins, as in `segment::find_live`; in a
    /// healthy store no id has two live rows. Returns `None` if there are
    /// fewer than two segments, or a segment has more rows than a `u32` row
    /// number can name (the query then looks ids up segment by segment).
    /// A segment whose id index or deletion bitmap fails its checksums is
    /// the error (`Error::Corrupt` naming the file).
    pub(crate) fn build(segs: &[Segment]) -> Result<Option<Directory>> {
        Ok(Self::build_until(segs, &|| true)?.flatten())
    }

    /// [`Directory::build`] that gives up (`Ok(None)`) as soon as `go_on`
    /// says so (asked between checksum chunks and every 64Ki rows): for the
    /// background prefault, which must let go of a dropped store promptly.
    pub(crate) fn build_until(
        segs: &[Segment],
        go_on: &dyn Fn() -> bool,
    ) -> Result<Option<Option<Directory>>> {
        if segs.len() < 2
            || segs.len() >= EMPTY as usize
            || segs.iter().any(|s| s.rows() > u32::MAX as usize)
        {
            return Ok(Some(None));
        }
        let mut largest = 0;
        for (i, s) in segs.iter().enumerate() {
            if s.live_rows() > segs[largest].live_rows() {
                largest = i;
            }
        }
        let total: usize = segs.iter().map(|s| s.live_rows()).sum();
        let largest = (2 * segs[largest].live_rows() >= total).then_some(largest);
        for (i, s) in segs.iter().enumerate() {
            if Some(i) != largest && !s.ensure_identity_verified_until(go_on)? {
                return Ok(None);
            }
        }
        // Counted from the bitmaps this build reads (not from their
        // metadata, which only `verify` checks against them), so that the
        // table always has room.
        let live: usize = segs
            .iter()
            .enumerate()
            .filter(|&(i, _)| Some(i) != largest)
            .map(|(_, s)| {
                let dead = s
                    .deleted_words()
                    .map_or(0, |w| crate::read::segment::count_bits(w, s.rows()));
                s.rows() - dead as usize
            })
            .sum();
        let nb = ((live as f64 / MAX_LOAD / WIDTH as f64).ceil() as usize + 1).max(4);
        let mut table = crate::io::mmap::anon_table(nb * BUCKET_BYTES)?;
        let slots: &mut [[u64; 2]] = bytemuck::cast_slice_mut(&mut table[..]);
        for s in slots.iter_mut() {
            s[1] = EMPTY;
        }
        let mut max_probe = 0u32;
        const AHEAD: usize = 16;
        for (si, seg) in segs.iter().enumerate().rev() {
            if Some(si) == largest {
                continue;
            }
            let ids = seg.ids();
            let deleted = seg.deleted_words();
            for (row, &id) in ids.iter().enumerate() {
                if row % (1 << 16) == 0 && !go_on() {
                    return Ok(None);
                }
                if let Some(&a) = ids.get(row + AHEAD) {
                    let p = &slots[home(a, nb as u64) as usize * WIDTH] as *const [u64; 2];
                    crate::kernels::prefetch_line(p as *const u8);
                }
                if deleted.is_some_and(|w| w[row / 64] >> (row % 64) & 1 == 1) {
                    continue;
                }
                match insert(slots, id, si as u64 | (row as u64) << 32) {
                    Some(d) => max_probe = max_probe.max(d),
                    None => return Ok(Some(None)), // full: cannot happen (sized above)
                }
            }
        }
        Ok(Some(Some(Directory {
            largest,
            table,
            max_probe,
        })))
    }

    /// The table as buckets, for a query's lookups.
    pub(crate) fn view(&self) -> DirectoryView<'_> {
        let slots: &[[u64; 2]] = bytemuck::cast_slice(&self.table[..]);
        DirectoryView {
            buckets: slots.as_chunks::<WIDTH>().0,
            max_probe: self.max_probe,
        }
    }

    /// Bytes of memory the table holds.
    pub(crate) fn bytes(&self) -> usize {
        self.table.len()
    }
}

/// Puts `[id, entry]` in the first free slot from `id`'s home slot on
/// (wrapping), unless `id` is already there (an older live copy in a damaged
/// store: the first put wins). Returns the slot's distance from the home
/// slot, `None` if the table (whole buckets) is full.
fn insert(slots: &mut [[u64; 2]], id: u64, entry: u64) -> Option<u32> {
    let n = slots.len();
    let mut s = home(id, (n / WIDTH) as u64) as usize * WIDTH;
    for d in 0..n {
        let slot = &mut slots[s];
        if slot[1] == EMPTY {
            *slot = [id, entry];
            return Some(d as u32);
        }
        if slot[0] == id {
            return Some(d as u32);
        }
        s += 1;
        if s == n {
            s = 0;
        }
    }
    None
}

/// A [`Directory`]'s buckets (at least four), borrowed for a query.
#[derive(Clone, Copy)]
pub(crate) struct DirectoryView<'a> {
    buckets: &'a [[[u64; 2]; WIDTH]],
    max_probe: u32,
}

impl DirectoryView<'_> {
    /// The segment index and row of `id`'s live row, if it is in a segment
    /// the directory holds.
    #[inline]
    pub(crate) fn get(&self, k: Hashed) -> Option<(usize, usize)> {
        let nb = self.buckets.len();
        let mut b = self.home(k.h);
        // Slots looked at past the home slot; an entry lies at most
        // `max_probe` past it.
        let mut past = 0u32;
        loop {
            let slots = self.buckets.get(b)?;
            if let Some(j) = bucket::first_stop(slots, k.id, EMPTY) {
                let e = slots[j][1];
                return (e != EMPTY).then_some((e as u32 as usize, (e >> 32) as usize));
            }
            past += WIDTH as u32;
            if past > self.max_probe {
                return None;
            }
            b += 1;
            if b == nb {
                b = 0;
            }
        }
    }

    /// [`DirectoryView::get`] limited to `k`'s home bucket (one cache
    /// line): `Some(found)` if that settles it, `None` if the bucket is
    /// full without `k` (its entry may lie beyond).
    #[inline]
    pub(crate) fn probe_home(&self, k: Hashed) -> Option<Option<(usize, usize)>> {
        let slots = self.buckets.get(self.home(k.h))?;
        let e = slots[bucket::first_stop(slots, k.id, EMPTY)?][1];
        Some((e != EMPTY).then_some((e as u32 as usize, (e >> 32) as usize)))
    }

    /// The home bucket of the id whose hash is `h`.
    #[inline]
    fn home(&self, h: u64) -> usize {
        fastrange(h, self.buckets.len() as u64) as usize
    }

    /// Address of the home bucket of the id whose hash is `h` (to
    /// prefetch).
    #[inline]
    pub(crate) fn home_addr(&self, h: u64) -> *const u8 {
        self.buckets.as_ptr().wrapping_add(self.home(h)) as *const u8
    }

    /// Address of the bucket after the home bucket of the id whose hash is
    /// `h` (to prefetch when the home bucket is full without it).
    #[inline]
    pub(crate) fn next_addr(&self, h: u64) -> *const u8 {
        let b = self.home(h) + 1;
        let b = if b < self.buckets.len() { b } else { 0 };
        self.buckets.as_ptr().wrapping_add(b) as *const u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_find_every_entry_across_buckets_and_the_wrap() {
        // Four buckets nearly full: long probes, some wrapping past the
        // last bucket to the first.
        let mut slots = vec![[0, EMPTY]; 4 * WIDTH];
        // Six ids whose home is the last bucket (two of them wrap), nine
        // others.
        let last = |id: &u64| home(*id, 4) == 3;
        let mut ids: Vec<u64> = (1..)
            .map(|i: u64| i * 7_919 + 3)
            .filter(last)
            .take(6)
            .collect();
        ids.extend(
            (1..)
                .map(|i: u64| i * 7_919 + 3)
                .filter(|id| !last(id))
                .take(9),
        );
        let mut max_probe = 0;
        for (i, &id) in ids.iter().enumerate() {
            max_probe = max_probe.max(insert(&mut slots, id, i as u64 | 9 << 32).unwrap());
        }
        // The id already there keeps its first entry.
        assert!(insert(&mut slots, ids[0], 5).is_some());
        let view = DirectoryView {
            buckets: slots.as_chunks::<WIDTH>().0,
            max_probe,
        };
        assert!(max_probe >= 4, "some entry left its home bucket");
        for (i, &id) in ids.iter().enumerate() {
            let k = Hashed::new(id);
            assert_eq!(view.get(k), Some((i, 9)), "id {id}");
            // The home bucket answers or says to look further, never wrongly.
            if let Some(found) = view.probe_home(k) {
                assert_eq!(found, Some((i, 9)));
            }
        }
        for absent in [0u64, 1, u64::MAX, 7_919] {
            assert_eq!(view.get(Hashed::new(absent)), None);
            assert!(matches!(
                view.probe_home(Hashed::new(absent)),
                None | Some(None)
            ));
        }
        // Some entry wrapped past the last bucket.
        assert!(ids.iter().any(|&id| {
            let at = slots.iter().position(|s| s[0] == id).unwrap();
            at < home(id, 4) as usize * WIDTH
        }));
        // The last free slot is taken, then a full table takes no more.
        assert!(insert(&mut slots, 12_345, 1).is_some());
        assert!(insert(&mut slots, 54_321, 1).is_none());
        let full = DirectoryView {
            buckets: slots.as_chunks::<WIDTH>().0,
            max_probe: 4 * WIDTH as u32,
        };
        assert_eq!(full.get(Hashed::new(12_345)), Some((1, 0)));
        assert_eq!(full.get(Hashed::new(54_321)), None);
    }
}
