//! Tests of the store against a real sled in a temporary folder.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::*;

fn open(path: &Path) -> Store {
    Store::open(path, StoreOptions::default()).unwrap()
}

fn rec(id: &str, content: &str) -> NewRecord {
    NewRecord {
        message_id: id.into(),
        content: content.as_bytes().to_vec(),
    }
}

fn seq_of(outcome: SubmitOutcome) -> u64 {
    match outcome {
        SubmitOutcome::Accepted { sequence }
        | SubmitOutcome::Duplicate { sequence }
        | SubmitOutcome::Conflict { sequence } => sequence,
    }
}

const NOW: Duration = Duration::ZERO;
const LEASE: Duration = Duration::from_secs(30);

fn outcomes(results: &[TokenResult]) -> Vec<TokenOutcome> {
    results.iter().map(|r| r.outcome).collect()
}

#[tokio::test]
async fn submit_pull_ack() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = store
        .submit("sup-a", "batch-1", vec![rec("m1", "one")])
        .await
        .unwrap();
    let SubmitOutcome::Accepted { sequence } = out[0] else {
        panic!("expected Accepted, got {out:?}");
    };
    assert_eq!(store.queue_stats().depth, 1);
    assert!(store.queue_stats().oldest_received_at.is_some());

    let got = store.pull(10, NOW, LEASE).await.unwrap();
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.sequence, sequence);
    assert_eq!(d.supplier_id, "sup-a");
    assert_eq!(d.message_id, "m1");
    assert_eq!(d.batch_id, "batch-1");
    assert_eq!(d.attempt, 1);
    assert_eq!(d.content, b"one");
    assert!(d.lease_expires_at > SystemTime::now());
    assert_eq!(store.queue_stats().leased, 1);

    let token = vec![d.lease_token.clone()];
    let r = store.ack(&token).await.unwrap();
    assert_eq!(
        r,
        vec![TokenResult {
            outcome: TokenOutcome::Acked,
            sequence: Some(sequence)
        }]
    );
    assert_eq!(
        outcomes(&store.ack(&token).await.unwrap()),
        [TokenOutcome::AlreadyAcked]
    );
    assert!(store.pull(10, NOW, LEASE).await.unwrap().is_empty());
    let stats = store.queue_stats();
    assert_eq!((stats.depth, stats.leased), (0, 0));
    assert!(stats.oldest_received_at.is_none());

    // Dedup memory survives the ack.
    let again = store
        .submit("sup-a", "batch-2", vec![rec("m1", "one")])
        .await
        .unwrap();
    assert_eq!(again, [SubmitOutcome::Duplicate { sequence }]);
    assert!(store.pull(10, NOW, LEASE).await.unwrap().is_empty());
}

