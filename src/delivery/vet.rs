//! What may leave: vetting a report's bytes against its key and the cluster, and telling a
//! delivery record from anything else at its key.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::report::MAX_REPORT_BYTES;
use crate::seed::Seed;
use crate::timefmt;

/// Why an object under `usage/reports/` is never sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Rejection {
    /// A key under `usage/reports/` that no replica writes.
    #[error("its key is not usage/reports/<slot>/<instanceID>.json")]
    BadKey,
    /// Past the report size cap.
    #[error("larger than {MAX_REPORT_BYTES} bytes")]
    TooLarge,
    /// A link, a directory, a pipe or a device.
    #[error("{0}")]
    NotRegular(&'static str),
    /// Bytes that are not a report of this cluster matching the key.
    #[error("not a report: {0}")]
    Invalid(String),
    /// Not exactly the shape of a report this version freezes.
    #[error("not a report of this version's shape: {0}")]
    Shape(crate::shape::ShapeError),
}

impl Rejection {
    /// The `reason` label of `usage_reporter_reports_rejected_total`.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            Rejection::BadKey => "bad_key",
            Rejection::TooLarge => "too_large",
            Rejection::NotRegular(_) => "not_regular",
            Rejection::Invalid(_) => "invalid",
            Rejection::Shape(e) => e.reason(),
        }
    }
}

/// What vetting a report's bytes decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A report of this cluster matching its key; the `Idempotency-Key` to send it with.
    Send(String),
    /// A valid report of another cluster ID: held, never sent.
    OtherCluster(String),
    /// Never to be sent.
    Reject(Rejection),
}

/// Vets bytes read at `usage/reports/<slot>/<instance>.json` for the cluster `seed`, whose
/// interval is `interval`: only exactly what this version freezes is sent
/// ([`crate::shape`]).
pub(crate) fn vet(
    bytes: &[u8],
    seed: &Seed,
    slot: DateTime<Utc>,
    instance: &str,
    interval: Duration,
) -> Verdict {
    let invalid = |why: &str| Verdict::Reject(Rejection::Invalid(why.to_string()));
    if bytes.len() > MAX_REPORT_BYTES {
        return Verdict::Reject(Rejection::TooLarge);
    }
    if let Err(e) = crate::shape::check(bytes, interval.as_secs_f64()) {
        return Verdict::Reject(Rejection::Shape(e));
    }
    let Ok(Value::Object(report)) = serde_json::from_slice::<Value>(bytes) else {
        return invalid("not a JSON object");
    };
    let text = |k: &str| report.get(k).and_then(Value::as_str);
    let time = |k: &str| text(k).and_then(timefmt::parse_rfc3339);
    let Some(cluster) = text("clusterID").filter(|c| uuid::Uuid::parse_str(c).is_ok()) else {
        return invalid("clusterID is missing or not a UUID");
    };
    if cluster != seed.uid() {
        return Verdict::OtherCluster(cluster.to_string());
    }
    if time("createdAt").map(|t| t.to_utc()) != Some(seed.created_at().to_utc()) {
        return invalid("createdAt is not the cluster seed's");
    }
    if time("interval").map(|t| t.to_utc()) != Some(slot) {
        return invalid("interval does not match the slot in its key");
    }
    if !report
        .get("intervalPeriod")
        .and_then(Value::as_f64)
        .is_some_and(|p| p > 0.0)
    {
        return invalid("intervalPeriod is not a positive number");
    }
    if text("instanceID") != Some(instance) {
        return invalid("instanceID does not match its key");
    }
    let interval = text("interval").unwrap_or_default();
    Verdict::Send(format!("{cluster}/{interval}/{instance}"))
}

/// A delivery record, exactly: what [`Delivery::record`] writes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Parsed to be checked, never read.
struct Record {
    delivered_at: String,
    term: u64,
}

/// Whether bytes are a delivery record.
pub(super) fn is_record(bytes: &[u8]) -> bool {
    serde_json::from_slice::<Record>(bytes)
        .is_ok_and(|r| timefmt::parse_rfc3339(&r.delivered_at).is_some())
}
