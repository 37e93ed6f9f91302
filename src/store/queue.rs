//! Intake and delivery: dedup + enqueue (`submit`), leasing (`pull`), removal
//! (`ack`) and giving back (`release`), plus the binary encoding of the
//! "records" tree and the in-memory lease state.
//!
//! Layout of the "records" tree (one tree, so one `sled::Batch` makes dedup and
//! enqueue atomic):
//! - `d` + supplier_id + 0x00 + message_id -> version(1) + sequence (u64 BE) +
//!   first 16 bytes of SHA-256(content). Never removed: dedup memory is permanent.
//! - `q` + sequence (u64 BE) -> version(1) + received_at unix ms (u64 BE) +
//!   3 x (len u32 BE + bytes: supplier_id, message_id, batch_id) + content (rest).
//! - `n` + sequence (u64 BE) -> delivery attempts so far (u32 BE), unsynced.
//!   Written only from the second delivery on (or on the first when
//!   `max_deliveries` is 1, so that limit holds across restarts): no `n` key
//!   means at most one delivery, so the common pull + ack of a record costs no
//!   `n` insert and one remove. Consequence: a record delivered once and not
//!   acked before a restart is delivered as attempt 1 again; from attempt 2 on
//!   the count survives restarts (dead letters and backoff rely on that).
//!   `load` removes `n` keys left without a queue entry (e.g. written under an
//!   older rule or another `max_deliveries` and not removed by the ack).
//! - `x` + sequence (u64 BE) -> a dead letter (see `dead_letters`): a record
//!   delivered `max_deliveries` times without an ack, out of the queue.
//!
//! Must not: hold the write lock or the queue lock across an `.await` (all sled
//! work runs in `spawn_blocking`), deliver a record before its enqueue is durable,
//! load the whole queue into memory, or log/put record content into errors.
//! Called by the service layer through the `Store` methods defined here.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::{join_error, lock, validate_supplier_id, Inner, Store, StoreError};

const ENTRY_VERSION: u8 = 1;
const DEDUP_VERSION: u8 = 1;
const DEDUP_LEN: usize = 1 + 8 + 16;
/// Leases and long-poll waits are clamped to this, so `Instant` arithmetic
/// cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// One valid record of a batch, already normalised and encoded by the caller.
pub struct NewRecord {
    pub message_id: String,
    /// The encoded, normalised record. Opaque to the store; never logged.
    pub content: Vec<u8>,
}

impl fmt::Debug for NewRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewRecord")
            .field("message_id", &self.message_id)
            .field("content_len", &self.content.len())
            .finish()
    }
}

/// What happened to one submitted record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitOutcome {
    /// Newly queued under `sequence`.
    Accepted { sequence: u64 },
    /// Same supplier + message id with identical content was queued before as `sequence`.
    Duplicate { sequence: u64 },
    /// Same supplier + message id with different content exists as `sequence`; nothing written.
    Conflict { sequence: u64 },
}

/// One leased record handed to the registry.
#[derive(Clone)]
pub struct Delivery {
    pub sequence: u64,
    pub supplier_id: String,
    pub message_id: String,
    pub batch_id: String,
    pub received_at: SystemTime,
    /// 1 for the first delivery; counts across restarts.
    pub attempt: u32,
    pub lease_token: String,
    pub lease_expires_at: SystemTime,
    /// Never logged (the `Debug` impl shows only its length).
    pub content: Vec<u8>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("sequence", &self.sequence)
            .field("supplier_id", &self.supplier_id)
            .field("message_id", &self.message_id)
            .field("batch_id", &self.batch_id)
            .field("received_at", &self.received_at)
            .field("attempt", &self.attempt)
            .field("lease_token", &self.lease_token)
            .field("lease_expires_at", &self.lease_expires_at)
            .field("content_len", &self.content.len())
            .finish()
    }
}

/// Result of one ack/release token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenOutcome {
    Acked,
    AlreadyAcked,
    LeaseExpired,
    Unknown,
    Released,
    AlreadyReleased,
}

/// Outcome of one token; `sequence` is `None` only for `Unknown`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResult {
    pub outcome: TokenOutcome,
    pub sequence: Option<u64>,
}

/// How much one Pull answer may carry: records are leased only while the sum
/// of their stored size plus `per_record` stays within `max_bytes`. The first
/// record of an answer is always leased, so one record too large for any
/// answer cannot stall the queue (it fails to be sent, and after
/// `max_deliveries` attempts it is a dead letter an operator can see).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullBudget {
    /// Most bytes of one answer.
    pub max_bytes: usize,
    /// Bytes a delivered record costs beyond its stored entry (the caller's
    /// framing: field tags, lengths, token, timestamps).
    pub per_record: usize,
}

