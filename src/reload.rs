//! The TLS reloader: rebuilds the server config (certificate and key, client CA
//! bundle, CRLs) from its files and swaps it into the acceptor, on SIGHUP, on the
//! admin `ReloadTls` call, and when one of the files changes (mtime polling).
//!
//! Material is validated as a whole by [`tls::server_config`] before the swap:
//! anything that does not parse, does not match its key or is expired is refused
//! with a clear error and the old config stays in force, so there is never a
//! moment without a valid configuration. Open connections keep their TLS
//! session, but after every successful reload each one's peer chain is
//! re-verified against the new CAs and CRLs and the failing ones are closed
//! ([`Connections::reverify`], before `reload` returns). The background task
//! also watches the CRLs in force: one passing its nextUpdate is logged (WARN)
//! and, with `tls.crl_expired = "refuse"`, the open connections are re-verified.
//!
//! Must not: decide who may call (the admin service does), or touch the store
//! itself (the connection registry audits its closings). Called by
//! `server::run` (creates it and starts [`Reloader::spawn`]) and the admin
//! service.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::connections::Connections;
use crate::store::lock;
use crate::tls::{self, CertInfo, CrlInfo, ServerTlsFiles, TlsAcceptorHandle, TlsError};

/// How often the CRLs in force are checked for a passed nextUpdate.
const CRL_EXPIRY_CHECK: Duration = Duration::from_secs(30);

/// What a successful reload put in force.
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// The server certificate now presented.
    pub server: CertInfo,
    /// Certificates in the client CA bundle.
    pub client_cas: usize,
    /// CRLs in force.
    pub crls: usize,
    /// The CRLs in force, summarised.
    pub crl_infos: Vec<CrlInfo>,
    /// Open connections closed because their chain no longer verifies.
    pub closed_connections: usize,
}

/// Modification stamp of one file: (mtime, length); `None` when unreadable.
type Stamp = Option<(SystemTime, u64)>;

/// Cheap, cloneable handle on the reloader.
#[derive(Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

struct Inner {
    files: ServerTlsFiles,
    handle: TlsAcceptorHandle,
    /// Open connections to re-verify after a reload (none in unit tests).
    connections: std::sync::OnceLock<Connections>,
    /// The stamps of the files at the last reload attempt, so the poller only
    /// reloads on a change (and does not retry broken material every round).
    seen: Mutex<Vec<Stamp>>,
    /// Serialises reloads: two concurrent reloads must not swap out of order.
    reloading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("files", &self.inner.files)
            .finish_non_exhaustive()
    }
}

fn paths(files: &ServerTlsFiles) -> Vec<PathBuf> {
    let mut out = vec![
        files.cert.clone(),
        files.key.clone(),
        files.client_ca.clone(),
    ];
    out.extend(files.crls.iter().cloned());
    out
}

