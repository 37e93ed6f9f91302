//! `schakel admin ...`: the Admin service from the command line, over mTLS with
//! an admin certificate (flags `--cert/--key/--ca`, dev default
//! `certs-dev/admin.pem`). Tables for people, `--json` (one JSON document per
//! command) for scripts.
//!
//! Owns only argument parsing and output; every decision is the server's.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use serde::Serialize;
use tonic::transport::Channel;

use super::ConnectArgs;
use crate::proto::admin_client::AdminClient;
use crate::proto::{
    AddCertificateRequest, AddSupplierRequest, CertificateInfo, CertificateRef,
    ExpiringCertificatesRequest, ListCertificatesRequest, ListSuppliersRequest, QueryAuditRequest,
    ReloadTlsRequest, RetireCertificateRequest, SupplierInfo, SupplierRef,
};

/// `schakel admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// The admin subcommands.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Suppliers: add, list, show, suspend, resume.
    #[command(subcommand)]
    Suppliers(SupplierCommand),
    /// Client certificates: add, list, retire, revoke, expiring.
    #[command(subcommand)]
    Certs(CertCommand),
    /// Show the audit log, filtered by time and actor.
    Audit {
        /// From this time (RFC 3339, or a duration ago like "24h").
        #[arg(long)]
        from: Option<String>,
        /// Up to this time (RFC 3339, or a duration ago).
        #[arg(long)]
        to: Option<String>,
        /// Only actions of this certificate (SHA-256 fingerprint).
        #[arg(long)]
        actor: Option<String>,
        /// At most this many events (the most recent); 0 = 1000.
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
    /// Reload the gateway's certificate and key, client CA bundle and CRLs.
    ReloadTls,
}

/// `schakel admin suppliers ...`.
#[derive(Debug, Subcommand)]
pub enum SupplierCommand {
    /// Register a supplier.
    Add {
        /// Supplier id (a-z, A-Z, 0-9, '-', '_', '.').
        #[arg(long)]
        id: String,
        /// Display name.
        #[arg(long)]
        name: String,
        /// Contact (service desk address).
        #[arg(long, default_value = "")]
        contact: String,
        /// The organisation's URA (8 digits, the subscriber number in its UZI
        /// server certificates). Sets the identity policy to `ura` unless
        /// `--identity-policy pinned` is given.
        #[arg(long, default_value = "")]
        ura: String,
        /// `pinned` (only registered certificates) or `ura` (also any valid UZI
        /// server certificate of the configured UZI server CA naming the URA);
        /// default `ura` with `--ura`, else `pinned`.
        #[arg(long, default_value = "")]
        identity_policy: String,
    },
    /// List all suppliers.
    List,
    /// Show one supplier and its certificates.
    Show {
        /// Supplier id.
        id: String,
    },
    /// Suspend a supplier: its certificates stop working at once.
    Suspend {
        /// Supplier id.
        id: String,
    },
    /// Resume a suspended supplier.
    Resume {
        /// Supplier id.
        id: String,
    },
}

/// `schakel admin certs ...`.
#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Register a client certificate from a PEM file (must chain to the client CA).
    Add {
        /// The certificate (PEM, leaf first).
        #[arg(long)]
        pem: PathBuf,
        /// supplier, registry or admin.
        #[arg(long)]
        role: String,
        /// Label; default the certificate's subject.
        #[arg(long, default_value = "")]
        name: String,
        /// The supplier (role supplier only).
        #[arg(long, default_value = "")]
        supplier: String,
    },
    /// List certificates with expiry and status.
    List {
        /// Only this supplier's certificates.
        #[arg(long)]
        supplier: Option<String>,
    },
    /// Retire a certificate at a time: it works until then (rotation overlap).
    Retire {
        /// SHA-256 fingerprint (or a unique prefix of it).
        fingerprint: String,
        /// "now", a duration from now ("+2h", "7d") or an RFC 3339 time.
        #[arg(long, default_value = "now")]
        at: String,
    },
    /// Revoke a certificate at once.
    Revoke {
        /// SHA-256 fingerprint (or a unique prefix of it).
        fingerprint: String,
    },
    /// Show a certificate file's subject, validity, key and UZI fields
    /// (URA, card type, ...). Reads the file only; calls no server.
    Inspect {
        /// The certificate (PEM, the first certificate is shown).
        file: PathBuf,
    },
    /// Active certificates that expire within a period.
    Expiring {
        /// The period, e.g. "30d".
        #[arg(long, default_value = "30d")]
        within: String,
    },
}