#[tokio::test]
async fn duplicate_conflict_and_in_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let first = store
        .submit("sup-a", "b1", vec![rec("m1", "x")])
        .await
        .unwrap();
    let s1 = seq_of(first[0]);
    let second = store
        .submit(
            "sup-a",
            "b2",
            vec![
                rec("m1", "x"),
                rec("m1", "changed"),
                rec("m2", "y"),
                rec("m2", "y"),
                rec("m3", "z"),
                rec("m3", "other"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(second[0], SubmitOutcome::Duplicate { sequence: s1 });
    assert_eq!(second[1], SubmitOutcome::Conflict { sequence: s1 });
    let SubmitOutcome::Accepted { sequence: s2 } = second[2] else {
        panic!("{second:?}")
    };
    assert_eq!(second[3], SubmitOutcome::Duplicate { sequence: s2 });
    let SubmitOutcome::Accepted { sequence: s3 } = second[4] else {
        panic!("{second:?}")
    };
    assert_eq!(second[5], SubmitOutcome::Conflict { sequence: s3 });
    assert!(s1 < s2 && s2 < s3);

    // The same message id from another supplier is a different record.
    let other = store
        .submit("sup-b", "b1", vec![rec("m1", "x")])
        .await
        .unwrap();
    assert!(matches!(other[0], SubmitOutcome::Accepted { .. }));

    let got = store.pull(100, NOW, LEASE).await.unwrap();
    let seqs: Vec<u64> = got.iter().map(|d| d.sequence).collect();
    assert_eq!(seqs, [s1, s2, s3, seq_of(other[0])]);
    assert_eq!(got[0].content, b"x");
    assert_eq!(store.queue_stats().depth, 4);
}

#[tokio::test]
async fn order_and_max() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let records = (0..25).map(|i| rec(&format!("m{i}"), "c")).collect();
    let out = store.submit("sup-a", "b", records).await.unwrap();
    let expected: Vec<u64> = out.iter().map(|o| seq_of(*o)).collect();
    assert!(expected.windows(2).all(|w| w[0] < w[1]));
    let mut seen = Vec::new();
    loop {
        let got = store.pull(10, NOW, LEASE).await.unwrap();
        assert!(got.len() <= 10);
        if got.is_empty() {
            break;
        }
        seen.extend(got.iter().map(|d| d.sequence));
    }
    assert_eq!(seen, expected);
    assert_eq!(store.queue_stats().leased, 25);
}

#[tokio::test]
async fn lease_expiry_redelivers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .submit("sup-a", "b", vec![rec("m1", "x")])
        .await
        .unwrap();
    let first = store.pull(1, NOW, Duration::from_millis(50)).await.unwrap();
    assert_eq!(first[0].attempt, 1);

    let started = Instant::now();
    let second = store.pull(1, Duration::from_secs(2), LEASE).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "woke at the lease deadline"
    );
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].sequence, first[0].sequence);
    assert_eq!(second[0].attempt, 2);
    assert_ne!(second[0].lease_token, first[0].lease_token);

    let old = store.ack(&[first[0].lease_token.clone()]).await.unwrap();
    assert_eq!(outcomes(&old), [TokenOutcome::LeaseExpired]);
    assert_eq!(
        outcomes(
            &store
                .release(&[first[0].lease_token.clone()])
                .await
                .unwrap()
        ),
        [TokenOutcome::LeaseExpired]
    );
    let new = store.ack(&[second[0].lease_token.clone()]).await.unwrap();
    assert_eq!(outcomes(&new), [TokenOutcome::Acked]);
}

#[tokio::test]
async fn expired_lease_found_by_ack() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .submit("sup-a", "b", vec![rec("m1", "x")])
        .await
        .unwrap();
    let first = store.pull(1, NOW, Duration::from_millis(20)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(40)).await;
    let r = store.ack(&[first[0].lease_token.clone()]).await.unwrap();
    assert_eq!(outcomes(&r), [TokenOutcome::LeaseExpired]);
    let again = store.pull(1, NOW, LEASE).await.unwrap();
    assert_eq!(
        (again[0].sequence, again[0].attempt),
        (first[0].sequence, 2)
    );
}

#[tokio::test]
async fn release_redelivers_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .submit("sup-a", "b", vec![rec("m1", "x"), rec("m2", "y")])
        .await
        .unwrap();
    let first = store.pull(2, NOW, LEASE).await.unwrap();
    let token = vec![first[1].lease_token.clone()];
    let r = store.release(&token).await.unwrap();
    assert_eq!(
        r,
        vec![TokenResult {
            outcome: TokenOutcome::Released,
            sequence: Some(first[1].sequence)
        }]
    );
    assert_eq!(
        outcomes(&store.release(&token).await.unwrap()),
        [TokenOutcome::AlreadyReleased]
    );
    assert_eq!(
        outcomes(&store.ack(&token).await.unwrap()),
        [TokenOutcome::LeaseExpired]
    );
    let again = store.pull(10, NOW, LEASE).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].sequence, again[0].attempt),
        (first[1].sequence, 2)
    );
    // The released token still answers AlreadyReleased after the redelivery.
    assert_eq!(
        outcomes(&store.release(&token).await.unwrap()),
        [TokenOutcome::AlreadyReleased]
    );
    // Releasing an acked record.
    let done = vec![again[0].lease_token.clone()];
    assert_eq!(
        outcomes(&store.ack(&done).await.unwrap()),
        [TokenOutcome::Acked]
    );
    assert_eq!(
        outcomes(&store.release(&done).await.unwrap()),
        [TokenOutcome::AlreadyAcked]
    );
}

