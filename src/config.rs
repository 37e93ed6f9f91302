//! The gateway's configuration: plain serde data, read from a TOML file or taken
//! from the embedded development defaults (certificates in `certs-dev/`, data in
//! `./schakel-data`, listening on 127.0.0.1).
//!
//! Owns: the shape of the config, its defaults, and [`Config::validate`], which
//! names every problem at once before any port is bound. Does no networking;
//! reads files only to check they exist. Called by `main`/the CLI and by tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::Role;

/// The whole configuration. Every field has a default; a TOML file overrides
/// what it names and may not name unknown keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address of the mutual-TLS gRPC port.
    pub listen: SocketAddr,
    /// Folder of the sled store (created if absent).
    pub data_dir: PathBuf,
    /// The gateway's certificate, key, client CA bundle and CRLs.
    pub tls: TlsConfig,
    /// Caps on requests, batches, pulls and connections.
    pub limits: Limits,
    /// Validation settings.
    pub rules: RulesConfig,
    /// Suppliers registered at start (idempotent: existing ones are kept).
    pub suppliers: Vec<SeedSupplier>,
    /// Client certificates registered at start (idempotent), mapped to a role.
    pub identities: Vec<SeedIdentity>,
    /// Store tuning.
    pub store: StoreConfig,
    /// Operations: metrics and status page port, delivery monitoring, audit retention.
    pub ops: OpsConfig,
    /// How refused calls are aggregated in the audit log.
    pub audit: AuditConfig,
}

/// Audit of refused calls (see `crate::service::auth::RefusalAudit`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The first refusal of a (certificate, code, service) in an interval of
    /// this many milliseconds is written at once; the further ones are written
    /// as one event with their count when the interval ends (60 s).
    pub refusal_interval_ms: u64,
    /// Distinct (certificate, code, service) keys counted per interval;
    /// refusals under further keys are counted per (code, service) in one
    /// overflow event (1000).
    pub refusal_max_keys: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            refusal_interval_ms: 60_000,
            refusal_max_keys: 1_000,
        }
    }
}

/// Operations settings (see `crate::ops`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    /// Plain-HTTP port of `/metrics` (Prometheus) and the status page; keep it on
    /// loopback or an operations network. `"off"` (or `""`): no HTTP port.
    #[serde(deserialize_with = "address_or_off")]
    pub http_listen: Option<SocketAddr>,
    /// A supplier without a batch for this long is overdue, in seconds (26 h).
    pub overdue_after_secs: u64,
    /// Audit events older than this many days are purged (5 years).
    pub audit_retention_days: u64,
    /// Seconds between checks for overdue suppliers and audit purges.
    pub check_interval_secs: u64,
}

/// serde: a socket address, or `"off"`/`""` for none.
fn address_or_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    match text.trim() {
        "" | "off" => Ok(None),
        addr => addr.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "{addr:?} is not an address like 127.0.0.1:9464 or \"off\""
            ))
        }),
    }
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            http_listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            overdue_after_secs: 26 * 3600,
            audit_retention_days: 5 * 365 + 2,
            check_interval_secs: 300,
        }
    }
}

/// TLS material of the gRPC port.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain the gateway presents.
    pub cert: PathBuf,
    /// PEM private key of `cert`.
    pub key: PathBuf,
    /// PEM bundle of the CAs that client certificates must chain to.
    pub client_ca: PathBuf,
    /// PEM CRLs; a client certificate listed in one fails the handshake.
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// How often (ms) to check the files above for changes and reload them;
    /// 0 turns polling off (SIGHUP and the admin call still reload).
    #[serde(default = "default_reload_poll_ms")]
    pub reload_poll_ms: u64,
    /// How often (ms) open connections are checked against revocation,
    /// retirement and suspension; a connection found no longer allowed twice in
    /// a row is closed. 0 turns closing off (calls are refused either way).
    #[serde(default = "default_close_revoked_every_ms")]
    pub close_revoked_every_ms: u64,
    /// A CRL past its nextUpdate: "warn" (default: keep using it, report it) or
    /// "refuse" (refuse the certificates it covers).
    #[serde(default)]
    pub crl_expired: crate::tls::CrlExpiredPolicy,
    /// PEM file of the UZI server CA certificate(s) whose certificates count
    /// for suppliers with identity policy `ura`: a certificate must be signed
    /// by one of them (it must also chain to `client_ca` to pass the
    /// handshake). Unset: the `ura` policy admits nothing. Read at start.
    #[serde(default)]
    pub uzi_server_ca: Option<PathBuf>,
}

