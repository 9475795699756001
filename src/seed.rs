//! The cluster seed: the one object that gives a cluster its identity.
//!
//! Format (Tempo/Loki's, so their seeds and Mimir's two-field form are read as they are):
//! `{"UID":"<uuid>","created_at":"<RFC 3339>","version":{...}}`.
//!
//! Agreement, in [`SeedKeeper::agree`]: read; if absent, create-if-absent a fresh seed; a loser
//! reads the winner's. No stability wait, no gossip: agreement takes as long as the store takes
//! to answer. A seed whose content does not parse is corrupted and replaced by compare-and-swap
//! on the exact version read, so one replica wins the replacement and the others adopt its seed.
//! A failed call (network, 5xx, permission, timeout) is never taken as corruption: it is retried
//! with exponential backoff and jitter, logged when the state changes, not on every attempt.
//! Nothing here ever deletes anything.
//!
//! Once agreed, the identity is for ever: [`SeedKeeper::check`] restores a seed that vanished or
//! was corrupted with the very bytes this replica adopted.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, FixedOffset, Utc};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::build_info::BuildInfo;
use crate::retry::{backoff, sleep_or_stop, StateLog};
use crate::store::{Store, StoreError};
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
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("\"UID\" is missing or not a string")]
    MissingUid,
    #[error("\"UID\" {0:?} is not a UUID")]
    BadUid(String),
    #[error("\"created_at\" is missing or not a string")]
    MissingCreatedAt,
    #[error("\"created_at\" {0:?} is not an RFC 3339 timestamp")]
    BadCreatedAt(String),
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

    pub fn version(&self) -> Option<&Value> {
        self.version.as_ref()
    }

    /// The bytes this seed was read or written as.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

fn truncated(s: &str) -> String {
    s.chars().take(64).collect()
}

/// How a read of the seed turned out.
#[derive(Debug)]
pub enum ReadOutcome {
    Valid(Seed),
    Absent,
    Corrupted(Corruption),
}

/// Why agreement stopped without a seed.
#[derive(Debug, thiserror::Error)]
pub enum AgreeError {
    #[error("shut down before the cluster seed was known")]
    Shutdown,
    #[error("cannot replace the corrupted seed: {0}")]
    Unsupported(StoreError),
}

/// What [`SeedKeeper::check`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum CheckOutcome {
    Intact,
    Restored,
    Repaired,
    /// A different valid seed sits in the bucket; this replica keeps its identity.
    Foreign(String),
    Failed(String),
}

/// Reads, agrees on and guards one seed object.
#[derive(Debug, Clone)]
pub struct SeedKeeper {
    store: Store,
    name: String,
    build: BuildInfo,
}

