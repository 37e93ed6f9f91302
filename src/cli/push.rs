//! `schakel push FILE...`: a supplier's daily run. Reads export files (the
//! standard CSV layout, NDJSON, or a JSON batch: see `docs/export-format.md`),
//! splits them into batches with deterministic ids, sends them over mutual TLS
//! with a bounded number in flight, retries UNAVAILABLE and RESOURCE_EXHAUSTED
//! with exponential backoff and jitter, and writes an error report per file.
//! Re-running the same file is safe: the gateway deduplicates by message id, so
//! records already accepted come back DUPLICATE.
//!
//! Exit code: 0 when every record was accepted or duplicate, 2 when some were
//! rejected, 1 when the run could not complete.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use rand::Rng;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::{Code, Status};

use super::files::{read_inputs, report_paths, watch_signals, write_report, Progress};
use super::ConnectArgs;
use crate::export::report::{plan_batches, PlannedBatch, Report, Summary};
use crate::proto::intake_client::IntakeClient;
use crate::proto::{Batch, BatchReceipt};

/// Said after every run, finished or not.
pub const RERUN_SAFE: &str = "Re-running the same files is safe: the gateway deduplicates by \
                              message id, so records it already has come back DUPLICATE.";

/// `schakel push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// Export files: .csv (standard layout), .ndjson/.jsonl, or a .json batch.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Records per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    pub in_flight: usize,
    /// Attempts per batch for UNAVAILABLE and RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 8)]
    pub attempts: u32,
    /// The source system named in the batch header (product and version).
    #[arg(long, default_value = concat!("schakel-cli/", env!("CARGO_PKG_VERSION")))]
    pub source_system: String,
    /// Write one report for all files as PREFIX.errors.csv and PREFIX.errors.json
    /// (default: FILE.errors.csv and FILE.errors.json next to each input).
    #[arg(long, value_name = "PREFIX")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The wait before attempt `attempt + 1` (from 0): 200 ms doubling up to 10 s,
/// with full jitter over its upper half.
fn backoff(attempt: u32) -> Duration {
    let ceiling = 200u64.saturating_mul(1 << attempt.min(6)).min(10_000);
    let ms = rand::rng().random_range(ceiling / 2..=ceiling);
    Duration::from_millis(ms)
}

fn retryable(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::ResourceExhausted)
}

/// Sends one batch, retrying transient failures.
async fn send(
    mut client: IntakeClient<Channel>,
    batch: Batch,
    attempts: u32,
) -> Result<BatchReceipt, Status> {
    let mut attempt = 0;
    loop {
        match client.submit_batch(batch.clone()).await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if retryable(s.code()) && attempt + 1 < attempts.max(1) => {
                let wait = backoff(attempt);
                let batch_id = batch.header.as_ref().map_or("", |h| h.batch_id.as_str());
                eprintln!(
                    "batch {batch_id}: {:?} ({}), retrying in {} ms",
                    s.code(),
                    crate::error::error_code(&s).unwrap_or("-"),
                    wait.as_millis()
                );
                tokio::time::sleep(wait).await;
                attempt += 1;
            }
            Err(s) => return Err(s),
        }
    }
}

fn describe(status: &Status) -> String {
    format!(
        "{:?} [{}] {}",
        status.code(),
        crate::error::error_code(status).unwrap_or("-"),
        status.message()
    )
}

/// Whether the order in which a file's records reach the gateway changes the
/// outcome: a message id that repeats (the first is judged, the rest are
/// DUPLICATE or CONFLICTING_DUPLICATE), or a CORRECT/RETRACT that refers to a
/// record in the same file (the registry must get the original first). Such a
/// file's batches are sent one at a time, in file order.
pub fn order_matters(records: &[crate::export::ParsedRecord]) -> bool {
    let mut ids = std::collections::HashSet::with_capacity(records.len());
    for r in records {
        if !ids.insert(r.record.message_id.as_str()) {
            return true;
        }
    }
    records
        .iter()
        .any(|r| !r.record.refers_to.is_empty() && ids.contains(r.record.refers_to.as_str()))
}

/// Sends `batches` with at most `in_flight` at once; stops scheduling after the
/// first failure. Returns the receipts by batch position, and the failures.
async fn send_all(
    client: &IntakeClient<Channel>,
    batches: &[PlannedBatch],
    args: &PushArgs,
    in_flight: usize,
    file_name: &str,
    progress: &mut Progress,
    stop: &AtomicBool,
) -> (Vec<Option<BatchReceipt>>, Vec<String>) {
    let mut receipts: Vec<Option<BatchReceipt>> = vec![None; batches.len()];
    let mut failures = Vec::new();
    let mut set: JoinSet<(usize, Result<BatchReceipt, Status>)> = JoinSet::new();
    let mut next = 0usize;
    let total = batches.len();
    loop {
        if stop.load(Ordering::SeqCst) && failures.is_empty() && next < total {
            failures.push(format!(
                "{file_name}: interrupted; batches from line {} on were not sent",
                batches
                    .get(next)
                    .and_then(|b| b.lines.first())
                    .copied()
                    .unwrap_or(0)
            ));
        }
        while failures.is_empty() && next < total && set.len() < in_flight.max(1) {
            let planned = &batches[next];
            let batch = Batch {
                header: Some(planned.header.clone()),
                records: planned.records.clone(),
            };
            let (client, attempts, i) = (client.clone(), args.attempts, next);
            set.spawn(async move { (i, send(client, batch, attempts).await) });
            next += 1;
        }
        let Some(joined) = set.join_next().await else {
            break;
        };
        match joined {
            Ok((i, Ok(receipt))) => {
                progress.advance(
                    u64::from(batches[i].header.record_count),
                    &format!("{file_name}: batch {}/{total} done", i + 1),
                );
                receipts[i] = Some(receipt);
            }
            Ok((i, Err(status))) => {
                let b = &batches[i];
                failures.push(format!(
                    "{file_name}: batch {} (lines {}-{}) failed: {}",
                    b.header.batch_id,
                    b.lines.first().copied().unwrap_or(0),
                    b.lines.last().copied().unwrap_or(0),
                    describe(&status)
                ));
            }
            Err(e) => failures.push(format!("{file_name}: a send task failed: {e}")),
        }
    }
    (receipts, failures)
}

