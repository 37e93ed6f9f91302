//! `schakel pull`: the registry's consumer. Long-polls, writes each delivered
//! record to the output (NDJSON by default, or one FHIR R4 `Immunization` per
//! line with `--format fhir`), makes the output durable (fsync), and only then
//! acknowledges. Without `--follow` it stops when the queue is empty; with it,
//! Ctrl-C or SIGTERM stops it after the current batch is written and
//! acknowledged, releasing records it pulled but did not write.
//!
//! Exactly once into `--out FILE`: at start the file is read (streamed; only the
//! sequences are kept in memory), a torn last line
//! (from a crash mid-write) is cut off, and the sequences already in it are
//! remembered; a record delivered again (its ack was lost, or its lease ran out)
//! whose sequence is already in the file is acknowledged without being written.
//! So an interrupted run followed by a new run on the same file writes every
//! record exactly once. On stdout there is no such memory: at least once.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};

use super::files::watch_signals;
use super::ConnectArgs;
use crate::proto::registry_client::RegistryClient;
use crate::proto::{AckRequest, DeliveredRecord, PullRequest, ReleaseRequest, TokenOutcome};

/// What each output line holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// The delivered record as JSON (sequence, supplier, message id, record).
    Ndjson,
    /// A FHIR R4 Immunization resource.
    Fhir,
}

/// `schakel pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Records per pull.
    #[arg(long, default_value_t = 500)]
    pub max: u32,
    /// Long-poll wait per pull, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub wait_ms: u32,
    /// Lease per pulled record, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub lease_ms: u32,
    /// Keep pulling until Ctrl-C or SIGTERM.
    #[arg(long)]
    pub follow: bool,
    /// Append to this file (exactly once across interrupted runs) instead of
    /// writing to stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Ndjson)]
    pub format: OutputFormat,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The sequence of one output line (either format), if it has one.
fn sequence_of_line(line: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(line).ok()?;
    value
        .get("sequence")
        .and_then(serde_json::Value::as_u64)
        .or_else(|| crate::fhir::sequence_of(&value))
}

/// Opens (or creates) the output file, cuts a torn last line, and returns the
/// file positioned at its end with the sequences it holds.
///
/// # Errors
/// The file cannot be opened, read, cut or synced, or a complete line in it is
/// not one of ours (then it is not touched).
pub fn open_output(path: &Path) -> anyhow::Result<(File, HashSet<u64>)> {
    let existed = path.exists();
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // Streamed line by line: a day's file can be larger than memory wants.
    let mut reader = BufReader::with_capacity(1 << 20, &file);
    let (mut complete, mut total, mut n) = (0u64, 0u64, 0u64);
    let mut line = Vec::new();
    let mut seen = HashSet::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        total += read as u64;
        n += 1;
        if line.last() != Some(&b'\n') {
            break; // a torn last line: cut below
        }
        complete = total;
        let body = &line[..line.len() - 1];
        if body.is_empty() {
            continue;
        }
        match sequence_of_line(body) {
            Some(seq) => {
                seen.insert(seq);
            }
            None => bail!(
                "{} line {n} is not a record written by schakel pull; refusing to append to it",
                path.display(),
            ),
        }
    }
    drop(reader);
    if complete < total {
        eprintln!(
            "{}: cutting off a torn last line ({} bytes) left by an interrupted run",
            path.display(),
            total - complete
        );
        file.set_len(complete)
            .and_then(|()| file.sync_all())
            .with_context(|| format!("cutting the torn last line of {}", path.display()))?;
    }
    file.seek(SeekFrom::End(0))
        .with_context(|| format!("seeking in {}", path.display()))?;
    if !existed {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .with_context(|| format!("syncing the folder {}", dir.display()))?;
        }
    }
    Ok((file, seen))
}

/// One output line (with its newline) for `record`.
fn render(record: &DeliveredRecord, format: OutputFormat) -> anyhow::Result<Vec<u8>> {
    let mut line = match format {
        OutputFormat::Ndjson => serde_json::to_vec(record)?,
        OutputFormat::Fhir => serde_json::to_vec(&crate::fhir::immunization(record))?,
    };
    line.push(b'\n');
    Ok(line)
}

