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
//! The design (assumptions about the medium, the layers, the write, read
//! and query paths, compaction) is in `docs/DESIGN.md`; the model bundle
//! contract (v1 and v2: [`Model`], [`Fusion`]) in `docs/BUNDLE.md`; the
//! byte-level format in `format/FORMAT.md`; what the
//! store promises, with the test behind each promise, in `docs/PROMISES.md`;
//! performance figures and how to reproduce them in `docs/PERF.md`.
//!
//! See [`Store`] for an example.

#[cfg(target_endian = "big")]
compile_error!("vstore's on-disk format is little-endian and it supports little-endian hosts only");

mod error;
#[cfg(feature = "experiments")]
#[doc(hidden)]
pub mod experiments;
mod format;
#[doc(hidden)]
pub mod fuzzing;
mod io;
mod kernels;
mod model;
mod query;
mod read;
mod schema;
mod write;

pub use error::{Error, Result};
pub use format::container::{FORMAT_VERSION, OLDEST_FORMAT_VERSION};
pub use format::dropped::DROPPED_VERSIONS_KEY;
pub use io::fs::{Fs, FsFile, StdFs};
pub use kernels::{kernel_level, Precision};
pub use model::{
    Activation, Bundle, BundleHeader, ExampleBundle, Fusion, ItemTowerBundle, Model, UserInputSpec,
    UserInputs, BUNDLE_FORMAT, BUNDLE_FORMAT_V2, DEFAULT_BUNDLE_NAME, ITEM_TOWER_FORMAT,
};
#[doc(hidden)]
pub use query::bench_support;
pub use query::filter::Filter;
pub use query::{Budget, FeatureLog, Hit, Query, QueryResult, Scratch, Timings, MAX_CANDIDATES};
pub use read::columns::{Column, EmbeddingColumn, Row};
pub use read::prefault::{Prefault, PrefaultProgress};
pub use read::segment::Segment;
pub use read::snapshot::{ItemRef, Snapshot, VerifyReport};
pub use read::store::{OpenOptions, Store};
pub use schema::{check_key, parse_key, ColumnDef, ColumnKind, Dtype, EmbeddingDef, Schema};
pub use write::batch::ItemBatch;
pub use write::compaction::{CompactedSegment, CompactionJob};
pub use write::gc::{GcReport, Retention};
pub use write::job::{
    abort_build, abort_job, commit_build, published_build, stage, BuildPlan, BuildReceipt,
    CommitOptions, JOBS_KEY, JOB_KEY,
};
pub use write::rebase::Compaction;
pub use write::restore::RESTORED_FROM_KEY;
pub use write::transaction::{check_metadata_key, Transaction};
pub use write::writer::{is_leftover_name, Writer, DEFAULT_STAGING_GRACE};
