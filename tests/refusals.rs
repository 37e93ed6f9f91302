//! Refused callers stay cheap and see nothing, over the wire: real gateway, real
//! mTLS, real sled. Refused calls are aggregated in the audit trail (the first
//! of a certificate, code and service at once, the rest as one counted event
//! per interval, an overflow event past the key cap), health and reflection
//! answer registered identities only, both reflection versions are served, and
//! load balancers use `/healthz` on the operations port.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use schakel::proto::admin_client::AdminClient;
use schakel::proto::intake_client::IntakeClient;
use schakel::proto::*;
use tonic::transport::Channel;
use tonic::Code;

fn fingerprint_of(server: &TestServer, name: &str) -> String {
    let certs = schakel::tls::load_certs(&server.certs().join(format!("{name}.pem"))).unwrap();
    schakel::tls::fingerprint(certs[0].as_ref())
}

async fn admin(server: &TestServer) -> AdminClient<Channel> {
    AdminClient::new(server.channel(ADMIN).await)
}

/// Every `access_refused` event in the audit trail.
async fn refused_events(server: &TestServer) -> Vec<AuditEntry> {
    let answer = admin(server)
        .await
        .query_audit(QueryAuditRequest {
            limit: 10_000,
            ..QueryAuditRequest::default()
        })
        .await
        .expect("query audit")
        .into_inner();
    assert!(!answer.truncated, "the audit answer was cut");
    answer
        .events
        .into_iter()
        .filter(|e| e.action == "access_refused")
        .collect()
}