/// Runs `pull`.
///
/// # Errors
/// Connecting, pulling, writing, syncing or acknowledging fails. Whatever was
/// written before is durable, and a new run on the same `--out` file goes on
/// where this one stopped.
pub(super) async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let mut output = match &args.out {
        Some(path) => {
            let path = path.clone();
            let (file, seen) = tokio::task::spawn_blocking(move || open_output(&path)).await??;
            if !seen.is_empty() {
                eprintln!("the output already holds {} records", seen.len());
            }
            Some((file, seen))
        }
        None => None,
    };
    let (server, files) = args.connect.resolve("registry")?;
    let channel = crate::client::connect(&server, &files).await?;
    let mut client = RegistryClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(
        Arc::clone(&stop),
        "stopping after the current batch is written and acknowledged",
    );
    let (mut written, mut skipped) = (0u64, 0u64);
    while !stop.load(Ordering::SeqCst) {
        let request = PullRequest {
            max_records: args.max,
            wait_ms: args.wait_ms,
            lease_ms: args.lease_ms,
        };
        let pulled = client.pull(request).await?.into_inner().records;
        if stop.load(Ordering::SeqCst) {
            if !pulled.is_empty() {
                let tokens: Vec<String> = pulled.into_iter().map(|r| r.lease_token).collect();
                let n = tokens.len();
                client
                    .release(ReleaseRequest {
                        lease_tokens: tokens,
                    })
                    .await?;
                eprintln!("released {n} records pulled but not written");
            }
            break;
        }
        if pulled.is_empty() {
            if args.follow {
                continue;
            }
            break;
        }
        let mut buf = Vec::new();
        let mut new_sequences = Vec::new();
        let mut tokens = Vec::with_capacity(pulled.len());
        let mut batch_skipped = 0u64;
        for record in &pulled {
            tokens.push(record.lease_token.clone());
            let already = match &output {
                Some((_, seen)) => {
                    seen.contains(&record.sequence) || new_sequences.contains(&record.sequence)
                }
                None => new_sequences.contains(&record.sequence),
            };
            if already {
                batch_skipped += 1;
                continue;
            }
            buf.extend(render(record, args.format)?);
            new_sequences.push(record.sequence);
        }
        match output.take() {
            Some((mut file, mut seen)) => {
                let file = tokio::task::spawn_blocking(move || -> anyhow::Result<File> {
                    file.write_all(&buf)
                        .and_then(|()| file.sync_data())
                        .context("writing and syncing the output")?;
                    Ok(file)
                })
                .await??;
                seen.extend(new_sequences.iter().copied());
                output = Some((file, seen));
            }
            None => {
                let mut out = std::io::stdout().lock();
                out.write_all(&buf)?;
                out.flush()?;
            }
        }
        let acked = client
            .ack(AckRequest {
                lease_tokens: tokens,
            })
            .await?
            .into_inner();
        let count = |o: TokenOutcome| {
            acked
                .results
                .iter()
                .filter(|r| r.outcome == o as i32)
                .count()
        };
        let (ok, already, expired) = (
            count(TokenOutcome::Acked),
            count(TokenOutcome::AlreadyAcked),
            count(TokenOutcome::LeaseExpired),
        );
        written += new_sequences.len() as u64;
        skipped += batch_skipped;
        eprintln!(
            "pulled {}, wrote {}, already in the output {}, acked {}{}{}",
            pulled.len(),
            new_sequences.len(),
            batch_skipped,
            ok,
            if already > 0 {
                format!(", already acked {already}")
            } else {
                String::new()
            },
            if expired > 0 {
                format!(
                    ", lease expired {expired} (delivered again later; not written twice to --out)"
                )
            } else {
                String::new()
            }
        );
    }
    eprintln!("done: wrote {written} records, skipped {skipped} already in the output");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_output_cuts_a_torn_line_and_reads_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.ndjson");
        std::fs::write(
            &path,
            "{\"sequence\":3,\"message_id\":\"a\"}\n{\"resourceType\":\"Immunization\",\"id\":\"schakel-7\"}\n{\"sequence\":9,\"mess",
        )
        .unwrap();
        let (_file, seen) = open_output(&path).unwrap();
        assert_eq!(seen, HashSet::from([3, 7]));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("\"schakel-7\"}\n"));
    }

    #[test]
    fn open_output_refuses_a_foreign_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notes.txt");
        std::fs::write(&path, "hello\nworld\n").unwrap();
        let err = open_output(&path).unwrap_err().to_string();
        assert!(err.contains("line 1 is not a record"), "{err}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello\nworld\n");
    }
}
