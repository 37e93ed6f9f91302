//! Identity enters here and nowhere else: the interceptor turns the verified
//! client certificate of the connection (its SHA-256 fingerprint, put in the
//! request by the TLS acceptor) into a registered [`Identity`], checks that it is
//! active and may call the service ([`Access`]: one role, or any role for health
//! and reflection), and puts a [`Caller`] into the request's extensions. Roles
//! come from the certificate, never from a field. A certificate the store does
//! not know may still be a supplier's under the `ura` identity policy: then
//! [`crate::uzi::policy::UziTrust::resolve`] registers it on this first use (a
//! supplier identity only; the registry and admins stay pinned) or refuses it
//! with a UZI code.
//!
//! The lookup happens per request, not per connection, so a certificate that is
//! revoked or retired, or a supplier that is suspended, is refused on its very
//! next call, also on an HTTP/2 connection opened before.
//!
//! Every refusal is audited (action `access_refused`: the certificate's
//! fingerprint, the identity's name when it is registered, the service, the
//! code and a count), but bounded by [`RefusalAudit`]: the first refusal of a
//! (certificate, code, service) in an interval is written at once, the further
//! ones are only counted in memory and written as one event with their count
//! when the interval ends (and at shutdown). A certificate that loops refused
//! calls thus adds at most two events per interval, and the counts of the trail
//! still add up to every refused call.
//!
//! Must not: log or audit request content, write more than one event per key
//! and interval besides the first, hold more than `max_keys` keys with a
//! certificate in memory. Called by tonic (the interceptor) and wired in `server::serve_once`,
//! which also runs the flusher and flushes at shutdown.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::error::ServiceError;
use crate::store::{AuditEvent, Identity, Role, Store, StoreError};
use crate::tls::PeerInfo;
use crate::uzi::policy::{PolicyError, UziTrust};

/// The `actor_fingerprint` of an overflow event: refusals of certificates past
/// the cap of distinct keys, counted per (code, service).
pub const OVERFLOW_FINGERPRINT: &str = "*";

/// Who is calling: put in every authorised request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The registered identity of the client certificate.
    pub identity: Identity,
    /// The connection's peer as seen at the handshake.
    pub peer: PeerInfo,
}

impl Caller {
    /// The authorised caller of a request that passed [`Authorize`].
    ///
    /// # Errors
    /// The request did not pass the interceptor (a wiring bug): INTERNAL.
    pub fn of<T>(request: &Request<T>) -> Result<Caller, ServiceError> {
        request
            .extensions()
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ServiceError::Internal("request reached a service unauthorised".into()))
    }

    /// The supplier id of a supplier caller.
    pub fn supplier_id(&self) -> Result<&str, ServiceError> {
        self.identity
            .supplier_id
            .as_deref()
            .ok_or_else(|| ServiceError::Internal("supplier identity without supplier id".into()))
    }
}

/// Who may pass an interceptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Active identities of this role only.
    Role(Role),
    /// Any registered, active identity, whatever its role: health and
    /// reflection, which show what the gateway serves but change nothing.
    AnyRole,
}

impl Access {
    /// The rule as written in the audit trail (`needs_role=...`).
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Role(role) => role.as_str(),
            Access::AnyRole => "any",
        }
    }
}

/// The interceptor: one per service, with the access that service needs.
#[derive(Clone)]
pub struct Authorize {
    store: Store,
    access: Access,
    /// The guarded service's name, for the audit trail ("Intake", ...).
    service: &'static str,
    refusals: RefusalAudit,
    /// The UZI server CAs of the `ura` identity policy, if configured.
    uzi: Option<Arc<UziTrust>>,
}

impl Authorize {
    /// Admits only active identities that `access` allows to `service`;
    /// refusals are audited through `refusals` (shared by all services).
    pub fn new(
        store: Store,
        access: Access,
        service: &'static str,
        refusals: RefusalAudit,
    ) -> Self {
        Authorize {
            store,
            access,
            service,
            refusals,
            uzi: None,
        }
    }

    /// Also admits, under the `ura` identity policy, unregistered UZI server
    /// certificates of the CAs in `uzi` (`tls.uzi_server_ca`).
    pub fn with_uzi(mut self, uzi: Option<Arc<UziTrust>>) -> Self {
        self.uzi = uzi;
        self
    }

