//! `schakel push FILE...`: a supplier's daily run. Reads a JSON batch
//! (`{"header": {...}, "records": [...]}`) or an NDJSON file (one
//! `VaccinationRecord` per line), sends it in batches over mutual TLS and prints
//! every receipt as JSON. Re-running the same file is safe: the gateway
//! deduplicates by message id, so records already accepted come back DUPLICATE.
//!
//! Exit code: 0 when every record was accepted or duplicate, 2 when some were
//! rejected, 1 when the run could not complete.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use sha2::{Digest, Sha256};

use super::ConnectArgs;
use crate::proto::intake_client::IntakeClient;
use crate::proto::{Batch, BatchHeader, VaccinationRecord};

/// `schakel push`.
#[derive(Debug, Args)]
pub struct PushArgs {
    /// JSON batch files or NDJSON record files.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Records per batch for NDJSON files.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// The source system named in the batch header.
    #[arg(long, default_value = concat!("schakel-cli/", env!("CARGO_PKG_VERSION")))]
    pub source_system: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// Reads `path` into batches, building headers where the file has none. The
/// batch id is derived from the file's content, so a re-run sends the same ids.
///
/// # Errors
/// The file cannot be read or is not valid JSON/NDJSON of the wire types.
pub fn read_batches(
    path: &Path,
    batch_size: usize,
    source_system: &str,
) -> anyhow::Result<Vec<Batch>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let digest = hex::encode(&Sha256::digest(text.as_bytes())[..6]);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "batch".into());
    let file_name = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') && !is_ndjson(path) {
        let mut batch: Batch = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a JSON batch", path.display()))?;
        let header = batch.header.get_or_insert_with(BatchHeader::default);
        if header.batch_id.is_empty() {
            header.batch_id = format!("{stem}-{digest}");
        }
        if header.source_system.is_empty() {
            header.source_system = source_system.to_owned();
        }
        if header.file_name.is_empty() {
            header.file_name = file_name;
        }
        if header.record_count == 0 {
            header.record_count = batch.records.len() as u32;
        }
        return Ok(vec![batch]);
    }
    let mut records = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: VaccinationRecord = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a VaccinationRecord", path.display(), n + 1))?;
        records.push(record);
    }
    if records.is_empty() {
        bail!("{} holds no records", path.display());
    }
    let chunks: Vec<Vec<VaccinationRecord>> = records
        .chunks(batch_size.max(1))
        .map(<[_]>::to_vec)
        .collect();
    let created_at = crate::service::timestamp(std::time::SystemTime::now());
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, records)| Batch {
            header: Some(BatchHeader {
                batch_id: format!("{stem}-{digest}-{:04}", i + 1),
                source_system: source_system.to_owned(),
                created_at: created_at.clone(),
                record_count: records.len() as u32,
                file_name: file_name.clone(),
            }),
            records,
        })
        .collect())
}

fn is_ndjson(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("ndjson" | "jsonl")
    )
}

pub(super) async fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let files = args.connect.files("supplier-a");
    let channel = crate::client::connect(&args.connect.server, &files).await?;
    let mut client = IntakeClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
    let (mut accepted, mut duplicate, mut rejected) = (0u64, 0u64, 0u64);
    for path in &args.files {
        for batch in read_batches(path, args.batch_size, &args.source_system)? {
            let batch_id = batch
                .header
                .as_ref()
                .map(|h| h.batch_id.clone())
                .unwrap_or_default();
            let receipt = client
                .submit_batch(batch)
                .await
                .map_err(|status| {
                    let code = crate::error::error_code(&status).unwrap_or("-").to_owned();
                    anyhow::anyhow!(
                        "batch {batch_id} from {}: {:?} [{code}] {}",
                        path.display(),
                        status.code(),
                        status.message()
                    )
                })?
                .into_inner();
            accepted += u64::from(receipt.accepted);
            duplicate += u64::from(receipt.duplicate);
            rejected += u64::from(receipt.rejected);
            println!("{}", serde_json::to_string_pretty(&receipt)?);
        }
    }
    eprintln!(
        "accepted {accepted}, duplicate {duplicate}, rejected {rejected} \
         (re-running the same files is safe: the gateway deduplicates by message id)"
    );
    Ok(if rejected > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
