//! `schakel pull`: the registry's minimal consumer. Pulls (long-poll), writes
//! each delivered record as one JSON line to stdout, flushes, and only then
//! acknowledges. Without `--follow` it stops when the queue is empty.

use std::io::Write;

use clap::Args;

use super::ConnectArgs;
use crate::proto::registry_client::RegistryClient;
use crate::proto::{AckRequest, PullRequest};

/// `schakel pull`.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// Records per pull.
    #[arg(long, default_value_t = 500)]
    pub max: u32,
    /// Long-poll wait per pull, in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub wait_ms: u32,
    /// Lease per pulled record, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub lease_ms: u32,
    /// Keep pulling until Ctrl-C.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

pub(super) async fn pull(args: PullArgs) -> anyhow::Result<()> {
    let files = args.connect.files("registry");
    let channel = crate::client::connect(&args.connect.server, &files).await?;
    let mut client = RegistryClient::new(channel).max_decoding_message_size(256 * 1024 * 1024);
    let mut total = 0u64;
    loop {
        let request = PullRequest {
            max_records: args.max,
            wait_ms: args.wait_ms,
            lease_ms: args.lease_ms,
        };
        let pulled = tokio::select! {
            r = client.pull(request) => r?.into_inner(),
            _ = tokio::signal::ctrl_c() => break,
        };
        if pulled.records.is_empty() {
            if args.follow {
                continue;
            }
            break;
        }
        let mut out = std::io::stdout().lock();
        let mut tokens = Vec::with_capacity(pulled.records.len());
        for record in pulled.records {
            serde_json::to_writer(&mut out, &record)?;
            out.write_all(b"\n")?;
            tokens.push(record.lease_token);
        }
        out.flush()?;
        drop(out);
        let n = tokens.len();
        let acked = client
            .ack(AckRequest {
                lease_tokens: tokens,
            })
            .await?
            .into_inner();
        let ok = acked
            .results
            .iter()
            .filter(|r| r.outcome == crate::proto::TokenOutcome::Acked as i32)
            .count();
        total += n as u64;
        eprintln!("pulled {n}, acked {ok}");
    }
    eprintln!("done: {total} records");
    Ok(())
}
