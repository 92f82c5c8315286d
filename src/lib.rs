//! vstore: an embedded, memory-mapped, versioned columnar store for the
//! pre-rank stage of recommender systems.
//!
//! A store is a directory of immutable files. A single [`Writer`] builds
//! numbered snapshots in [`Transaction`]s and publishes each atomically;
//! readers open the store with [`Store`], pin a [`Snapshot`] (an `Arc`, cheap)
//! and read embeddings and columns in place from the memory maps. Every
//! embedding column is tagged `space@version`; asking a snapshot for a
//! version it does not hold is [`Error::VersionSkew`], never a fallback.
//!
//! The byte-level format is specified in `format/FORMAT.md`.
//!
//! See [`Store`] for an example.

#[cfg(target_endian = "big")]
compile_error!("vstore's on-disk format is little-endian and it supports little-endian hosts only");

mod batch;
mod compaction;
mod container;
mod directory;
mod encode;
pub mod error;
mod extents;
mod filter;
pub mod fs;
#[doc(hidden)]
pub mod fuzzing;
mod idindex;
pub mod kernels;
mod meta;
mod mmap;
mod model;
mod names;
mod pins;
mod query;
pub mod schema;
mod segment;
mod snapshot;
mod store;
mod topk;
mod writer;

pub use batch::ItemBatch;
pub use compaction::{CompactedSegment, CompactionJob};
pub use container::{FORMAT_VERSION, OLDEST_FORMAT_VERSION};
pub use error::{Error, Result};
pub use filter::Filter;
pub use fs::{Fs, FsFile, StdFs};
pub use model::{Activation, Model, UserInputSpec, UserInputs, BUNDLE_FORMAT};
#[doc(hidden)]
pub use query::bench_support;
pub use query::{Candidates, Hit, Query, QueryResult, Scratch, MAX_CANDIDATES};
pub use schema::{ColumnDef, ColumnKind, Dtype, EmbeddingDef, Schema};
pub use segment::{Column, EmbeddingColumn, Row, Segment};
pub use snapshot::{ItemRef, Snapshot, VerifyReport};
pub use store::{OpenOptions, Store};
pub use writer::{is_leftover_name, Compaction, GcReport, Retention, Transaction, Writer};