#[tokio::test]
async fn release_wakes_long_poll() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .submit("sup-a", "b", vec![rec("m1", "x")])
        .await
        .unwrap();
    let first = store.pull(1, NOW, LEASE).await.unwrap();
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.pull(1, Duration::from_secs(5), LEASE).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    store
        .release(&[first[0].lease_token.clone()])
        .await
        .unwrap();
    let started = Instant::now();
    let got = waiter.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(got[0].sequence, first[0].sequence);
}

#[tokio::test]
async fn unknown_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let out = store
        .submit("sup-a", "b", vec![rec("m1", "x")])
        .await
        .unwrap();
    let seq = seq_of(out[0]);
    let never_issued = {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&(seq + 1_000_000).to_be_bytes());
        b[8..12].copy_from_slice(&1u32.to_be_bytes());
        hex::encode(b)
    };
    let tokens = vec![
        "garbage".to_string(),
        String::new(),
        "zz".repeat(20),
        "00".repeat(20),
        never_issued,
    ];
    let unknown = TokenResult {
        outcome: TokenOutcome::Unknown,
        sequence: None,
    };
    assert_eq!(store.ack(&tokens).await.unwrap(), vec![unknown.clone(); 5]);
    assert_eq!(store.release(&tokens).await.unwrap(), vec![unknown; 5]);
    // A well-formed token for an issued sequence that was never leased.
    let forged = {
        let mut b = [0u8; 20];
        b[..8].copy_from_slice(&seq.to_be_bytes());
        hex::encode(b)
    };
    assert_eq!(
        outcomes(&store.ack(&[forged]).await.unwrap()),
        [TokenOutcome::LeaseExpired]
    );
}

/// Submits m1 ("x") and m2 ("y") of sup-a; their sequences.
async fn submit_m1_m2(store: &Store) -> (u64, u64) {
    let out = store
        .submit("sup-a", "b", vec![rec("m1", "x"), rec("m2", "y")])
        .await
        .unwrap();
    (seq_of(out[0]), seq_of(out[1]))
}

#[tokio::test]
async fn reopen_keeps_queue_and_dedup() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2);
    {
        let store = open(dir.path());
        (s1, s2) = submit_m1_m2(&store).await;
        let got = store.pull(2, NOW, LEASE).await.unwrap();
        assert_eq!(got.len(), 2);
        let r = store.ack(&[got[0].lease_token.clone()]).await.unwrap();
        assert_eq!(outcomes(&r), [TokenOutcome::Acked]);
        // Deliver m2 a second time: from attempt 2 on the count is on disk.
        let r = store.release(&[got[1].lease_token.clone()]).await.unwrap();
        assert_eq!(outcomes(&r), [TokenOutcome::Released]);
        let second = store.pull(2, NOW, LEASE).await.unwrap();
        assert_eq!((second.len(), second[0].attempt), (1, 2));
        // m2 stays leased: leases do not survive the restart.
    }
    let store = open(dir.path());
    assert_eq!(store.queue_stats().depth, 1);
    let again = store
        .submit("sup-a", "b", vec![rec("m1", "x"), rec("m2", "changed")])
        .await
        .unwrap();
    assert_eq!(
        again,
        [
            SubmitOutcome::Duplicate { sequence: s1 },
            SubmitOutcome::Conflict { sequence: s2 }
        ]
    );
    let got = store.pull(10, NOW, LEASE).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].sequence, got[0].attempt), (s2, 3));
    assert_eq!(got[0].content, b"y");
    // New sequences keep increasing across the restart.
    let new = store
        .submit("sup-a", "b", vec![rec("m3", "z")])
        .await
        .unwrap();
    assert!(seq_of(new[0]) > s2);
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.queue_stats().depth, 2);
}

