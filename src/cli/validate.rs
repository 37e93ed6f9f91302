//! `schakel validate FILE...`: checks export files offline, with no server and
//! no certificates: the same parsing, batching and record rules as `push` and
//! the gateway, the same error report and the same exit codes. Within the
//! files it sees, a repeated message id with identical content is DUPLICATE and
//! with different content CONFLICTING_DUPLICATE, as the gateway would answer;
//! what the gateway received in earlier runs it cannot know.
//!
//! Exit code: 0 when every record would be accepted or duplicate, 2 when some
//! would be rejected, 1 when a file is refused or a report cannot be written.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use clap::Args;

use super::files::{read_inputs, report_paths, write_report};
use crate::export::report::{plan_batches, OfflineJudge, Report, Summary};
use crate::schema::Rules;

/// `schakel validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Export files: .csv (standard layout), .ndjson/.jsonl, or a .json batch.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Records per batch (as `push` would send them).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: usize,
    /// The source system named in the batch header.
    #[arg(long, default_value = concat!("schakel-cli/", env!("CARGO_PKG_VERSION")))]
    pub source_system: String,
    /// Vaccination dates before this are rejected (the gateway's
    /// `rules.campaign_start`).
    #[arg(long, default_value = "2021-01-06", value_parser = parse_date)]
    pub campaign_start: time::Date,
    /// Write one report for all files as PREFIX.errors.csv and PREFIX.errors.json
    /// (default: FILE.errors.csv and FILE.errors.json next to each input).
    #[arg(long, value_name = "PREFIX")]
    pub report: Option<PathBuf>,
}

fn parse_date(s: &str) -> Result<time::Date, String> {
    time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
        .map_err(|e| format!("not a YYYY-MM-DD date: {e}"))
}

/// Runs `validate`; the exit code follows the contract above.
///
/// # Errors
/// A file cannot be read or is refused, or a report cannot be written.
pub fn validate(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
    let inputs = read_inputs(&args.files)?;
    let now = SystemTime::now();
    let stamp = crate::service::timestamp(now);
    let rules = Rules {
        campaign_start: args.campaign_start,
        ..Rules::default()
    };
    let mut judge = OfflineJudge::new(rules, crate::service::intake::latest_valid_date(now));
    let mut combined = Report::default();
    let mut total = Summary::default();
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
            &stamp,
        );
        let mut report = Report::default();
        report.add_problems(&input.file_name, &input.parsed.problems, &stamp);
        for batch in &batches {
            let receipt = judge.judge(batch, &stamp);
            report.add_receipt(&input.file_name, batch, &receipt);
        }
        report.sort();
        println!(
            "{}: {} rows: {}",
            input.file_name,
            input.parsed.rows(),
            report.summary.line()
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
    }
    if let Some(prefix) = &args.report {
        let (csv, json) = report_paths(Some(prefix), prefix);
        write_report(&combined, &csv, &json)?;
        println!("error report: {} and {}", csv.display(), json.display());
    }
    if inputs.len() > 1 {
        println!("total: {}", total.line());
    }
    println!(
        "(offline: duplicates of what the gateway received in earlier runs show only when pushing)"
    );
    Ok(if total.rejected > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
