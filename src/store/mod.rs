//! Durable state of the gateway over sled 0.34: the `Store` handle, opening,
//! the error type, identities (client certificates) and suppliers.
//!
//! Submodules: `queue` (dedup, enqueue, leases, pull/ack/release), `commit`
//! (group commit: the only place that fsyncs), `latch` (after a failed write
//! or sync the store stays failed until the process restarts), `audit`
//! (append-only log).
//!
//! Must not: know tonic or prost types (records are opaque bytes), log or put
//! record content into errors, panic on bad data on disk. Called by the service
//! layer (per request: `identity`, `submit`, `pull`, `ack`, `release`, `audit`)
//! and by the admin commands and `main` (open, identities, suppliers, sync).

mod audit;
mod commit;
mod dead_letters;
mod deliveries;
mod latch;
pub mod log;
mod queue;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use audit::{AuditEvent, AuditQuery};
pub use dead_letters::DeadLetter;
pub use deliveries::{utc_date, BatchTally, DeliveryDay, SupplierDeliveries};
pub use latch::StoreFailure;
#[doc(hidden)]
pub use latch::SyncFaults;
pub use queue::{
    Delivery, NewRecord, PullBudget, QueueCounters, QueueStats, SubmitOutcome, TokenOutcome,
    TokenResult,
};

use commit::Committer;
use latch::Latch;
use queue::QueueState;

/// Key in the default tree holding the on-disk format version.
const FORMAT_KEY: &[u8] = b"schakel.format";
const FORMAT_VERSION: u8 = 1;
/// A file written once the format key is durable: its presence means the
/// store holds data, so a missing format key is corruption, not a new store.
const SENTINEL_FILE: &str = "SCHAKEL-STORE";

fn write_sentinel(path: &Path) -> Result<(), StoreError> {
    let file = path.join(SENTINEL_FILE);
    let io = |source| StoreError::Io {
        context: format!("writing {}", file.display()),
        source,
    };
    std::fs::write(
        &file,
        "This folder is a Schakel store (sled). Do not edit; back it up whole.\n",
    )
    .map_err(io)?;
    commit::sync_path(&file)?;
    commit::sync_path(path)
}

/// Everything that can go wrong in the store. Messages say what was being done
/// and why; they never contain record content.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled could not open the store (missing permissions, locked by another
    /// process, unreadable files).
    #[error("opening store at {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    /// A sled operation failed. Retryable when it is an I/O error (e.g. disk full).
    #[error("{context}: {source}")]
    Sled {
        context: String,
        #[source]
        source: sled::Error,
    },
    /// A file-system operation failed (fsync, disk full, ...).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// Stored data failed to decode. `what` describes the key, never the content.
    #[error("corrupt data in {what}: {reason}")]
    Corrupt { what: String, reason: String },
    /// The caller passed something the store cannot key (e.g. a NUL byte in a
    /// supplier id). A bug in the caller, not a storage problem.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// The store is shutting down (commit thread gone or runtime shutting down).
    #[error("store is closed")]
    Closed,
    /// A write or sync failed earlier: the store refuses every write until the
    /// process restarts and recovers from what is on disk.
    #[error(
        "the store failed at {at} and refuses writes until the gateway is restarted \
         (first failure: {first})",
        at = humantime::format_rfc3339_seconds(.0.at),
        first = .0
    )]
    Failed(Arc<StoreFailure>),
}

impl StoreError {
    /// Whether the same call may succeed later: I/O failures (disk full, device
    /// errors) and shutdown. The service answers these with UNAVAILABLE; corrupt
    /// data and invalid input are not retryable (INTERNAL).
    pub fn is_retryable(&self) -> bool {
        match self {
            StoreError::Open { source, .. } | StoreError::Sled { source, .. } => {
                matches!(source, sled::Error::Io(_))
            }
            StoreError::Io { .. } | StoreError::Closed | StoreError::Failed(_) => true,
            StoreError::Corrupt { .. } | StoreError::Invalid(_) => false,
        }
    }