impl PullBudget {
    /// No byte limit.
    pub const UNLIMITED: PullBudget = PullBudget {
        max_bytes: usize::MAX,
        per_record: 0,
    };
}

/// Queue gauges.
#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    /// Queued, not acked, including leased (and enqueues not yet durable).
    pub depth: u64,
    /// Currently under an unexpired lease.
    pub leased: u64,
    pub oldest_received_at: Option<SystemTime>,
}

// ---------------------------------------------------------------- encoding

fn dedup_key(supplier_id: &str, message_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + supplier_id.len() + message_id.len());
    k.push(b'd');
    k.extend_from_slice(supplier_id.as_bytes());
    k.push(0);
    k.extend_from_slice(message_id.as_bytes());
    k
}

pub(super) fn seq_key(prefix: u8, seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = prefix;
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

pub(super) fn queue_key(seq: u64) -> [u8; 9] {
    seq_key(b'q', seq)
}

pub(super) fn attempt_key(seq: u64) -> [u8; 9] {
    seq_key(b'n', seq)
}

pub(super) fn decode_seq_key(prefix: u8, key: &[u8]) -> Result<u64, StoreError> {
    match key {
        [p, rest @ ..] if *p == prefix && rest.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(rest);
            Ok(u64::from_be_bytes(b))
        }
        _ => Err(StoreError::corrupt(
            format!("records key with prefix {:?}", prefix as char),
            format!("expected 9 bytes, found {}", key.len()),
        )),
    }
}

type ContentHash = [u8; 16];

fn content_hash(content: &[u8]) -> ContentHash {
    let digest = Sha256::digest(content);
    let mut h = [0u8; 16];
    h.copy_from_slice(&digest[..16]);
    h
}

fn encode_dedup(seq: u64, hash: &ContentHash) -> [u8; DEDUP_LEN] {
    let mut v = [0u8; DEDUP_LEN];
    v[0] = DEDUP_VERSION;
    v[1..9].copy_from_slice(&seq.to_be_bytes());
    v[9..].copy_from_slice(hash);
    v
}

fn decode_dedup(
    value: &[u8],
    what: impl FnOnce() -> String,
) -> Result<(u64, ContentHash), StoreError> {
    if value.len() != DEDUP_LEN || value[0] != DEDUP_VERSION {
        return Err(StoreError::corrupt(
            what(),
            format!(
                "dedup entry of {} bytes with version {:?}",
                value.len(),
                value.first()
            ),
        ));
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&value[1..9]);
    let mut h = [0u8; 16];
    h.copy_from_slice(&value[9..]);
    Ok((u64::from_be_bytes(s), h))
}

fn encode_entry(
    received_ms: u64,
    supplier_id: &str,
    message_id: &str,
    batch_id: &str,
    content: &[u8],
) -> Result<Vec<u8>, StoreError> {
    let mut v = Vec::with_capacity(
        1 + 8 + 12 + supplier_id.len() + message_id.len() + batch_id.len() + content.len(),
    );
    v.push(ENTRY_VERSION);
    v.extend_from_slice(&received_ms.to_be_bytes());
    for field in [supplier_id, message_id, batch_id] {
        let len = u32::try_from(field.len())
            .map_err(|_| StoreError::Invalid("identifier longer than 4 GiB".into()))?;
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(field.as_bytes());
    }
    v.extend_from_slice(content);
    Ok(v)
}

/// A decoded queue entry borrowing from the stored value.
pub(super) struct Entry<'a> {
    pub(super) received_at: SystemTime,
    pub(super) supplier_id: &'a str,
    pub(super) message_id: &'a str,
    pub(super) batch_id: &'a str,
    pub(super) content: &'a [u8],
}

pub(super) fn decode_entry(seq: u64, value: &[u8]) -> Result<Entry<'_>, StoreError> {
    let what = || format!("queue entry {seq}");
    let mut r = Reader { buf: value };
    let version = r
        .take(1)
        .ok_or_else(|| StoreError::corrupt(what(), "empty value"))?[0];
    if version != ENTRY_VERSION {
        return Err(StoreError::corrupt(
            what(),
            format!("unknown entry version {version}"),
        ));
    }
    let ms = r
        .u64()
        .ok_or_else(|| StoreError::corrupt(what(), "truncated received_at"))?;
    let received_at = UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .ok_or_else(|| StoreError::corrupt(what(), "received_at out of range"))?;
    let mut fields = ["supplier_id", "message_id", "batch_id"].map(|name| (name, ""));
    for (name, out) in fields.iter_mut() {
        let bytes = r
            .len_prefixed()
            .ok_or_else(|| StoreError::corrupt(what(), format!("truncated {name}")))?;
        *out = std::str::from_utf8(bytes)
            .map_err(|_| StoreError::corrupt(what(), format!("{name} is not UTF-8")))?;
    }
    let [(_, supplier_id), (_, message_id), (_, batch_id)] = fields;
    Ok(Entry {
        received_at,
        supplier_id,
        message_id,
        batch_id,
        content: r.buf,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Some(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Option<u64> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Some(u64::from_be_bytes(b))
    }

    fn len_prefixed(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u32()?).ok()?;
        self.take(len)
    }
}

