//! The metadata layouts of format versions 1 to 5, kept so that their
//! files keep opening: version 5 added two fields to [`meta::VectorBlock`]
//! (the computed-rows bitmap) and version 6 two to [`meta::BundleMeta`]
//! (the precision and converted weights), each of which changes the
//! archived layout of every type that holds it. Only those types are
//! repeated here; the rest are shared. An older file's metadata is decoded
//! with these types and converted ([`FileMetaV4::into_current`],
//! [`FileMetaV5::into_current`]), so the rest of the crate sees one
//! [`meta::FileMeta`].

// rkyv's derive generates archived twins whose fields carry no doc comments.
#![allow(missing_docs)]

use super::meta::{
    self, ColumnBlock, ColumnsMeta, DeletesMeta, Extent, Group, IdIndexMeta, ManifestMeta,
};

/// [`meta::BundleMeta`] before version 6: f32, nothing converted.
#[derive(Debug, rkyv::Archive, rkyv::Deserialize)]
pub(crate) struct BundleMetaV5 {
    pub key: String,
    pub json: Extent,
    pub weights: Extent,
}

impl BundleMetaV5 {
    fn into_current(self) -> meta::BundleMeta {
        meta::BundleMeta {
            key: self.key,
            json: self.json,
            weights: self.weights,
            precision: 0,
            converted: None,
        }
    }
}

/// [`meta::FileMeta`] as version 5 archives it.
#[derive(Debug, rkyv::Archive, rkyv::Deserialize)]
pub(crate) struct FileMetaV5 {
    pub chunk_size: u32,
    pub data_crcs: Vec<u32>,
    pub body: BodyV5,
}

/// [`meta::Body`] as version 5 archives it (same tags).
#[derive(Debug, rkyv::Archive, rkyv::Deserialize)]
pub(crate) enum BodyV5 {
    Manifest(ManifestMeta),
    Columns(ColumnsMeta),
    IdIndex(IdIndexMeta),
    Deletes(DeletesMeta),
    Bundle(BundleMetaV5),
}

impl FileMetaV5 {
    /// The same metadata in the current types (f32 bundles).
    pub(crate) fn into_current(self) -> meta::FileMeta {
        let body = match self.body {
            BodyV5::Manifest(m) => meta::Body::Manifest(m),
            BodyV5::Columns(c) => meta::Body::Columns(c),
            BodyV5::IdIndex(m) => meta::Body::IdIndex(m),
            BodyV5::Deletes(m) => meta::Body::Deletes(m),
            BodyV5::Bundle(m) => meta::Body::Bundle(m.into_current()),
        };
        meta::FileMeta {
            chunk_size: self.chunk_size,
            data_crcs: self.data_crcs,
            body,
        }
    }
}

/// [`meta::FileMeta`] as versions 1 to 4 archive it.
#[derive(Debug, rkyv::Archive, rkyv::Deserialize)]
pub(crate) struct FileMetaV4 {
    pub chunk_size: u32,
    pub data_crcs: Vec<u32>,
    pub body: BodyV4,
}

/// [`meta::Body`] as versions 1 to 4 archive it (same tags).
#[derive(Debug, rkyv::Archive, rkyv::Deserialize)]
pub(crate) enum BodyV4 {
    Manifest(ManifestMeta),
    Columns(ColumnsMetaV4),
    IdIndex(IdIndexMeta),
    Deletes(DeletesMeta),
    Bundle(BundleMetaV5),
}

/// [`meta::ColumnsMeta`] as versions 1 to 4 archive it.
#[derive(Debug, rkyv::Archive, rkyv::Deserialize)]
pub(crate) struct ColumnsMetaV4 {
    pub segment: u64,
    pub rows: u64,
    pub group: Group,
    pub columns: Vec<ColumnBlock>,
    pub vectors: Option<VectorBlockV4>,
}

/// [`meta::VectorBlock`] before version 5: no computed rows.
#[derive(Debug, Clone, Copy, rkyv::Archive, rkyv::Deserialize)]
pub(crate) struct VectorBlockV4 {
    pub stride: u32,
    pub rows: Extent,
}

impl FileMetaV4 {
    /// The same metadata in the current types (no row computed).
    pub(crate) fn into_current(self) -> meta::FileMeta {
        let body = match self.body {
            BodyV4::Manifest(m) => meta::Body::Manifest(m),
            BodyV4::Columns(c) => meta::Body::Columns(meta::ColumnsMeta {
                segment: c.segment,
                rows: c.rows,
                group: c.group,
                columns: c.columns,
                vectors: c.vectors.map(|v| meta::VectorBlock {
                    stride: v.stride,
                    rows: v.rows,
                    computed: None,
                    computed_count: 0,
                }),
            }),
            BodyV4::IdIndex(m) => meta::Body::IdIndex(m),
            BodyV4::Deletes(m) => meta::Body::Deletes(m),
            BodyV4::Bundle(m) => meta::Body::Bundle(m.into_current()),
        };
        meta::FileMeta {
            chunk_size: self.chunk_size,
            data_crcs: self.data_crcs,
            body,
        }
    }
}