    /// Wraps a sled error; sled's own corruption report becomes `Corrupt`.
    pub(crate) fn sled(context: impl Into<String>, source: sled::Error) -> StoreError {
        match source {
            sled::Error::Corruption { at, .. } => StoreError::Corrupt {
                what: context.into(),
                reason: format!("sled reported corruption at {at:?}"),
            },
            source => StoreError::Sled {
                context: context.into(),
                source,
            },
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> StoreError {
        StoreError::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Locks a mutex, recovering from poisoning (the protected state is kept
/// consistent by every critical section before it can panic).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Maps a failed `spawn_blocking` join: cancellation means the runtime is
/// shutting down; a panic is propagated as a panic.
pub(crate) fn join_error(e: tokio::task::JoinError) -> StoreError {
    if e.is_panic() {
        std::panic::resume_unwind(e.into_panic());
    }
    StoreError::Closed
}

/// Tunables for [`Store::open`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// sled page cache size in bytes (default 64 MiB).
    pub cache_capacity_bytes: u64,
    /// Background flush interval in ms (default 1000). Also the interval of the
    /// periodic sync round that makes unsynced writes (audit events, delivery
    /// attempts) durable. `None`: those become durable with the next requested round.
    pub flush_every_ms: Option<u64>,
    /// Deliveries without an ack after which a record moves to the dead letters
    /// (default 10; 0: never).
    pub max_deliveries: u32,
    /// Backoff before the second redelivery of an expired record, doubling per
    /// further attempt (default 1 s; the first redelivery is immediate).
    pub redelivery_backoff: Duration,
    /// Test hook: fault injection for the sync rounds (disarmed by default).
    #[doc(hidden)]
    pub sync_faults: SyncFaults,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_capacity_bytes: 64 * 1024 * 1024,
            flush_every_ms: Some(1000),
            max_deliveries: 10,
            redelivery_backoff: Duration::from_secs(1),
            sync_faults: SyncFaults::default(),
        }
    }
}

/// What a client certificate may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Supplier,
    Registry,
    Admin,
}

impl Role {
    /// The role as written in the config, the audit trail and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Supplier => "supplier",
            Role::Registry => "registry",
            Role::Admin => "admin",
        }
    }
}

/// Who a client certificate is. Keyed by the certificate's SHA-256 fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// SHA-256 of the DER certificate, lowercase hex (64 chars).
    pub fingerprint: String,
    pub role: Role,
    /// Human label, e.g. "supplier-a (dev)".
    pub name: String,
    /// Some for `Role::Supplier`.
    pub supplier_id: Option<String>,
    pub subject: String,
    pub serial: String,
    /// Certificate expiry; encoded as whole unix seconds (sub-second parts are dropped).
    #[serde(with = "unix_secs")]
    pub not_after: SystemTime,
    pub added_at: SystemTime,
    /// Stops working at this time (rotation overlap).
    pub retire_at: Option<SystemTime>,
    /// Revoked: never active again, whatever the time.
    pub revoked_at: Option<SystemTime>,
    /// How the certificate was registered: pinned by an admin or the config,
    /// or on its first use under its supplier's `ura` identity policy.
    /// Absent in records written before issue 15: pinned.
    #[serde(default)]
    pub origin: IdentityOrigin,
}

/// How an identity came to be registered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityOrigin {
    /// Added by an admin (`certs add`) or from the config.
    #[default]
    Pinned,
    /// Registered on its first use: a UZI server certificate naming the URA of
    /// a supplier whose policy is `ura`.
    UraFirstUse,
}

impl IdentityOrigin {
    /// As shown by `admin certs list`.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityOrigin::Pinned => "pinned",
            IdentityOrigin::UraFirstUse => "ura",
        }
    }
}

/// How a supplier's certificates are recognised.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdentityPolicy {
    /// Only certificates registered one by one (their fingerprints).
    #[default]
    Pinned,
    /// Also any currently valid UZI server certificate (card type S) from the
    /// configured UZI server CA naming the supplier's URA.
    Ura,
}

impl IdentityPolicy {
    /// As written in the config and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityPolicy::Pinned => "pinned",
            IdentityPolicy::Ura => "ura",
        }
    }
}