    /// Looks up and checks the caller of a request.
    ///
    /// # Errors
    /// UNAUTHENTICATED for a missing, unregistered or inactive certificate,
    /// PERMISSION_DENIED for a wrong role or a suspended supplier.
    pub fn check<T>(&self, request: &Request<T>) -> Result<Caller, ServiceError> {
        let peer = request
            .extensions()
            .get::<PeerInfo>()
            .cloned()
            .ok_or(ServiceError::NoPeerCertificate)?;
        let registered = match self.store.identity(&peer.fingerprint)? {
            Some(identity) => Some(identity),
            // Not pinned: a UZI server certificate may still name the URA of
            // a supplier whose policy is `ura` (registered on first use).
            None => match &self.uzi {
                Some(trust) => trust.resolve(&self.store, &peer).map_err(|e| match e {
                    PolicyError::Refused(refusal) => ServiceError::Uzi(refusal),
                    PolicyError::Store(e) => ServiceError::Store(e),
                })?,
                None => None,
            },
        };
        let identity = registered.ok_or_else(|| ServiceError::UnknownCertificate {
            fingerprint: peer.fingerprint.clone(),
        })?;
        let now = SystemTime::now();
        if !identity.is_active(now) {
            let state = if identity.revoked_at.is_some_and(|t| t <= now) {
                "revoked"
            } else if identity.retire_at.is_some_and(|t| t <= now) {
                "retired"
            } else {
                "expired"
            };
            return Err(ServiceError::InactiveCertificate {
                fingerprint: peer.fingerprint,
                state,
            });
        }
        if let Access::Role(needed) = self.access {
            if identity.role != needed {
                return Err(ServiceError::WrongRole {
                    needed,
                    actual: identity.role,
                });
            }
        }
        if identity.role == Role::Supplier {
            let id = identity.supplier_id.clone().unwrap_or_default();
            match self.store.supplier(&id)? {
                None => return Err(ServiceError::UnknownSupplier(id)),
                Some(s) if s.suspended => return Err(ServiceError::SupplierSuspended(id)),
                Some(_) => {}
            }
        }
        Ok(Caller { identity, peer })
    }
}

impl Interceptor for Authorize {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self.check(&request).map_err(|e| {
            if let Some(peer) = request.extensions().get::<PeerInfo>() {
                self.refusals
                    .record(peer, e.code(), self.service, self.access.as_str());
            }
            Status::from(e)
        })?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// How refusals are aggregated in the audit trail (`[audit]` in the config).
#[derive(Debug, Clone, Copy)]
pub struct RefusalSettings {
    /// Length of one aggregation interval.
    pub interval: Duration,
    /// Distinct (certificate, code, service) keys counted per interval;
    /// refusals under further keys are counted per (code, service) in
    /// overflow events.
    pub max_keys: usize,
}

impl Default for RefusalSettings {
    fn default() -> Self {
        RefusalSettings {
            interval: Duration::from_secs(60),
            max_keys: 1000,
        }
    }
}

/// What refusals are counted under: one event at once, then one per interval.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RefusalKey {
    /// `None`: the overflow key of certificates past the cap.
    fingerprint: Option<String>,
    code: &'static str,
    service: &'static str,
    needs: &'static str,
}

/// Refusals of one key counted since its last event.
#[derive(Debug)]
struct Pending {
    count: u64,
    last_at: SystemTime,
    last_peer: std::net::SocketAddr,
}

#[derive(Debug, Default)]
struct Window {
    keys: HashMap<RefusalKey, Pending>,
    /// Keys with a fingerprint in `keys`, at most `max_keys` (the overflow
    /// keys are not counted: there are at most codes x services of them).
    certificates: usize,
}

/// The bounded audit of refused calls, shared by every interceptor of one
/// serving gateway. Cheap to clone.
#[derive(Clone)]
pub struct RefusalAudit {
    inner: Arc<RefusalInner>,
}

struct RefusalInner {
    store: Store,
    settings: RefusalSettings,
    window: Mutex<Window>,
}

/// What [`RefusalAudit::record`] must write now: the first refusal of a key.
struct FirstRefusal {
    key: RefusalKey,
    at: SystemTime,
    peer: std::net::SocketAddr,
}

impl RefusalAudit {
    /// Refusal audit into `store`, aggregated as `settings` say.
    pub fn new(store: Store, settings: RefusalSettings) -> Self {
        RefusalAudit {
            inner: Arc::new(RefusalInner {
                store,
                settings: RefusalSettings {
                    max_keys: settings.max_keys.max(1),
                    ..settings
                },
                window: Mutex::new(Window::default()),
            }),
        }
    }

