//! File names inside a store directory. Readers only ever need
//! [`manifest`]/[`parse_manifest`]: data files are found through the names a
//! manifest lists, so their naming scheme is the writer's business (it makes
//! names unique by embedding the snapshot number being built).

/// Name of the lock file a writer holds.
pub(crate) const LOCK: &str = "LOCK";
const MANIFEST_PREFIX: &str = "MANIFEST-";
/// Suffix of a file being written (never referenced; removed by GC).
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// `MANIFEST-{snapshot:020}`.
pub(crate) fn manifest(snapshot: u64) -> String {
    format!("{MANIFEST_PREFIX}{snapshot:020}")
}

/// The snapshot number of a manifest file name (exact form only).
pub(crate) fn parse_manifest(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(MANIFEST_PREFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Suffix a damaged manifest gets when it is set aside
/// (`Writer::set_aside_damaged_manifests`): a name of another form, so
/// readers and garbage collection ignore it.
pub(crate) const DAMAGED_SUFFIX: &str = ".damaged";

/// The snapshot number of a set-aside manifest (`MANIFEST-{n}.damaged`).
pub(crate) fn parse_damaged(name: &str) -> Option<u64> {
    parse_manifest(name.strip_suffix(DAMAGED_SUFFIX)?)
}

/// `s{snapshot:010}-g{segment}-{group}.{ext}`.
pub(crate) fn data_file(snapshot: u64, segment: u64, group: &str, ext: &str) -> String {
    format!("s{snapshot:010}-g{segment}-{group}.{ext}")
}

/// Whether `name` is a data file written by a vstore writer, and the snapshot
/// it was written for.
pub(crate) fn parse_data_file(name: &str) -> Option<u64> {
    let rest = name.strip_prefix('s')?;
    let (num, rest) = rest.split_once('-')?;
    if !rest.starts_with('g') || !num.bytes().all(|b| b.is_ascii_digit()) || num.is_empty() {
        return None;
    }
    let ext_ok = [".vcol", ".vidx", ".vdel", ".vbnd"]
        .iter()
        .any(|e| rest.ends_with(e));
    if !ext_ok {
        return None;
    }
    num.parse().ok()
}

/// The snapshot number a temporary file (`<name>.tmp`) was written for.
pub(crate) fn parse_tmp(name: &str) -> Option<u64> {
    let base = name.strip_suffix(TMP_SUFFIX)?;
    parse_manifest(base).or_else(|| parse_data_file(base))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(parse_manifest(&manifest(42)), Some(42));
        assert_eq!(parse_manifest("MANIFEST-42"), None);
        assert_eq!(parse_manifest("MANIFEST-0000000000000000004x"), None);
        let d = data_file(7, 3, "emb-prerank@v42", "vcol");
        assert_eq!(d, "s0000000007-g3-emb-prerank@v42.vcol");
        assert_eq!(parse_data_file(&d), Some(7));
        assert_eq!(parse_data_file("s12-g1-ids.txt"), None);
        assert_eq!(parse_tmp(&format!("{}.tmp", manifest(9))), Some(9));
        assert_eq!(parse_damaged(&format!("{}.damaged", manifest(9))), Some(9));
        assert_eq!(parse_damaged(&manifest(9)), None);
    }
}
