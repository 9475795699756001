//! Report slots: `createdAt + k * interval`, in exact integer nanoseconds.
//!
//! `next_slot` is the first slot at or after `now` (a `now` exactly on a slot is that slot);
//! `last_slot` the last one at or before `now`. Slots before `createdAt` do not exist: before
//! the cluster was created the next slot is `createdAt` itself.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};

use crate::timefmt;

fn parts(
    created_at: &DateTime<FixedOffset>,
    now: DateTime<Utc>,
    interval: Duration,
) -> Option<(i128, i128, i128)> {
    let c = i128::from(timefmt::unix_nanos(created_at)?);
    let n = i128::from(timefmt::unix_nanos(&now)?);
    let i = interval.as_nanos() as i128;
    (i > 0).then_some((c, n, i))
}

fn to_time(nanos: i128) -> Option<DateTime<Utc>> {
    i64::try_from(nanos).ok().map(timefmt::from_unix_nanos)
}

/// `created_at + ceil((now - created_at) / interval) * interval`, and `created_at` before it.
pub fn next_slot(
    created_at: &DateTime<FixedOffset>,
    now: DateTime<Utc>,
    interval: Duration,
) -> Option<DateTime<Utc>> {
    let (c, n, i) = parts(created_at, now, interval)?;
    if n <= c {
        return to_time(c);
    }
    let k = (n - c + i - 1) / i;
    to_time(c + k * i)
}

/// The last slot at or before `now`; `None` before `created_at`.
pub fn last_slot(
    created_at: &DateTime<FixedOffset>,
    now: DateTime<Utc>,
    interval: Duration,
) -> Option<DateTime<Utc>> {
    let (c, n, i) = parts(created_at, now, interval)?;
    if n < c {
        return None;
    }
    to_time(c + (n - c) / i * i)
}

/// The slot to freeze at `now`, if any: the last slot at or before `now`, when it is later than
/// `done`, the last slot frozen. After a forward clock jump or a suspended host this is only the
/// latest slot passed (its report covers the whole gap); after a backward jump it is nothing
/// until the clock is past `done` again. So no slot is frozen twice.
pub fn slot_to_freeze(
    created_at: &DateTime<FixedOffset>,
    now: DateTime<Utc>,
    interval: Duration,
    done: Option<DateTime<Utc>>,
) -> Option<DateTime<Utc>> {
    let due = last_slot(created_at, now, interval)?;
    done.is_none_or(|d| due > d).then_some(due)
}

pub use usage_reporter_core::timefmt::{parse_slot_key, slot_key};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> DateTime<FixedOffset> {
        timefmt::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn published_table() {
        let h = Duration::from_secs(3600);
        let cases = [
            (
                "1970-01-01T01:00:00Z",
                "1970-01-01T02:00:00Z",
                "1970-01-01T02:00:00Z",
            ),
            (
                "1970-01-01T01:00:00Z",
                "1970-01-01T02:00:00.000000001Z",
                "1970-01-01T03:00:00Z",
            ),
            (
                "1970-01-01T01:18:00.020Z",
                "1970-01-01T02:00:00.000000001Z",
                "1970-01-01T02:18:00.02Z",
            ),
        ];
        for (created, now, next) in cases {
            let got = next_slot(&t(created), t(now).to_utc(), h).unwrap();
            assert_eq!(timefmt::rfc3339_nano(&got), next, "{created} {now}");
        }
    }

    #[test]
    fn old_clusters_are_exact() {
        // 300 days old, one nanosecond past a slot: the float version is off by one here.
        let created = t("2023-01-01T00:00:00.123456789Z");
        let i = Duration::from_secs(4 * 3600);
        let slot = created.to_utc() + chrono::Duration::hours(4 * 6 * 300);
        assert_eq!(next_slot(&created, slot, i).unwrap(), slot);
        let after = slot + chrono::Duration::nanoseconds(1);
        assert_eq!(
            next_slot(&created, after, i).unwrap(),
            slot + chrono::Duration::hours(4)
        );
        assert_eq!(last_slot(&created, after, i).unwrap(), slot);
    }

    #[test]
    fn clock_jumps_neither_skip_the_latest_slot_nor_double_one() {
        let created = t("2024-01-01T00:00:00Z");
        let h = Duration::from_secs(3600);
        let at = |s: &str| t(s).to_utc();
        // Started at 00:30: the 00:00 slot passed before the start and is not frozen.
        let mut done = last_slot(&created, at("2024-01-01T00:30:00Z"), h);
        assert_eq!(
            slot_to_freeze(&created, at("2024-01-01T00:59:59Z"), h, done),
            None
        );
        // On time.
        let s1 = slot_to_freeze(&created, at("2024-01-01T01:00:00Z"), h, done).unwrap();
        assert_eq!(s1, at("2024-01-01T01:00:00Z"));
        done = Some(s1);
        assert_eq!(
            slot_to_freeze(&created, at("2024-01-01T01:00:04Z"), h, done),
            None
        );
        // Suspended until 04:10: one report, for the latest slot.
        let s2 = slot_to_freeze(&created, at("2024-01-01T04:10:00Z"), h, done).unwrap();
        assert_eq!(s2, at("2024-01-01T04:00:00Z"));
        done = Some(s2);
        // The clock steps back two hours: nothing until it passes 05:00.
        for now in [
            "2024-01-01T02:10:00Z",
            "2024-01-01T03:59:59Z",
            "2024-01-01T04:59:59Z",
        ] {
            assert_eq!(slot_to_freeze(&created, at(now), h, done), None, "{now}");
        }
        assert_eq!(
            slot_to_freeze(&created, at("2024-01-01T05:00:00Z"), h, done),
            Some(at("2024-01-01T05:00:00Z"))
        );
        // Before the seed's creation (a clock behind the seed writer's): nothing.
        assert_eq!(
            slot_to_freeze(&created, at("2023-12-31T23:00:00Z"), h, None),
            None
        );
    }

    #[test]
    fn slot_keys_round_trip_and_sort() {
        let a = t("2024-01-01T00:00:00Z").to_utc();
        let b = t("2024-01-01T00:00:01Z").to_utc();
        assert_eq!(parse_slot_key(&slot_key(a)).unwrap(), a);
        assert!(slot_key(a) < slot_key(b));
        assert!(parse_slot_key("123").is_none());
    }

    proptest! {
        #[test]
        fn next_slot_properties(
            created in 0i64..4_000_000_000_000_000_000,
            offset in 0i64..1_000_000_000_000_000_000,
            interval in 1u64..1_000_000_000_000_000,
            step in 0i64..1_000_000_000_000,
        ) {
            let created_at = timefmt::from_unix_nanos(created).fixed_offset();
            let now = timefmt::from_unix_nanos(created + offset);
            let i = Duration::from_nanos(interval);
            let next = next_slot(&created_at, now, i).unwrap();
            let d = (next - created_at.to_utc()).num_nanoseconds().unwrap() as i128;
            prop_assert!(next >= now);
            prop_assert_eq!(d % interval as i128, 0);
            prop_assert!(((next - now).num_nanoseconds().unwrap() as i128) < interval as i128);
            let later = timefmt::from_unix_nanos(created + offset + step);
            prop_assert!(next_slot(&created_at, later, i).unwrap() >= next);
            let last = last_slot(&created_at, now, i).unwrap();
            prop_assert!(last <= now && last >= created_at.to_utc());
            prop_assert!(next == last || next - last == chrono::Duration::nanoseconds(interval as i64));
        }
    }
}