    /// The aggregation settings in force.
    pub fn settings(&self) -> RefusalSettings {
        self.inner.settings
    }

    fn window(&self) -> std::sync::MutexGuard<'_, Window> {
        // A panic while holding the lock leaves only counts behind: keep them.
        self.inner
            .window
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one refused call. The first of its (certificate, code, service)
    /// in the interval is written to the audit log at once; the others only
    /// add to a counter that [`flush`](Self::flush) writes.
    pub fn record(
        &self,
        peer: &PeerInfo,
        code: &'static str,
        service: &'static str,
        needs: &'static str,
    ) {
        let first = {
            let mut window = self.window();
            let mut key = RefusalKey {
                fingerprint: Some(peer.fingerprint.clone()),
                code,
                service,
                needs,
            };
            if !window.keys.contains_key(&key)
                && window.certificates >= self.inner.settings.max_keys
            {
                key.fingerprint = None;
            }
            let now = SystemTime::now();
            if let Some(pending) = window.keys.get_mut(&key) {
                pending.count += 1;
                pending.last_at = now;
                pending.last_peer = peer.remote_addr;
                None
            } else {
                if key.fingerprint.is_some() {
                    window.certificates += 1;
                }
                window.keys.insert(
                    key.clone(),
                    Pending {
                        count: 0,
                        last_at: now,
                        last_peer: peer.remote_addr,
                    },
                );
                Some(FirstRefusal {
                    key,
                    at: now,
                    peer: peer.remote_addr,
                })
            }
        };
        if let Some(first) = first {
            // Logged like the audit: the first of a key per interval only.
            tracing::info!(peer = %peer.remote_addr, fingerprint = %peer.fingerprint, service, code, "call refused (further ones this interval are counted)");
            if let Err(e) = self.write(&first.key, first.at, first.peer, 1) {
                tracing::error!(error = %e, "writing the audit event of a refused call");
            }
        }
    }

    /// Writes one `access_refused` event standing for `count` refusals of `key`.
    fn write(
        &self,
        key: &RefusalKey,
        at: SystemTime,
        peer: std::net::SocketAddr,
        count: u64,
    ) -> Result<(), StoreError> {
        let (actor_fingerprint, actor, role) = match &key.fingerprint {
            Some(fp) => {
                let identity = self.inner.store.identity(fp).ok().flatten();
                (
                    fp.clone(),
                    identity
                        .as_ref()
                        .map_or_else(|| "(not registered)".to_owned(), |i| i.name.clone()),
                    identity.as_ref().map(|i| i.role),
                )
            }
            None => (
                OVERFLOW_FINGERPRINT.to_owned(),
                format!(
                    "(over the cap of {} keys per interval)",
                    self.inner.settings.max_keys
                ),
                None,
            ),
        };
        self.inner.store.audit(AuditEvent {
            at,
            actor_fingerprint,
            actor,
            role,
            action: "access_refused".into(),
            detail: format!(
                "service={} needs_role={} peer={peer} count={count}",
                key.service, key.needs
            ),
            outcome: key.code.into(),
        })
    }

