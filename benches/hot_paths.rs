//! Micro-benchmarks of the hot paths: validating one record, the store's
//! submit (dedup + enqueue + group commit) and pull (lease) on a temp sled
//! store, and the record log (issue 13, not wired in yet): append + sync of a
//! batch on the real file system, to compare with `store/submit_batch_of_1000`
//! in the same run.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message;
use rand::SeedableRng;
use schakel::bench::gen;
use schakel::schema::{self, Rules};
use schakel::store::log::{LogOptions, RecordLog};
use schakel::store::{NewRecord, Store, StoreOptions};

fn records(n: usize, prefix: &str) -> Vec<schakel::proto::VaccinationRecord> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    (0..n)
        .map(|i| {
            let id = gen::message_id(&mut rng, prefix, i as u64);
            gen::record(&mut rng, id)
        })
        .collect()
}

fn validation(c: &mut Criterion) {
    let pool = records(1_000, "val");
    let rules = Rules::default();
    let today = time::macros::date!(2022 - 01 - 01);
    let mut g = c.benchmark_group("schema");
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("validate_record", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % pool.len();
                pool[i].clone()
            },
            |mut r| schema::validate_record(&mut r, &rules, today),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn store_paths(c: &mut Criterion) {
    const BATCH: usize = 1_000;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("data"), StoreOptions::default()).expect("store");
    let contents: Vec<Vec<u8>> = records(BATCH, "content")
        .iter()
        .map(Message::encode_to_vec)
        .collect();
    let mut next = 0u64;
    let mut batch = move || {
        let out: Vec<NewRecord> = contents
            .iter()
            .map(|c| {
                next += 1;
                NewRecord {
                    message_id: format!("bench-{next}"),
                    content: c.clone(),
                }
            })
            .collect();
        out
    };

    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.bench_function("submit_batch_of_1000", |b| {
        b.iter_batched(
            &mut batch,
            |records| {
                rt.block_on(store.submit("supplier-a", "b", records))
                    .expect("submit")
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("pull_and_ack_1000", |b| {
        b.iter_batched(
            || {
                rt.block_on(store.submit("supplier-a", "b", batch()))
                    .expect("submit");
            },
            |()| {
                rt.block_on(async {
                    let leased = store
                        .pull(BATCH, Duration::ZERO, Duration::from_secs(600))
                        .await
                        .expect("pull");
                    let tokens: Vec<String> = leased.into_iter().map(|d| d.lease_token).collect();
                    store.ack(&tokens).await.expect("ack")
                })
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("pull_lease_only_1000", |b| {
        b.iter_batched(
            || {
                rt.block_on(store.submit("supplier-a", "b", batch()))
                    .expect("submit");
            },
            |()| {
                rt.block_on(store.pull(BATCH, Duration::ZERO, Duration::from_secs(600)))
                    .expect("pull")
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// 1000 records of 220 bytes (about a record's encoded size) appended and
/// made durable with one `sync` (one fdatasync), on the real file system.
/// Whole segments behind the tail are deleted between iterations, outside
/// the measured time, so the bench holds at most a few segments on disk.
fn record_log(c: &mut Criterion) {
    const BATCH: usize = 1_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = LogOptions {
        segment_bytes: 8 << 20,
        ..LogOptions::default()
    };
    let mut log = RecordLog::open_std(&dir.path().join("log"), opts).expect("log");
    let payload = vec![0x5au8; 220];
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.bench_function("append_and_sync_1000x220", |b| {
        b.iter_custom(|iters| {
            let mut measured = Duration::ZERO;
            for _ in 0..iters {
                let keep_from = log.durable_next();
                log.delete_below(keep_from).expect("delete");
                let start = Instant::now();
                for _ in 0..BATCH {
                    log.append(&payload).expect("append");
                }
                log.sync().expect("sync");
                measured += start.elapsed();
            }
            measured
        })
    });
    g.finish();
}

criterion_group!(benches, validation, store_paths, record_log);
criterion_main!(benches);