/// Runs `schakel admin ...`.
pub(super) async fn admin(args: AdminArgs) -> anyhow::Result<()> {
    if let AdminCommand::Certs(CertCommand::Inspect { file }) = &args.command {
        return inspect(file, args.json);
    }
    let (server, files) = args.connect.resolve("admin")?;
    let channel = crate::client::connect(&server, &files).await?;
    let mut client = AdminClient::new(channel);
    let json = args.json;
    match args.command {
        AdminCommand::Suppliers(cmd) => suppliers(&mut client, cmd, json).await,
        AdminCommand::Certs(cmd) => certs(&mut client, cmd, json).await,
        AdminCommand::Audit {
            from,
            to,
            actor,
            limit,
        } => {
            let request = QueryAuditRequest {
                from: from
                    .as_deref()
                    .map(past_time)
                    .transpose()?
                    .unwrap_or_default(),
                to: to
                    .as_deref()
                    .map(past_time)
                    .transpose()?
                    .unwrap_or_default(),
                actor_fingerprint: actor.unwrap_or_default(),
                limit,
            };
            let answer = client.query_audit(request).await?.into_inner();
            let events = answer.events;
            if answer.truncated {
                if let Some(first) = events.first() {
                    eprintln!(
                        "more events in the range: page back with --to {} (the first shown; \
                         it is shown again) or narrow --from/--actor",
                        first.at
                    );
                }
            }
            if json {
                return print_json(&events);
            }
            let rows = events
                .iter()
                .map(|e| {
                    vec![
                        e.at.clone(),
                        e.actor.clone(),
                        short(&e.actor_fingerprint),
                        e.action.clone(),
                        clip(&e.detail, AUDIT_DETAIL_CHARS),
                        e.outcome.clone(),
                    ]
                })
                .collect();
            print_table(
                &["AT", "ACTOR", "FINGERPRINT", "ACTION", "DETAIL", "OUTCOME"],
                rows,
            );
            Ok(())
        }
        AdminCommand::ReloadTls => {
            let report = client.reload_tls(ReloadTlsRequest {}).await?.into_inner();
            if json {
                return print_json(&report);
            }
            println!("TLS material reloaded");
            println!("server certificate: {}", report.server_subject);
            println!("fingerprint:        {}", report.server_fingerprint);
            println!("not after:          {}", report.server_not_after);
            println!("client CAs:         {}", report.client_cas);
            println!("CRLs:               {}", report.crls);
            Ok(())
        }
    }
}

async fn suppliers(
    client: &mut AdminClient<Channel>,
    cmd: SupplierCommand,
    json: bool,
) -> anyhow::Result<()> {
    let one = match cmd {
        SupplierCommand::Add {
            id,
            name,
            contact,
            ura,
            identity_policy,
        } => {
            client
                .add_supplier(AddSupplierRequest {
                    id,
                    name,
                    contact,
                    ura,
                    identity_policy,
                })
                .await?
        }
        SupplierCommand::List => {
            let list = client
                .list_suppliers(ListSuppliersRequest {})
                .await?
                .into_inner()
                .suppliers;
            if json {
                return print_json(&list);
            }
            print_suppliers(&list);
            return Ok(());
        }
        SupplierCommand::Show { id } => {
            let supplier = client
                .get_supplier(SupplierRef { id: id.clone() })
                .await?
                .into_inner();
            let certs = client
                .list_certificates(ListCertificatesRequest { supplier_id: id })
                .await?
                .into_inner()
                .certificates;
            if json {
                #[derive(Serialize)]
                struct Show<'a> {
                    supplier: &'a SupplierInfo,
                    certificates: &'a [CertificateInfo],
                }
                return print_json(&Show {
                    supplier: &supplier,
                    certificates: &certs,
                });
            }
            print_suppliers(std::slice::from_ref(&supplier));
            println!();
            print_certs(&certs);
            return Ok(());
        }
        SupplierCommand::Suspend { id } => client.suspend_supplier(SupplierRef { id }).await?,
        SupplierCommand::Resume { id } => client.resume_supplier(SupplierRef { id }).await?,
    }
    .into_inner();
    if json {
        return print_json(&one);
    }
    print_suppliers(std::slice::from_ref(&one));
    Ok(())
}

