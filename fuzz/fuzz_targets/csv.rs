//! Any bytes, read as a CSV item table by vstore-tool (keyed by `id` and
//! by `item_id`), must give a table or an error, never a panic. A table
//! must have one value per id in every column.
//!
//! Seed corpus: `fuzz/seeds/csv` and the tool's test data (`fuzz/run.sh`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vstore_tool::table::{table_from_bytes, Values};

fuzz_target!(|data: &[u8]| {
    for id in ["id", "item_id"] {
        if let Ok(t) = table_from_bytes(Path::new("input.csv"), data, id, &[]) {
            assert_eq!(t.lines.len(), t.ids.len());
            for c in &t.columns {
                let n = match &c.values {
                    Values::Int(v) => v.len(),
                    Values::Float(v) => v.len(),
                };
                assert_eq!(n, t.ids.len(), "column {}", c.name);
            }
            let _ = t.check_unique();
        }
    }
});
