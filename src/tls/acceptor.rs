//! The TLS accept loop that feeds tonic authenticated connections.
//!
//! Owns: accepting TCP connections, running each TLS handshake in its own task under a
//! timeout and a concurrency cap, limiting open connections (in all, per client IP address,
//! handshakes per IP address, and per client certificate: [`AcceptLimits`]), turning the verified client
//! certificate into a [`PeerInfo`], the reloadable handle to the current server config
//! ([`TlsAcceptorHandle`]), and the counts of handshake outcomes ([`HandshakeCounts`]) that
//! the metrics show.
//!
//! Must not: let a slow or failed handshake stall or end the loop; hand tonic a connection
//! without a verified client certificate; decide what a peer may do (that is the server's
//! interceptor, from [`PeerInfo`]). tonic must be given the stream from [`incoming`] with *no*
//! `tls_config` of its own, or it would wrap the connections in TLS a second time.
//!
//! Called by: the server (`Server::serve_with_incoming_shutdown(svc, incoming(..), signal)`),
//! the reloader (`TlsAcceptorHandle::swap`), and tests.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::server::danger::ClientCertVerifier;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use super::{describe, CrlInfo, PeerInfo, TlsMaterial};

/// Shortest pause after a transient accept error (e.g. EMFILE).
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause after repeated accept errors.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// A reloadable handle to the current server config: new handshakes use the newest config, open connections keep theirs.
///
/// Cheap to clone; all clones share the one current config.
#[derive(Clone)]
pub struct TlsAcceptorHandle {
    /// The material new handshakes start with. A std lock: held only to clone or replace
    /// it, never across an `.await`.
    current: Arc<RwLock<Current>>,
    /// Outcomes of the handshakes run with this handle, since it was made.
    outcomes: Arc<HandshakeCounters>,
    /// Open connections closed because their chain no longer verified, by reason code.
    closed: Arc<Mutex<BTreeMap<&'static str, u64>>>,
}

/// What new handshakes use now.
#[derive(Clone)]
struct Current {
    config: Arc<ServerConfig>,
    /// The client verifier inside `config`, when known (built by [`super::server_material`]).
    verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// The CRLs in force.
    crls: Arc<[CrlInfo]>,
    /// Counts the swaps: a connection whose handshake used an older generation than the
    /// newest re-verification is re-verified when it is tracked.
    generation: u64,
}

/// Handshake outcomes since the acceptor started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeCounts {
    /// Completed with a verified client certificate.
    pub ok: u64,
    /// The client certificate (or its absence) was refused: no certificate, an
    /// unknown CA, expired or not yet valid, listed in a CRL.
    pub rejected: u64,
    /// Failed otherwise: not TLS, an old protocol version, a reset.
    pub failed: u64,
    /// Not finished within the handshake timeout.
    pub timed_out: u64,
    /// Closed by a per-address or per-certificate cap ([`AcceptLimits`]): at accept,
    /// before any handshake, or right after it.
    pub limited: u64,
}

#[derive(Debug, Default)]
struct HandshakeCounters {
    ok: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    limited: AtomicU64,
}

impl std::fmt::Debug for TlsAcceptorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptorHandle").finish_non_exhaustive()
    }
}