pub(super) async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let inputs = read_inputs(&args.files)?;
    let (server, files) = args.connect.resolve("supplier-a")?;
    // Lazy: a gateway that is not reachable yet answers UNAVAILABLE per batch,
    // which is retried like any other transient failure.
    let channel = crate::client::endpoint(&server, &files)?.connect_lazy();
    let client = IntakeClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let created_at = crate::service::timestamp(std::time::SystemTime::now());
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(
        Arc::clone(&stop),
        "stopping: waiting for the batches under way, then writing the report",
    );
    let total_records: u64 = inputs.iter().map(|i| i.parsed.records.len() as u64).sum();
    let mut progress = Progress::new(total_records);
    let mut combined = Report::default();
    let mut total = Summary::default();
    let mut failures = Vec::new();
    for input in &inputs {
        let source_system = input
            .parsed
            .source_system
            .as_deref()
            .unwrap_or(&args.source_system);
        let batches = plan_batches(
            &input.file_name,
            &input.bytes,
            &input.parsed.records,
            args.batch_size,
            source_system,
            &created_at,
        );
        let in_flight = if order_matters(&input.parsed.records) {
            1
        } else {
            args.in_flight.max(1)
        };
        eprintln!(
            "{}: sending {} records in {} batches ({} in flight{}); if interrupted, run the same \
             command again: the gateway deduplicates by message id",
            input.file_name,
            input.parsed.records.len(),
            batches.len(),
            in_flight,
            if in_flight == 1 && args.in_flight > 1 {
                ", in file order: ids repeat or records refer to each other"
            } else {
                ""
            }
        );
        let (receipts, file_failures) = send_all(
            &client,
            &batches,
            &args,
            in_flight,
            &input.file_name,
            &mut progress,
            &stop,
        )
        .await;
        let mut report = Report::default();
        report.add_problems(
            &input.file_name,
            &input.parsed.problems,
            &crate::service::timestamp(std::time::SystemTime::now()),
        );
        for (batch, receipt) in batches.iter().zip(&receipts) {
            if let Some(receipt) = receipt {
                report.add_receipt(&input.file_name, batch, receipt);
            }
        }
        report.sort();
        let unsent: usize = batches
            .iter()
            .zip(&receipts)
            .filter(|(_, r)| r.is_none())
            .map(|(b, _)| b.records.len())
            .sum();
        println!(
            "{}: {} rows in {} batches: {}{}",
            input.file_name,
            input.parsed.rows(),
            batches.len(),
            report.summary.line(),
            if unsent > 0 {
                format!(", NOT SENT {unsent}")
            } else {
                String::new()
            }
        );
        total.add(&report.summary);
        if args.report.is_some() {
            combined.entries.extend(report.entries);
            combined.summary.add(&report.summary);
        } else {
            let (csv, json) = report_paths(None, &input.path);
            write_report(&report, &csv, &json)?;
            println!("  error report: {} and {}", csv.display(), json.display());
        }
        failures.extend(file_failures);
        if !failures.is_empty() {
            break;
        }
    }
    progress.finish();
    if let Some(prefix) = &args.report {
        let (csv, json) = report_paths(Some(prefix), prefix);
        write_report(&combined, &csv, &json)?;
        println!("error report: {} and {}", csv.display(), json.display());
    }
    if inputs.len() > 1 {
        println!("total: {}", total.line());
    }
    for f in &failures {
        eprintln!("error: {f}");
    }
    if !failures.is_empty() {
        println!("The run did not complete. {RERUN_SAFE}");
        return Ok(ExitCode::FAILURE);
    }
    println!("{RERUN_SAFE}");
    Ok(if total.rejected > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(id: &str, refers_to: &str) -> crate::export::ParsedRecord {
        crate::export::ParsedRecord {
            line: 2,
            record: crate::proto::VaccinationRecord {
                message_id: id.into(),
                refers_to: refers_to.into(),
                ..Default::default()
            },
        }
    }

    #[test]
    fn order_matters_for_repeated_ids_and_references_within_the_file() {
        assert!(!order_matters(&[parsed("a", ""), parsed("b", "")]));
        assert!(order_matters(&[parsed("a", ""), parsed("a", "")]));
        assert!(order_matters(&[parsed("a", ""), parsed("b", "a")]));
        // A reference to a record sent earlier (another file) does not.
        assert!(!order_matters(&[parsed("a", ""), parsed("b", "old")]));
    }

    #[test]
    fn backoff_grows_with_jitter_and_is_capped() {
        for attempt in 0..20 {
            let ceiling = 200u64.saturating_mul(1 << attempt.min(6)).min(10_000);
            let d = backoff(attempt).as_millis() as u64;
            assert!(
                (ceiling / 2..=ceiling).contains(&d),
                "attempt {attempt}: {d}"
            );
        }
        assert!(retryable(Code::Unavailable) && retryable(Code::ResourceExhausted));
        assert!(!retryable(Code::InvalidArgument) && !retryable(Code::PermissionDenied));
    }
}
