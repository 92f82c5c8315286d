//! What a three-tower query passes besides the user vector: the
//! `user_dense` vectors and `user_by_item` maps a model's cross tower reads.

use std::collections::HashMap;

/// The user-side inputs of a three-tower query: `user_dense` vectors and
/// `user_by_item` maps, by the names `model.json` gives them.
///
/// ```
/// let inputs = vstore::UserInputs::new()
///     .dense("user_stats", vec![0.1; 8])
///     .by_item("user_category_ctr", [(3u32, vec![0.02]), (7, vec![0.05])]);
/// assert_eq!(inputs.names().count(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct UserInputs {
    pub(crate) dense: HashMap<String, Vec<f32>>,
    pub(crate) by_item: HashMap<String, ByItem>,
}

/// One `user_by_item` map, laid out for the per-candidate look-up: entries
/// sorted by key (the last value given for a key wins, as in a map), and,
/// when the keys are small integers (as category codes usually are), a
/// table from key to entry, so that a look-up is one index instead of a
/// hash (docs/PERF.md).
#[derive(Debug, Clone, Default)]
pub(crate) struct ByItem {
    entries: Vec<(u32, Vec<f32>)>,
    /// `direct[key]` = entry index + 1, or 0 if absent; empty if the keys
    /// are too sparse for it (then look-ups search `entries`).
    direct: Vec<u32>,
}

impl ByItem {
    fn new(entries: impl IntoIterator<Item = (u32, Vec<f32>)>) -> ByItem {
        let mut entries: Vec<(u32, Vec<f32>)> = entries.into_iter().collect();
        // Stable, so equal keys keep their order; keep the last of each.
        entries.sort_by_key(|e| e.0);
        let mut kept: Vec<(u32, Vec<f32>)> = Vec::with_capacity(entries.len());
        for e in entries {
            match kept.last_mut() {
                Some(last) if last.0 == e.0 => *last = e,
                _ => kept.push(e),
            }
        }
        let span = kept.last().map_or(0, |e| e.0 as usize + 1);
        let direct = if span <= 8 * kept.len() + 1024 {
            let mut d = vec![0u32; span];
            for (i, e) in kept.iter().enumerate() {
                d[e.0 as usize] = i as u32 + 1;
            }
            d
        } else {
            Vec::new()
        };
        ByItem {
            entries: kept,
            direct,
        }
    }

    /// The vector for `key`, if the map has one.
    #[inline]
    pub(crate) fn get(&self, key: u32) -> Option<&[f32]> {
        let i = if self.direct.is_empty() {
            self.entries.binary_search_by_key(&key, |e| e.0).ok()?
        } else {
            (*self.direct.get(key as usize)? as usize).checked_sub(1)?
        };
        Some(&self.entries[i].1)
    }

    /// Every entry, by ascending key.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, &[f32])> {
        self.entries.iter().map(|(k, v)| (*k, &v[..]))
    }
}

impl UserInputs {
    /// No inputs (for a model whose cross tower reads item columns only).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the `user_dense` input `name`.
    pub fn dense(mut self, name: &str, values: Vec<f32>) -> Self {
        self.dense.insert(name.to_string(), values);
        self
    }

    /// Sets the `user_by_item` input `name`: a vector per value of the
    /// input's categorical column (absent values take the bundle's default).
    pub fn by_item(
        mut self,
        name: &str,
        entries: impl IntoIterator<Item = (u32, Vec<f32>)>,
    ) -> Self {
        self.by_item.insert(name.to_string(), ByItem::new(entries));
        self
    }

    /// Names of every input set.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.dense
            .keys()
            .chain(self.by_item.keys())
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::ByItem;

    #[test]
    fn by_item_lookups_agree_with_a_map_for_dense_and_sparse_keys() {
        // Small keys (a direct table), keys far apart (searched), and
        // repeated keys (the last value wins, as when collecting a map).
        let dense: Vec<(u32, Vec<f32>)> = (0..300u32)
            .filter(|k| k % 3 != 1)
            .map(|k| (k, vec![k as f32, 1.0]))
            .chain([(5, vec![-5.0, 2.0])])
            .collect();
        let sparse: Vec<(u32, Vec<f32>)> = (0..50u32)
            .map(|k| (k * 1_000_003 % 4_000_000_000, vec![k as f32]))
            .chain([(u32::MAX, vec![9.0]), (0, vec![-1.0])])
            .collect();
        for entries in [dense, sparse] {
            let m = ByItem::new(entries.clone());
            let want: std::collections::HashMap<u32, Vec<f32>> = entries.into_iter().collect();
            assert_eq!(m.iter().count(), want.len());
            for (k, v) in &want {
                assert_eq!(m.get(*k), Some(&v[..]), "key {k}");
            }
            for k in [1u32, 4, 298, 299, 300, 301, 10_000, 1_000_004, u32::MAX - 1] {
                assert_eq!(m.get(k), want.get(&k).map(|v| &v[..]), "key {k}");
            }
            let keys: Vec<u32> = m.iter().map(|e| e.0).collect();
            assert!(
                keys.windows(2).all(|w| w[0] < w[1]),
                "entries by ascending key"
            );
        }
        assert!(!ByItem::new([(3u32, vec![1.0])]).direct.is_empty());
        assert!(ByItem::new([(3_000_000u32, vec![1.0])]).direct.is_empty());
        assert_eq!(ByItem::new([]).get(0), None);
    }
}
