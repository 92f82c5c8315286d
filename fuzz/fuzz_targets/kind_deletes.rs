//! One file kind's parser alone (deletes): framing, metadata checksum, rkyv
//! validation and semantic checks, data checksums; then the same bytes with
//! the checksums fixed up. Seeded from the golden store's files of that kind.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vstore::fuzzing::parse_kind(data, "deletes");
});
