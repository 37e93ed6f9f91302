//! The store's failure latch: after any failed write or sync the store is
//! failed for the rest of the process's life (what PostgreSQL does since 2018
//! on a failed fsync). Linux reports a write-back error once and then marks the
//! pages clean, so a later sync that "succeeds" proves nothing about the data
//! the failed one should have made durable; only a restart, which recovers
//! from what is on disk, is safe.
//!
//! Owns the latch (the first failure, kept, and a watch that wakes whoever
//! waits for it), the count of failed sync rounds, and [`SyncFaults`], the
//! test hook that makes the next syncs fail with EIO. Must not: reset itself,
//! log more than one line per latch, or put record content in the failure
//! (contexts name ids only). Called by `commit` (failed sync rounds) and by the
//! `Store` write paths (failed sled writes, and the check before every write).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use tokio::sync::watch;

use super::{lock, StoreError};

/// Why and when the store failed. Kept for the process's life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFailure {
    /// When the failure happened.
    pub at: SystemTime,
    /// What the store was doing, e.g. "syncing the store to disk (group commit)".
    pub context: String,
    /// The error kind, e.g. "Input/output error (os error 5)" or "sled: ...".
    pub error: String,
}

impl fmt::Display for StoreFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.error)
    }
}

/// The latch shared by the `Store` handle and the commit thread.
pub(crate) struct Latch {
    first: OnceLock<Arc<StoreFailure>>,
    sync_failures: AtomicU64,
    tx: watch::Sender<bool>,
}

impl Latch {
    pub(crate) fn new() -> Latch {
        Latch {
            first: OnceLock::new(),
            sync_failures: AtomicU64::new(0),
            tx: watch::Sender::new(false),
        }
    }

    /// The first failure, once the store has failed.
    pub(crate) fn failure(&self) -> Option<Arc<StoreFailure>> {
        self.first.get().cloned()
    }

    /// `Err(StoreError::Failed)` once the store has failed.
    pub(crate) fn check(&self) -> Result<(), StoreError> {
        match self.first.get() {
            Some(first) => Err(StoreError::Failed(Arc::clone(first))),
            None => Ok(()),
        }
    }

    /// Latches the store failed (the first failure wins and is logged once, as
    /// an ERROR line with what failed and why) and returns the error every
    /// caller gets from now on.
    pub(crate) fn trip(&self, context: &str, error: &dyn fmt::Display) -> StoreError {
        let failure = Arc::new(StoreFailure {
            at: SystemTime::now(),
            context: context.to_owned(),
            error: error.to_string(),
        });
        if self.first.set(Arc::clone(&failure)).is_ok() {
            tracing::error!(
                what = %failure.context,
                error = %failure.error,
                "store FAILED: a write or sync to disk failed; the gateway refuses every \
                 submit, pull, ack and release (UNAVAILABLE STORE_FAILED) until it is \
                 restarted, which recovers from what is on disk"
            );
            self.tx.send_replace(true);
        }
        // `set` failed only because a failure is latched already.
        self.check().err().unwrap_or(StoreError::Failed(failure))
    }

    /// Counts a failed sync round (a metric) and latches.
    pub(crate) fn sync_failed(&self, context: &str, error: &dyn fmt::Display) -> StoreError {
        self.sync_failures.fetch_add(1, Ordering::AcqRel);
        self.trip(context, error)
    }

    pub(crate) fn sync_failures(&self) -> u64 {
        self.sync_failures.load(Ordering::Acquire)
    }

    /// Resolves once the store has failed.
    pub(crate) async fn failed(&self) {
        let mut rx = self.tx.subscribe();
        // The sender lives as long as `self`, so `wait_for` cannot fail here.
        let _ = rx.wait_for(|failed| *failed).await;
    }
}

/// Test hook (fault injection in the file layer): makes sync rounds fail as a
/// failing `fdatasync` would, with EIO, after sled's log was written to the OS.
/// A clone shares the same counters. Disarmed by default; the serving path
/// arms it only from `schakel serve`'s `SCHAKEL_TEST_FAIL_SYNC_AFTER` variable
/// or from a test's config.
#[doc(hidden)]
#[derive(Clone, Default)]
pub struct SyncFaults {
    /// (sync rounds still to let pass, sync rounds to fail after those).
    plan: Arc<Mutex<(u64, u64)>>,
}

impl fmt::Debug for SyncFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (pass, fail) = *lock(&self.plan);
        f.debug_struct("SyncFaults")
            .field("pass", &pass)
            .field("fail", &fail)
            .finish()
    }
}

impl SyncFaults {
    /// The next `n` sync rounds fail.
    pub fn fail_next(&self, n: u64) {
        *lock(&self.plan) = (0, n);
    }

    /// `pass` sync rounds succeed, then `fail` rounds fail.
    pub fn fail_after(&self, pass: u64, fail: u64) {
        *lock(&self.plan) = (pass, fail);
    }

    /// Called once per sync round, at the `fdatasync`: whether it must fail.
    pub(crate) fn take(&self) -> bool {
        let mut plan = lock(&self.plan);
        match *plan {
            (_, 0) => false,
            (0, fail) => {
                plan.1 = fail - 1;
                true
            }
            (pass, _) => {
                plan.0 = pass - 1;
                false
            }
        }
    }
}