/// The refusals one event stands for: its `count=N` detail.
fn count_of(event: &AuditEntry) -> u64 {
    event
        .detail
        .split_whitespace()
        .find_map(|part| part.strip_prefix("count="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {event:?}"))
}

/// Counts per (fingerprint, code), summed over the events.
fn totals(events: &[AuditEntry]) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for e in events {
        *out.entry((e.actor_fingerprint.clone(), e.outcome.clone()))
            .or_default() += count_of(e);
    }
    out
}

fn assert_refused<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, stable: &str) {
    let status = result.expect_err("the call should be refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert_eq!(code_of(&status), stable, "{status:?}");
}

/// An empty batch: refused by the interceptor before anything is decoded.
async fn submit(intake: &mut IntakeClient<Channel>) -> Result<BatchReceipt, tonic::Status> {
    intake
        .submit_batch(batch("refused", Vec::new()))
        .await
        .map(tonic::Response::into_inner)
}

/// Revokes `name`'s certificate through the admin service.
async fn revoke(server: &TestServer, name: &str) {
    admin(server)
        .await
        .revoke_certificate(CertificateRef {
            fingerprint: fingerprint_of(server, name),
        })
        .await
        .expect("revoke");
}

/// `calls` refused SubmitBatch calls of `name`, on `workers` channels at once,
/// each answered UNAUTHENTICATED with `stable`.
async fn refuse_many(
    server: &TestServer,
    name: &str,
    stable: &'static str,
    calls: usize,
    workers: usize,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let mut intake = server.intake(name).await;
        let n = calls / workers + usize::from(w < calls % workers);
        tasks.spawn(async move {
            for _ in 0..n {
                assert_refused(submit(&mut intake).await, Code::Unauthenticated, stable);
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("refusing worker");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_refused_calls_add_a_handful_of_events_whose_counts_add_up() {
    // One interval spans the whole test: the counts are written at shutdown.
    // The sweeper would close the revoked certificate's channels mid-run.
    let mut server = TestServer::start_with(|c| {
        c.audit.refusal_interval_ms = 3_600_000;
        c.tls.close_revoked_every_ms = 0;
    })
    .await;
    revoke(&server, SUPPLIER_B).await;
    let stranger = fingerprint_of(&server, STRANGER);
    let revoked = fingerprint_of(&server, SUPPLIER_B);

    let started = std::time::Instant::now();
    tokio::join!(
        refuse_many(&server, STRANGER, "CERTIFICATE_NOT_REGISTERED", 5_000, 4),
        refuse_many(&server, SUPPLIER_B, "CERTIFICATE_REVOKED", 5_000, 4),
    );
    let took = started.elapsed();

    // The first refusal of each certificate is in the trail at once.
    let now = refused_events(&server).await;
    let firsts: Vec<_> = now
        .iter()
        .map(|e| {
            (
                e.actor_fingerprint.as_str(),
                e.outcome.as_str(),
                count_of(e),
            )
        })
        .collect();
    assert_eq!(firsts.len(), 2, "{now:?}");
    assert!(firsts.contains(&(stranger.as_str(), "CERTIFICATE_NOT_REGISTERED", 1)));
    assert!(firsts.contains(&(revoked.as_str(), "CERTIFICATE_REVOKED", 1)));

    // Shutdown writes the rest as one event per key with its count.
    server.restart().await;
    let events = refused_events(&server).await;
    assert_eq!(events.len(), 4, "{events:?}");
    let expected = BTreeMap::from([
        (
            (stranger.clone(), "CERTIFICATE_NOT_REGISTERED".to_owned()),
            5_000,
        ),
        ((revoked.clone(), "CERTIFICATE_REVOKED".to_owned()), 5_000),
    ]);
    assert_eq!(totals(&events), expected);
    assert_eq!(events.iter().map(count_of).sum::<u64>(), 10_000);
    for e in &events {
        assert!(
            e.detail
                .starts_with("service=Intake needs_role=supplier peer=127.0.0.1:"),
            "{e:?}"
        );
    }
    let stranger_event = events
        .iter()
        .find(|e| e.actor_fingerprint == stranger && count_of(e) == 4_999)
        .expect("the counted event of the stranger");
    assert_eq!(stranger_event.actor, "(not registered)");
    assert_eq!(stranger_event.role, "");
    let revoked_event = events
        .iter()
        .find(|e| e.actor_fingerprint == revoked && count_of(e) == 4_999)
        .expect("the counted event of the revoked certificate");
    assert_eq!(revoked_event.role, "supplier");
    println!("10000 refused calls took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counts_are_written_when_the_interval_ends() {
    let interval = Duration::from_millis(100);
    let server = TestServer::start_with(|c| c.audit.refusal_interval_ms = 100).await;
    let stranger = fingerprint_of(&server, STRANGER);
    let mut intake = server.intake(STRANGER).await;
    let started = tokio::time::Instant::now();
    assert_refused(
        submit(&mut intake).await,
        Code::Unauthenticated,
        "CERTIFICATE_NOT_REGISTERED",
    );
    // Written at once, before the call was answered.
    let first = refused_events(&server).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(count_of(&first[0]), 1);

    refuse_many(&server, STRANGER, "CERTIFICATE_NOT_REGISTERED", 299, 3).await;
    // No shutdown: the flusher writes the counts when the interval ends.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let events = loop {
        let events = refused_events(&server).await;
        if events.iter().map(count_of).sum::<u64>() >= 300 {
            break events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the counts were not written: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expected = BTreeMap::from([((stranger, "CERTIFICATE_NOT_REGISTERED".to_owned()), 300)]);
    assert_eq!(totals(&events), expected);
    // At most one immediate event per interval and one counted per flush.
    let intervals = started.elapsed().as_millis() / interval.as_millis() + 1;
    let most = usize::try_from(2 * intervals + 1).unwrap_or(usize::MAX);
    assert!(
        events.len() <= most && events.len() < 300,
        "not aggregated: {} events in {intervals} intervals",
        events.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_key_cap_refusals_are_counted_in_an_overflow_event() {
    let mut server = TestServer::start_with(|c| {
        c.audit.refusal_interval_ms = 3_600_000;
        c.audit.refusal_max_keys = 1;
        c.tls.close_revoked_every_ms = 0;
    })
    .await;
    revoke(&server, SUPPLIER_B).await;
    let stranger = fingerprint_of(&server, STRANGER);
    // The stranger takes the one key; the revoked certificate comes after it.
    refuse_many(&server, STRANGER, "CERTIFICATE_NOT_REGISTERED", 300, 3).await;
    refuse_many(&server, SUPPLIER_B, "CERTIFICATE_REVOKED", 200, 2).await;

    server.restart().await;
    let events = refused_events(&server).await;
    let expected = BTreeMap::from([
        ((stranger, "CERTIFICATE_NOT_REGISTERED".to_owned()), 300),
        (("*".to_owned(), "CERTIFICATE_REVOKED".to_owned()), 200),
    ]);
    assert_eq!(totals(&events), expected, "{events:?}");
    assert_eq!(events.len(), 4, "{events:?}");
    let overflow: Vec<_> = events
        .iter()
        .filter(|e| e.actor_fingerprint == "*")
        .collect();
    for e in overflow {
        assert_eq!(e.actor, "(over the cap of 1 keys per interval)");
        assert_eq!(e.role, "");
    }
}

#[tokio::test]
async fn health_and_reflection_refuse_a_certificate_that_is_registered_for_nobody() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as V1Request;
    use tonic_reflection::pb::v1::ServerReflectionRequest as V1Message;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as V1alphaRequest;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest as V1alphaMessage;

    let server = TestServer::start().await;
    let channel = server.channel(STRANGER).await;
    assert_refused(
        HealthClient::new(channel.clone())
            .check(HealthCheckRequest::default())
            .await,
        Code::Unauthenticated,
        "CERTIFICATE_NOT_REGISTERED",
    );
    let v1 = V1Message {
        host: String::new(),
        message_request: Some(V1Request::ListServices(String::new())),
    };
    assert_refused(
        V1::new(channel.clone())
            .server_reflection_info(tokio_stream::iter(vec![v1]))
            .await,
        Code::Unauthenticated,
        "CERTIFICATE_NOT_REGISTERED",
    );
    let v1alpha = V1alphaMessage {
        host: String::new(),
        message_request: Some(V1alphaRequest::ListServices(String::new())),
    };
    assert_refused(
        V1alpha::new(channel)
            .server_reflection_info(tokio_stream::iter(vec![v1alpha]))
            .await,
        Code::Unauthenticated,
        "CERTIFICATE_NOT_REGISTERED",
    );
    // Audited like any refusal, with the rule "any registered role".
    let events = refused_events(&server).await;
    let seen: Vec<_> = events
        .iter()
        .map(|e| {
            let service = e.detail.split_whitespace().next().unwrap_or_default();
            (service.to_owned(), e.outcome.as_str(), count_of(e))
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("service=Health".to_owned(), "CERTIFICATE_NOT_REGISTERED", 1),
            (
                "service=Reflection".to_owned(),
                "CERTIFICATE_NOT_REGISTERED",
                1
            ),
        ],
        "{events:?}"
    );
    assert!(events[0].detail.contains("needs_role=any"), "{events:?}");
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_by_health_too() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let server = TestServer::start().await;
    let mut health = HealthClient::new(server.channel(SUPPLIER_B).await);
    health
        .check(HealthCheckRequest::default())
        .await
        .expect("a registered supplier may ask");
    revoke(&server, SUPPLIER_B).await;
    assert_refused(
        health.check(HealthCheckRequest::default()).await,
        Code::Unauthenticated,
        "CERTIFICATE_REVOKED",
    );
}

#[tokio::test]
async fn a_v1alpha_reflection_client_lists_the_services() {
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

    let server = TestServer::start().await;
    // A registered identity of any role may ask: here the registry.
    let mut reflection = ServerReflectionClient::new(server.channel(REGISTRY).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("v1alpha reflection")
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
        "schakel.v1.Admin",
        "schakel.v1.Operations",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(names.contains(&expected), "{expected} missing in {names:?}");
    }
}

#[tokio::test]
async fn load_balancers_check_healthz_on_the_operations_port_without_a_certificate() {
    let server = TestServer::start().await;
    let (status, body) = server.http_get("/healthz").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, "SERVING\n");
}
