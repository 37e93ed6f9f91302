//! `schakel.v1.Registry`: the registry leases queued records (Pull), then
//! acknowledges (Ack) or gives them back (Release). A thin adapter over the
//! store's queue: it caps what the caller asks for (records, and bytes: a Pull
//! leases only what fits `limits.max_request_bytes`, the answer's encoding
//! limit) and turns store types into wire types. Logs sequences and counts, never record content; every line of a
//! call is in a span naming the call and the registry identity.

use std::time::{Duration, SystemTime};

use prost::Message;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::config::Limits;
use crate::error::ServiceError;
use crate::proto::{
    registry_server::Registry, AckRequest, AckResponse, DeliveredRecord, PullRequest, PullResponse,
    ReleaseRequest, ReleaseResponse, TokenResult, VaccinationRecord,
};
use crate::service::auth::Caller;
use crate::service::limits::Limiter;
use crate::service::timestamp;
use crate::store::{self, AuditEvent, PullBudget, Store, TokenOutcome};

/// Most lease tokens in one Ack or Release.
pub const MAX_TOKENS_PER_CALL: usize = 10_000;

/// The Registry service.
#[derive(Clone)]
pub struct RegistryService {
    store: Store,
    limits: Limits,
    limiter: Limiter,
}

impl RegistryService {
    /// A service over `store`, capping pulls by `limits`.
    pub fn new(store: Store, limits: Limits) -> Self {
        let limiter = crate::server::limiter(&limits);
        RegistryService {
            store,
            limits,
            limiter,
        }
    }

    /// Shares `limiter` (per-identity limits) with other services.
    pub fn with_limiter(mut self, limiter: Limiter) -> Self {
        self.limiter = limiter;
        self
    }

    fn audit(&self, caller: &Caller, action: &str, detail: String) {
        let event = AuditEvent {
            at: SystemTime::now(),
            actor_fingerprint: caller.peer.fingerprint.clone(),
            actor: caller.identity.name.clone(),
            role: Some(caller.identity.role),
            action: action.into(),
            detail,
            outcome: "ok".into(),
        };
        if let Err(e) = self.store.audit(event) {
            tracing::error!(error = %e, "writing audit event");
        }
    }
}

fn outcome_to_proto(outcome: TokenOutcome) -> crate::proto::TokenOutcome {
    use crate::proto::TokenOutcome as P;
    match outcome {
        TokenOutcome::Acked => P::Acked,
        TokenOutcome::AlreadyAcked => P::AlreadyAcked,
        TokenOutcome::LeaseExpired => P::LeaseExpired,
        TokenOutcome::Unknown => P::UnknownToken,
        TokenOutcome::Released => P::Released,
        TokenOutcome::AlreadyReleased => P::AlreadyReleased,
    }
}

fn token_results(tokens: Vec<String>, results: Vec<store::TokenResult>) -> Vec<TokenResult> {
    tokens
        .into_iter()
        .zip(results)
        .map(|(lease_token, r)| TokenResult {
            lease_token,
            outcome: outcome_to_proto(r.outcome) as i32,
            sequence: r.sequence.unwrap_or(0),
        })
        .collect()
}

/// "sequences 3..17" style summary for logs and audit: ids only.
fn summarize(results: &[TokenResult]) -> String {
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    for r in results {
        let name = crate::proto::TokenOutcome::try_from(r.outcome)
            .map(|o| o.as_str_name())
            .unwrap_or("?");
        *counts.entry(name).or_default() += 1;
    }
    let seqs: Vec<String> = results
        .iter()
        .filter(|r| r.sequence != 0)
        .map(|r| r.sequence.to_string())
        .collect();
    let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{} sequences=[{}]", counts.join(" "), seqs.join(","))
}

/// What one delivered record costs in a `PullResponse` beyond its stored queue
/// entry (which holds the supplier, message and batch ids and the encoded
/// record): the fixed fields at their largest, a tag and a length of at most
/// five bytes for each of the four variable fields, and the repeated field's
/// own tag and length. An upper bound, so a budgeted answer always encodes
/// within the limit.
fn per_record_overhead() -> usize {
    let far = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_799); // 9999-12-31
    let fixed = DeliveredRecord {
        sequence: u64::MAX,
        delivery_attempt: u32::MAX,
        lease_token: "f".repeat(40),
        received_at: timestamp(far),
        lease_expires_at: timestamp(far),
        ..DeliveredRecord::default()
    }
    .encoded_len();
    fixed + 4 * (1 + 5) + (1 + 5)
}

fn check_tokens(tokens: &[String]) -> Result<(), ServiceError> {
    if tokens.len() > MAX_TOKENS_PER_CALL {
        return Err(ServiceError::InvalidRequest {
            field: "lease_tokens",
            message: format!("at most {MAX_TOKENS_PER_CALL} tokens per call"),
        });
    }
    Ok(())
}

