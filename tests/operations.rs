//! Operations over the wire: metrics on the HTTP port, gRPC health and
//! reflection, daily-delivery monitoring, dead letters, the audit trail and the
//! status page. Real gateway, real mTLS, real sled.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use schakel::proto::*;
use schakel::store::{AuditQuery, BatchTally, Identity, Role, Store, StoreOptions};
use tonic::Code;

/// The value of the series `name` whose labels include every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, label_text) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|p| p == format!("{k}=\"{v}\"")));
            (series_name == name && all).then(|| value.parse().ok())?
        })
}

async fn scrape(server: &TestServer) -> String {
    let (status, body) = server.http_get("/metrics").await;
    assert_eq!(status, 200, "{body}");
    body
}

fn bad_bsn(id: &str) -> VaccinationRecord {
    let mut r = record(id);
    if let Some(p) = r.patient.as_mut() {
        p.bsn = "123456789".into(); // fails the eleven test
    }
    r
}

fn tokens(pulled: &PullResponse) -> Vec<String> {
    pulled
        .records
        .iter()
        .map(|r| r.lease_token.clone())
        .collect()
}

#[tokio::test]
async fn metrics_follow_a_push_a_pull_and_a_rejection() {
    let server = TestServer::start().await;
    let before = scrape(&server).await;
    assert_eq!(metric(&before, "schakel_queue_depth", &[]), Some(0.0));
    assert_eq!(
        metric(
            &before,
            "schakel_records_total",
            &[("supplier", SUPPLIER_A), ("outcome", "accepted")]
        ),
        None,
        "no series before the first batch"
    );

    let mut intake = server.intake(SUPPLIER_A).await;
    let receipt = intake
        .submit_batch(batch(
            "day-1",
            vec![record("m-1"), anonymous_record("m-2"), bad_bsn("m-3")],
        ))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(
        (receipt.accepted, receipt.duplicate, receipt.rejected),
        (2, 0, 1)
    );
    intake
        .submit_batch(batch("day-1-again", vec![record("m-1")]))
        .await
        .expect("resubmit");
    let mut truncated = batch("day-1-cut", vec![record("m-9")]);
    if let Some(h) = truncated.header.as_mut() {
        h.record_count = 5;
    }
    let refused = intake.submit_batch(truncated).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(code_of(&refused), "RECORD_COUNT_MISMATCH");

    let after_push = scrape(&server).await;
    let a = |outcome| [("supplier", SUPPLIER_A), ("outcome", outcome)];
    assert_eq!(
        metric(&after_push, "schakel_records_total", &a("accepted")),
        Some(2.0)
    );
    assert_eq!(
        metric(&after_push, "schakel_records_total", &a("duplicate")),
        Some(1.0)
    );
    assert_eq!(
        metric(&after_push, "schakel_records_total", &a("rejected")),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &after_push,
            "schakel_records_rejected_total",
            &[("supplier", SUPPLIER_A), ("code", "BSN_CHECKSUM")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(&after_push, "schakel_batches_total", &a("ok")),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &after_push,
            "schakel_batches_refused_total",
            &[("supplier", SUPPLIER_A), ("code", "RECORD_COUNT_MISMATCH")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &after_push,
            "schakel_batch_duration_seconds_count",
            &[("supplier", SUPPLIER_A)]
        ),
        Some(3.0)
    );
    assert_eq!(metric(&after_push, "schakel_queue_depth", &[]), Some(2.0));
    assert!(metric(&after_push, "schakel_queue_oldest_age_seconds", &[]).is_some_and(|s| s >= 0.0));
    assert!(metric(&after_push, "schakel_store_size_bytes", &[]).is_some_and(|b| b > 0.0));
    let not_after = metric(
        &after_push,
        "schakel_certificate_not_after_seconds",
        &[("role", "supplier"), ("supplier", SUPPLIER_A)],
    )
    .expect("certificate expiry of supplier-a");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        not_after > now,
        "the test certificate is valid: {not_after}"
    );
    assert_eq!(
        metric(
            &after_push,
            "schakel_supplier_overdue",
            &[("supplier", SUPPLIER_A)]
        ),
        Some(0.0)
    );
    assert!(
        !after_push.contains("249566758") && !after_push.contains("Berg"),
        "no personal data in metrics"
    );

    let mut registry = server.registry().await;
    let pulled = registry
        .pull(pull_request(10, 0, 30_000))
        .await
        .expect("pull")
        .into_inner();
    assert_eq!(pulled.records.len(), 2);
    let after_pull = scrape(&server).await;
    assert_eq!(
        metric(&after_pull, "schakel_records_delivered_total", &[]),
        Some(2.0)
    );
    assert_eq!(metric(&after_pull, "schakel_queue_leased", &[]), Some(2.0));
    assert_eq!(
        metric(&after_pull, "schakel_records_acked_total", &[]),
        Some(0.0)
    );

    let acked = registry
        .ack(AckRequest {
            lease_tokens: tokens(&pulled)[..1].to_vec(),
        })
        .await
        .expect("ack")
        .into_inner();
    assert_eq!(acked.results[0].outcome, TokenOutcome::Acked as i32);
    let after_ack = scrape(&server).await;
    assert_eq!(
        metric(&after_ack, "schakel_records_acked_total", &[]),
        Some(1.0)
    );
    assert_eq!(metric(&after_ack, "schakel_queue_depth", &[]), Some(1.0));
    assert_eq!(
        metric(&after_ack, "schakel_leases_expired_total", &[]),
        Some(0.0)
    );
    assert_eq!(metric(&after_ack, "schakel_dead_letters", &[]), Some(0.0));
}

