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
    /// `finish`'s sort keys (kept for the allocation).
    keys: Vec<u64>,
}

impl TopK {
    /// How many the selection keeps.
    pub(crate) fn k(&self) -> usize {
        self.k
    }

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

    /// Offers every `(scores[j], ids[j], j)`. With many more entries than
    /// `k`, a threshold is first estimated from a sample of the scores, a
    /// little below the k-th best so that more than `k` entries reach it,
    /// and only those are offered: entries below it cannot be among the
    /// best `k`, since at least `k` others score higher. If fewer than `k`
    /// reach it (an unlucky sample), everything is offered.
    pub(crate) fn push_all(&mut self, scores: &[f32], ids: &[u64], sample: &mut Vec<f32>) {
        debug_assert_eq!(scores.len(), ids.len());
        if let Some(t) = threshold(scores, self.k, sample) {
            let start = self.buf.len();
            // Positions reaching `t`: a bit mask per 16 scores (compares
            // the compiler vectorizes), then its set bits, so that no
            // branch is taken per score. NaN ranks as -inf (as `push` has it).
            let nan_reaches = t == f32::NEG_INFINITY;
            let reaches = |sc: f32| (sc >= t) | (nan_reaches & sc.is_nan());
            let mut reached = 0;
            for (c, chunk) in scores.chunks(16).enumerate() {
                let mut m = chunk
                    .iter()
                    .enumerate()
                    .fold(0u32, |m, (i, &sc)| m | (reaches(sc) as u32) << i);
                while m != 0 {
                    let j = c * 16 + m.trailing_zeros() as usize;
                    m &= m - 1;
                    reached += 1;
                    self.push(scores[j], ids[j], j as u32);
                }
            }
            if reached >= self.k {
                return;
            }
            self.buf.truncate(start);
            self.worst = None;
        }
        for (j, (&sc, &id)) in scores.iter().zip(ids).enumerate() {
            self.push(sc, id, j as u32);
        }
    }

    /// The best `k` (or fewer), best first.
    pub(crate) fn finish(&mut self, out: &mut Vec<(f32, u64, u32)>) {
        self.cut();
        if u32::try_from(self.buf.len()).is_err() {
            self.buf.sort_unstable_by(rank);
            out.clear();
            out.extend_from_slice(&self.buf);
            return;
        }
        // Sort by score with integer keys (the score's total-order bits,
        // inverted for descending, above the entry's position), then put
        // each run of equal scores in id order.
        let mut keys = std::mem::take(&mut self.keys);
        keys.clear();
        keys.extend(self.buf.iter().enumerate().map(|(i, e)| {
            let b = e.0.to_bits();
            let asc = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
            ((!asc as u64) << 32) | i as u64
        }));
        keys.sort_unstable();
        out.clear();
        out.extend(keys.iter().map(|&key| self.buf[key as u32 as usize]));
        let mut i = 0;
        while i < out.len() {
            let mut j = i + 1;
            while j < out.len() && keys[j] >> 32 == keys[i] >> 32 {
                j += 1;
            }
            if j - i > 1 {
                out[i..j].sort_unstable_by_key(|e| e.1);
            }
            i = j;
        }
        self.keys = keys;
    }
}

/// Sampled scores per threshold estimate.
const SAMPLE: usize = 256;

/// A score a little below the k-th best of `scores`, estimated from an
/// evenly spaced sample; `None` when `scores` is not much larger than `k`
/// (the sample would not help). NaN ranks last.
fn threshold(scores: &[f32], k: usize, sample: &mut Vec<f32>) -> Option<f32> {
    let n = scores.len();
    if n < 4 * SAMPLE || k.saturating_mul(4) > n {
        return None;
    }
    // The k-th best sits near sample rank k·m/n; go two standard
    // deviations (of a binomial count) further down.
    let expect = k as f64 * SAMPLE as f64 / n as f64;
    let rank = (expect + 2.0 * expect.sqrt() + 1.0).ceil() as usize;
    if rank >= SAMPLE {
        return None;
    }
    sample.clear();
    let step = n / SAMPLE;
    sample.extend((0..SAMPLE).map(|i| {
        let s = scores[i * step];
        if s.is_nan() {
            f32::NEG_INFINITY
        } else {
            s
        }
    }));
    let (_, t, _) = sample.select_nth_unstable_by(rank, |a, b| b.total_cmp(a));
    Some(*t)
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
    fn push_all_matches_a_full_sort() {
        let mut t = TopK::default();
        let mut out = Vec::new();
        let mut sample = Vec::new();
        for n in [100usize, 1023, 1024, 5000, 20_000] {
            for k in [1usize, 10, 100, 500, 5000] {
                for salt in 0..4u64 {
                    // Few distinct values (ties at the cut), a sorted run,
                    // NaN, and high scores exactly at the sampled positions
                    // (a sample that overestimates the threshold).
                    let step = (n / SAMPLE).max(1) as u64;
                    let scores: Vec<f32> = (0..n as u64)
                        .map(|i| match salt {
                            0 => ((i * 7919) % 13) as f32,
                            1 => i as f32 / n as f32,
                            3 if i % step == 0 => 1000.0 + i as f32,
                            3 => (i % 50) as f32,
                            _ if i % 97 == 5 => f32::NAN,
                            _ => ((i * 104_729) % 10_007) as f32,
                        })
                        .collect();
                    let ids: Vec<u64> = (0..n as u64).map(|i| (i * 31) % 100_003).collect();
                    t.reset(k);
                    t.push_all(&scores, &ids, &mut sample);
                    t.finish(&mut out);
                    let mut want: Vec<(f32, u64, u32)> = scores
                        .iter()
                        .zip(&ids)
                        .enumerate()
                        .map(|(j, (&s, &id))| {
                            (if s.is_nan() { f32::NEG_INFINITY } else { s }, id, j as u32)
                        })
                        .collect();
                    want.sort_by(rank);
                    want.truncate(k);
                    assert_eq!(out, want, "n={n} k={k} salt={salt}");
                }
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
