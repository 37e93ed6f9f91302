//! Prometheus metrics of one gateway (its own `prometheus::Registry`, so test
//! gateways in one process do not mix). Counters of intake events are counted
//! as they happen; queue, dead-letter, certificate, supplier and disk gauges are
//! read from the store at scrape time.
//!
//! Must not: put personal data in a label (labels are supplier ids, error codes,
//! outcomes, roles and certificate fingerprints). Called by the intake (through
//! [`super::Monitor`]) and by the HTTP endpoint `/metrics`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::{OpsError, SupplierStatus};
use crate::store::{Identity, QueueCounters, QueueStats};
use crate::tls::HandshakeCounts;

/// All metrics of one gateway.
pub struct Metrics {
    /// Serialises scrapes: counters that follow the store's totals are raised
    /// by difference, which two concurrent scrapes would count twice.
    render_lock: std::sync::Mutex<()>,
    registry: Registry,
    records: IntCounterVec,
    rejected: IntCounterVec,
    batches: IntCounterVec,
    batches_refused: IntCounterVec,
    batch_seconds: HistogramVec,
    delivered: IntCounter,
    acked: IntCounter,
    leases_expired: IntCounter,
    dead_lettered: IntCounter,
    queue_depth: IntGauge,
    queue_leased: IntGauge,
    oldest_age: Gauge,
    dead_letters: IntGauge,
    cert_not_after: GaugeVec,
    store_bytes: IntGauge,
    supplier_overdue: IntGaugeVec,
    supplier_last_batch: GaugeVec,
    suppliers_overdue: IntGauge,
    tls_handshakes: IntCounterVec,
    store_failed: IntGauge,
    sync_failures: IntCounter,
    tls_connections_closed: IntCounterVec,
    crl_expired: IntGaugeVec,
    crl_next_update: GaugeVec,
}

