//! The shared bucket.
//!
//! Every replica reads and writes one bucket. This module owns how: a small [`Backend`] trait
//! with the five calls the reporter needs (`get`, `create`, `update`, `list`, `delete`), two
//! backends behind it ([`local::LocalDir`] for plain directories, [`cloud::CloudStore`] for
//! object_store's memory, S3, GCS and Azure clients), and [`Store`], the handle the rest of the
//! crate uses, which adds a deadline to every call and counts requests by operation and outcome.
//!
//! The two conditional writes the cluster's agreement rests on:
//! - `create`: create-if-absent; exactly one of many racers succeeds.
//! - `update`: compare-and-swap against the [`Version`] returned by the last `get`.
//!
//! Keys are relative to the store prefix and use `/` between segments.

pub mod cloud;
pub mod local;
mod open;
pub mod selftest;

pub use open::{open, parse_option, OpenError};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

/// Told of every store request's outcome: how a service (or the reporter's own `/metrics`)
/// counts them without the store knowing who is counting.
pub trait StoreObserver: Send + Sync {
    /// One call answered: `op` is `get`, `create`, `update`, `list`, `put` or `delete`;
    /// `outcome` is `ok` or the error's kind ([`StoreError::kind`]).
    fn request(&self, op: &'static str, outcome: &'static str);
}

/// Requests by operation and outcome: every [`Store`] keeps these, shared by its clones (and
/// by clones of this handle). It is a prometheus-client metric, a counter family labelled
/// `operation` and `outcome`, so `/metrics` shows these very counts.
#[derive(Clone, Debug, Default)]
pub struct RequestCounts(
    Arc<std::sync::Mutex<std::collections::BTreeMap<(&'static str, &'static str), u64>>>,
);

impl RequestCounts {
    /// Requests of `op` that ended in `outcome`.
    pub fn get(&self, op: &str, outcome: &str) -> u64 {
        self.0.lock().map_or(0, |m| {
            m.iter()
                .filter(|((o, r), _)| *o == op && *r == outcome)
                .map(|(_, n)| n)
                .sum()
        })
    }

    /// Requests of any operation and outcome.
    pub fn total(&self) -> u64 {
        self.0.lock().map_or(0, |m| m.values().sum())
    }

    /// Every (operation, outcome) seen, with its count, sorted.
    pub fn snapshot(&self) -> Vec<((&'static str, &'static str), u64)> {
        self.0
            .lock()
            .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
            .unwrap_or_default()
    }

    fn count(&self, op: &'static str, outcome: &'static str) {
        if let Ok(mut m) = self.0.lock() {
            *m.entry((op, outcome)).or_default() += 1;
        }
    }
}

impl prometheus_client::encoding::EncodeMetric for RequestCounts {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), fmt::Error> {
        use prometheus_client::metrics::counter::ConstCounter;
        for ((operation, outcome), n) in self.snapshot() {
            let labels = [("operation", operation), ("outcome", outcome)];
            prometheus_client::encoding::EncodeMetric::encode(
                &ConstCounter::new(n),
                encoder.encode_family(&labels)?,
            )?;
        }
        Ok(())
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        prometheus_client::metrics::MetricType::Counter
    }

    fn is_empty(&self) -> bool {
        self.total() == 0
    }
}

/// The largest object the reporter reads; anything bigger is foreign or corrupted.
pub const MAX_OBJECT_BYTES: usize = 1 << 20;

/// What a compare-and-swap compares: S3 and Azure compare `e_tag`, GCS `version`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Version {
    /// The ETag, where the store has one.
    pub e_tag: Option<String>,
    /// The generation or version ID, where the store has one.
    pub version: Option<String>,
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The key, relative to the store prefix.
    pub key: String,
    /// When it was last written, by the store's clock.
    pub modified: chrono::DateTime<chrono::Utc>,
    /// Its size in bytes.
    pub size: u64,
}