    /// Ends the interval: writes one event per key with refusals counted since
    /// its first, with their count, and forgets every key (the next refusal of
    /// each is written at once again). Returns the number of events written.
    ///
    /// # Errors
    /// The store failed; every key is still tried, the first error returned.
    pub fn flush(&self) -> Result<usize, StoreError> {
        let keys = {
            let mut window = self.window();
            window.certificates = 0;
            std::mem::take(&mut window.keys)
        };
        let mut written = 0;
        let mut first_error = None;
        for (key, pending) in keys {
            if pending.count == 0 {
                continue;
            }
            match self.write(&key, pending.last_at, pending.last_peer, pending.count) {
                Ok(()) => written += 1,
                Err(e) => {
                    tracing::error!(error = %e, count = pending.count, "writing the count of refused calls");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(written), Err)
    }

    /// [`flush`](Self::flush) on the blocking pool.
    ///
    /// # Errors
    /// As `flush`.
    pub async fn flush_blocking(&self) -> Result<usize, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.flush())
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "the refusal flush panicked");
                Ok(0)
            })
    }

    /// Flushes at the end of every interval until `stop` turns true. The last
    /// interval is flushed by the caller after the calls have drained
    /// (`serve_once`), not here.
    pub fn spawn_flusher(
        &self,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(this.inner.settings.interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await; // the first tick is immediate
            loop {
                let stopped = tokio::select! {
                    _ = ticks.tick() => false,
                    _ = stop.wait_for(|s| *s) => true,
                };
                if stopped {
                    return;
                }
                if let Err(e) = this.flush_blocking().await {
                    tracing::error!(error = %e, "flushing refused-call counts");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AuditQuery, StoreOptions};

    fn peer(fingerprint: &str, port: u16) -> PeerInfo {
        PeerInfo {
            remote_addr: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            fingerprint: fingerprint.to_owned(),
            subject: "CN=test".into(),
            not_after: SystemTime::now(),
            cert_der: Arc::from(&b""[..]),
        }
    }

    /// (fingerprint, code, count) of every audit event, in order.
    fn events(store: &Store) -> Vec<(String, String, u64)> {
        store
            .audit_events(&AuditQuery::default())
            .unwrap()
            .into_iter()
            .map(|e| {
                let count = e
                    .detail
                    .rsplit_once("count=")
                    .and_then(|(_, n)| n.parse().ok())
                    .unwrap();
                (e.actor_fingerprint, e.outcome, count)
            })
            .collect()
    }

    fn audit(max_keys: usize) -> (tempfile::TempDir, Store, RefusalAudit) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let settings = RefusalSettings {
            interval: Duration::from_secs(3600),
            max_keys,
        };
        let refusals = RefusalAudit::new(store.clone(), settings);
        (dir, store, refusals)
    }

    #[test]
    fn the_first_refusal_is_written_at_once_and_the_rest_counted_per_interval() {
        let (_dir, store, refusals) = audit(10);
        let code = "CERTIFICATE_REVOKED";
        for port in 1..=5 {
            refusals.record(&peer("aa", port), code, "Intake", "supplier");
        }
        // Another code of the same certificate is another key.
        refusals.record(&peer("aa", 6), "WRONG_ROLE", "Admin", "admin");
        assert_eq!(
            events(&store),
            [
                ("aa".to_owned(), code.to_owned(), 1),
                ("aa".to_owned(), "WRONG_ROLE".to_owned(), 1)
            ]
        );
        assert_eq!(refusals.flush().unwrap(), 1);
        // The counted event is dated at the last call it counts (before the
        // WRONG_ROLE one), with that call's peer.
        let after = events(&store);
        assert_eq!(after.len(), 3);
        assert_eq!(after[1], ("aa".to_owned(), code.to_owned(), 4));
        let written = store.audit_events(&AuditQuery::default()).unwrap();
        assert_eq!(
            written[1].detail,
            "service=Intake needs_role=supplier peer=127.0.0.1:5 count=4"
        );
        // A flush with nothing counted writes nothing; the next interval's
        // first refusal is written at once again.
        assert_eq!(refusals.flush().unwrap(), 0);
        refusals.record(&peer("aa", 7), code, "Intake", "supplier");
        assert_eq!(events(&store).len(), 4);
        assert_eq!(events(&store)[3], ("aa".to_owned(), code.to_owned(), 1));
    }

    #[test]
    fn certificates_past_the_cap_are_counted_in_one_overflow_event_per_code() {
        let (_dir, store, refusals) = audit(2);
        let code = "CERTIFICATE_NOT_REGISTERED";
        for fp in ["a1", "a2", "a3", "a4", "a5"] {
            for port in 0..3 {
                refusals.record(&peer(fp, port), code, "Intake", "supplier");
            }
        }
        // The two counted certificates stay counted after the cap is reached.
        refusals.record(&peer("a1", 9), code, "Intake", "supplier");
        refusals.flush().unwrap();
        let mut totals = std::collections::BTreeMap::<String, u64>::new();
        for (fp, _, count) in events(&store) {
            *totals.entry(fp).or_default() += count;
        }
        let expected = [("*", 9), ("a1", 4), ("a2", 3)]
            .map(|(fp, n)| (fp.to_owned(), n))
            .into_iter()
            .collect();
        assert_eq!(totals, expected);
        // First of each key at once, then one counted event per key.
        assert_eq!(events(&store).len(), 6);
        let window = refusals.window();
        assert!(window.keys.is_empty() && window.certificates == 0);
    }
}
