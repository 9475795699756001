//! Start-up self-test of the store's conditional writes.
//!
//! Some S3-compatible servers accept `If-None-Match` and `If-Match` and ignore them, and
//! object_store's `aws_conditional_put=disabled` turns them off. On such a store two replicas
//! could both "win" the seed race or both hold the lease, so before anything else a replica
//! writes a scratch key under `usage/selftest/` and checks that a second create is refused and
//! that a compare-and-swap against a stale version is refused. A store that fails either check
//! is reported in one line and the replica stops: no seed race, no leader election.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Store, StoreError};
use crate::retry::{backoff, sleep_or_stop, StateLog};

/// Why the self-test refused the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SelfTestError {
    /// A second create-if-absent succeeded.
    #[error("the store at {store} ignores create-if-absent (a second create of {key} succeeded); refusing to run the seed race and leader election on it")]
    CreateIgnored {
        /// The store.
        store: String,
        /// The scratch key.
        key: String,
    },
    /// A compare-and-swap against a stale version succeeded.
    #[error("the store at {store} ignores compare-and-swap (a write against a stale version of {key} succeeded); refusing to run leader election on it")]
    CasIgnored {
        /// The store.
        store: String,
        /// The scratch key.
        key: String,
    },
    /// The store refused conditional writes.
    #[error("the store at {store} does not support conditional writes ({0}); refusing to run the seed race and leader election on it", .source)]
    Unsupported {
        /// The store.
        store: String,
        /// What it answered.
        source: StoreError,
    },
    /// The bucket or container does not exist (or a local store path cannot be one).
    #[error("the bucket or container of {store} does not exist ({message}); create it or fix the store URL")]
    NoBucket {
        /// The store.
        store: String,
        /// What it answered.
        message: String,
    },
    /// Neither reading nor writing is allowed.
    #[error("the store at {store} denies both reading and writing ({source}); check the credentials and their permissions on the bucket")]
    Denied {
        /// The store.
        store: String,
        /// What it answered.
        source: StoreError,
    },
    /// The client found no credentials.
    #[error("no credentials for {store} ({message}); {what}")]
    NoCredentials {
        /// The store.
        store: String,
        /// What the client said.
        message: String,
        /// What to set, for this kind of store.
        what: &'static str,
    },
    /// Shutdown came first.
    #[error("shut down during the store self-test")]
    Shutdown,
}

/// What to set when a store's client finds no credentials.
fn credentials_hint(store: &str) -> &'static str {
    if store.starts_with("s3://") {
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_PROFILE and ~/.aws are not read), or run where an instance role or web identity token is available"
    } else if store.starts_with("gs://") {
        "set GOOGLE_SERVICE_ACCOUNT or GOOGLE_APPLICATION_CREDENTIALS to a service account key file, or run where the metadata server grants one"
    } else {
        "set AZURE_STORAGE_ACCOUNT_NAME with AZURE_STORAGE_ACCOUNT_KEY or AZURE_STORAGE_SAS_KEY, or run with a managed identity"
    }
}

/// What the replica may do with the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read and write, with conditional writes honoured.
    ReadWrite,
    /// Read only: the replica adopts the seed and sends its own reports, and never leads.
    ReadOnly,
}

enum Probe {
    Pass,
    ReadOnly,
    Unsafe(SelfTestError),
    Retry(StoreError),
}

async fn probe(store: &Store, key: &str) -> Probe {
    let unsupported = |e: StoreError| match e {
        StoreError::NotSupported { .. } => Probe::Unsafe(SelfTestError::Unsupported {
            store: store.describe(),
            source: e,
        }),
        StoreError::NoBucket { message, .. } => Probe::Unsafe(SelfTestError::NoBucket {
            store: store.describe(),
            message,
        }),
        StoreError::NoCredentials { message, .. } => {
            let store = store.describe();
            let what = credentials_hint(&store);
            Probe::Unsafe(SelfTestError::NoCredentials {
                store,
                message,
                what,
            })
        }
        other => Probe::Retry(other),
    };
    match store.create(key, "a").await {
        Ok(_) => {}
        Err(StoreError::AlreadyExists { .. }) => {}
        // Writing is denied: can it read?
        Err(denied @ StoreError::PermissionDenied { .. }) => {
            return match store.get(key).await {
                Ok(_) | Err(StoreError::NotFound { .. }) => Probe::ReadOnly,
                Err(StoreError::PermissionDenied { .. }) => Probe::Unsafe(SelfTestError::Denied {
                    store: store.describe(),
                    source: denied,
                }),
                Err(e) => unsupported(e),
            };
        }
        Err(e) => return unsupported(e),
    }
    match store.create(key, "b").await {
        Err(StoreError::AlreadyExists { .. }) => {}
        Ok(_) => {
            return Probe::Unsafe(SelfTestError::CreateIgnored {
                store: store.describe(),
                key: key.to_string(),
            })
        }
        Err(e) => return unsupported(e),
    }
    let stale = match store.get(key).await {
        Ok(obj) => obj.version,
        Err(e) => return Probe::Retry(e),
    };
    let nonce = uuid::Uuid::new_v4().to_string();
    match store.update(key, format!("c-{nonce}"), &stale).await {
        Ok(_) => {}
        Err(e) => return unsupported(e),
    }
    match store.update(key, format!("d-{nonce}"), &stale).await {
        Err(StoreError::Precondition { .. }) | Err(StoreError::AlreadyExists { .. }) => {}
        Ok(_) => {
            return Probe::Unsafe(SelfTestError::CasIgnored {
                store: store.describe(),
                key: key.to_string(),
            })
        }
        Err(e) => return unsupported(e),
    }
    Probe::Pass
}