fn decode_attempts(seq: u64, value: &[u8]) -> Result<u32, StoreError> {
    let b: [u8; 4] = value.try_into().map_err(|_| {
        StoreError::corrupt(
            format!("attempt counter {seq}"),
            format!("expected 4 bytes, found {}", value.len()),
        )
    })?;
    Ok(u32::from_be_bytes(b))
}

/// Lease token: lowercase hex of sequence (u64 BE) + attempt (u32 BE) + nonce (u64 BE).
fn encode_token(seq: u64, attempt: u32, nonce: u64) -> String {
    let mut b = [0u8; 20];
    b[..8].copy_from_slice(&seq.to_be_bytes());
    b[8..12].copy_from_slice(&attempt.to_be_bytes());
    b[12..].copy_from_slice(&nonce.to_be_bytes());
    hex::encode(b)
}

fn decode_token(token: &str) -> Option<(u64, u32, u64)> {
    if token.len() != 40 {
        return None;
    }
    let bytes = hex::decode(token).ok()?;
    let mut r = Reader { buf: &bytes };
    Some((r.u64()?, r.u32()?, r.u64()?))
}

pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

// ---------------------------------------------------------------- open

/// Queue facts read once at open.
pub(crate) struct Loaded {
    pub(crate) max_seq: u64,
    pub(crate) depth: u64,
    pub(crate) attempts: HashMap<u64, u32>,
}

/// Counts and validates the queue and loads the attempt counters.
///
/// # Errors
/// `Sled` on read failure, `Corrupt` when a key or entry header fails to decode.
pub(crate) fn load(records: &sled::Tree) -> Result<Loaded, StoreError> {
    let mut depth = 0u64;
    let mut max_seq = 0u64;
    for item in records.scan_prefix([b'q']) {
        let (k, v) = item.map_err(|e| StoreError::sled("counting the queue at open", e))?;
        let seq = decode_seq_key(b'q', &k)?;
        decode_entry(seq, &v)?;
        depth += 1;
        max_seq = max_seq.max(seq);
    }
    let mut attempts = HashMap::new();
    let mut orphans = sled::Batch::default();
    let mut orphan_count = 0usize;
    for item in records.scan_prefix([b'n']) {
        let (k, v) = item.map_err(|e| StoreError::sled("loading delivery attempts at open", e))?;
        let seq = decode_seq_key(b'n', &k)?;
        let queued = records
            .contains_key(queue_key(seq))
            .map_err(|e| StoreError::sled("loading delivery attempts at open", e))?;
        if queued {
            attempts.insert(seq, decode_attempts(seq, &v)?);
        } else {
            orphans.remove(k);
            orphan_count += 1;
        }
    }
    if orphan_count > 0 {
        records
            .apply_batch(orphans)
            .map_err(|e| StoreError::sled("removing stale delivery attempts at open", e))?;
        tracing::info!(
            removed = orphan_count,
            "removed delivery counters of records no longer queued"
        );
    }
    Ok(Loaded {
        max_seq,
        depth,
        attempts,
    })
}

// ---------------------------------------------------------------- lease state

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseState {
    Active,
    Released,
    Expired,
}

/// The delivery a redelivery replaced, kept to answer its token precisely.
#[derive(Debug, Clone, Copy)]
struct PastLease {
    attempt: u32,
    nonce: u64,
    released: bool,
}

#[derive(Debug)]
struct Lease {
    attempt: u32,
    nonce: u64,
    deadline: Instant,
    state: LeaseState,
    previous: Option<PastLease>,
}

impl Lease {
    fn matches(&self, attempt: u32, nonce: u64) -> bool {
        self.attempt == attempt && self.nonce == nonce
    }
}

