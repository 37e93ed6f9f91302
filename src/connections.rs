//! Open client connections by certificate, so that a revoked or retired
//! certificate, or a suspended supplier, loses its already open connections too.
//!
//! Every call is refused at once by the `Authorize` interceptor (it checks per
//! request); this closes the connection as well. A sweeper checks the
//! certificates of the open connections every interval and closes a connection
//! when its registered certificate was found no longer allowed in two
//! consecutive sweeps: between one and two intervals after the change. The
//! grace leaves the next call on the connection to be answered with a clear
//! UNAUTHENTICATED / PERMISSION_DENIED rather than a broken connection.
//! Connections of unregistered certificates are left alone (every call on them
//! is refused anyway).
//!
//! Closing makes reads of the connection end (EOF), so the HTTP/2 server ends it.
//!
//! It also keeps each connection's peer chain (DER) so that, after every
//! successful TLS reload, [`Connections::reverify`] checks each open connection
//! with the new client verifier (the handshake's webpki verification with the
//! new CAs and CRLs, at now) and closes the ones that fail at once, each audited
//! (`tls.connection_closed`, outcome the reason code from
//! [`crate::tls::verify::refusal_code`]) and counted
//! ([`TlsAcceptorHandle::count_closed`]). A connection whose handshake ran with
//! older material but was tracked only after that check is verified when
//! tracked.
//!
//! Must not: decide who may call (it mirrors the interceptor's rules and the
//! handshake's verifier), or block the accept path (verification on tracking
//! happens only for connections straddling a reload). Called by `server::run`
//! (wraps the incoming stream, starts the sweeper) and the reloader
//! (`reverify`).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::server::danger::ClientCertVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::{lock, AuditEvent, Role, Store};
use crate::tls::{verify::refusal_code, PeerInfo, TlsAcceptorHandle, TlsConn};

/// The close signal of one connection.
#[derive(Default)]
struct Closer {
    closed: AtomicBool,
    /// The last reader's waker, woken on close so a pending read sees it.
    waker: Mutex<Option<Waker>>,
}

impl Closer {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(w) = lock(&self.waker).take() {
            w.wake();
        }
    }
}

#[derive(Clone)]
struct Entry {
    fingerprint: String,
    remote_addr: SocketAddr,
    /// The peer chain as presented at the handshake, end entity first.
    chain: Arc<[CertificateDer<'static>]>,
    closer: Arc<Closer>,
}

/// The newest re-verification: the material generation it used and its verifier.
type Verified = (u64, Arc<dyn ClientCertVerifier>);

#[derive(Default)]
struct Open {
    conns: HashMap<u64, Entry>,
    /// Set by [`Connections::reverify`]; read by `track` under the same lock.
    verified: Option<Verified>,
}

#[derive(Default)]
struct Inner {
    next_id: AtomicU64,
    open: Mutex<Open>,
    /// Where closings are audited (none in unit tests).
    store: Option<Store>,
    /// Where closings are counted.
    tls: Option<TlsAcceptorHandle>,
}

/// One connection closed by a re-verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClosedConn {
    /// The certificate's fingerprint.
    pub fingerprint: String,
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// Why, e.g. `CERTIFICATE_REVOKED_BY_CRL` or `CERTIFICATE_UNTRUSTED`.
    pub code: &'static str,
}

/// The registry of open connections; cheap to clone.
#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("open", &lock(&self.inner.open).conns.len())
            .finish()
    }
}

impl Connections {
    /// An empty registry.
    pub fn new() -> Connections {
        Connections::default()
    }

    /// A registry that audits the connections it closes after a reload in `store`
    /// and counts them in `tls` (the acceptor's handle, whose counts the metrics show).
    pub fn audited(store: Store, tls: TlsAcceptorHandle) -> Connections {
        Connections {
            inner: Arc::new(Inner {
                store: Some(store),
                tls: Some(tls),
                ..Inner::default()
            }),
        }
    }