impl TlsAcceptorHandle {
    /// A handle serving `config` until the first [`swap`](Self::swap).
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            current: Arc::new(RwLock::new(Current {
                config,
                verifier: None,
                crls: Arc::from(Vec::new()),
                generation: 0,
            })),
            outcomes: Arc::default(),
            closed: Arc::default(),
        }
    }

    /// A handle serving `material` until the first swap or [`install`](Self::install).
    pub fn from_material(material: &TlsMaterial) -> Self {
        let handle = Self::new(material.config.clone());
        handle.install(material);
        handle
    }

    /// Puts `material` in force for every handshake that starts from now on (as
    /// [`swap`](Self::swap)), keeping its verifier for [`verifier`](Self::verifier) and its
    /// CRL summaries for [`crls`](Self::crls).
    pub fn install(&self, material: &TlsMaterial) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Current {
            config: material.config.clone(),
            verifier: Some(material.verifier.clone()),
            crls: Arc::from(material.crls.clone()),
            generation: current.generation + 1,
        };
    }

    /// The generation of the material in force and its client verifier (`None` when it was
    /// put in force with a bare config by [`new`](Self::new) or [`swap`](Self::swap)).
    pub fn verifier(&self) -> (u64, Option<Arc<dyn ClientCertVerifier>>) {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        (current.generation, current.verifier.clone())
    }

    /// The CRLs in force (empty without CRLs, or after a bare [`swap`](Self::swap)).
    pub fn crls(&self) -> Arc<[CrlInfo]> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .crls
            .clone()
    }

    /// Counts one open connection closed because its chain no longer verified.
    pub fn count_closed(&self, code: &'static str) {
        *self
            .closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(code)
            .or_default() += 1;
    }

    /// Open connections closed after a re-verification, by reason code, since start.
    pub fn closed_counts(&self) -> Vec<(&'static str, u64)> {
        self.closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    fn current_with_generation(&self) -> (Arc<ServerConfig>, u64) {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        (current.config.clone(), current.generation)
    }

    /// Handshake outcomes so far (all clones share them).
    pub fn handshake_counts(&self) -> HandshakeCounts {
        let o = &self.outcomes;
        HandshakeCounts {
            ok: o.ok.load(Ordering::Relaxed),
            rejected: o.rejected.load(Ordering::Relaxed),
            failed: o.failed.load(Ordering::Relaxed),
            timed_out: o.timed_out.load(Ordering::Relaxed),
            limited: o.limited.load(Ordering::Relaxed),
        }
    }

    /// Replaces the config for every handshake that starts from now on. Handshakes in progress
    /// and open connections keep the config they started with. Build `config` with
    /// [`super::server_config`], which validates it, before swapping.
    pub fn swap(&self, config: Arc<ServerConfig>) {
        // A poisoned lock still holds a whole value: nothing can be half-written.
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        *current = Current {
            config,
            verifier: None,
            crls: Arc::from(Vec::new()),
            generation: current.generation + 1,
        };
    }

    /// The config new handshakes use now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current_with_generation().0
    }
}

/// Limits of the accept loop.
#[derive(Debug, Clone)]
pub struct AcceptLimits {
    /// Time a client gets from TCP accept to a finished TLS handshake (default 10s).
    pub handshake_timeout: Duration,
    /// Handshakes in progress at once (default 256); beyond it, accepting waits.
    pub max_handshakes: usize,
    /// Open authenticated connections (default 1024); beyond it, accepting waits, so new
    /// clients queue in the kernel's listen backlog.
    pub max_connections: usize,
    /// Connections from one IP address at once, in handshake or open (default 256); a new
    /// one beyond it is closed at once, before its handshake.
    pub max_connections_per_address: usize,
    /// Handshakes in progress from one IP address (default 32); a new connection beyond it
    /// is closed at once, so silent sockets from one address cannot take all the
    /// `max_handshakes` slots.
    pub max_handshakes_per_address: usize,
    /// Open connections per client certificate (default 64); a new one beyond it is closed
    /// right after its handshake, so one certificate (registered or not) cannot take all
    /// the `max_connections` slots.
    pub max_connections_per_certificate: usize,
}

impl Default for AcceptLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            max_handshakes: 256,
            max_connections: 1024,
            max_connections_per_address: 256,
            max_handshakes_per_address: 32,
            max_connections_per_certificate: 64,
        }
    }
}

/// Counts per key (an IP address, a certificate fingerprint) with a cap.
struct Tally<K> {
    counts: Mutex<HashMap<K, usize>>,
}

