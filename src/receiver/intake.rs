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
pub const MAX_BODY_BYTES: usize = crate::report::MAX_REPORT_BYTES;
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
pub fn parse(bytes: &[u8], now: DateTime<Utc>) -> Result<Received, Invalid> {
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
    if created_at.to_utc() > now + MAX_FUTURE {
        return Err(field("createdAt", "in the future"));
    }
    if interval < created_at {
        return Err(field("interval", "before createdAt"));
    }
    if interval.to_utc() > now + MAX_FUTURE {
        return Err(field("interval", "a slot too far in the future"));
    }
    if interval.to_utc() < now - MAX_AGE {
        return Err(field("interval", "a slot more than 7 days old"));
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