/// An object's bytes and the version they were read at.
#[derive(Clone, Debug)]
pub struct Object {
    /// The content.
    pub bytes: Bytes,
    /// The version the content was read at.
    pub version: Version,
}

/// What went wrong with a store call. Only `NotFound`, `AlreadyExists` and `Precondition` are
/// answers about the object; every other variant says nothing about its content.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No object at the key.
    #[error("{key}: not found")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// A create-if-absent found an object already there: a lost race.
    #[error("{key}: already exists")]
    AlreadyExists {
        /// The key asked for.
        key: String,
    },
    /// A compare-and-swap found the object changed since it was read: a lost race.
    #[error("{key}: changed since it was read")]
    Precondition {
        /// The key asked for.
        key: String,
    },
    /// Carries the version seen, so an oversized object can still be replaced by CAS.
    #[error("{key}: larger than {limit} bytes")]
    TooLarge {
        /// The key asked for.
        key: String,
        /// The limit the read had.
        limit: usize,
        /// The object's version.
        version: Version,
    },
    /// Not a plain object: a symbolic link, a directory, a device or a pipe. The local store
    /// never follows links, so nothing outside the bucket is ever read through one.
    #[error("{key}: not a regular file ({what}); links are never followed")]
    NotRegular {
        /// The key asked for.
        key: String,
        /// What is there instead.
        what: &'static str,
    },
    /// The bucket or container itself does not exist: no retry can fix that.
    #[error("{key}: the bucket or container does not exist ({message})")]
    NoBucket {
        /// The key asked for.
        key: String,
        /// What the store said.
        message: String,
    },
    /// The credentials may not do this.
    #[error("{key}: permission denied: {message}")]
    PermissionDenied {
        /// The key asked for.
        key: String,
        /// What the store said.
        message: String,
    },
    /// The store cannot do this at all (conditional writes, most often).
    #[error("{key}: the store does not support {what}")]
    NotSupported {
        /// The key asked for.
        key: String,
        /// What it cannot do.
        what: String,
    },
    /// The client found no credentials: none in its options or environment, and no instance
    /// metadata endpoint gave any.
    #[error("{key}: no credentials ({message})")]
    NoCredentials {
        /// The key asked for.
        key: String,
        /// What the client said.
        message: String,
    },
    /// No answer within the call's deadline.
    #[error("{key}: {op} did not finish within {timeout:?}")]
    Timeout {
        /// The key asked for.
        key: String,
        /// The call: get, create, update, list or delete.
        op: &'static str,
        /// The deadline.
        timeout: Duration,
    },
    /// Anything else the store or the network said, with its causes.
    #[error("{key}: {message}")]
    Other {
        /// The key asked for.
        key: String,
        /// What was said.
        message: String,
    },
}

impl StoreError {
    /// Whether the store refuses writes for now or for good (access denied, read-only, full)
    /// rather than failing in passing: retrying the same write soon will not help.
    pub fn refuses_writes(&self) -> bool {
        match self {
            StoreError::PermissionDenied { .. } => true,
            StoreError::Other { message, .. } => {
                let m = message.to_ascii_lowercase();
                ["no space left", "quota", "read-only", "read only"]
                    .iter()
                    .any(|s| m.contains(s))
            }
            _ => false,
        }
    }

    /// Short label for metrics and state-change logs.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "not_found",
            StoreError::AlreadyExists { .. } => "already_exists",
            StoreError::Precondition { .. } => "precondition",
            StoreError::TooLarge { .. } => "too_large",
            StoreError::NotRegular { .. } => "not_regular",
            StoreError::NoBucket { .. } => "no_bucket",
            StoreError::PermissionDenied { .. } => "permission_denied",
            StoreError::NotSupported { .. } => "not_supported",
            StoreError::NoCredentials { .. } => "no_credentials",
            StoreError::Timeout { .. } => "timeout",
            StoreError::Other { .. } => "error",
        }
    }

    /// A lost race: the object is not what the caller last saw.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            StoreError::AlreadyExists { .. }
                | StoreError::Precondition { .. }
                | StoreError::NotFound { .. }
        )
    }
}

