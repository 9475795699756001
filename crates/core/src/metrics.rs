//! What the `/metrics` of a replica and of the receiver share: prometheus-client's text
//! encoding (OpenMetrics), its content type, and the latency buckets of both.
//!
//! Each side keeps its figures in prometheus-client's own handles (counters, gauges, families,
//! histograms) and registers them in a [`Registry`]: its own, which `/metrics` encodes, or a
//! service's, so that one scrape of the service shows them beside its own.

use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use prometheus_client;

/// The content type of [`encode`]'s text: OpenMetrics 1.0, which Prometheus negotiates and
/// reads since 2.5 (and reads as its 0.0.4 text format when it does not negotiate).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds, in seconds, of the latency histograms (a delivery, a receiver's store write).
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A latency histogram over [`LATENCY_BUCKETS`], observed in seconds.
pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// A label value escaped as OpenMetrics wants (`\\`, `\"`, `\n`). prometheus-client writes
/// label values as given, and some come from strangers (a report's metric values).
pub fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The registries' families in OpenMetrics text, one after another, with the closing `# EOF`.
pub fn encode(registries: &[&Registry]) -> String {
    let mut out = String::new();
    for registry in registries {
        // Writing to a String cannot fail; an encoder error would be a bug in a collector.
        if let Err(e) = prometheus_client::encoding::text::encode_registry(&mut out, registry) {
            tracing::error!(error = %e, "a metrics family failed to encode; it is cut short");
        }
    }
    let _ = prometheus_client::encoding::text::encode_eof(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn label_values_cannot_break_out_of_their_quotes() {
        assert_eq!(label_value(r#"a"} 1"#), r#"a\"} 1"#);
        assert_eq!(label_value("x\ny"), "x\\ny");
        assert_eq!(label_value(r"c:\"), r"c:\\");
    }

    #[test]
    fn encodes_families_in_order_with_one_eof() {
        let (mut a, mut b) = (Registry::default(), Registry::default());
        let (x, h) = (Counter::<u64>::default(), latency_histogram());
        x.inc_by(3);
        h.observe(0.03);
        a.register("x", "Things", x);
        b.register_with_unit("lat", "Time", prometheus_client::registry::Unit::Seconds, h);
        let text = encode(&[&a, &b]);
        assert!(
            text.contains("# HELP x Things.\n# TYPE x counter\nx_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("lat_seconds_bucket{le=\"0.05\"} 1\n"),
            "{text}"
        );
        assert!(text.find("x_total") < text.find("lat_seconds"), "{text}");
        assert_eq!(text.matches("# EOF").count(), 1);
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
