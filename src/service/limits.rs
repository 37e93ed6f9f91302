//! Fairness between callers and bounded memory: a cap on requests in flight
//! per identity (certificate), a token-bucket rate limit on records per
//! supplier, and a gateway-wide budget on the bytes of requests being received
//! and decoded at once ([`DecodeBudget`]). Past any of them, the answer is
//! RESOURCE_EXHAUSTED with a retry hint, so one supplier flooding the gateway
//! cannot crowd out another, and many large requests at once cannot exhaust
//! its memory.
//!
//! Pure in-memory bookkeeping, no I/O. The services call [`Limiter::admit`]
//! at the start of a call and hold the [`Permit`] until they answer; the
//! server installs [`DecodeLimitsLayer`] around all services, which charges
//! request bodies to the budget as they arrive and sets the codec's
//! [`DecodeLimits`] for the request.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::codec::DecodeLimits;
use crate::error::ServiceError;

/// The limits, from `config.limits`.
#[derive(Debug, Clone, Copy)]
pub struct LimiterConfig {
    /// Requests in flight at once per identity.
    pub max_in_flight_per_identity: usize,
    /// Sustained records per second per supplier; 0 disables the rate limit.
    pub records_per_second: u64,
    /// Records a supplier may send at once after being idle.
    pub burst_records: u64,
}

struct Bucket {
    tokens: f64,
    updated: Instant,
}

#[derive(Default)]
struct State {
    in_flight: HashMap<String, usize>,
    buckets: HashMap<String, Bucket>,
}

/// Shared limiter; cheap to clone.
#[derive(Clone)]
pub struct Limiter {
    config: LimiterConfig,
    /// Per-identity counters and buckets; held only briefly, never across `.await`.
    state: Arc<Mutex<State>>,
}

/// Holds one in-flight slot of an identity until dropped.
pub struct Permit {
    key: String,
    state: Arc<Mutex<State>>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = state.in_flight.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                state.in_flight.remove(&self.key);
            }
        }
    }
}