impl SeedKeeper {
    pub fn new(store: Store, name: impl Into<String>, build: BuildInfo) -> Self {
        SeedKeeper {
            store,
            name: name.into(),
            build,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// One read, no retries.
    pub async fn read(&self) -> Result<ReadOutcome, StoreError> {
        match self.store.get_limited(&self.name, MAX_SEED_BYTES).await {
            Ok(obj) => Ok(match Seed::parse(&obj.bytes) {
                Ok(seed) => ReadOutcome::Valid(seed),
                Err(c) => ReadOutcome::Corrupted(c),
            }),
            Err(StoreError::NotFound { .. }) => Ok(ReadOutcome::Absent),
            Err(StoreError::TooLarge { .. }) => Ok(ReadOutcome::Corrupted(Corruption::TooLarge)),
            Err(e) => Err(e),
        }
    }

    /// Agrees on the cluster seed with every other replica; retries until it is known or
    /// `shutdown` fires.
    pub async fn agree(&self, shutdown: &CancellationToken) -> Result<Seed, AgreeError> {
        let mut delays = backoff(Duration::from_millis(200), Duration::from_secs(60));
        let mut log = StateLog::default();
        let mut conflicts = 0u32;
        loop {
            let step = self.agree_once().await;
            let wait = match step {
                Step::Done(seed) => {
                    if log.recovered() {
                        tracing::info!("cluster seed: store reachable again");
                    }
                    return Ok(seed);
                }
                Step::Unsupported(e) => return Err(AgreeError::Unsupported(e)),
                Step::Conflict => {
                    if log.recovered() {
                        tracing::info!("cluster seed: store reachable again");
                    }
                    conflicts += 1;
                    // A lost race is progress; retry at once, but never spin on a store that
                    // keeps contradicting itself.
                    if conflicts <= 3 {
                        continue;
                    }
                    delays.next().unwrap_or(Duration::from_secs(1))
                }
                Step::Failed(what, e) => {
                    if log.failing(format!("{what}:{}", e.kind())) {
                        tracing::warn!(error = %e, "cluster seed: {what} failed; retrying with backoff");
                    }
                    delays.next().unwrap_or(Duration::from_secs(60))
                }
            };
            if sleep_or_stop(wait, shutdown).await {
                return Err(AgreeError::Shutdown);
            }
        }
    }

    async fn agree_once(&self) -> Step {
        let obj = match self.store.get_limited(&self.name, MAX_SEED_BYTES).await {
            Ok(obj) => obj,
            Err(StoreError::NotFound { .. }) => {
                let fresh = Seed::generate(&self.build);
                return match self.store.create(&self.name, fresh.raw.clone()).await {
                    Ok(_) => {
                        tracing::info!(
                            cluster_id = fresh.uid(),
                            seed = %self.name,
                            "created the cluster seed"
                        );
                        Step::Done(fresh)
                    }
                    // Lost the race (or S3 answered 409 to a concurrent write): read again.
                    Err(e) if e.is_conflict() => Step::Conflict,
                    Err(e @ StoreError::NotSupported { .. }) => Step::Unsupported(e),
                    Err(e) => Step::Failed("create", e),
                };
            }
            // Too large to be a seed: corrupted, replaced at the version it was seen at.
            Err(StoreError::TooLarge { version, .. }) => {
                return self.replace(&version, Corruption::TooLarge).await;
            }
            Err(e) => return Step::Failed("read", e),
        };
        match Seed::parse(&obj.bytes) {
            Ok(seed) => {
                tracing::info!(cluster_id = seed.uid(), seed = %self.name, "adopted the cluster seed");
                Step::Done(seed)
            }
            Err(corruption) => self.replace(&obj.version, corruption).await,
        }
    }

    async fn replace(&self, version: &crate::store::Version, why: Corruption) -> Step {
        tracing::warn!(seed = %self.name, reason = %why, "the cluster seed is corrupted; replacing it");
        let fresh = Seed::generate(&self.build);
        match self
            .store
            .update(&self.name, fresh.raw.clone(), version)
            .await
        {
            Ok(_) => {
                tracing::info!(
                    cluster_id = fresh.uid(),
                    "replaced the corrupted cluster seed"
                );
                Step::Done(fresh)
            }
            Err(e) if e.is_conflict() => Step::Conflict,
            Err(e @ StoreError::NotSupported { .. }) => Step::Unsupported(e),
            Err(e) => Step::Failed("replace", e),
        }
    }

    /// Checks that the seed in the bucket is still `known`; restores it (absent) or repairs it
    /// (corrupted) with the exact bytes `known` was adopted as. Never overwrites a valid seed.
    pub async fn check(&self, known: &Seed) -> CheckOutcome {
        let obj = match self.store.get_limited(&self.name, MAX_SEED_BYTES).await {
            Err(StoreError::TooLarge { version, .. }) => crate::store::Object {
                bytes: Bytes::new(),
                version,
            },
            Ok(obj) => obj,
            Err(StoreError::NotFound { .. }) => {
                return match self.store.create(&self.name, known.raw.clone()).await {
                    Ok(_) => {
                        tracing::warn!(
                            cluster_id = known.uid(),
                            "the cluster seed had vanished; restored it"
                        );
                        CheckOutcome::Restored
                    }
                    Err(e) if e.is_conflict() => CheckOutcome::Intact,
                    Err(e) => CheckOutcome::Failed(e.to_string()),
                }
            }
            Err(e) => return CheckOutcome::Failed(e.to_string()),
        };
        match Seed::parse(&obj.bytes) {
            Ok(seed) if seed.uid == known.uid => CheckOutcome::Intact,
            Ok(seed) => CheckOutcome::Foreign(seed.uid),
            Err(why) => match self
                .store
                .update(&self.name, known.raw.clone(), &obj.version)
                .await
            {
                Ok(_) => {
                    tracing::warn!(reason = %why, cluster_id = known.uid(), "the cluster seed was corrupted; restored it");
                    CheckOutcome::Repaired
                }
                Err(e) if e.is_conflict() => CheckOutcome::Intact,
                Err(e) => CheckOutcome::Failed(e.to_string()),
            },
        }
    }
}

enum Step {
    Done(Seed),
    Conflict,
    Unsupported(StoreError),
    Failed(&'static str, StoreError),
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

    #[tokio::test]
    async fn many_tasks_agree_on_one_seed_in_memory() {
        for _ in 0..20 {
            let store = Store::memory();
            let mut tasks = Vec::new();
            for _ in 0..100 {
                let keeper =
                    SeedKeeper::new(store.clone(), DEFAULT_SEED_NAME, BuildInfo::reporter());
                tasks.push(tokio::spawn(async move {
                    keeper.agree(&CancellationToken::new()).await.unwrap()
                }));
            }
            let mut ids = std::collections::HashSet::new();
            for t in tasks {
                ids.insert(t.await.unwrap().uid().to_string());
            }
            assert_eq!(ids.len(), 1);
        }
    }

    #[tokio::test]
    async fn check_restores_a_vanished_or_corrupted_seed_with_the_same_bytes() {
        let store = Store::memory();
        let keeper = SeedKeeper::new(store.clone(), "s.json", BuildInfo::reporter());
        let seed = keeper.agree(&CancellationToken::new()).await.unwrap();
        assert_eq!(keeper.check(&seed).await, CheckOutcome::Intact);
        store.delete("s.json").await.unwrap();
        assert_eq!(keeper.check(&seed).await, CheckOutcome::Restored);
        assert_eq!(store.get("s.json").await.unwrap().bytes, *seed.raw());
        let v = store.get("s.json").await.unwrap().version;
        store.update("s.json", "{}", &v).await.unwrap();
        assert_eq!(keeper.check(&seed).await, CheckOutcome::Repaired);
        assert_eq!(store.get("s.json").await.unwrap().bytes, *seed.raw());
        // Past the read cap: still repaired, at the version it was seen at.
        let v = store.get("s.json").await.unwrap().version;
        store
            .update("s.json", vec![b'x'; MAX_SEED_BYTES * 2], &v)
            .await
            .unwrap();
        assert_eq!(keeper.check(&seed).await, CheckOutcome::Repaired);
        assert_eq!(store.get("s.json").await.unwrap().bytes, *seed.raw());
    }
}
