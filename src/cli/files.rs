//! File handling shared by `schakel push` and `schakel validate`: reading and
//! parsing the export files, where the error reports go, writing them, and the
//! progress display.
//!
//! Must not: judge records (that is `export::report` and the gateway) or print
//! record content: only file names, lines, ids and counts.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

use crate::export::report::Report;
use crate::export::{self, ParsedFile};

/// One export file, read and parsed.
pub struct Input {
    /// As given on the command line.
    pub path: PathBuf,
    /// The file name (no folder), as it goes into batch headers and reports.
    pub file_name: String,
    /// The raw bytes (their hash makes the batch ids).
    pub bytes: Vec<u8>,
    /// The records and unreadable rows.
    pub parsed: ParsedFile,
}

/// Reads and parses every file; stops at the first one that is refused.
///
/// # Errors
/// A file cannot be read, or is refused as a whole (the message says why).
pub fn read_inputs(paths: &[PathBuf]) -> anyhow::Result<Vec<Input>> {
    paths
        .iter()
        .map(|path| {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let file_name = path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string());
            let parsed = export::parse(&file_name, &bytes)
                .with_context(|| format!("{} is refused", path.display()))?;
            Ok(Input {
                path: path.clone(),
                file_name,
                bytes,
                parsed,
            })
        })
        .collect()
}

/// Where a report goes: `PREFIX.errors.{csv,json}`, or without a prefix
/// `FILE.errors.{csv,json}` next to the input.
pub fn report_paths(prefix: Option<&Path>, input: &Path) -> (PathBuf, PathBuf) {
    let base = prefix.map_or_else(
        || input.as_os_str().to_owned(),
        |p| p.as_os_str().to_owned(),
    );
    let with = |ext: &str| {
        let mut s = base.clone();
        s.push(ext);
        PathBuf::from(s)
    };
    (with(".errors.csv"), with(".errors.json"))
}

/// Writes `report` as CSV and JSON (synced); returns the two paths.
///
/// # Errors
/// A file cannot be written.
pub fn write_report(report: &Report, csv: &Path, json: &Path) -> anyhow::Result<()> {
    let write = |path: &Path, text: &[u8]| -> anyhow::Result<()> {
        let mut f = std::fs::File::create(path)
            .with_context(|| format!("creating the report {}", path.display()))?;
        f.write_all(text)
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing the report {}", path.display()))
    };
    write(csv, report.to_csv().as_bytes())?;
    let mut text = serde_json::to_vec_pretty(&report.to_json())?;
    text.push(b'\n');
    write(json, &text)
}

/// Progress on stderr: a bar with records/s and ETA on a terminal, one plain
/// line per step otherwise.
pub struct Progress {
    total: u64,
    done: u64,
    start: Instant,
    terminal: bool,
}

impl Progress {
    /// Progress over `total` records.
    pub fn new(total: u64) -> Self {
        Progress {
            total,
            done: 0,
            start: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    /// `n` more records are done; `what` says which step (for the plain lines).
    pub fn advance(&mut self, n: u64, what: &str) {
        self.done += n;
        let secs = self.start.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs;
        let left = self.total.saturating_sub(self.done);
        let eta = if rate > 0.0 { left as f64 / rate } else { 0.0 };
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let width = 30usize;
            let filled = if self.total == 0 {
                width
            } else {
                (self.done.min(self.total) as usize * width) / self.total as usize
            };
            let _ = write!(
                err,
                "\r[{}{}] {}/{} records  {:.0} rec/s  ETA {:.0}s ",
                "#".repeat(filled),
                " ".repeat(width - filled),
                self.done,
                self.total,
                rate,
                eta
            );
            if self.done >= self.total {
                let _ = writeln!(err);
            }
        } else {
            let _ = writeln!(
                err,
                "{what}: {}/{} records, {:.0} rec/s, ETA {:.0}s",
                self.done, self.total, rate, eta
            );
        }
    }

    /// Ends the bar's line on a terminal (after an early stop).
    pub fn finish(&self) {
        if self.terminal && self.done < self.total {
            eprintln!();
        }
    }
}

/// Waits for Ctrl-C or SIGTERM.
async fn signalled() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Sets `stop` on the first Ctrl-C or SIGTERM (saying `what` happens now); a
/// second one ends the process at once (exit 130).
pub fn watch_signals(stop: Arc<AtomicBool>, what: &'static str) {
    tokio::spawn(async move {
        signalled().await;
        eprintln!("{what} (signal again to stop at once)");
        stop.store(true, Ordering::SeqCst);
        signalled().await;
        eprintln!("stopped at once");
        std::process::exit(130);
    });
}