impl Limiter {
    /// A limiter with `config`.
    pub fn new(config: LimiterConfig) -> Self {
        Limiter {
            config,
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// Admits a call of `identity` costing `records` records of `supplier`'s
    /// rate (0 records: concurrency only).
    ///
    /// # Errors
    /// [`ServiceError::Overloaded`] with a retry hint when either limit is hit.
    pub fn admit(
        &self,
        identity: &str,
        supplier: Option<&str>,
        records: u64,
    ) -> Result<Permit, ServiceError> {
        self.admit_at(identity, supplier, records, Instant::now())
    }

    fn admit_at(
        &self,
        identity: &str,
        supplier: Option<&str>,
        records: u64,
        now: Instant,
    ) -> Result<Permit, ServiceError> {
        let c = self.config;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let in_flight = state.in_flight.get(identity).copied().unwrap_or(0);
        if in_flight >= c.max_in_flight_per_identity.max(1) {
            return Err(ServiceError::Overloaded {
                what: "requests in flight for this certificate",
                retry_after: Duration::from_millis(100),
            });
        }
        if let (Some(supplier), true) = (supplier, c.records_per_second > 0 && records > 0) {
            let rate = c.records_per_second as f64;
            let burst = c.burst_records.max(1) as f64;
            // A batch larger than the burst is charged the whole burst, so it
            // can pass at all.
            let cost = (records as f64).min(burst);
            let bucket = state.buckets.entry(supplier.to_owned()).or_insert(Bucket {
                tokens: burst,
                updated: now,
            });
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
            bucket.updated = now;
            if bucket.tokens < cost {
                let wait = (cost - bucket.tokens) / rate;
                return Err(ServiceError::Overloaded {
                    what: "records per second for this supplier",
                    retry_after: Duration::from_secs_f64(wait).max(Duration::from_millis(10)),
                });
            }
            bucket.tokens -= cost;
        }
        *state.in_flight.entry(identity.to_owned()).or_insert(0) += 1;
        Ok(Permit {
            key: identity.to_owned(),
            state: Arc::clone(&self.state),
        })
    }
}

/// How long a caller refused by the decode budget is asked to wait: requests
/// being received finish within milliseconds to seconds.
const DECODE_BUDGET_RETRY: Duration = Duration::from_millis(200);

/// Bytes of requests being received and decoded at once, across all
/// connections (`limits.max_decoding_bytes`). Lock-free; cheap to clone.
#[derive(Debug, Clone)]
pub struct DecodeBudget {
    limit: usize,
    used: Arc<AtomicUsize>,
}

impl DecodeBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        DecodeBudget {
            limit,
            used: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Bytes taken now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// Takes `n` bytes if they fit.
    fn try_take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|total| *total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        // Only what `try_take` added is given back, so this never underflows.
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What one request has taken from the budget. Shared by the request's body
/// (charged frame by frame as it arrives) and its service future (which holds
/// the decoded message): the bytes are given back when both are done.
#[derive(Debug)]
struct Charge {
    budget: DecodeBudget,
    taken: AtomicUsize,
}

impl Charge {
    fn take(&self, n: usize) -> bool {
        if !self.budget.try_take(n) {
            return false;
        }
        self.taken.fetch_add(n, Ordering::AcqRel);
        true
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.give_back(*self.taken.get_mut());
    }
}

/// A request body that charges every data frame to the decode budget before
/// the codec buffers it; over budget, the body fails with
/// RESOURCE_EXHAUSTED `DECODE_BUDGET_EXHAUSTED` (tonic answers the call with
/// that status).
struct BudgetedBody {
    inner: tonic::body::Body,
    /// `None` once the budget refused a frame: the body is over.
    charge: Option<Arc<Charge>>,
}

impl http_body::Body for BudgetedBody {
    type Data = prost::bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<prost::bytes::Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let Some(charge) = &this.charge else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(data)) = frame
            .as_ref()
            .map(|f| f.as_ref().map(http_body::Frame::data_ref))
        {
            let len = data.map_or(0, prost::bytes::Bytes::len);
            if len > 0 && !charge.take(len) {
                this.charge = None;
                let refused = ServiceError::DecodeBudgetExhausted {
                    retry_after: DECODE_BUDGET_RETRY,
                };
                return Poll::Ready(Some(Err(refused.into())));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.charge.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The tower layer that puts every request to the gateway's own services
/// (`/schakel.*`, all unary) under the decode budget and the codec's
/// [`DecodeLimits`]; the server installs it around all services. Health and
/// reflection pass unbudgeted: their requests are tiny, and a reflection
/// stream would hold its charge for as long as it stays open.
#[derive(Debug, Clone)]
pub struct DecodeLimitsLayer {
    budget: DecodeBudget,
    limits: DecodeLimits,
}

impl DecodeLimitsLayer {
    /// A layer charging `budget` and enforcing `limits` while decoding.
    pub fn new(budget: DecodeBudget, limits: DecodeLimits) -> Self {
        DecodeLimitsLayer { budget, limits }
    }
}

impl<S> tower_layer::Layer<S> for DecodeLimitsLayer {
    type Service = DecodeLimitsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DecodeLimitsService {
            inner,
            budget: self.budget.clone(),
            limits: self.limits,
        }
    }
}

/// The request paths [`DecodeLimitsLayer`] budgets: the `schakel.*` services.
const BUDGETED_PATHS: &str = "/schakel.";

/// See [`DecodeLimitsLayer`].
#[derive(Debug, Clone)]
pub struct DecodeLimitsService<S> {
    inner: S,
    budget: DecodeBudget,
    limits: DecodeLimits,
}

impl<S, B> tower_service::Service<http::Request<tonic::body::Body>> for DecodeLimitsService<S>
where
    S: tower_service::Service<http::Request<tonic::body::Body>, Response = http::Response<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if !request.uri().path().starts_with(BUDGETED_PATHS) {
            return Box::pin(self.inner.call(request));
        }
        let charge = Arc::new(Charge {
            budget: self.budget.clone(),
            taken: AtomicUsize::new(0),
        });
        let body_charge = Arc::clone(&charge);
        let request = request.map(|inner| {
            tonic::body::Body::new(BudgetedBody {
                inner,
                charge: Some(body_charge),
            })
        });
        let future = crate::codec::scope(self.limits, self.inner.call(request));
        Box::pin(async move {
            let response = future.await;
            // The decoded request lived in the future: give its bytes back now.
            drop(charge);
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(in_flight: usize, rate: u64, burst: u64) -> Limiter {
        Limiter::new(LimiterConfig {
            max_in_flight_per_identity: in_flight,
            records_per_second: rate,
            burst_records: burst,
        })
    }

    #[test]
    fn in_flight_is_capped_per_identity_and_released_on_drop() {
        let l = limiter(2, 0, 0);
        let a = l.admit("a", None, 0).unwrap();
        let _b = l.admit("a", None, 0).unwrap();
        assert!(matches!(
            l.admit("a", None, 0),
            Err(ServiceError::Overloaded { .. })
        ));
        // Another identity is not affected.
        let _c = l.admit("other", None, 0).unwrap();
        drop(a);
        assert!(l.admit("a", None, 0).is_ok());
    }

    #[test]
    fn the_bucket_refills_at_the_rate_and_hints_the_wait() {
        let l = limiter(100, 1000, 1000);
        let t0 = Instant::now();
        drop(l.admit_at("x", Some("s"), 1000, t0).unwrap());
        let Err(ServiceError::Overloaded { retry_after, .. }) = l.admit_at("x", Some("s"), 500, t0)
        else {
            panic!("expected Overloaded");
        };
        assert_eq!(retry_after, Duration::from_millis(500));
        // Other suppliers have their own bucket.
        drop(l.admit_at("y", Some("t"), 1000, t0).unwrap());
        // Half a second later, 500 records fit again.
        drop(
            l.admit_at("x", Some("s"), 500, t0 + Duration::from_millis(500))
                .unwrap(),
        );
    }

    #[test]
    fn the_decode_budget_is_shared_and_given_back_per_request() {
        let budget = DecodeBudget::new(100);
        let charge = || Charge {
            budget: budget.clone(),
            taken: AtomicUsize::new(0),
        };
        let (first, second) = (charge(), charge());
        assert!(first.take(60));
        assert!(!first.take(41), "over the budget");
        assert!(!second.take(41), "the budget is shared");
        assert!(second.take(40));
        assert_eq!(budget.in_use(), 100);
        drop(first);
        assert_eq!(budget.in_use(), 40, "a request gives back what it took");
        drop(second);
        assert_eq!(budget.in_use(), 0);
        assert!(!charge().take(101), "more than the whole budget never fits");
    }

    #[test]
    fn a_batch_larger_than_the_burst_can_still_pass() {
        let l = limiter(100, 10, 100);
        assert!(l.admit("x", Some("s"), 5000).is_ok());
    }
}