impl Identity {
    /// Active at `now`: not revoked (any `revoked_at` counts), not retired
    /// (`now < retire_at`), not expired (`now <= not_after`, as in X.509).
    pub fn is_active(&self, now: SystemTime) -> bool {
        self.revoked_at.is_none()
            && self.retire_at.is_none_or(|at| now < at)
            && now <= self.not_after
    }
}

/// A healthcare software supplier allowed to submit records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Supplier {
    pub id: String,
    pub name: String,
    pub contact: String,
    pub suspended: bool,
    pub created_at: SystemTime,
    /// The organisation's URA (8 digits), if known. Absent in records written
    /// before issue 15.
    #[serde(default)]
    pub ura: Option<String>,
    /// How its certificates are recognised; absent before issue 15: pinned.
    #[serde(default)]
    pub identity_policy: IdentityPolicy,
}

/// serde helper: `SystemTime` as whole unix seconds.
mod unix_secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| serde::ser::Error::custom("time before the unix epoch"))?
            .as_secs();
        s.serialize_u64(secs)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = u64::deserialize(d)?;
        UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .ok_or_else(|| serde::de::Error::custom("unix seconds out of range"))
    }
}

/// Cheap, cloneable handle on the store. The last handle dropped stops the
/// commit thread (after a final sync round) and closes sled.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    path: PathBuf,
    db: sled::Db,
    /// Dedup index (`d`), queue (`q`) and delivery attempts (`n`): one tree so one
    /// batch makes dedup and enqueue atomic.
    records: sled::Tree,
    identities: sled::Tree,
    suppliers: sled::Tree,
    audit: sled::Tree,
    /// The write lock: serialises dedup check + sequence assignment + apply_batch
    /// so sequences are written in increasing order. Only taken in blocking
    /// code (spawn_blocking), never across an `.await`.
    write_lock: Mutex<()>,
    /// Highest sequence whose enqueue is known durable; `pull` never delivers above it.
    durable_seq: AtomicU64,
    /// Highest sequence ever handed out (upper bound at open: the id generator).
    highest_issued: AtomicU64,
    /// Queued, not acked (including leased) records.
    depth: AtomicU64,
    /// In-memory lease state: cursor, redeliveries, leases, attempts. Only taken
    /// in blocking code or briefly, never across an `.await`.
    queue: Mutex<QueueState>,
    /// Wakes long-polling `pull`s: notified after a submit's sync round made new
    /// records visible, and on release.
    notify: Notify,
    /// Set for good by the first failed write or sync.
    latch: Arc<Latch>,
    /// Test hook armed through `StoreOptions::sync_faults`.
    faults: SyncFaults,
    /// Test hook (unit tests only): the next N queue lookups of ack/release fail.
    #[cfg(test)]
    read_faults: std::sync::atomic::AtomicU32,
    /// Group commit (fsync) thread.
    commit: Committer,
}

