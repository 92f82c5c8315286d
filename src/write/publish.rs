//! Publishing a manifest (steps 2-5 of the protocol in
//! `format/FORMAT.md`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::format::container::{ContainerWriter, Kind};
use crate::format::meta::{Body, ManifestMeta};
use crate::format::names;
use crate::io::fs::Fs;

pub(crate) fn sync_dir(fs: &dyn Fs, dir: &Path) -> Result<()> {
    fs.sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", dir, e))
}

/// Publishes `manifest` as snapshot `number` (steps 2-5 of the protocol in
/// `format/FORMAT.md`). An error before the rename removes the temporary
/// manifest and comes back as `(error, false)`: the manifest never had its
/// name. One after the rename is `(error, true)`: the snapshot may be
/// durable, and its files must stay.
pub(super) fn publish(
    fs: &dyn Fs,
    dir: &Path,
    number: u64,
    manifest: ManifestMeta,
) -> std::result::Result<(), (Error, bool)> {
    let final_name = names::manifest(number);
    let tmp = dir.join(format!("{final_name}{}", names::TMP_SUFFIX));
    let dst = dir.join(&final_name);
    let mut created = false;
    let before_rename = (|| {
        sync_dir(fs, dir)?;
        let w = ContainerWriter::create(fs, &tmp, Kind::Manifest)?;
        created = true;
        w.finish(Body::Manifest(manifest))?;
        fs.rename(&tmp, &dst).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Conflict {
                    path: dir.to_path_buf(),
                    what: format!(
                        "{final_name} exists already: another writer published snapshot \
                         {number} (publishing never replaces a manifest); reopen the writer \
                         and build on the newest snapshot"
                    ),
                }
            } else {
                Error::io("rename", &tmp, e)
            }
        })
    })();
    if let Err(e) = before_rename {
        if created {
            let _ = fs.remove(&tmp);
        }
        return Err((e, false));
    }
    sync_dir(fs, dir).map_err(|e| (e, true))
}