#[tokio::test]
async fn long_poll_wakes_on_submit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move { store.pull(10, Duration::from_secs(5), LEASE).await })
    };
    tokio::time::sleep(Duration::from_millis(30)).await;
    let started = Instant::now();
    store
        .submit("sup-a", "b", vec![rec("m1", "x")])
        .await
        .unwrap();
    let got = waiter.await.unwrap().unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, "m1");
}

#[tokio::test]
async fn pull_times_out_empty() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let started = Instant::now();
    let got = store
        .pull(10, Duration::from_millis(50), LEASE)
        .await
        .unwrap();
    assert!(got.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(50));
    assert!(store.pull(0, NOW, LEASE).await.unwrap().is_empty());
}

#[tokio::test]
async fn concurrent_submits_share_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let records = (0..50).map(|i| rec(&format!("m{t}-{i}"), "c")).collect();
            store.submit("sup-a", "b", records).await
        }));
    }
    for t in tasks {
        let out = t.await.unwrap().unwrap();
        assert!(out
            .iter()
            .all(|o| matches!(o, SubmitOutcome::Accepted { .. })));
    }
    let got = store.pull(1000, NOW, LEASE).await.unwrap();
    assert_eq!(got.len(), 400);
    assert!(got.windows(2).all(|w| w[0].sequence < w[1].sequence));
    store.sync().await.unwrap();
    assert!(store.size_on_disk().unwrap() > 0);
}

#[tokio::test]
async fn invalid_supplier_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = store
        .submit("a\0b", "b", vec![rec("m1", "x")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)));
    assert!(!err.is_retryable());
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn identity(fp: char, role: Role) -> Identity {
    Identity {
        fingerprint: fp.to_string().repeat(64),
        role,
        name: "supplier-a (dev)".into(),
        supplier_id: (role == Role::Supplier).then(|| "sup-a".into()),
        subject: "CN=supplier-a".into(),
        serial: "01ab".into(),
        not_after: at(2_000_000_000),
        added_at: SystemTime::now(),
        retire_at: None,
        revoked_at: None,
        origin: Default::default(),
    }
}

#[tokio::test]
async fn identities_and_suppliers_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let a = identity('a', Role::Supplier);
    let mut b = identity('b', Role::Registry);
    b.retire_at = Some(at(1_900_000_000));
    let supplier = Supplier {
        id: "sup-a".into(),
        name: "Supplier A".into(),
        contact: "ops@example.org".into(),
        suspended: false,
        created_at: SystemTime::now(),
        ura: None,
        identity_policy: Default::default(),
    };
    {
        let store = open(dir.path());
        store.put_identity(&b).unwrap();
        store.put_identity(&a).unwrap();
        store.put_supplier(&supplier).unwrap();
        assert_eq!(store.identity(&a.fingerprint).unwrap(), Some(a.clone()));
        assert_eq!(store.identity("nope").unwrap(), None);
        let mut bad = a.clone();
        bad.fingerprint = "ABC".into();
        assert!(matches!(
            store.put_identity(&bad),
            Err(StoreError::Invalid(_))
        ));
    }
    let store = open(dir.path());
    assert_eq!(store.identities().unwrap(), vec![a.clone(), b.clone()]);
    assert_eq!(store.supplier("sup-a").unwrap(), Some(supplier.clone()));
    assert_eq!(store.supplier("sup-x").unwrap(), None);
    let mut suspended = supplier.clone();
    suspended.suspended = true;
    store.put_supplier(&suspended).unwrap();
    assert_eq!(store.suppliers().unwrap(), vec![suspended]);
}

