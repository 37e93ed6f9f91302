//! Batches from an export file, the offline judgement of them, and the error
//! report a vendor hands to the registry's support desk.
//!
//! Owns: splitting parsed records into batches with deterministic ids
//! ([`plan_batches`]); judging a batch offline exactly like the gateway does
//! ([`OfflineJudge`]: `schema::validate_record`, then in-file dedup); turning
//! receipts into report entries and the summary; rendering the report as CSV
//! and JSON text.
//! Must not: do I/O (the CLI writes the files and reads the clock), or put a
//! record's content into an entry: an entry names the file, batch header, line,
//! message id, field, code and message, nothing else.
//! Called by: `schakel push` and `schakel validate`.

use std::collections::{BTreeMap, HashMap};

use prost::Message;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{ParsedRecord, RowProblem};
use crate::proto::{
    self, BatchHeader, BatchReceipt, RecordResult, RecordStatus, VaccinationRecord,
};
use crate::schema::{self, Code, Rules};

/// One batch to send: its header, its records and their lines in the file.
#[derive(Debug, Clone)]
pub struct PlannedBatch {
    /// The header, built here.
    pub header: BatchHeader,
    /// The records, in file order.
    pub records: Vec<VaccinationRecord>,
    /// `lines[i]` is the file line of `records[i]`.
    pub lines: Vec<u64>,
}

/// The first 12 hex digits of the SHA-256 of the file's bytes.
pub fn content_hash(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes).get(..6).unwrap_or_default())
}

/// The batch id of batch `number` (from 1) of a file: the file's stem, its
/// content hash and the number, so that a re-run of the same file sends the
/// same ids. At most 128 characters.
pub fn batch_id(file_name: &str, hash: &str, number: usize) -> String {
    let stem = file_name
        .rsplit_once('.')
        .map_or(file_name, |(stem, _)| stem)
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .take(100)
        .collect::<String>();
    format!("{stem}-{hash}-{number:04}")
}