fn default_close_revoked_every_ms() -> u64 {
    5000
}

fn default_reload_poll_ms() -> u64 {
    5000
}

/// Limits on everything a client can make the gateway hold.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Records in one batch; more is refused with TOO_MANY_RECORDS.
    pub max_records_per_batch: usize,
    /// Bytes of one decoded gRPC request; more is refused by the codec.
    pub max_request_bytes: usize,
    /// Records in one Pull answer, whatever the caller asks for.
    pub max_pull_records: u32,
    /// Records in one Pull answer when the caller does not say.
    pub default_pull_records: u32,
    /// Longest long-poll wait of a Pull, in milliseconds.
    pub max_pull_wait_ms: u32,
    /// Lease of a pulled record when the caller does not say, in milliseconds.
    pub default_lease_ms: u32,
    /// Longest lease a caller may ask for, in milliseconds.
    pub max_lease_ms: u32,
    /// A TLS handshake that takes longer is cut off.
    pub handshake_timeout_ms: u64,
    /// TLS handshakes in progress at once.
    pub max_handshakes: usize,
    /// Open connections at once.
    pub max_connections: usize,
    /// Connections from one IP address at once (in handshake or open); more are
    /// closed at accept.
    pub max_connections_per_address: usize,
    /// TLS handshakes in progress from one IP address; more are closed at accept.
    pub max_handshakes_per_address: usize,
    /// Open connections per client certificate; more are closed after the handshake.
    pub max_connections_per_certificate: usize,
    /// A connection older than this gets a graceful GOAWAY (calls in flight
    /// finish, within `max_connection_age_grace_secs`); 0 = no limit.
    pub max_connection_age_secs: u64,
    /// How long calls in flight get after the GOAWAY of `max_connection_age_secs`.
    pub max_connection_age_grace_secs: u64,
    /// A connection on which the client opened no call for this long is closed;
    /// 0 = never.
    pub idle_timeout_secs: u64,
    /// Requests in progress at once per connection.
    pub max_concurrent_requests_per_connection: usize,
    /// HTTP/2 streams a client may open at once on one connection (the
    /// SETTINGS_MAX_CONCURRENT_STREAMS the gateway announces).
    pub max_concurrent_streams_per_connection: u32,
    /// Bytes of requests being received and decoded at once, all connections
    /// together; past it RESOURCE_EXHAUSTED `DECODE_BUDGET_EXHAUSTED` with a
    /// retry hint. Unset: 4 x `max_request_bytes`.
    pub max_decoding_bytes: Option<usize>,
    /// Seconds the server waits for requests in flight at shutdown.
    pub shutdown_grace_secs: u64,
    /// Requests in flight at once per client certificate; past it RESOURCE_EXHAUSTED.
    pub max_in_flight_per_identity: usize,
    /// Sustained records per second per supplier (0: no rate limit); past it
    /// RESOURCE_EXHAUSTED with a retry hint.
    pub supplier_records_per_second: u64,
    /// Records a supplier may send at once after being idle.
    pub supplier_burst_records: u64,
    /// Deliveries of a record without an ack before it moves to the dead letters.
    pub max_deliveries: u32,
    /// Backoff before a record whose lease expired is delivered again, in
    /// milliseconds; doubles with every further attempt (the first redelivery
    /// is immediate), capped at one hour.
    pub redelivery_backoff_ms: u64,
}

