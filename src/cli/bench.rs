//! `schakel bench` (the performance benchmark, see [`crate::bench`]) and the
//! hidden `schakel bench-sink` (a baseline sink the benchmark starts as a child).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::bench::sink::SinkMode;
use crate::bench::{self, BenchOptions};

/// `schakel bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Records pushed at full load (N), resends included.
    #[arg(long, short = 'n', default_value_t = 100_000)]
    pub records: usize,
    /// Concurrent suppliers (C), one mTLS channel each.
    #[arg(long, short = 'c', default_value_t = 4)]
    pub suppliers: usize,
    /// Records per batch (B).
    #[arg(long, short = 'b', default_value_t = 1_000)]
    pub batch: usize,
    /// Fraction of records that resend an earlier message id (0..1).
    #[arg(long, default_value_t = 0.05)]
    pub resends: f64,
    /// Seed of the generated records.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Put this many dedup entries (queued records of another supplier) in the
    /// store before starting the gateway.
    #[arg(long, default_value_t = 0)]
    pub scale: u64,
    /// Small and quick: N = 5000, B = 250 (overrides -n and -b).
    #[arg(long)]
    pub smoke: bool,
    /// Skip the two baseline sinks.
    #[arg(long)]
    pub no_baselines: bool,
    /// Skip the second push at half the achieved rate.
    #[arg(long)]
    pub no_half_load: bool,
}

/// `schakel bench-sink` (hidden; started by `schakel bench`).
#[derive(Debug, Args)]
pub struct SinkArgs {
    /// What to do with each batch before answering.
    #[arg(long, value_enum)]
    pub mode: SinkMode,
    /// The config whose `listen`, `data_dir` and `[tls]` to use.
    #[arg(long)]
    pub config: PathBuf,
}

pub(super) async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("finding the schakel binary")?;
    let mut options = if args.smoke {
        BenchOptions::smoke(exe)
    } else {
        BenchOptions {
            records: args.records,
            batch: args.batch,
            ..BenchOptions::new(exe)
        }
    };
    anyhow::ensure!(
        (0.0..1.0).contains(&args.resends),
        "--resends must be at least 0 and below 1"
    );
    anyhow::ensure!(
        options.records > 0 && args.suppliers > 0 && options.batch > 0,
        "--records, --suppliers and --batch must be positive"
    );
    options.suppliers = args.suppliers;
    options.resend_fraction = args.resends;
    options.seed = args.seed;
    options.scale = args.scale;
    options.baselines = !args.no_baselines;
    options.half_load = !args.no_half_load;
    let report = bench::run(&options).await?;
    println!("{}", report.table());
    if report.passed() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "error: the exactly-once check FAILED: the run lost, duplicated or rejected records"
        );
        Ok(ExitCode::FAILURE)
    }
}

pub(super) async fn sink(args: SinkArgs) -> anyhow::Result<ExitCode> {
    bench::sink::serve(args.mode, args.config).await?;
    Ok(ExitCode::SUCCESS)
}
