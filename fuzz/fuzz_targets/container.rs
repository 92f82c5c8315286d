//! Any bytes, parsed as a vstore file of every kind (framing, metadata
//! checksum, rkyv validation, data checksums), must give a result or an
//! error, never a panic or an out-of-bounds read.
//!
//! Seed corpus: the golden stores' files of every format version
//! (`fuzz/run.sh`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vstore::fuzzing::parse_file(data);
});