#[test]
fn identity_activity() {
    let now = at(1_800_000_000);
    let mut id = identity('a', Role::Admin);
    assert!(id.is_active(now));
    id.revoked_at = Some(at(1_800_000_100));
    assert!(!id.is_active(now), "any revocation counts");
    id.revoked_at = None;
    id.retire_at = Some(now);
    assert!(!id.is_active(now));
    assert!(id.is_active(at(1_799_999_999)));
    id.retire_at = None;
    id.not_after = at(1_799_999_999);
    assert!(!id.is_active(now));
    assert!(id.is_active(at(1_799_999_999)));
}

#[test]
fn not_after_is_unix_seconds() {
    let json = serde_json::to_value(identity('a', Role::Admin)).unwrap();
    assert_eq!(json["not_after"], 2_000_000_000u64);
    assert_eq!(json["role"], "admin");
}

fn event(secs: u64, actor: &str, action: &str) -> AuditEvent {
    AuditEvent {
        at: at(secs),
        actor_fingerprint: actor.repeat(64),
        actor: format!("actor {actor}"),
        role: Some(Role::Supplier),
        action: action.into(),
        detail: "batch=b1 records=3".into(),
        outcome: "ok".into(),
    }
}

#[tokio::test]
async fn audit_append_and_query() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    // Out of order on purpose: the log orders by event time.
    for (secs, actor, action) in [
        (300, "b", "pull"),
        (100, "a", "submit_batch"),
        (200, "a", "submit_batch"),
        (200, "b", "ack"),
        (400, "a", "admin.add_supplier"),
    ] {
        store.audit(event(secs, actor, action)).unwrap();
    }
    let all = store.audit_events(&AuditQuery::default()).unwrap();
    let times: Vec<SystemTime> = all.iter().map(|e| e.at).collect();
    assert_eq!(times, [at(100), at(200), at(200), at(300), at(400)]);

    let ranged = store
        .audit_events(&AuditQuery {
            from: Some(at(200)),
            to: Some(at(300)),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(ranged.len(), 3);

    let by_a = store
        .audit_events(&AuditQuery {
            actor_fingerprint: Some("a".repeat(64)),
            ..Default::default()
        })
        .unwrap();
    let actions: Vec<&str> = by_a.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        ["submit_batch", "submit_batch", "admin.add_supplier"]
    );

    let latest = store
        .audit_events(&AuditQuery {
            limit: 2,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        latest.iter().map(|e| e.at).collect::<Vec<_>>(),
        [at(300), at(400)]
    );
    assert_eq!(latest[1], event(400, "a", "admin.add_supplier"));
    store.sync().await.unwrap();
}

#[test]
fn errors_are_classified() {
    let io = StoreError::Io {
        context: "syncing".into(),
        source: std::io::Error::other("disk full"),
    };
    assert!(io.is_retryable());
    assert!(StoreError::Closed.is_retryable());
    let corrupt = StoreError::corrupt("queue entry 7", "truncated");
    assert!(!corrupt.is_retryable());
    assert_eq!(
        corrupt.to_string(),
        "corrupt data in queue entry 7: truncated"
    );
}

#[tokio::test]
async fn open_fails_on_corrupt_queue_entry() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("records").unwrap();
        let mut key = vec![b'q'];
        key.extend_from_slice(&5u64.to_be_bytes());
        tree.insert(key, &[9u8, 1, 2][..]).unwrap();
        db.flush().unwrap();
    }
    let err = Store::open(dir.path(), StoreOptions::default())
        .err()
        .expect("corrupt store must not open");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("queue entry 5"));
}

