//! `schakel.v1.Operations` (role admin): supplier delivery status and the dead
//! letters (list, requeue, discard). A thin adapter over `ops` and `store`;
//! every requeue and discard is audited with the admin's identity.
//!
//! Must not: return or log record content (ids and counts only).

use std::time::SystemTime;

use tonic::{Request, Response, Status};

use crate::error::ServiceError;
use crate::ops::Monitor;
use crate::proto::operations_server::Operations;
use crate::proto::{
    CodeCount, DeadLetter, DeadLetterRequest, DeadLetterResponse, ListDeadLettersRequest,
    ListDeadLettersResponse, ListDeliveriesRequest, ListDeliveriesResponse, SupplierDelivery,
};
use crate::service::auth::Caller;
use crate::service::timestamp;
use crate::store::AuditEvent;

/// The Operations service.
#[derive(Clone)]
pub struct OperationsService {
    monitor: Monitor,
}

impl OperationsService {
    /// A service over the gateway's monitor.
    pub fn new(monitor: Monitor) -> Self {
        OperationsService { monitor }
    }

    fn audit(&self, caller: &Caller, action: &str, detail: String, outcome: &str) {
        let event = AuditEvent {
            at: SystemTime::now(),
            actor_fingerprint: caller.peer.fingerprint.clone(),
            actor: caller.identity.name.clone(),
            role: Some(caller.identity.role),
            action: action.into(),
            detail,
            outcome: outcome.into(),
        };
        if let Err(e) = self.monitor.store().audit(event) {
            tracing::error!(error = %e, "writing audit event");
        }
    }

    async fn act(
        &self,
        request: Request<DeadLetterRequest>,
        requeue: bool,
    ) -> Result<Response<DeadLetterResponse>, Status> {
        let caller = Caller::of(&request)?;
        let sequence = request.into_inner().sequence;
        let store = self.monitor.store();
        let found = if requeue {
            store.requeue_dead_letter(sequence).await
        } else {
            store.discard_dead_letter(sequence).await
        }
        .map_err(ServiceError::from)?;
        let (action, outcome) = if requeue {
            ("ops.requeue_dead_letter", "REQUEUED")
        } else {
            ("ops.discard_dead_letter", "DISCARDED")
        };
        self.audit(
            &caller,
            action,
            format!("sequence={sequence}"),
            if found { "ok" } else { "not_found" },
        );
        if !found {
            return Err(ServiceError::DeadLetterNotFound(sequence).into());
        }
        tracing::info!(sequence, actor = %caller.identity.name, action, "dead letter handled");
        Ok(Response::new(DeadLetterResponse {
            sequence,
            outcome: outcome.into(),
        }))
    }
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_deliveries(
        &self,
        request: Request<ListDeliveriesRequest>,
    ) -> Result<Response<ListDeliveriesResponse>, Status> {
        Caller::of(&request)?;
        let monitor = self.monitor.clone();
        let statuses =
            tokio::task::spawn_blocking(move || monitor.supplier_statuses(SystemTime::now()))
                .await
                .map_err(|e| ServiceError::Internal(format!("deliveries task: {e}")))?
                .map_err(ServiceError::from)?;
        let suppliers = statuses
            .into_iter()
            .map(|s| SupplierDelivery {
                supplier_id: s.id,
                name: s.name,
                suspended: s.suspended,
                last_batch_at: s.last_batch_at.map(timestamp).unwrap_or_default(),
                last_batch_id: s.last_batch_id,
                today: s.today.date,
                batches_today: s.today.batches,
                records_today: s.today.records,
                accepted_today: s.today.accepted,
                duplicate_today: s.today.duplicate,
                rejected_today: s.today.rejected,
                rejects_today: s
                    .today
                    .rejects_by_code
                    .into_iter()
                    .map(|(code, count)| CodeCount { code, count })
                    .collect(),
                delivered_today: s.delivered_today,
                overdue: s.overdue,
            })
            .collect();
        Ok(Response::new(ListDeliveriesResponse {
            suppliers,
            overdue_after_secs: self.monitor.settings().overdue_after.as_secs(),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let caller = Caller::of(&request)?;
        let limit = request.into_inner().limit as usize;
        let dead = self
            .monitor
            .store()
            .dead_letters(limit)
            .await
            .map_err(ServiceError::from)?;
        let dead_letters = dead
            .into_iter()
            .map(|d| DeadLetter {
                sequence: d.sequence,
                supplier_id: d.supplier_id,
                message_id: d.message_id,
                batch_id: d.batch_id,
                received_at: timestamp(d.received_at),
                dead_lettered_at: timestamp(d.dead_lettered_at),
                attempts: d.attempts,
            })
            .collect::<Vec<_>>();
        let seqs: Vec<String> = dead_letters
            .iter()
            .map(|d| d.sequence.to_string())
            .collect();
        self.audit(
            &caller,
            "ops.list_dead_letters",
            format!("count={} sequences=[{}]", seqs.len(), seqs.join(",")),
            "ok",
        );
        Ok(Response::new(ListDeadLettersResponse { dead_letters }))
    }

    async fn requeue_dead_letter(
        &self,
        request: Request<DeadLetterRequest>,
    ) -> Result<Response<DeadLetterResponse>, Status> {
        self.act(request, true).await
    }

    async fn discard_dead_letter(
        &self,
        request: Request<DeadLetterRequest>,
    ) -> Result<Response<DeadLetterResponse>, Status> {
        self.act(request, false).await
    }
}
