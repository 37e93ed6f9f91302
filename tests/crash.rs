//! Crash and pause testing in the spirit of the Jepsen analyses of message
//! systems: the real `schakel serve` process is SIGKILLed at random moments (and
//! restarted) and SIGSTOPped for longer than a lease while suppliers push and the
//! registry pulls and acks. A checker then compares what the clients were told:
//!
//! - lost: a record acknowledged to a supplier that the registry never got;
//! - redelivered after ack: a record delivered again after its ack was answered;
//! - double copies: one (supplier, message id) under two sequences;
//! - unexpected: a delivered record that no supplier sent.
//!
//! All four must be zero. The run is bounded: a fixed number of batches and kills.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::process::{ChildGateway, SUPPLIERS};
use common::{batch, record};
use rand::{Rng, SeedableRng};
use schakel::proto::intake_client::IntakeClient;
use schakel::proto::registry_client::RegistryClient;
use schakel::proto::{AckRequest, PullRequest, RecordStatus, TokenOutcome};
use tokio::sync::watch;

const BATCHES_PER_SUPPLIER: usize = 30;
const RECORDS_PER_BATCH: usize = 40;
const KILLS: usize = 20;
const LEASE_MS: u32 = 400;

#[derive(Default)]
struct Observed {
    /// (supplier, message id) -> sequence, for every record a supplier was told
    /// ACCEPTED or DUPLICATE.
    acknowledged: HashMap<(String, String), u64>,
    /// Every (supplier, message id) any supplier ever sent.
    sent: HashSet<(String, String)>,
    /// Delivered: sequence -> (supplier, message id).
    delivered: HashMap<u64, (String, String)>,
    /// Sequences whose ack was answered ACKED or ALREADY_ACKED.
    acked: HashSet<u64>,
    /// Deliveries of a sequence after its ack was answered.
    redelivered_after_ack: usize,
    deliveries: usize,
    kills: usize,
    pauses: usize,
}

async fn supplier(gw: Arc<ChildGateway>, name: &'static str, seen: Arc<Mutex<Observed>>) {
    for b in 0..BATCHES_PER_SUPPLIER {
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
        // Retry the same batch until it is answered: a resend is safe.
        loop {
            let channel = gw.channel(name, Duration::from_secs(60)).await;
            match IntakeClient::new(channel)
                .submit_batch(request.clone())
                .await
            {
                Ok(receipt) => {
                    let receipt = receipt.into_inner();
                    assert_eq!(receipt.rejected, 0, "valid records rejected: {receipt:?}");
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
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}

/// The registry's consumer. An ack whose answer was lost (the gateway died
/// mid-call) is retried with the same tokens after reconnecting, as a real
/// consumer must: acks are idempotent (ALREADY_ACKED).
async fn registry(
    gw: Arc<ChildGateway>,
    seen: Arc<Mutex<Observed>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut unanswered: Vec<(String, u64)> = Vec::new();
    loop {
        if *stop.borrow() {
            return;
        }
        let channel = tokio::select! {
            c = gw.channel("registry", Duration::from_secs(60)) => c,
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
                    Err(_) => break,
                };
                let mut s = seen.lock().unwrap();
                for d in &pulled.records {
                    s.deliveries += 1;
                    if s.acked.contains(&d.sequence) {
                        s.redelivered_after_ack += 1;
                    }
                    let key = (d.supplier_id.clone(), d.message_id.clone());
                    if let Some(previous) = s.delivered.insert(d.sequence, key.clone()) {
                        assert_eq!(previous, key, "one sequence, two records");
                    }
                    unanswered.push((d.lease_token.clone(), d.sequence));
                }
            }
            if unanswered.is_empty() {
                continue;
            }
            let tokens = unanswered.iter().map(|(t, _)| t.clone()).collect();
            match client
                .ack(AckRequest {
                    lease_tokens: tokens,
                })
                .await
            {
                Ok(answer) => {
                    let mut s = seen.lock().unwrap();
                    for (r, (_, seq)) in answer.into_inner().results.iter().zip(&unanswered) {
                        if r.outcome == TokenOutcome::Acked as i32
                            || r.outcome == TokenOutcome::AlreadyAcked as i32
                        {
                            s.acked.insert(*seq);
                        }
                    }
                    unanswered.clear();
                }
                Err(_) => break,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_pause_lose_nothing_and_duplicate_nothing() {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::rng().random());
    println!("crash test seed {seed} (rerun with CRASH_SEED={seed})");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let gw = Arc::new(ChildGateway::start(&[("SCHAKEL_LOG", "info")]));
    let seen = Arc::new(Mutex::new(Observed::default()));
    let (stop_tx, stop_rx) = watch::channel(false);

    let mut suppliers = Vec::new();
    for name in SUPPLIERS {
        suppliers.push(tokio::spawn(supplier(gw.clone(), name, seen.clone())));
    }
    let consumer = tokio::spawn(registry(gw.clone(), seen.clone(), stop_rx));

    // The killer.
    for k in 0..=KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..250))).await;
        if k == KILLS / 2 {
            // Pause longer than a lease, then resume.
            gw.signal("STOP");
            tokio::time::sleep(Duration::from_millis(u64::from(LEASE_MS) * 2)).await;
            gw.signal("CONT");
            seen.lock().unwrap().pauses += 1;
            continue;
        }
        gw.kill();
        gw.spawn();
        seen.lock().unwrap().kills += 1;
    }
    for s in suppliers {
        s.await.expect("supplier task");
    }
    // Drain: wait until every acknowledged record has been delivered and acked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        {
            let s = seen.lock().unwrap();
            let acked_keys: HashSet<&(String, String)> =
                s.acked.iter().filter_map(|q| s.delivered.get(q)).collect();
            let missing: Vec<_> = s
                .acknowledged
                .keys()
                .filter(|k| !acked_keys.contains(k))
                .collect();
            if missing.is_empty() {
                break;
            }
            let delivered_keys: HashSet<&(String, String)> = s.delivered.values().collect();
            assert!(
                tokio::time::Instant::now() < deadline,
                "drain did not finish: {} acknowledged records not acked by the registry, {} of them never delivered, e.g. {:?}; deliveries {} acked {}",
                missing.len(),
                missing.iter().filter(|k| !delivered_keys.contains(**k)).count(),
                missing.iter().take(3).collect::<Vec<_>>(),
                s.deliveries,
                s.acked.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // One more pull round to catch anything delivered again after its ack.
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
        "kills {} pauses {} | sent {} acknowledged to suppliers {} | deliveries {} distinct {} acked {} | \
         lost {lost} redelivered-after-ack {} double-copies {double_copies} unexpected {unexpected}",
        s.kills,
        s.pauses,
        s.sent.len(),
        s.acknowledged.len(),
        s.deliveries,
        s.delivered.len(),
        s.acked.len(),
        s.redelivered_after_ack,
    );
    assert_eq!(s.kills, KILLS);
    assert_eq!(
        s.acknowledged.len(),
        SUPPLIERS.len() * BATCHES_PER_SUPPLIER * RECORDS_PER_BATCH
    );
    assert_eq!(lost, 0, "records acknowledged to a supplier were lost");
    assert_eq!(
        s.redelivered_after_ack, 0,
        "records delivered again after their ack was answered"
    );
    assert_eq!(double_copies, 0, "a resend created a second copy");
    assert_eq!(unexpected, 0, "records appeared that no supplier sent");
}
