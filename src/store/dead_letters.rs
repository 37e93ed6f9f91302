//! Dead letters: records delivered `max_deliveries` times without an ack leave
//! the queue for an `x` + sequence key in the "records" tree, so a poison record
//! stops circling. The move (remove `q` and `n`, insert `x`) is one sled batch.
//! Admins list, requeue (back into the queue under the same sequence, with a
//! fresh attempt count) or discard them.
//!
//! Value of an `x` key: version(1) + dead-lettered-at unix ms (u64 BE) +
//! attempts (u32 BE) + the queue entry as it was.
//!
//! Must not: expose or log record content (listings carry ids only), or hold
//! the queue lock across an `.await`. Called by `queue` (`bury`, from the pull
//! path) and by the operations service (list, requeue, discard, counters).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::queue::{
    attempt_key, decode_entry, decode_seq_key, queue_key, seq_key, unix_ms, QueueCounters,
    QueueState,
};
use super::{join_error, lock, Inner, Store, StoreError};

const DEAD_VERSION: u8 = 1;
const DEAD_HEADER: usize = 1 + 8 + 4;

/// A record that was delivered too often without an ack. Ids only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub sequence: u64,
    pub supplier_id: String,
    pub message_id: String,
    pub batch_id: String,
    pub received_at: SystemTime,
    pub dead_lettered_at: SystemTime,
    /// Deliveries it had.
    pub attempts: u32,
}

fn dead_key(seq: u64) -> [u8; 9] {
    seq_key(b'x', seq)
}

fn encode_dead(dead_ms: u64, attempts: u32, entry: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(DEAD_HEADER + entry.len());
    v.push(DEAD_VERSION);
    v.extend_from_slice(&dead_ms.to_be_bytes());
    v.extend_from_slice(&attempts.to_be_bytes());
    v.extend_from_slice(entry);
    v
}

/// Splits a dead-letter value into (dead at, attempts, queue entry bytes).
fn split_dead(seq: u64, value: &[u8]) -> Result<(SystemTime, u32, &[u8]), StoreError> {
    if value.len() < DEAD_HEADER || value[0] != DEAD_VERSION {
        return Err(StoreError::corrupt(
            format!("dead letter {seq}"),
            format!(
                "{} bytes with version {:?}",
                value.len(),
                value.first().copied()
            ),
        ));
    }
    let mut ms = [0u8; 8];
    ms.copy_from_slice(&value[1..9]);
    let mut attempts = [0u8; 4];
    attempts.copy_from_slice(&value[9..13]);
    let at = UNIX_EPOCH
        .checked_add(Duration::from_millis(u64::from_be_bytes(ms)))
        .ok_or_else(|| StoreError::corrupt(format!("dead letter {seq}"), "time out of range"))?;
    Ok((at, u32::from_be_bytes(attempts), &value[DEAD_HEADER..]))
}

fn decode_dead(seq: u64, value: &[u8]) -> Result<DeadLetter, StoreError> {
    let (dead_lettered_at, attempts, entry) = split_dead(seq, value)?;
    let e = decode_entry(seq, entry)?;
    Ok(DeadLetter {
        sequence: seq,
        supplier_id: e.supplier_id.to_owned(),
        message_id: e.message_id.to_owned(),
        batch_id: e.batch_id.to_owned(),
        received_at: e.received_at,
        dead_lettered_at,
        attempts,
    })
}

impl Inner {
    /// Moves queued record `seq` (its entry `value`) to the dead letters in one
    /// batch and forgets its lease state. Called with the queue lock held.
    pub(super) fn bury(
        &self,
        q: &mut QueueState,
        seq: u64,
        value: &[u8],
    ) -> Result<(), StoreError> {
        let attempts = q.attempts.get(&seq).copied().unwrap_or(0);
        let supplier = decode_entry(seq, value)?.supplier_id.to_owned();
        let mut batch = sled::Batch::default();
        batch.remove(&queue_key(seq)[..]);
        batch.remove(&attempt_key(seq)[..]);
        batch.insert(
            &dead_key(seq)[..],
            encode_dead(unix_ms(SystemTime::now()), attempts, value),
        );
        self.records.apply_batch(batch).map_err(|e| {
            self.write_failed(&format!("moving record {seq} to the dead letters"), e)
        })?;
        q.drop_lease(seq);
        q.attempts.remove(&seq);
        q.counters.dead_lettered += 1;
        self.depth.fetch_sub(1, Ordering::AcqRel);
        self.commit.mark_dirty();
        tracing::warn!(
            sequence = seq,
            supplier = %supplier,
            attempts,
            "record delivered too often without an ack: moved to the dead letters"
        );
        Ok(())
    }

