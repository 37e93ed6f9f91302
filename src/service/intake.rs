//! `schakel.v1.Intake`: a supplier's batch in, a receipt with an answer for every
//! record out. A thin adapter: the batch goes through `schema` (validation, no
//! I/O), the valid records through `store` (dedup, queue, fsync), and the
//! outcomes become the receipt. Nothing here logs or echoes record content.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use prost::Message;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::ServiceError;
use crate::proto::{self, intake_server::Intake, Batch, BatchReceipt, RecordResult, RecordStatus};
use crate::schema::{self, Code, Rules};
use crate::service::auth::Caller;
use crate::service::limits::Limiter;
use crate::service::timestamp;
use crate::store::{AuditEvent, NewRecord, Store, SubmitOutcome};

/// The Intake service.
#[derive(Clone)]
pub struct IntakeService {
    store: Store,
    rules: Arc<Rules>,
    limiter: Limiter,
    /// Metrics and delivery bookkeeping, when the gateway runs operations.
    monitor: Option<crate::ops::Monitor>,
}

impl IntakeService {
    /// A service over `store` validating with `rules`.
    pub fn new(store: Store, rules: Rules) -> Self {
        IntakeService {
            store,
            rules: Arc::new(rules),
            limiter: crate::server::limiter(&crate::config::Limits::default()),
            monitor: None,
        }
    }

    /// Shares `limiter` (per-identity and per-supplier limits) with other services.
    pub fn with_limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = limiter;
        self
    }

    /// Reports every batch to `monitor` (metrics, daily-delivery bookkeeping).
    pub fn with_monitor(mut self, monitor: crate::ops::Monitor) -> Self {
        self.monitor = Some(monitor);
        self
    }
}

/// The valid records of a batch and their warnings, in batch order.
type ValidRecords = (Vec<NewRecord>, Vec<Vec<proto::Finding>>);

/// The latest date a vaccination may have: today somewhere on Earth (UTC+14),
/// so that no time zone sees a same-day vaccination as "in the future".
pub fn latest_valid_date(now: SystemTime) -> time::Date {
    time::OffsetDateTime::from(now)
        .to_offset(time::macros::offset!(+14))
        .date()
}

/// A validated batch: what goes to the store, and the answers known already.
struct Checked {
    /// Valid records for the store, with their index in the batch.
    valid: Vec<(usize, NewRecord, Vec<proto::Finding>)>,
    /// Rejected records' results.
    rejected: Vec<RecordResult>,
}

fn to_proto_findings(findings: &[schema::Finding]) -> Vec<proto::Finding> {
    findings
        .iter()
        .map(|f| proto::Finding {
            field: f.field.to_owned(),
            code: f.code.as_str().to_owned(),
            message: f.message.clone(),
            severity: match f.severity {
                schema::Severity::Error => proto::Severity::Error as i32,
                schema::Severity::Warning => proto::Severity::Warning as i32,
            },
        })
        .collect()
}

/// The message id as echoed in a receipt: only when it is itself well formed.
fn echo_id(message_id: &str, findings: &[schema::Finding]) -> String {
    let id_broken = findings.iter().any(|f| f.field == "message_id");
    if id_broken {
        String::new()
    } else {
        message_id.to_owned()
    }
}

fn check(records: Vec<proto::VaccinationRecord>, rules: &Rules, today: time::Date) -> Checked {
    let mut valid = Vec::with_capacity(records.len());
    let mut rejected = Vec::new();
    for (index, mut record) in records.into_iter().enumerate() {
        let findings = schema::validate_record(&mut record, rules, today);
        if schema::is_rejected(&findings) {
            rejected.push(RecordResult {
                index: index as u32,
                message_id: echo_id(&record.message_id, &findings),
                status: RecordStatus::Rejected as i32,
                findings: to_proto_findings(&findings),
                sequence: 0,
            });
            // `record` is dropped here: a rejected record is never stored.
        } else {
            let content = record.encode_to_vec();
            let new = NewRecord {
                message_id: record.message_id,
                content,
            };
            valid.push((index, new, to_proto_findings(&findings)));
        }
    }
    Checked { valid, rejected }
}

/// What the log may say for a batch id not validated yet: the id itself only
/// when it would pass the header check (at most 128 characters, no control
/// characters, so it cannot forge a log line), else a placeholder.
fn loggable_batch_id(batch_id: &str) -> &str {
    if batch_id.chars().count() <= 128 && !batch_id.chars().any(char::is_control) {
        batch_id
    } else {
        INVALID_BATCH_ID
    }
}

/// Logged instead of a batch id that fails the header check.
const INVALID_BATCH_ID: &str = "<invalid>";

#[tonic::async_trait]
impl Intake for IntakeService {
    /// Runs the call in a span carrying the supplier and batch id, so every log
    /// line of the request names them, and reports the outcome to the monitor.
    async fn submit_batch(
        &self,
        request: Request<Batch>,
    ) -> Result<Response<BatchReceipt>, Status> {
        let started = Instant::now();
        let supplier = Caller::of(&request)
            .ok()
            .and_then(|c| c.identity.supplier_id)
            .unwrap_or_default();
        let batch = request
            .get_ref()
            .header
            .as_ref()
            .map_or("", |h| loggable_batch_id(&h.batch_id));
        let span = tracing::info_span!("submit_batch", supplier = %supplier, batch = %batch);
        let result = self.submit(request).instrument(span.clone()).await;
        if let Some(monitor) = &self.monitor {
            let _in_span = span.enter(); // no .await below: only counting and one store write
            match &result {
                Ok(receipt) => {
                    monitor.batch_received(receipt.get_ref(), SystemTime::now(), started.elapsed())
                }
                Err(status) => monitor.batch_refused(
                    &supplier,
                    crate::error::error_code(status).unwrap_or("UNKNOWN"),
                    started.elapsed(),
                ),
            }
        }
        result
    }
}

