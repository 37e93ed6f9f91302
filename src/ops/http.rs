//! The operations HTTP port (plain HTTP, loopback by default): `/metrics` in the
//! Prometheus text format and a read-only, server-rendered status page at `/`
//! (also `/status`): a failed store first (what failed, when, and that a
//! restart recovers), suppliers and their delivery status, the queue, today's
//! rejects by code, and certificates expiring within 30 days.
//!
//! Must not: accept writes, show record content or patient data (ids, counts,
//! codes, certificate labels only), or block the async workers (store reads run
//! in `spawn_blocking`). Called by `server` (serve until shutdown).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;

use super::{read_or_empty, Monitor, OpsError, SupplierStatus, CERT_WARNING_DAYS};
use crate::service::timestamp;
use crate::store::Identity;

/// The router of the operations port.
pub fn router(monitor: Monitor) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/", get(status_page))
        .route("/status", get(status_page))
        .route("/healthz", get(healthz))
        .with_state(monitor)
}

/// Serves the operations port on `listener` until `stop` turns true.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    listener: TcpListener,
    monitor: Monitor,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(), OpsError> {
    let addr = listener
        .local_addr()
        .map_or_else(|_| "?".to_owned(), |a| a.to_string());
    tracing::info!(addr = %addr, "serving metrics and the status page over plain HTTP");
    axum::serve(listener, router(monitor))
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await
        .map_err(|source| OpsError::Http { addr, source })
}

/// `/healthz` for load balancers and probes, which hold no registered client
/// certificate (gRPC health needs one): 200 `SERVING` while this gateway
/// serves, 503 `NOT_SERVING` once its store has failed (the port stays up then,
/// so the status page can say why).
async fn healthz(State(monitor): State<Monitor>) -> Response {
    let (status, body) = if monitor.store().failure().is_some() {
        (StatusCode::SERVICE_UNAVAILABLE, "NOT_SERVING\n")
    } else {
        (StatusCode::OK, "SERVING\n")
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body,
    )
        .into_response()
}

fn failure(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "operations page");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error\n").into_response()
}

async fn metrics(State(monitor): State<Monitor>) -> Response {
    match tokio::task::spawn_blocking(move || monitor.render_metrics()).await {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => failure(e),
        Err(e) => failure(e),
    }
}

/// What the status page shows.
struct PageData {
    now: SystemTime,
    overdue_after: Duration,
    suppliers: Vec<SupplierStatus>,
    depth: u64,
    leased: u64,
    oldest_received_at: Option<SystemTime>,
    dead_letters: u64,
    expiring: Vec<Identity>,
    /// Handshakes refused for their client certificate since start.
    tls_refused: Option<u64>,
    /// The store's first failed write or sync, once it has failed.
    store_failure: Option<std::sync::Arc<crate::store::StoreFailure>>,
    /// CRL files in force past their nextUpdate: (file, nextUpdate).
    expired_crls: Vec<(String, String)>,
}

fn gather(monitor: &Monitor) -> Result<PageData, OpsError> {
    let now = SystemTime::now();
    let store = monitor.store();
    let store_failure = store.failure();
    let failed = store_failure.is_some();
    let queue = store.queue_stats();
    let horizon = now + Duration::from_secs(CERT_WARNING_DAYS * 86_400);
    let mut expiring: Vec<Identity> = read_or_empty(store.identities(), failed)?
        .into_iter()
        .filter(|i| i.revoked_at.is_none() && i.not_after <= horizon)
        .collect();
    expiring.sort_by_key(|i| i.not_after);
    Ok(PageData {
        now,
        overdue_after: monitor.settings().overdue_after,
        suppliers: read_or_empty(monitor.supplier_statuses(now), failed)?,
        depth: queue.depth,
        leased: queue.leased,
        oldest_received_at: queue.oldest_received_at,
        dead_letters: read_or_empty(store.dead_letter_count(), failed)?,
        expiring,
        tls_refused: monitor.handshake_counts().map(|h| h.rejected),
        store_failure,
        expired_crls: monitor
            .crls()
            .into_iter()
            .filter(|c| c.expired_at(now))
            .map(|c| {
                (
                    c.file.display().to_string(),
                    crate::tls::format_time(c.next_update),
                )
            })
            .collect(),
    })
}

