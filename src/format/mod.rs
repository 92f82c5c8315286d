//! The on-disk format (`format/FORMAT.md`): the container every file shares
//! ([`container`]: header, footer, checksums, block layout), the archived
//! metadata types ([`meta`]), file names ([`names`]), how data blocks are
//! encoded ([`encode`]), the library's record of dropped embedding
//! versions ([`dropped`]) and the id index's hash table and Bloom filter
//! ([`idindex`]). Uses only `io`, `schema` and `error`.

pub(crate) mod container;
pub(crate) mod dropped;
pub(crate) mod encode;
pub(crate) mod idindex;
pub(crate) mod legacy;
pub(crate) mod meta;
pub(crate) mod names;