/// Validation settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Vaccination dates before this (`YYYY-MM-DD`) are rejected.
    pub campaign_start: String,
}

/// Store tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// sled's page cache, in MiB.
    pub cache_mb: u64,
    /// Test hook, never read from a file: sync-fault injection handed to the
    /// store (see `store::SyncFaults`).
    #[doc(hidden)]
    #[serde(skip)]
    pub sync_faults: crate::store::SyncFaults,
}

/// A supplier registered at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedSupplier {
    /// Stable id, used in dedup keys and deliveries ("supplier-a").
    pub id: String,
    /// Human name ("Huisartsensysteem A").
    pub name: String,
    /// Who to call when deliveries fail.
    #[serde(default)]
    pub contact: String,
    /// The organisation's URA (8 digits), for identity policy `ura`.
    #[serde(default)]
    pub ura: Option<String>,
    /// `pinned` (default) or `ura` (needs `ura` and `tls.uzi_server_ca`).
    #[serde(default)]
    pub identity_policy: crate::store::IdentityPolicy,
}

/// A client certificate registered at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedIdentity {
    /// What the certificate may do.
    pub role: Role,
    /// PEM file of the client certificate (the first certificate is used).
    pub cert: PathBuf,
    /// Human label.
    pub name: String,
    /// For `role = "supplier"`: which supplier the certificate speaks for.
    #[serde(default)]
    pub supplier_id: Option<String>,
}

/// The folder of the development PKI.
pub const DEV_CERTS: &str = "certs-dev";

impl Default for Config {
    fn default() -> Self {
        let dev = |name: &str| Path::new(DEV_CERTS).join(name);
        let identity = |role, name: &str, supplier_id: Option<&str>| SeedIdentity {
            role,
            cert: dev(&format!("{name}.pem")),
            name: format!("{name} (dev)"),
            supplier_id: supplier_id.map(str::to_owned),
        };
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            data_dir: PathBuf::from("schakel-data"),
            tls: TlsConfig {
                cert: dev("server.pem"),
                key: dev("server.key"),
                client_ca: dev("ca.pem"),
                crls: Vec::new(),
                reload_poll_ms: default_reload_poll_ms(),
                close_revoked_every_ms: default_close_revoked_every_ms(),
                crl_expired: crate::tls::CrlExpiredPolicy::Warn,
                uzi_server_ca: None,
            },
            limits: Limits::default(),
            rules: RulesConfig::default(),
            suppliers: vec![
                SeedSupplier {
                    id: "supplier-a".into(),
                    name: "Supplier A (dev)".into(),
                    contact: "servicedesk@supplier-a.example".into(),
                    ura: None,
                    identity_policy: Default::default(),
                },
                SeedSupplier {
                    id: "supplier-b".into(),
                    name: "Supplier B (dev)".into(),
                    contact: "servicedesk@supplier-b.example".into(),
                    ura: None,
                    identity_policy: Default::default(),
                },
            ],
            identities: vec![
                identity(Role::Supplier, "supplier-a", Some("supplier-a")),
                identity(Role::Supplier, "supplier-b", Some("supplier-b")),
                identity(Role::Registry, "registry", None),
                identity(Role::Admin, "admin", None),
            ],
            store: StoreConfig::default(),
            ops: OpsConfig::default(),
            audit: AuditConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_records_per_batch: 10_000,
            max_request_bytes: 32 * 1024 * 1024,
            max_pull_records: 5_000,
            default_pull_records: 500,
            max_pull_wait_ms: 60_000,
            default_lease_ms: 60_000,
            max_lease_ms: 3_600_000,
            handshake_timeout_ms: 10_000,
            max_handshakes: 256,
            max_connections: 1_024,
            max_connections_per_address: 256,
            max_handshakes_per_address: 32,
            max_connections_per_certificate: 64,
            max_connection_age_secs: 3_600,
            max_connection_age_grace_secs: 60,
            idle_timeout_secs: 600,
            max_concurrent_requests_per_connection: 64,
            max_concurrent_streams_per_connection: 100,
            max_decoding_bytes: None,
            shutdown_grace_secs: 20,
            max_in_flight_per_identity: 16,
            supplier_records_per_second: 200_000,
            supplier_burst_records: 400_000,
            max_deliveries: 10,
            redelivery_backoff_ms: 1_000,
        }
    }
}

