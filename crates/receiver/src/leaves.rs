//! A report's `metrics` object as leaves: every value that is not an object, keyed by its path
//! with dots (`storage_backend`, `distributor_bytes_received.total`, `memstats.heap_inuse`;
//! array elements by their index, `ring.0`). Strings and booleans are text, numbers and
//! booleans (1 or 0) are numbers, `null` is neither. What analysts query in the long-form
//! Parquet dataset, and what the insights count.

use serde_json::Value;

/// The most leaves taken from one report; past it the rest are dropped (a 1 MiB report of
/// tiny values could otherwise make a million rows).
pub const MAX_LEAVES: usize = 2_000;
/// The longest key kept; longer ones are dropped.
pub const MAX_KEY: usize = 256;

/// One leaf.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaf {
    /// The dotted path.
    pub key: String,
    /// Strings and booleans, as text.
    pub text: Option<String>,
    /// Numbers, and booleans as 1 or 0.
    pub number: Option<f64>,
}

/// The leaves of a `metrics` object given as JSON text (as [`super::intake::Received`] keeps
/// it), in document order.
pub fn of_text(metrics: &str) -> Vec<Leaf> {
    match serde_json::from_str::<Value>(metrics) {
        Ok(v) => of(&v),
        Err(_) => Vec::new(),
    }
}

/// The leaves of a `metrics` object.
pub fn of(metrics: &Value) -> Vec<Leaf> {
    let mut out = Vec::new();
    if let Value::Object(map) = metrics {
        for (k, v) in map {
            walk(k.clone(), v, &mut out);
        }
    }
    out
}

fn walk(key: String, value: &Value, out: &mut Vec<Leaf>) {
    if out.len() >= MAX_LEAVES || key.len() > MAX_KEY {
        return;
    }
    let leaf = |text: Option<String>, number: Option<f64>| Leaf {
        key: key.clone(),
        text,
        number,
    };
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                walk(format!("{key}.{k}"), v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk(format!("{key}.{i}"), v, out);
            }
        }
        Value::String(s) => out.push(leaf(Some(s.clone()), None)),
        Value::Bool(b) => out.push(leaf(Some(b.to_string()), Some(if *b { 1.0 } else { 0.0 }))),
        Value::Number(n) => out.push(leaf(None, n.as_f64())),
        Value::Null => out.push(leaf(None, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_flatten_into_dotted_leaves() {
        let m = serde_json::json!({
            "storage_backend": "s3", "feature_enabled_x": true, "ring_replication_factor": 3,
            "memstats": {"heap_inuse": 1024.5}, "distributor_bytes_received": {"total": 7, "rate": 0.5},
            "zones": ["a", "b"], "gone": null,
        });
        let leaves = of(&m);
        let get = |k: &str| leaves.iter().find(|l| l.key == k).cloned().unwrap();
        assert_eq!(get("storage_backend").text.as_deref(), Some("s3"));
        assert_eq!(
            (
                get("feature_enabled_x").text.as_deref(),
                get("feature_enabled_x").number
            ),
            (Some("true"), Some(1.0))
        );
        assert_eq!(get("ring_replication_factor").number, Some(3.0));
        assert_eq!(get("memstats.heap_inuse").number, Some(1024.5));
        assert_eq!(get("distributor_bytes_received.total").number, Some(7.0));
        assert_eq!(get("zones.1").text.as_deref(), Some("b"));
        assert_eq!((get("gone").text, get("gone").number), (None, None));
        assert_eq!(leaves.len(), 9);
        // Bounded, whatever the report.
        let many: serde_json::Map<String, Value> = (0..5000)
            .map(|i| (format!("k{i}"), Value::from(i)))
            .collect();
        assert_eq!(of(&Value::Object(many)).len(), MAX_LEAVES);
        assert!(of_text("not json").is_empty());
    }
}