    pub(super) fn is_dead(&self, seq: u64) -> Result<bool, StoreError> {
        self.records
            .contains_key(dead_key(seq))
            .map_err(|e| StoreError::sled(format!("reading dead letter {seq}"), e))
    }

    /// Puts dead letter `seq` back into the queue (same sequence, attempts reset).
    /// `false` when there is no such dead letter.
    fn requeue_blocking(&self, seq: u64) -> Result<bool, StoreError> {
        self.latch.check()?;
        let mut q = lock(&self.queue);
        let Some(value) = self
            .records
            .get(dead_key(seq))
            .map_err(|e| StoreError::sled(format!("reading dead letter {seq}"), e))?
        else {
            return Ok(false);
        };
        let (_, _, entry) = split_dead(seq, &value)?;
        decode_entry(seq, entry)?;
        let mut batch = sled::Batch::default();
        batch.remove(&dead_key(seq)[..]);
        batch.insert(&queue_key(seq)[..], entry);
        self.records
            .apply_batch(batch)
            .map_err(|e| self.write_failed(&format!("requeueing dead letter {seq}"), e))?;
        q.drop_lease(seq);
        q.attempts.remove(&seq);
        self.depth.fetch_add(1, Ordering::AcqRel);
        Ok(true)
    }

    fn discard_blocking(&self, seq: u64) -> Result<bool, StoreError> {
        self.latch.check()?;
        let removed = self
            .records
            .remove(dead_key(seq))
            .map_err(|e| self.write_failed(&format!("discarding dead letter {seq}"), e))?;
        Ok(removed.is_some())
    }
}