fn stamps(files: &ServerTlsFiles) -> Vec<Stamp> {
    paths(files)
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn build(files: &ServerTlsFiles) -> Result<tls::TlsMaterial, TlsError> {
    tls::server_material(files)
}

impl Reloader {
    /// A reloader for `files` swapping into `handle` (which already serves the
    /// config built from them).
    pub fn new(files: ServerTlsFiles, handle: TlsAcceptorHandle) -> Reloader {
        let seen = Mutex::new(stamps(&files));
        Reloader {
            inner: Arc::new(Inner {
                files,
                handle,
                connections: std::sync::OnceLock::new(),
                seen,
                reloading: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Re-verify the open connections of `connections` after every successful
    /// reload (all clones share it; the first registry given wins).
    #[must_use]
    pub fn with_connections(self, connections: Connections) -> Reloader {
        let _ = self.inner.connections.set(connections);
        self
    }

    /// The files the reloader reads.
    pub fn files(&self) -> &ServerTlsFiles {
        &self.inner.files
    }

    /// Rebuilds the config from the files and swaps it in. `trigger` names the
    /// cause in the log ("sighup", "admin", "file change").
    ///
    /// # Errors
    /// The material does not load (see [`tls::server_config`]); the old config
    /// stays in force.
    pub async fn reload(&self, trigger: &'static str) -> Result<ReloadReport, TlsError> {
        let _one = self.inner.reloading.lock().await;
        let files = self.inner.files.clone();
        let built = tokio::task::spawn_blocking(move || {
            let stamps = stamps(&files);
            (build(&files), stamps)
        })
        .await;
        let (result, new_stamps) = match built {
            Ok(done) => done,
            Err(e) => {
                return Err(TlsError::Config {
                    reason: format!("reload task failed: {e}"),
                })
            }
        };
        *lock(&self.inner.seen) = new_stamps;
        match result {
            Ok(material) => {
                self.inner.handle.install(&material);
                let closed = self.reverify(trigger).await;
                let report = ReloadReport {
                    server: material.server,
                    client_cas: material.client_cas,
                    crls: material.crls.len(),
                    crl_infos: material.crls,
                    closed_connections: closed,
                };
                tracing::info!(
                    trigger,
                    server_fingerprint = %report.server.fingerprint,
                    client_cas = report.client_cas,
                    crls = report.crls,
                    closed_connections = report.closed_connections,
                    "TLS material reloaded"
                );
                Ok(report)
            }
            Err(e) => {
                tracing::error!(trigger, error = %e, "TLS reload refused; the previous material stays in force");
                Err(e)
            }
        }
    }

    /// Re-verifies the open connections with the material in force; returns how
    /// many were closed.
    async fn reverify(&self, trigger: &'static str) -> usize {
        let Some(connections) = self.inner.connections.get().cloned() else {
            return 0;
        };
        let handle = self.inner.handle.clone();
        tokio::task::spawn_blocking(move || connections.reverify(&handle, trigger).len())
            .await
            .unwrap_or_else(|e| {
                tracing::error!(error = %e, "re-verifying open connections failed");
                0
            })
    }

    /// Warns about CRLs that passed their nextUpdate since the last check
    /// (`warned` holds those already reported); with `tls.crl_expired =
    /// "refuse"` re-verifies the open connections when one did.
    async fn check_crl_expiry(&self, warned: &mut Vec<CrlInfo>) {
        let now = SystemTime::now();
        let expired: Vec<CrlInfo> = self
            .inner
            .handle
            .crls()
            .iter()
            .filter(|c| c.expired_at(now))
            .cloned()
            .collect();
        let newly: Vec<&CrlInfo> = expired.iter().filter(|c| !warned.contains(c)).collect();
        for crl in &newly {
            tracing::warn!(
                file = %crl.file.display(),
                issuer = %crl.issuer,
                next_update = %tls::format_time(crl.next_update),
                policy = ?self.inner.files.crl_expired,
                "CRL is past its nextUpdate: publish a fresh one"
            );
        }
        let any_new = !newly.is_empty();
        *warned = expired;
        if any_new && self.inner.files.crl_expired == tls::CrlExpiredPolicy::Refuse {
            self.reverify("crl expired").await;
        }
    }

    /// Whether a file changed since the last reload attempt.
    fn changed(&self) -> bool {
        stamps(&self.inner.files) != *lock(&self.inner.seen)
    }

    /// Starts the background task: reloads on SIGHUP (Unix) and, with `poll`,
    /// when a file's mtime or size changes. Ends when `stop` turns true. Must be
    /// called within a tokio runtime.
    pub fn spawn(&self, poll: Option<Duration>, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
        let this = self.clone();
        // Registered before the task starts, so a SIGHUP that arrives once the
        // server answers calls reloads rather than ending the process.
        #[cfg(unix)]
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reload via the admin call or file changes");
                None
            }
        };
        tokio::spawn(async move {
            let mut tick = poll.map(tokio::time::interval);
            let mut crl_tick = tokio::time::interval(CRL_EXPIRY_CHECK);
            crl_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // Expired CRLs are warned about at load already.
            let now = SystemTime::now();
            let mut warned: Vec<CrlInfo> = this
                .inner
                .handle
                .crls()
                .iter()
                .filter(|c| c.expired_at(now))
                .cloned()
                .collect();
            loop {
                #[cfg(unix)]
                let sighup = async {
                    match hangup.as_mut() {
                        Some(s) => s.recv().await,
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let sighup = std::future::pending::<Option<()>>();
                let polled = async {
                    match tick.as_mut() {
                        Some(t) => t.tick().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = async { let _ = stop.wait_for(|s| *s).await; } => break,
                    _ = crl_tick.tick() => this.check_crl_expiry(&mut warned).await,
                    _ = sighup => {
                        let _ = this.reload("sighup").await;
                    }
                    _ = polled => {
                        let this2 = this.clone();
                        let changed = tokio::task::spawn_blocking(move || this2.changed())
                            .await
                            .unwrap_or(false);
                        if changed {
                            let _ = this.reload("file change").await;
                        }
                    }
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::dev::TestCa;

    fn setup(dir: &std::path::Path) -> (TestCa, ServerTlsFiles) {
        let ca = TestCa::new("reload CA").unwrap();
        let (cert, key) = ca.server_cert().unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        std::fs::write(dir.join("server.pem"), cert).unwrap();
        std::fs::write(dir.join("server.key"), key).unwrap();
        let files = ServerTlsFiles {
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
            client_ca: dir.join("ca.pem"),
            crls: Vec::new(),
            crl_expired: tls::CrlExpiredPolicy::Warn,
        };
        (ca, files)
    }

    #[tokio::test]
    async fn broken_material_keeps_the_old_config_and_good_material_replaces_it() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, files) = setup(dir.path());
        let handle = TlsAcceptorHandle::new(tls::server_config(&files).unwrap());
        let reloader = Reloader::new(files.clone(), handle.clone());
        assert!(!reloader.changed());
        let before = handle.current();

        std::fs::write(&files.key, "garbage").unwrap();
        assert!(reloader.changed());
        let err = reloader.reload("test").await.unwrap_err();
        assert!(err.to_string().contains("server.key"), "{err}");
        assert!(Arc::ptr_eq(&before, &handle.current()));
        // The failed attempt is remembered: the poller does not retry it.
        assert!(!reloader.changed());

        let (cert, key) = ca.server_cert().unwrap();
        std::fs::write(&files.cert, &cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        let report = reloader.reload("test").await.unwrap();
        assert!(!Arc::ptr_eq(&before, &handle.current()));
        let expected = tls::describe(tls::load_certs(&files.cert).unwrap()[0].as_ref()).unwrap();
        assert_eq!(report.server.fingerprint, expected.fingerprint);
        assert_eq!((report.client_cas, report.crls), (1, 0));
    }
}