impl Store {
    /// Opens (creating if absent) the store; starts the group-commit thread. A
    /// store that cannot be opened or whose contents fail to decode is an error,
    /// never a silent empty store.
    ///
    /// # Errors
    /// `Open` when sled cannot open the folder (or it is locked by another
    /// process), `Corrupt` when stored queue state, identities or suppliers fail
    /// to decode or the format version is unknown, `Io`/`Sled` on I/O failure.
    pub fn open(path: &Path, options: StoreOptions) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(options.cache_capacity_bytes)
            .flush_every_ms(options.flush_every_ms)
            .open()
            .map_err(|source| StoreError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let open_tree = |name: &str| {
            db.open_tree(name)
                .map_err(|e| StoreError::sled(format!("opening tree {name:?}"), e))
        };
        let records = open_tree("records")?;
        let identities = open_tree("identities")?;
        let suppliers = open_tree("suppliers")?;
        let audit = open_tree("audit")?;

        match db
            .get(FORMAT_KEY)
            .map_err(|e| StoreError::sled("reading the format version", e))?
        {
            Some(v) if v.as_ref() == [FORMAT_VERSION] => {}
            Some(v) => {
                return Err(StoreError::corrupt(
                    "format version",
                    format!("unsupported format version {:?}", v.as_ref()),
                ))
            }
            // sled recovers an unreadable log as an empty one; the sentinel
            // file tells that apart from a store that was never written.
            None if path.join(SENTINEL_FILE).exists() => {
                return Err(StoreError::corrupt(
                    "format version",
                    format!(
                        "{} holds a Schakel store but its data does not read back \
                         (the log is unreadable); refusing to start on an empty store. \
                         Restore the folder from a backup",
                        path.display()
                    ),
                ))
            }
            None => {
                db.insert(FORMAT_KEY, &[FORMAT_VERSION])
                    .map_err(|e| StoreError::sled("writing the format version", e))?;
                db.flush()
                    .map_err(|e| StoreError::sled("flushing the format version", e))?;
                commit::sync_path(&path.join("db"))?;
            }
        }
        if !path.join(SENTINEL_FILE).exists() {
            write_sentinel(path)?;
        }

        // Everything previously issued is below the generator's current value.
        let highest_issued = db
            .generate_id()
            .map_err(|e| StoreError::sled("reading the sequence generator", e))?;
        let loaded = queue::load(&records)?;
        // Decode identities and suppliers once so corruption is found at open.
        for item in identities.iter() {
            let (k, v) = item.map_err(|e| StoreError::sled("reading identities", e))?;
            decode_json::<Identity>(&v, || format!("identity {}", String::from_utf8_lossy(&k)))?;
        }
        for item in suppliers.iter() {
            let (k, v) = item.map_err(|e| StoreError::sled("reading suppliers", e))?;
            decode_json::<Supplier>(&v, || format!("supplier {}", String::from_utf8_lossy(&k)))?;
        }

        let flush_every = options.flush_every_ms.map(Duration::from_millis);
        let latch = Arc::new(Latch::new());
        let commit = Committer::start(
            db.clone(),
            path,
            flush_every,
            Arc::clone(&latch),
            options.sync_faults.clone(),
        )?;
        tracing::info!(
            path = %path.display(),
            depth = loaded.depth,
            max_sequence = loaded.max_seq,
            delivered_before = loaded.attempts.len(),
            "store opened"
        );
        let inner = Inner {
            path: path.to_path_buf(),
            db,
            records,
            identities,
            suppliers,
            audit,
            write_lock: Mutex::new(()),
            durable_seq: AtomicU64::new(loaded.max_seq),
            highest_issued: AtomicU64::new(highest_issued.max(loaded.max_seq)),
            depth: AtomicU64::new(loaded.depth),
            queue: Mutex::new(QueueState::new(
                loaded.attempts,
                options.max_deliveries,
                options.redelivery_backoff,
            )),
            notify: Notify::new(),
            latch,
            faults: options.sync_faults,
            #[cfg(test)]
            read_faults: std::sync::atomic::AtomicU32::new(0),
            commit,
        };
        Ok(Store {
            inner: Arc::new(inner),
        })
    }

    /// Stores (or replaces) an identity; synced to disk before return. Blocks the
    /// calling thread for one sync round (admin path).
    ///
    /// # Errors
    /// `Invalid` when the fingerprint is not 64 lowercase hex characters;
    /// `Sled`/`Io` when writing or syncing fails; `Closed` at shutdown.
    pub fn put_identity(&self, identity: &Identity) -> Result<(), StoreError> {
        if !is_fingerprint(&identity.fingerprint) {
            return Err(StoreError::Invalid(
                "identity fingerprint must be 64 lowercase hex characters".into(),
            ));
        }
        self.inner.latch.check()?;
        let value = encode_json(identity, "identity")?;
        self.inner
            .identities
            .insert(identity.fingerprint.as_bytes(), value)
            .map_err(|e| {
                self.inner
                    .write_failed(&format!("writing identity {}", identity.fingerprint), e)
            })?;
        self.inner.commit.sync_blocking()
    }

