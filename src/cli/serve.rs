//! `schakel serve`: load and validate the config (every problem at once, before
//! binding), bind the port, and run the server until SIGTERM or SIGINT.

use anyhow::Context;
use tokio::net::TcpListener;

use super::ServeArgs;
use crate::config::Config;

pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.config.as_deref())?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    config.validate()?;
    arm_test_sync_faults(&config)?;
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let http = match config.ops.http_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding the operations port {addr}"))?,
        ),
        None => None,
    };
    if let Some(path) = &args.ports_file {
        write_ports_file(path, &listener, http.as_ref())?;
    }
    crate::server::run_with_http(config, listener, http, shutdown_signal()).await?;
    Ok(())
}

/// Writes `grpc=ADDR` (and `http=ADDR` when the operations port is on) to
/// `path`, via a temp file and a rename, so a reader never sees half a file.
fn write_ports_file(
    path: &std::path::Path,
    grpc: &TcpListener,
    http: Option<&TcpListener>,
) -> anyhow::Result<()> {
    let mut text = format!("grpc={}\n", grpc.local_addr()?);
    if let Some(http) = http {
        text.push_str(&format!("http={}\n", http.local_addr()?));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", path.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Test hook for process tests: `SCHAKEL_TEST_FAIL_SYNC_AFTER=N` makes the
/// store's sync round after N good ones fail as a failing `fdatasync` would
/// (EIO), so the store latches failed. Never set this in production.
const TEST_FAIL_SYNC_AFTER: &str = "SCHAKEL_TEST_FAIL_SYNC_AFTER";

fn arm_test_sync_faults(config: &Config) -> anyhow::Result<()> {
    let Some(value) = std::env::var_os(TEST_FAIL_SYNC_AFTER) else {
        return Ok(());
    };
    let pass: u64 = value
        .to_str()
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("{TEST_FAIL_SYNC_AFTER} must be a whole number of syncs"))?;
    tracing::warn!(
        after = pass,
        "TEST HOOK {TEST_FAIL_SYNC_AFTER} is set: a store sync will be made to fail"
    );
    config.store.sync_faults.fail_after(pass, 1);
    Ok(())
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C still works");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
