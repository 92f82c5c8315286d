//! Entry points for the cargo-fuzz targets in `fuzz/`. Not part of the
//! supported API: hidden from the docs and free to change.

use std::path::Path;

use crate::format::container::{
    check_frame, decode_meta, verify_chunks, Kind, FOOTER_LEN, HEADER_LEN,
};

/// Parses `bytes` as a file of `kind`; true if frame and metadata pass.
fn parse_one(bytes: &[u8], kind: Kind) -> bool {
    let path = Path::new("<fuzz input>");
    let Ok((offset, len, crc)) = check_frame(path, bytes, kind) else {
        return false;
    };
    let meta = &bytes[offset as usize..(offset + len) as usize];
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("frame checked"));
    match decode_meta(path, meta, crc, offset, kind, version) {
        Ok(m) => {
            let _ = verify_chunks(path, &bytes[..offset as usize], &m);
            true
        }
        Err(_) => false,
    }
}

fn parse_as_every_kind(bytes: &[u8]) -> usize {
    [
        Kind::Manifest,
        Kind::Columns,
        Kind::IdIndex,
        Kind::Deletes,
        Kind::Bundle,
    ]
    .into_iter()
    .filter(|&k| parse_one(bytes, k))
    .count()
}

/// Parses `bytes` as a whole file of one kind (`"manifest"`, `"columns"`,
/// `"id_index"`, `"deletes"`, `"bundle"`): framing, metadata checksum and
/// validation, data checksums, then again with the checksums fixed up. For
/// the per-kind fuzz targets. Returns how many parses accepted the file.
pub fn parse_kind(bytes: &[u8], kind: &str) -> usize {
    let kind = match kind {
        "manifest" => Kind::Manifest,
        "columns" => Kind::Columns,
        "id_index" => Kind::IdIndex,
        "deletes" => Kind::Deletes,
        _ => Kind::Bundle,
    };
    let fixed = fix_checksums(bytes);
    std::iter::once(bytes)
        .chain(fixed.as_deref())
        .filter(|b| parse_one(b, kind))
        .count()
}

/// Rewrites the footer's metadata and footer checksums to match the bytes,
/// so that fuzzed metadata reaches rkyv validation and the semantic checks
/// instead of stopping at a checksum. Returns `None` if the footer does not
/// place the metadata inside the file.
fn fix_checksums(bytes: &[u8]) -> Option<Vec<u8>> {
    let len = bytes.len();
    if (len as u64) < HEADER_LEN + FOOTER_LEN {
        return None;
    }
    let mut v = bytes.to_vec();
    let f = len - FOOTER_LEN as usize;
    let off = u64::from_le_bytes(v[f..f + 8].try_into().ok()?);
    let mlen = u64::from_le_bytes(v[f + 8..f + 16].try_into().ok()?);
    let end = off.checked_add(mlen)?;
    if off < HEADER_LEN || end > f as u64 {
        return None;
    }
    let crc = crc32fast::hash(&v[off as usize..end as usize]);
    v[f + 16..f + 20].copy_from_slice(&crc.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&v[..HEADER_LEN as usize]);
    h.update(&v[f..f + 28]);
    let fc = h.finalize();
    v[f + 28..f + 32].copy_from_slice(&fc.to_le_bytes());
    Some(v)
}

/// For the fuzz targets: `bytes` with the footer's
/// metadata and footer checksums rewritten to match.
pub fn fix_checksums_pub(bytes: &[u8]) -> Option<Vec<u8>> {
    fix_checksums(bytes)
}

/// Parses `bytes` as a whole file of each kind in turn (framing, metadata
/// checksum and validation, data checksums), then again with the checksums
/// fixed up. Must never panic, whatever the bytes; returns how many parses
/// accepted the frame and metadata.
pub fn parse_file(bytes: &[u8]) -> usize {
    let mut n = parse_as_every_kind(bytes);
    if let Some(fixed) = fix_checksums(bytes) {
        n += parse_as_every_kind(&fixed);
    }
    n
}

/// Re-encodes the metadata of `bytes` (a whole file of `kind` written by
/// this build) after `edit`, with fresh metadata and footer checksums.
fn reencode(
    bytes: &[u8],
    kind: Kind,
    edit: impl FnOnce(&mut crate::format::meta::FileMeta) -> bool,
) -> Option<Vec<u8>> {
    let path = Path::new("<test input>");
    let (off, len, crc) = check_frame(path, bytes, kind).ok()?;
    let mut meta = decode_meta(
        path,
        &bytes[off as usize..(off + len) as usize],
        crc,
        off,
        kind,
        crate::FORMAT_VERSION,
    )
    .ok()?;
    if !edit(&mut meta) {
        return None;
    }
    let mb = rkyv::to_bytes::<rkyv::rancor::BoxedError>(&meta).ok()?;
    let mut v = bytes[..off as usize].to_vec();
    v.extend_from_slice(&mb);
    v.resize(v.len().next_multiple_of(8), 0);
    let footer =
        crate::format::container::footer_bytes(kind, off, mb.len() as u64, crc32fast::hash(&mb));
    v.extend_from_slice(&footer);
    Some(v)
}

