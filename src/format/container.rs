//! The container every vstore file shares: a 64-byte header, 64-aligned data
//! blocks, the rkyv-archived [`FileMeta`], and a 40-byte footer.
//!
//! ```text
//! 0        64                        meta_offset          len-40     len
//! | header | data blocks (chunk CRCs) | metadata (rkyv) |pad| footer |
//! ```
//!
//! See `format/FORMAT.md` ("Container") for the byte-level specification.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{Error, Result};
use crate::format::legacy::{FileMetaV4, FileMetaV5};
use crate::format::meta::{Body, Extent, FileMeta};
use crate::io::extents::ExtentWriter;

/// First eight bytes of every file (and last eight): PNG-style, so a text
/// transfer or a truncated copy is recognisable.
pub const MAGIC: [u8; 8] = *b"\x89VSTR\r\n\x1a";
/// Format version this build writes.
pub const FORMAT_VERSION: u32 = 6;
/// Oldest format version this build reads.
pub const OLDEST_FORMAT_VERSION: u32 = 1;
/// Header size in bytes.
pub(crate) const HEADER_LEN: u64 = 64;
/// Footer size in bytes.
pub(crate) const FOOTER_LEN: u64 = 40;
/// Alignment of every data block and of the metadata.
pub(crate) const BLOCK_ALIGN: u64 = 64;
/// Size of a checksummed data chunk.
pub(crate) const CHUNK_SIZE: u32 = 1 << 20;

/// The kinds of file, as recorded in header and footer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Kind {
    Manifest = 1,
    Columns = 2,
    IdIndex = 3,
    Deletes = 4,
    /// Format version 2.
    Bundle = 5,
}

impl Kind {
    fn from_u32(v: u32) -> Option<Kind> {
        Some(match v {
            1 => Kind::Manifest,
            2 => Kind::Columns,
            3 => Kind::IdIndex,
            4 => Kind::Deletes,
            5 => Kind::Bundle,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Manifest => "manifest",
            Kind::Columns => "column group",
            Kind::IdIndex => "id index",
            Kind::Deletes => "deletion bitmap",
            Kind::Bundle => "model bundle",
        }
    }

    fn of(body: &Body) -> Kind {
        match body {
            Body::Manifest(_) => Kind::Manifest,
            Body::Columns(_) => Kind::Columns,
            Body::IdIndex(_) => Kind::IdIndex,
            Body::Deletes(_) => Kind::Deletes,
            Body::Bundle(_) => Kind::Bundle,
        }
    }
}

fn header_bytes(kind: Kind) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(kind as u32).to_le_bytes());
    h
}

/// Streams a container to a new file: header, then blocks, then
/// [`ContainerWriter::finish`] writes metadata and footer and syncs.
pub(crate) struct ContainerWriter {
    path: PathBuf,
    out: ExtentWriter<Box<dyn crate::io::fs::FsFile>>,
    kind: Kind,
    pos: u64,
    crcs: Vec<u32>,
    chunk: crc32fast::Hasher,
    chunk_fill: u32,
}

/// What a finished file is: its length and metadata checksum (recorded in the
/// manifest's [`crate::format::meta::FileRef`]).
pub(crate) struct Written {
    pub len: u64,
    pub meta_crc: u32,
}

impl ContainerWriter {
    /// Creates `path` (which must not exist) through `fs` and writes the header.
    pub(crate) fn create(fs: &dyn crate::io::fs::Fs, path: &Path, kind: Kind) -> Result<Self> {
        let file = fs
            .create_new(path)
            .map_err(|e| Error::io("create", path, e))?;
        let mut w = ContainerWriter {
            path: path.to_path_buf(),
            out: ExtentWriter::new(file),
            kind,
            pos: 0,
            crcs: Vec::new(),
            chunk: crc32fast::Hasher::new(),
            chunk_fill: 0,
        };
        w.raw(&header_bytes(kind))?;
        Ok(w)
    }

    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.out
            .write_all(bytes)
            .map_err(|e| Error::io("write", &self.path, e))?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Writes data-region bytes, checksumming them chunk by chunk.
    pub(crate) fn data(&mut self, mut bytes: &[u8]) -> Result<()> {
        self.raw(bytes)?;
        while !bytes.is_empty() {
            let room = (CHUNK_SIZE - self.chunk_fill) as usize;
            let n = room.min(bytes.len());
            self.chunk.update(&bytes[..n]);
            self.chunk_fill += n as u32;
            bytes = &bytes[n..];
            if self.chunk_fill == CHUNK_SIZE {
                let h = std::mem::take(&mut self.chunk);
                self.crcs.push(h.finalize());
                self.chunk_fill = 0;
            }
        }
        Ok(())
    }

