//! Child processes of the benchmark (the gateway and the baseline sinks) and
//! what the kernel says about them: CPU seconds from `/proc/PID/stat`, peak
//! resident memory from `/proc/PID/status`. Linux only; elsewhere the figures
//! are reported as unavailable.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::{connect, ClientFiles};

use super::BenchError;

/// Clock ticks per second of `/proc/PID/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// A child process, killed when dropped.
pub struct Child {
    child: std::process::Child,
    name: &'static str,
    log: PathBuf,
}

impl Child {
    /// Starts `exe args...` with its output in `log`.
    pub fn spawn(
        name: &'static str,
        exe: &Path,
        args: &[&str],
        log: PathBuf,
    ) -> Result<Child, BenchError> {
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        let child = Command::new(exe)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| BenchError::Setup(format!("starting {name} ({}): {e}", exe.display())))?;
        Ok(Child { child, name, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Connects until the child answers a TLS handshake, for at most `limit`.
    pub async fn wait_ready(
        &mut self,
        url: &str,
        files: &ClientFiles,
        limit: Duration,
    ) -> Result<(), BenchError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(BenchError::Setup(format!(
                    "{} exited with {status} before it was ready; its output ends with:\n{}",
                    self.name,
                    self.log_tail()
                )));
            }
            let attempt = tokio::time::timeout(Duration::from_secs(2), connect(url, files)).await;
            if let Ok(Ok(_channel)) = attempt {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(BenchError::Setup(format!(
                    "{} not ready after {limit:?}; its output ends with:\n{}",
                    self.name,
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last 2000 bytes of the child's output (the log file goes away with
    /// the run's temp folder).
    fn log_tail(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        String::from_utf8_lossy(&text[start..]).into_owned()
    }

    /// User + system CPU seconds the child has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).ok()?;
        // The command name may contain spaces: the fields start after the last ')'.
        let rest = stat.get(stat.rfind(')')? + 1..)?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
        let utime: f64 = fields.get(11)?.parse().ok()?;
        let stime: f64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) / TICKS_PER_SECOND)
    }

    /// Peak resident set size (VmHWM) in bytes.
    pub fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Total size of the files below `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}
