//! Fairness between callers: a cap on requests in flight per identity
//! (certificate) and a token-bucket rate limit on records per supplier. Past
//! either, the answer is RESOURCE_EXHAUSTED with a retry hint, so one supplier
//! flooding the gateway cannot crowd out another.
//!
//! Pure in-memory bookkeeping, no I/O; the services call [`Limiter::admit`]
//! at the start of a call and hold the [`Permit`] until they answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

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
    fn a_batch_larger_than_the_burst_can_still_pass() {
        let l = limiter(100, 10, 100);
        assert!(l.admit("x", Some("s"), 5000).is_ok());
    }
}
