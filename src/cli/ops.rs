//! `schakel ops ...`: the service desk's commands over the Operations service
//! (role admin): `deliveries` (per supplier: last batch, today's tallies,
//! overdue) and `dead-letters list|requeue SEQ|discard SEQ`.
//!
//! Prints ids and counts only. `anyhow` here: errors end up as text.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::ConnectArgs;
use crate::proto::operations_client::OperationsClient;
use crate::proto::{DeadLetterRequest, ListDeadLettersRequest, ListDeliveriesRequest};

/// `schakel ops`.
#[derive(Debug, Args)]
pub struct OpsArgs {
    #[command(subcommand)]
    pub command: OpsCommand,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// The `ops` subcommands.
#[derive(Debug, Subcommand)]
pub enum OpsCommand {
    /// Every supplier's delivery status; exit 2 when one is overdue.
    Deliveries {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Records delivered too often without an ack.
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
}

/// `schakel ops dead-letters ...`.
#[derive(Debug, Subcommand)]
pub enum DeadLetterCommand {
    /// List the dead letters, lowest sequence first.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Put a dead letter back into the queue (attempts start again).
    Requeue {
        /// Its sequence.
        sequence: u64,
    },
    /// Delete a dead letter for good.
    Discard {
        /// Its sequence.
        sequence: u64,
    },
}

pub(super) async fn ops(args: OpsArgs) -> anyhow::Result<ExitCode> {
    let (server, files) = args.connect.resolve("admin")?;
    let channel = crate::client::connect(&server, &files).await?;
    let mut client = OperationsClient::new(channel);
    match args.command {
        OpsCommand::Deliveries { json } => {
            let list = client
                .list_deliveries(ListDeliveriesRequest {})
                .await?
                .into_inner();
            let any_overdue = list.suppliers.iter().any(|s| s.overdue);
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<20} {:<16} {:<26} {:>8} {:>8} {:>8}",
                    "SUPPLIER", "STATUS", "LAST BATCH", "BATCHES", "RECORDS", "REJECTED"
                );
                for s in &list.suppliers {
                    let status = if s.suspended {
                        "suspended"
                    } else if s.overdue {
                        "OVERDUE"
                    } else if s.delivered_today {
                        "delivered today"
                    } else {
                        "not yet today"
                    };
                    let last = if s.last_batch_at.is_empty() {
                        "never"
                    } else {
                        s.last_batch_at.as_str()
                    };
                    println!(
                        "{:<20} {:<16} {:<26} {:>8} {:>8} {:>8}",
                        s.supplier_id,
                        status,
                        last,
                        s.batches_today,
                        s.records_today,
                        s.rejected_today
                    );
                }
                println!(
                    "(today = UTC {}; overdue after {} s without a batch)",
                    list.suppliers.first().map_or("-", |s| s.today.as_str()),
                    list.overdue_after_secs
                );
            }
            Ok(if any_overdue {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            })
        }
        OpsCommand::DeadLetters(DeadLetterCommand::List { json, limit }) => {
            let list = client
                .list_dead_letters(ListDeadLettersRequest { limit })
                .await?
                .into_inner();
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.dead_letters.is_empty() {
                println!("no dead letters");
            } else {
                println!(
                    "{:>10} {:<20} {:<32} {:>8} {:<26}",
                    "SEQUENCE", "SUPPLIER", "MESSAGE ID", "ATTEMPTS", "DEAD SINCE"
                );
                for d in &list.dead_letters {
                    println!(
                        "{:>10} {:<20} {:<32} {:>8} {:<26}",
                        d.sequence, d.supplier_id, d.message_id, d.attempts, d.dead_lettered_at
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        OpsCommand::DeadLetters(DeadLetterCommand::Requeue { sequence }) => {
            let r = client
                .requeue_dead_letter(DeadLetterRequest { sequence })
                .await?
                .into_inner();
            println!("{} {}", r.sequence, r.outcome);
            Ok(ExitCode::SUCCESS)
        }
        OpsCommand::DeadLetters(DeadLetterCommand::Discard { sequence }) => {
            let r = client
                .discard_dead_letter(DeadLetterRequest { sequence })
                .await?
                .into_inner();
            println!("{} {}", r.sequence, r.outcome);
            Ok(ExitCode::SUCCESS)
        }
    }
}