/// For tests: moves data block `index` (in the writer's order: see
/// `FORMAT.md`, "Data region") of the data file `name` in the store `dir`
/// by `shift` bytes, and makes everything consistent again the way a careful
/// forger would: the file's metadata is re-encoded with fresh checksums,
/// and every manifest referencing the file gets its new length and
/// metadata checksum (re-encoded likewise). The data bytes are untouched,
/// so every chunk checksum still matches. Returns the name of the field
/// moved, or `None` (and nothing is written) if the file has no such
/// block, the block would start before byte 64, or the file cannot be
/// parsed.
pub fn move_block(dir: &Path, name: &str, index: usize, shift: i64) -> Option<String> {
    let kind = match name.rsplit('.').next()? {
        "vcol" => Kind::Columns,
        "vidx" => Kind::IdIndex,
        "vdel" => Kind::Deletes,
        "vbnd" => Kind::Bundle,
        _ => return None,
    };
    let bytes = std::fs::read(dir.join(name)).ok()?;
    let mut what = None;
    let moved = reencode(&bytes, kind, |m| {
        what = m.body.blocks().get(index).map(|(w, _)| w.clone());
        match m.body.blocks_mut().into_iter().nth(index) {
            Some(e) => match e.offset.checked_add_signed(shift) {
                Some(o) if o >= HEADER_LEN => {
                    e.offset = o;
                    true
                }
                _ => false,
            },
            None => false,
        }
    })?;
    let (_, _, meta_crc) = check_frame(Path::new(name), &moved, kind).ok()?;
    let len = moved.len() as u64;
    std::fs::write(dir.join(name), &moved).ok()?;
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        let is_manifest = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(crate::format::names::parse_manifest)
            .is_some();
        if !is_manifest {
            continue;
        }
        let bytes = std::fs::read(&p).ok()?;
        let fixed = reencode(&bytes, Kind::Manifest, |m| {
            let crate::format::meta::Body::Manifest(mm) = &mut m.body else {
                return false;
            };
            let mut refs: Vec<&mut crate::format::meta::FileRef> = Vec::new();
            for s in &mut mm.segments {
                refs.extend([&mut s.id_index, &mut s.profile, &mut s.stats]);
                refs.extend(s.embeddings.iter_mut().map(|e| &mut e.file));
                refs.extend(s.deletes.as_mut());
            }
            for b in &mut mm.bundles {
                refs.extend(b.files.iter_mut());
            }
            let mut hit = false;
            for r in refs.into_iter().filter(|r| r.name == name) {
                r.len = len;
                r.meta_crc = meta_crc;
                hit = true;
            }
            hit
        });
        if let Some(fixed) = fixed {
            std::fs::write(&p, fixed).ok()?;
        }
    }
    what
}

/// For tests: in every manifest of the store `dir`, gives bundle `to` the
/// precomputed files of bundle `from` (bundle ids as the manifest records
/// them), re-encoding the manifest with fresh checksums as a careful
/// forger would. Returns how many manifests were changed.
pub fn forge_precomputed(dir: &Path, from: &str, to: &str) -> usize {
    let mut changed = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in entries.flatten() {
        let p = e.path();
        let is_manifest = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(crate::format::names::parse_manifest)
            .is_some();
        let Ok(bytes) = std::fs::read(&p) else {
            continue;
        };
        if !is_manifest {
            continue;
        }
        let fixed = reencode(&bytes, Kind::Manifest, |m| {
            let crate::format::meta::Body::Manifest(mm) = &mut m.body else {
                return false;
            };
            let Some(pre) = mm
                .bundles
                .iter()
                .find(|b| b.key == from)
                .map(|b| b.files[1..].to_vec())
            else {
                return false;
            };
            match mm.bundles.iter_mut().find(|b| b.key == to) {
                Some(b) if !pre.is_empty() => {
                    b.files.truncate(1);
                    b.files.extend(pre);
                    true
                }
                _ => false,
            }
        });
        if let Some(fixed) = fixed {
            if std::fs::write(&p, fixed).is_ok() {
                changed += 1;
            }
        }
    }
    changed
}

/// The schema the bundle fuzz target checks bundles against: the columns
/// of the parity test's reference data (`tests/data/three_tower`).
pub fn bundle_schema() -> crate::Schema {
    crate::Schema::new()
        .categorical("category", 0)
        .categorical("region", 1)
        .numeric("price", 2.5)
        .numeric("duration", 60.0)
        .stat("ctr_1d", 0.01)
        .stat("impressions_7d", 0.0)
        .embedding("prerank", "v1", 8, crate::Dtype::F32)
        .embedding("twotower", "v1", 16, crate::Dtype::F32)
}

