//! The real `schakel serve` binary as a child process, for tests that kill,
//! pause and restart it or read its logs. The PKI is generated fresh.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use schakel::client::ClientFiles;
use schakel::tls::dev::{ClientCertOptions, TestCa};

/// A gateway process and the files it was started with.
pub struct ChildGateway {
    pub dir: tempfile::TempDir,
    pub addr: SocketAddr,
    /// The operations HTTP port (metrics, status page).
    pub http_addr: SocketAddr,
    pub log: PathBuf,
    child: Mutex<Option<Child>>,
    env: Vec<(String, String)>,
}

/// Suppliers the child gateway knows, besides `registry` and `admin`.
pub const SUPPLIERS: &[&str] = &["supplier-a", "supplier-b", "supplier-c"];

impl ChildGateway {
    /// Writes a PKI and config into a temp dir and starts the gateway.
    pub fn start(env: &[(&str, &str)]) -> ChildGateway {
        Self::start_with(env, &[])
    }

    /// [`ChildGateway::start`] with extra config lines, each `(section, line)`
    /// with section `""` (top level), `"tls"`, `"limits"` or `"ops"`.
    ///
    /// Both ports are bound by the gateway on 127.0.0.1:0 (no port is picked
    /// and freed by the test, which another process could take meanwhile); the
    /// gateway writes what it bound to `--ports-file`. The config is then
    /// pinned to those ports, so a restart after a kill serves on the same
    /// address, as a restarted production gateway does.
    pub fn start_with(env: &[(&str, &str)], extra: &[(&str, &str)]) -> ChildGateway {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = TestCa::new("Schakel process-test CA").expect("CA");
        let w =
            |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
        w("ca.pem", &ca.cert_pem());
        let (cert, key) = ca.server_cert().expect("server cert");
        w("server.pem", &cert);
        w("server.key", &key);
        let lines = |section: &str| {
            extra
                .iter()
                .filter(|(s, _)| *s == section)
                .map(|(_, l)| format!("{l}\n"))
                .collect::<String>()
        };
        let d = dir.path().display();
        let mut config = format!(
            "{}data_dir = \"{d}/data\"\n\n[tls]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server.key\"\nclient_ca = \"{d}/ca.pem\"\n{}\n[limits]\nshutdown_grace_secs = 2\n{}\n[ops]\n{}\n",
            lines(""),
            lines("tls"),
            lines("limits"),
            lines("ops"),
        );
        for s in SUPPLIERS {
            config.push_str(&format!("[[suppliers]]\nid = \"{s}\"\nname = \"{s}\"\n\n"));
        }
        for name in SUPPLIERS.iter().chain(&["registry", "admin"]) {
            let (cert, key) = ca
                .client_cert(name, &ClientCertOptions::default())
                .expect("client cert");
            w(&format!("{name}.pem"), &cert);
            w(&format!("{name}.key"), &key);
            let (role, supplier) = match *name {
                "registry" => ("registry", String::new()),
                "admin" => ("admin", String::new()),
                s => ("supplier", format!("supplier_id = \"{s}\"\n")),
            };
            config.push_str(&format!(
                "[[identities]]\nrole = \"{role}\"\nname = \"{name}\"\ncert = \"{d}/{name}.pem\"\n{supplier}\n"
            ));
        }
        // `listen` and `http_listen` go first in their sections (top level, [ops]).
        let pinned = |grpc: &str, http: &str| {
            format!("listen = \"{grpc}\"\n{config}").replacen(
                "[ops]\n",
                &format!("[ops]\nhttp_listen = \"{http}\"\n"),
                1,
            )
        };
        w("schakel.toml", &pinned("127.0.0.1:0", "127.0.0.1:0"));
        let mut gateway = ChildGateway {
            log: dir.path().join("gateway.log"),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            child: Mutex::new(None),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        gateway.spawn();
        let (grpc, http) = gateway.bound_ports();
        gateway.addr = grpc;
        gateway.http_addr = http;
        std::fs::write(
            gateway.dir.path().join("schakel.toml"),
            pinned(&grpc.to_string(), &http.to_string()),
        )
        .expect("write");
        gateway
    }

    fn ports_file(&self) -> PathBuf {
        self.dir.path().join("ports")
    }

    /// Waits until the process has bound its ports and written them (the
    /// file is written by a rename, so it is never half there), or has exited.
    fn bound_ports(&self) -> (SocketAddr, SocketAddr) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(self.ports_file()) {
                let addr = |key: &str| -> SocketAddr {
                    text.lines()
                        .find_map(|l| l.strip_prefix(key))
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_else(|| panic!("no {key} in the ports file: {text:?}"))
                };
                return (addr("grpc="), addr("http="));
            }
            if let Some(status) = self
                .lock()
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "schakel serve exited with {status} before binding; log:\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "schakel serve did not bind its ports within 60 s"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts the process (again), appending to the log.
    pub fn spawn(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_schakel"))
            .arg("serve")
            .arg("--config")
            .arg(self.dir.path().join("schakel.toml"))
            .arg("--ports-file")
            .arg(self.ports_file())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn schakel serve");
        *self.lock() = Some(child);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn pid(&self) -> u32 {
        self.lock().as_ref().map(Child::id).expect("running")
    }

    /// SIGKILL, then reap.
    pub fn kill(&self) {
        if let Some(mut child) = self.lock().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP or SIGCONT.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// SIGTERM, and wait for the graceful exit.
    pub fn terminate(&self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.terminate_wait()
    }

    /// Waits for the process to exit (after a SIGTERM sent earlier).
    pub fn terminate_wait(&self) -> std::process::ExitStatus {
        let mut child = self.lock().take().expect("running");
        child.wait().expect("wait")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn files(&self, name: &str) -> ClientFiles {
        let d = self.dir.path();
        ClientFiles {
            ca: d.join("ca.pem"),
            identity: Some((d.join(format!("{name}.pem")), d.join(format!("{name}.key")))),
            domain: "localhost".into(),
        }
    }

    /// Connects with a per-call timeout, retrying for up to `within` while the
    /// gateway starts.
    pub async fn channel(&self, name: &str, within: Duration) -> tonic::transport::Channel {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let endpoint = schakel::client::endpoint(&self.url(), &self.files(name))
                .expect("endpoint")
                .timeout(Duration::from_secs(2))
                .connect_timeout(Duration::from_secs(1));
            match endpoint.connect().await {
                Ok(channel) => return channel,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("gateway did not come up: {e}"),
            }
        }
    }
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Every file below `dir`.
pub fn read_all_below(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    super::files_below(dir)
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|b| (p, b)))
        .collect()
}

/// GET `path` on a plain-HTTP address; the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    tcp.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut body = String::new();
    tcp.read_to_string(&mut body).await.expect("read");
    body
}
