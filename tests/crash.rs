//! Crash and pause testing in the spirit of the Jepsen analyses of message
//! systems: the real `schakel serve` process is SIGKILLed at random moments
//! during live traffic (and restarted) and SIGSTOPped for longer than a lease
//! while suppliers push and the registry pulls, acks, releases, and on purpose
//! leaves some leases to run out. A checker then compares what the clients were
//! told:
//!
//! - lost: a record acknowledged to a supplier that the registry never got;
//! - not settled: an acknowledged record the registry never acked with a live
//!   lease (an ack counts only when its own per-token answer is `ACKED`);
//! - not returned: a lease left to run out, released, or refused as expired,
//!   whose record never came back (at-most-once delivery);
//! - vanished: a first ack of a fresh token answered `ALREADY_ACKED` (the record
//!   was gone before anybody acked it);
//! - redelivered after ack: a record delivered again after its ack was answered;
//! - double copies: one (supplier, message id) under two sequences;
//! - unexpected: a delivered record that no supplier sent.
//!
//! All must be zero, and the run must show that the faults hit live traffic:
//! more deliveries than distinct records, and redeliveries (attempt > 1). The
//! run is bounded: a fixed number of batches and kills; a client retries only
//! on UNAVAILABLE or a broken connection, and only until a deadline, so a
//! permanent refusal fails fast.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{ChildGateway, SUPPLIERS};
use common::{batch, record};
use rand::{Rng, SeedableRng};
use schakel::proto::intake_client::IntakeClient;
use schakel::proto::registry_client::RegistryClient;
use schakel::proto::{AckRequest, PullRequest, RecordStatus, ReleaseRequest, TokenOutcome};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::Code;

/// Each supplier sends at least this many batches, and goes on (one batch per
/// [`PUSH_PACE`]) until the last kill has landed, so that every kill meets live
/// traffic however fast the machine is.
const BATCHES_PER_SUPPLIER: usize = 30;
/// A bound on the batches per supplier, whatever happens.
const MAX_BATCHES_PER_SUPPLIER: usize = 1_000;
const PUSH_PACE: Duration = Duration::from_millis(50);
const RECORDS_PER_BATCH: usize = 40;
const KILLS: usize = 20;
/// Long enough that an ack under a loaded machine's delays still finds its
/// lease; a lease that does run out is counted and its record must come back.
const LEASE_MS: u32 = 1_000;
/// Of every 100 deliveries, the consumer leaves this many to run out...
const LEAVE_PERCENT: u32 = 8;
/// ... and releases this many.
const RELEASE_PERCENT: u32 = 8;
/// How long one call may keep failing with UNAVAILABLE (the gateway restarting)
/// before the test gives up.
const RETRY_FOR: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Observed {
    /// (supplier, message id) -> sequence, for every record a supplier was told
    /// ACCEPTED or DUPLICATE.
    acknowledged: HashMap<(String, String), u64>,
    /// Every (supplier, message id) any supplier ever sent.
    sent: HashSet<(String, String)>,
    /// Delivered: sequence -> (supplier, message id).
    delivered: HashMap<u64, (String, String)>,
    /// Sequences acked with a live lease: their token's own answer was ACKED.
    acked: HashSet<u64>,
    /// Sequences whose ack call failed (the gateway died mid-call) and whose
    /// retry answered ALREADY_ACKED: the first call did the ack.
    acked_unanswered: HashSet<u64>,
    /// Sequences given back (left to run out, released, or refused as
    /// expired) that have not been delivered again yet.
    must_return: HashSet<u64>,
    /// Of those, how many came back.
    returned: usize,
    left_to_expire: usize,
    released: usize,
    /// A fresh token's first ack answered ALREADY_ACKED.
    vanished: usize,
    /// Deliveries of a sequence after its ack was answered.
    redelivered_after_ack: usize,
    deliveries: usize,
    /// Deliveries with attempt > 1.
    redeliveries: usize,
    /// The highest delivery attempt seen per sequence (for the diagnosis).
    attempts: HashMap<u64, u32>,
    kills: usize,
    /// Kills while the suppliers were still pushing.
    kills_while_pushing: usize,
    pauses: usize,
    /// Calls that failed with UNAVAILABLE or a broken connection, retried.
    retried: usize,
}

