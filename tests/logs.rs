//! Structured logs of a batch: every line written while a batch is handled
//! carries the supplier and the batch id (span fields), every line of a pull or
//! an ack the call and the registry identity, in the JSON format of
//! `--log-json`, and no line carries patient data. Its own test binary, so no
//! other test binary's gateway writes into the captured log.
//!
//! The subscriber is the process-wide default, at trace level: a per-thread
//! subscriber (`set_default`) would miss what runs on other threads, such as
//! validation and the store in `spawn_blocking`. Both tests of this binary
//! write into the one capture, so each looks only at its own lines.

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

/// The process-wide capture, installed once for the whole test binary.
fn captured() -> Captured {
    static CAPTURED: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    CAPTURED
        .get_or_init(|| {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .json()
                .with_env_filter("schakel=trace")
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber)
                .expect("the only global subscriber of this binary");
            captured
        })
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_batch_names_supplier_and_batch_and_no_patient_data() {
    let captured = captured();
    let server = TestServer::start().await;
    // Patient values that occur nowhere else, in an accepted (consented)
    // record and in a rejected one.
    let mut good = record("log-1");
    let p = good.patient.as_mut().unwrap();
    p.bsn = "010015838".into();
    p.given_names = "Wubbolt".into();
    p.infix = "ter".into();
    p.family_name = "Oostwoudsma".into();
    p.birth_date = "1944-07-29".into();
    let mut bad = good.clone();
    bad.message_id = "log-2".into();
    let p = bad.patient.as_mut().unwrap();
    p.bsn = "123456789".into();
    p.given_names = "Hiskje".into();
    p.family_name = "Zwaagstra".into();
    p.birth_date = "1933-01-17".into();
    server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("log-check-batch", vec![good, bad]))
        .await
        .expect("submit");
    let mut registry = server.registry().await;
    let pulled = registry
        .pull(schakel::proto::PullRequest {
            max_records: 10,
            ..Default::default()
        })
        .await
        .expect("pull")
        .into_inner()
        .records;
    assert_eq!(pulled.len(), 1);
    let acked = registry
        .ack(schakel::proto::AckRequest {
            lease_tokens: vec![pulled[0].lease_token.clone()],
        })
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(
        acked
            .results
            .iter()
            .map(|r| (r.outcome, r.sequence))
            .collect::<Vec<_>>(),
        [(
            schakel::proto::TokenOutcome::Acked as i32,
            pulled[0].sequence
        )]
    );
    // The store's work of the batch ran on the blocking pool: seen all the same.
    drop(server);

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
    for (call, msg) in [("pull", "pulled"), ("ack", "acked")] {
        let line = lines
            .iter()
            .find(|l| message(l) == msg)
            .unwrap_or_else(|| panic!("no {msg:?} line: {text}"));
        assert_eq!(line["span"]["name"], "registry", "{line}");
        assert_eq!(line["span"]["call"], call, "{line}");
        let identity = line["span"]["identity"].as_str().unwrap_or("");
        assert!(identity.contains("registry"), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "TRACE" || l["level"] == "DEBUG"),
        "debug and trace lines are captured"
    );
    for forbidden in [
        "010015838",
        "10015838",
        "Wubbolt",
        "Oostwoudsma",
        "1944-07-29",
        "123456789",
        "Hiskje",
        "Zwaagstra",
        "1933-01-17",
    ] {
        assert!(!text.contains(forbidden), "{forbidden} in the log: {text}");
    }
}

#[tokio::test]
async fn an_overdue_supplier_is_warned_about_by_id_only() {
    use std::time::{Duration, SystemTime};

    use schakel::store::{Store, StoreOptions, Supplier};

    let captured = captured();

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let now = SystemTime::now();
    for (id, registered) in [("quiet-one", 3 * 3600), ("fresh-one", 60)] {
        store
            .put_supplier(&Supplier {
                id: id.into(),
                name: format!("{id} contact person Jansen"),
                contact: "servicedesk@example.org".into(),
                suspended: false,
                created_at: now - Duration::from_secs(registered),
                ura: None,
                identity_policy: Default::default(),
            })
            .unwrap();
    }
    let monitor = schakel::ops::Monitor::new(
        store,
        schakel::ops::OpsSettings {
            overdue_after: Duration::from_secs(3600),
            audit_retention: Duration::from_secs(5 * 365 * 86_400),
            check_interval: Duration::from_secs(300),
        },
    )
    .unwrap();
    let report = monitor.check(now).unwrap();
    assert_eq!(report.overdue, ["quiet-one"]);

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let warnings: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON log line"))
        // This test's suppliers only: the other test's gateway logs too.
        .filter(|l| l["level"] == "WARN")
        .filter(|l| {
            ["quiet-one", "fresh-one"].contains(&l["fields"]["supplier"].as_str().unwrap_or(""))
        })
        .collect();
    assert_eq!(warnings.len(), 1, "{text}");
    assert_eq!(warnings[0]["fields"]["supplier"], "quiet-one");
    assert_eq!(warnings[0]["fields"]["last_batch_at"], "never");
    assert!(!text.contains("Jansen") && !text.contains("servicedesk@"));
}
