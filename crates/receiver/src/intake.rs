//! What the receiver accepts: one report, ours or Tempo's, Loki's or Mimir's, checked field by
//! field, and the key it is stored under.
//!
//! Our reports carry `instanceID`, so their key is `(clusterID, interval, instanceID)`. Tempo,
//! Loki and Mimir send the same shape without it (and with Go's `goVersion` and memstats); all
//! replicas of one of their clusters send for the same `(clusterID, interval)`, and Loki builds
//! the report again on every retry, so no field tells a retry from another replica. Their key
//! is `(clusterID, interval, target)`: the first report of each target in a slot is stored and
//! the rest answered as duplicates. Cluster counts are exact for every sender; a foreign
//! cluster counts one instance per target.

use chrono::{DateTime, FixedOffset, Utc};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::timefmt;

/// The largest report accepted (1 MiB), as our replicas cap theirs.
pub const MAX_BODY_BYTES: usize = crate::store::MAX_OBJECT_BYTES;
/// How far in the future a slot may be: clocks differ, but not by this much.
pub const MAX_FUTURE: chrono::Duration = chrono::Duration::minutes(10);
/// How old a slot may be when it arrives. Our leader drops reports after six intervals, Tempo
/// and Loki after a few retries; a week covers every sender's catching up, and bounds what a
/// rollup must look through.
pub const MAX_AGE: chrono::Duration = chrono::Duration::days(7);
/// The longest text field kept (target, version fields, os, arch, edition).
const MAX_TEXT: usize = 256;

/// Why a body is not a report; each says what is wrong in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    /// Not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, not an object.
    #[error("not a JSON object")]
    NotObject,
    /// A field missing, of the wrong type, or out of range.
    #[error("{field}: {why}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The `Idempotency-Key` header names another report.
    #[error(
        "the Idempotency-Key header does not match the report's clusterID/interval/instanceID"
    )]
    KeyMismatch,
}

impl Invalid {
    /// The `reason` label of the rejected-reports counter.
    pub fn reason(&self) -> &'static str {
        match self {
            Invalid::NotJson(_) => "not_json",
            Invalid::NotObject => "not_object",
            Invalid::Field { field, .. } => field,
            Invalid::KeyMismatch => "idempotency_key",
        }
    }
}

/// A valid report, with what the receiver needs of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The cluster ID, lower case.
    pub cluster_id: String,
    /// The seed's `createdAt`.
    pub created_at: DateTime<FixedOffset>,
    /// The slot.
    pub interval: DateTime<FixedOffset>,
    /// The interval, in seconds.
    pub interval_period: f64,
    /// The replica's role.
    pub target: String,
    /// Our replicas' instance ID; `None` for Tempo, Loki and Mimir.
    pub instance_id: Option<String>,
    /// `version.version`.
    pub version: String,
    /// `version.revision`.
    pub revision: String,
    /// `version.branch`.
    pub branch: String,
    /// `version.buildDate`.
    pub build_date: String,
    /// `version.rustVersion`, or Go's `goVersion`.
    pub runtime_version: String,
    /// `os`.
    pub os: String,
    /// `arch`.
    pub arch: String,
    /// `edition`.
    pub edition: String,
    /// `metrics`, as compact JSON text.
    pub metrics: String,
}

impl Received {
    /// The per-slot identity of the sender: the instance ID, or `target-<target>` for senders
    /// without one (see the module docs). Safe as one segment of a key.
    pub fn instance_key(&self) -> String {
        match &self.instance_id {
            Some(id) => id.clone(),
            None => {
                let safe: String = self
                    .target
                    .chars()
                    .map(|c| {
                        if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                            c
                        } else {
                            '_'
                        }
                    })
                    .take(64)
                    .collect();
                format!("target-{safe}")
            }
        }
    }

    /// The slot in UTC.
    pub fn slot(&self) -> DateTime<Utc> {
        self.interval.to_utc()
    }
}

fn field(field: &'static str, why: &'static str) -> Invalid {
    Invalid::Field { field, why }
}

fn text(obj: &Map<String, Value>, key: &'static str) -> Result<String, Invalid> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) if s.len() <= MAX_TEXT => Ok(s.clone()),
        Some(Value::String(_)) => Err(field(key, "longer than 256 bytes")),
        Some(_) => Err(field(key, "not a string")),
    }
}

fn time(obj: &Map<String, Value>, key: &'static str) -> Result<DateTime<FixedOffset>, Invalid> {
    let s = obj
        .get(key)
        .and_then(Value::as_str)
        .ok_or(field(key, "missing or not a string"))?;
    timefmt::parse_rfc3339(s)
        .filter(|t| timefmt::unix_nanos(t).is_some())
        .ok_or(field(key, "not an RFC 3339 timestamp"))
}

/// Checks one report's bytes, as received at `now`.
///
/// # Errors
///
/// [`Invalid`], with what is wrong, in one line: not JSON, a missing or mistyped field, a slot
/// too far from `now`.
pub fn parse(bytes: &[u8], now: DateTime<Utc>) -> Result<Received, Invalid> {
    parse_at(bytes, Some(now))
}

/// Checks the shape of a report already accepted: everything [`parse`] checks but how far its
/// times are from "now", which intake judged by its own clock (a rollup must not judge them
/// again by another, or a report accepted at the edge of the window would be dropped).
///
/// # Errors
///
/// [`Invalid`], with what is wrong, in one line.
pub fn parse_stored(bytes: &[u8]) -> Result<Received, Invalid> {
    parse_at(bytes, None)
}