    /// Looks up the identity of a certificate fingerprint (hot path: one sled get
    /// and a small JSON decode). Unknown or malformed fingerprints give `None`.
    ///
    /// # Errors
    /// `Sled` when reading fails, `Corrupt` when the stored identity does not decode.
    pub fn identity(&self, fingerprint: &str) -> Result<Option<Identity>, StoreError> {
        let Some(v) = self
            .inner
            .identities
            .get(fingerprint.as_bytes())
            .map_err(|e| {
                self.inner
                    .read_failed(format!("reading identity {fingerprint}"), e)
            })?
        else {
            return Ok(None);
        };
        decode_json(&v, || format!("identity {fingerprint}")).map(Some)
    }

    /// All identities, ordered by fingerprint.
    ///
    /// # Errors
    /// `Sled` when reading fails, `Corrupt` when one does not decode.
    pub fn identities(&self) -> Result<Vec<Identity>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.identities.iter() {
            let (k, v) = item.map_err(|e| StoreError::sled("reading identities", e))?;
            out.push(decode_json(&v, || {
                format!("identity {}", String::from_utf8_lossy(&k))
            })?);
        }
        Ok(out)
    }

    /// Stores (or replaces) a supplier; synced to disk before return. Blocks the
    /// calling thread for one sync round (admin path).
    ///
    /// # Errors
    /// `Invalid` when the id is empty or contains a NUL byte; `Sled`/`Io` when
    /// writing or syncing fails; `Closed` at shutdown.
    pub fn put_supplier(&self, supplier: &Supplier) -> Result<(), StoreError> {
        validate_supplier_id(&supplier.id)?;
        self.inner.latch.check()?;
        let value = encode_json(supplier, "supplier")?;
        self.inner
            .suppliers
            .insert(supplier.id.as_bytes(), value)
            .map_err(|e| {
                self.inner
                    .write_failed(&format!("writing supplier {}", supplier.id), e)
            })?;
        self.inner.commit.sync_blocking()
    }

    /// Looks up a supplier by id.
    ///
    /// # Errors
    /// `Sled` when reading fails, `Corrupt` when the stored supplier does not decode.
    pub fn supplier(&self, id: &str) -> Result<Option<Supplier>, StoreError> {
        let Some(v) = self
            .inner
            .suppliers
            .get(id.as_bytes())
            .map_err(|e| self.inner.read_failed(format!("reading supplier {id}"), e))?
        else {
            return Ok(None);
        };
        decode_json(&v, || format!("supplier {id}")).map(Some)
    }

    /// All suppliers, ordered by id.
    ///
    /// # Errors
    /// `Sled` when reading fails, `Corrupt` when one does not decode.
    pub fn suppliers(&self) -> Result<Vec<Supplier>, StoreError> {
        let mut out = Vec::new();
        for item in self.inner.suppliers.iter() {
            let (k, v) = item.map_err(|e| StoreError::sled("reading suppliers", e))?;
            out.push(decode_json(&v, || {
                format!("supplier {}", String::from_utf8_lossy(&k))
            })?);
        }
        Ok(out)
    }

    /// Disk usage of the data folder in bytes (sled's size_on_disk).
    ///
    /// # Errors
    /// `Sled` when sled cannot measure its files.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner
            .db
            .size_on_disk()
            .map_err(|e| StoreError::sled(format!("measuring {}", self.inner.path.display()), e))
    }

    /// The first failed write or sync, once the store has failed: from then on
    /// every write answers `StoreError::Failed` until the process restarts.
    pub fn failure(&self) -> Option<Arc<StoreFailure>> {
        self.inner.latch.failure()
    }

    /// Sync rounds that failed since open (at most one: the first latches).
    pub fn sync_failures(&self) -> u64 {
        self.inner.latch.sync_failures()
    }

    /// Resolves once the store has failed (health and metrics watch this).
    pub async fn failed(&self) {
        self.inner.latch.failed().await;
    }

    /// Test hook: the sync-fault injection point of this store.
    #[doc(hidden)]
    pub fn sync_faults(&self) -> &SyncFaults {
        &self.inner.faults
    }

    /// Test hook (unit tests): the next `n` queue lookups of ack and release fail.
    #[cfg(test)]
    pub(crate) fn fail_next_reads(&self, n: u32) {
        self.inner.read_faults.store(n, Ordering::Release);
    }

    /// Makes everything written so far durable (used at shutdown).
    ///
    /// # Errors
    /// `Io` when the flush or fsync fails, `Closed` when the commit thread is
    /// gone, `Failed` once the store has failed.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.inner.latch.check()?;
        // Every sequence up to `covered` is applied once the write lock is free
        // (ids are generated and applied under it); the round then covers them.
        let inner = Arc::clone(&self.inner);
        let covered = tokio::task::spawn_blocking(move || {
            let _guard = lock(&inner.write_lock);
            inner.highest_issued.load(Ordering::Acquire)
        })
        .await
        .map_err(join_error)?;
        self.inner.commit.sync().await?;
        self.inner.raise_durable(covered);
        Ok(())
    }
}

