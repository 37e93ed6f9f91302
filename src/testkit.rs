//! A real gateway for tests and the benchmark: started on 127.0.0.1:0 with a
//! freshly generated PKI and a real sled store in a temp dir, plus real mTLS
//! gRPC clients and generators of valid records.
//!
//! Used by `tests/` and by `schakel bench`; never by the serving path.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::client::{connect, ClientFiles};
use crate::config::{Config, SeedIdentity, SeedSupplier};
use crate::proto::intake_client::IntakeClient;
use crate::proto::operations_client::OperationsClient;
use crate::proto::registry_client::RegistryClient;
use crate::proto::*;
use crate::store::Role;
use crate::tls::dev::{ClientCertOptions, TestCa};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

/// The client identities every test server knows.
pub const SUPPLIER_A: &str = "supplier-a";
pub const SUPPLIER_B: &str = "supplier-b";
pub const REGISTRY: &str = "registry";
pub const ADMIN: &str = "admin";
/// Signed by the right CA but not registered.
pub const STRANGER: &str = "stranger";

/// A running gateway; stopped when dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    /// The operations HTTP port (metrics, status page), bound on 127.0.0.1:0
    /// unless the config turns it off (`ops.http_listen = None`).
    pub http_addr: Option<SocketAddr>,
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub ca: TestCa,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<Result<(), crate::server::ServerError>>>,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("writing test PKI");
}

