//! The metadata archived (rkyv) at the end of every vstore file.
//!
//! One root type, [`FileMeta`], for every file kind: the data-chunk checksums
//! plus a body that says what the data blocks hold. The byte layout of each
//! type is specified in `format/FORMAT.md` ("Metadata"); changing a field here
//! is a format change.

// rkyv's derive generates archived twins whose fields carry no doc comments.
#![allow(missing_docs)]

use crate::schema::{EmbeddingDef, Schema};

/// Root of every file's metadata.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct FileMeta {
    /// Size of one checksummed data chunk in bytes (the last may be shorter).
    pub chunk_size: u32,
    /// CRC32 of each chunk of the data region `[64, meta_offset)`.
    pub data_crcs: Vec<u32>,
    /// What the file holds.
    pub body: Body,
}

/// What a file holds; must agree with the kind in the header.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) enum Body {
    Manifest(ManifestMeta),
    Columns(ColumnsMeta),
    IdIndex(IdIndexMeta),
    Deletes(DeletesMeta),
    /// Format version 2.
    Bundle(BundleMeta),
}

/// A byte range inside a file's data region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct Extent {
    pub offset: u64,
    pub len: u64,
}

/// A reference from a manifest to a data file, with the two facts that tie
/// the name to the exact bytes that were published.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub(crate) struct FileRef {
    pub name: String,
    pub len: u64,
    pub meta_crc: u32,
}

/// A snapshot.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct ManifestMeta {
    pub snapshot: u64,
    pub parent: Option<u64>,
    /// Milliseconds since the Unix epoch when the manifest was written.
    pub created_unix_ms: u64,
    pub schema: Schema,
    pub segments: Vec<SegmentMeta>,
    /// Model bundles, at most one per `space@version`, sorted by key
    /// (always empty in format version 1).
    pub bundles: Vec<BundleRef>,
    /// User key/value metadata, sorted by key.
    pub user_meta: Vec<KeyValue>,
    /// Next segment id the writer will hand out (ids are never reused).
    pub next_segment_id: u64,
}

/// A key/value pair of user metadata.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct KeyValue {
    pub key: String,
    pub value: String,
}

/// A model bundle published with a snapshot: `key` is its `space@version`;
/// `files` holds exactly one file, the bundle file (format version 2).
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct BundleRef {
    pub key: String,
    pub files: Vec<FileRef>,
}

/// A model bundle file: `model.json` and `weights.safetensors`, verbatim,
/// and (format 6) the precision its layers run at with the weights the
/// store converted to it.
#[derive(Debug, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct BundleMeta {
    /// `space@version` the bundle belongs to (must match `model.json`).
    pub key: String,
    pub json: Extent,
    pub weights: Extent,
    /// `Precision::code`: 0 f32, 1 bf16 (format 6; 0 in older files).
    pub precision: u8,
    /// The converted weights, a safetensors file (format 6; `None` at
    /// f32).
    pub converted: Option<Extent>,
}

/// One segment of a snapshot and the files that hold it.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub(crate) struct SegmentMeta {
    pub id: u64,
    pub rows: u64,
    pub id_index: FileRef,
    pub profile: FileRef,
    pub stats: FileRef,
    pub embeddings: Vec<EmbeddingRef>,
    pub deletes: Option<FileRef>,
}

/// The file holding one embedding version of a segment.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
    serde::Serialize,
    serde::Deserialize,
)]
pub(crate) struct EmbeddingRef {
    pub key: String,
    pub file: FileRef,
}

/// Which column group a column file holds.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) enum Group {
    Profile,
    Stats,
    Embedding(EmbeddingDef),
}

/// A column-group file: one segment's rows of one group.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct ColumnsMeta {
    pub segment: u64,
    pub rows: u64,
    pub group: Group,
    /// Scalar columns (profile and statistics groups), in schema order.
    pub columns: Vec<ColumnBlock>,
    /// Embedding rows (embedding group only): `rows * stride` bytes.
    pub vectors: Option<VectorBlock>,
}

/// One scalar column: `rows` little-endian u32 or f32 values (missing rows
/// hold the declared default) and, if any row is missing, a bitmap.
#[derive(Debug, Clone, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct ColumnBlock {
    pub name: String,
    pub values: Extent,
    pub missing: Option<Extent>,
    pub missing_count: u64,
}