/// The self-test's scratch keys, relative to the store prefix.
pub const SELFTEST: &str = "usage/selftest/";

/// Runs the self-test, retrying passing store failures with backoff (logging what the store
/// said, once per kind of failure) until it passes, finds the store read-only, finds it
/// unusable (unsafe, missing, or denying everything), or `shutdown` fires.
///
/// # Errors
///
/// [`SelfTestError`]: the store ignores conditional writes (unsafe: two leaders could be
/// elected), the bucket does not exist, every call is denied, or `shutdown` fired first.
pub async fn check(store: &Store, shutdown: &CancellationToken) -> Result<Access, SelfTestError> {
    let key = format!("{}{}.json", SELFTEST, uuid::Uuid::new_v4().simple());
    let mut delays = backoff(Duration::from_millis(200), Duration::from_secs(60));
    let mut log = StateLog::default();
    loop {
        let outcome = probe(store, &key).await;
        let _ = store.delete(&key).await;
        match outcome {
            Probe::Pass => {
                if log.recovered() {
                    tracing::info!("store reachable again");
                }
                return Ok(Access::ReadWrite);
            }
            Probe::ReadOnly => return Ok(Access::ReadOnly),
            Probe::Unsafe(e) => return Err(e),
            Probe::Retry(e) => {
                if log.failing(e.kind()) {
                    tracing::warn!(error = %e, "store self-test failed ({}); retrying with backoff", e.kind());
                }
            }
        }
        let wait = delays.next().unwrap_or(Duration::from_secs(60));
        if sleep_or_stop(wait, shutdown).await {
            return Err(SelfTestError::Shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Backend, Object, Version};
    use async_trait::async_trait;
    use bytes::Bytes;
    use std::sync::Arc;

    /// A store that accepts conditional writes and ignores the condition, as some
    /// S3-compatible servers do.
    #[derive(Debug)]
    struct Lying {
        inner: crate::store::cloud::CloudStore,
        ignore_create: bool,
    }

    #[async_trait]
    impl Backend for Lying {
        async fn get(&self, key: &str, limit: usize) -> Result<Object, StoreError> {
            self.inner.get(key, limit).await
        }
        async fn create(&self, key: &str, bytes: Bytes) -> Result<Version, StoreError> {
            if self.ignore_create {
                if let Ok(obj) = self.inner.get(key, 1 << 20).await {
                    return self.inner.update(key, bytes, &obj.version).await;
                }
            }
            self.inner.create(key, bytes).await
        }
        async fn update(
            &self,
            key: &str,
            bytes: Bytes,
            _: &Version,
        ) -> Result<Version, StoreError> {
            let current = self.inner.get(key, 1 << 20).await?.version;
            self.inner.update(key, bytes, &current).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<crate::store::Entry>, StoreError> {
            self.inner.list(prefix).await
        }
        async fn put(&self, key: &str, bytes: Bytes) -> Result<Version, StoreError> {
            self.inner.put(key, bytes).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key).await
        }
        fn describe(&self) -> String {
            "lying://".into()
        }
    }

    #[tokio::test]
    async fn stores_that_ignore_conditions_are_refused() {
        for ignore_create in [true, false] {
            let store = Store::new(Arc::new(Lying {
                inner: crate::store::cloud::CloudStore::memory(),
                ignore_create,
            }));
            let err = check(&store, &CancellationToken::new()).await.unwrap_err();
            match (ignore_create, &err) {
                (true, SelfTestError::CreateIgnored { .. }) => {}
                (false, SelfTestError::CasIgnored { .. }) => {}
                _ => panic!("{ignore_create}: {err}"),
            }
            assert!(!err.to_string().contains('\n'));
        }
    }

    #[tokio::test]
    async fn memory_and_local_stores_pass() {
        check(&Store::memory(), &CancellationToken::new())
            .await
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::open(dir.path().to_str().unwrap(), &[]).unwrap();
        check(&store, &CancellationToken::new()).await.unwrap();
        // The scratch key is gone afterwards.
        assert!(store.list("usage/selftest/").await.unwrap().is_empty());
    }
}
