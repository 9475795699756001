//! What `reporter seed show` and `reporter lease show` read, and how they print it.
//!
//! Each reads one object with a few quick retries for passing failures (never minutes of
//! them: a person is waiting) and says in one line what it found: the object, its absence, why
//! it is corrupted, or what the store answered.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use crate::build_info::BuildInfo;
use crate::lease::{LeaseRecord, LEASE_KEY};
use crate::retry::a_few_times;
use crate::seed::{ReadOutcome, SeedKeeper};
use crate::store::{Store, StoreError};
use crate::timefmt;

/// Why there is nothing to show.
#[derive(Debug, thiserror::Error)]
pub(crate) enum InspectError {
    /// The object is not there.
    #[error("no {what} at {location}: no replica has run on this store yet (start one with reporter run --store pointing here), or --store names another bucket or prefix than the replicas'")]
    Absent {
        /// "cluster seed" or "leader lease".
        what: &'static str,
        /// Store and key.
        location: String,
    },
    /// The object is there and is not what it should be.
    #[error("the {what} at {location} is corrupted: {why}")]
    Corrupted {
        /// "cluster seed" or "leader lease".
        what: &'static str,
        /// Store and key.
        location: String,
        /// What is wrong with it.
        why: String,
    },
    /// The bucket or container does not exist.
    #[error("the bucket or container of {store} does not exist ({message}); create it or fix the store URL")]
    NoBucket {
        /// The store.
        store: String,
        /// What it answered.
        message: String,
    },
    /// The store did not answer.
    #[error("cannot read the {what}: {source}")]
    Store {
        /// "cluster seed" or "leader lease".
        what: &'static str,
        /// What the store said.
        source: StoreError,
    },
}

/// Passing failures are worth another try; an answer about the object or the credentials is not.
fn passing(e: &StoreError) -> bool {
    !matches!(
        e,
        StoreError::PermissionDenied { .. }
            | StoreError::NotSupported { .. }
            | StoreError::NotFound { .. }
            | StoreError::TooLarge { .. }
            | StoreError::NotRegular { .. }
            | StoreError::NoBucket { .. }
    )
}

/// A store failure as the inspection error that says most.
fn failed(what: &'static str, store: &Store, source: StoreError) -> InspectError {
    match source {
        StoreError::NoBucket { message, .. } => InspectError::NoBucket {
            store: store.describe(),
            message,
        },
        source => InspectError::Store { what, source },
    }
}

/// The seed, as `seed show` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SeedView {
    /// The seed's UID.
    #[serde(rename = "clusterID")]
    pub cluster_id: String,
    /// `created_at`, in Go's RFC 3339 form.
    pub created_at: String,
    /// Whole seconds since `created_at`.
    pub age_seconds: u64,
    /// The version block of whoever wrote the seed, if any.
    pub version: Option<serde_json::Value>,
}

impl SeedView {
    /// The text form: one `name: value` line each.
    pub(crate) fn text(&self) -> String {
        let age = timefmt::format_duration(Duration::from_secs(self.age_seconds));
        let version = self
            .version
            .as_ref()
            .map_or("(none)".to_string(), |v| v.to_string());
        format!(
            "clusterID: {}\ncreatedAt: {} ({age} ago)\nversion:   {version}\n",
            self.cluster_id, self.created_at
        )
    }
}

/// Reads the seed `name`.
pub(crate) async fn seed(store: Store, name: &str) -> Result<SeedView, InspectError> {
    let what = "cluster seed";
    let location = format!("{}/{name}", store.describe());
    let keeper = SeedKeeper::new(store.clone(), name, BuildInfo::reporter());
    let outcome = a_few_times(3, passing, async || keeper.read().await)
        .await
        .map_err(|source| failed(what, &store, source))?;
    let seed = match outcome {
        ReadOutcome::Valid(seed) => seed,
        ReadOutcome::Absent => return Err(InspectError::Absent { what, location }),
        ReadOutcome::Corrupted(why) => {
            return Err(InspectError::Corrupted {
                what,
                location,
                why: why.to_string(),
            })
        }
    };
    let age = (Utc::now() - seed.created_at().to_utc())
        .to_std()
        .unwrap_or_default();
    Ok(SeedView {
        cluster_id: seed.uid().to_string(),
        created_at: timefmt::rfc3339_nano(&seed.created_at()),
        age_seconds: age.as_secs(),
        version: seed.version().cloned(),
    })
}

/// The lease, as `lease show` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LeaseView {
    /// The holder's instance ID; empty once released.
    pub holder: String,
    /// The fencing term.
    pub term: u64,
    /// When the last term began, by the holder's clock.
    pub acquired_at: String,
    /// The last renewal, by the holder's clock.
    pub renewed_at: String,
    /// The TTL the holder runs with.
    pub ttl_ms: u64,
    /// Judged by the holder's own timestamps, which only a person should trust.
    pub looks_expired: bool,
    /// The holder stopped cleanly and handed the lease back.
    pub released: bool,
}

impl LeaseView {
    /// The view of a record.
    pub(crate) fn of(record: &LeaseRecord) -> Self {
        let renewed = timefmt::parse_rfc3339(&record.renewed_at);
        let looks_expired = record.holder.is_empty()
            || renewed.is_none_or(|r| {
                (Utc::now() - r.to_utc())
                    .to_std()
                    .is_ok_and(|age| age > Duration::from_millis(record.ttl_ms))
            });
        LeaseView {
            holder: record.holder.clone(),
            term: record.term,
            acquired_at: record.acquired_at.clone(),
            renewed_at: record.renewed_at.clone(),
            ttl_ms: record.ttl_ms,
            looks_expired,
            released: record.holder.is_empty(),
        }
    }

    /// The text form: one `name: value` line each.
    pub(crate) fn text(&self) -> String {
        let holder = if self.released {
            "(released)"
        } else {
            &self.holder
        };
        let expired = if self.looks_expired {
            "yes (by the holder's clock)"
        } else {
            "no"
        };
        format!(
            "holder:     {holder}\nterm:       {}\nacquired:   {}\nrenewed:    {}\nttl:        {}\nexpired:    {expired}\n",
            self.term,
            self.acquired_at,
            self.renewed_at,
            timefmt::format_duration(Duration::from_millis(self.ttl_ms)),
        )
    }
}

/// Reads the leader lease.
pub(crate) async fn lease(store: Store) -> Result<LeaseView, InspectError> {
    let what = "leader lease";
    let location = format!("{}/{LEASE_KEY}", store.describe());
    let obj = match a_few_times(3, passing, async || store.get(LEASE_KEY).await).await {
        Ok(obj) => obj,
        Err(StoreError::NotFound { .. }) => return Err(InspectError::Absent { what, location }),
        Err(StoreError::TooLarge { limit, .. }) => {
            return Err(InspectError::Corrupted {
                what,
                location,
                why: format!("larger than {limit} bytes"),
            })
        }
        Err(source) => return Err(failed(what, &store, source)),
    };
    let record = LeaseRecord::parse(&obj.bytes).map_err(|e| InspectError::Corrupted {
        what,
        location,
        why: e.to_string(),
    })?;
    Ok(LeaseView::of(&record))
}