/// Parses `data` as a bundle: a little-endian u32 length `n`, `n` bytes of
/// `model.json`, then `weights.safetensors`. Must never panic; a bundle that
/// validates is then run on a tiny store-less input check.
pub fn parse_bundle(data: &[u8]) -> bool {
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return false;
    };
    let n = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (json, weights) = rest.split_at(n);
    match crate::model::Bundle::load(json, weights, &bundle_schema()) {
        Ok(crate::model::Bundle::Model(m)) => {
            let _ = (m.key(), m.user_inputs(), m.macs_per_item(), m.describe());
            true
        }
        Ok(crate::model::Bundle::Tower(t)) => {
            // Run the tower over three rows of constant columns.
            let (f, u) = ([2.5f32, 0.0, 1e30], [0u32, 7, u32::MAX]);
            let cols = crate::model::TowerColumns::new(&t.tower, |_| Ok(&f[..]), |_| Ok(&u[..]));
            if let Ok(cols) = cols {
                let mut out = vec![0f32; 3 * t.tower.item_dim];
                let _ = t.tower.compute(&cols, 0, &mut out);
            }
            let _ = t.describe();
            true
        }
        Err(e) => {
            let _ = e.to_string();
            false
        }
    }
}

/// The seed layout of [`parse_bundle`] for a bundle's two files.
pub fn bundle_seed(json: &[u8], weights: &[u8]) -> Vec<u8> {
    let mut v = (json.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(json);
    v.extend_from_slice(weights);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_files_parse_and_mutations_do_not_panic() {
        let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("format/golden");
        let mut files = 0;
        let versions = crate::format::container::OLDEST_FORMAT_VERSION..=crate::FORMAT_VERSION;
        let stores = versions.clone().count();
        let dirs = versions.map(|v| golden.join(format!("v{v}")));
        for e in dirs.flat_map(|d| std::fs::read_dir(d).unwrap()) {
            let bytes = std::fs::read(e.unwrap().path()).unwrap();
            assert_eq!(parse_as_every_kind(&bytes), 1);
            // Every single-byte change inside the metadata, checksums fixed up.
            let f = bytes.len() - FOOTER_LEN as usize;
            let off = u64::from_le_bytes(bytes[f..f + 8].try_into().unwrap()) as usize;
            for i in off..f {
                let mut b = bytes.clone();
                b[i] ^= 0xA5;
                parse_file(&b);
            }
            files += 1;
        }
        // Every version's golden store (v1 has 18 files, later ones 19).
        assert!(
            files >= 18 * stores,
            "{files} files in {stores} golden stores"
        );
    }

    #[test]
    fn reference_bundles_parse_and_mutations_do_not_panic() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/three_tower");
        let weights = std::fs::read(dir.join("bundle_rank/weights.safetensors")).unwrap();
        for b in ["bundle_weighted_sum", "bundle_product", "bundle_rank"] {
            let json = std::fs::read(dir.join(b).join("model.json")).unwrap();
            let seed = bundle_seed(&json, &weights);
            assert!(parse_bundle(&seed), "{b}");
            // Truncations and byte flips across json and weights headers.
            for i in (0..seed.len()).step_by(7) {
                parse_bundle(&seed[..i]);
                let mut m = seed.clone();
                m[i] ^= 0x5A;
                parse_bundle(&m);
            }
        }
        // The contract v2 reference bundles (every v2 part, f16 and bf16
        // tensors) and the item-tower ones (a v2 bundle with item_tower, an
        // item-tower-only bundle): valid as given, never a panic when damaged.
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
        let mut v2 = 0;
        let dirs = ["three_tower_v2", "item_tower"].map(|d| data.join(d));
        for e in dirs.iter().flat_map(|d| std::fs::read_dir(d).unwrap()) {
            let b = e.unwrap().path();
            if !b.is_dir() {
                continue;
            }
            let json = std::fs::read(b.join("model.json")).unwrap();
            let weights = std::fs::read(b.join("weights.safetensors")).unwrap();
            let seed = bundle_seed(&json, &weights);
            assert!(parse_bundle(&seed), "{}", b.display());
            for i in (0..seed.len()).step_by(5) {
                parse_bundle(&seed[..i]);
                let mut m = seed.clone();
                m[i] ^= 0x5A;
                parse_bundle(&m);
            }
            v2 += 1;
        }
        assert_eq!(v2, 7, "the v2 and item-tower reference bundles");
    }

    #[test]
    fn metadata_length_near_u64_max_is_an_error() {
        let mut file = vec![0u8; 128];
        file[..8].copy_from_slice(&crate::format::container::MAGIC);
        file[8..12].copy_from_slice(&1u32.to_le_bytes());
        file[12..16].copy_from_slice(&1u32.to_le_bytes());
        let f = 128 - 40;
        file[f..f + 8].copy_from_slice(&64u64.to_le_bytes());
        file[f + 8..f + 16].copy_from_slice(&(u64::MAX - 66).to_le_bytes());
        file[f + 20..f + 24].copy_from_slice(&1u32.to_le_bytes());
        file[f + 24..f + 28].copy_from_slice(&1u32.to_le_bytes());
        file[f + 32..].copy_from_slice(&crate::format::container::MAGIC);
        let mut h = crc32fast::Hasher::new();
        h.update(&file[..64]);
        h.update(&file[f..f + 28]);
        let c = h.finalize();
        file[f + 28..f + 32].copy_from_slice(&c.to_le_bytes());
        let e = check_frame(Path::new("x"), &file, Kind::Manifest).unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}
