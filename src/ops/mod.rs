//! Operations: what the service desk watches. Metrics (Prometheus, on a
//! separate plain-HTTP port), the status page, daily-delivery monitoring
//! (overdue suppliers), and the periodic checks (overdue warnings in the log,
//! audit retention purge).
//!
//! Owns the [`Monitor`] handle the intake reports batches to, the supplier
//! status model shared by the metrics, the status page and the Operations
//! service, and the background check loop. Must not: log or label anything but
//! ids, counts and codes; decide anything about records. Called by `server`
//! (assembly), `service::intake` (per batch) and `service::operations`.

pub mod http;
pub mod metrics;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::proto::{BatchReceipt, RecordStatus, Severity};
use crate::store::{BatchTally, DeliveryDay, Store, StoreError};

pub use metrics::Metrics;

/// Days before expiry from which the status page lists a certificate.
pub const CERT_WARNING_DAYS: u64 = 30;

/// Why an operations part failed.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// A metric could not be registered or encoded.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The store failed while gathering.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The reflection service rejected a descriptor set.
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Rendering output failed.
    #[error("rendering: {0}")]
    Render(String),
    /// The HTTP port failed.
    #[error("serving HTTP on {addr}: {source}")]
    Http {
        /// The port.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Operations settings the checks need.
#[derive(Debug, Clone)]
pub struct OpsSettings {
    /// No batch for this long: overdue.
    pub overdue_after: Duration,
    /// Audit events older than this are purged.
    pub audit_retention: Duration,
    /// Between two rounds of checks.
    pub check_interval: Duration,
}

impl OpsSettings {
    /// The settings of `config`.
    pub fn of(config: &crate::config::Config) -> OpsSettings {
        let ops = &config.ops;
        OpsSettings {
            overdue_after: Duration::from_secs(ops.overdue_after_secs),
            audit_retention: Duration::from_secs(ops.audit_retention_days.saturating_mul(86_400)),
            check_interval: Duration::from_secs(ops.check_interval_secs.max(1)),
        }
    }
}

/// Cheap handle shared by the intake, the HTTP port, the Operations service
/// and the check loop.
#[derive(Clone)]
pub struct Monitor {
    inner: Arc<MonitorInner>,
}

struct MonitorInner {
    store: Store,
    metrics: Metrics,
    settings: OpsSettings,
    /// The gateway's TLS acceptor, for its handshake counts; set once at start.
    tls: std::sync::OnceLock<crate::tls::TlsAcceptorHandle>,
}

/// One supplier's delivery status.
#[derive(Debug, Clone)]
pub struct SupplierStatus {
    pub id: String,
    pub name: String,
    pub suspended: bool,
    pub last_batch_at: Option<SystemTime>,
    pub last_batch_id: String,
    /// Today's (UTC) tallies.
    pub today: DeliveryDay,
    pub delivered_today: bool,
    /// Not suspended and no batch within the window (counted from its
    /// registration when it never delivered).
    pub overdue: bool,
}

/// The status of every registered supplier at `now`.
///
/// # Errors
/// The store fails.
pub fn supplier_statuses(
    store: &Store,
    now: SystemTime,
    overdue_after: Duration,
) -> Result<Vec<SupplierStatus>, StoreError> {
    let mut deliveries: BTreeMap<String, _> = store
        .supplier_deliveries(now)?
        .into_iter()
        .map(|d| (d.supplier_id.clone(), d))
        .collect();
    let mut out = Vec::new();
    for s in store.suppliers()? {
        let d = deliveries.remove(&s.id).unwrap_or_default().as_of(now);
        let since = d.last_batch_at.unwrap_or(s.created_at);
        let overdue = !s.suspended
            && now
                .duration_since(since)
                .is_ok_and(|quiet| quiet > overdue_after);
        out.push(SupplierStatus {
            delivered_today: d.today.batches > 0,
            id: s.id,
            name: s.name,
            suspended: s.suspended,
            last_batch_at: d.last_batch_at,
            last_batch_id: d.last_batch_id,
            today: d.today,
            overdue,
        });
    }
    Ok(out)
}

/// Per rejected record its first error code, counted.
fn rejects_by_code(receipt: &BatchReceipt) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for r in &receipt.results {
        if r.status != RecordStatus::Rejected as i32 {
            continue;
        }
        let code = r
            .findings
            .iter()
            .find(|f| f.severity == Severity::Error as i32)
            .map_or("UNKNOWN", |f| f.code.as_str());
        *out.entry(code.to_owned()).or_default() += 1;
    }
    out
}