fn parse_at(bytes: &[u8], now: Option<DateTime<Utc>>) -> Result<Received, Invalid> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        let mut m = e.to_string();
        m.truncate(120);
        Invalid::NotJson(m)
    })?;
    let obj = value.as_object().ok_or(Invalid::NotObject)?;
    let cluster_id = obj
        .get("clusterID")
        .and_then(Value::as_str)
        .ok_or(field("clusterID", "missing or not a string"))?;
    let cluster = Uuid::parse_str(cluster_id).map_err(|_| field("clusterID", "not a UUID"))?;
    if cluster.is_nil() {
        return Err(field("clusterID", "the nil UUID"));
    }
    let created_at = time(obj, "createdAt")?;
    let interval = time(obj, "interval")?;
    if interval < created_at {
        return Err(field("interval", "before createdAt"));
    }
    if let Some(now) = now {
        if created_at.to_utc() > now + MAX_FUTURE {
            return Err(field("createdAt", "in the future"));
        }
        if interval.to_utc() > now + MAX_FUTURE {
            return Err(field("interval", "a slot too far in the future"));
        }
        if interval.to_utc() < now - MAX_AGE {
            return Err(field("interval", "a slot more than 7 days old"));
        }
    }
    let interval_period = obj
        .get("intervalPeriod")
        .and_then(Value::as_f64)
        .ok_or(field("intervalPeriod", "missing or not a number"))?;
    if !(interval_period > 0.0 && interval_period <= 366.0 * 86400.0) {
        return Err(field("intervalPeriod", "not between 0 and a year"));
    }
    let instance_id = match obj.get("instanceID") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            Uuid::parse_str(s)
                .map_err(|_| field("instanceID", "not a UUID"))?
                .to_string(),
        ),
        Some(_) => return Err(field("instanceID", "not a string")),
    };
    let empty = Map::new();
    let version = match obj.get("version") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(v)) => v,
        Some(_) => return Err(field("version", "not an object")),
    };
    let runtime_version = match text(version, "rustVersion")? {
        v if v.is_empty() => text(version, "goVersion")?,
        v => v,
    };
    let metrics = match obj.get("metrics") {
        None | Some(Value::Null) => "{}".to_string(),
        Some(m @ Value::Object(_)) => m.to_string(),
        Some(_) => return Err(field("metrics", "not an object")),
    };
    Ok(Received {
        cluster_id: cluster.to_string(),
        created_at,
        interval,
        interval_period,
        target: text(obj, "target")?,
        instance_id,
        version: text(version, "version")?,
        revision: text(version, "revision")?,
        branch: text(version, "branch")?,
        build_date: text(version, "buildDate")?,
        runtime_version,
        os: text(obj, "os")?,
        arch: text(obj, "arch")?,
        edition: text(obj, "edition")?,
        metrics,
    })
}

/// Checks an `Idempotency-Key` header against the report: `clusterID/interval/instanceID`,
/// with the fields as the report spells them.
///
/// # Errors
///
/// [`Invalid`] if the header does not name this report's cluster, slot and instance.
pub fn check_idempotency_key(header: &str, bytes: &[u8]) -> Result<(), Invalid> {
    let v: Value = serde_json::from_slice(bytes).map_err(|_| Invalid::NotObject)?;
    let s = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let expected = format!("{}/{}/{}", s("clusterID"), s("interval"), s("instanceID"));
    if header == expected {
        Ok(())
    } else {
        Err(Invalid::KeyMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        timefmt::parse_rfc3339("2026-02-01T12:00:00Z")
            .unwrap()
            .to_utc()
    }

    #[test]
    fn foreign_reports_are_keyed_by_target_and_ours_by_instance() {
        let foreign = br#"{"clusterID":"3B0DBE09-7CA4-4C2C-8D5C-4A7C7C2B2C1E","createdAt":"2026-01-01T00:00:00+02:00","interval":"2026-02-01T10:00:00+02:00","intervalPeriod":14400.0,"target":"query frontend/1","version":{"goVersion":"go1.22"}}"#;
        let r = parse(foreign, now()).unwrap();
        assert_eq!(r.cluster_id, "3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e");
        assert_eq!(r.instance_key(), "target-query_frontend_1");
        assert_eq!(r.runtime_version, "go1.22");
        assert_eq!(
            r.slot(),
            timefmt::parse_rfc3339("2026-02-01T08:00:00Z")
                .unwrap()
                .to_utc()
        );
        let ours = br#"{"clusterID":"3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e","createdAt":"2026-01-01T00:00:00Z","interval":"2026-02-01T08:00:00Z","intervalPeriod":14400,"target":"all","instanceID":"0b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e","version":{"rustVersion":"1.95.0"}}"#;
        let r = parse(ours, now()).unwrap();
        assert_eq!(r.instance_key(), "0b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e");
        assert_eq!(r.runtime_version, "1.95.0");
        assert!(check_idempotency_key(
            "3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e/2026-02-01T08:00:00Z/0b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e",
            ours
        )
        .is_ok());
    }

    #[test]
    fn a_stored_report_is_not_judged_again_by_another_clock() {
        let old = br#"{"clusterID":"3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e","createdAt":"2026-01-01T00:00:00Z","interval":"2026-01-25T12:00:00.05Z","intervalPeriod":3600}"#;
        // At intake, 7 days minus 50 ms old: accepted; a moment later it would not be.
        assert!(parse(old, now()).is_ok());
        assert!(parse(old, now() + chrono::Duration::milliseconds(100)).is_err());
        // The rollup checks its shape only, whenever it runs.
        assert!(parse_stored(old).is_ok());
        assert!(parse_stored(b"{}").is_err());
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = parse(&bytes, now());
        }
    }
}
