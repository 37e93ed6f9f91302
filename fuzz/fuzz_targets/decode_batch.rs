//! Arbitrary bytes as a `Batch` on the wire: decoding and the header check
//! must never panic, whatever arrives.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use schakel::proto::Batch;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = Batch::decode(data) {
        let rules = schakel::schema::Rules::default();
        let _ = schakel::schema::validate_header(batch.header.as_ref(), batch.records.len(), &rules);
        // Re-encoding what decoded must decode to the same message.
        let again = Batch::decode(batch.encode_to_vec().as_slice()).expect("round trip");
        assert_eq!(again, batch);
    }
});
