//! The seed protocol over the store: agree (read, else create-if-absent, a loser reads the
//! winner's), check (restore, repair, reassert or adopt), and remember (the lease record's
//! bytes, else the newest frozen report).

use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::format::{Corruption, Seed, MAX_SEED_BYTES};
use crate::build_info::BuildInfo;
use crate::layout::{self, LEASE_KEY, REPORTS};
use crate::retry::{backoff, sleep_or_stop, StateLog};
use crate::store::{Store, StoreError};

/// The seed's bytes inside the lease record (the `seed` field; see [`crate::lease`]).
#[derive(serde::Deserialize)]
struct LeaseMemory {
    #[serde(default)]
    seed: String,
}

/// Where a remembered identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Memory {
    /// The seed bytes the leader keeps in the lease record: restored byte for byte.
    Lease,
    /// The cluster ID and `createdAt` of the newest frozen report.
    Report,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Memory::Lease => "the lease record",
            Memory::Report => "the newest frozen report",
        })
    }
}

/// How a read of the seed turned out.
#[derive(Debug)]
pub enum ReadOutcome {
    /// A valid seed.
    Valid(Seed),
    /// No object.
    Absent,
    /// An object that is not a valid seed.
    Corrupted(Corruption),
}

/// Why agreement stopped without a seed.
#[derive(Debug, thiserror::Error)]
pub enum AgreeError {
    /// Shutdown came first.
    #[error("shut down before the cluster seed was known")]
    Shutdown,
    /// The store cannot replace a corrupted seed (no compare-and-swap).
    #[error("cannot replace the corrupted seed: {0}")]
    Unsupported(StoreError),
}

/// What [`SeedKeeper::check`] found.
#[derive(Debug)]
pub enum CheckOutcome {
    /// The bucket holds this replica's seed.
    Intact,
    /// The seed had vanished; this replica's bytes are back.
    Restored,
    /// The seed was corrupted; this replica's bytes are back.
    Repaired,
    /// A younger identity (its UID) sat in the bucket; this replica's older one replaced it.
    Reasserted(String),
    /// An older identity sits in the bucket: the replica must adopt it.
    Adopt(Seed),
    /// Another replica wrote the seed between our read and our write; check again.
    Raced,
    /// The store did not answer; nothing was learnt.
    Failed(StoreError),
}

/// Reads, agrees on and guards one seed object.
#[derive(Debug, Clone)]
pub struct SeedKeeper {
    store: Store,
    name: String,
    build: BuildInfo,
}

impl SeedKeeper {
    /// A keeper of the seed `name` on `store`; fresh seeds carry `build`.
    pub fn new(store: Store, name: impl Into<String>, build: BuildInfo) -> Self {
        SeedKeeper {
            store,
            name: name.into(),
            build,
        }
    }

    /// The seed's object name.
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