impl Inner {
    /// A sled write failed: the store is failed from now on (the write may be
    /// half applied in sled's memory, and sled keeps an I/O error latched too).
    pub(crate) fn write_failed(&self, context: &str, e: sled::Error) -> StoreError {
        self.latch.trip(context, &e)
    }

    /// A sled read failed: once the store has failed (sled may then refuse
    /// reads too) that is the answer, else the read error itself.
    pub(crate) fn read_failed(&self, context: String, e: sled::Error) -> StoreError {
        match self.latch.check() {
            Err(failed) => failed,
            Ok(()) => StoreError::sled(context, e),
        }
    }

    /// Raises the durability watermark and wakes long-polls when it moved.
    fn raise_durable(&self, seq: u64) {
        let before = self.durable_seq.fetch_max(seq, Ordering::AcqRel);
        if seq > before {
            self.notify.notify_waiters();
        }
    }
}

fn is_fingerprint(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(crate) fn validate_supplier_id(id: &str) -> Result<(), StoreError> {
    if id.is_empty() || id.as_bytes().contains(&0) {
        return Err(StoreError::Invalid(
            "supplier id must be non-empty and contain no NUL byte".into(),
        ));
    }
    Ok(())
}

fn encode_json<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Invalid(format!("encoding {what}: {e}")))
}

fn decode_json<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
    what: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::corrupt(what(), e.to_string()))
}

#[cfg(test)]
mod compat_tests {
    use super::*;

    /// Records as written before issue 15 (no `ura`, `identity_policy` or
    /// `origin`), put into sled's trees as they were, read by a real store.
    #[tokio::test]
    async fn suppliers_and_identities_written_before_issue_15_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let fp = "ab".repeat(32);
        {
            let db = sled::open(dir.path()).unwrap();
            db.open_tree("suppliers")
                .unwrap()
                .insert(
                    "his-a",
                    &br#"{"id":"his-a","name":"HIS A","contact":"","suspended":true,"created_at":{"secs_since_epoch":1700000000,"nanos_since_epoch":5}}"#[..],
                )
                .unwrap();
            let identity = format!(
                r#"{{"fingerprint":"{fp}","role":"supplier","name":"his-a 2024","supplier_id":"his-a","subject":"CN=his-a","serial":"01","not_after":2000000000,"added_at":{{"secs_since_epoch":1700000000,"nanos_since_epoch":0}},"retire_at":null,"revoked_at":null}}"#
            );
            db.open_tree("identities")
                .unwrap()
                .insert(fp.as_bytes(), identity.as_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let supplier = store.supplier("his-a").unwrap().unwrap();
        assert_eq!(supplier.ura, None);
        assert_eq!(supplier.identity_policy, IdentityPolicy::Pinned);
        assert!(supplier.suspended);
        let identity = store.identity(&fp).unwrap().unwrap();
        assert_eq!(identity.origin, IdentityOrigin::Pinned);
        assert_eq!(identity.supplier_id.as_deref(), Some("his-a"));
        // And a new record keeps its new fields.
        let mut renewed = supplier.clone();
        renewed.ura = Some("90000001".into());
        renewed.identity_policy = IdentityPolicy::Ura;
        store.put_supplier(&renewed).unwrap();
        assert_eq!(store.supplier("his-a").unwrap(), Some(renewed));
    }
}
