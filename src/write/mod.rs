//! Writing a store: [`writer::Writer`] (one per store, holding its lock)
//! builds snapshots in transactions and publishes each atomically, collects
//! garbage, and runs compaction ([`compaction`]) beside its publishes;
//! [`batch::ItemBatch`] is the rows a transaction adds. Uses every layer
//! below it (`read` to see the snapshot it builds on, `format` and `io` to
//! write files, `model` to validate bundles).

pub(crate) mod batch;
pub(crate) mod compaction;
pub(crate) mod gc;
pub(crate) mod publish;
pub(crate) mod rebase;
pub(crate) mod transaction;
pub(crate) mod writer;
