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

/// Opens the store at `path` read-only, telling standard error when a
/// damaged manifest made it fall back to an older snapshot (the fallback
/// is never silent).
pub fn open_store(path: &std::path::Path) -> vstore::Result<vstore::Store> {
    let store = vstore::Store::open(path)?;
    for (m, why) in store.skipped_manifests() {
        eprintln!(
            "warning: {m} is damaged and was skipped; reading the older snapshot {} instead ({why})",
            store.snapshot().number()
        );
    }
    Ok(store)
}
