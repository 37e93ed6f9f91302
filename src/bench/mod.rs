//! `schakel bench`: measures the real gateway against its own limits in one run.
//!
//! Owns: a fresh PKI and data folder, the gateway and two baseline sinks started
//! as child processes (so their CPU and memory are theirs alone), the seeded
//! load (C suppliers, batches of B, a fraction of resends), the drain through
//! the registry's Pull + Ack, the exactly-once check and the report table.
//! Must not: be used by the serving path, or log record content.
//! Called by: `schakel bench` (src/cli/bench.rs) and tests/bench_smoke.rs.

pub mod gen;
pub mod proc;
pub mod sink;

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tokio::sync::{mpsc, Barrier};
use tonic::transport::Channel;

use crate::client::{connect, ClientFiles};
use crate::proto::intake_client::IntakeClient;
use crate::proto::registry_client::RegistryClient;
use crate::proto::{AckRequest, Batch, PullRequest, RecordStatus, TokenOutcome};
use crate::store::{NewRecord, Store, StoreOptions};
use crate::tls::dev::{ClientCertOptions, TestCa};

use proc::{dir_size, free_port, Child};

/// Why a benchmark run could not be made (a run that loses records is not an
/// error here: it is a report whose exactly-once check failed).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Certificates, config, child processes or the store could not be set up.
    #[error("setting up the benchmark: {0}")]
    Setup(String),
    /// A file or socket operation failed.
    #[error("benchmark I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A call to the gateway or a sink failed.
    #[error("benchmark call failed: {0}")]
    Call(String),
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// The `schakel` binary to start the gateway and the sinks with.
    pub exe: PathBuf,
    /// Records pushed at full load (N), resends included.
    pub records: usize,
    /// Concurrent suppliers (C), one TLS channel each.
    pub suppliers: usize,
    /// Records per batch (B).
    pub batch: usize,
    /// Fraction of records that are resends of an earlier message id.
    pub resend_fraction: f64,
    /// Seed of the generated records.
    pub seed: u64,
    /// Dedup entries (queued records of another supplier) put in the store
    /// before the gateway starts.
    pub scale: u64,
    /// Also run the two baseline sinks.
    pub baselines: bool,
    /// Also run a second push at half the achieved rate.
    pub half_load: bool,
}

impl BenchOptions {
    /// The targets: N = 100,000, C = 4, B = 1000, 5% resends.
    pub fn new(exe: PathBuf) -> BenchOptions {
        BenchOptions {
            exe,
            records: 100_000,
            suppliers: 4,
            batch: 1_000,
            resend_fraction: 0.05,
            seed: 1,
            scale: 0,
            baselines: true,
            half_load: true,
        }
    }

    /// A few seconds in a debug build: N = 5,000, B = 250.
    pub fn smoke(exe: PathBuf) -> BenchOptions {
        BenchOptions {
            records: 5_000,
            batch: 250,
            ..BenchOptions::new(exe)
        }
    }
}

/// One push phase.
#[derive(Debug, Clone, Default)]
pub struct PushStats {
    pub records: usize,
    pub accepted: usize,
    pub duplicate: usize,
    pub rejected: usize,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub batches: usize,
}

impl PushStats {
    /// Records (resends included) per second.
    pub fn records_per_s(&self) -> f64 {
        per_second(self.records, self.elapsed)
    }
    pub fn accepted_per_s(&self) -> f64 {
        per_second(self.accepted, self.elapsed)
    }
}