async fn status_page(State(monitor): State<Monitor>) -> Response {
    match tokio::task::spawn_blocking(move || gather(&monitor)).await {
        Ok(Ok(data)) => Html(render(&data)).into_response(),
        Ok(Err(e)) => failure(e),
        Err(e) => failure(e),
    }
}

/// Escapes text for HTML element content and attribute values.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "3 h 12 min", "45 s", "2 d 4 h".
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86_400 => format!("{} h {} min", s / 3600, (s % 3600) / 60),
        _ => format!("{} d {} h", s / 86_400, (s % 86_400) / 3600),
    }
}

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;margin:0;padding:1rem;color:#111;background:#fafafa}\
h1{font-size:1.3rem;margin:0 0 .25rem}h2{font-size:1.05rem;margin:1.25rem 0 .5rem}\
p.meta{color:#555;font-size:.85rem;margin:0}\
table{border-collapse:collapse;width:100%;background:#fff;font-size:.85rem}\
th,td{text-align:left;padding:.3rem .35rem;border-bottom:1px solid #ddd;vertical-align:top}\
th{background:#eee}.num{text-align:right}\
.ok{color:#0a6b2b;font-weight:600}.bad{color:#b00020;font-weight:600}.muted{color:#666}\
.cards{display:flex;flex-wrap:wrap;gap:.5rem}\
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5rem .75rem;min-width:8rem}\
.card b{display:block;font-size:1.3rem}\
.wrap{overflow-x:auto}.alarm{background:#fde8eb;border:2px solid #b00020;border-radius:6px;padding:.5rem .75rem;margin:.75rem 0}";

fn render(d: &PageData) -> String {
    let mut h = String::with_capacity(8 * 1024);
    let overdue_count = d.suppliers.iter().filter(|s| s.overdue).count();
    let _ = write!(
        h,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"60\">\
         <title>Schakel status</title><style>{STYLE}</style></head><body>\
         <h1>Schakel status</h1><p class=\"meta\">As of {} (UTC day {}). Overdue after {} without a batch.</p>",
        esc(&timestamp(d.now)),
        esc(&crate::store::utc_date(d.now)),
        human(d.overdue_after),
    );

    if let Some(f) = &d.store_failure {
        let _ = write!(
            h,
            "<div class=\"alarm\" id=\"store-failed\"><b class=\"bad\">Store failed</b> at {}: \
             {} failed ({}). Every submit, pull, ack and release is refused \
             (UNAVAILABLE STORE_FAILED) and health says NOT_SERVING until the gateway \
             is restarted; the restart recovers from what is on disk. Check the disk first.</div>",
            esc(&timestamp(f.at)),
            esc(&f.context),
            esc(&f.error),
        );
    }

    // Queue.
    let oldest = d
        .oldest_received_at
        .and_then(|t| d.now.duration_since(t).ok())
        .map_or_else(|| "none".to_owned(), human);
    let _ = write!(
        h,
        "<h2>Queue</h2><div class=\"cards\">\
         <div class=\"card\" id=\"queue-depth\">Queue depth<b>{}</b></div>\
         <div class=\"card\">Leased<b>{}</b></div>\
         <div class=\"card\" id=\"oldest-age\">Oldest record<b>{}</b></div>\
         <div class=\"card\" id=\"dead-letters\">Dead letters<b class=\"{}\">{}</b></div>\
         <div class=\"card\">Overdue suppliers<b class=\"{}\">{}</b></div>",
        d.depth,
        d.leased,
        esc(&oldest),
        if d.dead_letters > 0 { "bad" } else { "ok" },
        d.dead_letters,
        if overdue_count > 0 { "bad" } else { "ok" },
        overdue_count,
    );
    if let Some(refused) = d.tls_refused {
        let _ = write!(
            h,
            "<div class=\"card\" id=\"tls-refused\">Certificates refused at TLS (since start)\
             <b class=\"{}\">{refused}</b></div>",
            if refused > 0 { "bad" } else { "ok" },
        );
    }
    for (file, next_update) in &d.expired_crls {
        let _ = write!(
            h,
            "<div class=\"card\" id=\"crl-expired\">CRL past its nextUpdate ({})\
             <b class=\"bad\">{}</b></div>",
            esc(next_update),
            esc(file),
        );
    }
    h.push_str("</div>");

    // Suppliers.
    h.push_str(
        "<h2>Suppliers (today, UTC)</h2><div class=\"wrap\"><table id=\"suppliers\"><thead><tr>\
         <th>Supplier</th><th>Status</th><th>Last batch</th>\
         <th class=\"num\">Records</th><th class=\"num\">Rejected</th>\
         </tr></thead><tbody>",
    );
    for s in &d.suppliers {
        let (class, status) = if s.suspended {
            ("muted", "suspended")
        } else if s.overdue {
            ("bad", "overdue")
        } else if s.delivered_today {
            ("ok", "delivered today")
        } else {
            ("muted", "not yet today")
        };
        let (last, last_exact) = s.last_batch_at.map_or_else(
            || ("never".to_owned(), String::new()),
            |t| {
                let ago = d.now.duration_since(t).map(human).unwrap_or_default();
                (format!("{ago} ago"), timestamp(t))
            },
        );
        let _ = write!(
            h,
            "<tr data-supplier=\"{id}\"><td><b>{id}</b><br><span class=\"muted\">{name}</span></td>\
             <td class=\"{class}\">{status}</td><td title=\"{last_exact}\">{last}</td>\
             <td class=\"num\">{records}</td><td class=\"num\">{rejected}</td></tr>",
            id = esc(&s.id),
            name = esc(&s.name),
            last = esc(&last),
            last_exact = esc(&last_exact),
            records = s.today.records,
            rejected = s.today.rejected,
        );
    }
    if d.suppliers.is_empty() {
        h.push_str("<tr><td colspan=\"5\" class=\"muted\">No suppliers registered.</td></tr>");
    }
    h.push_str("</tbody></table></div>");

    // Rejects by code, today, over all suppliers.
    let mut codes: BTreeMap<&str, u64> = BTreeMap::new();
    for s in &d.suppliers {
        for (code, n) in &s.today.rejects_by_code {
            *codes.entry(code.as_str()).or_default() += n;
        }
    }
    h.push_str("<h2>Rejects today by code</h2>");
    if codes.is_empty() {
        h.push_str("<p class=\"muted\" id=\"rejects\">No rejected records today.</p>");
    } else {
        h.push_str(
            "<div class=\"wrap\"><table id=\"rejects\"><thead><tr><th>Code</th>\
             <th class=\"num\">Records</th></tr></thead><tbody>",
        );
        for (code, n) in &codes {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td class=\"num\">{n}</td></tr>",
                esc(code)
            );
        }
        h.push_str("</tbody></table></div>");
    }

    // Certificates.
    let _ = write!(
        h,
        "<h2>Certificates expiring within {CERT_WARNING_DAYS} days</h2>"
    );
    if d.expiring.is_empty() {
        h.push_str("<p class=\"muted\" id=\"certificates\">None.</p>");
    } else {
        h.push_str(
            "<div class=\"wrap\"><table id=\"certificates\"><thead><tr><th>Identity</th>\
             <th>Role</th><th>Expires</th></tr></thead><tbody>",
        );
        for i in &d.expiring {
            let left = match i.not_after.duration_since(d.now) {
                Ok(left) => format!("in {}", human(left)),
                Err(_) => "EXPIRED".to_owned(),
            };
            let role = match i.role {
                crate::store::Role::Supplier => "supplier",
                crate::store::Role::Registry => "registry",
                crate::store::Role::Admin => "admin",
            };
            let _ = write!(
                h,
                "<tr><td>{}<br><span class=\"muted\">{}</span></td><td>{role}</td>\
                 <td class=\"bad\">{} ({})</td></tr>",
                esc(&i.name),
                esc(&i.fingerprint.chars().take(16).collect::<String>()),
                esc(&timestamp(i.not_after)),
                esc(&left),
            );
        }
        h.push_str("</tbody></table></div>");
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(5)), "5 s");
        assert_eq!(human(Duration::from_secs(3 * 3600 + 720)), "3 h 12 min");
        assert_eq!(human(Duration::from_secs(26 * 3600)), "1 d 2 h");
    }
}