impl Limits {
    /// The decode budget in bytes: `max_decoding_bytes`, or 4 x
    /// `max_request_bytes` when unset.
    pub fn decoding_budget(&self) -> usize {
        self.max_decoding_bytes
            .unwrap_or_else(|| self.max_request_bytes.saturating_mul(4))
    }
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            campaign_start: "2021-01-06".into(),
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_mb: 64,
            sync_faults: crate::store::SyncFaults::default(),
        }
    }
}

/// Everything wrong with a configuration, found at once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config {path}: {source}")]
    Read {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this shape.
    #[error("parsing config {path}: {source}")]
    Parse {
        /// The config file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// The config parsed but makes no sense; every problem is listed.
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Config {
    /// Reads a TOML config file, or gives the embedded defaults for `None`.
    ///
    /// # Errors
    /// The file cannot be read or does not parse.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// The validation rules this config describes.
    ///
    /// # Errors
    /// `campaign_start` is not a `YYYY-MM-DD` date.
    pub fn rules(&self) -> Result<crate::schema::Rules, ConfigError> {
        let format = time::macros::format_description!("[year]-[month]-[day]");
        let campaign_start =
            time::Date::parse(&self.rules.campaign_start, format).map_err(|_| {
                ConfigError::Invalid(vec![format!(
                    "rules.campaign_start {:?} is not a YYYY-MM-DD date",
                    self.rules.campaign_start
                )])
            })?;
        Ok(crate::schema::Rules {
            campaign_start,
            max_records_per_batch: self.limits.max_records_per_batch,
        })
    }

    /// Checks everything that can be checked before binding a port, and names
    /// every problem at once.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with the list of problems.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut file = |what: &str, path: &Path| {
            if !path.is_file() {
                problems.push(format!(
                    "{what} {} does not exist (run `schakel certs dev` for development certificates)",
                    path.display()
                ));
            }
        };
        file("tls.cert", &self.tls.cert);
        file("tls.key", &self.tls.key);
        file("tls.client_ca", &self.tls.client_ca);
        for crl in &self.tls.crls {
            file("tls.crls entry", crl);
        }
        if let Some(ca) = &self.tls.uzi_server_ca {
            file("tls.uzi_server_ca", ca);
        }
        for identity in &self.identities {
            file(
                &format!("identity {:?} cert", identity.name),
                &identity.cert,
            );
        }
        if let Err(ConfigError::Invalid(mut p)) = self.rules() {
            problems.append(&mut p);
        }
        for identity in &self.identities {
            match (identity.role, &identity.supplier_id) {
                (Role::Supplier, None) => problems.push(format!(
                    "identity {:?} has role supplier but no supplier_id",
                    identity.name
                )),
                (Role::Supplier, Some(id)) if !self.suppliers.iter().any(|s| &s.id == id) => {
                    problems.push(format!(
                        "identity {:?} names supplier_id {id:?}, which is not in [[suppliers]]",
                        identity.name
                    ))
                }
                (Role::Registry | Role::Admin, Some(_)) => problems.push(format!(
                    "identity {:?} is not a supplier but has a supplier_id",
                    identity.name
                )),
                _ => {}
            }
        }
        let mut uras = std::collections::HashSet::new();
        for supplier in &self.suppliers {
            if let Some(ura) = &supplier.ura {
                if crate::uzi::Ura::parse(ura).is_err() {
                    problems.push(format!(
                        "supplier {:?}: ura must be exactly 8 digits",
                        supplier.id
                    ));
                } else if !uras.insert(ura.clone()) {
                    problems.push(format!(
                        "supplier {:?}: ura {ura} is given to another supplier too",
                        supplier.id
                    ));
                }
            }
            if supplier.identity_policy == crate::store::IdentityPolicy::Ura {
                if supplier.ura.is_none() {
                    problems.push(format!(
                        "supplier {:?} has identity_policy \"ura\" but no ura",
                        supplier.id
                    ));
                }
                if self.tls.uzi_server_ca.is_none() {
                    problems.push(format!(
                        "supplier {:?} has identity_policy \"ura\" but tls.uzi_server_ca is not set",
                        supplier.id
                    ));
                }
            }
            if supplier.id.is_empty()
                || supplier.id.len() > 64
                || !supplier
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
            {
                problems.push(format!(
                    "supplier id {:?} must be 1..64 characters of a-z, A-Z, 0-9, '-', '_', '.'",
                    supplier.id
                ));
            }
        }
        let l = &self.limits;
        for (name, value) in [
            ("limits.max_records_per_batch", l.max_records_per_batch),
            ("limits.max_request_bytes", l.max_request_bytes),
            ("limits.max_pull_records", l.max_pull_records as usize),
            (
                "limits.default_pull_records",
                l.default_pull_records as usize,
            ),
            ("limits.default_lease_ms", l.default_lease_ms as usize),
            ("limits.max_lease_ms", l.max_lease_ms as usize),
            (
                "limits.handshake_timeout_ms",
                l.handshake_timeout_ms as usize,
            ),
            ("limits.max_handshakes", l.max_handshakes),
            ("limits.max_connections", l.max_connections),
            (
                "limits.max_connections_per_address",
                l.max_connections_per_address,
            ),
            (
                "limits.max_handshakes_per_address",
                l.max_handshakes_per_address,
            ),
            (
                "limits.max_connections_per_certificate",
                l.max_connections_per_certificate,
            ),
            (
                "limits.max_concurrent_requests_per_connection",
                l.max_concurrent_requests_per_connection,
            ),
            (
                "limits.max_concurrent_streams_per_connection",
                l.max_concurrent_streams_per_connection as usize,
            ),
            ("limits.max_deliveries", l.max_deliveries as usize),
            (
                "ops.overdue_after_secs",
                self.ops.overdue_after_secs as usize,
            ),
            (
                "ops.audit_retention_days",
                self.ops.audit_retention_days as usize,
            ),
            (
                "ops.check_interval_secs",
                self.ops.check_interval_secs as usize,
            ),
        ] {
            if value == 0 {
                problems.push(format!("{name} must be greater than 0"));
            }
        }
        if self.audit.refusal_interval_ms == 0 {
            problems.push("audit.refusal_interval_ms must be greater than 0".into());
        }
        if self.audit.refusal_max_keys == 0 {
            problems.push("audit.refusal_max_keys must be greater than 0".into());
        }
        // A request of the largest size, with its 5-byte gRPC frame prefix,
        // must fit in the decode budget on its own.
        if l.decoding_budget() < l.max_request_bytes.saturating_add(5) {
            problems.push(format!(
                "limits.max_decoding_bytes ({}) must be at least limits.max_request_bytes + 5 ({})",
                l.decoding_budget(),
                l.max_request_bytes.saturating_add(5)
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_dev_certs_and_loopback() {
        let config = Config::default();
        assert!(config.listen.ip().is_loopback());
        assert_eq!(config.tls.client_ca, Path::new("certs-dev/ca.pem"));
        assert_eq!(config.identities.len(), 4);
    }

    #[test]
    fn the_http_port_can_be_moved_or_turned_off() {
        assert_eq!(
            Config::default().ops.http_listen,
            Some(SocketAddr::from(([127, 0, 0, 1], 9464)))
        );
        let off: Config = toml::from_str("[ops]\nhttp_listen = \"off\"").unwrap();
        assert_eq!(off.ops.http_listen, None);
        let moved: Config = toml::from_str("[ops]\nhttp_listen = \"0.0.0.0:9100\"").unwrap();
        assert_eq!(
            moved.ops.http_listen,
            Some(SocketAddr::from(([0, 0, 0, 0], 9100)))
        );
        assert_eq!(moved.ops.overdue_after_secs, 26 * 3600);
        let err = toml::from_str::<Config>("[ops]\nhttp_listen = \"nine\"").unwrap_err();
        assert!(err.to_string().contains("not an address"), "{err}");
    }

    #[test]
    fn the_refusal_audit_interval_and_cap_are_set_in_audit() {
        let config = Config::default();
        assert_eq!(config.audit.refusal_interval_ms, 60_000);
        assert_eq!(config.audit.refusal_max_keys, 1_000);
        let mut set: Config =
            toml::from_str("[audit]\nrefusal_interval_ms = 0\nrefusal_max_keys = 0").unwrap();
        set.tls.cert = PathBuf::from("/nonexistent/server.pem");
        let ConfigError::Invalid(problems) = set.validate().unwrap_err() else {
            panic!("expected Invalid");
        };
        let all = problems.join("\n");
        assert!(
            all.contains("audit.refusal_interval_ms must be greater than 0"),
            "{all}"
        );
        assert!(
            all.contains("audit.refusal_max_keys must be greater than 0"),
            "{all}"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("listn = \"127.0.0.1:1\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn validate_names_every_problem() {
        let mut config = Config::default();
        config.tls.cert = PathBuf::from("/nonexistent/server.pem");
        config.rules.campaign_start = "6 januari".into();
        config.limits.max_connections = 0;
        config.limits.max_decoding_bytes = Some(config.limits.max_request_bytes);
        config.identities[0].supplier_id = Some("nobody".into());
        let ConfigError::Invalid(problems) = config.validate().unwrap_err() else {
            panic!("expected Invalid");
        };
        let all = problems.join("\n");
        assert!(all.contains("/nonexistent/server.pem"), "{all}");
        assert!(all.contains("campaign_start"), "{all}");
        assert!(all.contains("limits.max_connections"), "{all}");
        assert!(all.contains("limits.max_decoding_bytes"), "{all}");
        assert!(all.contains("\"nobody\""), "{all}");
    }

    #[test]
    fn ura_policies_need_a_ura_of_8_digits_once_and_the_uzi_server_ca() {
        let mut config = Config::default();
        config.suppliers[0].identity_policy = crate::store::IdentityPolicy::Ura;
        config.suppliers[1].ura = Some("1234567".into());
        let ConfigError::Invalid(problems) = config.validate().unwrap_err() else {
            panic!("expected Invalid");
        };
        let all = problems.join("\n");
        assert!(
            all.contains("\"supplier-a\" has identity_policy \"ura\" but no ura"),
            "{all}"
        );
        assert!(all.contains("tls.uzi_server_ca is not set"), "{all}");
        assert!(
            all.contains("\"supplier-b\": ura must be exactly 8 digits"),
            "{all}"
        );
        config.suppliers[0].ura = Some("90000001".into());
        config.suppliers[1].ura = Some("90000001".into());
        let ConfigError::Invalid(problems) = config.validate().unwrap_err() else {
            panic!("expected Invalid");
        };
        assert!(problems
            .join("\n")
            .contains("is given to another supplier too"));
        let parsed: Config = toml::from_str(
            "[tls]\ncert = \"s.pem\"\nkey = \"s.key\"\nclient_ca = \"ca.pem\"\nuzi_server_ca = \"uzi.pem\"\n\n[[suppliers]]\nid = \"his-a\"\nname = \"HIS A\"\nura = \"90000001\"\nidentity_policy = \"ura\"\n",
        )
        .unwrap();
        assert_eq!(parsed.tls.uzi_server_ca, Some(PathBuf::from("uzi.pem")));
        assert_eq!(
            parsed.suppliers[0].identity_policy,
            crate::store::IdentityPolicy::Ura
        );
    }
}
