//! Append-only audit log in the "audit" tree: who did what, when, with what outcome.
//!
//! Key: event time as unix nanos (u64 BE) + a sled-generated id (u64 BE), so
//! keys sort by time and never collide. Value: the event as JSON.
//!
//! Must not: store patient data (callers put ids and counts only in `detail`),
//! rewrite events, delete any but those past retention (`purge_audit_before`), or wait for an fsync (events are made durable by
//! the next group-commit round, periodic or requested). Called by the service
//! layer after each request and by the admin commands (query). Refused calls
//! arrive aggregated (`service::auth::RefusalAudit`): an `access_refused`
//! event stands for the `count=N` calls at the end of its detail, so a
//! looping refused caller adds a bounded number of events, not one per call.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::{decode_json, encode_json, Role, Store, StoreError};

/// Default and maximum number of events returned by one query.
const DEFAULT_LIMIT: usize = 1000;

/// One audited action. No patient data: `detail` holds ids and counts only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub at: SystemTime,
    pub actor_fingerprint: String,
    /// Identity name.
    pub actor: String,
    pub role: Option<Role>,
    /// "submit_batch", "pull", "ack", "release", "admin.add_supplier", ...
    pub action: String,
    /// Ids and counts only.
    pub detail: String,
    pub outcome: String,
}

/// Filter for [`Store::audit_events`]. Bounds are inclusive.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub from: Option<SystemTime>,
    pub to: Option<SystemTime>,
    pub actor_fingerprint: Option<String>,
    /// 0 = 1000.
    pub limit: usize,
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn audit_key(nanos: u64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&nanos.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

impl Store {
    /// Appends an audit event. Written now, made durable by the next group
    /// commit (periodic, or the next submit/ack/sync).
    ///
    /// # Errors
    /// `Sled` when generating the key or writing fails.
    pub fn audit(&self, event: AuditEvent) -> Result<(), StoreError> {
        let id = self
            .inner
            .db
            .generate_id()
            .map_err(|e| StoreError::sled("generating an audit key", e))?;
        let key = audit_key(unix_nanos(event.at), id);
        let value = encode_json(&event, "audit event")?;
        self.inner
            .audit
            .insert(key, value)
            .map_err(|e| StoreError::sled(format!("writing audit event {:?}", event.action), e))?;
        self.inner.commit.mark_dirty();
        Ok(())
    }

    /// Events in `[from, to]` (inclusive), optionally of one actor, in
    /// chronological order. When more than `limit` match, the most recent
    /// `limit` are returned (page backwards by setting `to` to the earliest `at`
    /// returned, minus one nanosecond).
    ///
    /// # Errors
    /// `Sled` when reading fails, `Corrupt` when an event does not decode.
    pub fn audit_events(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = if query.limit == 0 {
            DEFAULT_LIMIT
        } else {
            query.limit
        };
        let lo = audit_key(query.from.map_or(0, unix_nanos), 0);
        let hi = audit_key(query.to.map_or(u64::MAX, unix_nanos), u64::MAX);
        if lo > hi {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for item in self.inner.audit.range(lo..=hi).rev() {
            let (k, v) = item.map_err(|e| StoreError::sled("reading the audit log", e))?;
            let event: AuditEvent = decode_json(&v, || format!("audit event {}", hex::encode(&k)))?;
            if query
                .actor_fingerprint
                .as_ref()
                .is_some_and(|fp| *fp != event.actor_fingerprint)
            {
                continue;
            }
            out.push(event);
            if out.len() >= limit {
                break;
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Deletes the events before `cutoff` (the retention period's start): the
    /// only deletion the audit log allows. Returns how many were removed; made
    /// durable by the next group commit.
    ///
    /// # Errors
    /// `Sled` when reading or deleting fails.
    pub fn purge_audit_before(&self, cutoff: SystemTime) -> Result<u64, StoreError> {
        let hi = audit_key(unix_nanos(cutoff), 0);
        let mut removed = 0u64;
        for item in self.inner.audit.range(..hi).keys() {
            let k = item.map_err(|e| StoreError::sled("reading the audit log", e))?;
            self.inner
                .audit
                .remove(k)
                .map_err(|e| StoreError::sled("purging the audit log", e))?;
            removed += 1;
        }
        if removed > 0 {
            self.inner.commit.mark_dirty();
        }
        Ok(removed)
    }
}