/// Rough timing of a 1000-record submit (the times are printed, never
/// asserted): `cargo test --release --lib store::tests::timing -- --nocapture`.
/// What was done is asserted: every record accepted in order, 1000 of the
/// 3000 pulled in sequence order, every token acked, 2000 left.
#[tokio::test]
async fn timing_1000_record_submit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let content = vec![b'x'; 1024];
    let mut sequences = Vec::new();
    for round in 0..3 {
        let records = (0..1000)
            .map(|i| NewRecord {
                message_id: format!("r{round}-m{i}"),
                content: content.clone(),
            })
            .collect();
        let started = Instant::now();
        let out = store.submit("sup-a", "b", records).await.unwrap();
        eprintln!("submit of 1000 x 1 KiB records: {:?}", started.elapsed());
        assert_eq!(out.len(), 1000);
        for o in out {
            let SubmitOutcome::Accepted { sequence } = o else {
                panic!("expected Accepted, got {o:?}");
            };
            sequences.push(sequence);
        }
    }
    assert!(sequences.windows(2).all(|w| w[0] < w[1]), "arrival order");
    assert_eq!(store.queue_stats().depth, 3000);
    let started = Instant::now();
    let got = store.pull(1000, NOW, LEASE).await.unwrap();
    eprintln!("pull of {} records: {:?}", got.len(), started.elapsed());
    let pulled: Vec<u64> = got.iter().map(|d| d.sequence).collect();
    assert_eq!(pulled, sequences[..1000]);
    assert!(got.iter().all(|d| d.content == content && d.attempt == 1));
    let tokens: Vec<String> = got.into_iter().map(|d| d.lease_token).collect();
    let started = Instant::now();
    let acked = store.ack(&tokens).await.unwrap();
    eprintln!("ack of {} tokens: {:?}", tokens.len(), started.elapsed());
    assert_eq!(
        acked,
        pulled
            .iter()
            .map(|&s| TokenResult {
                outcome: TokenOutcome::Acked,
                sequence: Some(s),
            })
            .collect::<Vec<_>>()
    );
    let stats = store.queue_stats();
    assert_eq!((stats.depth, stats.leased), (2000, 0));
}

/// The `n` keys in the records tree, as (sequence, attempts).
fn attempt_keys(store: &Store) -> Vec<(u64, u32)> {
    store
        .inner
        .records
        .scan_prefix([b'n'])
        .map(|item| {
            let (k, v) = item.unwrap();
            let seq = u64::from_be_bytes(k[1..9].try_into().unwrap());
            (seq, u32::from_be_bytes(v[..4].try_into().unwrap()))
        })
        .collect()
}

#[tokio::test]
async fn attempt_key_only_from_second_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let (s1, s2);
    {
        let store = open(dir.path());
        (s1, s2) = submit_m1_m2(&store).await;
        let got = store.pull(2, NOW, LEASE).await.unwrap();
        assert_eq!((got[0].attempt, got[1].attempt), (1, 1));
        assert_eq!(attempt_keys(&store), []);
        let r = store.release(&[got[1].lease_token.clone()]).await.unwrap();
        assert_eq!(outcomes(&r), [TokenOutcome::Released]);
        let again = store.pull(2, NOW, LEASE).await.unwrap();
        assert_eq!((again[0].sequence, again[0].attempt), (s2, 2));
        assert_eq!(attempt_keys(&store), [(s2, 2)]);
        let r = store
            .ack(&[got[0].lease_token.clone(), again[0].lease_token.clone()])
            .await
            .unwrap();
        assert_eq!(outcomes(&r), [TokenOutcome::Acked, TokenOutcome::Acked]);
        assert_eq!(attempt_keys(&store), []);
        // A stale counter of a record no longer queued (older layout).
        store
            .inner
            .records
            .insert(queue::attempt_key(s1), &1u32.to_be_bytes())
            .unwrap();
        store.sync().await.unwrap();
    }
    let store = open(dir.path());
    assert_eq!(
        attempt_keys(&store),
        [],
        "stale counter not removed at open"
    );
    store
        .submit("sup-a", "b", vec![rec("m3", "z")])
        .await
        .unwrap();
    let got = store.pull(1, NOW, LEASE).await.unwrap();
    assert_eq!(got[0].attempt, 1);
    drop(store);
    // Delivered once, not acked, restarted: attempt 1 again (documented).
    let store = open(dir.path());
    let got = store.pull(1, NOW, LEASE).await.unwrap();
    assert_eq!((got[0].message_id.as_str(), got[0].attempt), ("m3", 1));
}