fn per_second(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// The exactly-once check over everything pulled.
#[derive(Debug, Clone, Default)]
pub struct ExactlyOnce {
    /// Accepted records of the measured suppliers.
    pub accepted: usize,
    /// Distinct records pulled of the measured suppliers.
    pub pulled: usize,
    /// Accepted but never pulled.
    pub missing: usize,
    /// Pulled but never accepted.
    pub unexpected: usize,
    /// Pulled more than once.
    pub duplicates: usize,
    /// Prefilled records expected and pulled (scale mode), each once.
    pub prefill_expected: u64,
    pub prefill_pulled: u64,
    /// Ack answers other than ACKED.
    pub bad_acks: usize,
}

impl ExactlyOnce {
    /// Adds the counts of another phase's check (not its prefill counts).
    fn add(&mut self, other: &ExactlyOnce) {
        self.accepted += other.accepted;
        self.pulled += other.pulled;
        self.missing += other.missing;
        self.unexpected += other.unexpected;
        self.duplicates += other.duplicates;
        self.bad_acks += other.bad_acks;
    }

    pub fn passed(&self) -> bool {
        self.missing == 0
            && self.unexpected == 0
            && self.duplicates == 0
            && self.bad_acks == 0
            && self.accepted == self.pulled
            && self.prefill_expected == self.prefill_pulled
    }
}

/// The drain.
#[derive(Debug, Clone, Default)]
pub struct DrainStats {
    pub records: usize,
    pub elapsed: Duration,
}

/// Everything one run measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    pub options: BenchOptions,
    pub mean_record_bytes: usize,
    pub gateway: PushStats,
    pub drain: DrainStats,
    pub cpu_ingest_s: Option<f64>,
    pub cpu_drain_s: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
    pub disk_bytes: u64,
    pub stored_records: u64,
    pub null_sink: Option<PushStats>,
    pub fsync_sink: Option<PushStats>,
    pub half_load: Option<(f64, PushStats)>,
    pub check: ExactlyOnce,
    pub prefill_elapsed: Option<Duration>,
    /// Scale mode: the same ingest and drain against an empty store, measured
    /// in the same run before the prefilled one, as the reference.
    pub empty_store: Option<(PushStats, DrainStats)>,
}

/// The labels of the table's rows, in order (the smoke test checks them).
pub const ROWS: &[&str] = &[
    "ingest, all records incl. resends (rec/s)",
    "ingest, accepted (rec/s)",
    "batch latency p50 / p99 / max (ms)",
    "drain, pull + ack (rec/s)",
    "server CPU s per 100k records, ingest / drain",
    "server peak RSS (MB)",
    "disk bytes per stored record",
    "baseline null sink (rec/s), gateway as % of it",
    "baseline fsync sink (rec/s), gateway as % of it",
    "half load: rate (rec/s), latency p50 / p99 / max (ms)",
    "scale: empty store ingest / drain (rec/s), prefilled as % of it",
    "exactly once (accepted == pulled, no duplicates)",
];

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

impl BenchReport {
    /// The run passed: every accepted record was pulled exactly once, and
    /// nothing was rejected.
    pub fn passed(&self) -> bool {
        self.check.passed() && self.gateway.rejected == 0
    }

