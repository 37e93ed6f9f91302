//! Personal data sent without consent is rejected and appears nowhere: not in
//! the data folder, the logs (even at trace level), the metrics, the status
//! page or the receipt. And no patient value of any record, consented and
//! accepted or rejected, is ever in the log: the whole log of the real
//! process at trace level (every thread, the blocking pool included) is
//! searched, through submit, pull, ack and release.

mod common;

use std::time::Duration;

use common::process::{http_get, read_all_below, ChildGateway};
use common::{anonymous_record, batch, record};
use schakel::proto::intake_client::IntakeClient;
use schakel::proto::registry_client::RegistryClient;
use schakel::proto::{AckRequest, Patient, PullRequest, ReleaseRequest, TokenOutcome};

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
        .collect::<Vec<_>>();
    // With consent: one accepted (stored and delivered, but never logged) and
    // one rejected for its BSN (neither stored nor logged). Each value occurs
    // nowhere else.
    let consented = ["010015838", "Wubbolt", "ter", "Oostwoudsma", "1944-07-29"];
    let rejected = ["123456789", "Hiskje", "Zwaagstra", "1933-01-17"];
    let mut accepted_record = record("consented-1");
    accepted_record.patient = Some(Patient {
        bsn: consented[0].into(),
        given_names: consented[1].into(),
        infix: consented[2].into(),
        family_name: consented[3].into(),
        birth_date: consented[4].into(),
    });
    let mut rejected_record = record("rejected-1");
    rejected_record.patient = Some(Patient {
        bsn: rejected[0].into(),
        given_names: rejected[1].into(),
        infix: String::new(),
        family_name: rejected[2].into(),
        birth_date: rejected[3].into(),
    });
    let mut all = records;
    all.push(accepted_record);
    all.push(rejected_record);
    let channel = gw.channel("supplier-a", Duration::from_secs(30)).await;
    let receipt = IntakeClient::new(channel)
        .submit_batch(batch("leaky-batch", all))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(
        (receipt.accepted, receipt.duplicate, receipt.rejected),
        (1, 0, 21)
    );
    let codes: Vec<(u32, Vec<&str>)> = receipt
        .results
        .iter()
        .map(|r| {
            (
                r.index,
                r.findings.iter().map(|f| f.code.as_str()).collect(),
            )
        })
        .collect();
    let mut expected: Vec<(u32, Vec<&str>)> = (0..20)
        .map(|i| (i, vec!["PII_WITHOUT_CONSENT"; 4]))
        .collect();
    expected.push((21, vec!["BSN_CHECKSUM"]));
    assert_eq!(codes, expected);
    // The registry takes the accepted record: released once, then acked.
    let mut registry = RegistryClient::new(gw.channel("registry", Duration::from_secs(30)).await);
    let pull = PullRequest {
        max_records: 10,
        wait_ms: 0,
        lease_ms: 30_000,
    };
    let first = registry
        .pull(pull)
        .await
        .expect("pull")
        .into_inner()
        .records;
    assert_eq!(first.len(), 1);
    let released = registry
        .release(ReleaseRequest {
            lease_tokens: vec![first[0].lease_token.clone()],
        })
        .await
        .expect("release")
        .into_inner();
    assert_eq!(released.results[0].outcome, TokenOutcome::Released as i32);
    let again = registry
        .pull(pull)
        .await
        .expect("pull")
        .into_inner()
        .records;
    assert_eq!(again.len(), 1);
    let acked = registry
        .ack(AckRequest {
            lease_tokens: vec![again[0].lease_token.clone()],
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
        [(TokenOutcome::Acked as i32, again[0].sequence)]
    );
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
    // Never logged, whatever the record's fate (the infix "ter" is too short
    // to search for on its own).
    for needle in consented
        .iter()
        .chain(&rejected)
        .chain(&[bsn, given, family, birth])
        .filter(|v| v.len() > 3)
    {
        assert!(!log.contains(needle), "the log contains {needle:?}");
    }
    // The 8-digit form of the accepted BSN is not there either.
    assert!(!log.contains(&consented[0][1..]), "the log contains a BSN");
    let mut places = read_all_below(&gw.data_dir());
    assert!(!places.is_empty(), "the data folder exists");
    // The rejected record is stored nowhere (the accepted one is, of course).
    for (path, bytes) in &places {
        for needle in rejected {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{} contains a rejected record's {needle:?}",
                path.display()
            );
        }
    }
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
