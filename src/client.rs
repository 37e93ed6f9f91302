//! Client side of the mutual-TLS gRPC connection, for the CLI (`push`, `pull`)
//! and the tests: builds a tonic `Channel` that presents a client certificate
//! and trusts the gateway's CA.
//!
//! ```no_run
//! # async fn demo() -> Result<(), schakel::client::ClientError> {
//! use schakel::client::{connect, ClientFiles};
//! let files = ClientFiles::dev("supplier-a");
//! let channel = connect("https://localhost:7443", &files).await?;
//! let mut intake = schakel::proto::intake_client::IntakeClient::new(channel);
//! # Ok(()) }
//! ```

use std::path::PathBuf;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::config::DEV_CERTS;

/// The PEM files a client uses.
#[derive(Debug, Clone)]
pub struct ClientFiles {
    /// CA bundle the gateway's certificate must chain to.
    pub ca: PathBuf,
    /// Client certificate (PEM) and its key; `None` connects without one
    /// (which the gateway refuses: useful in tests).
    pub identity: Option<(PathBuf, PathBuf)>,
    /// Server name to verify in the gateway's certificate.
    pub domain: String,
}

impl ClientFiles {
    /// The development files of `role` in `certs-dev/` (`supplier-a`,
    /// `supplier-b`, `registry`, `admin`).
    pub fn dev(role: &str) -> ClientFiles {
        let dir = PathBuf::from(DEV_CERTS);
        ClientFiles {
            ca: dir.join("ca.pem"),
            identity: Some((
                dir.join(format!("{role}.pem")),
                dir.join(format!("{role}.key")),
            )),
            domain: "localhost".into(),
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A PEM file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The endpoint or TLS settings are invalid, or the connection failed.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        /// Where to.
        endpoint: String,
        /// Why.
        source: tonic::transport::Error,
    },
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        path: path.clone(),
        source,
    })
}

/// Builds the endpoint (not yet connected).
///
/// # Errors
/// A file cannot be read or the endpoint is not a valid URL.
pub fn endpoint(url: &str, files: &ClientFiles) -> Result<Endpoint, ClientError> {
    let connect_err = |source| ClientError::Connect {
        endpoint: url.to_owned(),
        source,
    };
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&files.ca)?))
        .domain_name(files.domain.clone());
    if let Some((cert, key)) = &files.identity {
        tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
    }
    Endpoint::from_shared(url.to_owned())
        .map_err(connect_err)?
        .tls_config(tls)
        .map_err(connect_err)
}

/// Connects to the gateway at `url` (`https://host:port`).
///
/// # Errors
/// A file cannot be read, or the TCP/TLS connection fails (a refused client
/// certificate may only show on the first call: TLS 1.3 reports it late).
pub async fn connect(url: &str, files: &ClientFiles) -> Result<Channel, ClientError> {
    endpoint(url, files)?
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            endpoint: url.to_owned(),
            source,
        })
}