    fn pad_data_to(&mut self, align: u64) -> Result<()> {
        let pad = self.pos.next_multiple_of(align) - self.pos;
        if pad > 0 {
            self.data(&vec![0u8; pad as usize])?;
        }
        Ok(())
    }

    /// Pads to the block alignment and returns the offset the next block starts at.
    pub(crate) fn begin_block(&mut self) -> Result<u64> {
        self.pad_data_to(BLOCK_ALIGN)?;
        Ok(self.pos)
    }

    /// Writes a whole block and returns its extent.
    pub(crate) fn block(&mut self, bytes: &[u8]) -> Result<Extent> {
        let offset = self.begin_block()?;
        self.data(bytes)?;
        Ok(Extent {
            offset,
            len: bytes.len() as u64,
        })
    }

    /// Current position (end of what was written).
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Writes the metadata and the footer, flushes and fsyncs the file.
    pub(crate) fn finish(mut self, body: Body) -> Result<Written> {
        debug_assert_eq!(Kind::of(&body), self.kind);
        self.pad_data_to(BLOCK_ALIGN)?;
        if self.chunk_fill > 0 {
            let h = std::mem::take(&mut self.chunk);
            self.crcs.push(h.finalize());
            self.chunk_fill = 0;
        }
        let meta = FileMeta {
            chunk_size: CHUNK_SIZE,
            data_crcs: std::mem::take(&mut self.crcs),
            body,
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::BoxedError>(&meta)
            .map_err(|e| Error::InvalidInput(format!("archiving metadata: {e}")))?;
        let meta_offset = self.pos;
        let meta_len = bytes.len() as u64;
        let meta_crc = crc32fast::hash(&bytes);
        self.raw(&bytes)?;
        let pad = self.pos.next_multiple_of(8) - self.pos;
        self.raw(&vec![0u8; pad as usize])?;
        let footer = footer_bytes(self.kind, meta_offset, meta_len, meta_crc);
        self.raw(&footer)?;
        let len = self.pos;
        let mut file = self
            .out
            .into_inner()
            .map_err(|e| Error::io("write", &self.path, e))?;
        file.sync().map_err(|e| Error::io("fsync", &self.path, e))?;
        Ok(Written { len, meta_crc })
    }
}

pub(crate) fn footer_bytes(kind: Kind, meta_offset: u64, meta_len: u64, meta_crc: u32) -> [u8; 40] {
    let mut f = [0u8; FOOTER_LEN as usize];
    f[0..8].copy_from_slice(&meta_offset.to_le_bytes());
    f[8..16].copy_from_slice(&meta_len.to_le_bytes());
    f[16..20].copy_from_slice(&meta_crc.to_le_bytes());
    f[20..24].copy_from_slice(&(kind as u32).to_le_bytes());
    f[24..28].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&header_bytes(kind));
    h.update(&f[0..28]);
    f[28..32].copy_from_slice(&h.finalize().to_le_bytes());
    f[32..40].copy_from_slice(&MAGIC);
    f
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// An opened, structurally validated file: mapped, header and footer checked,
/// metadata checksummed, validated and deserialized.
pub(crate) struct Container {
    pub path: PathBuf,
    pub map: Mmap,
    pub meta: FileMeta,
    pub meta_offset: u64,
    pub meta_crc: u32,
    /// Format version in the header (confirmed by the footer).
    pub version: u32,
    /// Set once every data chunk's checksum has been recomputed and matched.
    verified: std::sync::atomic::AtomicBool,
    /// Held while the data checksums are recomputed by
    /// [`Container::ensure_verified`], so that a query arriving while the
    /// background prefault checks a file waits for that check instead of
    /// repeating it.
    verifying: parking_lot::Mutex<()>,
    /// Set once a background prefault has faulted every page in (files
    /// shared by a later snapshot are not prefaulted again).
    pub(crate) prefaulted: std::sync::atomic::AtomicBool,
    /// Set once the mapping is locked in memory (`OpenOptions::mlock`).
    pub(crate) locked: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Container {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Container")
            .field("path", &self.path)
            .field("len", &self.map.len())
            .finish()
    }
}

fn check_len(path: &Path, len: u64) -> Result<()> {
    if len < HEADER_LEN + FOOTER_LEN {
        return Err(Error::corrupt(
            path,
            format!(
                "truncated: {len} bytes, smaller than header and footer ({} bytes)",
                HEADER_LEN + FOOTER_LEN
            ),
        ));
    }
    Ok(())
}

/// Checks the framing of `bytes` (a whole file) and returns the metadata's
/// position, its CRC and the kind. Reads only header and footer.
pub(crate) fn check_frame(path: &Path, bytes: &[u8], want: Kind) -> Result<(u64, u64, u32)> {
    let len = bytes.len() as u64;
    check_len(path, len)?;
    let h = &bytes[..HEADER_LEN as usize];
    if h[0..8] != MAGIC {
        return Err(Error::corrupt(
            path,
            "bad magic in header: not a vstore file, or its first bytes were overwritten",
        ));
    }
    let version = le_u32(h, 8);
    if !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        // Only trust the version if the footer agrees; otherwise it is damage.
        let f = &bytes[(len - FOOTER_LEN) as usize..];
        if f[32..40] == MAGIC && le_u32(f, 24) == version {
            return Err(Error::UnsupportedFormat {
                path: path.to_path_buf(),
                found: version,
                oldest: OLDEST_FORMAT_VERSION,
                newest: FORMAT_VERSION,
            });
        }
        return Err(Error::corrupt(path, format!("header format version {version} is not one this build knows and the footer does not confirm it")));
    }
    let kind = le_u32(h, 12);
    if h[16..].iter().any(|&b| b != 0) {
        return Err(Error::corrupt(
            path,
            "reserved header bytes 16..64 are not zero",
        ));
    }
    let f = &bytes[(len - FOOTER_LEN) as usize..];
    if f[32..40] != MAGIC {
        return Err(Error::corrupt(
            path,
            format!("bad magic in footer: file truncated or its tail overwritten ({len} bytes)"),
        ));
    }
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(h);
    hasher.update(&f[0..28]);
    let footer_crc = hasher.finalize();
    if footer_crc != le_u32(f, 28) {
        return Err(Error::corrupt(
            path,
            format!(
                "header/footer checksum mismatch (stored {:#010x}, computed {footer_crc:#010x})",
                le_u32(f, 28)
            ),
        ));
    }
    if le_u32(f, 20) != kind || le_u32(f, 24) != version {
        return Err(Error::corrupt(
            path,
            "header and footer disagree on kind or version",
        ));
    }
    match Kind::from_u32(kind) {
        Some(Kind::Bundle) if version < 2 => {
            return Err(Error::corrupt(
                path,
                "a model bundle file cannot have format version 1 (bundles arrived in version 2)",
            ))
        }
        Some(k) if k == want => {}
        Some(k) => {
            return Err(Error::corrupt(
                path,
                format!(
                    "is a {} file where a {} file was expected",
                    k.name(),
                    want.name()
                ),
            ))
        }
        None => return Err(Error::corrupt(path, format!("unknown file kind {kind}"))),
    }
    let meta_offset = le_u64(f, 0);
    let meta_len = le_u64(f, 8);
    let meta_crc = le_u32(f, 16);
    let footer_start = len - FOOTER_LEN;
    let meta_end = meta_offset.checked_add(meta_len);
    let ok = meta_offset >= HEADER_LEN
        && meta_offset.is_multiple_of(BLOCK_ALIGN)
        && meta_len > 0
        && meta_end
            .and_then(|e| e.checked_next_multiple_of(8))
            .is_some_and(|e| e == footer_start);
    if !ok {
        return Err(Error::corrupt(
            path,
            format!("footer places metadata at {meta_offset}+{meta_len}, which does not fit a {len}-byte file"),
        ));
    }
    let pad = &bytes[(meta_offset + meta_len) as usize..footer_start as usize];
    if pad.iter().any(|&b| b != 0) {
        return Err(Error::corrupt(
            path,
            "padding between metadata and footer is not zero",
        ));
    }
    Ok((meta_offset, meta_len, meta_crc))
}