    /// The report as a Markdown table.
    pub fn table(&self) -> String {
        let o = &self.options;
        let g = &self.gateway;
        let mut t = String::new();
        let _ = writeln!(
            t,
            "N = {} records ({:.0}% resends, mean {} B encoded), C = {} suppliers, B = {}, seed {}, prefilled dedup entries {}{}",
            o.records,
            o.resend_fraction * 100.0,
            self.mean_record_bytes,
            o.suppliers,
            o.batch,
            o.seed,
            o.scale,
            self.prefill_elapsed
                .map(|d| format!(" (prefill took {:.1} s)", d.as_secs_f64()))
                .unwrap_or_default()
        );
        let _ = writeln!(t);
        let _ = writeln!(t, "| metric | value |");
        let _ = writeln!(t, "|---|---|");
        let opt = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.2}"));
        let per_100k = |cpu: Option<f64>, n: usize| cpu.map(|c| c * 100_000.0 / n.max(1) as f64);
        let ratio = |s: &Option<PushStats>| match s {
            Some(s) => format!(
                "{:.0} ({:.0}%)",
                s.records_per_s(),
                100.0 * g.records_per_s() / s.records_per_s().max(1e-9)
            ),
            None => "not run".into(),
        };
        let values = [
            format!(
                "{:.0} ({} records in {:.2} s)",
                g.records_per_s(),
                g.records,
                g.elapsed.as_secs_f64()
            ),
            format!(
                "{:.0} ({} accepted, {} duplicate, {} rejected)",
                g.accepted_per_s(),
                g.accepted,
                g.duplicate,
                g.rejected
            ),
            format!(
                "{} / {} / {} ({} batches)",
                ms(g.p50),
                ms(g.p99),
                ms(g.max),
                g.batches
            ),
            format!(
                "{:.0} ({} records in {:.2} s)",
                per_second(self.drain.records, self.drain.elapsed),
                self.drain.records,
                self.drain.elapsed.as_secs_f64()
            ),
            format!(
                "{} / {}",
                opt(per_100k(self.cpu_ingest_s, g.records)),
                opt(per_100k(self.cpu_drain_s, self.drain.records))
            ),
            self.peak_rss_bytes
                .map_or("n/a".into(), |b| format!("{:.1}", b as f64 / 1_048_576.0)),
            format!(
                "{:.0} ({:.1} MB for {} records)",
                self.disk_bytes as f64 / self.stored_records.max(1) as f64,
                self.disk_bytes as f64 / 1_048_576.0,
                self.stored_records
            ),
            ratio(&self.null_sink),
            ratio(&self.fsync_sink),
            match &self.half_load {
                Some((target, s)) => format!(
                    "{:.0} (target {:.0}): {} / {} / {}",
                    s.records_per_s(),
                    target,
                    ms(s.p50),
                    ms(s.p99),
                    ms(s.max)
                ),
                None => "not run".into(),
            },
            match &self.empty_store {
                Some((push, drain)) => {
                    let drain_rate = per_second(drain.records, drain.elapsed);
                    format!(
                        "{:.0} / {:.0}; prefilled {:.0}% / {:.0}%",
                        push.records_per_s(),
                        drain_rate,
                        100.0 * g.records_per_s() / push.records_per_s().max(1e-9),
                        100.0 * per_second(self.drain.records, self.drain.elapsed)
                            / drain_rate.max(1e-9)
                    )
                }
                None => "not run".into(),
            },
            {
                let c = &self.check;
                format!(
                    "{} (accepted {}, pulled {}, missing {}, unexpected {}, duplicates {}, bad acks {}, prefill {}/{})",
                    if self.passed() { "PASS" } else { "FAIL" },
                    c.accepted,
                    c.pulled,
                    c.missing,
                    c.unexpected,
                    c.duplicates,
                    c.bad_acks,
                    c.prefill_pulled,
                    c.prefill_expected
                )
            },
        ];
        for (row, value) in ROWS.iter().zip(values) {
            let _ = writeln!(t, "| {row} | {value} |");
        }
        t
    }
}

const REGISTRY: &str = "bench-registry";
const PREFILL_SUPPLIER: &str = "bench-prefill";

fn supplier_name(i: usize) -> String {
    format!("bench-supplier-{i}")
}

/// The PKI and files of one run.
struct Setup {
    dir: tempfile::TempDir,
    suppliers: Vec<String>,
}