/// Splits the readable records into batches of at most `batch_size` (at least 1).
pub fn plan_batches(
    file_name: &str,
    bytes: &[u8],
    records: &[ParsedRecord],
    batch_size: usize,
    source_system: &str,
    created_at: &str,
) -> Vec<PlannedBatch> {
    let hash = content_hash(bytes);
    records
        .chunks(batch_size.max(1))
        .enumerate()
        .map(|(i, chunk)| PlannedBatch {
            header: BatchHeader {
                batch_id: batch_id(file_name, &hash, i + 1),
                source_system: source_system.to_owned(),
                created_at: created_at.to_owned(),
                record_count: chunk.len() as u32,
                file_name: file_name.to_owned(),
            },
            records: chunk.iter().map(|r| r.record.clone()).collect(),
            lines: chunk.iter().map(|r| r.line).collect(),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Offline judgement
// ---------------------------------------------------------------------------

/// Judges batches like the gateway, without one: the same record rules and,
/// within what it has seen, the same dedup (identical normalised content is
/// DUPLICATE, different content CONFLICTING_DUPLICATE). It cannot know what the
/// gateway received in earlier runs.
#[derive(Debug)]
pub struct OfflineJudge {
    rules: Rules,
    today: time::Date,
    /// message id -> encoded normalised content of the first valid record.
    seen: HashMap<String, Vec<u8>>,
}

impl OfflineJudge {
    /// A judge with `rules`, treating `today` as the latest valid date (use
    /// `crate::service::intake::latest_valid_date` to match the gateway).
    pub fn new(rules: Rules, today: time::Date) -> Self {
        OfflineJudge {
            rules,
            today,
            seen: HashMap::new(),
        }
    }

    /// The receipt the gateway would give for `batch` (received at `received_at`).
    pub fn judge(&mut self, batch: &PlannedBatch, received_at: &str) -> BatchReceipt {
        let mut receipt = BatchReceipt {
            batch_id: batch.header.batch_id.clone(),
            header: Some(batch.header.clone()),
            received_at: received_at.to_owned(),
            ..Default::default()
        };
        for (index, original) in batch.records.iter().enumerate() {
            let mut record = original.clone();
            let findings = schema::validate_record(&mut record, &self.rules, self.today);
            let proto_findings = to_proto_findings(&findings);
            if schema::is_rejected(&findings) {
                receipt.rejected += 1;
                let id_broken = findings.iter().any(|f| f.field == "message_id");
                receipt.results.push(RecordResult {
                    index: index as u32,
                    message_id: if id_broken {
                        String::new()
                    } else {
                        record.message_id.clone()
                    },
                    status: RecordStatus::Rejected as i32,
                    findings: proto_findings,
                    sequence: 0,
                });
                continue;
            }
            let content = record.encode_to_vec();
            let (status, findings) = match self.seen.get(&record.message_id) {
                Some(prev) if *prev == content => {
                    receipt.duplicate += 1;
                    (RecordStatus::Duplicate, Vec::new())
                }
                Some(_) => {
                    receipt.rejected += 1;
                    (RecordStatus::Rejected, vec![conflict_finding()])
                }
                None => {
                    self.seen.insert(record.message_id.clone(), content);
                    receipt.accepted += 1;
                    if proto_findings.is_empty() {
                        continue;
                    }
                    (RecordStatus::Accepted, proto_findings)
                }
            };
            receipt.results.push(RecordResult {
                index: index as u32,
                message_id: record.message_id.clone(),
                status: status as i32,
                findings,
                sequence: 0,
            });
        }
        receipt
    }
}

fn conflict_finding() -> proto::Finding {
    proto::Finding {
        field: "message_id".into(),
        code: Code::ConflictingDuplicate.as_str().into(),
        message: "this message id was accepted before with different content; \
                  send a change as a CORRECT record with a new message id"
            .into(),
        severity: proto::Severity::Error as i32,
    }
}

fn to_proto_findings(findings: &[schema::Finding]) -> Vec<proto::Finding> {
    findings
        .iter()
        .map(|f| proto::Finding {
            field: f.field.to_owned(),
            code: f.code.as_str().to_owned(),
            message: f.message.clone(),
            severity: proto::Severity::from(f.severity) as i32,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// One line of the error report: one problem of one record that was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The export file's name.
    pub file_name: String,
    /// The batch header the record was sent in (empty for rows never sent).
    pub batch_id: String,
    /// The header's source system.
    pub source_system: String,
    /// The header's created_at.
    pub created_at: String,
    /// The header's record count.
    pub record_count: u32,
    /// The line in the file.
    pub line: u64,
    /// The record's message id (empty when unusable).
    pub message_id: String,
    /// REJECTED or DUPLICATE.
    pub status: String,
    /// The field, e.g. "patient.bsn".
    pub field: String,
    /// The stable code, e.g. "BSN_CHECKSUM".
    pub code: String,
    /// What is wrong.
    pub message: String,
    /// When the gateway (or `validate`) received the batch.
    pub received_at: String,
}

/// The report's column names, in CSV order.
pub const REPORT_COLUMNS: &[&str] = &[
    "file_name",
    "batch_id",
    "source_system",
    "created_at",
    "record_count",
    "line",
    "message_id",
    "status",
    "field",
    "code",
    "message",
    "received_at",
];

/// Counts for a run: per status and per error code.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Records queued.
    pub accepted: u64,
    /// Records received before with identical content.
    pub duplicate: u64,
    /// Records not queued (including rows that could not be read).
    pub rejected: u64,
    /// Rejected records per error code (a record with two codes counts twice).
    pub by_code: BTreeMap<String, u64>,
}

impl Summary {
    /// Adds `other` to this.
    pub fn add(&mut self, other: &Summary) {
        self.accepted += other.accepted;
        self.duplicate += other.duplicate;
        self.rejected += other.rejected;
        for (code, n) in &other.by_code {
            *self.by_code.entry(code.clone()).or_default() += n;
        }
    }

    /// "accepted 5, duplicate 1, rejected 2 (BSN_CHECKSUM 1, INVALID_VALUE 1)".
    pub fn line(&self) -> String {
        let mut s = format!(
            "accepted {}, duplicate {}, rejected {}",
            self.accepted, self.duplicate, self.rejected
        );
        if !self.by_code.is_empty() {
            let codes: Vec<String> = self
                .by_code
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            s.push_str(&format!(" ({})", codes.join(", ")));
        }
        s
    }
}

/// The report of one or more files, built up as receipts come in.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Every entry, in the order added.
    pub entries: Vec<Entry>,
    /// The counts.
    pub summary: Summary,
}

impl Report {
    /// Adds the rows of `file` that could not be read (`received_at`: when read).
    pub fn add_problems(&mut self, file_name: &str, problems: &[RowProblem], received_at: &str) {
        for p in problems {
            self.summary.rejected += 1;
            *self.summary.by_code.entry(p.code.to_owned()).or_default() += 1;
            self.entries.push(Entry {
                file_name: file_name.to_owned(),
                batch_id: String::new(),
                source_system: String::new(),
                created_at: String::new(),
                record_count: 0,
                line: p.line,
                message_id: p.message_id.clone(),
                status: "REJECTED".into(),
                field: p.field.clone(),
                code: p.code.to_owned(),
                message: p.message.clone(),
                received_at: received_at.to_owned(),
            });
        }
    }

    /// Adds the receipt of `batch` (sent from `file_name`).
    pub fn add_receipt(&mut self, file_name: &str, batch: &PlannedBatch, receipt: &BatchReceipt) {
        self.summary.accepted += u64::from(receipt.accepted);
        self.summary.duplicate += u64::from(receipt.duplicate);
        self.summary.rejected += u64::from(receipt.rejected);
        let header = receipt.header.as_ref().unwrap_or(&batch.header);
        let entry =
            |line: u64, message_id: &str, status: &str, field: &str, code: &str, message: &str| {
                Entry {
                    file_name: file_name.to_owned(),
                    batch_id: header.batch_id.clone(),
                    source_system: header.source_system.clone(),
                    created_at: header.created_at.clone(),
                    record_count: header.record_count,
                    line,
                    message_id: message_id.to_owned(),
                    status: status.to_owned(),
                    field: field.to_owned(),
                    code: code.to_owned(),
                    message: message.to_owned(),
                    received_at: receipt.received_at.clone(),
                }
            };
        for r in &receipt.results {
            let line = batch.lines.get(r.index as usize).copied().unwrap_or(0);
            match RecordStatus::try_from(r.status) {
                Ok(RecordStatus::Rejected) => {
                    for f in &r.findings {
                        if f.severity == proto::Severity::Warning as i32 {
                            continue;
                        }
                        *self.summary.by_code.entry(f.code.clone()).or_default() += 1;
                        self.entries.push(entry(
                            line,
                            &r.message_id,
                            "REJECTED",
                            &f.field,
                            &f.code,
                            &f.message,
                        ));
                    }
                }
                Ok(RecordStatus::Duplicate) => self.entries.push(entry(
                    line,
                    &r.message_id,
                    "DUPLICATE",
                    "message_id",
                    "DUPLICATE",
                    "received before with identical content; not queued again (nothing to do)",
                )),
                _ => {}
            }
        }
    }

    /// Sorts the entries by file, then line.
    pub fn sort(&mut self) {
        self.entries
            .sort_by(|a, b| (&a.file_name, a.line).cmp(&(&b.file_name, b.line)));
    }

    /// The report as CSV (`,` separated, quoted where needed, header row first).
    pub fn to_csv(&self) -> String {
        let mut out = REPORT_COLUMNS.join(",");
        out.push('\n');
        for e in &self.entries {
            let cells = [
                e.file_name.clone(),
                e.batch_id.clone(),
                e.source_system.clone(),
                e.created_at.clone(),
                e.record_count.to_string(),
                e.line.to_string(),
                e.message_id.clone(),
                e.status.clone(),
                e.field.clone(),
                e.code.clone(),
                e.message.clone(),
                e.received_at.clone(),
            ];
            let quoted: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
            out.push_str(&quoted.join(","));
            out.push('\n');
        }
        out
    }

    /// The report as a JSON document: `{"summary": ..., "entries": [...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "summary": self.summary,
            "entries": self.entries,
        })
    }
}