impl<K: Hash + Eq + Clone> Tally<K> {
    fn new() -> Arc<Self> {
        Arc::new(Tally {
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// One more for `key` unless it has `max` already; released when the guard drops.
    fn acquire(self: &Arc<Self>, key: K, max: usize) -> Option<TallyGuard<K>> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(key.clone()).or_default();
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(TallyGuard {
            tally: Arc::clone(self),
            key,
        })
    }
}

/// One counted item of a [`Tally`]; counted down on drop.
struct TallyGuard<K: Hash + Eq> {
    tally: Arc<Tally<K>>,
    key: K,
}

impl<K: Hash + Eq> Drop for TallyGuard<K> {
    fn drop(&mut self) {
        let mut counts = self
            .tally
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

/// One accepted, authenticated connection: implements tokio AsyncRead + AsyncWrite (delegating to the
/// `tokio_rustls::server::TlsStream<TcpStream>`) and tonic's `tonic::transport::server::Connected`
/// with `type ConnectInfo = PeerInfo`, so that tonic puts the PeerInfo into every request's extensions.
/// It holds a connection permit (semaphore) released on drop, enforcing max_connections.
pub struct TlsConn {
    stream: TlsStream<TcpStream>,
    peer: PeerInfo,
    /// The [`TlsAcceptorHandle`] generation whose config ran the handshake.
    generation: u64,
    /// One of `AcceptLimits::max_connections` permits, held for the connection's lifetime and
    /// released on drop, so the accept loop stops accepting while the server is full.
    _permit: OwnedSemaphorePermit,
    /// Counts this connection against its IP address's cap.
    _address: TallyGuard<IpAddr>,
    /// Counts this connection against its certificate's cap.
    _certificate: TallyGuard<String>,
}

impl std::fmt::Debug for TlsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConn")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl TlsConn {
    /// The client's identity as verified at the handshake.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The client's certificate chain as presented at the handshake (end entity first).
    pub fn peer_chain(&self) -> &[CertificateDer<'static>] {
        self.stream.get_ref().1.peer_certificates().unwrap_or(&[])
    }

    /// The generation of the acceptor's material that ran the handshake.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The negotiated TLS protocol version.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.stream.get_ref().1.protocol_version()
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.peer.clone()
    }
}

/// Spawns the accept loop: accepts TCP, runs each TLS handshake in its own task under the timeout and the
/// handshake cap (a slow client never stalls accepting), and yields authenticated connections. A failed
/// handshake is logged at debug/info with the remote address and reason and never ends the loop; transient
/// accept errors (EMFILE etc.) back off (50ms..1s) and continue. The stream ends when `shutdown`
/// becomes `true` or its sender is dropped (keep the sender alive while serving), or when the
/// stream is dropped; handshakes in progress are then abandoned. Errors are logged here, so the
/// stream currently never yields `Err`.
/// The result is passed to tonic's `Server::serve_with_incoming_shutdown`.
///
/// Must be called within a tokio runtime.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptorHandle,
    limits: AcceptLimits,
    shutdown: watch::Receiver<bool>,
) -> impl tokio_stream::Stream<Item = Result<TlsConn, io::Error>> + Send + 'static {
    let (tx, rx) = mpsc::channel(limits.max_handshakes.max(1));
    tokio::spawn(accept_loop(listener, acceptor, limits, shutdown, tx));
    ReceiverStream::new(rx)
}