/// Whether a failed call may be retried: UNAVAILABLE from the gateway (it is
/// starting or stopping), or a call that got no answer at all: the connection
/// died under it (the process was killed mid-call: tonic reports UNKNOWN with
/// the transport or hyper error as its source) or the client's own per-call
/// timeout ran out (the process was paused: CANCELLED, source
/// `TimeoutExpired`). A status the server sent has no source. Any status the
/// gateway itself sent other than UNAVAILABLE is a permanent refusal and fails
/// the test at once, and so does a gateway that stays away longer than
/// [`RETRY_FOR`].
fn retryable(status: &tonic::Status, since: Instant, what: &str) -> bool {
    let connection_died = matches!(status.code(), Code::Unknown | Code::Cancelled)
        && std::error::Error::source(status).is_some();
    assert!(
        status.code() == Code::Unavailable || connection_died,
        "{what}: only UNAVAILABLE or a call without an answer may be retried: {status:?}"
    );
    assert!(
        since.elapsed() < RETRY_FOR,
        "{what}: still failing after {RETRY_FOR:?}: {status:?}"
    );
    true
}

async fn supplier(
    gw: Arc<ChildGateway>,
    name: &'static str,
    seen: Arc<Mutex<Observed>>,
    progress: Arc<AtomicUsize>,
) {
    let _flag = FailFlag;
    for b in 0..MAX_BATCHES_PER_SUPPLIER {
        if b >= BATCHES_PER_SUPPLIER && !KEEP_PUSHING.load(Ordering::Acquire) {
            break;
        }
        if b > 0 {
            tokio::time::sleep(PUSH_PACE).await;
        }
        let records: Vec<_> = (0..RECORDS_PER_BATCH)
            .map(|i| record(&format!("{name}-{b:03}-{i:03}")))
            .collect();
        {
            let mut s = seen.lock().unwrap();
            for r in &records {
                s.sent.insert((name.to_string(), r.message_id.clone()));
            }
        }
        let request = batch(&format!("{name}-{b:03}"), records);
        // Resend the same batch until it is answered: a resend is safe (dedup).
        let since = Instant::now();
        loop {
            let channel = gw.channel(name, RETRY_FOR).await;
            match IntakeClient::new(channel)
                .submit_batch(request.clone())
                .await
            {
                Ok(receipt) => {
                    let receipt = receipt.into_inner();
                    assert_eq!(receipt.rejected, 0, "valid records rejected: {receipt:?}");
                    assert_eq!(
                        receipt.accepted + receipt.duplicate,
                        RECORDS_PER_BATCH as u32,
                        "{receipt:?}"
                    );
                    let mut s = seen.lock().unwrap();
                    let not_plain: HashMap<u32, (i32, u64)> = receipt
                        .results
                        .iter()
                        .map(|r| (r.index, (r.status, r.sequence)))
                        .collect();
                    for (i, r) in request.records.iter().enumerate() {
                        if let Some((status, _)) = not_plain.get(&(i as u32)) {
                            assert_eq!(*status, RecordStatus::Duplicate as i32);
                        }
                        // The sequence is not in plain accepts; the checker
                        // needs only the key.
                        s.acknowledged
                            .entry((name.to_string(), r.message_id.clone()))
                            .or_insert(0);
                    }
                    progress.fetch_add(1, Ordering::AcqRel);
                    break;
                }
                Err(status) => {
                    retryable(&status, since, name);
                    seen.lock().unwrap().retried += 1;
                }
            }
        }
    }
}

/// What the consumer does with one delivery.
#[derive(Clone, Copy, PartialEq)]
enum Fate {
    Ack,
    Leave,
    Release,
}