fn assert_failed<T: std::fmt::Debug>(result: Result<T, StoreError>, what: &str) {
    match result {
        Err(StoreError::Failed(first)) => {
            assert_eq!(
                first.context, "syncing the store to disk (group commit)",
                "{what}"
            );
        }
        other => panic!("{what}: expected StoreError::Failed, got {other:?}"),
    }
}

/// Issue 11 item 2 / issue 17 item 3: one failing fdatasync fails the store
/// for good; nothing of the failed batch is ever answered or delivered, not
/// even as a duplicate, until the store is reopened.
#[tokio::test]
async fn a_failed_sync_latches_the_store_until_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let before: Vec<_> = (0..3).map(|i| rec(&format!("a{i}"), "durable")).collect();
    let out = store.submit("sup-a", "batch-a", before).await.unwrap();
    let durable = out.iter().copied().map(seq_of).max().unwrap();
    assert!(store.failure().is_none());

    // A long-poll waiting for new records when the store fails is ended.
    let first = store.pull(3, NOW, LEASE).await.unwrap();
    assert_eq!(first.len(), 3);
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { store.pull(10, Duration::from_secs(60), LEASE).await })
    };

    store.sync_faults().fail_next(1);
    let batch = || (0..20).map(|i| rec(&format!("b{i}"), "lost?")).collect();
    assert_failed(store.submit("sup-a", "batch-b", batch()).await, "the batch");
    assert_eq!(store.sync_failures(), 1);
    let failure = store.failure().expect("latched");
    assert!(failure.error.contains("os error 5"), "{failure:?}");

    // The fault is used up: whatever follows fails because the store latched.
    assert_failed(
        store.submit("sup-a", "batch-b", batch()).await,
        "the same batch again (not DUPLICATE)",
    );
    for n in 0..5 {
        let more = vec![rec(&format!("c{n}"), "new")];
        assert_failed(
            store.submit("sup-a", "batch-c", more).await,
            "a later batch",
        );
    }
    assert_failed(
        store
            .submit("sup-a", "batch-a", vec![rec("a0", "durable")])
            .await,
        "a duplicate of a durable record",
    );
    let tokens: Vec<String> = first.iter().map(|d| d.lease_token.clone()).collect();
    assert_failed(store.ack(&tokens).await, "ack");
    assert_failed(store.release(&tokens).await, "release");
    assert_failed(store.pull(10, NOW, LEASE).await, "pull");
    assert_failed(
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the long-poll ends when the store fails")
            .unwrap(),
        "a waiting pull",
    );
    assert_failed(store.sync().await, "sync");
    let supplier = Supplier {
        id: "sup-x".into(),
        name: "x".into(),
        contact: String::new(),
        suspended: false,
        created_at: SystemTime::now(),
        ura: None,
        identity_policy: Default::default(),
    };
    assert_failed(store.put_supplier(&supplier), "an admin write");
    // Pull never saw the failed batch: the durable watermark did not move.
    assert_eq!(store.inner.durable_seq.load(Ordering::Acquire), durable);
    assert_eq!(store.sync_failures(), 1, "no sync is tried once failed");

    // A reopen (a restart) recovers from what is on disk and works again.
    drop(store);
    let store = open(dir.path());
    assert!(store.failure().is_none());
    let again = store.submit("sup-a", "batch-b", batch()).await.unwrap();
    assert_eq!(again.len(), 20);
    let mut seen = std::collections::HashSet::new();
    loop {
        let got = store.pull(100, NOW, LEASE).await.unwrap();
        if got.is_empty() {
            break;
        }
        let tokens: Vec<String> = got.iter().map(|d| d.lease_token.clone()).collect();
        for d in got {
            assert!(seen.insert(d.message_id), "delivered twice");
        }
        store.ack(&tokens).await.unwrap();
    }
    let mut expected: std::collections::HashSet<String> = (0..3).map(|i| format!("a{i}")).collect();
    expected.extend((0..20).map(|i| format!("b{i}")));
    assert_eq!(seen, expected);
}

