//! What a three-tower query passes besides the user vector: the
//! `user_dense` vectors and `user_by_item` maps a model's cross tower reads.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::{Error, Result};

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

    /// Parses inputs given as JSON: `{"dense": {name: [numbers]},
    /// "by_item": {name: {"<category code>": [numbers]}}}` (either part may
    /// be left out). Parsed strictly: a key given twice, a category code
    /// not written in plain decimal (`"01"` and `"+1"` would both be code
    /// 1), a name used as both kinds, an unknown key, or a number that is
    /// not finite in float32 is [`crate::Error::InvalidInput`] naming the
    /// field (`by_item.user_category_ctr.7[2]: ...`).
    ///
    /// ```
    /// let inputs = vstore::UserInputs::from_json(
    ///     br#"{"dense": {"user_stats": [0.1, 0.2]}, "by_item": {"ctr": {"3": [0.02]}}}"#,
    /// )?;
    /// assert_eq!(inputs.names().count(), 2);
    /// assert!(vstore::UserInputs::from_json(br#"{"by_item": {"ctr": {"03": [1]}}}"#).is_err());
    /// # Ok::<(), vstore::Error>(())
    /// ```
    pub fn from_json(json: &[u8]) -> Result<UserInputs> {
        let bad = |field: String, what: &str| Error::InvalidInput(format!("{field}: {what}"));
        let v = super::json::parse(json, "", "").map_err(|e| match e {
            // Not JSON at all: no field to name.
            Error::Bundle { field, what } if field.is_empty() => {
                Error::InvalidInput(what.trim_start_matches("is ").to_string())
            }
            Error::Bundle { field, what } => bad(field, &what),
            other => other,
        })?;
        let Value::Object(top) = v else {
            return Err(bad(
                "inputs".into(),
                "expected a JSON object with \"dense\" and/or \"by_item\"",
            ));
        };
        let floats = |field: &str, v: &Value| -> Result<Vec<f32>> {
            let a = v
                .as_array()
                .ok_or_else(|| bad(field.into(), "expected an array of numbers"))?;
            (a.iter().enumerate())
                .map(|(i, x)| match x.as_f64() {
                    Some(f) if (f as f32).is_finite() => Ok(f as f32),
                    Some(f) => Err(bad(
                        format!("{field}[{i}]"),
                        &format!("{f} does not fit in float32"),
                    )),
                    None => Err(bad(
                        format!("{field}[{i}]"),
                        &format!("{x} is not a number"),
                    )),
                })
                .collect()
        };
        let mut inputs = UserInputs::new();
        for (k, val) in &top {
            let Some(m) = val.as_object() else {
                return Err(bad(k.clone(), "expected an object of input name -> value"));
            };
            match k.as_str() {
                "dense" => {
                    for (name, arr) in m {
                        let field = format!("dense.{name}");
                        inputs = inputs.dense(name, floats(&field, arr)?);
                    }
                }
                "by_item" => {
                    for (name, map) in m {
                        let field = format!("by_item.{name}");
                        let entries = map.as_object().ok_or_else(|| {
                            bad(
                                field.clone(),
                                "expected an object of category code -> array",
                            )
                        })?;
                        let mut e = Vec::with_capacity(entries.len());
                        for (code, arr) in entries {
                            let c = code.parse::<u32>().ok().filter(|c| c.to_string() == *code);
                            let Some(c) = c else {
                                return Err(bad(
                                    format!("{field}.{code}"),
                                    "is not a category code written in decimal (0 to 4294967295, \
                                     no sign or leading zeros)",
                                ));
                            };
                            e.push((c, floats(&format!("{field}.{code}"), arr)?));
                        }
                        inputs = inputs.by_item(name, e);
                    }
                }
                other => {
                    return Err(bad(
                        other.to_string(),
                        "unknown key (expected \"dense\" and/or \"by_item\")",
                    ))
                }
            }
        }
        if let Some(name) = inputs
            .by_item
            .keys()
            .find(|n| inputs.dense.contains_key(*n))
        {
            return Err(bad(
                format!("by_item.{name}"),
                "is also a dense input (a name is one or the other)",
            ));
        }
        Ok(inputs)
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
