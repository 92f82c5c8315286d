//! Writes a new file in whole, aligned 2 MiB extents, so that the page cache
//! can hold it in huge pages.
//!
//! Queries read embedding rows and id-index buckets at random across files
//! of hundreds of megabytes; with 4 KiB pages nearly every such read also
//! misses the TLB and walks the page tables. Linux (6.16 and later on ext4;
//! XFS and others earlier) keeps a file's page cache in large folios, sized
//! by how the file was written or read ahead: a `write` that covers a whole
//! 2 MiB-aligned 2 MiB range creates a 2 MiB folio, which any later mapping
//! of the file maps with one huge-page TLB entry (`FilePmdMapped` in
//! `/proc/<pid>/smaps`). Written in smaller pieces, the same bytes end up in
//! small folios and stay there while they are cached. This writer therefore
//! buffers bytes and hands the file system only whole extents at aligned
//! offsets, plus the tail when it is flushed.
//!
//! On kernels or file systems without large folios this changes nothing but
//! the size of the writes.

use std::io::{self, Write};

/// Extent size: the x86-64 and arm64 (4 KiB granule) huge-page size.
pub(crate) const EXTENT: usize = 2 << 20;

/// A buffered writer whose writes to `W` each cover whole `EXTENT`-aligned
/// extents, except the last (on [`Write::flush`] or
/// [`ExtentWriter::into_inner`]).
pub(crate) struct ExtentWriter<W: Write> {
    inner: W,
    /// Bytes not yet written; they start at file offset `start`.
    buf: Vec<u8>,
    start: u64,
}

impl<W: Write> ExtentWriter<W> {
    /// A writer at offset 0 of the new file `inner`.
    pub(crate) fn new(inner: W) -> Self {
        ExtentWriter {
            inner,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Writes what is buffered and returns the file.
    pub(crate) fn into_inner(mut self) -> io::Result<W> {
        self.write_buffered()?;
        Ok(self.inner)
    }

    fn write_buffered(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf)?;
            self.start += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }
}

impl<W: Write> Write for ExtentWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let at = self.start + self.buf.len() as u64;
        let room = EXTENT - (at % EXTENT as u64) as usize;
        if self.buf.is_empty() && room == EXTENT && data.len() >= EXTENT {
            // Whole extents straight from the caller's bytes.
            let n = data.len() / EXTENT * EXTENT;
            self.inner.write_all(&data[..n])?;
            self.start += n as u64;
            return Ok(n);
        }
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(EXTENT);
        }
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if n == room {
            self.write_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.write_buffered()?;
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Records each `write` call's offset and length.
    #[derive(Default)]
    struct Recorder {
        bytes: Vec<u8>,
        writes: Vec<(usize, usize)>,
    }

    impl Write for Recorder {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.writes.push((self.bytes.len(), data.len()));
            self.bytes.extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the sizes of the caller's writes, the bytes arrive
        /// unchanged and in order, and every write but the last covers
        /// whole aligned extents.
        #[test]
        fn writes_whole_aligned_extents(sizes in proptest::collection::vec(
            prop_oneof![0usize..200, 0usize..70_000, 0usize..3 * EXTENT],
            0..40,
        )) {
            let mut w = ExtentWriter::new(Recorder::default());
            let mut want = Vec::new();
            for (i, &len) in sizes.iter().enumerate() {
                let chunk: Vec<u8> = (0..len).map(|j| (i * 31 + j * 7) as u8).collect();
                w.write_all(&chunk).unwrap();
                want.extend_from_slice(&chunk);
            }
            let rec = w.into_inner().unwrap();
            prop_assert!(rec.bytes == want, "bytes differ");
            let Some((&(last_off, last_len), whole)) = rec.writes.split_last() else {
                prop_assert!(want.is_empty());
                return Ok(());
            };
            for &(off, len) in whole {
                prop_assert!(off % EXTENT == 0 && len % EXTENT == 0 && len > 0,
                    "write of {len} bytes at {off}");
            }
            prop_assert_eq!(last_off % EXTENT, 0);
            prop_assert_eq!(last_off + last_len, want.len());
        }
    }

    #[test]
    fn flush_writes_the_tail() {
        let mut w = ExtentWriter::new(Recorder::default());
        w.write_all(&[1; 100]).unwrap();
        assert!(w.inner.bytes.is_empty(), "buffered until an extent fills");
        w.flush().unwrap();
        assert_eq!(w.inner.writes, vec![(0, 100)]);
        // After a flush mid-extent, writes still end on extent boundaries.
        w.write_all(&vec![2; EXTENT]).unwrap();
        w.flush().unwrap();
        assert_eq!(
            w.inner.writes,
            vec![(0, 100), (100, EXTENT - 100), (EXTENT, 100)]
        );
    }
}