/// The calls a backend must answer. Implementations never log; [`Store`] does the accounting.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug {
    /// Reads a whole object, failing with `TooLarge` past `limit` bytes.
    async fn get(&self, key: &str, limit: usize) -> Result<Object, StoreError>;
    /// Writes `bytes` only if no object exists at `key`.
    async fn create(&self, key: &str, bytes: Bytes) -> Result<Version, StoreError>;
    /// Writes `bytes` only if the object is still at `expected`.
    async fn update(
        &self,
        key: &str,
        bytes: Bytes,
        expected: &Version,
    ) -> Result<Version, StoreError>;
    /// Objects under `prefix` (a directory-like key), keys relative to the store prefix.
    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError>;
    /// Writes `bytes` whatever is there: for content that is the same on every retry.
    async fn put(&self, key: &str, bytes: Bytes) -> Result<Version, StoreError>;
    /// Removes an object. Succeeds whether or not it was there, as S3, GCS and Azure deletes
    /// do, so a clean-up interrupted and repeated is no error.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
    /// Where this backend points, for logs: scheme, bucket and prefix, never credentials.
    fn describe(&self) -> String;
}

/// The handle the crate uses: a backend, a deadline for every call, and request accounting.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    timeout: Duration,
    /// Kept by every store: what `/metrics` shows, and what tests and tools count.
    counts: RequestCounts,
    /// Whoever else wants to know (a replica's `/metrics`); `None` for nobody.
    observer: Option<Arc<dyn StoreObserver>>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend.describe())
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Default deadline of one store call, retries inside the client included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl Store {
    /// A store over `backend`, with the default deadline.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Store {
            backend,
            timeout: DEFAULT_TIMEOUT,
            counts: RequestCounts::default(),
            observer: None,
        }
    }

    /// An in-memory store, for tests and `memory://`.
    pub fn memory() -> Self {
        Store::new(Arc::new(cloud::CloudStore::memory()))
    }

    /// Sets the deadline of every call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Tells `observer` of every request from now on (this handle and its later clones).
    pub fn with_observer(mut self, observer: Arc<dyn StoreObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The deadline of every call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// This store's requests so far, by operation and outcome (its clones share them).
    pub fn requests(&self) -> &RequestCounts {
        &self.counts
    }

    /// The backend under this handle (to share it with new request counts, say).
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// Where the store points, for logs: never credentials.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    async fn call<T>(
        &self,
        op: &'static str,
        key: &str,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let result = match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout {
                key: key.to_string(),
                op,
                timeout: self.timeout,
            }),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(e) => e.kind(),
        };
        self.counts.count(op, outcome);
        if let Some(o) = &self.observer {
            o.request(op, outcome);
        }
        result
    }

    /// Reads an object of at most 1 MiB.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] if no object is at `key`, [`StoreError::TooLarge`] past 1 MiB,
    /// or what the store or the network said.
    pub async fn get(&self, key: &str) -> Result<Object, StoreError> {
        self.get_limited(key, MAX_OBJECT_BYTES).await
    }

    /// Reads an object of at most `limit` bytes.
    ///
    /// # Errors
    ///
    /// [`StoreError::NotFound`] if no object is at `key`, [`StoreError::TooLarge`] past
    /// `limit`, or what the store or the network said.
    pub async fn get_limited(&self, key: &str, limit: usize) -> Result<Object, StoreError> {
        self.call("get", key, self.backend.get(key, limit)).await
    }

    /// Create-if-absent.
    ///
    /// # Errors
    ///
    /// [`StoreError::AlreadyExists`] if an object is already there (a lost race), or what the
    /// store or the network said.
    pub async fn create(&self, key: &str, bytes: impl Into<Bytes>) -> Result<Version, StoreError> {
        self.call("create", key, self.backend.create(key, bytes.into()))
            .await
    }

    /// Compare-and-swap against `expected`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Precondition`] if the object changed since `expected` was read (a lost
    /// race), [`StoreError::NotFound`] if it is gone, or what the store or the network said.
    pub async fn update(
        &self,
        key: &str,
        bytes: impl Into<Bytes>,
        expected: &Version,
    ) -> Result<Version, StoreError> {
        self.call(
            "update",
            key,
            self.backend.update(key, bytes.into(), expected),
        )
        .await
    }

    /// Every key under `prefix`, sorted.
    ///
    /// # Errors
    ///
    /// What the store or the network said; a prefix with nothing under it is an empty list, not
    /// an error.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .entries(prefix)
            .await?
            .into_iter()
            .map(|e| e.key)
            .collect())
    }

    /// Every object under `prefix` with its time and size, sorted by key.
    ///
    /// # Errors
    ///
    /// What the store or the network said; a prefix with nothing under it is an empty list, not
    /// an error.
    pub async fn entries(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        self.call("list", prefix, self.backend.list(prefix)).await
    }

    /// Writes `bytes` unconditionally (content that is the same on every retry).
    ///
    /// # Errors
    ///
    /// What the store or the network said.
    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<Version, StoreError> {
        self.call("put", key, self.backend.put(key, bytes.into()))
            .await
    }

    /// Deletes an object; no error if it is not there.
    ///
    /// # Errors
    ///
    /// What the store or the network said; an absent object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.call("delete", key, self.backend.delete(key)).await
    }

    /// As [`Store::exists`], for a key made on the spot.
    ///
    /// # Errors
    ///
    /// As [`Store::exists`].
    pub async fn exists_owned(&self, key: String) -> Result<bool, StoreError> {
        self.exists(&key).await
    }

    /// Whether an object is at `key` (its bytes are not read).
    ///
    /// # Errors
    ///
    /// What the store or the network said; an absent object is `Ok(false)`.
    pub async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.get_limited(key, 0).await {
            Ok(_) | Err(StoreError::TooLarge { .. }) | Err(StoreError::NotRegular { .. }) => {
                Ok(true)
            }
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// An error and its causes on one line: top-level messages alone often say only "Generic S3
/// error" or "error sending request".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = s.source();
    }
    message.replace('\n', " ")
}