impl Setup {
    fn new(suppliers: usize) -> Result<Setup, BenchError> {
        let dir = tempfile::tempdir()?;
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs)?;
        let setup_err = |e: crate::tls::TlsError| BenchError::Setup(e.to_string());
        let ca = TestCa::new("Schakel bench CA").map_err(setup_err)?;
        std::fs::write(certs.join("ca.pem"), ca.cert_pem())?;
        let (cert, key) = ca.server_cert().map_err(setup_err)?;
        std::fs::write(certs.join("server.pem"), cert)?;
        std::fs::write(certs.join("server.key"), key)?;
        let names: Vec<String> = (0..suppliers).map(supplier_name).collect();
        for name in names.iter().map(String::as_str).chain([REGISTRY]) {
            let (cert, key) = ca
                .client_cert(name, &ClientCertOptions::default())
                .map_err(setup_err)?;
            std::fs::write(certs.join(format!("{name}.pem")), cert)?;
            std::fs::write(certs.join(format!("{name}.key")), key)?;
        }
        Ok(Setup {
            dir,
            suppliers: names,
        })
    }

    fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    fn files(&self, name: &str) -> ClientFiles {
        let certs = self.certs();
        ClientFiles {
            ca: certs.join("ca.pem"),
            identity: Some((
                certs.join(format!("{name}.pem")),
                certs.join(format!("{name}.key")),
            )),
            domain: "localhost".into(),
        }
    }

    /// Writes a config for a server on `port` with data in `data_dir`.
    fn write_config(&self, name: &str, port: u16, data_dir: &Path) -> Result<PathBuf, BenchError> {
        let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
        let certs = self.certs();
        let mut c = String::new();
        let _ = writeln!(c, "listen = \"127.0.0.1:{port}\"");
        let _ = writeln!(c, "data_dir = {}", q(data_dir));
        let _ = writeln!(c, "\n[tls]");
        let _ = writeln!(c, "cert = {}", q(&certs.join("server.pem")));
        let _ = writeln!(c, "key = {}", q(&certs.join("server.key")));
        let _ = writeln!(c, "client_ca = {}", q(&certs.join("ca.pem")));
        let _ = writeln!(c, "\n[limits]\nshutdown_grace_secs = 1");
        // No operations HTTP port: parallel runs would fight over its address.
        let _ = writeln!(c, "\n[ops]\nhttp_listen = \"off\"");
        for s in self
            .suppliers
            .iter()
            .map(String::as_str)
            .chain([PREFILL_SUPPLIER])
        {
            let _ = writeln!(c, "\n[[suppliers]]\nid = \"{s}\"\nname = \"{s}\"");
        }
        for s in &self.suppliers {
            let _ = writeln!(
                c,
                "\n[[identities]]\nrole = \"supplier\"\nsupplier_id = \"{s}\"\nname = \"{s}\"\ncert = {}",
                q(&certs.join(format!("{s}.pem")))
            );
        }
        let _ = writeln!(
            c,
            "\n[[identities]]\nrole = \"registry\"\nname = \"{REGISTRY}\"\ncert = {}",
            q(&certs.join(format!("{REGISTRY}.pem")))
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, c)?;
        Ok(path)
    }

    /// Starts `schakel <args> --config <name>.toml` on a free port; returns the
    /// child, its URL and its data folder.
    async fn start(
        &self,
        exe: &Path,
        name: &'static str,
        args: &[&str],
    ) -> Result<(Child, String, PathBuf), BenchError> {
        let port = free_port()?;
        let data = self.dir.path().join(format!("{name}-data"));
        let config = self.write_config(name, port, &data)?;
        let config = config.display().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", config.as_str()]);
        let log = self.dir.path().join(format!("{name}.log"));
        let mut child = Child::spawn(name, exe, &all, log)?;
        let url = format!("https://localhost:{port}");
        child
            .wait_ready(&url, &self.files(REGISTRY), Duration::from_secs(60))
            .await?;
        Ok((child, url, data))
    }
}

/// The load of one phase: per supplier its batches, and per batch the message ids.
struct Load {
    batches: Vec<Vec<Batch>>,
    fresh: usize,
    mean_bytes: usize,
}

fn load(options: &BenchOptions, records: usize, phase: &str) -> Load {
    let c = options.suppliers.max(1);
    let mut batches = Vec::with_capacity(c);
    let mut fresh = 0;
    let (mut bytes, mut count) = (0usize, 0usize);
    for i in 0..c {
        let share = records / c + usize::from(i < records % c);
        let seed = options.seed.wrapping_mul(1_000_003).wrapping_add(i as u64) ^ phase.len() as u64;
        let (b, f) = gen::supplier_batches(
            seed,
            &format!("{phase}-his-{i}"),
            share,
            options.batch.max(1),
            options.resend_fraction,
        );
        for r in b.iter().flat_map(|b| b.records.iter()).take(1_000) {
            bytes += r.encoded_len();
            count += 1;
        }
        fresh += f;
        batches.push(b);
    }
    Load {
        batches,
        fresh,
        mean_bytes: bytes / count.max(1),
    }
}

