//! The benchmark's baselines: a minimal tonic `Intake` over the same mutual TLS
//! as the gateway (`tls::server_config` + `tls::incoming`), with no validation,
//! no dedup and no store. `null` answers at once (the wire limit); `fsync`
//! appends each batch's encoded bytes to one file and fdatasyncs before
//! answering (the durability limit).
//!
//! Run as a child process by `schakel bench` (`schakel bench-sink`); never part
//! of the serving path. Logs nothing about records.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::proto::intake_server::{Intake, IntakeServer};
use crate::proto::{Batch, BatchReceipt};
use crate::tls::{self, AcceptLimits, ServerTlsFiles, TlsAcceptorHandle};

use super::BenchError;

/// What the sink does with a batch before answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkMode {
    /// Answer at once.
    Null,
    /// Append the batch to a file and fdatasync, then answer.
    Fsync,
}

struct Sink {
    file: Option<Arc<Mutex<std::fs::File>>>,
}

#[tonic::async_trait]
impl Intake for Sink {
    async fn submit_batch(
        &self,
        request: Request<Batch>,
    ) -> Result<Response<BatchReceipt>, Status> {
        let batch = request.into_inner();
        let count = batch.records.len() as u32;
        if let Some(file) = &self.file {
            let file = Arc::clone(file);
            let bytes = batch.encode_to_vec();
            tokio::task::spawn_blocking(move || {
                let mut f = crate::store::lock(&file);
                f.write_all(&bytes)?;
                f.sync_data()
            })
            .await
            .map_err(|e| Status::internal(format!("sink task: {e}")))?
            .map_err(|e| Status::unavailable(format!("sink write: {e}")))?;
        }
        let header = batch.header.unwrap_or_default();
        Ok(Response::new(BatchReceipt {
            batch_id: header.batch_id.clone(),
            header: Some(header),
            accepted: count,
            ..Default::default()
        }))
    }
}

/// Serves the sink on the config's `listen` address with its TLS files until
/// the process is killed; the fsync file is `data_dir/sink.bin`.
///
/// # Errors
/// The config or TLS material is unusable, the port cannot be bound, or the
/// transport fails.
pub async fn serve(mode: SinkMode, config: PathBuf) -> Result<(), BenchError> {
    let config = Config::load(Some(&config)).map_err(|e| BenchError::Setup(e.to_string()))?;
    let files = ServerTlsFiles {
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
        client_ca: config.tls.client_ca.clone(),
        crls: config.tls.crls.clone(),
        crl_expired: config.tls.crl_expired,
    };
    let server_config = tls::server_config(&files).map_err(|e| BenchError::Setup(e.to_string()))?;
    let file = match mode {
        SinkMode::Null => None,
        SinkMode::Fsync => {
            std::fs::create_dir_all(&config.data_dir)?;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(config.data_dir.join("sink.bin"))?;
            Some(Arc::new(Mutex::new(f)))
        }
    };
    let listener = TcpListener::bind(config.listen).await?;
    let limits = AcceptLimits {
        handshake_timeout: Duration::from_millis(config.limits.handshake_timeout_ms),
        max_handshakes: config.limits.max_handshakes,
        max_connections: config.limits.max_connections,
        ..AcceptLimits::default()
    };
    let (_stop_tx, stop_rx) = watch::channel(false);
    let incoming = tls::incoming(
        listener,
        TlsAcceptorHandle::new(server_config),
        limits,
        stop_rx,
    );
    tonic::transport::Server::builder()
        .add_service(
            IntakeServer::new(Sink { file })
                .max_decoding_message_size(config.limits.max_request_bytes),
        )
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| BenchError::Setup(format!("serving the sink: {e}")))
}
