//! Streaming top-k selection in O(n): a buffer of at most `2k` entries is
//! cut back to the best `k` (`select_nth_unstable`) whenever it fills, and
//! entries worse than the k-th best seen so far are dropped on arrival.
//! Order: score descending, then id ascending (deterministic ties).

use std::cmp::Ordering;

/// `Less` means `a` ranks before (is better than) `b`.
#[inline]
pub(crate) fn rank(a: &(f32, u64, u32), b: &(f32, u64, u32)) -> Ordering {
    b.0.total_cmp(&a.0).then(a.1.cmp(&b.1))
}

/// Keeps the best `k` of the `(score, id, tag)` entries pushed (the tag is
/// carried along for the caller, e.g. where the item is).
#[derive(Debug, Default)]
pub(crate) struct TopK {
    k: usize,
    buf: Vec<(f32, u64, u32)>,
    /// The k-th best entry once the buffer has been cut at least once.
    worst: Option<(f32, u64, u32)>,
}

impl TopK {
    /// Starts a selection of `k` (> 0), reusing the buffer's allocation.
    pub(crate) fn reset(&mut self, k: usize) {
        self.k = k;
        self.buf.clear();
        self.worst = None;
    }

    fn cap(&self) -> usize {
        self.k.saturating_mul(2).max(64)
    }

    /// Offers one entry. NaN scores (only from damaged data) rank last.
    #[inline]
    pub(crate) fn push(&mut self, score: f32, id: u64, tag: u32) {
        let score = if score.is_nan() {
            f32::NEG_INFINITY
        } else {
            score
        };
        let e = (score, id, tag);
        if let Some(w) = &self.worst {
            if rank(&e, w) != Ordering::Less {
                return;
            }
        }
        self.buf.push(e);
        if self.buf.len() >= self.cap() {
            self.cut();
        }
    }

    fn cut(&mut self) {
        if self.buf.len() > self.k {
            self.buf.select_nth_unstable_by(self.k - 1, rank);
            self.buf.truncate(self.k);
            self.worst = Some(self.buf[self.k - 1]);
        }
    }

    /// The best `k` (or fewer), best first.
    pub(crate) fn finish(&mut self, out: &mut Vec<(f32, u64, u32)>) {
        self.cut();
        self.buf.sort_unstable_by(rank);
        out.clear();
        out.extend_from_slice(&self.buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_a_full_sort_with_ties() {
        let mut t = TopK::default();
        let mut out = Vec::new();
        for n in [0usize, 1, 5, 63, 64, 65, 500, 3000] {
            for k in [1usize, 2, 10, 100, 1000] {
                let items: Vec<(f32, u64, u32)> = (0..n as u64)
                    .map(|i| (((i * 7919) % 13) as f32, (i * 104_729) % 10_007, 0))
                    .collect();
                t.reset(k);
                for &(s, id, tag) in &items {
                    t.push(s, id, tag);
                }
                t.finish(&mut out);
                let mut want = items.clone();
                want.sort_by(rank);
                want.truncate(k);
                assert_eq!(out, want, "n={n} k={k}");
            }
        }
    }

    #[test]
    fn a_huge_k_keeps_everything() {
        let mut t = TopK::default();
        t.reset(usize::MAX);
        for i in 0..1000u64 {
            t.push((i % 7) as f32, i, 0);
        }
        let mut out = Vec::new();
        t.finish(&mut out);
        assert_eq!(out.len(), 1000);
    }
}