/// Pushes `load` with one channel per supplier, at full speed or paced to
/// `rate` records/s in total. Returns the stats and, when `track`, the accepted
/// (supplier, message id) pairs.
async fn push(
    setup: &Setup,
    url: &str,
    load: Load,
    rate: Option<f64>,
    track: bool,
) -> Result<(PushStats, HashSet<(String, String)>), BenchError> {
    let c = load.batches.len();
    let barrier = Arc::new(Barrier::new(c + 1));
    let mut tasks = Vec::with_capacity(c);
    for (i, batches) in load.batches.into_iter().enumerate() {
        let name = setup.suppliers[i].clone();
        let channel = connect(url, &setup.files(&name))
            .await
            .map_err(|e| BenchError::Call(e.to_string()))?;
        let barrier = Arc::clone(&barrier);
        tasks.push(tokio::spawn(push_supplier(
            name, channel, batches, barrier, rate, c, track,
        )));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut stats = PushStats::default();
    let mut latencies = Vec::new();
    let mut accepted_ids = HashSet::new();
    for task in tasks {
        let one = task
            .await
            .map_err(|e| BenchError::Call(format!("supplier task: {e}")))??;
        stats.records += one.records;
        stats.accepted += one.accepted;
        stats.duplicate += one.duplicate;
        stats.rejected += one.rejected;
        latencies.extend(one.latencies);
        accepted_ids.extend(one.ids);
    }
    stats.elapsed = start.elapsed();
    latencies.sort();
    stats.batches = latencies.len();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).saturating_sub(1);
        latencies.get(i).copied().unwrap_or_default()
    };
    stats.p50 = at(0.50);
    stats.p99 = at(0.99);
    stats.max = latencies.last().copied().unwrap_or_default();
    Ok((stats, accepted_ids))
}

struct SupplierResult {
    records: usize,
    accepted: usize,
    duplicate: usize,
    rejected: usize,
    latencies: Vec<Duration>,
    ids: Vec<(String, String)>,
}

async fn push_supplier(
    name: String,
    channel: Channel,
    batches: Vec<Batch>,
    barrier: Arc<Barrier>,
    rate: Option<f64>,
    suppliers: usize,
    track: bool,
) -> Result<SupplierResult, BenchError> {
    let mut client = IntakeClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let ids: Vec<Vec<String>> = if track {
        batches
            .iter()
            .map(|b| b.records.iter().map(|r| r.message_id.clone()).collect())
            .collect()
    } else {
        Vec::new()
    };
    let mut out = SupplierResult {
        records: 0,
        accepted: 0,
        duplicate: 0,
        rejected: 0,
        latencies: Vec::with_capacity(batches.len()),
        ids: Vec::new(),
    };
    barrier.wait().await;
    let start = tokio::time::Instant::now();
    let mut sent_records = 0usize;
    for (n, batch) in batches.into_iter().enumerate() {
        if let Some(rate) = rate {
            // This supplier's share of the rate: its records so far are due at...
            let due = sent_records as f64 / (rate / suppliers as f64);
            tokio::time::sleep_until(start + Duration::from_secs_f64(due)).await;
        }
        let len = batch.records.len();
        sent_records += len;
        let t = Instant::now();
        let receipt = client
            .submit_batch(batch)
            .await
            .map_err(|s| BenchError::Call(format!("{name}: SubmitBatch: {s}")))?
            .into_inner();
        out.latencies.push(t.elapsed());
        out.records += len;
        out.accepted += receipt.accepted as usize;
        out.duplicate += receipt.duplicate as usize;
        out.rejected += receipt.rejected as usize;
        if track {
            let not_accepted: HashSet<u32> = receipt
                .results
                .iter()
                .filter(|r| r.status != RecordStatus::Accepted as i32)
                .map(|r| r.index)
                .collect();
            for (i, id) in ids[n].iter().enumerate() {
                if !not_accepted.contains(&(i as u32)) {
                    out.ids.push((name.clone(), id.clone()));
                }
            }
        }
    }
    Ok(out)
}

