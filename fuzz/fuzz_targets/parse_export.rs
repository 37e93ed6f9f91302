//! Arbitrary bytes through the export-file parser (CSV, NDJSON, JSON batch):
//! never a panic; every row ends as a record or as a problem, in file order;
//! a problem names a known code and never carries the row's content.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schakel::export::{parse, CODE_COLUMN_COUNT, CODE_INVALID_VALUE};

/// The first byte picks the file name, and with it the layout.
const NAMES: [&str; 5] = ["day.csv", "day.ndjson", "day.jsonl", "day.json", "day.txt"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, bytes)) = data.split_first() else {
        return;
    };
    let name = NAMES[usize::from(pick) % NAMES.len()];
    let lines = 1 + bytes.iter().filter(|&&c| c == b'\n').count() as u64;
    match parse(name, bytes) {
        Err(e) => {
            let _ = e.to_string();
        }
        Ok(file) => {
            assert!(file.rows() > 0, "a parsed file without rows");
            let json_batch = matches!(file.format, schakel::export::Format::JsonBatch);
            for r in &file.records {
                assert!(r.line >= 1, "record line 0");
                assert!(json_batch || r.line <= lines, "record line past the end");
            }
            for p in &file.problems {
                assert!(p.line >= 1, "problem line 0");
                assert!(json_batch || p.line <= lines, "problem line past the end");
                assert!(
                    p.code == CODE_COLUMN_COUNT || p.code == CODE_INVALID_VALUE,
                    "unknown problem code {}",
                    p.code
                );
            }
            let order: Vec<u64> = file.records.iter().map(|r| r.line).collect();
            assert!(order.windows(2).all(|w| w[0] < w[1]), "records out of file order");
        }
    }
});
