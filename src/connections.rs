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
//! And it closes connections on which the client opened no call (no HTTP/2
//! HEADERS frame, read from the decrypted stream) for `limits.idle_timeout_secs`
//! ([`Connections::spawn_idle_reaper`]); keepalive pings do not count as calls.
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
    /// When the client last opened a call (unix ms), shared with the connection.
    last_call: Arc<AtomicU64>,
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
        // Opening the connection counts as a call: it gets the idle timeout for its first.
        let last_call = Arc::new(AtomicU64::new(unix_ms(SystemTime::now())));
        let stale = {
            let mut open = lock(&self.inner.open);
            open.conns.insert(
                id,
                Entry {
                    last_call: Arc::clone(&last_call),
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
            frames: FrameWatch::default(),
            last_call,
        }
    }

    /// Starts the idle reaper: closes every connection on which the client opened no
    /// call for `idle`, checking every `idle / 4` (100 ms .. 30 s). Ends when `stop`
    /// turns true.
    pub fn spawn_idle_reaper(
        &self,
        idle: Duration,
        mut stop: watch::Receiver<bool>,
    ) -> JoinHandle<()> {
        let this = self.clone();
        let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = async { let _ = stop.wait_for(|s| *s).await; } => break,
                    _ = tick.tick() => {}
                }
                let now = unix_ms(SystemTime::now());
                let open = lock(&this.inner.open);
                for entry in open.conns.values() {
                    let last = entry.last_call.load(Ordering::Relaxed);
                    if now.saturating_sub(last) > idle_ms
                        && !entry.closer.closed.load(Ordering::Acquire)
                    {
                        entry.closer.close();
                        tracing::info!(
                            fingerprint = %entry.fingerprint,
                            remote_addr = %entry.remote_addr,
                            idle_secs = idle.as_secs(),
                            "closed a connection without calls for the idle timeout"
                        );
                    }
                }
            }
        })
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

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Follows the HTTP/2 frames a client sends (after the 24-byte connection preface:
/// 9-byte frame headers, payloads skipped) to see when it opens a call (a HEADERS
/// frame, type 0x1). Only observes: the bytes go to the HTTP/2 server unchanged.
#[derive(Debug)]
struct FrameWatch {
    preface_left: usize,
    header: [u8; 9],
    have: usize,
    skip: usize,
}

impl Default for FrameWatch {
    fn default() -> Self {
        FrameWatch {
            preface_left: 24,
            header: [0; 9],
            have: 0,
            skip: 0,
        }
    }
}

impl FrameWatch {
    /// Feeds bytes read from the client; true when a HEADERS frame started in them.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut call = false;
        while !data.is_empty() {
            if self.preface_left > 0 {
                let n = self.preface_left.min(data.len());
                self.preface_left -= n;
                data = &data[n..];
                continue;
            }
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            // `have` < 9 here: it is reset when it reaches 9.
            let n = (9 - self.have).min(data.len());
            self.header[self.have..self.have + n].copy_from_slice(&data[..n]);
            self.have += n;
            data = &data[n..];
            if self.have == 9 {
                self.have = 0;
                let h = &self.header;
                self.skip =
                    (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                if h[3] == 0x1 {
                    call = true;
                }
            }
        }
        call
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
    /// Sees the calls the client opens, for the idle timeout.
    frames: FrameWatch,
    /// Shared with the registry's entry.
    last_call: Arc<AtomicU64>,
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
        let before = buf.filled().len();
        let result = Pin::new(&mut this.conn).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            if this.frames.feed(&buf.filled()[before..]) {
                this.last_call
                    .store(unix_ms(SystemTime::now()), Ordering::Relaxed);
            }
        }
        result
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Arc;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio_stream::StreamExt;

    use super::*;
    use crate::tls::dev::{ClientCertOptions, TestCa};
    use crate::tls::{self, AcceptLimits, CrlExpiredPolicy, ServerTlsFiles};

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn frame_watch_sees_headers_frames_across_reads_and_skips_payloads() {
        let frame = |kind: u8, payload: &[u8]| {
            let len = payload.len();
            let mut f = vec![
                (len >> 16) as u8,
                (len >> 8) as u8,
                len as u8,
                kind,
                0,
                0,
                0,
                0,
                1,
            ];
            f.extend_from_slice(payload);
            f
        };
        let mut stream = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        stream.extend(frame(0x4, &[0; 12])); // SETTINGS
        stream.extend(frame(0x6, &[1; 8])); // PING, payload bytes 0x01 look like HEADERS
        let no_call = stream.len();
        stream.extend(frame(0x1, &[1; 300])); // HEADERS
        let mut watch = FrameWatch::default();
        assert!(!watch.feed(&stream[..no_call]));
        // Byte by byte across the HEADERS frame.
        let mut seen = false;
        for b in &stream[no_call..] {
            seen |= watch.feed(std::slice::from_ref(b));
        }
        assert!(seen);
        let mut watch = FrameWatch::default();
        assert!(!watch.feed(&stream[..no_call - 3]));
        assert!(!watch.feed(&stream[no_call - 3..no_call + 2]));
        assert!(watch.feed(&stream[no_call + 2..]));
        // A PING after it is not a call.
        assert!(!watch.feed(&frame(0x6, &[0; 8])));
    }

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn next<S>(incoming: &mut std::pin::Pin<Box<S>>) -> TlsConn
    where
        S: tokio_stream::Stream<Item = Result<TlsConn, io::Error>>,
    {
        tokio::time::timeout(WAIT, incoming.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
    }

    fn client(ca: &TestCa, cert: &(String, String)) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.cert_pem().as_bytes()).unwrap())
            .unwrap();
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.0.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(cert.1.as_bytes()).unwrap(),
                )
                .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    /// A connection accepted before a reload that revokes it, tracked only after the
    /// re-verification ran, is closed when tracked; `reverify` closes tracked ones.
    #[tokio::test]
    async fn connections_that_no_longer_verify_are_closed_at_reverify_and_at_track() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("connections test CA").unwrap();
        let (cert, key) = ca.server_cert().unwrap();
        let crl = write(dir.path(), "crl.pem", &ca.crl_pem(&[]).unwrap());
        let files = ServerTlsFiles {
            cert: write(dir.path(), "server.pem", &cert),
            key: write(dir.path(), "server.key", &key),
            client_ca: write(dir.path(), "ca.pem", &ca.cert_pem()),
            crls: vec![crl.clone()],
            crl_expired: CrlExpiredPolicy::Refuse,
        };
        let handle = TlsAcceptorHandle::from_material(&tls::server_material(&files).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let mut incoming = Box::pin(tls::incoming(
            listener,
            handle.clone(),
            AcceptLimits::default(),
            shutdown,
        ));
        let revoked = ca
            .client_cert(
                "revoked",
                &ClientCertOptions {
                    serial: Some(77),
                    ..Default::default()
                },
            )
            .unwrap();
        let fine = ca
            .client_cert("fine", &ClientCertOptions::default())
            .unwrap();
        let connect = |config: Arc<ClientConfig>| async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            tokio_rustls::TlsConnector::from(config)
                .connect(ServerName::try_from("localhost").unwrap(), tcp)
                .await
                .unwrap()
        };
        let connections = Connections::new();
        let mut revoked_client = connect(client(&ca, &revoked)).await;
        let tracked_revoked = connections.track(next(&mut incoming).await);
        let mut fine_client = connect(client(&ca, &fine)).await;
        let tracked_fine = connections.track(next(&mut incoming).await);
        // Accepted under the old material, handed over only after the reload.
        let mut late_client = connect(client(&ca, &revoked)).await;
        let late = next(&mut incoming).await;
        assert_eq!(late.generation(), 1);

        std::fs::write(&crl, ca.crl_pem(&[77]).unwrap()).unwrap();
        handle.install(&tls::server_material(&files).unwrap());
        let closed = connections.reverify(&handle, "test");
        assert_eq!(closed.len(), 1);
        assert_eq!(
            closed[0].fingerprint,
            tracked_revoked.conn.peer().fingerprint
        );
        assert_eq!(closed[0].code, "CERTIFICATE_REVOKED_BY_CRL");
        assert!(tracked_revoked.closer.closed.load(Ordering::Acquire));
        assert!(!tracked_fine.closer.closed.load(Ordering::Acquire));

        let tracked_late = connections.track(late);
        assert!(tracked_late.closer.closed.load(Ordering::Acquire));

        // A closed connection reads EOF on the server side, so the HTTP/2 server ends it;
        // dropping it closes the client's side.
        for tracked in [tracked_revoked, tracked_late] {
            let mut tracked = tracked;
            let mut buf = [0u8; 1];
            assert_eq!(tracked.read(&mut buf).await.unwrap(), 0);
        }
        let mut buf = [0u8; 1];
        for client in [&mut revoked_client, &mut late_client] {
            let read = tokio::time::timeout(WAIT, client.read(&mut buf))
                .await
                .unwrap();
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
        // The fine connection stays open: nothing to read yet.
        assert!(
            tokio::time::timeout(Duration::from_millis(100), fine_client.read(&mut buf))
                .await
                .is_err()
        );
        assert_eq!(connections.len(), 1);
        drop(tracked_fine);
    }
}
