//! One module per subcommand.

pub mod build;
pub mod demo;
pub mod diff;
pub mod embeddings;
pub mod gc;
pub mod inspect;
pub mod items;
pub mod model;
pub mod query;
pub mod recover;
pub mod restore;
pub mod stats;
pub mod verify;

/// Commits `tx` and records the snapshot it published, so that an error
/// after it (its report not written, say) tells the caller the change
/// landed ([`crate::report::landed`]).
pub fn commit(tx: vstore::Transaction<'_>) -> vstore::Result<std::sync::Arc<vstore::Snapshot>> {
    let snap = tx.commit()?;
    crate::report::note_landed(&snap);
    Ok(snap)
}

/// Opens the store at `path` read-only, telling standard error when a
/// damaged manifest made it fall back to an older snapshot (the fallback
/// is never silent). Without a background prefault: a command reads only
/// the pages it needs, and exits.
pub fn open_store(path: &std::path::Path) -> vstore::Result<vstore::Store> {
    open_store_with(path, one_shot())
}

/// How the tool's commands open a store: they read what they need and
/// exit, so no background prefault.
pub fn one_shot() -> vstore::OpenOptions {
    vstore::OpenOptions::new().prefault(vstore::Prefault::Off)
}

/// [`open_store`] with explicit options.
pub fn open_store_with(
    path: &std::path::Path,
    opts: vstore::OpenOptions,
) -> vstore::Result<vstore::Store> {
    let store = vstore::Store::open_with(path, opts)?;
    for (m, why) in store.skipped_manifests() {
        crate::note!(
            "warning: {m} is damaged and was skipped; reading the older snapshot {} instead ({why})",
            store.snapshot().number()
        );
    }
    Ok(store)
}
