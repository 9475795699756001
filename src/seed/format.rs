//! The seed object: `{"UID":"<uuid>","created_at":"<RFC 3339>","version":{...}}`, kept with
//! the exact bytes it was read or written as.

use bytes::Bytes;
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::build_info::BuildInfo;
use crate::timefmt;

/// The default object name under the store prefix.
pub const DEFAULT_SEED_NAME: &str = "cluster_seed.json";

/// Seeds are a few hundred bytes; anything past this is not one.
pub const MAX_SEED_BYTES: usize = 64 * 1024;

/// A valid cluster seed, with the exact bytes it was read or written as.
#[derive(Clone, Debug, PartialEq)]
pub struct Seed {
    uid: String,
    created_at: DateTime<FixedOffset>,
    version: Option<Value>,
    raw: Bytes,
}

/// Why an object is not a valid seed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Corruption {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// No string `UID`.
    #[error("\"UID\" is missing or not a string")]
    MissingUid,
    /// A `UID` that is not a UUID, or the nil one.
    #[error("\"UID\" {0:?} is not a UUID")]
    BadUid(String),
    /// No string `created_at`.
    #[error("\"created_at\" is missing or not a string")]
    MissingCreatedAt,
    /// A `created_at` that is not RFC 3339.
    #[error("\"created_at\" {0:?} is not an RFC 3339 timestamp")]
    BadCreatedAt(String),
    /// Past the seed size cap.
    #[error("larger than {MAX_SEED_BYTES} bytes")]
    TooLarge,
}

impl Seed {
    /// A fresh seed: a random v4 UUID, created now (UTC, nanoseconds), and `version`.
    pub fn generate(version: &BuildInfo) -> Seed {
        let uid = Uuid::new_v4().to_string();
        let created_at = Utc::now().fixed_offset();
        let version = serde_json::to_value(version).ok();
        let mut body = serde_json::Map::new();
        body.insert("UID".into(), Value::String(uid.clone()));
        body.insert(
            "created_at".into(),
            Value::String(timefmt::rfc3339_nano(&created_at)),
        );
        if let Some(v) = &version {
            body.insert("version".into(), v.clone());
        }
        let raw = Bytes::from(Value::Object(body).to_string());
        Seed {
            uid,
            created_at,
            version,
            raw,
        }
    }