/// In-memory delivery state. Leases do not survive a restart (at-least-once).
pub(crate) struct QueueState {
    /// Highest sequence handed out by the forward scan; everything queued at or
    /// below it is leased or waiting in `redeliver`.
    cursor: u64,
    /// Expired or released sequences to deliver again, lowest first.
    pub(super) redeliver: BTreeSet<u64>,
    /// Latest delivery per sequence (active, released or expired), until acked.
    leases: HashMap<u64, Lease>,
    /// Deadlines of active leases, earliest first.
    deadlines: BTreeSet<(Instant, u64)>,
    /// Delivery attempts so far per delivered, unacked sequence (mirrors `n` keys).
    pub(super) attempts: HashMap<u64, u32>,
    /// Expired sequences waiting out their redelivery backoff: (ready at, sequence).
    delayed: BTreeSet<(Instant, u64)>,
    /// Deliveries without an ack after which a record becomes a dead letter (0: never).
    pub(super) max_deliveries: u32,
    /// Backoff before the second redelivery; doubles per further attempt.
    backoff: Duration,
    /// Counters since open, for metrics.
    pub(super) counters: QueueCounters,
}

/// Queue event counters since the store was opened (they restart at zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Records handed out by `pull` (every attempt).
    pub delivered: u64,
    /// Records acknowledged.
    pub acked: u64,
    /// Leases that ran out without an ack or release.
    pub leases_expired: u64,
    /// Records moved to the dead letters.
    pub dead_lettered: u64,
}

/// Longest redelivery backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// The wait before delivering again a record whose attempt `attempt` expired:
/// none after the first, then `base`, doubling, capped at [`MAX_BACKOFF`].
pub(super) fn backoff_for(base: Duration, attempt: u32) -> Duration {
    if attempt <= 1 || base.is_zero() {
        return Duration::ZERO;
    }
    let factor = 1u32 << (attempt - 2).min(20);
    base.saturating_mul(factor).min(MAX_BACKOFF)
}

impl QueueState {
    pub(crate) fn new(
        attempts: HashMap<u64, u32>,
        max_deliveries: u32,
        backoff: Duration,
    ) -> QueueState {
        QueueState {
            cursor: 0,
            redeliver: BTreeSet::new(),
            leases: HashMap::new(),
            deadlines: BTreeSet::new(),
            attempts,
            delayed: BTreeSet::new(),
            max_deliveries,
            backoff: backoff.min(MAX_BACKOFF),
            counters: QueueCounters::default(),
        }
    }

    /// Whether delivery `attempt` of a record is written as its `n` key (and so
    /// must be removed with it): from the second delivery on, or always when a
    /// single delivery is the limit.
    pub(super) fn records_attempt(&self, attempt: u32) -> bool {
        attempt >= 2 || self.max_deliveries == 1
    }

    /// Whether `seq` has used up its deliveries and must become a dead letter.
    pub(super) fn exhausted(&self, seq: u64) -> bool {
        self.max_deliveries != 0
            && self.attempts.get(&seq).copied().unwrap_or(0) >= self.max_deliveries
    }

