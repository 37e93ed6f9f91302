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
//! Must not: decide who may call (it mirrors the interceptor's rules), or block
//! the accept path. Called by `server::run` (wraps the incoming stream, starts
//! the sweeper).

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::store::{lock, Role, Store};
use crate::tls::{PeerInfo, TlsConn};

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

struct Entry {
    fingerprint: String,
    closer: Arc<Closer>,
}

#[derive(Default)]
struct Inner {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
}

/// The registry of open connections; cheap to clone.
#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Connections {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connections")
            .field("open", &lock(&self.inner.open).len())
            .finish()
    }
}

impl Connections {
    /// An empty registry.
    pub fn new() -> Connections {
        Connections::default()
    }

    /// Registers an accepted connection; it unregisters itself when dropped.
    pub fn track(&self, conn: TlsConn) -> TrackedConn {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let closer = Arc::new(Closer::default());
        lock(&self.inner.open).insert(
            id,
            Entry {
                fingerprint: conn.peer().fingerprint.clone(),
                closer: Arc::clone(&closer),
            },
        );
        TrackedConn {
            conn,
            closer,
            id,
            registry: Arc::clone(&self.inner),
        }
    }

    /// Open connections now.
    pub fn len(&self) -> usize {
        lock(&self.inner.open).len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every open connection of a certificate; returns how many.
    pub fn close(&self, fingerprint: &str) -> usize {
        let open = lock(&self.inner.open);
        let mut n = 0;
        for entry in open.values().filter(|e| e.fingerprint == fingerprint) {
            entry.closer.close();
            n += 1;
        }
        n
    }

    fn fingerprints(&self) -> Vec<String> {
        let mut fps: Vec<String> = lock(&self.inner.open)
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
        lock(&self.registry.open).remove(&self.id);
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