/// Pulls (up to 5000 at a time) and acks until `expected` records came, with
/// the acks pipelined behind the pulls; then checks that nothing more comes.
async fn drain(
    setup: &Setup,
    url: &str,
    expected: usize,
    accepted: &HashSet<(String, String)>,
    prefill: u64,
) -> Result<(DrainStats, ExactlyOnce), BenchError> {
    let channel = connect(url, &setup.files(REGISTRY))
        .await
        .map_err(|e| BenchError::Call(e.to_string()))?;
    let mut registry =
        RegistryClient::new(channel.clone()).max_decoding_message_size(256 * 1024 * 1024);
    let mut acker = RegistryClient::new(channel);
    let (tx, mut rx) = mpsc::channel::<Vec<String>>(4);
    let ack_task = tokio::spawn(async move {
        let mut bad = 0usize;
        while let Some(tokens) = rx.recv().await {
            let answer = acker
                .ack(AckRequest {
                    lease_tokens: tokens,
                })
                .await
                .map_err(|s| BenchError::Call(format!("Ack: {s}")))?
                .into_inner();
            bad += answer
                .results
                .iter()
                .filter(|r| r.outcome != TokenOutcome::Acked as i32)
                .count();
        }
        Ok::<usize, BenchError>(bad)
    });
    let mut check = ExactlyOnce {
        accepted: accepted.len(),
        prefill_expected: prefill,
        ..ExactlyOnce::default()
    };
    let mut seen: HashSet<(String, String)> = HashSet::with_capacity(accepted.len());
    let mut prefill_seen = vec![false; usize::try_from(prefill).unwrap_or(0)];
    let mut pulled = 0usize;
    let mut idle = Duration::ZERO;
    let start = Instant::now();
    let mut note = |supplier: String, message_id: String, check: &mut ExactlyOnce| {
        if supplier == PREFILL_SUPPLIER {
            let n = message_id
                .strip_prefix("prefill-")
                .and_then(|n| n.parse::<usize>().ok());
            match n.and_then(|n| prefill_seen.get_mut(n)) {
                Some(s) if !*s => {
                    *s = true;
                    check.prefill_pulled += 1;
                }
                Some(_) => check.duplicates += 1,
                None => check.unexpected += 1,
            }
        } else if !seen.insert((supplier, message_id)) {
            check.duplicates += 1;
        }
    };
    while pulled < expected && idle < Duration::from_secs(10) {
        let t = Instant::now();
        let records = registry
            .pull(PullRequest {
                max_records: 5_000,
                wait_ms: 500,
                lease_ms: 600_000,
            })
            .await
            .map_err(|s| BenchError::Call(format!("Pull: {s}")))?
            .into_inner()
            .records;
        if records.is_empty() {
            idle += t.elapsed();
            continue;
        }
        pulled += records.len();
        let mut tokens = Vec::with_capacity(records.len());
        for r in records {
            tokens.push(r.lease_token);
            note(r.supplier_id, r.message_id, &mut check);
        }
        if tx.send(tokens).await.is_err() {
            break;
        }
    }
    drop(tx);
    check.bad_acks = ack_task
        .await
        .map_err(|e| BenchError::Call(format!("ack task: {e}")))??;
    let elapsed = start.elapsed();
    // Nothing more may come.
    let extra = registry
        .pull(PullRequest {
            max_records: 5_000,
            wait_ms: 300,
            lease_ms: 600_000,
        })
        .await
        .map_err(|s| BenchError::Call(format!("Pull: {s}")))?
        .into_inner()
        .records;
    for r in extra {
        pulled += 1;
        note(r.supplier_id, r.message_id, &mut check);
    }
    check.pulled = seen.len();
    check.missing = accepted.difference(&seen).count();
    check.unexpected += seen.difference(accepted).count();
    Ok((
        DrainStats {
            records: pulled,
            elapsed,
        },
        check,
    ))
}