impl Monitor {
    /// A monitor over `store` with fresh metrics.
    ///
    /// # Errors
    /// The metrics cannot be registered (a bug).
    pub fn new(store: Store, settings: OpsSettings) -> Result<Monitor, OpsError> {
        Ok(Monitor {
            inner: Arc::new(MonitorInner {
                store,
                metrics: Metrics::new()?,
                settings,
                tls: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Shows the handshake outcomes of `acceptor` in the metrics and on the
    /// status page (first call wins).
    pub fn watch_tls(&self, acceptor: crate::tls::TlsAcceptorHandle) {
        let _ = self.inner.tls.set(acceptor);
    }

    /// The TLS handshake outcomes since start, when an acceptor is watched.
    pub fn handshake_counts(&self) -> Option<crate::tls::HandshakeCounts> {
        self.inner
            .tls
            .get()
            .map(crate::tls::TlsAcceptorHandle::handshake_counts)
    }

    /// The CRLs in force, when an acceptor is watched.
    pub fn crls(&self) -> Vec<crate::tls::CrlInfo> {
        self.inner
            .tls
            .get()
            .map(|t| t.crls().to_vec())
            .unwrap_or_default()
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn settings(&self) -> &OpsSettings {
        &self.inner.settings
    }

    /// The intake answered a batch: count it and record the delivery.
    pub fn batch_received(&self, receipt: &BatchReceipt, at: SystemTime, elapsed: Duration) {
        let rejects = rejects_by_code(receipt);
        let pairs: Vec<(String, u64)> = rejects.iter().map(|(k, v)| (k.clone(), *v)).collect();
        self.inner.metrics.batch_received(
            &receipt.supplier_id,
            u64::from(receipt.accepted),
            u64::from(receipt.duplicate),
            &pairs,
            elapsed,
        );
        let tally = BatchTally {
            accepted: u64::from(receipt.accepted),
            duplicate: u64::from(receipt.duplicate),
            rejected: u64::from(receipt.rejected),
            rejects_by_code: rejects,
        };
        if let Err(e) = self.inner.store.record_batch_delivery(
            &receipt.supplier_id,
            &receipt.batch_id,
            at,
            &tally,
        ) {
            tracing::error!(error = %e, "recording the delivery");
        }
    }

    /// The intake refused a batch as a whole with `code`.
    pub fn batch_refused(&self, supplier: &str, code: &str, elapsed: Duration) {
        self.inner.metrics.batch_refused(supplier, code, elapsed);
    }

    /// Every supplier's status now.
    ///
    /// # Errors
    /// The store fails.
    pub fn supplier_statuses(&self, now: SystemTime) -> Result<Vec<SupplierStatus>, StoreError> {
        supplier_statuses(&self.inner.store, now, self.inner.settings.overdue_after)
    }

    /// Reads the store and renders `/metrics` (blocking: run it off the async workers).
    ///
    /// # Errors
    /// The store or the encoder fails.
    pub fn render_metrics(&self) -> Result<String, OpsError> {
        let now = SystemTime::now();
        let store = &self.inner.store;
        let failed = store.failure().is_some();
        let snap = metrics::Snapshot {
            store_failed: failed,
            sync_failures: store.sync_failures(),
            queue: store.queue_stats(),
            counters: store.queue_counters(),
            dead_letters: read_or_empty(store.dead_letter_count(), failed)?,
            identities: read_or_empty(store.identities(), failed)?,
            suppliers: read_or_empty(self.supplier_statuses(now), failed)?,
            store_bytes: store.size_on_disk().ok(),
            handshakes: self.handshake_counts(),
            tls_closed: self
                .inner
                .tls
                .get()
                .map(crate::tls::TlsAcceptorHandle::closed_counts)
                .unwrap_or_default(),
            crls: self
                .crls()
                .iter()
                .map(|c| {
                    (
                        c.file.display().to_string(),
                        c.expired_at(now),
                        c.next_update,
                    )
                })
                .collect(),
        };
        self.inner.metrics.render(&snap, now)
    }

    /// One round of checks: warns about overdue suppliers (ids only) and purges
    /// audit events past retention. Blocking.
    ///
    /// # Errors
    /// The store fails.
    pub fn check(&self, now: SystemTime) -> Result<CheckReport, StoreError> {
        let overdue: Vec<String> = self
            .supplier_statuses(now)?
            .into_iter()
            .filter(|s| s.overdue)
            .map(|s| {
                tracing::warn!(
                    supplier = %s.id,
                    last_batch_at = %s.last_batch_at.map_or_else(|| "never".to_owned(), crate::service::timestamp),
                    window_secs = self.inner.settings.overdue_after.as_secs(),
                    "supplier overdue: no batch within the window"
                );
                s.id
            })
            .collect();
        let purged = match now.checked_sub(self.inner.settings.audit_retention) {
            Some(cutoff) => self.inner.store.purge_audit_before(cutoff)?,
            None => 0,
        };
        if purged > 0 {
            tracing::info!(events = purged, "purged audit events past retention");
        }
        Ok(CheckReport { overdue, purged })
    }

    /// Runs [`Monitor::check`] now and every `check_interval` until `stop` turns true.
    pub async fn run_checks(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.inner.settings.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let me = self.clone();
            match tokio::task::spawn_blocking(move || me.check(SystemTime::now())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "operations check"),
                Err(e) => tracing::error!(error = %e, "operations check task"),
            }
        }
    }
}

/// A store read for a page or scrape. Once the store has failed (sled may
/// refuse reads after a write error) a failed read shows as empty, so the
/// failure itself is still shown; before that it is an error.
///
/// # Errors
/// The read failed and the store has not failed.
pub(crate) fn read_or_empty<T: Default>(
    read: Result<T, StoreError>,
    store_failed: bool,
) -> Result<T, StoreError> {
    match read {
        Err(_) if store_failed => Ok(T::default()),
        other => other,
    }
}

/// What one round of checks found.
#[derive(Debug, Clone, Default)]
pub struct CheckReport {
    /// Overdue supplier ids.
    pub overdue: Vec<String>,
    /// Audit events purged.
    pub purged: u64,
}
