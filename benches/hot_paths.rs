//! Micro-benchmarks of the hot paths: validating one record, and the store's
//! submit (dedup + enqueue + group commit) and pull (lease) on a temp sled store.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message;
use rand::SeedableRng;
use schakel::bench::gen;
use schakel::schema::{self, Rules};
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

criterion_group!(benches, validation, store_paths);
criterion_main!(benches);