/// Fills a fresh store with `count` queued records of another supplier, in
/// batches of 10,000, then closes it.
async fn prefill(data_dir: &Path, count: u64, seed: u64) -> Result<Duration, BenchError> {
    let start = Instant::now();
    let store = Store::open(data_dir, StoreOptions::default())
        .map_err(|e| BenchError::Setup(format!("prefill: {e}")))?;
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed ^ 0xfeed);
    let pool: Vec<_> = (0..1_000)
        .map(|i| gen::record(&mut rng, format!("pool-{i}")))
        .collect();
    let mut n = 0u64;
    let mut batch_no = 0u64;
    while n < count {
        let size = (count - n).min(10_000);
        let records: Vec<NewRecord> = (n..n + size)
            .map(|i| {
                let mut r = pool[(i % pool.len() as u64) as usize].clone();
                r.message_id = format!("prefill-{i}");
                NewRecord {
                    content: r.encode_to_vec(),
                    message_id: r.message_id,
                }
            })
            .collect();
        store
            .submit(PREFILL_SUPPLIER, &format!("prefill-{batch_no}"), records)
            .await
            .map_err(|e| BenchError::Setup(format!("prefill: {e}")))?;
        n += size;
        batch_no += 1;
    }
    store
        .sync()
        .await
        .map_err(|e| BenchError::Setup(format!("prefill: {e}")))?;
    drop(store);
    Ok(start.elapsed())
}

