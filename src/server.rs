//! Assembles and runs the gateway: opens the store, registers the identities the
//! config seeds, builds the TLS acceptor and serves the gRPC services on an
//! already bound listener until a shutdown future resolves.
//!
//! `run` takes the listener and the shutdown future from its caller, so `main`
//! binds the configured port and waits for SIGTERM/SIGINT, while a test binds
//! 127.0.0.1:0 and stops the server with a oneshot.
//!
//! A store failure (a failed write or sync) is not recovered in-process: the
//! store latches failed, health turns NOT_SERVING, and the gateway stays up
//! refusing writes (UNAVAILABLE `STORE_FAILED`) while it serves health,
//! metrics and the status page, so on-call sees why; a restart of the process
//! recovers from what is on disk.

use std::future::Future;
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;

use crate::config::{Config, ConfigError};
use crate::connections::Connections;
use crate::proto::admin_server::AdminServer;
use crate::proto::intake_server::IntakeServer;
use crate::proto::operations_server::OperationsServer;
use crate::proto::registry_server::RegistryServer;
use crate::reload::Reloader;
use crate::service::admin::AdminService;
use crate::service::auth::{Access, Authorize, RefusalAudit, RefusalSettings};
use crate::service::intake::IntakeService;
use crate::service::limits::{DecodeBudget, DecodeLimitsLayer, Limiter, LimiterConfig};
use crate::service::operations::OperationsService;
use crate::service::registry::RegistryService;
use crate::store::{Identity, Role, Store, StoreError, StoreOptions, Supplier};
use crate::tls::{self, AcceptLimits, ServerTlsFiles, TlsAcceptorHandle, TlsError};

/// Why the gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS material could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The store could not be opened or written.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A seeded identity's certificate is unusable.
    #[error("registering identity {name:?} from {path}: {source}")]
    Seed {
        /// The identity's name.
        name: String,
        /// Its certificate file.
        path: String,
        /// Why.
        source: TlsError,
    },
    /// The gRPC transport failed.
    #[error("serving gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The operations HTTP port could not be bound.
    #[error("binding the operations HTTP port {addr}: {source}")]
    BindHttp {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Metrics or the reflection service could not be set up.
    #[error("setting up operations: {0}")]
    Ops(#[from] crate::ops::OpsError),
}

/// The limiter `config.limits` describes, shared by all services.
pub fn limiter(limits: &crate::config::Limits) -> Limiter {
    Limiter::new(LimiterConfig {
        max_in_flight_per_identity: limits.max_in_flight_per_identity,
        records_per_second: limits.supplier_records_per_second,
        burst_records: limits.supplier_burst_records,
    })
}

/// Opens the store of `config` with its tuning.
///
/// # Errors
/// The store cannot be opened (locked, unreadable, corrupt).
pub fn open_store(config: &Config) -> Result<Store, StoreError> {
    let options = StoreOptions {
        cache_capacity_bytes: config.store.cache_mb * 1024 * 1024,
        max_deliveries: config.limits.max_deliveries,
        redelivery_backoff: Duration::from_millis(config.limits.redelivery_backoff_ms),
        sync_faults: config.store.sync_faults.clone(),
        ..StoreOptions::default()
    };
    Store::open(&config.data_dir, options)
}

/// A newly registered, active identity for the certificate described by `info`.
pub fn new_identity(
    info: tls::CertInfo,
    role: Role,
    name: String,
    supplier_id: Option<String>,
    added_at: SystemTime,
) -> Identity {
    Identity {
        fingerprint: info.fingerprint,
        role,
        name,
        supplier_id,
        subject: info.subject,
        serial: info.serial,
        not_after: info.not_after,
        added_at,
        retire_at: None,
        revoked_at: None,
        origin: Default::default(),
    }
}

/// Registers the config's suppliers and identities that the store does not know
/// yet. Existing entries are left as they are: an admin may have suspended a
/// supplier or revoked a certificate since, and a restart must not undo that.
///
/// # Errors
/// A certificate file cannot be read or parsed, or the store fails.
pub fn seed(store: &Store, config: &Config) -> Result<(), ServerError> {
    let now = SystemTime::now();
    for s in &config.suppliers {
        if store.supplier(&s.id)?.is_none() {
            store.put_supplier(&Supplier {
                id: s.id.clone(),
                name: s.name.clone(),
                contact: s.contact.clone(),
                suspended: false,
                created_at: now,
                ura: s.ura.clone(),
                identity_policy: s.identity_policy,
            })?;
            tracing::info!(supplier = %s.id, "registered supplier from config");
        }
    }
    for seed in &config.identities {
        let describe = || -> Result<tls::CertInfo, TlsError> {
            let certs = tls::load_certs(&seed.cert)?;
            let first = certs.first().ok_or_else(|| TlsError::Invalid {
                action: "reading client certificate",
                path: seed.cert.clone(),
                reason: "no certificates found".into(),
            })?;
            tls::describe(first)
        };
        let info = describe().map_err(|source| ServerError::Seed {
            name: seed.name.clone(),
            path: seed.cert.display().to_string(),
            source,
        })?;
        if store.identity(&info.fingerprint)?.is_none() {
            let fingerprint = info.fingerprint.clone();
            let identity = new_identity(
                info,
                seed.role,
                seed.name.clone(),
                seed.supplier_id.clone(),
                now,
            );
            store.put_identity(&identity)?;
            tracing::info!(name = %seed.name, role = ?seed.role, %fingerprint, "registered identity from config");
        }
    }
    Ok(())
}

/// How often a serving gateway checks that its store still writes (a flush and
/// fsync), so a failing disk latches the store failed (and health NOT_SERVING)
/// even when no call writes.
const STORE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the gateway on `listener` until `shutdown` resolves, then stops
/// accepting, lets calls in flight finish within the grace period, and syncs the
/// store.
///
/// If the store fails while serving (a failed write or sync, e.g. a full disk
/// or a device error), it latches failed: submit, pull, ack, release and admin
/// writes answer UNAVAILABLE `STORE_FAILED`, health says NOT_SERVING, and the
/// gateway keeps serving health, metrics and the status page until it is
/// restarted; the restart recovers from what is on disk.
///
/// # Errors
/// Invalid config, unusable TLS material, a store that cannot be opened at
/// start, or a transport failure.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let http = match config.ops.http_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::BindHttp { addr, source })?,
        ),
        None => None,
    };
    run_with_http(config, listener, http, shutdown).await
}