#[tokio::test]
async fn health_answers_serving_and_reflection_lists_the_services() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let server = TestServer::start().await;
    // Any certificate of our CA may ask; no role is needed.
    let mut health = HealthClient::new(server.channel(REGISTRY).await);
    for service in [
        "",
        "schakel.v1.Intake",
        "schakel.v1.Registry",
        "schakel.v1.Operations",
    ] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            answer.status,
            ServingStatus::Serving as i32,
            "service {service:?}"
        );
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "schakel.v1.Nothing".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut reflection = ServerReflectionClient::new(server.channel(SUPPLIER_A).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("expected a service list: {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in [
        "schakel.v1.Intake",
        "schakel.v1.Registry",
        "schakel.v1.Operations",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&expected), "{expected} missing in {names:?}");
    }
}

/// Starts a gateway, lets supplier-a deliver (with a reject), then gives
/// supplier-b a last batch `quiet` ago and supplier "admin" a certificate that
/// expires in 10 days, written to the store while the gateway is stopped.
async fn gateway_with_history(overdue_after_secs: u64, quiet: Duration) -> TestServer {
    let mut server =
        TestServer::start_with(|c| c.ops.overdue_after_secs = overdue_after_secs).await;
    let receipt = server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch(
            "a-today",
            vec![record("a-1"), bad_bsn("a-2"), bad_bsn("a-3")],
        ))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!((receipt.accepted, receipt.rejected), (1, 2));
    server.stop().await;
    {
        let store = Store::open(&server.config.data_dir, StoreOptions::default()).expect("open");
        store
            .record_batch_delivery(
                SUPPLIER_B,
                "b-old",
                SystemTime::now() - quiet,
                &BatchTally {
                    accepted: 4,
                    ..BatchTally::default()
                },
            )
            .expect("old delivery");
        let now = SystemTime::now();
        store
            .put_identity(&Identity {
                fingerprint: "ab".repeat(32),
                role: Role::Registry,
                name: "registry spare cert".into(),
                supplier_id: None,
                subject: "CN=registry-spare".into(),
                serial: "01".into(),
                not_after: now + Duration::from_secs(10 * 86_400),
                added_at: now,
                retire_at: None,
                revoked_at: None,
                origin: Default::default(),
            })
            .expect("identity");
    }
    server.restart().await;
    server
}