    /// Registers an accepted connection; it unregisters itself when dropped. A
    /// connection whose handshake used material older than the newest
    /// re-verification is verified now, and closed at once if it fails.
    pub fn track(&self, conn: TlsConn) -> TrackedConn {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let closer = Arc::new(Closer::default());
        let chain: Arc<[CertificateDer<'static>]> = Arc::from(conn.peer_chain().to_vec());
        let stale = {
            let mut open = lock(&self.inner.open);
            open.conns.insert(
                id,
                Entry {
                    fingerprint: conn.peer().fingerprint.clone(),
                    remote_addr: conn.peer().remote_addr,
                    chain: Arc::clone(&chain),
                    closer: Arc::clone(&closer),
                },
            );
            open.verified
                .as_ref()
                .filter(|(generation, _)| conn.generation() < *generation)
                .map(|(_, verifier)| Arc::clone(verifier))
        };
        if let Some(verifier) = stale {
            if let Err(e) = verify_chain(verifier.as_ref(), &chain, SystemTime::now()) {
                closer.close();
                self.closed(
                    ClosedConn {
                        fingerprint: conn.peer().fingerprint.clone(),
                        remote_addr: conn.peer().remote_addr,
                        code: refusal_code(&e),
                    },
                    "accepted during a TLS reload",
                );
            }
        }
        TrackedConn {
            conn,
            closer,
            id,
            registry: Arc::clone(&self.inner),
        }
    }

    /// Re-verifies every open connection's peer chain with the client verifier of
    /// the material `tls` has in force now, at now, and closes (audited, counted)
    /// the ones that fail. Blocking (audit writes): run it off the async workers.
    /// Returns the connections closed. Does nothing when `tls` has no verifier.
    pub fn reverify(&self, tls: &TlsAcceptorHandle, trigger: &str) -> Vec<ClosedConn> {
        let (generation, Some(verifier)) = tls.verifier() else {
            return Vec::new();
        };
        let snapshot: Vec<Entry> = {
            let mut open = lock(&self.inner.open);
            open.verified = Some((generation, Arc::clone(&verifier)));
            open.conns.values().cloned().collect()
        };
        let now = SystemTime::now();
        let mut closed = Vec::new();
        for entry in snapshot {
            if let Err(e) = verify_chain(verifier.as_ref(), &entry.chain, now) {
                entry.closer.close();
                let conn = ClosedConn {
                    fingerprint: entry.fingerprint,
                    remote_addr: entry.remote_addr,
                    code: refusal_code(&e),
                };
                self.closed(conn.clone(), trigger);
                closed.push(conn);
            }
        }
        closed
    }

    /// Logs, counts and audits one connection closed by a re-verification.
    fn closed(&self, conn: ClosedConn, trigger: &str) {
        tracing::warn!(
            fingerprint = %conn.fingerprint,
            remote_addr = %conn.remote_addr,
            code = conn.code,
            trigger,
            "closed a connection whose certificate no longer verifies with the TLS material in force"
        );
        if let Some(tls) = &self.inner.tls {
            tls.count_closed(conn.code);
        }
        let Some(store) = &self.inner.store else {
            return;
        };
        let identity = store.identity(&conn.fingerprint).ok().flatten();
        let event = AuditEvent {
            at: SystemTime::now(),
            actor_fingerprint: conn.fingerprint.clone(),
            actor: identity
                .as_ref()
                .map_or_else(|| "(not registered)".to_owned(), |i| i.name.clone()),
            role: identity.as_ref().map(|i| i.role),
            action: "tls.connection_closed".into(),
            detail: format!("trigger={trigger} peer={}", conn.remote_addr),
            outcome: conn.code.into(),
        };
        if let Err(e) = store.audit(event) {
            tracing::error!(error = %e, "writing audit event");
        }
    }

    /// Open connections now.
    pub fn len(&self) -> usize {
        lock(&self.inner.open).conns.len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every open connection of a certificate; returns how many.
    pub fn close(&self, fingerprint: &str) -> usize {
        let open = lock(&self.inner.open);
        let mut n = 0;
        for entry in open.conns.values().filter(|e| e.fingerprint == fingerprint) {
            entry.closer.close();
            n += 1;
        }
        n
    }

    fn fingerprints(&self) -> Vec<String> {
        let mut fps: Vec<String> = lock(&self.inner.open)
            .conns
            .values()
            .map(|e| e.fingerprint.clone())
            .collect();
        fps.sort();
        fps.dedup();
        fps
    }

    /// Starts the sweeper (see the module docs); ends when `stop` turns true.
    pub fn spawn_sweeper(
        &self,
        store: Store,
        every: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Disallowed at the previous sweep: closed if still so now.
            let mut suspect: Vec<String> = Vec::new();
            loop {
                tokio::select! {
                    () = async { let _ = stop.wait_for(|s| *s).await; } => break,
                    _ = tick.tick() => {}
                }
                let fps = this.fingerprints();
                let store = store.clone();
                let denied = tokio::task::spawn_blocking(move || {
                    let now = SystemTime::now();
                    fps.into_iter()
                        .filter(|fp| !allowed(&store, fp, now))
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                for fp in &denied {
                    if suspect.contains(fp) {
                        let n = this.close(fp);
                        tracing::info!(fingerprint = %fp, connections = n, "closed connections of a certificate that is no longer allowed");
                    }
                }
                suspect = denied;
            }
        })
    }
}

/// Whether a registered certificate may still call: active and, for a
/// supplier, its supplier registered and not suspended. Unregistered
/// certificates and store errors count as allowed (left to the interceptor).
fn allowed(store: &Store, fingerprint: &str, now: SystemTime) -> bool {
    let identity = match store.identity(fingerprint) {
        Ok(Some(identity)) => identity,
        Ok(None) | Err(_) => return true,
    };
    if !identity.is_active(now) {
        return false;
    }
    if identity.role != Role::Supplier {
        return true;
    }
    let id = identity.supplier_id.unwrap_or_default();
    match store.supplier(&id) {
        Ok(Some(s)) => !s.suspended,
        Ok(None) => false,
        Err(_) => true,
    }
}

/// Runs the handshake's client verification of `chain` (end entity first) at `now`.
fn verify_chain(
    verifier: &dyn ClientCertVerifier,
    chain: &[CertificateDer<'static>],
    now: SystemTime,
) -> Result<(), rustls::Error> {
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(rustls::Error::NoCertificatesPresented);
    };
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::since_unix_epoch(since_epoch))
        .map(|_| ())
}

/// An accepted connection that can be closed from outside.
pub struct TrackedConn {
    conn: TlsConn,
    closer: Arc<Closer>,
    id: u64,
    /// To unregister on drop.
    registry: Arc<Inner>,
}

impl std::fmt::Debug for TrackedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedConn")
            .field("conn", &self.conn)
            .field("closed", &self.closer.closed.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for TrackedConn {
    fn drop(&mut self) {
        lock(&self.registry.open).conns.remove(&self.id);
    }
}

impl AsyncRead for TrackedConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        *lock(&this.closer.waker) = Some(cx.waker().clone());
        if this.closer.closed.load(Ordering::Acquire) {
            // EOF: the HTTP/2 server ends the connection.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.conn).poll_read(cx, buf)
    }
}

impl AsyncWrite for TrackedConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().conn).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().conn).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.conn.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TrackedConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.conn.peer().clone()
    }
}
