//! Structured logs of a batch: every line written while a batch is handled
//! carries the supplier and the batch id (span fields), in the JSON format of
//! `--log-json`, and no line carries patient data. Its own test binary, so no
//! other test's gateway writes into the captured log.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_line_of_a_batch_names_supplier_and_batch_and_no_patient_data() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_env_filter("schakel=debug")
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start().await;
    let mut bad = record("log-2");
    if let Some(p) = bad.patient.as_mut() {
        p.bsn = "123456789".into();
    }
    server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("log-check-batch", vec![record("log-1"), bad]))
        .await
        .expect("submit");

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .collect();
    let message = |l: &serde_json::Value| l["fields"]["message"].as_str().unwrap_or("").to_owned();
    let of_batch: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| ["batch received", "batch stored"].contains(&message(l).as_str()))
        .collect();
    assert_eq!(
        of_batch.len(),
        2,
        "the intake's and the store's line: {text}"
    );
    for line in of_batch {
        assert_eq!(line["span"]["name"], "submit_batch", "{line}");
        assert_eq!(line["span"]["supplier"], SUPPLIER_A, "{line}");
        assert_eq!(line["span"]["batch"], "log-check-batch", "{line}");
    }
    for forbidden in ["249566758", "123456789", "Berg", "1950-04-12"] {
        assert!(!text.contains(forbidden), "{forbidden} in the log: {text}");
    }
}
