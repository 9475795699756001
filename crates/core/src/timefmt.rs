//! Time as the reporter writes and reads it: Go's RFC3339Nano for timestamps, so Go receivers
//! and Tempo/Loki seeds round-trip, and Go-style durations (`500ms`, `15m`, `4h`, `1h30m`) for
//! flags.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, Offset, SecondsFormat, TimeZone, Utc};

/// Formats like Go's `time.RFC3339Nano`: fractional seconds with trailing zeros trimmed (none
/// at all when zero), `Z` for UTC, otherwise the offset.
pub fn rfc3339_nano<Tz: TimeZone>(t: &DateTime<Tz>) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let base = t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let nanos = t.timestamp_subsec_nanos();
    if nanos == 0 {
        return base;
    }
    // base is "YYYY-MM-DDTHH:MM:SS" followed by "Z" or "+hh:mm"; insert the fraction.
    let split = base.len() - if base.ends_with('Z') { 1 } else { 6 };
    let frac = format!("{nanos:09}");
    let frac = frac.trim_end_matches('0');
    format!("{}.{}{}", &base[..split], frac, &base[split..])
}

/// Go's zero time, what Tempo shows before anything is known.
pub const GO_ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// Parses an RFC 3339 timestamp with 0 to 9 fractional digits and any zone offset.
pub fn parse_rfc3339(s: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(s).ok()
}

/// Nanoseconds since the Unix epoch, for exact slot arithmetic. Dates past year 2262 do not
/// fit and give `None`.
pub fn unix_nanos<Tz: TimeZone>(t: &DateTime<Tz>) -> Option<i64> {
    t.timestamp_nanos_opt()
}

/// The instant `nanos` after the Unix epoch.
pub fn from_unix_nanos(nanos: i64) -> DateTime<Utc> {
    Utc.timestamp_nanos(nanos)
}

/// The same instant in the zone of `like`, so a slot of a `+02:00` seed prints in `+02:00`.
pub fn in_zone_of(t: DateTime<Utc>, like: &DateTime<FixedOffset>) -> DateTime<FixedOffset> {
    t.with_timezone(&like.offset().fix())
}

/// Parses `500ms`, `2s`, `15m`, `4h`, `1h30m`, `1.5h`, `7d`. Zero and negative are refused.
///
/// # Errors
///
/// A one-line message saying what is wrong with `s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration".to_string());
    }
    let unlike = || format!("{s:?} is not a duration like 500ms, 2s, 15m or 4h");
    // Exact integer nanoseconds: `1.1s` is 1_100_000_000 ns, not a float's neighbour of it.
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("{s:?} needs a unit (ms, s, m, h, d)"))?;
        let (whole, frac) = match rest[..num_len].split_once('.') {
            Some((w, f)) => (w, f),
            None => (&rest[..num_len], ""),
        };
        if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
            return Err(unlike());
        }
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            unit => {
                return Err(format!(
                    "{s:?} has an unknown unit {unit:?} (use ms, s, m, h, d)"
                ))
            }
        };
        rest = &rest[unit_len..];
        let digits = |d: &str| -> Result<u128, String> {
            if d.len() > 20 {
                return Err(format!(
                    "{s:?} must be a positive duration of at most 300 years"
                ));
            }
            if d.is_empty() {
                Ok(0)
            } else {
                d.parse().map_err(|_| unlike())
            }
        };
        let mut nanos = digits(whole)? * scale;
        // Fraction digits past nanosecond precision are dropped.
        let frac = &frac[..frac.len().min(18)];
        nanos += digits(frac)? * scale / 10u128.pow(frac.len() as u32);
        total = total.saturating_add(nanos);
    }
    const MAX: u128 = 10_000_000_000 * 1_000_000_000;
    if total == 0 || total > MAX {
        return Err(format!(
            "{s:?} must be a positive duration of at most 300 years"
        ));
    }
    let secs = (total / 1_000_000_000) as u64;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// A short human form that loses nothing: `4h`, `1m30s`, `1s500ms`, `1ns`.
pub fn format_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let parts = [
        (secs / 86400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    parts
        .iter()
        .filter(|(v, _)| *v > 0)
        .map(|(v, u)| format!("{v}{u}"))
        .collect()
}

/// A slot as a fixed-width key segment: nanoseconds since the epoch, zero-padded, so that
/// names sort in time order.
pub fn slot_key(slot: DateTime<Utc>) -> String {
    format!("{:020}", slot.timestamp_nanos_opt().unwrap_or(0).max(0))
}

/// The slot of a 20-digit key.
pub fn parse_slot_key(s: &str) -> Option<DateTime<Utc>> {
    if s.len() != 20 {
        return None;
    }
    s.parse::<i64>().ok().map(from_unix_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_nano_matches_go() {
        let t = parse_rfc3339("2024-08-09T18:28:28.120000000+02:00").unwrap();
        assert_eq!(rfc3339_nano(&t), "2024-08-09T18:28:28.12+02:00");
        let t = parse_rfc3339("2024-08-09T18:28:28Z").unwrap();
        assert_eq!(rfc3339_nano(&t), "2024-08-09T18:28:28Z");
        let t = parse_rfc3339("2024-08-09T18:28:28.000000001Z").unwrap();
        assert_eq!(rfc3339_nano(&t), "2024-08-09T18:28:28.000000001Z");
        let t = parse_rfc3339("2024-08-09T18:28:28.5-07:30").unwrap();
        assert_eq!(rfc3339_nano(&t), "2024-08-09T18:28:28.5-07:30");
        assert_eq!(rfc3339_nano(&from_unix_nanos(0)), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("4h").unwrap(), Duration::from_secs(14400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "4", "h", "0s", "-1s", "4x", "1e9h", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(Duration::from_secs(14400)), "4h");
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(format_duration(Duration::from_nanos(1)), "1ns");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        for text in ["1h30m", "1s500ms", "1ns", "2d3h", "1m1us"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }
}
