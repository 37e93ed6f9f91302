//! Personal data sent without consent is rejected and appears nowhere: not in
//! the data folder, the logs (even at trace level), the metrics, the status
//! page or the receipt.

mod common;

use std::time::Duration;

use common::process::{http_get, read_all_below, ChildGateway};
use common::{anonymous_record, batch};
use schakel::proto::intake_client::IntakeClient;
use schakel::proto::Patient;

#[tokio::test]
async fn pii_without_consent_is_nowhere_even_with_trace_logging() {
    let gw = ChildGateway::start(&[("SCHAKEL_LOG", "trace")]);
    // Passes the eleven test; the names occur nowhere else.
    let (bsn, given, family, birth) = ("111222333", "Zebulonius", "Quixotewright", "1937-02-11");
    let records = (0..20)
        .map(|i| {
            let mut r = anonymous_record(&format!("leak-{i}"));
            r.patient = Some(Patient {
                bsn: bsn.into(),
                given_names: given.into(),
                infix: String::new(),
                family_name: family.into(),
                birth_date: birth.into(),
            });
            r
        })
        .collect();
    let channel = gw.channel("supplier-a", Duration::from_secs(30)).await;
    let receipt = IntakeClient::new(channel)
        .submit_batch(batch("leaky-batch", records))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(receipt.rejected, 20);
    assert!(receipt
        .results
        .iter()
        .all(|r| r.findings.iter().all(|f| f.code == "PII_WITHOUT_CONSENT")));
    let echoed = format!("{receipt:?}");
    let metrics = http_get(gw.http_addr, "/metrics").await;
    assert!(
        metrics.contains("schakel_records_rejected_total"),
        "metrics are served: {metrics:.200}"
    );
    let status_page = http_get(gw.http_addr, "/status").await;
    assert!(
        status_page.contains("supplier-a"),
        "the status page is served"
    );
    let status = gw.terminate();
    assert!(status.success(), "graceful exit on SIGTERM: {status:?}");

    let log = std::fs::read_to_string(&gw.log).expect("log");
    assert!(
        log.contains("leaky-batch"),
        "the batch id is logged (the log works)"
    );
    assert!(
        log.contains("TRACE") || log.contains("trace"),
        "trace logging was on"
    );
    eprintln!(
        "searched: log {} bytes, metrics {} bytes",
        log.len(),
        metrics.len()
    );
    let mut places = read_all_below(&gw.data_dir());
    assert!(!places.is_empty(), "the data folder exists");
    places.push((gw.log.clone(), log.into_bytes()));
    places.push(("receipt".into(), echoed.into_bytes()));
    places.push(("/metrics".into(), metrics.into_bytes()));
    places.push(("/status".into(), status_page.into_bytes()));
    for (path, bytes) in &places {
        for needle in [bsn, given, family, birth] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} contains personal data ({} bytes searched)",
                path.display(),
                bytes.len()
            );
        }
    }
}