impl TestServer {
    /// A gateway with the default limits.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// A gateway whose config `tweak` may change before it starts.
    pub async fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).expect("mkdir certs");
        let ca = TestCa::new("Schakel test CA").expect("test CA");
        write(&certs.join("ca.pem"), &ca.cert_pem());
        let (cert, key) = ca.server_cert().expect("server cert");
        write(&certs.join("server.pem"), &cert);
        write(&certs.join("server.key"), &key);
        for name in [SUPPLIER_A, SUPPLIER_B, REGISTRY, ADMIN, STRANGER] {
            let (cert, key) = ca
                .client_cert(name, &ClientCertOptions::default())
                .expect("client cert");
            write(&certs.join(format!("{name}.pem")), &cert);
            write(&certs.join(format!("{name}.key")), &key);
        }
        let mut config = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        config.tls.cert = certs.join("server.pem");
        config.tls.key = certs.join("server.key");
        config.tls.client_ca = certs.join("ca.pem");
        config.suppliers = [SUPPLIER_A, SUPPLIER_B]
            .iter()
            .map(|id| SeedSupplier {
                id: (*id).into(),
                name: format!("{id} (test)"),
                contact: String::new(),
                ura: None,
                identity_policy: Default::default(),
            })
            .collect();
        let identity = |role, name: &str, supplier: bool| SeedIdentity {
            role,
            cert: certs.join(format!("{name}.pem")),
            name: name.into(),
            supplier_id: supplier.then(|| name.to_owned()),
        };
        config.identities = vec![
            identity(Role::Supplier, SUPPLIER_A, true),
            identity(Role::Supplier, SUPPLIER_B, true),
            identity(Role::Registry, REGISTRY, false),
            identity(Role::Admin, ADMIN, false),
        ];
        config.limits.shutdown_grace_secs = 5;
        // Never a fixed port, also for a test that passes this config to
        // `server::run` (the defaults 7443/9464 may be taken on the machine).
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.ops.http_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        tweak(&mut config);
        let mut server = TestServer {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: None,
            dir,
            config,
            ca,
            shutdown: None,
            handle: None,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        self.addr = listener.local_addr().expect("local addr");
        let http = match self.config.ops.http_listen {
            Some(_) => Some(TcpListener::bind("127.0.0.1:0").await.expect("bind http")),
            None => None,
        };
        self.http_addr = http.as_ref().map(|l| l.local_addr().expect("http addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let config = self.config.clone();
        self.handle = Some(tokio::spawn(async move {
            let result = crate::server::run_with_http(config, listener, http, async {
                let _ = rx.await;
            })
            .await;
            if let Err(e) = &result {
                // A test that then fails to connect shows why in its output.
                eprintln!("test gateway stopped with an error: {e}");
            }
            result
        }));
        self.shutdown = Some(tx);
    }

    /// Stops the server and waits until it has released the store.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task").expect("server run");
        }
    }

    /// Stops and starts again on the same data folder and certificates.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn().await;
    }

    pub fn certs(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// Client files of one of the harness identities.
    pub fn files(&self, name: &str) -> ClientFiles {
        let certs = self.certs();
        ClientFiles {
            ca: certs.join("ca.pem"),
            identity: Some((
                certs.join(format!("{name}.pem")),
                certs.join(format!("{name}.key")),
            )),
            domain: "localhost".into(),
        }
    }

    pub async fn channel(&self, name: &str) -> Channel {
        connect(&self.url(), &self.files(name))
            .await
            .expect("connect")
    }

    pub async fn intake(&self, name: &str) -> IntakeClient<Channel> {
        IntakeClient::new(self.channel(name).await)
    }

    pub async fn registry(&self) -> RegistryClient<Channel> {
        RegistryClient::new(self.channel(REGISTRY).await)
    }

    pub async fn operations(&self) -> OperationsClient<Channel> {
        OperationsClient::new(self.channel(ADMIN).await)
    }

    /// `GET path` on the operations HTTP port: (status code, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.http_addr.expect("the HTTP port is off");
        let mut conn = tokio::net::TcpStream::connect(addr)
            .await
            .expect("connect http");
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.expect("send");
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await.expect("read");
        let text = String::from_utf8(raw).expect("utf-8 response");
        let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status code");
        (status, body.to_owned())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A valid record with consent.
pub fn record(message_id: &str) -> VaccinationRecord {
    VaccinationRecord {
        message_id: message_id.into(),
        action: Action::Register as i32,
        refers_to: String::new(),
        consent: Consent::Given as i32,
        patient: Some(Patient {
            bsn: "249566758".into(),
            given_names: "Jan".into(),
            infix: "van der".into(),
            family_name: "Berg".into(),
            birth_date: "1950-04-12".into(),
        }),
        anonymous: None,
        vaccination: Some(Vaccination {
            hpk_code: "2924528".into(),
            eu_product_number: "EU/1/20/1528".into(),
            date: "2021-03-04".into(),
            dose_number: 1,
            total_doses: 2,
            lot_number: "EW2243".into(),
            country: "NL".into(),
        }),
        performer: Some(Performer {
            organization_id: "01234567".into(),
            id_type: OrganizationIdType::Agb as i32,
            r#type: PerformerType::Gp as i32,
        }),
        is_test: false,
    }
}

/// A valid record without consent: only the anonymised minimum.
pub fn anonymous_record(message_id: &str) -> VaccinationRecord {
    VaccinationRecord {
        consent: Consent::NotGiven as i32,
        patient: None,
        anonymous: Some(AnonymousSubject {
            age_band: AgeBand::Age65AndOver as i32,
        }),
        ..record(message_id)
    }
}

/// A batch with a correct header.
pub fn batch(batch_id: &str, records: Vec<VaccinationRecord>) -> Batch {
    Batch {
        header: Some(BatchHeader {
            batch_id: batch_id.into(),
            source_system: "TestHIS 1.0".into(),
            created_at: "2021-03-04T18:00:00Z".into(),
            record_count: records.len() as u32,
            file_name: String::new(),
        }),
        records,
    }
}

pub fn pull_request(max: u32, wait_ms: u32, lease_ms: u32) -> PullRequest {
    PullRequest {
        max_records: max,
        wait_ms,
        lease_ms,
    }
}

/// The status and its whole source chain as text: a refused TLS handshake
/// shows only deep in it, as the alert the server sent.
pub fn chain(status: &tonic::Status) -> String {
    let mut text = format!("{status:?}");
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        text.push_str(&format!(" <- {e}"));
        source = e.source();
    }
    text
}

/// The stable error code of a failed call.
pub fn code_of(status: &tonic::Status) -> &str {
    crate::error::error_code(status).unwrap_or("<none>")
}

/// Every file below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