/// The registry's consumer. Most deliveries are acked; some are released and
/// some left to run out, and each of those must come back. An ack or release
/// whose answer was lost (the gateway died mid-call) is retried with the same
/// tokens after reconnecting, as a real consumer must: both are idempotent.
async fn registry(
    gw: Arc<ChildGateway>,
    seen: Arc<Mutex<Observed>>,
    progress: Arc<AtomicUsize>,
    seed: u64,
    mut stop: watch::Receiver<bool>,
) {
    let _flag = FailFlag;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed);
    // (token, sequence, fate, whether an earlier call with it failed)
    let mut unanswered: Vec<(String, u64, Fate, bool)> = Vec::new();
    let mut since = Instant::now();
    loop {
        if *stop.borrow() {
            return;
        }
        let channel = tokio::select! {
            c = gw.channel("registry", RETRY_FOR) => c,
            _ = stop.changed() => return,
        };
        let mut client = RegistryClient::new(channel);
        loop {
            if *stop.borrow() {
                return;
            }
            if unanswered.is_empty() {
                let pulled = match client
                    .pull(PullRequest {
                        max_records: 200,
                        wait_ms: 200,
                        lease_ms: LEASE_MS,
                    })
                    .await
                {
                    Ok(p) => p.into_inner(),
                    Err(status) => {
                        retryable(&status, since, "pull");
                        seen.lock().unwrap().retried += 1;
                        break;
                    }
                };
                since = Instant::now();
                let mut s = seen.lock().unwrap();
                for d in &pulled.records {
                    s.deliveries += 1;
                    if d.delivery_attempt > 1 {
                        s.redeliveries += 1;
                    }
                    let top = s.attempts.entry(d.sequence).or_default();
                    *top = (*top).max(d.delivery_attempt);
                    if s.acked.contains(&d.sequence) || s.acked_unanswered.contains(&d.sequence) {
                        s.redelivered_after_ack += 1;
                    }
                    if s.must_return.remove(&d.sequence) {
                        s.returned += 1;
                    }
                    let key = (d.supplier_id.clone(), d.message_id.clone());
                    if let Some(previous) = s.delivered.insert(d.sequence, key.clone()) {
                        assert_eq!(previous, key, "one sequence, two records");
                    }
                    // Give back only while the faults run; the drain acks.
                    let roll = if GIVE_BACK.load(Ordering::Acquire) {
                        rng.random_range(0..100)
                    } else {
                        100
                    };
                    let fate = if roll < LEAVE_PERCENT {
                        Fate::Leave
                    } else if roll < LEAVE_PERCENT + RELEASE_PERCENT {
                        Fate::Release
                    } else {
                        Fate::Ack
                    };
                    if fate == Fate::Leave {
                        // Never acked nor released: the lease runs out.
                        s.left_to_expire += 1;
                        s.must_return.insert(d.sequence);
                    } else {
                        unanswered.push((d.lease_token.clone(), d.sequence, fate, false));
                    }
                }
            }
            if unanswered.is_empty() {
                continue;
            }
            let of = |fate: Fate| -> Vec<(String, u64, bool)> {
                unanswered
                    .iter()
                    .filter(|u| u.2 == fate)
                    .map(|u| (u.0.clone(), u.1, u.3))
                    .collect()
            };
            let (acks, releases) = (of(Fate::Ack), of(Fate::Release));
            let mut failed = false;
            if !releases.is_empty() {
                match client
                    .release(ReleaseRequest {
                        lease_tokens: releases.iter().map(|r| r.0.clone()).collect(),
                    })
                    .await
                {
                    Ok(answer) => {
                        let results = answer.into_inner().results;
                        assert_eq!(results.len(), releases.len(), "one answer per token");
                        let mut s = seen.lock().unwrap();
                        for (r, (_, seq, _)) in results.iter().zip(&releases) {
                            let outcome = TokenOutcome::try_from(r.outcome);
                            assert!(
                                matches!(
                                    outcome,
                                    Ok(TokenOutcome::Released
                                        | TokenOutcome::AlreadyReleased
                                        | TokenOutcome::LeaseExpired
                                        | TokenOutcome::UnknownToken)
                                ),
                                "release of {seq} answered {outcome:?}"
                            );
                            // Whatever the answer (released, or expired by a
                            // pause or a restart), the record must come back.
                            s.released += 1;
                            s.must_return.insert(*seq);
                        }
                        unanswered.retain(|u| u.2 != Fate::Release);
                    }
                    Err(status) => {
                        retryable(&status, since, "release");
                        failed = true;
                    }
                }
            }
            if !failed && !acks.is_empty() {
                match client
                    .ack(AckRequest {
                        lease_tokens: acks.iter().map(|a| a.0.clone()).collect(),
                    })
                    .await
                {
                    Ok(answer) => {
                        let results = answer.into_inner().results;
                        assert_eq!(results.len(), acks.len(), "one answer per token");
                        let mut s = seen.lock().unwrap();
                        for (r, (_, seq, retried)) in results.iter().zip(&acks) {
                            match TokenOutcome::try_from(r.outcome) {
                                Ok(TokenOutcome::Acked) => {
                                    assert_eq!(r.sequence, *seq);
                                    s.acked.insert(*seq);
                                }
                                Ok(TokenOutcome::AlreadyAcked) if *retried => {
                                    // The failed call did the ack.
                                    s.acked_unanswered.insert(*seq);
                                }
                                Ok(TokenOutcome::AlreadyAcked) => s.vanished += 1,
                                // Expired by a pause, or a restart in between:
                                // it must come back.
                                Ok(TokenOutcome::LeaseExpired | TokenOutcome::UnknownToken) => {
                                    s.must_return.insert(*seq);
                                }
                                other => panic!("ack of {seq} answered {other:?}"),
                            }
                        }
                        unanswered.retain(|u| u.2 != Fate::Ack);
                        progress.fetch_add(1, Ordering::AcqRel);
                    }
                    Err(status) => {
                        retryable(&status, since, "ack");
                        failed = true;
                    }
                }
            }
            if failed {
                seen.lock().unwrap().retried += 1;
                for u in &mut unanswered {
                    u.3 = true;
                }
                break;
            }
            since = Instant::now();
        }
    }
}

