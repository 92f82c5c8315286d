//! vstore: an embedded, memory-mapped, versioned columnar store for the
//! pre-rank stage of recommender systems.
//!
//! Work in progress: this crate currently holds the schema types
//! ([`Schema`], [`EmbeddingDef`], [`Dtype`]) and the library's error type
//! ([`Error`]). The file format, snapshots and scoring follow (see the
//! project's open issues and `format/FORMAT.md`).

#[cfg(target_endian = "big")]
compile_error!("vstore's on-disk format is little-endian and it supports little-endian hosts only");

pub mod error;
pub mod schema;

pub use error::{Error, Result};
pub use schema::{ColumnDef, ColumnKind, Dtype, EmbeddingDef, Schema};