#[tokio::test]
async fn an_overdue_supplier_is_reported() {
    // A one-hour window, and supplier-b's last batch two hours ago.
    let server = gateway_with_history(3600, Duration::from_secs(2 * 3600)).await;
    let list = server
        .operations()
        .await
        .list_deliveries(ListDeliveriesRequest {})
        .await
        .expect("deliveries")
        .into_inner();
    assert_eq!(list.overdue_after_secs, 3600);
    let by_id = |id: &str| {
        list.suppliers
            .iter()
            .find(|s| s.supplier_id == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} missing in {list:?}"))
    };
    let a = by_id(SUPPLIER_A);
    assert!(a.delivered_today && !a.overdue, "{a:?}");
    assert_eq!(
        (a.batches_today, a.records_today, a.rejected_today),
        (1, 3, 2)
    );
    assert_eq!(a.last_batch_id, "a-today");
    assert_eq!(
        a.rejects_today,
        vec![CodeCount {
            code: "BSN_CHECKSUM".into(),
            count: 2
        }]
    );
    let b = by_id(SUPPLIER_B);
    assert!(b.overdue, "{b:?}");
    assert_eq!(b.last_batch_id, "b-old");
    assert!(!b.last_batch_at.is_empty());

    let text = scrape(&server).await;
    assert_eq!(
        metric(
            &text,
            "schakel_supplier_overdue",
            &[("supplier", SUPPLIER_B)]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "schakel_supplier_overdue",
            &[("supplier", SUPPLIER_A)]
        ),
        Some(0.0)
    );
    assert_eq!(metric(&text, "schakel_suppliers_overdue", &[]), Some(1.0));

    // The same window against the store directly: the periodic check names it.
    let monitor_store = {
        let mut s = server;
        s.stop().await;
        Store::open(&s.config.data_dir, StoreOptions::default()).expect("open")
    };
    let monitor = schakel::ops::Monitor::new(
        monitor_store,
        schakel::ops::OpsSettings {
            overdue_after: Duration::from_secs(3600),
            audit_retention: Duration::from_secs(5 * 365 * 86_400),
            check_interval: Duration::from_secs(300),
        },
    )
    .expect("monitor");
    let report = monitor.check(SystemTime::now()).expect("check");
    assert_eq!(report.overdue, vec![SUPPLIER_B.to_owned()]);
}

#[tokio::test]
async fn only_admins_may_call_operations() {
    let server = TestServer::start().await;
    let mut as_registry =
        schakel::proto::operations_client::OperationsClient::new(server.channel(REGISTRY).await);
    let refused = as_registry
        .list_dead_letters(ListDeadLettersRequest { limit: 0 })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(code_of(&refused), "WRONG_ROLE");
}

