//! The bucket compare of the id index and the id directory: which of a
//! four-slot bucket's `[id, entry]` slots settles a lookup (holds the id,
//! or is empty: its entry word is the table's empty marker). On x86-64 one SSE2
//! compare per slot (SSE2 is part of every x86-64 CPU, so nothing to
//! detect); elsewhere the same answer slot by slot.

/// The first slot of `bucket` (four `[id, entry]` slots) that holds `id`
/// or is empty (`entry == empty`), if any.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) fn first_stop(bucket: &[[u64; 2]; 4], id: u64, empty: u64) -> Option<usize> {
    use std::arch::x86_64::*;
    let s: [__m128i; 4] = bytemuck::cast(*bucket);
    // SAFETY: these intrinsics need SSE2 only, which every x86-64 CPU has
    // (it is in the target's baseline); they read no memory.
    let m = unsafe {
        // Each slot's four 32-bit lanes against [id low, id high, empty
        // low, empty high].
        let p = _mm_set_epi64x(empty as i64, id as i64);
        let packed = _mm_packs_epi16(
            _mm_packs_epi32(_mm_cmpeq_epi32(s[0], p), _mm_cmpeq_epi32(s[1], p)),
            _mm_packs_epi32(_mm_cmpeq_epi32(s[2], p), _mm_cmpeq_epi32(s[3], p)),
        );
        // Bits 4j..4j + 3: slot j's id low, id high, entry low, entry high
        // matched.
        _mm_movemask_epi8(packed) as u32
    };
    // Bit 4j: the id matches; bit 4j + 2: the slot is empty.
    let stops = m & (m >> 1) & 0x5555;
    (stops != 0).then(|| stops.trailing_zeros() as usize / 4)
}

/// The first slot of `bucket` (four `[id, entry]` slots) that holds `id`
/// or is empty (`entry == empty`), if any.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
pub(crate) fn first_stop(bucket: &[[u64; 2]; 4], id: u64, empty: u64) -> Option<usize> {
    portable_first_stop(bucket, id, empty)
}

/// [`first_stop`] slot by slot, without branches.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn portable_first_stop(bucket: &[[u64; 2]; 4], id: u64, empty: u64) -> Option<usize> {
    let mut stops = 0u32;
    for (j, &[sid, entry]) in bucket.iter().enumerate() {
        stops |= ((sid == id) as u32 | (entry == empty) as u32) << j;
    }
    (stops != 0).then(|| stops.trailing_zeros() as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A slot drawn from ids that collide in either 32-bit half with `id`
    /// (the halves are compared apart) and entries that equal `empty` in
    /// either half, wholly, or not at all.
    fn slot(id: u64, empty: u64) -> impl Strategy<Value = [u64; 2]> {
        let near = prop_oneof![
            Just(id),
            Just(id ^ 1),
            Just(id ^ (1 << 40)),
            Just(id & 0xFFFF_FFFF),
            Just(id & !0xFFFF_FFFF),
            Just(0u64),
            any::<u64>(),
        ];
        let entry = prop_oneof![
            Just(empty),
            Just(empty ^ 1),
            Just(empty ^ (1 << 33)),
            Just(1u64),
            any::<u64>(),
        ];
        (near, entry).prop_map(|(s, e)| [s, e])
    }

    proptest! {
        #[test]
        fn matches_the_slot_by_slot_compare(
            (id, empty, bucket) in (any::<u64>(), prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()])
                .prop_flat_map(|(id, empty)| {
                    (Just(id), Just(empty), [slot(id, empty), slot(id, empty), slot(id, empty), slot(id, empty)])
                })
        ) {
            prop_assert_eq!(
                first_stop(&bucket, id, empty),
                portable_first_stop(&bucket, id, empty)
            );
        }
    }

    #[test]
    fn finds_the_id_or_the_first_empty_slot() {
        // The id index's layout: [id, row + 1], empty entry 0.
        let b = [[7, 3], [9, 1], [0, 0], [0, 0]];
        assert_eq!(first_stop(&b, 9, 0), Some(1));
        assert_eq!(first_stop(&b, 7, 0), Some(0));
        assert_eq!(first_stop(&b, 8, 0), Some(2));
        // An id 0 stops at the first empty slot (which reads as id 0).
        assert_eq!(first_stop(&b, 0, 0), Some(2));
        let full = [[1, 1], [2, 2], [3, 3], [1 << 32 | 4, 4]];
        assert_eq!(first_stop(&full, 4, 0), None);
        assert_eq!(first_stop(&full, 1 << 32 | 4, 0), Some(3));
        // A row of 2^32 (low half 0) is not empty.
        let high = [[5, 1 << 32], [6, 0], [0, 0], [0, 0]];
        assert_eq!(first_stop(&high, 6, 0), Some(1));
        assert_eq!(first_stop(&high, 8, 0), Some(1));
        // The directory's layout: empty entry all ones; an entry with one
        // half all ones (segment or row u32::MAX) is not empty.
        let e = u64::MAX;
        let d = [[3, 0xFFFF_FFFF], [4, e << 32], [0, e], [0, e]];
        assert_eq!(first_stop(&d, 4, e), Some(1));
        assert_eq!(first_stop(&d, 5, e), Some(2));
        assert_eq!(first_stop(&d, 0, e), Some(2));
    }
}
