//! Model bundle parsers: `model.json` (serde_json, then field-by-field
//! validation) and `weights.safetensors`, checked against a schema. Input
//! layout: u32 LE length of the json, the json, then the weights. Seeded
//! from the parity test's bundles. Every outcome must be a model or a
//! typed error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vstore::fuzzing::parse_bundle(data);
});