/// Runs the whole benchmark: baselines, the gateway at full load with its
/// drain, and the gateway at half load.
///
/// # Errors
/// Setting up, starting a child or a call failed (not a failed check: see
/// [`BenchReport::passed`]).
pub async fn run(options: &BenchOptions) -> Result<BenchReport, BenchError> {
    let setup = Setup::new(options.suppliers.max(1))?;
    let exe = options.exe.as_path();

    let mut null_sink = None;
    let mut fsync_sink = None;
    if options.baselines {
        for (mode, name) in [("null", "sink-null"), ("fsync", "sink-fsync")] {
            let (child, url, _) = setup
                .start(exe, name, &["bench-sink", "--mode", mode])
                .await?;
            let (stats, _) = push(
                &setup,
                &url,
                load(options, options.records, "full"),
                None,
                false,
            )
            .await?;
            drop(child);
            if mode == "null" {
                null_sink = Some(stats);
            } else {
                fsync_sink = Some(stats);
            }
        }
    }

    // Scale mode: first the same load against an empty store (its own data
    // folder), so the cost of the prefilled store is a ratio from one run.
    let mut empty_store = None;
    let mut empty_check = None;
    if options.scale > 0 {
        let (gateway, url, _) = setup.start(exe, "gateway-empty", &["serve"]).await?;
        let reference = load(options, options.records, "full");
        let fresh = reference.fresh;
        let (stats, accepted) = push(&setup, &url, reference, None, true).await?;
        let (drain_stats, mut check) = drain(&setup, &url, accepted.len(), &accepted, 0).await?;
        check.missing += fresh.abs_diff(stats.accepted);
        drop(gateway);
        empty_store = Some((stats, drain_stats));
        empty_check = Some(check);
    }

    let data = setup.dir.path().join("gateway-data");
    let prefill_elapsed = if options.scale > 0 {
        Some(prefill(&data, options.scale, options.seed).await?)
    } else {
        None
    };
    let (gateway, url, data) = setup.start(exe, "gateway", &["serve"]).await?;
    let full = load(options, options.records, "full");
    let mean_record_bytes = full.mean_bytes;
    let fresh = full.fresh;
    let cpu0 = gateway.cpu_seconds();
    let (stats, accepted) = push(&setup, &url, full, None, true).await?;
    let cpu1 = gateway.cpu_seconds();
    let disk_bytes = dir_size(&data);
    let stored_records = options.scale + stats.accepted as u64;
    let expected = accepted.len() + usize::try_from(options.scale).unwrap_or(usize::MAX);
    let (drain_stats, mut check) = drain(&setup, &url, expected, &accepted, options.scale).await?;
    let cpu2 = gateway.cpu_seconds();
    if stats.accepted != fresh {
        // Every first send must be accepted: count the difference as missing.
        check.missing += fresh.abs_diff(stats.accepted);
    }

    // The reference run's records count in the exactly-once check as well.
    if let Some(c) = empty_check {
        check.add(&c);
    }

    let mut half_load = None;
    if options.half_load {
        let target = stats.records_per_s() / 2.0;
        let half = load(options, (options.records / 2).max(1), "half");
        let (half_stats, half_accepted) = push(&setup, &url, half, Some(target), true).await?;
        let (_, half_check) = drain(&setup, &url, half_accepted.len(), &half_accepted, 0).await?;
        check.add(&half_check);
        half_load = Some((target, half_stats));
    }
    let peak_rss_bytes = gateway.peak_rss_bytes();
    drop(gateway);

    let sub = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
    Ok(BenchReport {
        options: options.clone(),
        mean_record_bytes,
        gateway: stats,
        drain: drain_stats,
        cpu_ingest_s: sub(cpu0, cpu1),
        cpu_drain_s: sub(cpu1, cpu2),
        peak_rss_bytes,
        disk_bytes,
        stored_records,
        null_sink,
        fsync_sink,
        half_load,
        check,
        prefill_elapsed,
        empty_store,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(check: ExactlyOnce) -> BenchReport {
        BenchReport {
            options: BenchOptions::smoke(PathBuf::from("schakel")),
            mean_record_bytes: 220,
            gateway: PushStats {
                records: 10,
                accepted: 10,
                elapsed: Duration::from_secs(1),
                ..PushStats::default()
            },
            drain: DrainStats::default(),
            cpu_ingest_s: Some(0.5),
            cpu_drain_s: None,
            peak_rss_bytes: None,
            disk_bytes: 0,
            stored_records: 10,
            null_sink: None,
            fsync_sink: None,
            half_load: None,
            check,
            prefill_elapsed: None,
            empty_store: None,
        }
    }

    #[test]
    fn a_lost_or_duplicated_record_fails_the_run() {
        let ok = ExactlyOnce {
            accepted: 10,
            pulled: 10,
            ..ExactlyOnce::default()
        };
        assert!(report(ok.clone()).passed());
        assert!(report(ok.clone()).table().contains("| PASS ("));
        for bad in [
            ExactlyOnce {
                missing: 1,
                pulled: 9,
                ..ok.clone()
            },
            ExactlyOnce {
                duplicates: 1,
                ..ok.clone()
            },
            ExactlyOnce {
                unexpected: 1,
                ..ok.clone()
            },
            ExactlyOnce {
                bad_acks: 1,
                ..ok.clone()
            },
            ExactlyOnce {
                prefill_expected: 5,
                prefill_pulled: 4,
                ..ok.clone()
            },
        ] {
            let r = report(bad);
            assert!(!r.passed(), "{:?}", r.check);
            assert!(r.table().contains("| FAIL ("), "{}", r.table());
        }
    }

    #[test]
    fn the_table_has_every_row_and_says_what_was_not_run() {
        let t = report(ExactlyOnce::default()).table();
        for row in ROWS {
            assert!(t.contains(&format!("| {row} |")), "{row}");
        }
        assert!(t.contains("| baseline fsync sink (rec/s), gateway as % of it | not run |"));
        // 0.5 CPU-s for 10 records is 5000 s per 100k; the drain was not measured.
        assert!(t.contains("| 5000.00 / n/a |"), "{t}");
    }
}
