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