impl Store {
    /// Dead letters, lowest sequence first, at most `limit` (0: all).
    ///
    /// # Errors
    /// `Sled` when reading fails, `Corrupt` when one does not decode.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, StoreError> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            for item in inner.records.scan_prefix([b'x']) {
                let (k, v) = item.map_err(|e| StoreError::sled("reading the dead letters", e))?;
                let seq = decode_seq_key(b'x', &k)?;
                out.push(decode_dead(seq, &v)?);
                if limit != 0 && out.len() >= limit {
                    break;
                }
            }
            Ok(out)
        })
        .await
        .map_err(join_error)?
    }

    /// Number of dead letters (a key scan; dead letters are few).
    ///
    /// # Errors
    /// `Sled` when reading fails.
    pub fn dead_letter_count(&self) -> Result<u64, StoreError> {
        let mut n = 0u64;
        for item in self.inner.records.scan_prefix([b'x']).keys() {
            item.map_err(|e| StoreError::sled("counting the dead letters", e))?;
            n += 1;
        }
        Ok(n)
    }

    /// Puts a dead letter back into the queue under its sequence with a fresh
    /// attempt count; durable before return, then delivered by the next pull.
    /// `Ok(false)`: no dead letter with that sequence.
    ///
    /// # Errors
    /// `Sled`/`Io` when writing or syncing fails, `Corrupt` when it does not decode.
    pub async fn requeue_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let inner = Arc::clone(&self.inner);
        let found = tokio::task::spawn_blocking(move || inner.requeue_blocking(seq))
            .await
            .map_err(join_error)??;
        if found {
            self.inner.commit.sync().await?;
            lock(&self.inner.queue).redeliver.insert(seq);
            self.inner.notify.notify_waiters();
        }
        Ok(found)
    }

    /// Deletes a dead letter for good (its dedup entry stays: a resend of the
    /// same message is a DUPLICATE). Durable before return. `Ok(false)`: no
    /// dead letter with that sequence.
    ///
    /// # Errors
    /// `Sled`/`Io` when writing or syncing fails.
    pub async fn discard_dead_letter(&self, seq: u64) -> Result<bool, StoreError> {
        let inner = Arc::clone(&self.inner);
        let found = tokio::task::spawn_blocking(move || inner.discard_blocking(seq))
            .await
            .map_err(join_error)??;
        if found {
            self.inner.commit.sync().await?;
        }
        Ok(found)
    }

    /// Queue event counters since open (deliveries, acks, expired leases, dead
    /// letters). Expires due leases first, so the count is current.
    pub fn queue_counters(&self) -> QueueCounters {
        let mut q = lock(&self.inner.queue);
        q.reap(std::time::Instant::now());
        q.counters
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::{NewRecord, StoreOptions, TokenOutcome};
    use super::*;

    fn open(path: &std::path::Path, max_deliveries: u32) -> Store {
        let options = StoreOptions {
            max_deliveries,
            redelivery_backoff: Duration::from_millis(10),
            ..StoreOptions::default()
        };
        Store::open(path, options).unwrap()
    }

    fn rec(id: &str) -> NewRecord {
        NewRecord {
            message_id: id.into(),
            content: b"opaque".to_vec(),
        }
    }

    #[test]
    fn backoff_doubles_after_the_first_redelivery() {
        let base = Duration::from_millis(100);
        assert_eq!(super::super::queue::backoff_for(base, 1), Duration::ZERO);
        assert_eq!(super::super::queue::backoff_for(base, 2), base);
        assert_eq!(super::super::queue::backoff_for(base, 4), base * 4);
        assert_eq!(
            super::super::queue::backoff_for(base, 60),
            Duration::from_secs(3600)
        );
    }

    #[tokio::test]
    async fn exhausted_record_is_buried_survives_reopen_and_requeues() {
        let dir = tempfile::tempdir().unwrap();
        let seq;
        {
            let store = open(dir.path(), 1);
            store.submit("sup-a", "b", vec![rec("m1")]).await.unwrap();
            let first = store
                .pull(10, Duration::ZERO, Duration::from_millis(20))
                .await
                .unwrap();
            seq = first[0].sequence;
            // The lease runs out; the next pull buries instead of redelivering.
            let again = store
                .pull(10, Duration::from_millis(300), Duration::from_secs(30))
                .await
                .unwrap();
            assert!(again.is_empty());
            assert_eq!(store.dead_letter_count().unwrap(), 1);
            assert_eq!(store.queue_stats().depth, 0);
            assert_eq!(store.queue_counters().dead_lettered, 1);
            let token = vec![first[0].lease_token.clone()];
            assert_eq!(
                store.ack(&token).await.unwrap()[0].outcome,
                TokenOutcome::LeaseExpired
            );
            assert_eq!(
                store.release(&token).await.unwrap()[0].outcome,
                TokenOutcome::LeaseExpired
            );
            store.sync().await.unwrap();
        }
        let store = open(dir.path(), 1);
        let dead = store.dead_letters(0).await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!((dead[0].sequence, dead[0].attempts), (seq, 1));
        assert_eq!(dead[0].message_id, "m1");
        assert_eq!(store.queue_stats().depth, 0);
        assert!(store.requeue_dead_letter(seq).await.unwrap());
        assert!(!store.requeue_dead_letter(seq).await.unwrap());
        assert_eq!(store.queue_stats().depth, 1);
        let back = store
            .pull(10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!((back[0].sequence, back[0].attempt), (seq, 1));
        assert_eq!(back[0].content, b"opaque");
        let acked = store.ack(&[back[0].lease_token.clone()]).await.unwrap();
        assert_eq!(acked[0].outcome, TokenOutcome::Acked);
        assert!(!store.discard_dead_letter(seq).await.unwrap());
    }

    #[tokio::test]
    async fn deliveries_before_a_restart_count() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = open(dir.path(), 3);
            store.submit("sup-a", "b", vec![rec("m1")]).await.unwrap();
            let first = store
                .pull(10, Duration::ZERO, Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(first[0].attempt, 1);
            let released = store.release(&[first[0].lease_token.clone()]).await;
            assert_eq!(released.unwrap()[0].outcome, TokenOutcome::Released);
            // Delivery 2 is the first one whose count is written.
            let second = store
                .pull(10, Duration::ZERO, Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(second[0].attempt, 2);
            store.sync().await.unwrap();
        }
        {
            // Leases do not survive a restart: delivery 3 of 3.
            let store = open(dir.path(), 3);
            let third = store
                .pull(10, Duration::ZERO, Duration::from_secs(30))
                .await
                .unwrap();
            assert_eq!(third[0].attempt, 3);
            store.sync().await.unwrap();
        }
        let store = open(dir.path(), 3);
        let fourth = store
            .pull(10, Duration::ZERO, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(fourth.is_empty(), "delivered a fourth time");
        assert_eq!(store.dead_letter_count().unwrap(), 1);
        assert_eq!(store.queue_stats().depth, 0);
        let seq = store.dead_letters(0).await.unwrap()[0].sequence;
        assert!(store.discard_dead_letter(seq).await.unwrap());
        assert_eq!(store.dead_letter_count().unwrap(), 0);
        assert!(!store.requeue_dead_letter(seq).await.unwrap());
        // Dedup memory stays: a resend is a duplicate, not a new record.
        let again = store.submit("sup-a", "b2", vec![rec("m1")]).await.unwrap();
        assert_eq!(
            again,
            [super::super::SubmitOutcome::Duplicate { sequence: seq }]
        );
    }
}
