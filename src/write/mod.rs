//! Writing a store: [`writer::Writer`] (one per store, holding its lock)
//! builds snapshots in [`transaction::Transaction`]s and publishes each
//! atomically ([`publish`]), collects garbage ([`gc`]), and runs compaction
//! ([`compaction`]) beside its publishes; [`batch::ItemBatch`] is the rows a
//! transaction adds. A transaction's operations are split by what they
//! change: [`items`] (items, statistics, deletes), [`embeddings`]
//! (embedding versions), [`models`] (model bundles), [`towers`]
//! (vectors computed with an item tower), [`rebase`]
//! (compaction inside a transaction). Uses every layer below it (`read` to
//! see the snapshot it builds on, `format` and `io` to write files, `model`
//! to validate bundles).

pub(crate) mod batch;
pub(crate) mod compaction;
pub(crate) mod embeddings;
pub(crate) mod gc;
pub(crate) mod items;
pub(crate) mod job;
pub(crate) mod models;
pub(crate) mod publish;
pub(crate) mod rebase;
pub(crate) mod restore;
pub(crate) mod towers;
pub(crate) mod transaction;
pub(crate) mod writer;