impl RegistryService {
    async fn serve_pull(
        &self,
        caller: Caller,
        request: Request<PullRequest>,
    ) -> Result<Response<PullResponse>, Status> {
        let _permit = self.limiter.admit(&caller.peer.fingerprint, None, 0)?;
        let req = request.into_inner();
        let l = &self.limits;
        let max = match req.max_records {
            0 => l.default_pull_records,
            n => n.min(l.max_pull_records),
        } as usize;
        let wait = Duration::from_millis(u64::from(req.wait_ms.min(l.max_pull_wait_ms)));
        let lease = Duration::from_millis(u64::from(match req.lease_ms {
            0 => l.default_lease_ms,
            n => n.min(l.max_lease_ms),
        }));
        // Lease only what the answer can carry: a record leased but not sent
        // would count a delivery attempt and end in the dead letters.
        let budget = PullBudget {
            max_bytes: l.max_request_bytes,
            per_record: per_record_overhead(),
        };
        let deliveries = self
            .store
            .pull_within(max, budget, wait, lease)
            .await
            .map_err(ServiceError::from)?;
        let mut records = Vec::with_capacity(deliveries.len());
        for d in deliveries {
            let record = VaccinationRecord::decode(d.content.as_slice()).map_err(|e| {
                ServiceError::Internal(format!("queued record {} does not decode: {e}", d.sequence))
            })?;
            records.push(DeliveredRecord {
                sequence: d.sequence,
                supplier_id: d.supplier_id,
                message_id: d.message_id,
                received_at: timestamp(d.received_at),
                delivery_attempt: d.attempt,
                lease_token: d.lease_token,
                lease_expires_at: timestamp(d.lease_expires_at),
                batch_id: d.batch_id,
                record: Some(record),
            });
        }
        if !records.is_empty() {
            let first = records.first().map_or(0, |r| r.sequence);
            let last = records.last().map_or(0, |r| r.sequence);
            tracing::info!(records = records.len(), first, last, "pulled");
            let seqs: Vec<String> = records.iter().map(|r| r.sequence.to_string()).collect();
            self.audit(
                &caller,
                "pull",
                format!("records={} sequences=[{}]", records.len(), seqs.join(",")),
            );
        }
        Ok(Response::new(PullResponse { records }))
    }

    async fn serve_ack(
        &self,
        caller: Caller,
        request: Request<AckRequest>,
    ) -> Result<Response<AckResponse>, Status> {
        let _permit = self.limiter.admit(&caller.peer.fingerprint, None, 0)?;
        let tokens = request.into_inner().lease_tokens;
        check_tokens(&tokens)?;
        let results = self.store.ack(&tokens).await.map_err(ServiceError::from)?;
        let results = token_results(tokens, results);
        let summary = summarize(&results);
        tracing::info!(tokens = results.len(), "acked");
        self.audit(&caller, "ack", summary);
        Ok(Response::new(AckResponse { results }))
    }

    async fn serve_release(
        &self,
        caller: Caller,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let _permit = self.limiter.admit(&caller.peer.fingerprint, None, 0)?;
        let tokens = request.into_inner().lease_tokens;
        check_tokens(&tokens)?;
        let results = self
            .store
            .release(&tokens)
            .await
            .map_err(ServiceError::from)?;
        let results = token_results(tokens, results);
        let summary = summarize(&results);
        tracing::info!(tokens = results.len(), "released");
        self.audit(&caller, "release", summary);
        Ok(Response::new(ReleaseResponse { results }))
    }
}

/// The span of one registry call: its name and the caller's identity.
fn call_span(call: &'static str, caller: &Caller) -> tracing::Span {
    tracing::info_span!("registry", call, identity = %caller.identity.name)
}

#[tonic::async_trait]
impl Registry for RegistryService {
    async fn pull(&self, request: Request<PullRequest>) -> Result<Response<PullResponse>, Status> {
        let caller = Caller::of(&request)?;
        let span = call_span("pull", &caller);
        self.serve_pull(caller, request).instrument(span).await
    }

    async fn ack(&self, request: Request<AckRequest>) -> Result<Response<AckResponse>, Status> {
        let caller = Caller::of(&request)?;
        let span = call_span("ack", &caller);
        self.serve_ack(caller, request).instrument(span).await
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let caller = Caller::of(&request)?;
        let span = call_span("release", &caller);
        self.serve_release(caller, request).instrument(span).await
    }
}

#[cfg(test)]
mod tests {
    use crate::testkit::*;

    /// Issue 11 item 5: with a low `limits.max_request_bytes` a Pull leases
    /// only what fits its answer. Before, every full page leased records (and
    /// counted a delivery), then failed to encode, until the records ended in
    /// the dead letters.
    #[tokio::test]
    async fn pull_leases_only_what_fits_the_answer() {
        const LIMIT: usize = 16 * 1024;
        let server = TestServer::start_with(|c| c.limits.max_request_bytes = LIMIT).await;
        let mut intake = server.intake(SUPPLIER_A).await;
        for b in 0..4 {
            let records = (0..30).map(|i| record(&format!("m-{b}-{i:02}"))).collect();
            intake
                .submit_batch(batch(&format!("b{b}"), records))
                .await
                .expect("a batch within the limit");
        }
        let mut registry = server.registry().await;
        let mut pages = 0;
        let mut delivered = std::collections::HashSet::new();
        loop {
            let pulled = registry
                .pull(pull_request(1000, 0, 60_000))
                .await
                .expect("every answer fits the limit")
                .into_inner();
            if pulled.records.is_empty() {
                break;
            }
            pages += 1;
            assert!(
                prost::Message::encoded_len(&pulled) <= LIMIT,
                "answer of {} bytes",
                prost::Message::encoded_len(&pulled)
            );
            let tokens: Vec<String> = pulled
                .records
                .iter()
                .map(|r| r.lease_token.clone())
                .collect();
            for r in pulled.records {
                assert_eq!(r.delivery_attempt, 1, "{}", r.message_id);
                assert!(delivered.insert(r.message_id));
            }
            registry
                .ack(crate::proto::AckRequest {
                    lease_tokens: tokens,
                })
                .await
                .expect("ack");
        }
        assert_eq!(delivered.len(), 120);
        assert!(pages > 1, "the 120 records do not fit one answer");
        let (_, metrics) = server.http_get("/metrics").await;
        assert!(metrics.contains("\nschakel_dead_letters 0\n"), "{metrics}");
        assert!(
            metrics.contains("\nschakel_records_delivered_total 120\n"),
            "{metrics}"
        );
    }
}