/// Decodes and checks a metadata block (CRC first, then rkyv validation).
pub(crate) fn decode_meta(
    path: &Path,
    meta_bytes: &[u8],
    meta_crc: u32,
    meta_offset: u64,
    want: Kind,
    version: u32,
) -> Result<FileMeta> {
    let crc = crc32fast::hash(meta_bytes);
    if crc != meta_crc {
        return Err(Error::corrupt(
            path,
            format!("metadata checksum mismatch (stored {meta_crc:#010x}, computed {crc:#010x})"),
        ));
    }
    // rkyv needs the archive 16-aligned; a page-aligned map with a 64-aligned
    // offset is. Copy otherwise (e.g. a buffer handed in by a fuzzer).
    let copy;
    let aligned = if (meta_bytes.as_ptr() as usize).is_multiple_of(16) {
        meta_bytes
    } else {
        let mut v = rkyv::util::AlignedVec::<16>::with_capacity(meta_bytes.len());
        v.extend_from_slice(meta_bytes);
        copy = v;
        &copy[..]
    };
    // Versions 1 to 4 archive the metadata without version 5's fields,
    // version 5 without version 6's.
    let meta: FileMeta = if version < 5 {
        rkyv::from_bytes::<FileMetaV4, rkyv::rancor::BoxedError>(aligned)
            .map(FileMetaV4::into_current)
    } else if version == 5 {
        rkyv::from_bytes::<FileMetaV5, rkyv::rancor::BoxedError>(aligned)
            .map(FileMetaV5::into_current)
    } else {
        rkyv::from_bytes::<FileMeta, rkyv::rancor::BoxedError>(aligned)
    }
    .map_err(|e| Error::corrupt(path, format!("metadata does not validate: {e}")))?;
    if Kind::of(&meta.body) != want {
        return Err(Error::corrupt(
            path,
            "metadata body does not match the file kind",
        ));
    }
    if meta.chunk_size != CHUNK_SIZE {
        return Err(Error::corrupt(
            path,
            format!(
                "chunk size {} is not the {CHUNK_SIZE} bytes of format version 1",
                meta.chunk_size
            ),
        ));
    }
    if want == Kind::Manifest && meta_offset != HEADER_LEN {
        return Err(Error::corrupt(path, "a manifest has no data region"));
    }
    let data_len = meta_offset - HEADER_LEN;
    let chunks = data_len.div_ceil(meta.chunk_size as u64);
    if meta.data_crcs.len() as u64 != chunks {
        return Err(Error::corrupt(
            path,
            format!(
                "metadata lists {} data checksums for {chunks} chunks",
                meta.data_crcs.len()
            ),
        ));
    }
    check_layout(path, &meta.body, meta_offset)?;
    Ok(meta)
}

