//! Storage faults: a failing fdatasync (the store's fault-injection hook), a
//! full disk (the data folder on a small size-limited tmpfs; needs root for
//! mount, as CI has), a corrupt store and a store in use. The gateway never
//! acknowledges what it did not store, stays failed after a failed write or
//! sync until it is restarted, and never starts on a silently empty store.

mod common;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use schakel::proto::{AckRequest, ReleaseRequest};
use schakel::store::SyncFaults;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The gRPC services whose health is reported, besides the whole server ("").
const SERVICES: &[&str] = &[
    "",
    "schakel.v1.Intake",
    "schakel.v1.Registry",
    "schakel.v1.Operations",
];

fn assert_store_failed(result: Result<impl std::fmt::Debug, tonic::Status>, what: &str) {
    match result {
        Err(status) => {
            assert_eq!(status.code(), Code::Unavailable, "{what}: {status:?}");
            assert_eq!(code_of(&status), "STORE_FAILED", "{what}: {status:?}");
        }
        Ok(answer) => panic!("{what}: expected UNAVAILABLE STORE_FAILED, got {answer:?}"),
    }
}

/// Waits (Health/Watch, bounded) until `service` reports `want`.
async fn wait_for_health(server: &TestServer, service: &str, want: ServingStatus) {
    watch_health(server.channel(REGISTRY).await, service, want).await;
}

