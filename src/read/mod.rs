//! Reading a store: [`store::Store`] lists manifests and pins
//! [`snapshot::Snapshot`]s, each mapping every file it needs when pinned;
//! a snapshot's rows live in [`segment::Segment`]s, read through the
//! column views of [`columns`]; [`directory`] is the in-memory id
//! directory of a snapshot of several segments; [`prefault`] faults in
//! the pages queries read, in the background, after a snapshot is
//! pinned; [`pins`] records which
//! snapshots this process holds, for the writer's GC. Uses `format` and
//! `io`, and `model` to load bundles.

pub(crate) mod columns;
pub(crate) mod directory;
pub(crate) mod pins;
pub(crate) mod prefault;
pub(crate) mod segment;
pub(crate) mod snapshot;
pub(crate) mod store;