/// Checks that the data blocks sit exactly where the writer lays them out:
/// consecutive in the writer's order ([`Body::blocks`]), the first at 64,
/// each at the end of the one before rounded up to 64, and the metadata at
/// the end of the last rounded up to 64. A block moved elsewhere in the
/// data region (which its chunk checksums would not notice) would read
/// another block's bytes, shifted by rows; it is refused naming the field.
pub(crate) fn check_layout(path: &Path, body: &Body, meta_offset: u64) -> Result<()> {
    let mut at = HEADER_LEN;
    for (what, e) in body.blocks() {
        if e.offset != at {
            return Err(Error::corrupt(
                path,
                format!(
                    "{what}: block at offset {} is not where the writer lays it out (offset {at}: blocks follow one another in a fixed order, each starting at the 64-aligned end of the one before)",
                    e.offset
                ),
            ));
        }
        at = e
            .offset
            .checked_add(e.len)
            .and_then(|end| end.checked_next_multiple_of(BLOCK_ALIGN))
            .ok_or_else(|| {
                Error::corrupt(
                    path,
                    format!("{what}: block {}+{} overflows", e.offset, e.len),
                )
            })?;
    }
    if at != meta_offset {
        return Err(Error::corrupt(
            path,
            format!(
                "data region ends at {meta_offset}, but its blocks end (aligned to 64) at {at}"
            ),
        ));
    }
    Ok(())
}