fn csv_cell(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r', ';']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::{parse, ParsedFile};

    const TODAY: time::Date = time::macros::date!(2021 - 06 - 01);

    fn example() -> (ParsedFile, &'static str) {
        let text = include_str!("../../examples/export-2021-03-04.csv");
        (
            parse("export-2021-03-04.csv", text.as_bytes()).unwrap(),
            text,
        )
    }

    #[test]
    fn batch_ids_are_deterministic_per_content() {
        let (f, text) = example();
        let a = plan_batches("e.csv", text.as_bytes(), &f.records, 3, "HIS", "t1");
        let b = plan_batches("e.csv", text.as_bytes(), &f.records, 3, "HIS", "t2");
        assert_eq!(a.len(), 3);
        assert_eq!(a[2].records.len(), 1);
        assert_eq!(a[2].header.record_count, 1);
        let ids: Vec<_> = a.iter().map(|b| b.header.batch_id.clone()).collect();
        assert_eq!(
            ids,
            b.iter()
                .map(|b| b.header.batch_id.clone())
                .collect::<Vec<_>>()
        );
        assert!(ids[0].starts_with("e-") && ids[0].ends_with("-0001"));
        let other = plan_batches("e.csv", b"other", &f.records, 3, "HIS", "t1");
        assert_ne!(other[0].header.batch_id, ids[0]);
        assert_eq!(a[1].lines, vec![5, 6, 7]);
    }

    #[test]
    fn the_offline_judge_finds_what_the_example_holds() {
        let (f, text) = example();
        let batches = plan_batches("e.csv", text.as_bytes(), &f.records, 2, "HIS", "t");
        let mut judge = OfflineJudge::new(Rules::default(), TODAY);
        let mut report = Report::default();
        report.add_problems("e.csv", &f.problems, "t");
        for b in &batches {
            let receipt = judge.judge(b, "t");
            report.add_receipt("e.csv", b, &receipt);
        }
        report.sort();
        assert_eq!(report.summary.accepted, 3);
        assert_eq!(report.summary.duplicate, 1);
        assert_eq!(report.summary.rejected, 4);
        let got: Vec<(u64, &str, &str)> = report
            .entries
            .iter()
            .map(|e| (e.line, e.status.as_str(), e.code.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (4, "DUPLICATE", "DUPLICATE"),
                (5, "REJECTED", "BSN_CHECKSUM"),
                (6, "REJECTED", "PII_WITHOUT_CONSENT"),
                (7, "REJECTED", "REFERS_TO_MISSING"),
                (8, "REJECTED", "INVALID_VALUE"),
            ]
        );
        assert_eq!(report.summary.by_code.get("BSN_CHECKSUM"), Some(&1));
        let csv = report.to_csv();
        assert_eq!(csv.lines().count(), 6);
        assert!(csv.starts_with("file_name,batch_id,"));
        assert!(!csv.contains("249566758"), "no BSN in the report");
    }

    #[test]
    fn changed_content_under_the_same_id_is_a_conflict() {
        let mut a = crate::testkit::record("C-1");
        let b = a.clone();
        a.vaccination.as_mut().unwrap().lot_number = "OTHER".into();
        let batch = PlannedBatch {
            header: BatchHeader::default(),
            records: vec![b.clone(), a, b],
            lines: vec![2, 3, 4],
        };
        let receipt = OfflineJudge::new(Rules::default(), TODAY).judge(&batch, "t");
        assert_eq!(
            (receipt.accepted, receipt.duplicate, receipt.rejected),
            (1, 1, 1)
        );
        assert_eq!(receipt.results[0].findings[0].code, "CONFLICTING_DUPLICATE");
        assert_eq!(receipt.results[1].status, RecordStatus::Duplicate as i32);
    }

    #[test]
    fn csv_cells_are_quoted() {
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"x\""), "\"say \"\"x\"\"\"");
        assert_eq!(csv_cell("plain"), "plain");
    }
}