/// Resolves once shutdown is requested: the value is `true` or the sender is gone.
async fn stop_requested(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped: nobody can ask us to keep going.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Errors that concern one connection only and are retried at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptorHandle,
    limits: AcceptLimits,
    mut shutdown: watch::Receiver<bool>,
    tx: mpsc::Sender<Result<TlsConn, io::Error>>,
) {
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let handshake_slots = Arc::new(Semaphore::new(limits.max_handshakes.max(1)));
    let per_address = Tally::<IpAddr>::new();
    let handshakes_per_address = Tally::<IpAddr>::new();
    let per_certificate = Tally::<String>::new();
    // Owns the handshake tasks, so that ending the loop aborts them (and their senders).
    let mut handshakes: JoinSet<()> = JoinSet::new();
    let mut backoff = ACCEPT_BACKOFF_MIN;

    let local = listener.local_addr().ok();
    tracing::debug!(?local, "accepting TLS connections");

    loop {
        // Wait for room for one more connection and one more handshake, then for a client;
        // reaping finished handshake tasks meanwhile.
        let accepted = tokio::select! {
            biased;
            () = stop_requested(&mut shutdown) => break,
            () = tx.closed() => break,
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => continue,
            accepted = async {
                let conn_permit = connections.clone().acquire_owned().await;
                let hs_permit = handshake_slots.clone().acquire_owned().await;
                let accepted = listener.accept().await;
                (conn_permit, hs_permit, accepted)
            } => accepted,
        };
        let (Ok(conn_permit), Ok(hs_permit), accepted) = accepted else {
            // The semaphores are never closed.
            break;
        };
        let (tcp, remote_addr) = match accepted {
            Ok(accepted) => {
                backoff = ACCEPT_BACKOFF_MIN;
                accepted
            }
            Err(e) if is_connection_error(&e) => {
                tracing::debug!(error = %e, "accept failed for one connection");
                continue;
            }
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    backoff_ms = backoff.as_millis() as u64,
                    "accept failed; backing off"
                );
                tokio::select! {
                    () = stop_requested(&mut shutdown) => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let ip = remote_addr.ip();
        let guards = per_address
            .acquire(ip, limits.max_connections_per_address)
            .and_then(|conn| {
                let hs = handshakes_per_address.acquire(ip, limits.max_handshakes_per_address)?;
                Some((conn, hs))
            });
        let Some((address_guard, hs_address_guard)) = guards else {
            acceptor.outcomes.limited.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%remote_addr, "connection closed: too many from this address");
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);

        let (config, generation) = acceptor.current_with_generation();
        let outcomes = Arc::clone(&acceptor.outcomes);
        let timeout = limits.handshake_timeout;
        let max_per_certificate = limits.max_connections_per_certificate;
        let per_certificate = Arc::clone(&per_certificate);
        let tx = tx.clone();
        handshakes.spawn(async move {
            let result = tokio::time::timeout(timeout, handshake(config, tcp, remote_addr)).await;
            drop(hs_permit);
            drop(hs_address_guard);
            let counter = match &result {
                Ok(Ok(_)) => &outcomes.ok,
                Ok(Err(HandshakeError::Rejected(_))) => &outcomes.rejected,
                Ok(Err(HandshakeError::Io(_))) => &outcomes.failed,
                Err(_) => &outcomes.timed_out,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(Ok((stream, peer))) => {
                    let Some(certificate_guard) =
                        per_certificate.acquire(peer.fingerprint.clone(), max_per_certificate)
                    else {
                        outcomes.limited.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(
                            remote_addr = %peer.remote_addr,
                            fingerprint = %peer.fingerprint,
                            "connection closed: too many open with this certificate"
                        );
                        return;
                    };
                    tracing::debug!(
                        remote_addr = %peer.remote_addr,
                        subject = %peer.subject,
                        fingerprint = %peer.fingerprint,
                        "TLS handshake done"
                    );
                    let conn = TlsConn {
                        stream,
                        peer,
                        generation,
                        _permit: conn_permit,
                        _address: address_guard,
                        _certificate: certificate_guard,
                    };
                    // Fails only if the server stopped listening; the connection is dropped.
                    let _ = tx.send(Ok(conn)).await;
                }
                Ok(Err(HandshakeError::Rejected(reason))) => {
                    tracing::info!(%remote_addr, %reason, "TLS handshake rejected");
                }
                Ok(Err(HandshakeError::Io(e))) => {
                    tracing::debug!(%remote_addr, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    tracing::debug!(
                        %remote_addr,
                        timeout_ms = timeout.as_millis() as u64,
                        "TLS handshake timed out"
                    );
                }
            }
        });
    }
    tracing::debug!(?local, "stopped accepting TLS connections");
}

enum HandshakeError {
    /// The client's certificate (or lack of one) was refused: worth an info log.
    Rejected(String),
    /// The connection failed otherwise (reset, EOF, not TLS): debug.
    Io(io::Error),
}

async fn handshake(
    config: Arc<ServerConfig>,
    tcp: TcpStream,
    remote_addr: SocketAddr,
) -> Result<(TlsStream<TcpStream>, PeerInfo), HandshakeError> {
    let stream = tokio_rustls::TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(|e| {
            match e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(
                    tls @ (rustls::Error::InvalidCertificate(_)
                    | rustls::Error::NoCertificatesPresented),
                ) => HandshakeError::Rejected(tls.to_string()),
                _ => HandshakeError::Io(e),
            }
        })?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|certs| certs.first())
        .ok_or_else(|| HandshakeError::Rejected("no client certificate".to_owned()))?;
    let info = describe(leaf.as_ref())
        .map_err(|e| HandshakeError::Rejected(format!("client certificate: {e}")))?;
    let peer = PeerInfo {
        remote_addr,
        fingerprint: info.fingerprint,
        subject: info.subject,
        not_after: info.not_after,
        cert_der: Arc::from(leaf.as_ref()),
    };
    Ok((stream, peer))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_stream::{Stream, StreamExt};

    use super::*;
    use crate::tls::dev::{ClientCertOptions, TestCa};
    use crate::tls::{fingerprint, server_config, ServerTlsFiles};

    const WAIT: Duration = Duration::from_secs(10);

    /// A CA, the server's files signed by it, in a temp dir.
    struct Pki {
        dir: tempfile::TempDir,
        ca: TestCa,
        files: ServerTlsFiles,
    }

    fn write(dir: &Path, name: &str, contents: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn pki() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new("Acceptor test CA").unwrap();
        let (cert, key) = ca.server_cert().unwrap();
        let files = ServerTlsFiles {
            cert: write(dir.path(), "server.pem", &cert),
            key: write(dir.path(), "server.key", &key),
            client_ca: write(dir.path(), "ca.pem", &ca.cert_pem()),
            crls: vec![],
            crl_expired: crate::tls::CrlExpiredPolicy::Warn,
        };
        Pki { dir, ca, files }
    }

    type Incoming = Pin<Box<dyn Stream<Item = Result<TlsConn, io::Error>> + Send>>;

    /// Binds 127.0.0.1:0 and starts `incoming`; keep the sender to keep serving.
    async fn start(
        config: Arc<ServerConfig>,
        limits: AcceptLimits,
    ) -> (SocketAddr, Incoming, TlsAcceptorHandle, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = TlsAcceptorHandle::new(config);
        let (stop, shutdown) = watch::channel(false);
        let stream = incoming(listener, handle.clone(), limits, shutdown);
        (addr, Box::pin(stream), handle, stop)
    }

    fn client_config(
        root_pem: &str,
        client: Option<&(String, String)>,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(root_pem.as_bytes()).unwrap())
            .unwrap();
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots);
        let mut config = match client {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    fn client_for(pki: &Pki, client: Option<&(String, String)>) -> Arc<ClientConfig> {
        client_config(&pki.ca.cert_pem(), client, rustls::DEFAULT_VERSIONS)
    }

    async fn connect(
        addr: SocketAddr,
        config: Arc<ClientConfig>,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
    }

    /// True if the server refused the client: the handshake fails, or (TLS 1.3, where the
    /// client finishes first) the first read brings the server's alert or EOF.
    async fn rejected(addr: SocketAddr, config: Arc<ClientConfig>) -> bool {
        let Ok(mut tls) = connect(addr, config).await else {
            return true;
        };
        let mut buf = [0u8; 1];
        match tokio::time::timeout(WAIT, tls.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_) => panic!("server neither rejected nor answered"),
        }
    }

    async fn next_conn(incoming: &mut Incoming) -> TlsConn {
        tokio::time::timeout(WAIT, incoming.next())
            .await
            .expect("no connection yielded in time")
            .expect("incoming ended")
            .expect("incoming yielded an error")
    }

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    }

    #[tokio::test]
    async fn valid_client_is_yielded_with_its_identity_over_tls12_and_tls13() {
        let pki = pki();
        let (addr, mut incoming, _handle, _stop) =
            start(server_config(&pki.files).unwrap(), AcceptLimits::default()).await;
        let client = pki
            .ca
            .client_cert("supplier-a", &ClientCertOptions::default())
            .unwrap();
        for (version, expected) in [
            (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
            (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
        ] {
            let config = client_config(&pki.ca.cert_pem(), Some(&client), &[version]);
            let mut tls = connect(addr, config).await.unwrap();
            assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
            let mut conn = next_conn(&mut incoming).await;
            assert_eq!(conn.protocol_version(), Some(expected));
            let peer = conn.peer().clone();
            assert_eq!(peer.fingerprint, fingerprint(&der(&client.0)));
            assert!(peer.subject.contains("CN=supplier-a"), "{}", peer.subject);
            assert_eq!(peer.remote_addr, tls.get_ref().0.local_addr().unwrap());
            assert_eq!(
                tonic::transport::server::Connected::connect_info(&conn).fingerprint,
                peer.fingerprint
            );
            // Data flows both ways through the TlsConn.
            tls.write_all(b"ping").await.unwrap();
            tls.flush().await.unwrap();
            let mut buf = [0u8; 4];
            conn.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"ping");
            conn.write_all(b"pong").await.unwrap();
            conn.flush().await.unwrap();
            tls.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"pong");
        }
    }

    #[tokio::test]
    async fn missing_or_foreign_client_cert_is_rejected_and_the_loop_keeps_serving() {
        let pki = pki();
        let (addr, mut incoming, _handle, _stop) =
            start(server_config(&pki.files).unwrap(), AcceptLimits::default()).await;
        let good = pki
            .ca
            .client_cert("supplier-a", &ClientCertOptions::default())
            .unwrap();
        // Same CN and organisation, other CA.
        let impostor_ca = TestCa::new("Acceptor test CA").unwrap();
        let impostor = impostor_ca
            .client_cert("supplier-a", &ClientCertOptions::default())
            .unwrap();
        let expired = pki
            .ca
            .client_cert(
                "supplier-a",
                &ClientCertOptions {
                    not_before: Some(std::time::SystemTime::now() - WAIT * 1000),
                    not_after: Some(std::time::SystemTime::now() - WAIT),
                    ..Default::default()
                },
            )
            .unwrap();

        for versions in [&[&rustls::version::TLS13], &[&rustls::version::TLS12]] {
            let root = pki.ca.cert_pem();
            assert!(rejected(addr, client_config(&root, None, versions)).await);
            assert!(rejected(addr, client_config(&root, Some(&impostor), versions)).await);
            assert!(rejected(addr, client_config(&root, Some(&expired), versions)).await);
        }
        // Not TLS at all.
        let mut raw = TcpStream::connect(addr).await.unwrap();
        raw.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut buf)).await;

        // The next connection yielded is the good client's: nothing was yielded for the others.
        let _tls = connect(addr, client_for(&pki, Some(&good))).await.unwrap();
        let conn = next_conn(&mut incoming).await;
        assert_eq!(conn.peer().fingerprint, fingerprint(&der(&good.0)));
    }

    #[tokio::test]
    async fn a_silent_client_is_cut_off_after_the_handshake_timeout_while_others_are_served() {
        let pki = pki();
        let limits = AcceptLimits {
            handshake_timeout: Duration::from_millis(300),
            ..AcceptLimits::default()
        };
        let (addr, mut incoming, _handle, _stop) =
            start(server_config(&pki.files).unwrap(), limits).await;
        let good = pki
            .ca
            .client_cert("supplier-b", &ClientCertOptions::default())
            .unwrap();

        let started = Instant::now();
        let mut silent = TcpStream::connect(addr).await.unwrap();
        let _tls = connect(addr, client_for(&pki, Some(&good))).await.unwrap();
        let conn = next_conn(&mut incoming).await;
        assert_eq!(conn.peer().fingerprint, fingerprint(&der(&good.0)));

        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(WAIT, silent.read(&mut buf))
            .await
            .expect("silent client was not cut off");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn a_crl_revoking_the_client_serial_fails_the_handshake() {
        let mut pki = pki();
        let revoked = pki
            .ca
            .client_cert(
                "supplier-a",
                &ClientCertOptions {
                    serial: Some(4242),
                    ..Default::default()
                },
            )
            .unwrap();
        let fine = pki
            .ca
            .client_cert(
                "supplier-b",
                &ClientCertOptions {
                    serial: Some(4243),
                    ..Default::default()
                },
            )
            .unwrap();
        let crl = pki.ca.crl_pem(&[4242]).unwrap();
        pki.files.crls = vec![write(pki.dir.path(), "crl.pem", &crl)];
        let (addr, mut incoming, _handle, _stop) =
            start(server_config(&pki.files).unwrap(), AcceptLimits::default()).await;

        assert!(rejected(addr, client_for(&pki, Some(&revoked))).await);
        let _tls = connect(addr, client_for(&pki, Some(&fine))).await.unwrap();
        let conn = next_conn(&mut incoming).await;
        assert_eq!(conn.peer().fingerprint, fingerprint(&der(&fine.0)));
    }

    #[tokio::test]
    async fn an_rsa_client_cert_is_accepted() {
        let pki = pki();
        let (addr, mut incoming, _handle, _stop) =
            start(server_config(&pki.files).unwrap(), AcceptLimits::default()).await;
        let rsa = pki
            .ca
            .client_cert(
                "supplier-rsa",
                &ClientCertOptions {
                    rsa: true,
                    ..Default::default()
                },
            )
            .unwrap();
        for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
            let config = client_config(&pki.ca.cert_pem(), Some(&rsa), &[version]);
            let _tls = connect(addr, config).await.unwrap();
            let conn = next_conn(&mut incoming).await;
            assert_eq!(conn.peer().fingerprint, fingerprint(&der(&rsa.0)));
        }
    }

    #[tokio::test]
    async fn swap_applies_to_new_handshakes_and_open_connections_survive() {
        let old = pki();
        let new = pki();
        let (addr, mut incoming, handle, _stop) =
            start(server_config(&old.files).unwrap(), AcceptLimits::default()).await;
        let old_client = old
            .ca
            .client_cert("supplier-a", &ClientCertOptions::default())
            .unwrap();
        let new_client = new
            .ca
            .client_cert("supplier-a", &ClientCertOptions::default())
            .unwrap();

        let mut open = connect(addr, client_for(&old, Some(&old_client)))
            .await
            .unwrap();
        let mut open_conn = next_conn(&mut incoming).await;

        let new_config = server_config(&new.files).unwrap();
        handle.swap(new_config.clone());
        assert!(Arc::ptr_eq(&handle.current(), &new_config));

        assert!(rejected(addr, client_for(&old, Some(&old_client))).await);
        let _tls = connect(addr, client_for(&new, Some(&new_client)))
            .await
            .unwrap();
        let conn = next_conn(&mut incoming).await;
        assert_eq!(conn.peer().fingerprint, fingerprint(&der(&new_client.0)));

        // The connection opened under the old config still works.
        open.write_all(b"still here").await.unwrap();
        open.flush().await.unwrap();
        let mut buf = [0u8; 10];
        open_conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
    }

    #[tokio::test]
    async fn max_connections_holds_back_new_clients_until_one_closes() {
        let pki = pki();
        let limits = AcceptLimits {
            max_connections: 1,
            ..AcceptLimits::default()
        };
        let (addr, mut incoming, _handle, _stop) =
            start(server_config(&pki.files).unwrap(), limits).await;
        let client = pki
            .ca
            .client_cert("supplier-a", &ClientCertOptions::default())
            .unwrap();

        let _first = connect(addr, client_for(&pki, Some(&client)))
            .await
            .unwrap();
        let first_conn = next_conn(&mut incoming).await;

        let second = tokio::spawn(connect(addr, client_for(&pki, Some(&client))));
        // While full, the second client is not even accepted.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), incoming.next())
                .await
                .is_err()
        );
        drop(first_conn);
        let _second_conn = next_conn(&mut incoming).await;
        second.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn per_certificate_and_per_address_caps_close_the_excess_at_once() {
        let pki = pki();
        let limits = AcceptLimits {
            max_connections_per_certificate: 1,
            max_handshakes_per_address: 1,
            ..AcceptLimits::default()
        };
        let (addr, mut incoming, handle, _stop) =
            start(server_config(&pki.files).unwrap(), limits).await;
        let client = pki
            .ca
            .client_cert("supplier-a", &ClientCertOptions::default())
            .unwrap();
        let other = pki
            .ca
            .client_cert("supplier-b", &ClientCertOptions::default())
            .unwrap();

        // One connection per certificate: the second of the same certificate is closed
        // right after its handshake; another certificate still gets in.
        let _first = connect(addr, client_for(&pki, Some(&client)))
            .await
            .unwrap();
        let first_conn = next_conn(&mut incoming).await;
        assert!(rejected(addr, client_for(&pki, Some(&client))).await);
        let _other = connect(addr, client_for(&pki, Some(&other))).await.unwrap();
        assert_eq!(
            next_conn(&mut incoming).await.peer().fingerprint,
            fingerprint(&der(&other.0))
        );
        assert_eq!(handle.handshake_counts().limited, 1);
        // Closing the first frees its certificate's slot.
        drop(first_conn);
        let _again = connect(addr, client_for(&pki, Some(&client)))
            .await
            .unwrap();
        assert_eq!(
            next_conn(&mut incoming).await.peer().fingerprint,
            fingerprint(&der(&client.0))
        );

        // One handshake at a time per address: while a silent socket holds it, the next
        // socket from 127.0.0.1 is closed at once, not after the handshake timeout.
        let _silent = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let mut second = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(WAIT, second.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(handle.handshake_counts().limited, 2);
    }

    #[tokio::test]
    async fn the_stream_ends_on_shutdown() {
        let pki = pki();
        let (_addr, mut incoming, _handle, stop) =
            start(server_config(&pki.files).unwrap(), AcceptLimits::default()).await;
        stop.send(true).unwrap();
        let end = tokio::time::timeout(WAIT, incoming.next()).await.unwrap();
        assert!(end.is_none());

        // Dropping the sender stops it too.
        let (_addr, mut incoming, _handle, stop) =
            start(server_config(&pki.files).unwrap(), AcceptLimits::default()).await;
        drop(stop);
        let end = tokio::time::timeout(WAIT, incoming.next()).await.unwrap();
        assert!(end.is_none());
    }

    /// Answers every call with PERMISSION_DENIED carrying the caller's fingerprint, read from
    /// the `PeerInfo` tonic put in the request's extensions.
    struct EchoPeer;

    #[tonic::async_trait]
    impl crate::proto::registry_server::Registry for EchoPeer {
        async fn pull(
            &self,
            request: tonic::Request<crate::proto::PullRequest>,
        ) -> Result<tonic::Response<crate::proto::PullResponse>, tonic::Status> {
            let peer = request
                .extensions()
                .get::<PeerInfo>()
                .ok_or_else(|| tonic::Status::internal("no PeerInfo"))?;
            Err(tonic::Status::permission_denied(peer.fingerprint.clone()))
        }

        async fn ack(
            &self,
            _: tonic::Request<crate::proto::AckRequest>,
        ) -> Result<tonic::Response<crate::proto::AckResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }

        async fn release(
            &self,
            _: tonic::Request<crate::proto::ReleaseRequest>,
        ) -> Result<tonic::Response<crate::proto::ReleaseResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("test"))
        }
    }

    #[tokio::test]
    async fn tonic_serves_the_stream_and_puts_peer_info_in_request_extensions() {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server};

        let pki = pki();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, shutdown) = watch::channel(false);
        let conns = incoming(
            listener,
            TlsAcceptorHandle::new(server_config(&pki.files).unwrap()),
            AcceptLimits::default(),
            shutdown.clone(),
        );
        let mut signal = shutdown;
        let server = tokio::spawn(
            Server::builder()
                .add_service(crate::proto::registry_server::RegistryServer::new(EchoPeer))
                .serve_with_incoming_shutdown(conns, async move {
                    let _ = signal.wait_for(|stop| *stop).await;
                }),
        );

        let (cert, key) = pki
            .ca
            .client_cert("registry", &ClientCertOptions::default())
            .unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pki.ca.cert_pem()))
            .identity(Identity::from_pem(&cert, &key))
            .domain_name("localhost");
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let status = crate::proto::registry_client::RegistryClient::new(channel)
            .pull(crate::proto::PullRequest::default())
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), fingerprint(&der(&cert)));

        stop.send(true).unwrap();
        tokio::time::timeout(WAIT, server)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}