    /// When a long-poll should look again: the earliest lease deadline or end
    /// of a backoff.
    fn next_wake(&self) -> Option<Instant> {
        let lease = self.deadlines.first().map(|&(d, _)| d);
        let delayed = self.delayed.first().map(|&(d, _)| d);
        match (lease, delayed) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Moves every active lease whose deadline has passed to `redeliver`.
    pub(super) fn reap(&mut self, now: Instant) {
        while let Some(&(deadline, seq)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(lease) = self.leases.get_mut(&seq) {
                if lease.state == LeaseState::Active && lease.deadline == deadline {
                    lease.state = LeaseState::Expired;
                    self.counters.leases_expired += 1;
                    let delay = backoff_for(self.backoff, lease.attempt);
                    match deadline.checked_add(delay) {
                        Some(ready) if !delay.is_zero() => {
                            self.delayed.insert((ready, seq));
                        }
                        _ => {
                            self.redeliver.insert(seq);
                        }
                    }
                }
            }
        }
        while let Some(&(ready, seq)) = self.delayed.first() {
            if ready > now {
                break;
            }
            self.delayed.pop_first();
            self.redeliver.insert(seq);
        }
    }

    pub(super) fn drop_lease(&mut self, seq: u64) {
        if let Some(lease) = self.leases.remove(&seq) {
            self.deadlines.remove(&(lease.deadline, seq));
        }
    }
}

// ---------------------------------------------------------------- blocking parts

struct Submitted {
    outcomes: Vec<SubmitOutcome>,
    accepted: u64,
    /// Highest sequence an Accepted/Duplicate outcome refers to: it must be
    /// durable before the caller is answered.
    needed: u64,
    /// Highest sequence issued when the write lock was released: every sequence
    /// up to it is applied, so the next sync round makes them all durable.
    watermark: u64,
}

struct Prepared {
    dedup_key: Vec<u8>,
    hash: ContentHash,
    entry: Vec<u8>,
}

impl Inner {
    fn submit_blocking(
        &self,
        supplier_id: &str,
        batch_id: &str,
        records: &[NewRecord],
    ) -> Result<Submitted, StoreError> {
        let received_ms = unix_ms(SystemTime::now());
        // Hashing and encoding happen before the write lock is taken.
        let prepared = records
            .iter()
            .map(|r| {
                Ok(Prepared {
                    dedup_key: dedup_key(supplier_id, &r.message_id),
                    hash: content_hash(&r.content),
                    entry: encode_entry(
                        received_ms,
                        supplier_id,
                        &r.message_id,
                        batch_id,
                        &r.content,
                    )?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;

        let _write = lock(&self.write_lock);
        let mut batch = sled::Batch::default();
        let mut in_batch: HashMap<&str, (u64, ContentHash)> = HashMap::new();
        let mut outcomes = Vec::with_capacity(records.len());
        let mut accepted = 0u64;
        let mut needed = 0u64;
        for (record, p) in records.iter().zip(prepared) {
            let existing = match in_batch.get(record.message_id.as_str()) {
                Some(&found) => Some(found),
                None => match self.records.get(&p.dedup_key).map_err(|e| {
                    StoreError::sled(format!("reading dedup entry of supplier {supplier_id}"), e)
                })? {
                    Some(v) => Some(decode_dedup(&v, || {
                        format!(
                            "dedup entry of supplier {supplier_id} message {}",
                            record.message_id
                        )
                    })?),
                    None => None,
                },
            };
            let outcome = match existing {
                Some((sequence, hash)) if hash == p.hash => {
                    needed = needed.max(sequence);
                    SubmitOutcome::Duplicate { sequence }
                }
                Some((sequence, _)) => SubmitOutcome::Conflict { sequence },
                None => {
                    let generated = self
                        .db
                        .generate_id()
                        .map_err(|e| self.write_failed("generating a sequence", e))?;
                    // Defensive: never reuse a sequence, even if the generator regressed.
                    let sequence = generated.saturating_add(1).max(
                        self.highest_issued
                            .load(Ordering::Acquire)
                            .saturating_add(1),
                    );
                    self.highest_issued.store(sequence, Ordering::Release);
                    batch.insert(p.dedup_key, &encode_dedup(sequence, &p.hash)[..]);
                    batch.insert(&queue_key(sequence)[..], p.entry);
                    in_batch.insert(&record.message_id, (sequence, p.hash));
                    accepted += 1;
                    needed = needed.max(sequence);
                    SubmitOutcome::Accepted { sequence }
                }
            };
            outcomes.push(outcome);
        }
        if accepted > 0 {
            self.records.apply_batch(batch).map_err(|e| {
                self.write_failed(
                    &format!("writing batch {batch_id} of supplier {supplier_id}"),
                    e,
                )
            })?;
            self.depth.fetch_add(accepted, Ordering::AcqRel);
        }
        Ok(Submitted {
            outcomes,
            accepted,
            needed,
            watermark: self.highest_issued.load(Ordering::Acquire),
        })
    }

    /// One non-waiting pull attempt. Returns the deliveries and the earliest
    /// deadline of an active lease (when a long-poll should look again).
    fn pull_blocking(
        &self,
        max: usize,
        budget: PullBudget,
        lease: Duration,
    ) -> Result<(Vec<Delivery>, Option<Instant>), StoreError> {
        let lease = lease.min(MAX_DURATION);
        let now = Instant::now();
        let deadline = now.checked_add(lease).unwrap_or(now);
        let now_sys = SystemTime::now();
        let expires_at = now_sys.checked_add(lease).unwrap_or(now_sys);

        let mut q = lock(&self.queue);
        q.reap(now);
        let mut out = Vec::new();
        // Bytes of the answer so far; a record is leased only if it fits
        // (checked before leasing, so nothing is counted as delivered that
        // the answer cannot carry).
        let mut used = 0usize;
        let mut fits = |out_len: usize, value: &[u8]| {
            let size = value.len().saturating_add(budget.per_record);
            if out_len > 0 && used.saturating_add(size) > budget.max_bytes {
                return false;
            }
            used = used.saturating_add(size);
            true
        };
        let mut full = false;
        let mut attempts_batch = sled::Batch::default();
        let mut attempts_written = false;
        let mut lease_one = |q: &mut QueueState, seq: u64, value: &[u8]| {
            let entry = decode_entry(seq, value)?;
            let attempt = q.attempts.get(&seq).copied().unwrap_or(0).saturating_add(1);
            let nonce: u64 = rand::random();
            let previous = q.leases.get(&seq).map(|l| PastLease {
                attempt: l.attempt,
                nonce: l.nonce,
                released: l.state == LeaseState::Released,
            });
            q.drop_lease(seq);
            q.leases.insert(
                seq,
                Lease {
                    attempt,
                    nonce,
                    deadline,
                    state: LeaseState::Active,
                    previous,
                },
            );
            q.deadlines.insert((deadline, seq));
            q.attempts.insert(seq, attempt);
            if q.records_attempt(attempt) {
                attempts_batch.insert(&attempt_key(seq)[..], &attempt.to_be_bytes()[..]);
                attempts_written = true;
            }
            Ok::<_, StoreError>(Delivery {
                sequence: seq,
                supplier_id: entry.supplier_id.to_owned(),
                message_id: entry.message_id.to_owned(),
                batch_id: entry.batch_id.to_owned(),
                received_at: entry.received_at,
                attempt,
                lease_token: encode_token(seq, attempt, nonce),
                lease_expires_at: expires_at,
                content: entry.content.to_vec(),
            })
        };

        // Redeliveries first, lowest sequence first.
        while out.len() < max {
            let Some(seq) = q.redeliver.pop_first() else {
                break;
            };
            let value = match self.records.get(queue_key(seq)) {
                Ok(Some(v)) => v,
                Ok(None) => {
                    // Acked in the meantime.
                    q.drop_lease(seq);
                    q.attempts.remove(&seq);
                    continue;
                }
                Err(e) => {
                    q.redeliver.insert(seq);
                    return Err(StoreError::sled(format!("reading queue entry {seq}"), e));
                }
            };
            if q.exhausted(seq) {
                if let Err(e) = self.bury(&mut q, seq, &value) {
                    q.redeliver.insert(seq);
                    return Err(e);
                }
                continue;
            }
            if !fits(out.len(), &value) {
                q.redeliver.insert(seq);
                full = true;
                break;
            }
            match lease_one(&mut q, seq, &value) {
                Ok(d) => out.push(d),
                Err(e) => {
                    q.redeliver.insert(seq);
                    return Err(e);
                }
            }
        }

        // Then the forward scan over durable entries past the cursor.
        let durable = self.durable_seq.load(Ordering::Acquire);
        if !full && out.len() < max && q.cursor < durable {
            let range = queue_key(q.cursor + 1)..=queue_key(durable);
            for item in self.records.range(range) {
                let (k, v) = item.map_err(|e| StoreError::sled("scanning the queue", e))?;
                let seq = decode_seq_key(b'q', &k)?;
                if !q.leases.contains_key(&seq) && !q.redeliver.contains(&seq) {
                    if q.exhausted(seq) {
                        // Delivered often enough before a restart.
                        self.bury(&mut q, seq, &v)?;
                    } else if fits(out.len(), &v) {
                        out.push(lease_one(&mut q, seq, &v)?);
                    } else {
                        // Left for the next pull: the cursor stays before it.
                        break;
                    }
                }
                q.cursor = seq;
                if out.len() >= max {
                    break;
                }
            }
        }

        if attempts_written {
            self.records
                .apply_batch(attempts_batch)
                .map_err(|e| self.write_failed("recording delivery attempts", e))?;
            self.commit.mark_dirty();
        }
        if !out.is_empty() {
            q.counters.delivered += out.len() as u64;
        }
        let next_deadline = q.next_wake();
        Ok((out, next_deadline))
    }

    /// Decodes a token and checks its sequence was ever issued.
    fn issued_token(&self, token: &str) -> Option<(u64, u32, u64)> {
        let issued = self.highest_issued.load(Ordering::Acquire);
        decode_token(token).filter(|&(seq, _, _)| seq != 0 && seq <= issued)
    }

    fn is_queued(&self, seq: u64) -> Result<bool, StoreError> {
        #[cfg(test)]
        if self
            .read_faults
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::Io {
                context: format!("reading queue entry {seq} (injected fault)"),
                source: std::io::Error::from_raw_os_error(5),
            });
        }
        self.records
            .contains_key(queue_key(seq))
            .map_err(|e| StoreError::sled(format!("reading queue entry {seq}"), e))
    }

    /// Returns the results and whether a sync round must precede the answer.
    /// Nothing changes in memory before every token is judged and the removals
    /// are written: a failed read or write leaves every lease as it was, so
    /// the records are delivered again (or a retried ack succeeds).
    fn ack_blocking(&self, tokens: &[String]) -> Result<(Vec<TokenResult>, bool), StoreError> {
        let mut q = lock(&self.queue);
        q.reap(Instant::now());
        let mut results = Vec::with_capacity(tokens.len());
        let mut batch = sled::Batch::default();
        let mut acked: HashSet<u64> = HashSet::new();
        let mut needs_sync = false;
        for token in tokens {
            let Some((seq, attempt, nonce)) = self.issued_token(token) else {
                results.push(TokenResult {
                    outcome: TokenOutcome::Unknown,
                    sequence: None,
                });
                continue;
            };
            // After `reap`, an active lease has not expired.
            let active = q
                .leases
                .get(&seq)
                .is_some_and(|l| l.matches(attempt, nonce) && l.state == LeaseState::Active);
            let outcome = if acked.contains(&seq) {
                needs_sync = true;
                TokenOutcome::AlreadyAcked
            } else if active {
                batch.remove(&queue_key(seq)[..]);
                if q.records_attempt(attempt) {
                    batch.remove(&attempt_key(seq)[..]);
                }
                acked.insert(seq);
                needs_sync = true;
                TokenOutcome::Acked
            } else if !self.is_queued(seq)? && !self.is_dead(seq)? {
                needs_sync = true;
                TokenOutcome::AlreadyAcked
            } else {
                TokenOutcome::LeaseExpired
            };
            results.push(TokenResult {
                outcome,
                sequence: Some(seq),
            });
        }
        if !acked.is_empty() {
            // On failure nothing was removed and the leases stand: they expire
            // and the records are delivered again.
            self.records
                .apply_batch(batch)
                .map_err(|e| self.write_failed("removing acked records", e))?;
            for seq in &acked {
                q.drop_lease(*seq);
                q.attempts.remove(seq);
            }
            q.counters.acked += acked.len() as u64;
            self.depth.fetch_sub(acked.len() as u64, Ordering::AcqRel);
        }
        Ok((results, needs_sync))
    }

    fn release_blocking(&self, tokens: &[String]) -> Result<Vec<TokenResult>, StoreError> {
        let mut q = lock(&self.queue);
        q.reap(Instant::now());
        let mut results = Vec::with_capacity(tokens.len());
        let mut released = 0usize;
        for token in tokens {
            let Some((seq, attempt, nonce)) = self.issued_token(token) else {
                results.push(TokenResult {
                    outcome: TokenOutcome::Unknown,
                    sequence: None,
                });
                continue;
            };
            let QueueState {
                leases,
                deadlines,
                redeliver,
                ..
            } = &mut *q;
            let outcome = match leases.get_mut(&seq) {
                Some(l) if l.matches(attempt, nonce) => match l.state {
                    LeaseState::Active => {
                        l.state = LeaseState::Released;
                        deadlines.remove(&(l.deadline, seq));
                        redeliver.insert(seq);
                        released += 1;
                        TokenOutcome::Released
                    }
                    LeaseState::Released => TokenOutcome::AlreadyReleased,
                    LeaseState::Expired => TokenOutcome::LeaseExpired,
                },
                Some(Lease {
                    previous: Some(p), ..
                }) if p.attempt == attempt && p.nonce == nonce => {
                    if p.released {
                        TokenOutcome::AlreadyReleased
                    } else {
                        TokenOutcome::LeaseExpired
                    }
                }
                _ if !self.is_queued(seq)? && !self.is_dead(seq)? => TokenOutcome::AlreadyAcked,
                _ => TokenOutcome::LeaseExpired,
            };
            results.push(TokenResult {
                outcome,
                sequence: Some(seq),
            });
        }
        drop(q);
        if released > 0 {
            self.notify.notify_waiters();
        }
        Ok(results)
    }
}

// ---------------------------------------------------------------- public API

impl Store {
    /// Dedups and enqueues one batch's valid records for `supplier_id`,
    /// atomically (one sled::Batch applied to one tree), and returns only after
    /// the write is synced to the device (group commit). One outcome per input
    /// record, same order. A batch of only duplicates of durable records, or
    /// conflicts, returns without a sync round.
    ///
    /// # Errors
    /// `Invalid` for an empty supplier id or one with a NUL byte; `Sled`/`Io`
    /// when writing or syncing fails (retryable: a retry dedups against what was
    /// written); `Corrupt` when a dedup entry fails to decode; `Closed` at shutdown.
    pub async fn submit(
        &self,
        supplier_id: &str,
        batch_id: &str,
        records: Vec<NewRecord>,
    ) -> Result<Vec<SubmitOutcome>, StoreError> {
        validate_supplier_id(supplier_id)?;
        // A failed store answers nothing, not even a duplicate: what the dedup
        // index remembers may be what the failed sync lost.
        self.inner.latch.check()?;
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let inner = Arc::clone(&self.inner);
        let (supplier, batch) = (supplier_id.to_owned(), batch_id.to_owned());
        let done =
            tokio::task::spawn_blocking(move || inner.submit_blocking(&supplier, &batch, &records))
                .await
                .map_err(join_error)??;
        if done.needed > self.inner.durable_seq.load(Ordering::Acquire) {
            self.inner.commit.sync().await?;
            self.inner.raise_durable(done.watermark);
        }
        tracing::debug!(
            supplier_id,
            batch_id,
            records = done.outcomes.len(),
            accepted = done.accepted,
            "batch stored"
        );
        Ok(done.outcomes)
    }

    /// Leases up to `max` records whose enqueue is durable, oldest first
    /// (redeliveries of expired/released leases first, lowest sequence first).
    /// If none is available, waits up to `wait` for one (long-poll), then
    /// returns empty. Leases handed out to a caller that drops the future expire
    /// normally.
    ///
    /// # Errors
    /// `Sled` when reading the queue fails, `Corrupt` when a queue entry fails
    /// to decode, `Closed` at shutdown, `Failed` once the store has failed
    /// (also ending a long-poll that waits when it fails).
    pub async fn pull(
        &self,
        max: usize,
        wait: Duration,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.pull_within(max, PullBudget::UNLIMITED, wait, lease)
            .await
    }

    /// [`Store::pull`] that leases only as many records as fit `budget`.
    ///
    /// # Errors
    /// As [`Store::pull`].
    pub async fn pull_within(
        &self,
        max: usize,
        budget: PullBudget,
        wait: Duration,
        lease: Duration,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.inner.latch.check()?;
        if max == 0 {
            return Ok(Vec::new());
        }
        let start = Instant::now();
        let give_up = start.checked_add(wait.min(MAX_DURATION)).unwrap_or(start);
        loop {
            // Registered before looking, so a submit landing in between still wakes us.
            let notified = self.inner.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let inner = Arc::clone(&self.inner);
            let (out, next_deadline) =
                tokio::task::spawn_blocking(move || inner.pull_blocking(max, budget, lease))
                    .await
                    .map_err(join_error)??;
            if !out.is_empty() {
                tracing::debug!(count = out.len(), "records leased");
                return Ok(out);
            }
            if Instant::now() >= give_up {
                return Ok(out);
            }
            let wake = next_deadline.map_or(give_up, |d| d.min(give_up));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {}
                () = self.inner.latch.failed() => {}
            }
            self.inner.latch.check()?;
        }
    }

    /// Acknowledges delivered records, per token, in order. Acked removals are
    /// synced before return. The dedup entry stays (dedup memory is permanent).
    ///
    /// # Errors
    /// `Sled`/`Io` when removing or syncing fails (retryable: a retry answers
    /// `AlreadyAcked`), `Closed` at shutdown.
    pub async fn ack(&self, tokens: &[String]) -> Result<Vec<TokenResult>, StoreError> {
        self.inner.latch.check()?;
        let inner = Arc::clone(&self.inner);
        let owned = tokens.to_vec();
        let (results, needs_sync) = tokio::task::spawn_blocking(move || inner.ack_blocking(&owned))
            .await
            .map_err(join_error)??;
        if needs_sync {
            self.inner.commit.sync().await?;
        }
        Ok(results)
    }

    /// Gives leased records back for immediate redelivery, per token, in order.
    ///
    /// # Errors
    /// `Sled` when checking whether a record is still queued fails, `Closed` at shutdown.
    pub async fn release(&self, tokens: &[String]) -> Result<Vec<TokenResult>, StoreError> {
        self.inner.latch.check()?;
        let inner = Arc::clone(&self.inner);
        let owned = tokens.to_vec();
        tokio::task::spawn_blocking(move || inner.release_blocking(&owned))
            .await
            .map_err(join_error)?
    }

    /// Queue gauges: depth, active leases, age of the oldest queued record.
    pub fn queue_stats(&self) -> QueueStats {
        let now = Instant::now();
        let leased = {
            let q = lock(&self.inner.queue);
            q.leases
                .values()
                .filter(|l| l.state == LeaseState::Active && l.deadline > now)
                .count() as u64
        };
        let oldest_received_at = match self.inner.records.scan_prefix([b'q']).next() {
            None => None,
            Some(Ok((k, v))) => match decode_seq_key(b'q', &k)
                .and_then(|seq| decode_entry(seq, &v).map(|e| e.received_at))
            {
                Ok(at) => Some(at),
                Err(e) => {
                    tracing::warn!(error = %e, "reading the oldest queue entry");
                    None
                }
            },
            Some(Err(e)) => {
                tracing::warn!(error = %e, "reading the oldest queue entry");
                None
            }
        };
        QueueStats {
            depth: self.inner.depth.load(Ordering::Acquire),
            leased,
            oldest_received_at,
        }
    }
}
