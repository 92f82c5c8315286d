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

use crate::error::Result;
use crate::format::idindex::{fastrange, home, Hashed};
use crate::read::segment::Segment;

/// Slots per live id: the table holds `ceil(live / MAX_LOAD) + 1` slots.
const MAX_LOAD: f64 = 0.7;

/// An empty slot's `seg`.
const EMPTY: u32 = u32::MAX;

/// One table entry: an id and where its live row is.
#[derive(Clone, Copy, Debug)]
#[repr(C, align(16))]
struct Slot {
    id: u64,
    seg: u32,
    row: u32,
}

/// Live id → `(segment index, row)` for one snapshot's segments (other
/// than [`Directory::largest`], if set).
#[derive(Debug)]
pub(crate) struct Directory {
    /// The segment left out, if any: the one with the most live rows (the
    /// first of them on a tie), when it holds at least half of them.
    pub(crate) largest: Option<usize>,
    slots: Vec<Slot>,
    /// Largest probe distance seen while building (bounds every lookup).
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
        let n = ((live as f64 / MAX_LOAD).ceil() as usize + 1).max(16);
        let mut slots = vec![
            Slot {
                id: 0,
                seg: EMPTY,
                row: 0
            };
            n
        ];
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
                    let p = &slots[home(a, n as u64) as usize] as *const Slot as *const u8;
                    crate::kernels::prefetch_line(p);
                }
                if deleted.is_some_and(|w| w[row / 64] >> (row % 64) & 1 == 1) {
                    continue;
                }
                let mut s = home(id, n as u64) as usize;
                let mut d = 0u32;
                loop {
                    let slot = &mut slots[s];
                    if slot.seg == EMPTY {
                        *slot = Slot {
                            id,
                            seg: si as u32,
                            row: row as u32,
                        };
                        max_probe = max_probe.max(d);
                        break;
                    }
                    if slot.id == id {
                        break; // an older live copy (a damaged store): newest wins
                    }
                    s += 1;
                    if s == n {
                        s = 0;
                    }
                    d += 1;
                    if d as usize >= n {
                        return Ok(Some(None)); // full: cannot happen (sized above)
                    }
                }
            }
        }
        Ok(Some(Some(Directory {
            largest,
            slots,
            max_probe,
        })))
    }

    /// The segment index and row of `id`'s live row, if it is in a segment
    /// the directory holds.
    #[inline]
    pub(crate) fn get(&self, k: Hashed) -> Option<(usize, usize)> {
        let id = k.id;
        let n = self.slots.len();
        let mut s = fastrange(k.h, n as u64) as usize;
        for _ in 0..=self.max_probe {
            let slot = self.slots[s];
            if slot.seg == EMPTY {
                return None;
            }
            if slot.id == id {
                return Some((slot.seg as usize, slot.row as usize));
            }
            s += 1;
            if s == n {
                s = 0;
            }
        }
        None
    }

    /// Address of the home slot of the id whose hash is `h` (to prefetch).
    #[inline]
    pub(crate) fn home_addr(&self, h: u64) -> *const u8 {
        &self.slots[fastrange(h, self.slots.len() as u64) as usize] as *const Slot as *const u8
    }

    /// Bytes of memory the table holds.
    pub(crate) fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }
}