    /// Validates `bytes` as a seed: a JSON object with a UUID `UID` and an RFC 3339
    /// `created_at`; `version` is optional (Mimir omits it) and any other field is kept.
    pub fn parse(bytes: &[u8]) -> Result<Seed, Corruption> {
        if bytes.len() > MAX_SEED_BYTES {
            return Err(Corruption::TooLarge);
        }
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            let mut m = e.to_string();
            m.truncate(120);
            Corruption::NotJson(m)
        })?;
        let obj = value.as_object().ok_or(Corruption::NotObject)?;
        let uid = obj
            .get("UID")
            .and_then(Value::as_str)
            .ok_or(Corruption::MissingUid)?;
        match Uuid::parse_str(uid) {
            Ok(u) if !u.is_nil() => {}
            _ => return Err(Corruption::BadUid(truncated(uid))),
        }
        let created = obj
            .get("created_at")
            .and_then(Value::as_str)
            .ok_or(Corruption::MissingCreatedAt)?;
        let created_at = timefmt::parse_rfc3339(created)
            .filter(|t| timefmt::unix_nanos(t).is_some())
            .ok_or_else(|| Corruption::BadCreatedAt(truncated(created)))?;
        Ok(Seed {
            uid: uid.to_string(),
            created_at,
            version: obj.get("version").cloned(),
            raw: Bytes::copy_from_slice(bytes),
        })
    }

    /// The cluster ID, exactly as the seed spells it.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// When the cluster was created, in the zone the seed was written in.
    pub fn created_at(&self) -> DateTime<FixedOffset> {
        self.created_at
    }

    /// The writer's version block, if any.
    pub fn version(&self) -> Option<&Value> {
        self.version.as_ref()
    }

    /// The bytes this seed was read or written as.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Whether this identity wins over `other` when two meet after a wipe: the earlier
    /// `createdAt`, then the smaller UID. A total order, so every replica picks the same one.
    pub fn precedes(&self, other: &Seed) -> bool {
        let key = |s: &Seed| {
            (
                timefmt::unix_nanos(&s.created_at),
                s.uid.to_ascii_lowercase(),
            )
        };
        key(self) < key(other)
    }

    /// The identity a frozen report carries (`clusterID`, `createdAt`), as a seed in Mimir's
    /// two-field form. `None` unless both are valid.
    pub fn from_report(bytes: &[u8]) -> Option<Seed> {
        let v: Value = serde_json::from_slice(bytes).ok()?;
        let body = serde_json::json!({
            "UID": v.get("clusterID")?.as_str()?,
            "created_at": v.get("createdAt")?.as_str()?,
        });
        Seed::parse(body.to_string().as_bytes()).ok()
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_foreign_seeds() {
        let tempo = br#"{"UID":"3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e","created_at":"2024-08-09T18:28:28.123456789+02:00","version":{"version":"2.9.10","revision":"7664eda07b","branch":"HEAD","buildUser":"root@host","buildDate":"2024-08-09T18:28:28Z","goVersion":"go1.22.5"}}"#;
        let seed = Seed::parse(tempo).unwrap();
        assert_eq!(seed.uid(), "3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e");
        assert_eq!(
            timefmt::rfc3339_nano(&seed.created_at()),
            "2024-08-09T18:28:28.123456789+02:00"
        );
        assert_eq!(seed.raw().as_ref(), tempo);
        let mimir = br#"{"UID":"3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e","created_at":"2021-01-01T00:00:00Z"}"#;
        assert!(Seed::parse(mimir).unwrap().version().is_none());
    }

    #[test]
    fn rejects_corrupted_forms() {
        type Check = fn(&Corruption) -> bool;
        let cases: &[(&[u8], Check)] = &[
            (b"{}", |c| *c == Corruption::MissingUid),
            (b"{", |c| matches!(c, Corruption::NotJson(_))),
            (b"xxx", |c| matches!(c, Corruption::NotJson(_))),
            (b"", |c| matches!(c, Corruption::NotJson(_))),
            (b"[1,2]", |c| *c == Corruption::NotObject),
            (br#"{"UID":5,"created_at":"2021-01-01T00:00:00Z"}"#, |c| *c == Corruption::MissingUid),
            (br#"{"UID":"nope","created_at":"2021-01-01T00:00:00Z"}"#, |c| matches!(c, Corruption::BadUid(_))),
            (br#"{"UID":"00000000-0000-0000-0000-000000000000","created_at":"2021-01-01T00:00:00Z"}"#, |c| matches!(c, Corruption::BadUid(_))),
            (br#"{"UID":"3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e"}"#, |c| *c == Corruption::MissingCreatedAt),
            (br#"{"UID":"3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e","created_at":17}"#, |c| *c == Corruption::MissingCreatedAt),
            (br#"{"UID":"3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e","created_at":"yesterday"}"#, |c| matches!(c, Corruption::BadCreatedAt(_))),
        ];
        for (bytes, check) in cases {
            let err = Seed::parse(bytes).unwrap_err();
            assert!(check(&err), "{} -> {err:?}", String::from_utf8_lossy(bytes));
        }
        let huge = vec![b' '; MAX_SEED_BYTES + 1];
        assert_eq!(Seed::parse(&huge).unwrap_err(), Corruption::TooLarge);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics_and_accepts_only_valid_seeds(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            if let Ok(seed) = Seed::parse(&bytes) {
                proptest::prop_assert!(Uuid::parse_str(seed.uid()).is_ok());
            }
        }

        #[test]
        fn parse_accepts_any_fraction_and_offset(nanos in 0u32..1_000_000_000, digits in 0usize..10, offset_min in -840i32..840) {
            let frac = if digits == 0 { String::new() } else { format!(".{:09}", nanos)[..digits + 1].to_string() };
            let sign = if offset_min < 0 { '-' } else { '+' };
            let zone = format!("{sign}{:02}:{:02}", offset_min.abs() / 60, offset_min.abs() % 60);
            let text = format!(r#"{{"UID":"3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e","created_at":"2024-02-29T23:59:59{frac}{zone}"}}"#);
            proptest::prop_assert!(Seed::parse(text.as_bytes()).is_ok(), "{}", text);
        }
    }

    #[test]
    fn generated_seed_round_trips() {
        let seed = Seed::generate(&BuildInfo::reporter());
        let again = Seed::parse(seed.raw()).unwrap();
        assert_eq!(again, seed);
        let v: Value = serde_json::from_slice(seed.raw()).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["UID", "created_at", "version"]);
    }

    fn seed_at(uid: &str, created: &str) -> Seed {
        let text = format!(r#"{{"UID":"{uid}","created_at":"{created}"}}"#);
        Seed::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn the_older_identity_precedes_then_the_smaller_uid() {
        let a = seed_at(
            "3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e",
            "2024-01-01T00:00:00Z",
        );
        let b = seed_at(
            "0b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e",
            "2024-01-01T01:00:00+02:00",
        );
        // b is 23:00Z the day before: older, whatever the zones say.
        assert!(b.precedes(&a) && !a.precedes(&b));
        let c = seed_at(
            "ab0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e",
            "2024-01-01T00:00:00Z",
        );
        assert!(a.precedes(&c) && !c.precedes(&a));
        assert!(!a.precedes(&a));
    }
}