    /// The identity the rest of the bucket remembers: the seed bytes in the lease record, else
    /// the identity in the newest frozen report that has a valid one. `None` only when the
    /// bucket holds neither; a store failure is an error, never taken for "nothing left".
    pub async fn remembered(&self) -> Result<Option<(Seed, Memory)>, StoreError> {
        match self.store.get(LEASE_KEY).await {
            Ok(obj) => {
                let seed = serde_json::from_slice::<LeaseMemory>(&obj.bytes)
                    .ok()
                    .and_then(|m| Seed::parse(m.seed.as_bytes()).ok());
                if let Some(seed) = seed {
                    return Ok(Some((seed, Memory::Lease)));
                }
            }
            // A lease too large or corrupted remembers nothing; reports may.
            Err(StoreError::NotFound { .. } | StoreError::TooLarge { .. }) => {}
            Err(e) => return Err(e),
        }
        let mut reports: Vec<_> = self
            .store
            .list(REPORTS)
            .await?
            .into_iter()
            .filter_map(|k| layout::parse_key(&k, REPORTS).map(|(slot, _)| (slot, k)))
            .collect();
        reports.sort();
        // The newest few: one garbage object must not hide the cluster.
        for (_, key) in reports.iter().rev().take(5) {
            match self.store.get(key).await {
                Ok(obj) => {
                    if let Some(seed) = Seed::from_report(&obj.bytes) {
                        return Ok(Some((seed, Memory::Report)));
                    }
                }
                Err(StoreError::NotFound { .. } | StoreError::TooLarge { .. }) => {}
                Err(StoreError::NotRegular { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(None)
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

    /// The seed to write where none is valid: the remembered one, or a fresh one when the bucket
    /// remembers nothing.
    async fn successor(&self) -> Result<(Seed, Option<Memory>), StoreError> {
        Ok(match self.remembered().await? {
            Some((seed, memory)) => (seed, Some(memory)),
            None => (Seed::generate(&self.build), None),
        })
    }

    async fn agree_once(&self) -> Step {
        let obj = match self.store.get_limited(&self.name, MAX_SEED_BYTES).await {
            Ok(obj) => obj,
            Err(StoreError::NotFound { .. }) => {
                let (seed, memory) = match self.successor().await {
                    Ok(s) => s,
                    Err(e) => return Step::Failed("reading what the bucket remembers", e),
                };
                return match self.store.create(&self.name, seed.raw().clone()).await {
                    Ok(_) => {
                        match memory {
                            Some(from) => tracing::warn!(
                                cluster_id = seed.uid(),
                                seed = %self.name,
                                "the cluster seed was missing; restored it from {from}"
                            ),
                            None => tracing::info!(
                                cluster_id = seed.uid(),
                                seed = %self.name,
                                "created the cluster seed"
                            ),
                        }
                        Step::Done(seed)
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
        let (seed, memory) = match self.successor().await {
            Ok(s) => s,
            Err(e) => return Step::Failed("reading what the bucket remembers", e),
        };
        match self
            .store
            .update(&self.name, seed.raw().clone(), version)
            .await
        {
            Ok(_) => {
                match memory {
                    Some(from) => tracing::warn!(
                        cluster_id = seed.uid(),
                        "replaced the corrupted cluster seed with the one kept in {from}"
                    ),
                    None => tracing::info!(
                        cluster_id = seed.uid(),
                        "replaced the corrupted cluster seed with a new one: nothing in the bucket remembered the cluster"
                    ),
                }
                Step::Done(seed)
            }
            Err(e) if e.is_conflict() => Step::Conflict,
            Err(e @ StoreError::NotSupported { .. }) => Step::Unsupported(e),
            Err(e) => Step::Failed("replace", e),
        }
    }

    /// Checks the seed in the bucket against `known`, this replica's identity, and keeps the
    /// cluster on one identity: restores a vanished or corrupted seed with `known`'s exact
    /// bytes, replaces a younger identity with `known`, and tells the caller to adopt an older
    /// one. Logging is the caller's.
    pub async fn check(&self, known: &Seed) -> CheckOutcome {
        let obj = match self.store.get_limited(&self.name, MAX_SEED_BYTES).await {
            Err(StoreError::TooLarge { version, .. }) => crate::store::Object {
                bytes: Bytes::new(),
                version,
            },
            Ok(obj) => obj,
            Err(StoreError::NotFound { .. }) => {
                return match self.store.create(&self.name, known.raw().clone()).await {
                    Ok(_) => CheckOutcome::Restored,
                    Err(e) if e.is_conflict() => CheckOutcome::Raced,
                    Err(e) => CheckOutcome::Failed(e),
                }
            }
            Err(e) => return CheckOutcome::Failed(e),
        };
        let outcome = match Seed::parse(&obj.bytes) {
            Ok(seed) if seed.uid() == known.uid() => return CheckOutcome::Intact,
            Ok(seed) if seed.precedes(known) => return CheckOutcome::Adopt(seed),
            Ok(younger) => CheckOutcome::Reasserted(younger.uid().to_string()),
            Err(_) => CheckOutcome::Repaired,
        };
        match self
            .store
            .update(&self.name, known.raw().clone(), &obj.version)
            .await
        {
            Ok(_) => outcome,
            Err(e) if e.is_conflict() => CheckOutcome::Raced,
            Err(e) => CheckOutcome::Failed(e),
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
    use crate::seed::DEFAULT_SEED_NAME;
    use crate::timefmt;

    fn seed_at(uid: &str, created: &str) -> Seed {
        let text = format!(r#"{{"UID":"{uid}","created_at":"{created}"}}"#);
        Seed::parse(text.as_bytes()).unwrap()
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
        assert!(matches!(keeper.check(&seed).await, CheckOutcome::Intact));
        store.delete("s.json").await.unwrap();
        assert!(matches!(keeper.check(&seed).await, CheckOutcome::Restored));
        assert_eq!(store.get("s.json").await.unwrap().bytes, *seed.raw());
        let v = store.get("s.json").await.unwrap().version;
        store.update("s.json", "{}", &v).await.unwrap();
        assert!(matches!(keeper.check(&seed).await, CheckOutcome::Repaired));
        assert_eq!(store.get("s.json").await.unwrap().bytes, *seed.raw());
        // Past the read cap: still repaired, at the version it was seen at.
        let v = store.get("s.json").await.unwrap().version;
        store
            .update("s.json", vec![b'x'; MAX_SEED_BYTES * 2], &v)
            .await
            .unwrap();
        assert!(matches!(keeper.check(&seed).await, CheckOutcome::Repaired));
        assert_eq!(store.get("s.json").await.unwrap().bytes, *seed.raw());
    }

    #[tokio::test]
    async fn a_newcomer_restores_a_deleted_or_corrupted_seed_from_the_lease_record() {
        let store = Store::memory();
        let keeper = SeedKeeper::new(store.clone(), "s.json", BuildInfo::reporter());
        let seed = keeper.agree(&CancellationToken::new()).await.unwrap();
        let lease = serde_json::json!({"holder": "x", "seed": String::from_utf8_lossy(seed.raw())});
        store.create(LEASE_KEY, lease.to_string()).await.unwrap();
        store.delete("s.json").await.unwrap();
        let newcomer = SeedKeeper::new(store.clone(), "s.json", BuildInfo::reporter());
        let again = newcomer.agree(&CancellationToken::new()).await.unwrap();
        assert_eq!(again.raw(), seed.raw());
        let v = store.get("s.json").await.unwrap().version;
        store.update("s.json", "garbage", &v).await.unwrap();
        let again = newcomer.agree(&CancellationToken::new()).await.unwrap();
        assert_eq!(again.raw(), seed.raw());
        assert_eq!(store.get("s.json").await.unwrap().bytes, *seed.raw());
    }

    #[tokio::test]
    async fn without_a_lease_the_newest_valid_report_remembers_the_cluster() {
        let store = Store::memory();
        let id = "3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e";
        let old = serde_json::json!({"clusterID": id, "createdAt": "2024-01-01T00:00:00.5Z"});
        let slot = |s: &str| timefmt::parse_rfc3339(s).unwrap().to_utc();
        let inst = "0b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e";
        store
            .create(
                &layout::report_key(slot("2024-01-02T00:00:00Z"), inst),
                old.to_string(),
            )
            .await
            .unwrap();
        // A newer garbage object does not hide it.
        store
            .create(
                &layout::report_key(slot("2024-01-03T00:00:00Z"), inst),
                "garbage",
            )
            .await
            .unwrap();
        let keeper = SeedKeeper::new(store.clone(), "s.json", BuildInfo::reporter());
        let (seed, from) = keeper.remembered().await.unwrap().unwrap();
        assert_eq!((seed.uid(), from), (id, Memory::Report));
        let agreed = keeper.agree(&CancellationToken::new()).await.unwrap();
        assert_eq!(agreed.uid(), id);
        assert_eq!(
            timefmt::rfc3339_nano(&agreed.created_at()),
            "2024-01-01T00:00:00.5Z"
        );
    }

    #[tokio::test]
    async fn two_identities_converge_on_the_older() {
        let store = Store::memory();
        let old = seed_at(
            "3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e",
            "2024-01-01T00:00:00Z",
        );
        let young = seed_at(
            "0b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e",
            "2025-01-01T00:00:00Z",
        );
        store.create("s.json", young.raw().clone()).await.unwrap();
        let keeper = SeedKeeper::new(store.clone(), "s.json", BuildInfo::reporter());
        // The younger identity's holder changes nothing and is told nothing new.
        assert!(matches!(keeper.check(&young).await, CheckOutcome::Intact));
        // The older identity's holder writes it back over the younger.
        assert!(
            matches!(keeper.check(&old).await, CheckOutcome::Reasserted(ref u) if u == young.uid())
        );
        assert_eq!(store.get("s.json").await.unwrap().bytes, *old.raw());
        // And the younger one's holder is now told to adopt the older.
        assert!(
            matches!(keeper.check(&young).await, CheckOutcome::Adopt(ref s) if s.uid() == old.uid())
        );
        assert_eq!(store.get("s.json").await.unwrap().bytes, *old.raw());
    }
}