/// [`run`] with the operations HTTP port (metrics, status page) on an already
/// bound `http` listener (`None`: no HTTP port), so a test can bind port 0.
///
/// # Errors
/// As [`run`].
pub async fn run_with_http(
    config: Config,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = shutdown_tx.send(true);
    });
    serve_once(&config, listener, http, shutdown_rx).await
}

/// Syncs the store every [`STORE_CHECK_INTERVAL`] until a sync fails (which
/// latches the store failed); returns then.
async fn check_store(store: Store) {
    loop {
        tokio::time::sleep(STORE_CHECK_INTERVAL).await;
        if store.sync().await.is_err() {
            return;
        }
    }
}

/// The refusal aggregation `config.audit` describes.
fn refusal_settings(config: &Config) -> RefusalSettings {
    RefusalSettings {
        interval: Duration::from_millis(config.audit.refusal_interval_ms.max(1)),
        max_keys: config.audit.refusal_max_keys,
    }
}

/// The reflection builder with every descriptor set the gateway serves.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Once the store has failed, health answers NOT_SERVING for the whole server
/// and for each service (a load balancer or liveness probe sees it).
async fn not_serving_when_failed(store: Store, health: tonic_health::server::HealthReporter) {
    store.failed().await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<IntakeServer<IntakeService>>()
        .await;
    health
        .set_not_serving::<RegistryServer<RegistryService>>()
        .await;
    health
        .set_not_serving::<OperationsServer<OperationsService>>()
        .await;
}