async fn certs(
    client: &mut AdminClient<Channel>,
    cmd: CertCommand,
    json: bool,
) -> anyhow::Result<()> {
    let list = match cmd {
        CertCommand::Add {
            pem,
            role,
            name,
            supplier,
        } => {
            let text = std::fs::read_to_string(&pem)
                .with_context(|| format!("reading {}", pem.display()))?;
            let added = client
                .add_certificate(AddCertificateRequest {
                    pem: text,
                    role,
                    name,
                    supplier_id: supplier,
                })
                .await?
                .into_inner();
            vec![added]
        }
        CertCommand::List { supplier } => {
            client
                .list_certificates(ListCertificatesRequest {
                    supplier_id: supplier.unwrap_or_default(),
                })
                .await?
                .into_inner()
                .certificates
        }
        CertCommand::Retire { fingerprint, at } => {
            let fingerprint = resolve(client, &fingerprint).await?;
            let at = future_time(&at)?;
            vec![client
                .retire_certificate(RetireCertificateRequest { fingerprint, at })
                .await?
                .into_inner()]
        }
        CertCommand::Revoke { fingerprint } => {
            let fingerprint = resolve(client, &fingerprint).await?;
            vec![client
                .revoke_certificate(CertificateRef { fingerprint })
                .await?
                .into_inner()]
        }
        CertCommand::Inspect { file } => return inspect(&file, json),
        CertCommand::Expiring { within } => {
            let within = humantime::parse_duration(&within)
                .with_context(|| format!("--within {within:?}: expected a duration like 30d"))?;
            client
                .expiring_certificates(ExpiringCertificatesRequest {
                    within_secs: within.as_secs(),
                })
                .await?
                .into_inner()
                .certificates
        }
    };
    if json {
        return print_json(&list);
    }
    print_certs(&list);
    Ok(())
}

/// A full fingerprint from a unique prefix of one (at least 8 hex characters).
async fn resolve(client: &mut AdminClient<Channel>, given: &str) -> anyhow::Result<String> {
    let given = given.to_ascii_lowercase().replace(':', "");
    if given.len() == 64 {
        return Ok(given);
    }
    if given.len() < 8 {
        bail!("fingerprint {given:?}: give at least 8 hex characters");
    }
    let all = client
        .list_certificates(ListCertificatesRequest::default())
        .await?
        .into_inner()
        .certificates;
    let matches: Vec<_> = all
        .into_iter()
        .filter(|c| c.fingerprint.starts_with(&given))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one.fingerprint.clone()),
        [] => bail!("no registered certificate has a fingerprint starting with {given}"),
        _ => bail!(
            "{} certificates match {given}: give more characters",
            matches.len()
        ),
    }
}

/// "now" / "" -> now; "+2h" or "2h" -> that long from now; else RFC 3339.
fn future_time(text: &str) -> anyhow::Result<String> {
    relative_time(text, true)
}

/// A duration ("24h") means that long ago; else RFC 3339.
fn past_time(text: &str) -> anyhow::Result<String> {
    relative_time(text, false)
}

fn relative_time(text: &str, ahead: bool) -> anyhow::Result<String> {
    let now = SystemTime::now();
    let text = text.trim();
    if text.is_empty() || text == "now" {
        return Ok(humantime::format_rfc3339_millis(now).to_string());
    }
    let stripped = text.trim_start_matches(['+', '-']);
    if let Ok(d) = humantime::parse_duration(stripped) {
        let at = if ahead {
            now.checked_add(d)
        } else {
            now.checked_sub(d)
        }
        .context("time out of range")?;
        return Ok(humantime::format_rfc3339_millis(at).to_string());
    }
    let at = humantime::parse_rfc3339_weak(text).with_context(|| {
        format!("{text:?}: expected \"now\", a duration like 2h, or an RFC 3339 time")
    })?;
    Ok(humantime::format_rfc3339_millis(at).to_string())
}

fn print_json<T: Serialize + ?Sized>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Characters of an audit event's detail shown in the table (`--json` shows all).
const AUDIT_DETAIL_CHARS: usize = 160;

/// `text` cut to `max` characters, saying how much was left out.
fn clip(text: &str, max: usize) -> String {
    let total = text.chars().count();
    if total <= max {
        return text.to_owned();
    }
    let head: String = text.chars().take(max).collect();
    format!("{head}... (+{} chars; --json shows all)", total - max)
}

fn short(fingerprint: &str) -> String {
    fingerprint.chars().take(16).collect()
}

