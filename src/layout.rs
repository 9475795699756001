//! Where everything lives in the bucket: every key the reporter reads or writes, in one place.
//!
//! ```text
//! <prefix>/cluster_seed.json                          the seed (name set by --seed-name)
//! <prefix>/usage/lease.json                           the lease record, which also carries the
//!                                                     seed's bytes, so a lost seed can be restored
//! <prefix>/usage/reports/<slot>/<instanceID>.json     a frozen report, the bytes to POST
//! <prefix>/usage/delivered/<slot>/<instanceID>.json   the record that it was delivered
//! <prefix>/usage/selftest/<random>.json               the start-up self-test's scratch key
//! <prefix>/usage/signing_key.json                     the cluster's Ed25519 key pair: reports
//!                                                     are signed with it (never logged or sent)
//! ```
//!
//! `<slot>` is the slot's Unix time in nanoseconds, 20 digits, so keys sort by time.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::slots;

/// The leader lease.
pub use usage_reporter_core::lease::LEASE_KEY;
/// Frozen reports, one per replica per slot.
pub const REPORTS: &str = "usage/reports/";
/// Delivery records, one per delivered report.
pub const DELIVERED: &str = "usage/delivered/";
/// The self-test's scratch keys.
pub use usage_reporter_core::store::selftest::SELFTEST;
/// The cluster's signing key.
pub const SIGNING_KEY: &str = "usage/signing_key.json";

/// `usage/reports/<slot>/<instance>.json`
pub fn report_key(slot: DateTime<Utc>, instance: &str) -> String {
    format!("{REPORTS}{}/{instance}.json", slots::slot_key(slot))
}

/// `usage/delivered/<slot>/<instance>.json`
pub fn record_key(slot: DateTime<Utc>, instance: &str) -> String {
    format!("{DELIVERED}{}/{instance}.json", slots::slot_key(slot))
}

/// `(slot, instance)` from a report key (or a record key, with `DELIVERED`). The instance must
/// be a UUID, as every replica's is; anything else under these prefixes is not ours.
pub fn parse_key(key: &str, prefix: &str) -> Option<(DateTime<Utc>, String)> {
    let rest = key.strip_prefix(prefix)?;
    let (slot, file) = rest.split_once('/')?;
    let instance = file.strip_suffix(".json")?;
    Uuid::parse_str(instance).ok()?;
    if instance.contains('/') {
        return None;
    }
    Some((slots::parse_slot_key(slot)?, instance.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timefmt;

    #[test]
    fn keys_round_trip() {
        let slot = timefmt::parse_rfc3339("2024-05-01T12:00:00.5Z")
            .unwrap()
            .to_utc();
        let id = "3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e";
        let k = report_key(slot, id);
        assert_eq!(parse_key(&k, REPORTS), Some((slot, id.to_string())));
        assert_eq!(
            parse_key(&record_key(slot, id), DELIVERED),
            Some((slot, id.to_string()))
        );
        assert_eq!(
            parse_key(&format!("usage/reports/xx/{id}.json"), REPORTS),
            None
        );
        for bad in [".json", "abc.json", "passwd", "a/b.json"] {
            let k = format!("usage/reports/00000000000000000001/{bad}");
            assert_eq!(parse_key(&k, REPORTS), None, "{k}");
        }
    }
}
