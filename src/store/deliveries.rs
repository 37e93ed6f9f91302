//! Daily-delivery bookkeeping per supplier, in the "deliveries" tree: the last
//! batch (time and id) and today's tallies (batches, records, accepted,
//! duplicate, rejected, rejects by error code). "Today" is the UTC date.
//!
//! Key: supplier id. Value: [`SupplierDeliveries`] as JSON, updated atomically
//! (compare-and-swap) per batch; made durable by the next group commit.
//!
//! Must not: hold record content or anything about patients (ids, counts and
//! error codes only), or decide what "overdue" means (that is the operations
//! layer's policy). Called by the intake (after each received batch) and by the
//! operations layer (status page, metrics, `schakel ops deliveries`).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{decode_json, encode_json, validate_supplier_id, Store, StoreError};

/// One supplier's delivery record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupplierDeliveries {
    pub supplier_id: String,
    /// When the last batch was received (any outcome but a refused header).
    pub last_batch_at: Option<SystemTime>,
    pub last_batch_id: String,
    /// Tallies of the UTC day `today.date`; zero when read on a later day.
    pub today: DeliveryDay,
}

/// One day's tallies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryDay {
    /// UTC date, `YYYY-MM-DD`.
    pub date: String,
    pub batches: u64,
    pub records: u64,
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    /// Rejected records by their (first) error code.
    pub rejects_by_code: BTreeMap<String, u64>,
}

/// What one batch added.
#[derive(Debug, Clone, Default)]
pub struct BatchTally {
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub rejects_by_code: BTreeMap<String, u64>,
}

/// The UTC date of `t` as `YYYY-MM-DD`.
pub fn utc_date(t: SystemTime) -> String {
    time::OffsetDateTime::from(t).date().to_string()
}

impl SupplierDeliveries {
    /// This record as seen on the UTC day of `now`: yesterday's tallies read as zero.
    pub fn as_of(mut self, now: SystemTime) -> SupplierDeliveries {
        let date = utc_date(now);
        if self.today.date != date {
            self.today = DeliveryDay {
                date,
                ..DeliveryDay::default()
            };
        }
        self
    }

    fn add(&mut self, batch_id: &str, at: SystemTime, tally: &BatchTally) {
        let date = utc_date(at);
        if self.today.date != date {
            self.today = DeliveryDay {
                date,
                ..DeliveryDay::default()
            };
        }
        if self.last_batch_at.is_none_or(|last| last <= at) {
            self.last_batch_at = Some(at);
            self.last_batch_id = batch_id.to_owned();
        }
        let d = &mut self.today;
        d.batches += 1;
        d.records += tally.accepted + tally.duplicate + tally.rejected;
        d.accepted += tally.accepted;
        d.duplicate += tally.duplicate;
        d.rejected += tally.rejected;
        for (code, n) in &tally.rejects_by_code {
            *d.rejects_by_code.entry(code.clone()).or_default() += n;
        }
    }
}

impl Store {
    fn deliveries_tree(&self) -> Result<sled::Tree, StoreError> {
        self.inner
            .db
            .open_tree("deliveries")
            .map_err(|e| StoreError::sled("opening tree \"deliveries\"", e))
    }

    /// Adds a received batch to its supplier's record (atomically) and returns
    /// the new record. Made durable by the next group commit.
    ///
    /// # Errors
    /// `Invalid` for a bad supplier id, `Sled` when reading or writing fails.
    pub fn record_batch_delivery(
        &self,
        supplier_id: &str,
        batch_id: &str,
        at: SystemTime,
        tally: &BatchTally,
    ) -> Result<SupplierDeliveries, StoreError> {
        validate_supplier_id(supplier_id)?;
        self.inner.latch.check()?;
        let tree = self.deliveries_tree()?;
        let mut encode_error = None;
        let mut result = SupplierDeliveries::default();
        tree.update_and_fetch(supplier_id.as_bytes(), |old| {
            // A record that does not decode is replaced rather than blocking intake.
            let mut d: SupplierDeliveries = old
                .and_then(|v| serde_json::from_slice(v).ok())
                .unwrap_or_default();
            d.supplier_id = supplier_id.to_owned();
            d.add(batch_id, at, tally);
            match encode_json(&d, "delivery record") {
                Ok(v) => {
                    result = d;
                    Some(v)
                }
                Err(e) => {
                    encode_error = Some(e);
                    old.map(<[u8]>::to_vec)
                }
            }
        })
        .map_err(|e| {
            self.inner
                .write_failed(&format!("recording a delivery of {supplier_id}"), e)
        })?;
        if let Some(e) = encode_error {
            return Err(e);
        }
        self.inner.commit.mark_dirty();
        Ok(result)
    }

    /// Every supplier's delivery record as of `now`, ordered by supplier id.
    /// Suppliers that never delivered have none.
    ///
    /// # Errors
    /// `Sled` when reading fails, `Corrupt` when a record does not decode.
    pub fn supplier_deliveries(
        &self,
        now: SystemTime,
    ) -> Result<Vec<SupplierDeliveries>, StoreError> {
        let mut out = Vec::new();
        for item in self.deliveries_tree()?.iter() {
            let (k, v) = item.map_err(|e| StoreError::sled("reading delivery records", e))?;
            let d: SupplierDeliveries = decode_json(&v, || {
                format!("delivery record {}", String::from_utf8_lossy(&k))
            })?;
            out.push(d.as_of(now));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn tallies_roll_over_at_the_utc_day() {
        let day1 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_614_859_200); // 2021-03-04 12:00Z
        let day2 = day1 + Duration::from_secs(24 * 3600);
        let tally = BatchTally {
            accepted: 2,
            duplicate: 1,
            rejected: 1,
            rejects_by_code: BTreeMap::from([("BSN_CHECKSUM".to_owned(), 1)]),
        };
        let mut d = SupplierDeliveries::default();
        d.add("b1", day1, &tally);
        d.add("b2", day1, &tally);
        assert_eq!(d.today.date, "2021-03-04");
        assert_eq!(
            (d.today.batches, d.today.records, d.today.rejected),
            (2, 8, 2)
        );
        assert_eq!(d.today.rejects_by_code["BSN_CHECKSUM"], 2);
        assert_eq!(d.last_batch_id, "b2");
        let next_day = d.clone().as_of(day2);
        assert_eq!(next_day.today.records, 0);
        assert_eq!(next_day.last_batch_at, Some(day1));
        d.add("b3", day2, &tally);
        assert_eq!((d.today.date.as_str(), d.today.records), ("2021-03-05", 4));
    }
}