impl Container {
    /// Opens, maps and validates `path` as a file of kind `want`.
    pub(crate) fn open(path: &Path, want: Kind, populate: bool) -> Result<Container> {
        // Only regular files, opened so that nothing blocks: a symlink could
        // lead out of the store, and a FIFO or device named by a damaged
        // manifest (or put in a manifest's place) could block the open.
        let (file, fmeta) =
            crate::io::fs::open_regular(path, File::options().read(true).clone(), "open")?;
        let len = fmeta.len();
        // Checked before mapping: a zero-length file cannot be mapped.
        check_len(path, len)?;
        let map = crate::io::mmap::map_readonly(&file, path, len, populate)?;
        let (meta_offset, meta_len, meta_crc) = check_frame(path, &map, want)?;
        let meta_bytes = &map[meta_offset as usize..(meta_offset + meta_len) as usize];
        let meta = decode_meta(
            path,
            meta_bytes,
            meta_crc,
            meta_offset,
            want,
            le_u32(&map, 8),
        )?;
        Ok(Container {
            version: le_u32(&map, 8),
            path: path.to_path_buf(),
            map,
            meta,
            meta_offset,
            meta_crc,
            verified: std::sync::atomic::AtomicBool::new(false),
            verifying: parking_lot::Mutex::new(()),
            prefaulted: std::sync::atomic::AtomicBool::new(false),
            locked: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// File length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.map.len() as u64
    }

    /// Checks that `e` lies in the data region, starts `align`-aligned and is
    /// `len` bytes long; returns its bytes.
    pub(crate) fn extent(&self, e: &Extent, len: u64, what: &str) -> Result<&[u8]> {
        let end = e.offset.checked_add(e.len);
        if e.offset < HEADER_LEN
            || !e.offset.is_multiple_of(BLOCK_ALIGN)
            || end.is_none_or(|end| end > self.meta_offset)
            || e.len != len
        {
            return Err(Error::corrupt(
                &self.path,
                format!(
                    "{what}: block {}+{} is misplaced (expected {len} bytes, 64-aligned, inside the data region ending at {})",
                    e.offset, e.len, self.meta_offset
                ),
            ));
        }
        Ok(&self.map[e.offset as usize..(e.offset + e.len) as usize])
    }

    /// Recomputes every data chunk's CRC (what `verify()` does).
    pub(crate) fn verify_data(&self) -> Result<()> {
        verify_chunks(
            &self.path,
            &self.map[..self.meta_offset as usize],
            &self.meta,
        )?;
        self.verified
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Like [`Container::verify_data`], but only the first time: used by the
    /// writer before it trusts or copies data bytes into a new file (whose
    /// fresh checksums would otherwise hide damage).
    pub(crate) fn ensure_verified(&self) -> Result<()> {
        self.ensure_verified_until(&|| true).map(|_| ())
    }

    /// [`Container::ensure_verified`] that gives up (returning `Ok(false)`,
    /// and leaving the file unverified) as soon as `go_on` says so; it is
    /// asked between chunks. For the background prefault, which must let
    /// go of a dropped store's files promptly.
    pub(crate) fn ensure_verified_until(&self, go_on: &dyn Fn() -> bool) -> Result<bool> {
        if self.is_verified() {
            return Ok(true);
        }
        let _one_at_a_time = self.verifying.lock();
        if self.is_verified() {
            return Ok(true);
        }
        let head = &self.map[..self.meta_offset as usize];
        if !verify_chunks_until(&self.path, head, &self.meta, go_on)? {
            return Ok(false);
        }
        self.verified
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(true)
    }

    /// Whether every data checksum has been recomputed and matched.
    pub(crate) fn is_verified(&self) -> bool {
        self.verified.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// Checks the data chunks of `head` (the file's bytes up to `meta_offset`).
pub(crate) fn verify_chunks(path: &Path, head: &[u8], meta: &FileMeta) -> Result<()> {
    verify_chunks_until(path, head, meta, &|| true).map(|_| ())
}

/// [`verify_chunks`], asking `go_on` before each chunk; `Ok(false)` if it
/// said to stop before every chunk was checked.
fn verify_chunks_until(
    path: &Path,
    head: &[u8],
    meta: &FileMeta,
    go_on: &dyn Fn() -> bool,
) -> Result<bool> {
    let data = &head[HEADER_LEN as usize..];
    for (i, (chunk, &want)) in data
        .chunks(meta.chunk_size as usize)
        .zip(meta.data_crcs.iter())
        .enumerate()
    {
        if !go_on() {
            return Ok(false);
        }
        let got = crc32fast::hash(chunk);
        if got != want {
            let start = HEADER_LEN + i as u64 * meta.chunk_size as u64;
            return Err(Error::corrupt(
                path,
                format!(
                    "data checksum mismatch in chunk {i} (bytes {start}..{}): stored {want:#010x}, computed {got:#010x}",
                    start + chunk.len() as u64
                ),
            ));
        }
    }
    Ok(true)
}
