//! Storage faults: a full disk (the data folder on a small size-limited tmpfs;
//! needs root for mount, as CI has), a corrupt store and a store in use. The
//! gateway never acknowledges what it did not store and never starts on a
//! silently empty store.

mod common;

use std::collections::HashSet;
use std::process::Command;

use common::*;
use schakel::proto::{AckRequest, RecordStatus};
use tonic::Code;

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
async fn full_disk_is_unavailable_acknowledges_nothing_and_recovers() {
    let disk = Tmpfs::mount("6m");
    let data = disk.0.join("data");
    let server = TestServer::start_with(|c| c.data_dir = data.clone()).await;
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
    assert_eq!(code_of(&status), "STORE_UNAVAILABLE");
    assert!(!acknowledged.is_empty());

    // Space returns: the same batch is retried and the gateway recovers by
    // itself (no restart). Records written before the failure come back
    // DUPLICATE, the rest ACCEPTED; nothing is lost.
    disk.resize("256m");
    let retry: Vec<_> = (0..100)
        .map(|i| record(&format!("fill-{full_at:04}-{i:03}")))
        .collect();
    let mut recovered = None;
    for _ in 0..50 {
        match intake
            .submit_batch(batch(&format!("fill-{full_at}"), retry.clone()))
            .await
        {
            Ok(r) => {
                recovered = Some(r.into_inner());
                break;
            }
            Err(s) => {
                assert_eq!(s.code(), Code::Unavailable, "{s:?}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    }
    let receipt = recovered.expect("the gateway recovers when space returns");
    assert_eq!(receipt.accepted + receipt.duplicate, 100, "{receipt:?}");
    assert!(receipt
        .results
        .iter()
        .all(|r| r.status == RecordStatus::Duplicate as i32));
    acknowledged.extend(retry.into_iter().map(|r| r.message_id));

    // Everything acknowledged is delivered exactly once.
    let mut registry = server.registry().await;
    let mut delivered = HashSet::new();
    loop {
        let pulled = registry
            .pull(pull_request(5000, 0, 60_000))
            .await
            .unwrap()
            .into_inner();
        if pulled.records.is_empty() {
            break;
        }
        let tokens = pulled
            .records
            .iter()
            .map(|r| r.lease_token.clone())
            .collect();
        for r in pulled.records {
            assert!(delivered.insert(r.message_id), "delivered twice");
        }
        registry
            .ack(AckRequest {
                lease_tokens: tokens,
            })
            .await
            .unwrap();
    }
    assert_eq!(delivered, acknowledged);
}

async fn run_on(data: std::path::PathBuf) -> Result<(), schakel::server::ServerError> {
    // A throwaway gateway config pointing at `data`; the harness's PKI is reused.
    let template = TestServer::start().await;
    let mut config = template.config.clone();
    config.data_dir = data;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Must fail before serving; the shutdown timer is a backstop only.
    schakel::server::run(
        config,
        listener,
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