/// The gateway's dead-letter and queue gauges, for a failure message.
async fn queue_metrics(gw: &ChildGateway) -> String {
    let text = common::process::http_get(gw.http_addr, "/metrics").await;
    text.lines()
        .filter(|l| {
            l.starts_with("schakel_dead_letter")
                || l.starts_with("schakel_queue_depth")
                || l.starts_with("schakel_leases")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Set when a client task panics (a failed assertion), so the killer and the
/// drain stop at once instead of waiting for their deadlines.
static FAILED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether the consumer still leaves and releases leases (until the drain).
static GIVE_BACK: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Whether the suppliers go on pushing past [`BATCHES_PER_SUPPLIER`] (until
/// the last kill).
static KEEP_PUSHING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Held by each client task: marks [`FAILED`] if the task unwinds.
struct FailFlag;

impl Drop for FailFlag {
    fn drop(&mut self) {
        if std::thread::panicking() {
            FAILED.store(true, Ordering::Release);
        }
    }
}

fn assert_no_task_failed() {
    assert!(
        !FAILED.load(Ordering::Acquire),
        "a client task failed (its panic is above)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_pause_lose_nothing_and_duplicate_nothing() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("crash test seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    // A short redelivery backoff: records given back come back within the run.
    let gw = Arc::new(ChildGateway::start_with(
        &[("SCHAKEL_LOG", "info")],
        // No dead letters here (they are tested in tests/operations.rs): a
        // record given back many times must keep coming back.
        &[
            ("limits", "redelivery_backoff_ms = 20"),
            ("limits", "max_deliveries = 1000"),
        ],
    ));
    let seen = Arc::new(Mutex::new(Observed::default()));
    let progress = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut suppliers = Vec::new();
    for name in SUPPLIERS {
        suppliers.push(tokio::spawn(supplier(
            gw.clone(),
            name,
            seen.clone(),
            progress.clone(),
        )));
    }
    let consumer = tokio::spawn(registry(
        gw.clone(),
        seen.clone(),
        progress.clone(),
        seed,
        stop_rx,
    ));

    // The killer: each kill lands after the restarted gateway has answered
    // at least one batch or ack (live traffic), at a random moment after it.
    for k in 0..=KILLS {
        let before = progress.load(Ordering::Acquire);
        let deadline = Instant::now() + RETRY_FOR;
        while progress.load(Ordering::Acquire) == before {
            assert_no_task_failed();
            assert!(
                Instant::now() < deadline,
                "no traffic answered within {RETRY_FOR:?} after restart {k}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..100))).await;
        if k == KILLS / 2 {
            // Pause longer than a lease, then resume.
            gw.signal("STOP");
            tokio::time::sleep(Duration::from_millis(u64::from(LEASE_MS) + 500)).await;
            gw.signal("CONT");
            seen.lock().unwrap().pauses += 1;
            continue;
        }
        let pushing = suppliers.iter().any(|s| !s.is_finished());
        gw.kill();
        gw.spawn();
        let mut s = seen.lock().unwrap();
        s.kills += 1;
        s.kills_while_pushing += usize::from(pushing);
    }
    KEEP_PUSHING.store(false, Ordering::Release);
    for s in suppliers {
        s.await.expect("supplier task");
    }
    GIVE_BACK.store(false, Ordering::Release);
    // Drain: wait until every acknowledged record has been acked by the
    // registry and every record given back has come back.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let failure = {
            let s = seen.lock().unwrap();
            let settled: HashSet<&(String, String)> = s
                .acked
                .iter()
                .chain(&s.acked_unanswered)
                .filter_map(|q| s.delivered.get(q))
                .collect();
            let missing: Vec<_> = s
                .acknowledged
                .keys()
                .filter(|k| !settled.contains(k))
                .collect();
            if missing.is_empty() && s.must_return.is_empty() {
                break;
            }
            assert_no_task_failed();
            (Instant::now() >= deadline).then(|| {
                let delivered_keys: HashSet<&(String, String)> = s.delivered.values().collect();
                let stuck: Vec<(u64, Option<u32>)> = s
                    .must_return
                    .iter()
                    .take(3)
                    .map(|q| (*q, s.attempts.get(q).copied()))
                    .collect();
                format!(
                    "drain did not finish: {} acknowledged records not acked by the registry, {} of them never delivered, e.g. {:?}; \
                     {} records given back never came back, e.g. (sequence, highest attempt seen) {stuck:?}; deliveries {} acked {}",
                    missing.len(),
                    missing.iter().filter(|k| !delivered_keys.contains(**k)).count(),
                    missing.iter().take(3).collect::<Vec<_>>(),
                    s.must_return.len(),
                    s.deliveries,
                    s.acked.len()
                )
            })
        };
        if let Some(failure) = failure {
            panic!("{failure}; gateway: {}", queue_metrics(&gw).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every lease handed out is acked now (nothing left, nothing given back),
    // so a further pull round must find nothing: anything it finds was
    // delivered again after its ack (counted by the consumer).
    tokio::time::sleep(Duration::from_millis(u64::from(LEASE_MS) + 300)).await;
    stop_tx.send(true).expect("stop consumer");
    consumer.await.expect("consumer task");

    let s = seen.lock().unwrap();
    let delivered_keys: HashSet<&(String, String)> = s.delivered.values().collect();
    let lost = s
        .acknowledged
        .keys()
        .filter(|k| !delivered_keys.contains(k))
        .count();
    let mut per_key: HashMap<&(String, String), HashSet<u64>> = HashMap::new();
    for (seq, key) in &s.delivered {
        per_key.entry(key).or_default().insert(*seq);
    }
    let double_copies = per_key.values().filter(|seqs| seqs.len() > 1).count();
    let unexpected = delivered_keys
        .iter()
        .filter(|k| !s.sent.contains(**k))
        .count();
    println!(
        "kills {} (while pushing {}) pauses {} retried {} | sent {} acknowledged to suppliers {} | \
         deliveries {} distinct {} redeliveries {} | acked live {} acked by a lost call {} | \
         left to expire {} released {} returned {} | lost {lost} vanished {} not-returned {} \
         redelivered-after-ack {} double-copies {double_copies} unexpected {unexpected}",
        s.kills,
        s.kills_while_pushing,
        s.pauses,
        s.retried,
        s.sent.len(),
        s.acknowledged.len(),
        s.deliveries,
        s.delivered.len(),
        s.redeliveries,
        s.acked.len(),
        s.acked_unanswered.len(),
        s.left_to_expire,
        s.released,
        s.returned,
        s.vanished,
        s.must_return.len(),
        s.redelivered_after_ack,
    );
    assert_eq!(s.kills, KILLS);
    assert_eq!(
        s.acknowledged.len(),
        s.sent.len(),
        "every record sent was answered"
    );
    assert!(s.sent.len() >= SUPPLIERS.len() * BATCHES_PER_SUPPLIER * RECORDS_PER_BATCH);
    assert_eq!(lost, 0, "records acknowledged to a supplier were lost");
    assert_eq!(
        s.vanished, 0,
        "records left the queue before they were acked (a fresh ack answered ALREADY_ACKED)"
    );
    assert_eq!(s.must_return.len(), 0, "records given back never came back");
    assert_eq!(
        s.redelivered_after_ack, 0,
        "records delivered again after their ack was answered"
    );
    assert_eq!(double_copies, 0, "a resend created a second copy");
    assert_eq!(unexpected, 0, "records appeared that no supplier sent");
    // The faults hit live traffic, and the give-backs really happened.
    assert!(
        s.deliveries > s.delivered.len(),
        "no record was delivered twice: the faults missed the traffic"
    );
    assert!(s.redeliveries > 0, "no delivery with attempt > 1");
    assert!(s.left_to_expire > 0 && s.released > 0);
    assert!(
        s.kills_while_pushing > 0,
        "every kill came after the suppliers had finished"
    );
}