/// An error whose text may have quoted a credential (a presigned URL, a SAS token, a
/// `user:password@`): its message and causes, redacted, are kept; the original is dropped, so
/// that no walk of the source chain can print what was redacted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted(String);

impl Redacted {
    /// `error` and its causes, redacted.
    pub fn new(error: &dyn std::error::Error) -> Self {
        Redacted(redact(&error_chain(error)))
    }
}

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Redacted {}

/// Removes anything that looks like a query string or credentials from a message that may
/// quote a URL (presigned URLs and SAS tokens carry secrets in the query).
pub fn redact(message: &str) -> String {
    message
        .split(' ')
        .map(|word| {
            if !word.contains("://") {
                return word.to_string();
            }
            let mut w = word.to_string();
            if let Some(q) = w.find('?') {
                w.truncate(q);
                w.push_str("?<redacted>");
            }
            // user:password@host
            if let Some(scheme_end) = w.find("://") {
                let rest = &w[scheme_end + 3..];
                let host_end = rest.find('/').unwrap_or(rest.len());
                if let Some(at) = rest[..host_end].rfind('@') {
                    w = format!("{}<redacted>@{}", &w[..scheme_end + 3], &rest[at + 1..]);
                }
            }
            w
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_strips_queries_and_userinfo() {
        let m =
            redact("error sending request for url (https://acct.blob/c/k?sig=SECRET&se=1) oops");
        assert!(!m.contains("SECRET"), "{m}");
        assert!(m.contains("https://acct.blob/c/k?<redacted>"), "{m}");
        let m = redact("GET http://user:pw@127.0.0.1:9/x failed");
        assert!(!m.contains("pw"), "{m}");
        assert!(m.contains("http://<redacted>@127.0.0.1:9/x"), "{m}");
        assert_eq!(redact("plain words"), "plain words");
    }
}
