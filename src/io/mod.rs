//! The bottom layer: the file system as the writer uses it ([`fs`], behind
//! a trait so tests can inject failures), the one place files are mapped
//! ([`mmap`]), and the writer of whole 2 MiB extents ([`extents`]). It
//! knows nothing of the format.

pub(crate) mod extents;
pub(crate) mod fs;
pub(crate) mod mmap;