/// A failed sled write latches the store as a failed sync does (checked
/// through the same latch; sled's own write errors cannot be provoked here).
#[tokio::test]
async fn a_failed_write_latches_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let err = store.inner.write_failed(
        "writing batch b of supplier s",
        sled::Error::Io(std::io::Error::from_raw_os_error(28)),
    );
    assert!(matches!(err, StoreError::Failed(_)), "{err:?}");
    match store.submit("sup-a", "b", vec![rec("m", "x")]).await {
        Err(StoreError::Failed(first)) => {
            assert_eq!(first.context, "writing batch b of supplier s");
            assert!(first.error.contains("os error 28"), "{first:?}");
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(store.sync_failures(), 0);
}

/// Issue 11 item 5: a read that fails in the middle of an ack leaves the
/// leases of the earlier tokens in place (before, they were dropped and the
/// records were not delivered again until a restart).
#[tokio::test]
async fn an_ack_that_fails_midway_keeps_the_earlier_leases() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store
        .submit("sup-a", "b", vec![rec("m1", "one"), rec("m2", "two")])
        .await
        .unwrap();
    let got = store.pull(2, NOW, LEASE).await.unwrap();
    let (t1, t2) = (got[0].lease_token.clone(), got[1].lease_token.clone());
    // m2 is released and leased again: its first token is stale now, so the
    // ack must read the queue to judge it.
    store.release(std::slice::from_ref(&t2)).await.unwrap();
    let again = store.pull(1, NOW, LEASE).await.unwrap();
    assert_eq!(again[0].message_id, "m2");

    store.fail_next_reads(1);
    match store.ack(&[t1.clone(), t2]).await {
        Err(StoreError::Io { context, .. }) => assert!(context.contains("injected"), "{context}"),
        other => panic!("expected the injected read error, got {other:?}"),
    }
    // A read error is not a failed write: the store did not latch.
    assert!(store.failure().is_none());
    // The lease of t1 still stands, so the retried ack succeeds.
    let retried = store.ack(std::slice::from_ref(&t1)).await.unwrap();
    assert_eq!(outcomes(&retried), vec![TokenOutcome::Acked]);
    assert_eq!(store.queue_stats().depth, 1);
}

/// Issue 11 item 5: Pull leases only what fits the byte budget; the rest stays
/// queued with no delivery counted, and the first record is always leased.
#[tokio::test]
async fn pull_leases_only_what_fits_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let records: Vec<_> = (0..5)
        .map(|i| rec(&format!("m{i}"), &"x".repeat(100)))
        .collect();
    store.submit("sup-a", "b", records).await.unwrap();
    // A stored entry is 1 + 8 + 12 + 5 + 2 + 1 + 100 = 129 bytes; with 71 of
    // overhead a record costs 200: two fit in 450, not three.
    let budget = PullBudget {
        max_bytes: 450,
        per_record: 71,
    };
    let mut attempts = Vec::new();
    let mut pages = Vec::new();
    loop {
        let got = store.pull_within(10, budget, NOW, LEASE).await.unwrap();
        if got.is_empty() {
            break;
        }
        pages.push(got.len());
        let tokens: Vec<String> = got.iter().map(|d| d.lease_token.clone()).collect();
        attempts.extend(got.iter().map(|d| d.attempt));
        store.ack(&tokens).await.unwrap();
    }
    assert_eq!(pages, vec![2, 2, 1]);
    assert_eq!(attempts, vec![1; 5]);
    assert_eq!(store.queue_counters().delivered, 5);

    // A record larger than the whole budget is still handed out, alone.
    store
        .submit(
            "sup-a",
            "b",
            vec![rec("big", &"y".repeat(1000)), rec("small", "z")],
        )
        .await
        .unwrap();
    let got = store.pull_within(10, budget, NOW, LEASE).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, "big");
}