async fn watch_health(channel: tonic::transport::Channel, service: &str, want: ServingStatus) {
    let mut health = HealthClient::new(channel);
    let mut stream = health
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let seen = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(update) = stream.message().await.expect("health stream") {
            if update.status == want as i32 {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        seen,
        Ok(true),
        "health of {service:?} never became {want:?}"
    );
}

async fn check_health(server: &TestServer, service: &str) -> ServingStatus {
    let mut health = HealthClient::new(server.channel(REGISTRY).await);
    let status = health
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    ServingStatus::try_from(status).expect("a known status")
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Pulls and acks until the queue is empty; every message id once.
async fn drain(server: &TestServer) -> HashSet<String> {
    const LEASE_MS: u32 = 1000;
    let mut registry = server.registry().await;
    let mut delivered = HashSet::new();
    loop {
        let pulled = registry
            .pull(pull_request(5000, 0, LEASE_MS))
            .await
            .expect("pull")
            .into_inner();
        if pulled.records.is_empty() {
            // Empty because everything was acked, not because leases are still
            // live: once every lease given out has run out, nothing comes back.
            tokio::time::sleep(Duration::from_millis(u64::from(LEASE_MS) + 300)).await;
            let again = registry
                .pull(pull_request(5000, 0, LEASE_MS))
                .await
                .expect("pull")
                .into_inner();
            assert_eq!(again.records.len(), 0, "unacked records came back");
            return delivered;
        }
        let expected: Vec<(String, i32, u64)> = pulled
            .records
            .iter()
            .map(|r| {
                (
                    r.lease_token.clone(),
                    schakel::proto::TokenOutcome::Acked as i32,
                    r.sequence,
                )
            })
            .collect();
        let tokens = pulled
            .records
            .iter()
            .map(|r| r.lease_token.clone())
            .collect();
        for r in pulled.records {
            assert!(delivered.insert(r.message_id), "delivered twice");
        }
        let acked = registry
            .ack(AckRequest {
                lease_tokens: tokens,
            })
            .await
            .expect("ack")
            .into_inner();
        let answered: Vec<(String, i32, u64)> = acked
            .results
            .into_iter()
            .map(|r| (r.lease_token, r.outcome, r.sequence))
            .collect();
        assert_eq!(answered, expected, "every token ACKED with its sequence");
    }
}

fn records(prefix: &str, n: usize) -> Vec<schakel::proto::VaccinationRecord> {
    (0..n)
        .map(|i| record(&format!("{prefix}-{i:03}")))
        .collect()
}

/// Issue 11 item 2, issue 17 item 3: one failing fdatasync fails the store
/// until a restart. That batch, the same batch again and five more batches
/// are UNAVAILABLE `STORE_FAILED` (never DUPLICATE, never OK), Pull sees
/// nothing of it, health is NOT_SERVING, the metric says 1; after a restart
/// on the same data everything acknowledged is delivered exactly once.
#[tokio::test]
async fn a_failed_fdatasync_fails_the_store_until_a_restart() {
    let faults = SyncFaults::default();
    let mut server = TestServer::start_with(|c| c.store.sync_faults = faults.clone()).await;
    let mut intake = server.intake(SUPPLIER_A).await;
    let mut registry = server.registry().await;
    for service in SERVICES {
        assert_eq!(check_health(&server, service).await, ServingStatus::Serving);
    }

    // Before: one batch delivered and acked, one batch queued, one leased.
    let receipt = intake
        .submit_batch(batch("before-1", records("before-1", 20)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.accepted, 20);
    assert_eq!(drain(&server).await.len(), 20);
    let acknowledged: HashSet<String> = records("before-2", 20)
        .into_iter()
        .map(|r| r.message_id)
        .collect();
    let receipt = intake
        .submit_batch(batch("before-2", records("before-2", 20)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.accepted, 20);
    let leased = registry
        .pull(pull_request(5, 0, 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(leased.records.len(), 5);
    let tokens: Vec<String> = leased
        .records
        .iter()
        .map(|r| r.lease_token.clone())
        .collect();

    faults.fail_next(1);
    let failed = batch("failed", records("failed", 20));
    assert_store_failed(intake.submit_batch(failed.clone()).await, "the batch");
    assert_store_failed(
        intake.submit_batch(failed.clone()).await,
        "the same batch again (not DUPLICATE)",
    );
    for n in 0..5 {
        let next = batch(&format!("next-{n}"), records(&format!("next-{n}"), 20));
        assert_store_failed(intake.submit_batch(next).await, "a later batch");
    }
    let mut other = server.intake(SUPPLIER_B).await;
    assert_store_failed(
        other.submit_batch(batch("b", records("b", 1))).await,
        "another supplier",
    );
    assert_store_failed(
        registry.pull(pull_request(100, 0, 60_000)).await,
        "pull (sees nothing of it)",
    );
    assert_store_failed(
        registry
            .ack(AckRequest {
                lease_tokens: tokens.clone(),
            })
            .await,
        "ack",
    );
    assert_store_failed(
        registry
            .release(ReleaseRequest {
                lease_tokens: tokens,
            })
            .await,
        "release",
    );
    for service in SERVICES {
        wait_for_health(&server, service, ServingStatus::NotServing).await;
    }
    let (code, text) = server.http_get("/metrics").await;
    assert_eq!(code, 200);
    assert_eq!(metric(&text, "schakel_store_failed"), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, "schakel_store_sync_failures_total"),
        Some(1.0),
        "{text}"
    );
    let (code, page) = server.http_get("/").await;
    assert_eq!(code, 200);
    assert!(page.contains(r#"id="store-failed""#), "{page}");
    assert!(page.contains("os error 5"), "{page}");
    // Load balancers without a certificate see it on the operations port.
    assert_eq!(
        server.http_get("/healthz").await,
        (503, "NOT_SERVING\n".to_string())
    );

    // A restart on the same data recovers from what is on disk.
    server.restart().await;
    for service in SERVICES {
        assert_eq!(check_health(&server, service).await, ServingStatus::Serving);
    }
    assert_eq!(
        server.http_get("/healthz").await,
        (200, "SERVING\n".to_string())
    );
    let (_, text) = server.http_get("/metrics").await;
    assert_eq!(metric(&text, "schakel_store_failed"), Some(0.0), "{text}");
    let mut intake = server.intake(SUPPLIER_A).await;
    let receipt = intake.submit_batch(failed).await.unwrap().into_inner();
    // The injected fault failed the sync after sled wrote its log to the OS,
    // so the batch may really be on disk: then it is DUPLICATE, else ACCEPTED.
    assert_eq!(receipt.accepted + receipt.duplicate, 20, "{receipt:?}");
    let mut expected = acknowledged;
    expected.extend(records("failed", 20).into_iter().map(|r| r.message_id));
    assert_eq!(drain(&server).await, expected);
}

struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir").keep();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            ok.success(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        Tmpfs(dir)
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(ok.success(), "remount");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test]
async fn full_disk_fails_the_store_acknowledges_nothing_and_a_restart_recovers() {
    let disk = Tmpfs::mount("6m");
    let data = disk.0.join("data");
    let mut server = TestServer::start_with(|c| c.data_dir = data.clone()).await;
    let mut intake = server.intake(SUPPLIER_A).await;

    // Fill the disk: every batch is either fully acknowledged or refused.
    let mut acknowledged = HashSet::new();
    let mut refused = None;
    for b in 0..400 {
        let records: Vec<_> = (0..100)
            .map(|i| record(&format!("fill-{b:04}-{i:03}")))
            .collect();
        match intake
            .submit_batch(batch(&format!("fill-{b}"), records.clone()))
            .await
        {
            Ok(receipt) => {
                let receipt = receipt.into_inner();
                assert_eq!(receipt.accepted, 100, "{receipt:?}");
                acknowledged.extend(records.into_iter().map(|r| r.message_id));
            }
            Err(status) => {
                refused = Some((b, status));
                break;
            }
        }
    }
    let (full_at, status) = refused.expect("the 6 MiB disk filled up");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(code_of(&status), "STORE_FAILED");
    assert!(!acknowledged.is_empty());

    // Space returns, but the store stays failed (no in-process reopen): the
    // retried batch is still refused and health says NOT_SERVING.
    disk.resize("256m");
    let retry: Vec<_> = (0..100)
        .map(|i| record(&format!("fill-{full_at:04}-{i:03}")))
        .collect();
    assert_store_failed(
        intake
            .submit_batch(batch(&format!("fill-{full_at}"), retry.clone()))
            .await,
        "a retry once space returned",
    );
    wait_for_health(&server, "", ServingStatus::NotServing).await;
    assert_store_failed(
        server
            .registry()
            .await
            .pull(pull_request(100, 0, 60_000))
            .await,
        "pull",
    );
    // sled refuses reads too after its write error: the metrics and the
    // status page still say why.
    let (code, text) = server.http_get("/metrics").await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(metric(&text, "schakel_store_failed"), Some(1.0), "{text}");
    let (code, page) = server.http_get("/").await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains(r#"id="store-failed""#), "{page}");

    // A restart recovers from what is on disk: the retry is answered, and
    // everything acknowledged is delivered exactly once.
    server.restart().await;
    let mut intake = server.intake(SUPPLIER_A).await;
    let receipt = intake
        .submit_batch(batch(&format!("fill-{full_at}"), retry.clone()))
        .await
        .expect("the restarted gateway stores the retry")
        .into_inner();
    assert_eq!(receipt.accepted + receipt.duplicate, 100, "{receipt:?}");
    acknowledged.extend(retry.into_iter().map(|r| r.message_id));
    assert_eq!(drain(&server).await, acknowledged);
}

async fn run_on(data: std::path::PathBuf) -> Result<(), schakel::server::ServerError> {
    // A throwaway gateway config pointing at `data`; the harness's PKI is reused.
    let template = TestServer::start().await;
    let mut config = template.config.clone();
    config.data_dir = data;
    // Port 0 only: no test may depend on a fixed port (the default operations
    // port may be taken by another gateway on the machine).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Must fail before serving; the shutdown timer is a backstop only.
    schakel::server::run_with_http(
        config,
        listener,
        Some(http),
        tokio::time::sleep(std::time::Duration::from_secs(10)),
    )
    .await
}

#[tokio::test]
async fn a_corrupt_store_is_a_clear_error_at_start() {
    let mut server = TestServer::start().await;
    server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("b", vec![record("m")]))
        .await
        .unwrap();
    server.stop().await;
    let data = server.config.data_dir.clone();
    // Overwrite sled's log with garbage.
    let db = data.join("db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    std::fs::write(&db, vec![0xA5u8; len.max(4096)]).unwrap();
    let err = run_on(data.clone())
        .await
        .expect_err("must not start on a corrupt store");
    let text = err.to_string();
    assert!(
        matches!(err, schakel::server::ServerError::Store(_)),
        "a store error: {text}"
    );
    assert!(
        text.contains("does not read back") && text.contains(&data.display().to_string()),
        "{text}"
    );
}

#[tokio::test]
async fn a_store_in_use_by_another_gateway_is_a_clear_error() {
    let server = TestServer::start().await;
    // The first gateway holds the store; make sure it has opened it.
    server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("b", vec![record("m")]))
        .await
        .unwrap();
    let err = run_on(server.config.data_dir.clone())
        .await
        .expect_err("the store is locked");
    let text = err.to_string();
    assert!(text.contains("opening store at"), "{text}");
}

/// The `schakel serve` test hook `SCHAKEL_TEST_FAIL_SYNC_AFTER` fails a sync
/// of the real binary: the gateway stays up refusing writes, health is
/// NOT_SERVING, the metric is 1, the log says why in exactly one ERROR line,
/// and SIGTERM still stops it cleanly.
#[tokio::test]
async fn the_serve_test_hook_fails_a_sync_and_the_log_says_why_once() {
    // At start 8 sync rounds register the 3 suppliers and 5 identities of the
    // child's config; the next round (a submit's or the periodic check's) fails.
    let gateway = process::ChildGateway::start(&[("SCHAKEL_TEST_FAIL_SYNC_AFTER", "8")]);
    let channel = gateway.channel("supplier-a", Duration::from_secs(60)).await;
    let mut intake = schakel::proto::intake_client::IntakeClient::new(channel.clone());
    for n in 0..3 {
        assert_store_failed(
            intake
                .submit_batch(batch(&format!("p{n}"), records(&format!("p{n}"), 5)))
                .await,
            "a batch",
        );
    }
    watch_health(channel, "", ServingStatus::NotServing).await;
    let text = process::http_get(gateway.http_addr, "/metrics").await;
    assert_eq!(metric(&text, "schakel_store_failed"), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, "schakel_store_sync_failures_total"),
        Some(1.0),
        "{text}"
    );
    assert!(
        gateway.terminate().success(),
        "a failed gateway stops cleanly"
    );
    let log = std::fs::read_to_string(&gateway.log).expect("log");
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("store FAILED")).collect();
    assert_eq!(failed.len(), 1, "{log}");
    assert!(failed[0].contains("ERROR"), "{}", failed[0]);
    assert!(failed[0].contains("os error 5"), "{}", failed[0]);
    assert!(
        failed[0].contains("syncing the store to disk"),
        "{}",
        failed[0]
    );
}
