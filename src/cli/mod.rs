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
    },
}

/// How a client reaches the gateway.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Gateway address.
    #[arg(long, default_value = "https://localhost:7443", env = "SCHAKEL_SERVER")]
    pub server: String,
    /// CA bundle the gateway's certificate must chain to.
    #[arg(long, env = "SCHAKEL_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long, requires = "key", env = "SCHAKEL_CERT")]
    pub cert: Option<PathBuf>,
    /// Client key (PEM).
    #[arg(long, requires = "cert", env = "SCHAKEL_KEY")]
    pub key: Option<PathBuf>,
    /// Name to verify in the gateway's certificate.
    #[arg(long, default_value = "localhost", env = "SCHAKEL_DOMAIN")]
    pub domain: String,
}

impl ConnectArgs {
    /// The files to use: the given ones, else the dev files of `dev_role`.
    pub fn files(&self, dev_role: &str) -> ClientFiles {
        let dev = ClientFiles::dev(dev_role);
        ClientFiles {
            ca: self.ca.clone().unwrap_or(dev.ca),
            identity: match (&self.cert, &self.key) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                _ => dev.identity,
            },
            domain: self.domain.clone(),
        }
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
            Command::Certs(CertsCommand::Dev { dir }) => {
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
    };
    crate::tls::server_config(&files)?;
    println!("config OK");
    Ok(())
}
