//! The `schakel` command line: `serve` runs the gateway; `push` and `pull` are
//! the minimal supplier and registry clients; `certs dev` writes the
//! development PKI; `check-config` validates a config without serving.
//!
//! `anyhow` is used here and in `main` only: this is where errors end up as
//! text for a person.

pub mod admin;
mod bench;
mod files;
mod ops;
mod pull;
mod push;
mod serve;
pub mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::client::ClientFiles;
use crate::config::{Config, DEV_CERTS};

/// Schakel: a mutual-TLS gRPC gateway for vaccination records.
#[derive(Debug, Parser)]
#[command(name = "schakel", version, about)]
pub struct Cli {
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    pub log_json: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (embedded development defaults without --config).
    Serve(ServeArgs),
    /// Validate a config file and its certificates without serving.
    CheckConfig(ConfigArgs),
    /// Push a JSON batch or an NDJSON file of records as a supplier.
    Push(push::PushArgs),
    /// Pull queued records as the registry, print them as JSON lines, ack them.
    Pull(pull::PullArgs),
    /// Certificate tools.
    #[command(subcommand)]
    Certs(CertsCommand),
    /// Administration over mTLS with an admin certificate: suppliers,
    /// certificates, audit log, TLS reload.
    Admin(admin::AdminArgs),
    /// Check export files offline (no server): same rules, same error report.
    Validate(validate::ValidateArgs),
    /// Operations (admin): supplier deliveries, dead letters.
    Ops(ops::OpsArgs),
    /// Measure the gateway: ingest, latency, drain, CPU, memory, disk, baselines.
    Bench(bench::BenchArgs),
    /// A baseline sink for `bench` (internal).
    #[command(hide = true)]
    BenchSink(bench::SinkArgs),
}

/// Which config to use.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    /// TOML config file; without it the embedded development defaults apply.
    #[arg(long, short, env = "SCHAKEL_CONFIG")]
    pub config: Option<PathBuf>,
}

/// `schakel serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Override the gRPC listen address.
    #[arg(long)]
    pub listen: Option<std::net::SocketAddr>,
    /// Override the data folder.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Once the ports are bound, write their addresses to this file
    /// (`grpc=ADDR` and `http=ADDR` lines), so a script or test can use
    /// port 0 (`--listen 127.0.0.1:0`) and read the port the kernel chose.
    #[arg(long)]
    pub ports_file: Option<PathBuf>,
}

/// `schakel certs ...`.
#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// (Re)generate the development PKI: CA, server, supplier-a, supplier-b,
    /// registry, admin. FOR DEVELOPMENT ONLY.
    Dev {
        /// Where to write the files.
        #[arg(long, default_value = DEV_CERTS)]
        dir: PathBuf,
        /// Instead write UZI-shaped TEST certificates (test OIDs, TEST-ONLY):
        /// a test UZI server CA (`uzi-ca.pem`) and server certificates (card
        /// type S, URA 90000001) with an RSA 4096 and an ECDSA key.
        #[arg(long)]
        uzi: bool,
    },
}

/// How a client reaches the gateway. Each setting comes from its flag, else
/// its environment variable, else the client config file (`--client-config`),
/// else the development default.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Gateway address [default: https://localhost:7443].
    #[arg(long, env = "SCHAKEL_SERVER")]
    pub server: Option<String>,
    /// CA bundle the gateway's certificate must chain to.
    #[arg(long, env = "SCHAKEL_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, requires = "key", env = "SCHAKEL_CERT")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, requires = "cert", env = "SCHAKEL_KEY")]
    pub key: Option<PathBuf>,
    /// Name to verify in the gateway's certificate [default: localhost].
    #[arg(long, env = "SCHAKEL_DOMAIN")]
    pub domain: Option<String>,
    /// TOML file with `server`, `ca`, `cert`, `key` and `domain` (paths relative
    /// to the file); flags and environment variables win over it.
    #[arg(long, env = "SCHAKEL_CLIENT_CONFIG")]
    pub client_config: Option<PathBuf>,
}

/// The client config file (`--client-config`): every key optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientConfig {
    server: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    domain: Option<String>,
}