/// One life of the gateway on one opened store.
async fn serve_once(
    config: &Config,
    listener: TcpListener,
    http: Option<TcpListener>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ServerError> {
    let config = config.clone();
    let rules = config.rules()?;
    let store = open_store(&config)?;
    seed(&store, &config)?;
    let monitor = crate::ops::Monitor::new(store.clone(), crate::ops::OpsSettings::of(&config))?;
    let files = ServerTlsFiles {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        client_ca: config.tls.client_ca.clone(),
        crls: config.tls.crls.clone(),
        crl_expired: config.tls.crl_expired,
    };
    let acceptor = TlsAcceptorHandle::from_material(&tls::server_material(&files)?);
    monitor.watch_tls(acceptor.clone());
    // Audits and counts the connections a TLS reload closes.
    let connections = Connections::audited(store.clone(), acceptor.clone());
    let reloader = Reloader::new(files, acceptor.clone()).with_connections(connections.clone());
    let limits = &config.limits;
    let accept_limits = AcceptLimits {
        handshake_timeout: Duration::from_millis(limits.handshake_timeout_ms),
        max_handshakes: limits.max_handshakes,
        max_connections: limits.max_connections,
        max_connections_per_address: limits.max_connections_per_address,
        max_handshakes_per_address: limits.max_handshakes_per_address,
        max_connections_per_certificate: limits.max_connections_per_certificate,
    };
    let local = listener.local_addr().ok();
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracked = connections.clone();
    let incoming = tls::incoming(listener, acceptor, accept_limits, stop_rx.clone())
        .map(move |conn| conn.map(|c| tracked.track(c)));
    let sweeper = (config.tls.close_revoked_every_ms > 0).then(|| {
        let every = Duration::from_millis(config.tls.close_revoked_every_ms);
        connections.spawn_sweeper(store.clone(), every, stop_rx.clone())
    });
    let idle_reaper = (limits.idle_timeout_secs > 0).then(|| {
        connections.spawn_idle_reaper(
            Duration::from_secs(limits.idle_timeout_secs),
            stop_rx.clone(),
        )
    });
    let poll =
        (config.tls.reload_poll_ms > 0).then(|| Duration::from_millis(config.tls.reload_poll_ms));
    let reload_task = reloader.spawn(poll, stop_rx.clone());

    let max_bytes = limits.max_request_bytes;
    let limiter = limiter(limits);
    let intake = IntakeServer::new(
        IntakeService::new(store.clone(), rules)
            .with_monitor(monitor.clone())
            .with_limiter(limiter.clone()),
    )
    .max_decoding_message_size(max_bytes);
    let operations = OperationsServer::new(OperationsService::new(monitor.clone()));
    let refusals = RefusalAudit::new(store.clone(), refusal_settings(&config));
    let refusal_flusher = refusals.spawn_flusher(stop_rx.clone());
    let uzi = match &config.tls.uzi_server_ca {
        Some(path) => Some(std::sync::Arc::new(
            crate::uzi::policy::UziTrust::from_pem_file(path)?,
        )),
        None => None,
    };
    let authorize = |access, service| {
        Authorize::new(store.clone(), access, service, refusals.clone()).with_uzi(uzi.clone())
    };
    // Health and reflection answer registered, active identities of any role
    // (a certificate of our CA alone is not enough); load balancers and probes
    // use `/healthz` on the operations HTTP port instead.
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<IntakeServer<IntakeService>>()
        .await;
    health_reporter
        .set_serving::<RegistryServer<RegistryService>>()
        .await;
    health_reporter
        .set_serving::<OperationsServer<OperationsService>>()
        .await;
    // Both reflection versions, each listing both: grpcurl and the v1 clients
    // ask grpc.reflection.v1, grpcio-reflection, grpc_cli and most GUIs v1alpha.
    let reflection_v1 = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(crate::ops::OpsError::from)?;
    let reflection_v1alpha = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(crate::ops::OpsError::from)?;
    let registry = RegistryServer::new(
        RegistryService::new(store.clone(), limits.clone()).with_limiter(limiter.clone()),
    )
    .max_decoding_message_size(max_bytes)
    .max_encoding_message_size(max_bytes);
    // Every request's body to the gateway's own services is charged to one
    // gateway-wide decode budget, and the codec refuses an oversized batch
    // before decoding it (see `DecodeLimitsLayer`).
    let decode_limits = DecodeLimitsLayer::new(
        DecodeBudget::new(limits.decoding_budget()),
        crate::codec::DecodeLimits::of(limits),
    );
    let mut server = Server::builder()
        .concurrency_limit_per_connection(limits.max_concurrent_requests_per_connection)
        .max_concurrent_streams(limits.max_concurrent_streams_per_connection)
        .layer(decode_limits)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if limits.max_connection_age_secs > 0 {
        // A graceful GOAWAY: calls in flight finish, the client reconnects.
        server = server
            .max_connection_age(Duration::from_secs(limits.max_connection_age_secs))
            .max_connection_age_grace(Duration::from_secs(limits.max_connection_age_grace_secs));
    }
    let router = server
        .add_service(InterceptedService::new(
            intake,
            authorize(Access::Role(Role::Supplier), "Intake"),
        ))
        .add_service(InterceptedService::new(
            registry,
            authorize(Access::Role(Role::Registry), "Registry"),
        ))
        .add_service(InterceptedService::new(
            AdminServer::new(AdminService::new(store.clone(), reloader)),
            authorize(Access::Role(Role::Admin), "Admin"),
        ))
        .add_service(InterceptedService::new(
            operations,
            authorize(Access::Role(Role::Admin), "Operations"),
        ))
        .add_service(InterceptedService::new(
            health,
            authorize(Access::AnyRole, "Health"),
        ))
        .add_service(InterceptedService::new(
            reflection_v1,
            authorize(Access::AnyRole, "Reflection"),
        ))
        .add_service(InterceptedService::new(
            reflection_v1alpha,
            authorize(Access::AnyRole, "Reflection"),
        ));
    let mut ops_tasks = tokio::task::JoinSet::new();
    if let Some(http) = http {
        let (m, stop) = (monitor.clone(), stop_rx.clone());
        ops_tasks.spawn(async move {
            if let Err(e) = crate::ops::http::serve(http, m, stop).await {
                tracing::error!(error = %e, "operations HTTP port stopped");
            }
        });
    }
    ops_tasks.spawn(monitor.clone().run_checks(stop_rx.clone()));
    ops_tasks.spawn(check_store(store.clone()));
    ops_tasks.spawn(not_serving_when_failed(
        store.clone(),
        health_reporter.clone(),
    ));

    tracing::info!(addr = ?local, data_dir = %config.data_dir.display(), "serving gRPC over mutual TLS");
    let mut stopped = stop_rx;
    let serve = router.serve_with_incoming_shutdown(incoming, async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    });
    tokio::pin!(serve);
    let grace = Duration::from_secs(limits.shutdown_grace_secs);
    tokio::select! {
        result = &mut serve => result?,
        () = async {
            let _ = shutdown.wait_for(|stop| *stop).await;
            tracing::info!(grace_secs = grace.as_secs(), "shutting down: no new connections, draining calls");
            let _ = stop_tx.send(true);
            tokio::time::sleep(grace).await;
        } => {
            tracing::warn!("calls still in flight after the grace period: shutdown forced");
        }
    }
    let _ = stop_tx.send(true);
    reload_task.abort();
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    if let Some(reaper) = idle_reaper {
        reaper.abort();
    }
    health_reporter
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    ops_tasks.shutdown().await;
    // The calls have drained: write the counts of the last interval. The
    // flusher has seen `stop` and ends after a flush it may be in.
    if let Err(e) = refusal_flusher.await {
        tracing::error!(error = %e, "the refusal flusher failed");
    }
    if let Err(e) = refusals.flush_blocking().await {
        tracing::error!(error = %e, "flushing refused-call counts at shutdown");
    }
    if let Some(failure) = store.failure() {
        // Nothing more can be made durable; the next start recovers from
        // what is on disk.
        tracing::warn!(
            first_failure = %failure,
            "stopped with a failed store: nothing synced at shutdown; the next start recovers from disk"
        );
        return Ok(());
    }
    store.sync().await?;
    tracing::info!("stopped");
    Ok(())
}