/// The embedding rows of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct VectorBlock {
    pub stride: u32,
    pub rows: Extent,
    /// Format version 5: bitmap of the rows whose vector the store
    /// computed with the version's item tower (`ceil(rows / 64)`
    /// little-endian u64 words, bit `r % 64` of word `r / 64`); `None`
    /// when no row was computed (every file of versions 1 to 4).
    pub computed: Option<Extent>,
    /// Number of set bits of `computed` (0 without it).
    pub computed_count: u64,
}

/// The id index of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct IdIndexMeta {
    pub segment: u64,
    pub rows: u64,
    /// Ids in row order, `rows` little-endian u64.
    pub ids: Extent,
    /// Open-addressing table of `slots` 16-byte slots `(id u64, row + 1 u64)`;
    /// `row + 1 == 0` marks an empty slot.
    pub table: Extent,
    pub slots: u64,
    /// Largest probe distance any id needed at build time; lookups stop after it.
    pub max_probe: u32,
    /// Blocked Bloom filter over the ids: `bloom_blocks` 64-byte blocks
    /// (see format/FORMAT.md, "Id index"), so a lookup that walks the
    /// segments (`read::segment::find_live`) skips those that cannot hold
    /// an id.
    pub bloom: Extent,
    pub bloom_blocks: u64,
}

/// Deleted rows (tombstones) of one segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct DeletesMeta {
    pub segment: u64,
    pub rows: u64,
    /// Bitmap of `ceil(rows / 64)` little-endian u64 words; bit `r % 64` of
    /// word `r / 64` set means row `r` is deleted.
    pub bitmap: Extent,
    pub deleted: u64,
}

impl Body {
    /// Every data block of the file, named, in the order the writer lays
    /// them out (`src/format/encode.rs`): id index `ids`, `table`, `bloom`; column
    /// groups each column's `values` then its `missing` bitmap, then
    /// `vectors`; deletion bitmap `bitmap`; bundle `json`, `weights`, `converted`; a
    /// manifest has none. Readers check that block `i` starts exactly
    /// where block `i - 1` ends, rounded up to 64 (see
    /// `container::check_layout`).
    pub(crate) fn blocks(&self) -> Vec<(String, Extent)> {
        let mut v = Vec::new();
        match self {
            Body::Manifest(_) => {}
            Body::Columns(c) => {
                for b in &c.columns {
                    v.push((format!("column {:?} values", b.name), b.values));
                    if let Some(m) = b.missing {
                        v.push((format!("column {:?} missing bitmap", b.name), m));
                    }
                }
                if let Some(vb) = &c.vectors {
                    v.push(("vectors".to_string(), vb.rows));
                    if let Some(b) = vb.computed {
                        v.push(("computed-rows bitmap".to_string(), b));
                    }
                }
            }
            Body::IdIndex(m) => {
                v.push(("ids".to_string(), m.ids));
                v.push(("hash table".to_string(), m.table));
                v.push(("bloom filter".to_string(), m.bloom));
            }
            Body::Deletes(d) => v.push(("deletion bitmap".to_string(), d.bitmap)),
            Body::Bundle(b) => {
                v.push(("model.json".to_string(), b.json));
                v.push(("weights.safetensors".to_string(), b.weights));
                if let Some(c) = b.converted {
                    v.push(("converted weights".to_string(), c));
                }
            }
        }
        v
    }

    /// The blocks of [`Body::blocks`], in the same order, for editing (the
    /// test helpers in `fuzzing.rs` move one).
    pub(crate) fn blocks_mut(&mut self) -> Vec<&mut Extent> {
        let mut v = Vec::new();
        match self {
            Body::Manifest(_) => {}
            Body::Columns(c) => {
                for b in &mut c.columns {
                    v.push(&mut b.values);
                    if let Some(m) = &mut b.missing {
                        v.push(m);
                    }
                }
                if let Some(vb) = &mut c.vectors {
                    v.push(&mut vb.rows);
                    if let Some(b) = &mut vb.computed {
                        v.push(b);
                    }
                }
            }
            Body::IdIndex(m) => {
                v.push(&mut m.ids);
                v.push(&mut m.table);
                v.push(&mut m.bloom);
            }
            Body::Deletes(d) => v.push(&mut d.bitmap),
            Body::Bundle(b) => {
                v.push(&mut b.json);
                v.push(&mut b.weights);
                if let Some(c) = &mut b.converted {
                    v.push(c);
                }
            }
        }
        v
    }
}