impl IntakeService {
    async fn submit(&self, request: Request<Batch>) -> Result<Response<BatchReceipt>, Status> {
        let caller = Caller::of(&request)?;
        let supplier_id = caller.supplier_id()?.to_owned();
        let records = request.get_ref().records.len() as u64;
        let _permit = self
            .limiter
            .admit(&caller.peer.fingerprint, Some(&supplier_id), records)?;
        let received_at = SystemTime::now();
        let batch = request.into_inner();
        schema::validate_header(batch.header.as_ref(), batch.records.len(), &self.rules)
            .map_err(ServiceError::from)?;
        let header = batch.header.unwrap_or_default();
        let batch_id = header.batch_id.clone();

        let rules = Arc::clone(&self.rules);
        let today = latest_valid_date(received_at);
        let records = batch.records;
        let checked = tokio::task::spawn_blocking(move || check(records, &rules, today))
            .await
            .map_err(|e| ServiceError::Internal(format!("validation task: {e}")))?;

        let (indices, (new_records, warnings)): (Vec<usize>, ValidRecords) = checked
            .valid
            .into_iter()
            .map(|(i, r, w)| (i, (r, w)))
            .unzip();
        let message_ids: Vec<String> = new_records.iter().map(|r| r.message_id.clone()).collect();
        // A JSON array: message ids may hold any printable ASCII, commas too.
        let audit_ids = serde_json::to_string(&message_ids)
            .map_err(|e| ServiceError::Internal(format!("listing message ids: {e}")))?;
        let outcomes = if new_records.is_empty() {
            Vec::new()
        } else {
            self.store
                .submit(&supplier_id, &batch_id, new_records)
                .await
                .map_err(ServiceError::from)?
        };

        let mut receipt = BatchReceipt {
            batch_id: batch_id.clone(),
            header: Some(header),
            received_at: timestamp(received_at),
            supplier_id: supplier_id.clone(),
            rejected: checked.rejected.len() as u32,
            results: checked.rejected,
            ..Default::default()
        };
        for (((index, outcome), warnings), message_id) in indices
            .into_iter()
            .zip(outcomes)
            .zip(warnings)
            .zip(message_ids)
        {
            let (status, sequence, findings) = match outcome {
                SubmitOutcome::Accepted { sequence } => {
                    receipt.accepted += 1;
                    if warnings.is_empty() {
                        continue;
                    }
                    (RecordStatus::Accepted, sequence, warnings)
                }
                SubmitOutcome::Duplicate { sequence } => {
                    receipt.duplicate += 1;
                    (RecordStatus::Duplicate, sequence, Vec::new())
                }
                SubmitOutcome::Conflict { .. } => {
                    receipt.rejected += 1;
                    let finding = proto::Finding {
                        field: "message_id".into(),
                        code: Code::ConflictingDuplicate.as_str().into(),
                        message: "this message id was accepted before with different content; \
                                  send a change as a CORRECT record with a new message id"
                            .into(),
                        severity: proto::Severity::Error as i32,
                    };
                    (RecordStatus::Rejected, 0, vec![finding])
                }
            };
            receipt.results.push(RecordResult {
                index: index as u32,
                message_id,
                status: status as i32,
                findings,
                sequence,
            });
        }
        receipt.results.sort_by_key(|r| r.index);

        tracing::info!(
            supplier = %supplier_id,
            batch = %batch_id,
            records = receipt.accepted + receipt.duplicate + receipt.rejected,
            accepted = receipt.accepted,
            duplicate = receipt.duplicate,
            rejected = receipt.rejected,
            "batch received"
        );
        let audit = AuditEvent {
            at: received_at,
            actor_fingerprint: caller.peer.fingerprint.clone(),
            actor: caller.identity.name.clone(),
            role: Some(caller.identity.role),
            action: "submit_batch".into(),
            detail: format!(
                "supplier={supplier_id} batch_id={batch_id} records={} accepted={} duplicate={} rejected={} message_ids={audit_ids}",
                receipt.accepted + receipt.duplicate + receipt.rejected,
                receipt.accepted,
                receipt.duplicate,
                receipt.rejected
            ),
            outcome: "ok".into(),
        };
        if let Err(e) = self.store.audit(audit) {
            tracing::error!(error = %e, "writing audit event");
        }
        Ok(Response::new(receipt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_valid_batch_id_is_logged() {
        assert_eq!(loggable_batch_id("2021-03-04-run-1"), "2021-03-04-run-1");
        assert_eq!(loggable_batch_id(&"é".repeat(128)), "é".repeat(128));
        assert_eq!(loggable_batch_id(&"x".repeat(129)), INVALID_BATCH_ID);
        assert_eq!(loggable_batch_id("a\nFORGED"), INVALID_BATCH_ID);
        assert_eq!(loggable_batch_id("a\u{9b}b"), INVALID_BATCH_ID);
    }

    #[test]
    fn latest_valid_date_is_ahead_of_utc() {
        // 2021-03-04 12:00 UTC is already 2021-03-05 at UTC+14.
        let noon = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_614_859_200);
        assert_eq!(latest_valid_date(noon), time::macros::date!(2021 - 03 - 05));
    }
}