/// What a scrape reads from the store.
pub struct Snapshot {
    pub queue: QueueStats,
    pub counters: QueueCounters,
    pub dead_letters: u64,
    pub identities: Vec<Identity>,
    pub suppliers: Vec<SupplierStatus>,
    /// `None` when sled could not measure.
    pub store_bytes: Option<u64>,
    /// `None` when the gateway's TLS acceptor is not attached (a bare monitor).
    pub handshakes: Option<HandshakeCounts>,
    /// The store latched failed after a failed write or sync.
    pub store_failed: bool,
    /// Failed sync rounds since the store was opened.
    pub sync_failures: u64,
    /// Open connections closed by a TLS re-verification, by reason code.
    pub tls_closed: Vec<(&'static str, u64)>,
    /// The CRLs in force: (file, past its nextUpdate now, nextUpdate).
    pub crls: Vec<(String, bool, Option<SystemTime>)>,
}

fn unix_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Errors
    /// A metric is malformed or registered twice (a bug): `OpsError::Metrics`.
    pub fn new() -> Result<Metrics, OpsError> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let records = counter_vec(
            "schakel_records_total",
            "Records received, by supplier and outcome (accepted, duplicate, rejected).",
            &["supplier", "outcome"],
        )?;
        let rejected = counter_vec(
            "schakel_records_rejected_total",
            "Rejected records, by supplier and (first) error code.",
            &["supplier", "code"],
        )?;
        let batches = counter_vec(
            "schakel_batches_total",
            "SubmitBatch calls, by supplier and outcome (ok, refused).",
            &["supplier", "outcome"],
        )?;
        let batches_refused = counter_vec(
            "schakel_batches_refused_total",
            "SubmitBatch calls refused as a whole, by supplier and error code.",
            &["supplier", "code"],
        )?;
        let batch_seconds = HistogramVec::new(
            HistogramOpts::new(
                "schakel_batch_duration_seconds",
                "Time to answer a SubmitBatch call (validation, dedup, fsync), by supplier.",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["supplier"],
        )?;
        registry.register(Box::new(batch_seconds.clone()))?;
        let delivered = counter(
            "schakel_records_delivered_total",
            "Records handed to the registry by Pull (every attempt).",
        )?;
        let acked = counter(
            "schakel_records_acked_total",
            "Records acknowledged by the registry.",
        )?;
        let leases_expired = counter(
            "schakel_leases_expired_total",
            "Leases that ran out without an ack or release.",
        )?;
        let dead_lettered = counter(
            "schakel_dead_lettered_total",
            "Records moved to the dead letters.",
        )?;
        let queue_depth = gauge(
            "schakel_queue_depth",
            "Records queued and not acknowledged (leased ones included).",
        )?;
        let queue_leased = gauge("schakel_queue_leased", "Records under an active lease.")?;
        let oldest_age = Gauge::new(
            "schakel_queue_oldest_age_seconds",
            "Age of the oldest unacknowledged record (0 when the queue is empty).",
        )?;
        registry.register(Box::new(oldest_age.clone()))?;
        let dead_letters = gauge("schakel_dead_letters", "Records in the dead letters now.")?;
        let cert_not_after = GaugeVec::new(
            Opts::new(
                "schakel_certificate_not_after_seconds",
                "Expiry (unix seconds) of each registered, unrevoked client certificate.",
            ),
            &["fingerprint", "role", "supplier"],
        )?;
        registry.register(Box::new(cert_not_after.clone()))?;
        let store_bytes = gauge(
            "schakel_store_size_bytes",
            "Size of the sled store on disk.",
        )?;
        let supplier_overdue = IntGaugeVec::new(
            Opts::new(
                "schakel_supplier_overdue",
                "1 when the supplier delivered no batch within the configured window.",
            ),
            &["supplier"],
        )?;
        registry.register(Box::new(supplier_overdue.clone()))?;
        let supplier_last_batch = GaugeVec::new(
            Opts::new(
                "schakel_supplier_last_batch_seconds",
                "Time (unix seconds) of the supplier's last batch.",
            ),
            &["supplier"],
        )?;
        registry.register(Box::new(supplier_last_batch.clone()))?;
        let suppliers_overdue = gauge("schakel_suppliers_overdue", "Number of overdue suppliers.")?;
        let tls_handshakes = counter_vec(
            "schakel_tls_handshakes_total",
            "TLS handshakes on the gRPC port, by outcome: ok, rejected (client certificate \
             missing, from an unknown CA, expired, not yet valid or in a CRL), failed (not TLS, \
             an old version, a reset), timeout, limited (closed by a per-address or \
             per-certificate connection cap).",
            &["outcome"],
        )?;
        let store_failed = gauge(
            "schakel_store_failed",
            "1 when the store failed (a write or sync to disk failed): every write is \
             refused until the gateway is restarted.",
        )?;
        let sync_failures = counter(
            "schakel_store_sync_failures_total",
            "Store sync rounds (flush and fsync) that failed.",
        )?;
        let tls_connections_closed = counter_vec(
            "schakel_tls_connections_closed_total",
            "Open connections closed because their client chain no longer verified with the \
             TLS material in force (after a reload), by reason code.",
            &["reason"],
        )?;
        let crl_expired = IntGaugeVec::new(
            Opts::new(
                "schakel_crl_expired",
                "1 when the CRL file in force is past its nextUpdate (see tls.crl_expired).",
            ),
            &["file"],
        )?;
        registry.register(Box::new(crl_expired.clone()))?;
        let crl_next_update = GaugeVec::new(
            Opts::new(
                "schakel_crl_next_update_seconds",
                "nextUpdate (unix seconds) of the CRL file in force; alert well before it passes.",
            ),
            &["file"],
        )?;
        registry.register(Box::new(crl_next_update.clone()))?;
        Ok(Metrics {
            render_lock: std::sync::Mutex::new(()),
            registry,
            records,
            rejected,
            batches,
            batches_refused,
            batch_seconds,
            delivered,
            acked,
            leases_expired,
            dead_lettered,
            queue_depth,
            queue_leased,
            oldest_age,
            dead_letters,
            cert_not_after,
            store_bytes,
            supplier_overdue,
            supplier_last_batch,
            suppliers_overdue,
            tls_handshakes,
            store_failed,
            sync_failures,
            tls_connections_closed,
            crl_expired,
            crl_next_update,
        })
    }

