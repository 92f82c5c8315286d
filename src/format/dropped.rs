//! The embedding versions dropped earlier in a store's history, so that a
//! version string is not given to other vectors later: a user vector of
//! the dropped model would be scored against them without an error (the
//! version-skew check is by name). Kept in the library's user metadata key
//! [`DROPPED_VERSIONS_KEY`], carried from snapshot to snapshot like any
//! other entry. (Here, below `read` and `write`, as both read it.)

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::format::meta::ManifestMeta;

/// User metadata key holding the embedding versions dropped earlier in the
/// store's history: a JSON object, `space@version` → the snapshot whose
/// transaction dropped it. Written by the library (`drop_embedding`), read
/// by `add_embedding`, which refuses a version named in it unless the
/// transaction forgot it first ([`crate::Transaction::forget_dropped_version`]).
pub const DROPPED_VERSIONS_KEY: &str = "vstore.dropped_versions";

/// Reads the value of [`DROPPED_VERSIONS_KEY`] of snapshot `snapshot`
/// (`None`: no version dropped); an error names the snapshot.
pub(crate) fn parse(value: Option<&str>, snapshot: u64) -> Result<BTreeMap<String, u64>> {
    parse_record(DROPPED_VERSIONS_KEY, value, snapshot)
}

/// Reads a record the library keeps under user metadata `key` of snapshot
/// `snapshot`: a JSON object, name -> snapshot number (`None`: empty); an
/// error names the snapshot and the key.
pub(crate) fn parse_record(
    key: &str,
    value: Option<&str>,
    snapshot: u64,
) -> Result<BTreeMap<String, u64>> {
    let Some(value) = value else {
        return Ok(BTreeMap::new());
    };
    serde_json::from_str(value).map_err(|e| {
        Error::InvalidInput(format!(
            "snapshot {snapshot}: user metadata {key} is not a JSON object of name -> snapshot \
             number ({e}); vstore writes it so, and refuses the key to set_metadata: the \
             manifest was written by other software"
        ))
    })
}

/// The record of dropped versions of manifest `m`.
pub(crate) fn of_manifest(m: &ManifestMeta) -> Result<BTreeMap<String, u64>> {
    record_of(m, DROPPED_VERSIONS_KEY)
}

/// The record manifest `m` keeps under user metadata `key` (see
/// [`parse_record`]).
pub(crate) fn record_of(m: &ManifestMeta, key: &str) -> Result<BTreeMap<String, u64>> {
    let value = m.user_meta.iter().find(|kv| kv.key == key);
    parse_record(key, value.map(|kv| kv.value.as_str()), m.snapshot)
}

/// The value of a record (as [`DROPPED_VERSIONS_KEY`]'s) for `dropped`, or
/// `None` when it is empty (the key is then left out).
pub(crate) fn encode(dropped: &BTreeMap<String, u64>) -> Option<String> {
    if dropped.is_empty() {
        None
    } else {
        Some(serde_json::to_string(dropped).expect("a map of strings to integers serializes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bad_values() {
        let mut m = BTreeMap::new();
        assert_eq!(encode(&m), None);
        assert!(parse(None, 1).unwrap().is_empty());
        m.insert("prerank@v3".to_string(), 7);
        let s = encode(&m).unwrap();
        assert_eq!(s, r#"{"prerank@v3":7}"#);
        assert_eq!(parse(Some(&s), 1).unwrap(), m);
        let e = parse(Some("[1]"), 4).unwrap_err().to_string();
        assert!(
            e.contains(DROPPED_VERSIONS_KEY) && e.contains("snapshot 4: "),
            "{e}"
        );
    }
}