#[tokio::test]
async fn a_poison_record_ends_in_the_dead_letters_and_can_be_requeued() {
    let mut server = TestServer::start_with(|c| {
        c.limits.max_deliveries = 2;
        c.limits.redelivery_backoff_ms = 20;
    })
    .await;
    server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("poison", vec![record("p-1")]))
        .await
        .expect("submit");
    let mut registry = server.registry().await;
    // p-1 is never acked.
    let first = registry
        .pull(pull_request(10, 0, 100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.records.len(), 1);
    let poison_seq = first.records[0].sequence;
    // The long-poll returns when the lease runs out: delivery 2 of 2.
    let second = registry
        .pull(pull_request(10, 10_000, 100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.records.len(), 1);
    assert_eq!(
        (
            second.records[0].sequence,
            second.records[0].delivery_attempt
        ),
        (poison_seq, 2)
    );
    // After the second lease expires (and its backoff), the next pull moves
    // it to the dead letters instead of delivering it a third time.
    let mut ops = server.operations().await;
    let mut dead = Vec::new();
    for _ in 0..50 {
        let again = registry
            .pull(pull_request(10, 200, 100))
            .await
            .unwrap()
            .into_inner();
        assert!(
            again.records.is_empty(),
            "delivered a third time: {again:?}"
        );
        dead = ops
            .list_dead_letters(ListDeadLettersRequest { limit: 0 })
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
        if !dead.is_empty() {
            break;
        }
    }
    assert_eq!(dead.len(), 1, "the poison record is a dead letter");
    assert_eq!(dead[0].sequence, poison_seq);
    assert_eq!(dead[0].message_id, "p-1");
    assert_eq!(dead[0].supplier_id, SUPPLIER_A);
    assert_eq!(dead[0].attempts, 2);

    // Its last token is refused as expired, not as acked.
    let late = registry
        .ack(AckRequest {
            lease_tokens: vec![second.records[0].lease_token.clone()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(late.results[0].outcome, TokenOutcome::LeaseExpired as i32);

    let text = scrape(&server).await;
    assert_eq!(metric(&text, "schakel_dead_letters", &[]), Some(1.0));
    assert_eq!(metric(&text, "schakel_dead_lettered_total", &[]), Some(1.0));
    assert_eq!(metric(&text, "schakel_queue_depth", &[]), Some(0.0));
    assert_eq!(
        metric(&text, "schakel_leases_expired_total", &[]),
        Some(2.0)
    );

    // Requeue: delivered again from attempt 1, then acked.
    let requeued = ops
        .requeue_dead_letter(DeadLetterRequest {
            sequence: poison_seq,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(requeued.outcome, "REQUEUED");
    let again = registry
        .pull(pull_request(10, 5_000, 30_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.records.len(), 1);
    assert_eq!(
        (again.records[0].sequence, again.records[0].delivery_attempt),
        (poison_seq, 1)
    );
    let acked = registry
        .ack(AckRequest {
            lease_tokens: tokens(&again),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(acked.results[0].outcome, TokenOutcome::Acked as i32);

    let gone = ops
        .requeue_dead_letter(DeadLetterRequest {
            sequence: poison_seq,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(code_of(&gone), "DEAD_LETTER_NOT_FOUND");
    let gone = ops
        .discard_dead_letter(DeadLetterRequest { sequence: 999_999 })
        .await
        .unwrap_err();
    assert_eq!(code_of(&gone), "DEAD_LETTER_NOT_FOUND");

    // The audit trail holds the batch (with message ids), the pulls and the
    // admin action.
    server.stop().await;
    let store = Store::open(&server.config.data_dir, StoreOptions::default()).expect("open");
    let events = store.audit_events(&AuditQuery::default()).expect("audit");
    let find = |action: &str| {
        events
            .iter()
            .filter(|e| e.action == action)
            .cloned()
            .collect::<Vec<_>>()
    };
    let batches = find("submit_batch");
    assert_eq!(batches.len(), 1, "{events:?}");
    assert!(
        batches[0].detail.contains("batch_id=poison")
            && batches[0].detail.contains(r#"message_ids=["p-1"]"#),
        "{}",
        batches[0].detail
    );
    assert_eq!(batches[0].actor, SUPPLIER_A);
    let pulls = find("pull");
    assert!(
        pulls
            .iter()
            .any(|e| e.detail.contains(&format!("sequences=[{poison_seq}"))),
        "{pulls:?}"
    );
    let requeues = find("ops.requeue_dead_letter");
    assert_eq!(requeues.len(), 2, "one done, one not found: {requeues:?}");
    assert_eq!(requeues[0].actor, ADMIN);
    assert_eq!(requeues[0].detail, format!("sequence={poison_seq}"));
    assert_eq!(requeues[0].outcome, "ok");
    assert_eq!(requeues[1].outcome, "not_found");
    assert_eq!(find("ops.discard_dead_letter").len(), 1);
}

#[tokio::test]
async fn audit_events_past_retention_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let now = SystemTime::now();
    let year = Duration::from_secs(365 * 86_400);
    for (age, action) in [(6, "old"), (4, "recent"), (0, "now")] {
        store
            .audit(schakel::store::AuditEvent {
                at: now - year * age,
                actor_fingerprint: "f".repeat(64),
                actor: "test".into(),
                role: None,
                action: action.into(),
                detail: String::new(),
                outcome: "ok".into(),
            })
            .unwrap();
    }
    let monitor = schakel::ops::Monitor::new(
        store.clone(),
        schakel::ops::OpsSettings {
            overdue_after: Duration::from_secs(26 * 3600),
            audit_retention: 5 * year,
            check_interval: Duration::from_secs(300),
        },
    )
    .unwrap();
    let report = monitor.check(now).unwrap();
    assert_eq!(report.purged, 1);
    let left: Vec<String> = store
        .audit_events(&AuditQuery::default())
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(left, ["recent", "now"]);
}

#[tokio::test]
async fn the_status_page_shows_deliveries_queue_rejects_and_certificates() {
    let server = gateway_with_history(3600, Duration::from_secs(2 * 3600)).await;
    let (status, page) = server.http_get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<meta name=\"viewport\""), "phone-readable");
    // Suppliers with their delivery status.
    let row = |id: &str| {
        let start = page
            .find(&format!("<tr data-supplier=\"{id}\">"))
            .unwrap_or_else(|| panic!("no row for {id}"));
        let end = page[start..].find("</tr>").expect("row end") + start;
        page[start..end].to_owned()
    };
    assert!(
        row(SUPPLIER_A).contains("delivered today"),
        "{}",
        row(SUPPLIER_A)
    );
    assert!(row(SUPPLIER_B).contains("overdue"), "{}", row(SUPPLIER_B));
    // Queue depth and the age of the oldest record.
    assert!(page.contains("Queue depth<b>1</b>"), "{page}");
    assert!(
        page.contains(
            "id=\"tls-refused\">Certificates refused at TLS (since start)<b class=\"ok\">0</b>"
        ),
        "{page}"
    );
    assert!(page.contains("id=\"oldest-age\""));
    // Rejects by code for today.
    assert!(page.contains("<code>BSN_CHECKSUM</code></td><td class=\"num\">2</td>"));
    // Certificates expiring within 30 days: the spare, not the 5-year ones.
    assert!(page.contains("registry spare cert"), "{page}");
    assert!(
        !page.contains(">supplier-a<br>"),
        "long-lived certs are not listed"
    );
    // No patient data.
    assert!(!page.contains("249566758") && !page.contains("Berg"));
    let (status, same) = server.http_get("/status").await;
    assert_eq!(status, 200);
    assert!(same.contains("Schakel status"));
    let (status, _) = server.http_get("/nothing").await;
    assert_eq!(status, 404);
}

/// Scrapes until `name{outcome}` reaches `at_least` (the handshake task counts
/// right after the client has seen the outcome); its last value.
async fn handshakes_reach(server: &TestServer, outcome: &str, at_least: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(server).await;
        let value = metric(
            &text,
            "schakel_tls_handshakes_total",
            &[("outcome", outcome)],
        )
        .unwrap_or(-1.0);
        if value >= at_least || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn tls_handshake_outcomes_are_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::start().await;
    let first = scrape(&server).await;
    for outcome in ["ok", "rejected", "failed", "timeout"] {
        let v = metric(
            &first,
            "schakel_tls_handshakes_total",
            &[("outcome", outcome)],
        );
        assert!(v.is_some(), "no {outcome} series:\n{first}");
    }
    let rejected_before = metric(
        &first,
        "schakel_tls_handshakes_total",
        &[("outcome", "rejected")],
    );
    assert_eq!(rejected_before, Some(0.0));
    let failed_before = metric(
        &first,
        "schakel_tls_handshakes_total",
        &[("outcome", "failed")],
    );
    assert_eq!(failed_before, Some(0.0));

    // A supplier's call: one handshake at least completes.
    let mut intake = server.intake(SUPPLIER_A).await;
    intake
        .submit_batch(batch("hs", vec![record("hs-1")]))
        .await
        .unwrap();
    assert!(handshakes_reach(&server, "ok", 1.0).await >= 1.0);

    // No client certificate: rejected.
    let mut anonymous = server.files(SUPPLIER_A);
    anonymous.identity = None;
    if let Ok(channel) = schakel::client::connect(&server.url(), &anonymous).await {
        let refused = schakel::proto::intake_client::IntakeClient::new(channel)
            .submit_batch(batch("hs", vec![record("hs-2")]))
            .await
            .expect_err("a call without a client certificate got through");
        // The transport fails, as in tests/mtls.rs.
        assert_eq!(refused.code(), Code::Unknown, "{refused:?}");
    }
    assert!(handshakes_reach(&server, "rejected", 1.0).await >= 1.0);
    let (status, page) = server.http_get("/").await;
    assert_eq!(status, 200);
    assert!(
        page.contains(
            "id=\"tls-refused\">Certificates refused at TLS (since start)<b class=\"bad\">"
        ),
        "{page}"
    );

    // Not TLS at all: failed.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut sink)).await;
    assert_eq!(handshakes_reach(&server, "failed", 1.0).await, 1.0);
    let last = scrape(&server).await;
    assert_eq!(
        metric(
            &last,
            "schakel_tls_handshakes_total",
            &[("outcome", "timeout")]
        ),
        Some(0.0)
    );
}

/// `schakel ops ...` as an operator runs it; (exit code, stdout, stderr).
async fn ops_cli(server: &TestServer, args: &[&str]) -> (i32, String, String) {
    let files = server.files(ADMIN);
    let (cert, key) = files.identity.expect("identity");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_schakel"))
        .arg("ops")
        .args(["--server", &server.url(), "--ca"])
        .arg(&files.ca)
        .arg("--cert")
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("running schakel ops");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// README (operations): `schakel ops deliveries` exits 0, or 2 when a supplier
/// is overdue; `dead-letters requeue SEQ` puts a dead letter back (same
/// sequence, attempts from 1); an unknown sequence is refused with exit 1 and
/// the stable code.
#[tokio::test(flavor = "multi_thread")]
async fn the_ops_cli_exit_codes_and_requeue() {
    let server = TestServer::start_with(|c| {
        c.limits.max_deliveries = 1;
        c.limits.redelivery_backoff_ms = 20;
    })
    .await;
    // Fresh suppliers are not overdue (26 h by default): exit 0.
    let (code, stdout, stderr) = ops_cli(&server, &["deliveries", "--json"]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    let list: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    let suppliers = list["suppliers"].as_array().expect("suppliers");
    assert_eq!(suppliers.len(), 2, "{stdout}");
    assert!(suppliers.iter().all(|s| s["overdue"] != true), "{stdout}");

    // A dead letter: delivered once (max_deliveries = 1), never acked.
    server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("dl", vec![record("dl-1")]))
        .await
        .unwrap();
    let mut registry = server.registry().await;
    let first = registry
        .pull(pull_request(10, 0, 100))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.records.len(), 1);
    let seq = first.records[0].sequence;
    // The next pull after the lease ran out buries it instead of delivering.
    let mut listed = String::new();
    for _ in 0..50 {
        let again = registry
            .pull(pull_request(10, 200, 100))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(again.records.len(), 0, "delivered past max_deliveries");
        let (code, stdout, stderr) = ops_cli(&server, &["dead-letters", "list", "--json"]).await;
        assert_eq!(code, 0, "{stdout}{stderr}");
        if stdout.contains("dl-1") {
            listed = stdout;
            break;
        }
    }
    let list: serde_json::Value = serde_json::from_str(&listed).expect("a dead letter, as JSON");
    let listed_seq = &list["dead_letters"][0]["sequence"];
    assert_eq!(
        listed_seq
            .as_u64()
            .or_else(|| listed_seq.as_str().and_then(|s| s.parse().ok())),
        Some(seq),
        "{listed}"
    );

    let (code, stdout, stderr) =
        ops_cli(&server, &["dead-letters", "requeue", &seq.to_string()]).await;
    assert_eq!(
        (code, stdout.trim()),
        (0, format!("{seq} REQUEUED").as_str()),
        "{stderr}"
    );
    let back = registry
        .pull(pull_request(10, 5_000, 30_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        back.records
            .iter()
            .map(|r| (r.sequence, r.delivery_attempt, r.message_id.as_str()))
            .collect::<Vec<_>>(),
        [(seq, 1, "dl-1")]
    );
    let (code, stdout, _) = ops_cli(&server, &["dead-letters", "list"]).await;
    assert_eq!((code, stdout.trim()), (0, "no dead letters"));

    // Unknown sequence: refused, exit 1, with the stable code.
    let (code, stdout, stderr) = ops_cli(&server, &["dead-letters", "requeue", "999999"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stderr.contains("DEAD_LETTER_NOT_FOUND"), "{stderr}");
    let (code, _, stderr) = ops_cli(&server, &["dead-letters", "discard", "999999"]).await;
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("DEAD_LETTER_NOT_FOUND"), "{stderr}");
}

/// README (operations): exit 2 when a supplier is overdue.
#[tokio::test(flavor = "multi_thread")]
async fn the_ops_cli_exits_2_when_a_supplier_is_overdue() {
    let server = TestServer::start_with(|c| c.ops.overdue_after_secs = 1).await;
    server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("on-time", vec![record("on-time")]))
        .await
        .unwrap();
    // supplier-b never delivers: overdue once a second has passed since it
    // was registered (a condition on the clock, polled until it holds).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (code, stdout, stderr) = ops_cli(&server, &["deliveries", "--json"]).await;
        let list: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
        let overdue_b = list["suppliers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["supplier_id"] == SUPPLIER_B && s["overdue"] == true);
        if overdue_b {
            assert_eq!(code, 2, "{stdout}{stderr}");
            break;
        }
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "never overdue: {stdout}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (code, stdout, _) = ops_cli(&server, &["deliveries"]).await;
    assert_eq!(code, 2);
    assert!(stdout.contains("OVERDUE"), "{stdout}");
}

/// SIGTERM with a call in flight (README, Where to look: shutdown with a grace
/// period): the real `schakel serve` stops taking new connections, lets the
/// call under way finish with its normal answer, syncs the store and exits 0;
/// what was acknowledged before is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_calls_in_flight_finish_then_exits_0() {
    use common::process::ChildGateway;
    use schakel::proto::intake_client::IntakeClient;
    use schakel::proto::registry_client::RegistryClient;

    // One call per certificate, so a refused second call proves the first is
    // under way at the server (no sleeping on a guess).
    let gw = ChildGateway::start_with(&[], &[("limits", "max_in_flight_per_identity = 1")]);
    let receipt = IntakeClient::new(gw.channel("supplier-a", Duration::from_secs(60)).await)
        .submit_batch(batch("before", vec![record("before-1")]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(receipt.accepted, 1);
    let mut registry = RegistryClient::new(gw.channel("registry", Duration::from_secs(60)).await);
    let first = registry
        .pull(pull_request(10, 0, 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.records.len(), 1);
    // A long-poll on the now empty queue: 1.5 s, inside the 2 s grace period.
    let mut poller = registry.clone();
    let poll = tokio::spawn(async move {
        loop {
            let started = std::time::Instant::now();
            let answer = poller.pull(pull_request(10, 1_500, 60_000)).await;
            match answer {
                // A probe below held the one slot when this arrived: try again.
                Err(status) if status.code() == Code::ResourceExhausted => continue,
                answer => return (answer, started.elapsed()),
            }
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match registry.pull(pull_request(10, 0, 60_000)).await {
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                break;
            }
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the long-poll never arrived"
                );
                // Leave the one slot free now and then for the long-poll.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    gw.signal("TERM");
    let (answer, took) = poll.await.unwrap();
    let answer = answer.expect("the call in flight gets its normal answer");
    assert_eq!(answer.into_inner().records.len(), 0);
    assert!(
        took >= Duration::from_millis(1_400),
        "cut short after {took:?}"
    );
    let status = gw.terminate_wait();
    assert!(
        status.success(),
        "exit after a graceful shutdown: {status:?}"
    );
    let log = std::fs::read_to_string(&gw.log).unwrap();
    assert!(log.contains("shutting down"), "{log}");
    assert!(!log.contains("shutdown forced"), "{log}");

    // Nothing acknowledged was lost: the unacked record is delivered again.
    gw.spawn();
    let mut registry = RegistryClient::new(gw.channel("registry", Duration::from_secs(60)).await);
    let again = registry
        .pull(pull_request(10, 0, 60_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again
            .records
            .iter()
            .map(|r| r.message_id.as_str())
            .collect::<Vec<_>>(),
        ["before-1"]
    );
}