impl ClientConfig {
    /// Reads `path`; relative paths in it are relative to its folder.
    fn read(path: &std::path::Path) -> anyhow::Result<ClientConfig> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the client config {}: {e}", path.display()))?;
        let mut config: ClientConfig = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("the client config {}: {e}", path.display()))?;
        if config.cert.is_some() != config.key.is_some() {
            anyhow::bail!(
                "the client config {} names a cert without a key or a key without a cert",
                path.display()
            );
        }
        let dir = path.parent().unwrap_or(std::path::Path::new(""));
        for p in [&mut config.ca, &mut config.cert, &mut config.key]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        Ok(config)
    }
}

impl ConnectArgs {
    /// The gateway address and the files to use: flags and environment, then
    /// the client config file, then the development files of `dev_role`.
    ///
    /// # Errors
    /// The client config file cannot be read or is not valid.
    pub fn resolve(&self, dev_role: &str) -> anyhow::Result<(String, ClientFiles)> {
        let file = match &self.client_config {
            Some(path) => ClientConfig::read(path)?,
            None => ClientConfig::default(),
        };
        let dev = ClientFiles::dev(dev_role);
        let identity = match (&self.cert, &self.key, file.cert, file.key) {
            (Some(c), Some(k), _, _) => Some((c.clone(), k.clone())),
            (_, _, Some(c), Some(k)) => Some((c, k)),
            _ => dev.identity,
        };
        let files = ClientFiles {
            ca: self.ca.clone().or(file.ca).unwrap_or(dev.ca),
            identity,
            domain: self
                .domain
                .clone()
                .or(file.domain)
                .unwrap_or_else(|| "localhost".into()),
        };
        let server = self
            .server
            .clone()
            .or(file.server)
            .unwrap_or_else(|| "https://localhost:7443".into());
        Ok((server, files))
    }
}

/// Runs a parsed command line; the exit code follows the command's contract.
pub fn run(cli: Cli) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve::serve(args).await.map(|()| ExitCode::SUCCESS),
            Command::CheckConfig(args) => check_config(&args).map(|()| ExitCode::SUCCESS),
            Command::Push(args) => push::push(args).await,
            Command::Pull(args) => pull::pull(args).await.map(|()| ExitCode::SUCCESS),
            Command::Ops(args) => ops::ops(args).await,
            Command::Certs(CertsCommand::Dev { dir, uzi: true }) => {
                crate::uzi::dev::write_dev_uzi(&dir)?;
                println!(
                    "wrote UZI TEST certificates to {} (TEST-ONLY: test CA, test OIDs): \
                     uzi-ca.pem, uzi-server-rsa.pem/.key (RSA 4096), uzi-server-ecdsa.pem/.key; \
                     add uzi-ca.pem to tls.client_ca, set tls.uzi_server_ca to it, and register \
                     the supplier with --ura {}",
                    dir.display(),
                    crate::uzi::dev::DEV_URA_A
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Certs(CertsCommand::Dev { dir, uzi: false }) => {
                crate::tls::dev::write_dev_pki(&dir)?;
                println!(
                    "wrote the development PKI to {} (FOR DEVELOPMENT ONLY)",
                    dir.display()
                );
                Ok(ExitCode::SUCCESS)
            }
            Command::Admin(args) => admin::admin(args).await.map(|()| ExitCode::SUCCESS),
            Command::Validate(args) => validate::validate(&args),
            Command::Bench(args) => bench::bench(args).await,
            Command::BenchSink(args) => bench::sink(args).await,
        }
    });
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        ExitCode::FAILURE
    })
}

fn check_config(args: &ConfigArgs) -> anyhow::Result<()> {
    let config = Config::load(args.config.as_deref())?;
    config.validate()?;
    let files = crate::tls::ServerTlsFiles {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        client_ca: config.tls.client_ca.clone(),
        crls: config.tls.crls.clone(),
        crl_expired: config.tls.crl_expired,
    };
    crate::tls::server_config(&files)?;
    if let Some(ca) = &config.tls.uzi_server_ca {
        crate::uzi::policy::UziTrust::from_pem_file(ca)?;
    }
    println!("config OK");
    Ok(())
}