fn print_suppliers(list: &[SupplierInfo]) {
    let rows = list
        .iter()
        .map(|s| {
            vec![
                s.id.clone(),
                s.name.clone(),
                s.contact.clone(),
                if s.suspended { "suspended" } else { "active" }.to_owned(),
                s.identity_policy.clone(),
                s.ura.clone(),
                s.created_at.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "NAME", "CONTACT", "STATUS", "POLICY", "URA", "CREATED",
        ],
        rows,
    );
}

fn print_certs(list: &[CertificateInfo]) {
    let rows = list
        .iter()
        .map(|c| {
            let until = match (c.revoked_at.as_str(), c.retire_at.as_str()) {
                ("", "") => String::new(),
                ("", retire) => format!("retire {retire}"),
                (revoked, _) => format!("revoked {revoked}"),
            };
            vec![
                c.fingerprint.clone(),
                c.role.clone(),
                c.supplier_id.clone(),
                c.name.clone(),
                c.status.clone(),
                c.origin.clone(),
                c.not_after.clone(),
                until,
                c.serial.clone(),
                c.subject.clone(),
            ]
        })
        .collect();
    print_table(
        &[
            "FINGERPRINT",
            "ROLE",
            "SUPPLIER",
            "NAME",
            "STATUS",
            "VIA",
            "NOT AFTER",
            "RETIRE/REVOKE",
            "SERIAL",
            "SUBJECT",
        ],
        rows,
    );
}

/// What `certs inspect` shows of a certificate file.
#[derive(Debug, Serialize)]
struct Inspected {
    subject: String,
    issuer: String,
    serial: String,
    fingerprint: String,
    not_before: String,
    not_after: String,
    key_type: String,
    /// The UZI fields, when the certificate has them.
    uzi: Option<InspectedUzi>,
    /// Why there are none (`UZI_MISSING`, `UZI_MALFORMED: ...`).
    uzi_error: Option<String>,
}

#[derive(Debug, Serialize)]
struct InspectedUzi {
    ura: String,
    card_type: String,
    ca_oid: String,
    version: String,
    uzi_number: String,
    role: String,
    agb: String,
    permanent_identifier: Option<String>,
    permanent_identifier_assigner: Option<String>,
}

fn inspect(file: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let certs = crate::tls::load_certs(file)?;
    let der = certs
        .first()
        .with_context(|| format!("{}: no certificate in the file", file.display()))?;
    let info = crate::tls::describe(der)?;
    let (uzi, uzi_error) = match crate::uzi::UziCertificate::from_der(der) {
        Ok(u) => (
            Some(InspectedUzi {
                ura: u.ura().to_string(),
                card_type: u.name.card_type.describe().to_owned(),
                ca_oid: u.name.ca_oid.clone(),
                version: u.name.version.clone(),
                uzi_number: u.name.uzi_number.clone(),
                role: u.name.role.clone(),
                agb: u.name.agb.clone(),
                permanent_identifier: u
                    .permanent_identifier
                    .as_ref()
                    .and_then(|p| p.value.clone()),
                permanent_identifier_assigner: u
                    .permanent_identifier
                    .as_ref()
                    .and_then(|p| p.assigner.clone()),
            }),
            None,
        ),
        Err(e) => (None, Some(format!("{}: {e}", e.code()))),
    };
    let shown = Inspected {
        subject: info.subject,
        issuer: info.issuer,
        serial: info.serial,
        fingerprint: info.fingerprint,
        not_before: humantime::format_rfc3339(info.not_before).to_string(),
        not_after: humantime::format_rfc3339(info.not_after).to_string(),
        key_type: info.key_type,
        uzi,
        uzi_error,
    };
    if json {
        return print_json(&shown);
    }
    let mut rows = vec![
        ("subject", shown.subject.clone()),
        ("issuer", shown.issuer.clone()),
        ("serial", shown.serial.clone()),
        ("fingerprint", shown.fingerprint.clone()),
        ("not before", shown.not_before.clone()),
        ("not after", shown.not_after.clone()),
        ("key", shown.key_type.clone()),
    ];
    match (&shown.uzi, &shown.uzi_error) {
        (Some(u), _) => {
            rows.extend([
                ("UZI URA", u.ura.clone()),
                ("UZI card type", u.card_type.clone()),
                ("UZI CA OID", u.ca_oid.clone()),
                ("UZI version", u.version.clone()),
                ("UZI number", u.uzi_number.clone()),
                ("UZI role", u.role.clone()),
                ("UZI AGB", u.agb.clone()),
                (
                    "permanentIdentifier",
                    match (&u.permanent_identifier, &u.permanent_identifier_assigner) {
                        (None, _) => "(none)".to_owned(),
                        (Some(v), None) => v.clone(),
                        (Some(v), Some(a)) => format!("{v} (assigner {a})"),
                    },
                ),
            ]);
        }
        (None, Some(e)) => rows.push(("UZI", e.clone())),
        (None, None) => {}
    }
    for (k, v) in rows {
        println!("{k:<20} {v}");
    }
    Ok(())
}

/// Left-aligned columns separated by two spaces.
fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    if rows.is_empty() {
        println!("(none)");
    }
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn relative_times() {
        let now = SystemTime::now();
        let parse = |s: &str| humantime::parse_rfc3339(s).unwrap();
        let ahead = parse(&future_time("+2h").unwrap());
        assert!(ahead >= now + Duration::from_secs(7199));
        let ago = parse(&past_time("24h").unwrap());
        assert!(ago <= now - Duration::from_secs(86_399));
        assert_eq!(
            future_time("2030-01-02T03:04:05Z").unwrap(),
            "2030-01-02T03:04:05.000Z"
        );
        assert!(future_time("next tuesday").is_err());
    }
}
