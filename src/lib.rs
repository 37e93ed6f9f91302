//! Schakel: an LSP-style message gateway for vaccination records.
//!
//! Healthcare software suppliers push daily batches of vaccination records over
//! mutually authenticated gRPC; the gateway validates every record, deduplicates
//! by (supplier, message id), makes accepted records durable, and queues them
//! for the national registry, which pulls, and acknowledges them.
//!
//! The parts, in dependency order:
//! - [`proto`]: the generated wire types of `proto/schakel/v1`.
//! - [`codec`]: the protobuf codec; malformed input is INVALID_ARGUMENT.
//! - [`schema`]: record and batch validation; pure, no I/O.
//! - [`store`]: sled: dedup index, durable queue with leases, identities, audit.
//!   Knows no tonic types.
//! - [`tls`]: certificates to rustls configs, the TLS accept loop, peer identity,
//!   the development PKI.
//! - [`config`]: serde configuration and its validation.
//! - [`error`]: the one place where errors become `tonic::Status`.
//! - [`service`]: thin tonic adapters (intake, registry, admin, operations) and
//!   the auth interceptor.
//! - [`connections`]: open connections by certificate; closes revoked ones.
//! - [`reload`]: reloads the TLS material without a restart.
//! - [`ops`]: metrics, the status page, delivery monitoring, periodic checks.
//! - [`server`]: assembles the above and serves until shutdown.
//! - [`client`]: the client side of the mTLS channel.
//! - [`export`]: export files (CSV, NDJSON) read into records with line numbers;
//!   batches, the offline judgement and the error report. No I/O.
//! - [`fhir`]: a delivered record as a FHIR R4 Immunization. No I/O.
//! - [`cli`]: the `schakel` subcommands.
//! - [`testkit`]: a real gateway on a fresh PKI, for tests and the benchmark.
#![forbid(unsafe_code)]

pub mod bench;
pub mod cli;
pub mod client;
pub mod codec;
pub mod config;
pub mod connections;
pub mod error;
pub mod export;
pub mod fhir;
pub mod ops;
pub mod proto;
pub mod reload;
pub mod schema;
pub mod server;
pub mod service;
pub mod store;
pub mod testkit;
pub mod tls;
pub mod uzi;