    /// Counts an answered batch.
    pub fn batch_received(
        &self,
        supplier: &str,
        accepted: u64,
        duplicate: u64,
        rejects: &[(String, u64)],
        elapsed: Duration,
    ) {
        self.batches.with_label_values(&[supplier, "ok"]).inc();
        self.batch_seconds
            .with_label_values(&[supplier])
            .observe(elapsed.as_secs_f64());
        self.records
            .with_label_values(&[supplier, "accepted"])
            .inc_by(accepted);
        self.records
            .with_label_values(&[supplier, "duplicate"])
            .inc_by(duplicate);
        let rejected: u64 = rejects.iter().map(|(_, n)| n).sum();
        self.records
            .with_label_values(&[supplier, "rejected"])
            .inc_by(rejected);
        for (code, n) in rejects {
            self.rejected
                .with_label_values(&[supplier, code.as_str()])
                .inc_by(*n);
        }
    }

    /// Counts a batch refused as a whole.
    pub fn batch_refused(&self, supplier: &str, code: &str, elapsed: Duration) {
        self.batches.with_label_values(&[supplier, "refused"]).inc();
        self.batches_refused
            .with_label_values(&[supplier, code])
            .inc();
        self.batch_seconds
            .with_label_values(&[supplier])
            .observe(elapsed.as_secs_f64());
    }

    /// Sets the scrape-time values and renders the Prometheus text format.
    ///
    /// # Errors
    /// Encoding fails (a bug): `OpsError::Metrics`.
    pub fn render(&self, snap: &Snapshot, now: SystemTime) -> Result<String, OpsError> {
        let _scrape = crate::store::lock(&self.render_lock);
        let follow = |c: &IntCounter, value: u64| {
            let current = c.get();
            if value > current {
                c.inc_by(value - current);
            }
        };
        follow(&self.delivered, snap.counters.delivered);
        follow(&self.acked, snap.counters.acked);
        follow(&self.leases_expired, snap.counters.leases_expired);
        follow(&self.dead_lettered, snap.counters.dead_lettered);
        follow(&self.sync_failures, snap.sync_failures);
        self.store_failed.set(i64::from(snap.store_failed));
        if let Some(h) = snap.handshakes {
            for (outcome, value) in [
                ("ok", h.ok),
                ("rejected", h.rejected),
                ("failed", h.failed),
                ("timeout", h.timed_out),
                ("limited", h.limited),
            ] {
                follow(&self.tls_handshakes.with_label_values(&[outcome]), value);
            }
        }
        for (reason, value) in &snap.tls_closed {
            follow(
                &self.tls_connections_closed.with_label_values(&[*reason]),
                *value,
            );
        }
        self.crl_expired.reset();
        self.crl_next_update.reset();
        for (file, expired, next_update) in &snap.crls {
            self.crl_expired
                .with_label_values(&[file.as_str()])
                .set(i64::from(*expired));
            if let Some(next) = next_update {
                self.crl_next_update
                    .with_label_values(&[file.as_str()])
                    .set(unix_secs(*next));
            }
        }
        self.queue_depth.set(clamp(snap.queue.depth));
        self.queue_leased.set(clamp(snap.queue.leased));
        self.oldest_age.set(
            snap.queue
                .oldest_received_at
                .and_then(|t| now.duration_since(t).ok())
                .map_or(0.0, |d| d.as_secs_f64()),
        );
        self.dead_letters.set(clamp(snap.dead_letters));
        self.cert_not_after.reset();
        for identity in snap.identities.iter().filter(|i| i.revoked_at.is_none()) {
            let role = identity.role.as_str();
            self.cert_not_after
                .with_label_values(&[
                    identity.fingerprint.as_str(),
                    role,
                    identity.supplier_id.as_deref().unwrap_or(""),
                ])
                .set(unix_secs(identity.not_after));
        }
        if let Some(bytes) = snap.store_bytes {
            self.store_bytes.set(clamp(bytes));
        }
        self.supplier_overdue.reset();
        self.supplier_last_batch.reset();
        let mut overdue = 0;
        for s in &snap.suppliers {
            self.supplier_overdue
                .with_label_values(&[s.id.as_str()])
                .set(i64::from(s.overdue));
            if let Some(at) = s.last_batch_at {
                self.supplier_last_batch
                    .with_label_values(&[s.id.as_str()])
                    .set(unix_secs(at));
            }
            overdue += i64::from(s.overdue);
        }
        self.suppliers_overdue.set(overdue);

        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out)?;
        String::from_utf8(out).map_err(|e| OpsError::Render(e.to_string()))
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
