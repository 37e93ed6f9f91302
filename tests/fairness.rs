//! Limits and fairness: one supplier flooding the gateway gets
//! RESOURCE_EXHAUSTED with a retry hint, and another supplier's batch is still
//! accepted meanwhile.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use tonic::Code;

#[tokio::test]
async fn a_flooding_supplier_does_not_stop_another() {
    let server = TestServer::start_with(|c| {
        c.limits.supplier_records_per_second = 500;
        c.limits.supplier_burst_records = 500;
    })
    .await;
    let refused = Arc::new(AtomicUsize::new(0));
    let mut flood = Vec::new();
    for task in 0..4 {
        let mut intake = server.intake(SUPPLIER_A).await;
        let refused = refused.clone();
        flood.push(tokio::spawn(async move {
            for b in 0..20 {
                let records = (0..100)
                    .map(|i| record(&format!("flood-{task}-{b}-{i}")))
                    .collect();
                match intake
                    .submit_batch(batch(&format!("flood-{task}-{b}"), records))
                    .await
                {
                    Ok(_) => {}
                    Err(status) => {
                        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                        assert_eq!(code_of(&status), "RATE_LIMITED");
                        let hint = status
                            .metadata()
                            .get(schakel::error::RETRY_PUSHBACK_KEY)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok())
                            .expect("a retry hint in milliseconds");
                        assert!(hint > 0);
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    // While A floods, B's batch goes through.
    let mut other = server.intake(SUPPLIER_B).await;
    let receipt = other
        .submit_batch(batch(
            "b-daily",
            (0..100).map(|i| record(&format!("b-{i}"))).collect(),
        ))
        .await
        .expect("supplier B is served while A floods")
        .into_inner();
    assert_eq!(receipt.accepted, 100);
    for task in flood {
        task.await.unwrap();
    }
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the flood hit the limit"
    );
}

/// README (limits): at most `limits.max_in_flight_per_identity` calls of one
/// certificate are under way at once; one more is refused at once with
/// RESOURCE_EXHAUSTED `RATE_LIMITED` and a retry hint, other certificates are
/// served meanwhile, and the slots come back when the calls end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_flight_limit_per_certificate_holds_over_the_wire() {
    use std::time::Duration;
    let server = TestServer::start_with(|c| c.limits.max_in_flight_per_identity = 2).await;
    // Two long-polls on an empty queue hold the registry's two slots.
    let mut polls = Vec::new();
    for _ in 0..2 {
        let mut registry = server.registry().await;
        polls.push(tokio::spawn(async move {
            registry
                .pull(pull_request(1, 20_000, 30_000))
                .await
                .map(|r| r.into_inner().records.len())
        }));
    }
    // A third call is refused as soon as both are under way at the server.
    let mut third = server.registry().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        match third.pull(pull_request(10, 0, 30_000)).await {
            Ok(answer) => {
                assert_eq!(answer.into_inner().records.len(), 0);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a third call of one certificate was never refused"
                );
                tokio::task::yield_now().await;
            }
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(code_of(&status), "RATE_LIMITED");
    let hint = status
        .metadata()
        .get(schakel::error::RETRY_PUSHBACK_KEY)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("a retry hint in milliseconds");
    assert!(hint > 0);
    // Another certificate is not affected: its record wakes the long-polls.
    let receipt = server
        .intake(SUPPLIER_A)
        .await
        .submit_batch(batch("wake", vec![record("wake-1"), record("wake-2")]))
        .await
        .expect("another certificate is served")
        .into_inner();
    assert_eq!(receipt.accepted, 2);
    let mut delivered = 0;
    for poll in polls {
        delivered += poll
            .await
            .unwrap()
            .expect("a long-poll in its slot is served");
    }
    assert_eq!(delivered, 2, "one record to each long-poll");
    // Both slots are free again.
    let after = third
        .pull(pull_request(10, 0, 30_000))
        .await
        .expect("the slots came back")
        .into_inner();
    assert_eq!(after.records.len(), 0);
}
