//! Where the receiver keeps things under its store prefix.
//!
//! ```text
//! received/inbox/day=<slot day>/<clusterID>/<slot ns>/<instance key>.json   stored, not yet rolled up
//! received/kept/day=<slot day>/<clusterID>/<slot ns>/<instance key>.json    rolled up; kept for --retention
//! rollups/day=<slot day>/<window>.parquet                                  rolled-up reports
//! metrics/day=<slot day>/<window>.parquet                                  their metrics, a row per leaf
//! summaries/day=<slot day>.json                                            a day's reports by os, arch, target
//! summaries/clusters/{base,delta-<window>}.json                            the cluster list (see cluster_list)
//! summaries/insights/[latest/]day=<slot day>.json                          the insights (see figures)
//! receiver/insights/<clusterID>.json                                       a cluster's state (see figures)
//! receiver/rollup.json                                                     the rollup's progress
//! receiver/lease.json                                                      which receiver rolls up
//! receiver/keys/<clusterID>.json                                           a cluster's pinned public key
//! receiver/forget/<clusterID>.json                                         a request to forget a cluster
//! ```
//!
//! A report's key depends only on `(clusterID, interval, instance key)`, so a repeat, sent to
//! any receiver on the bucket, meets the same key in the inbox (its create-if-absent fails) or
//! in `kept/` (checked right after a create succeeds). An object holds the bytes received; a
//! signed report's first line is `#` and its `Reporter-Signature` header, so the rollup can
//! check the signature again.

use chrono::{DateTime, Utc};

use super::summary::day_of;

/// Received reports, both halves.
pub const RECEIVED: &str = "received/";
/// Reports stored and not yet rolled up: what a rollup lists.
pub const INBOX: &str = "received/inbox/";
/// Reports rolled up, kept as received.
pub const KEPT: &str = "received/kept/";
/// The summaries the API reads.
pub const SUMMARIES: &str = "summaries/";
/// The rollup's progress.
pub const ROLLUP_STATE: &str = "receiver/rollup.json";
/// The rollup leader's lease.
pub const LEASE: &str = "receiver/lease.json";
/// Pinned public keys.
pub const KEYS: &str = "receiver/keys/";

/// The inbox key of a report of `cluster` for `slot` from `instance`.
pub fn inbox_key(cluster: &str, slot: DateTime<Utc>, instance: &str) -> String {
    format!("{INBOX}{}/{instance}.json", slot_prefix_part(cluster, slot))
}

/// `day=<day>/<cluster>/<slot ns>`
fn slot_prefix_part(cluster: &str, slot: DateTime<Utc>) -> String {
    format!(
        "day={}/{cluster}/{}",
        day_of(slot),
        crate::timefmt::slot_key(slot)
    )
}

/// The inbox and kept prefixes of one cluster's slot: its instances, stored or rolled up.
pub fn slot_prefixes(cluster: &str, slot: DateTime<Utc>) -> [String; 2] {
    let part = slot_prefix_part(cluster, slot);
    [format!("{INBOX}{part}/"), format!("{KEPT}{part}/")]
}

/// Where an inbox report is kept once rolled up.
pub fn kept_key(inbox_key: &str) -> String {
    match inbox_key.strip_prefix(INBOX) {
        Some(rest) => format!("{KEPT}{rest}"),
        None => inbox_key.to_string(),
    }
}

/// The cluster ID segment of an inbox or kept key.
pub fn cluster_of(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(INBOX).or_else(|| key.strip_prefix(KEPT))?;
    rest.split('/').nth(1)
}

/// `received/kept/day=<day>/`
pub fn kept_day_prefix(day: &str) -> String {
    format!("{KEPT}day={day}/")
}

/// `received/kept/day=<day>/<cluster>/`
pub fn kept_cluster_prefix(day: &str, cluster: &str) -> String {
    format!("{KEPT}day={day}/{cluster}/")
}

/// `rollups/day=<day>/`
pub fn rollup_day_prefix(day: &str) -> String {
    format!("rollups/day={day}/")
}

/// `rollups/day=<day>/<window>.parquet`
pub fn rollup_key(day: &str, window: &str) -> String {
    format!("{}{window}.parquet", rollup_day_prefix(day))
}

/// The Parquet datasets: one row per report, and one row per (report, metric leaf).
pub const DATASETS: [&str; 2] = ["rollups/", "metrics/"];

/// `<dataset>day=<day>/`
pub fn dataset_day_prefix(dataset: &str, day: &str) -> String {
    format!("{dataset}day={day}/")
}

/// `metrics/day=<day>/<window>.parquet`
pub fn metrics_key(day: &str, window: &str) -> String {
    format!("{}{window}.parquet", dataset_day_prefix("metrics/", day))
}

/// `summaries/day=<day>.json`
pub fn day_key(day: &str) -> String {
    format!("{SUMMARIES}day={day}.json")
}

/// The day of a `summaries/day=<day>.json` key.
pub fn day_of_day_key(key: &str) -> Option<&str> {
    key.strip_prefix(SUMMARIES)?
        .strip_prefix("day=")?
        .strip_suffix(".json")
}

/// Requests to forget a cluster.
pub const FORGET_REQUESTS: &str = "receiver/forget/";

/// `receiver/forget/<cluster>.json`
pub fn forget_request_key(cluster: &str) -> String {
    format!("{FORGET_REQUESTS}{cluster}.json")
}

/// The cluster of a forget request's key.
pub fn cluster_of_forget_request(key: &str) -> Option<&str> {
    key.strip_prefix(FORGET_REQUESTS)?.strip_suffix(".json")
}

/// `receiver/keys/<cluster>.json`
pub fn pin_key(cluster: &str) -> String {
    format!("{KEYS}{cluster}.json")
}

/// A stored object: its bytes as received, after a `#<signature>` line if it was signed.
pub fn stored_object(signature: Option<&str>, body: &[u8]) -> Vec<u8> {
    match signature {
        Some(sig) => {
            let mut out = Vec::with_capacity(sig.len() + 2 + body.len());
            out.push(b'#');
            out.extend_from_slice(sig.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(body);
            out
        }
        None => body.to_vec(),
    }
}

/// The signature line (without `#`) and the body of a stored object.
pub fn split_stored(bytes: &[u8]) -> (Option<&str>, &[u8]) {
    if bytes.first() == Some(&b'#') {
        if let Some(nl) = bytes.iter().position(|b| *b == b'\n') {
            if let Ok(sig) = std::str::from_utf8(&bytes[1..nl]) {
                return (Some(sig), &bytes[nl + 1..]);
            }
        }
    }
    (None, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let slot = DateTime::<Utc>::from_timestamp(1_770_000_000, 0).unwrap();
        let k = inbox_key("c1", slot, "i1");
        assert!(k.starts_with("received/inbox/day=2026-02-02/c1/"), "{k}");
        let kept = kept_key(&k);
        assert!(kept.starts_with(KEPT));
        assert_eq!(cluster_of(&k), Some("c1"));
        assert_eq!(cluster_of(&kept), Some("c1"));
        let [inbox, kept_prefix] = slot_prefixes("c1", slot);
        assert!(k.starts_with(&inbox) && kept.starts_with(&kept_prefix));
        assert_eq!(day_of_day_key(&day_key("2026-02-02")), Some("2026-02-02"));
        let obj = stored_object(Some("ed25519 key=aa sig=bb"), b"{}");
        assert_eq!(
            split_stored(&obj),
            (Some("ed25519 key=aa sig=bb"), &b"{}"[..])
        );
        assert_eq!(split_stored(b"{\"a\":1}"), (None, &b"{\"a\":1}"[..]));
    }
}
