//! Pinned keys: the trust model that stops one cluster's story being rewritten by a stranger.
//!
//! A cluster that signs its reports ([`crate::signing`]) has its public key pinned on its first
//! signed report, at `receiver/keys/<clusterID>.json`, with create-if-absent, so every receiver
//! on the bucket pins the same key whichever took the report. From then on a report for that
//! cluster ID is stored only with a valid signature by that key. Clusters that never signed
//! (Tempo, Loki, Mimir, older versions of ours) are accepted unsigned and marked so.
//!
//! What this does not protect: a cluster ID never seen signed is free for anyone to pin first
//! (trust on first use), and anyone may make up new cluster IDs; the rate limit per client
//! bounds how fast. Pins are kept in memory once read (a pin never changes, only `forget`
//! removes one, which a running receiver notices when it restarts).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::signing::{hex, unhex};
use crate::store::{Store, StoreError};

use super::layout;

/// Pins remembered in memory at most; past it the memory starts again.
const MAX_CACHED: usize = 1_000_000;
/// How long a pin is trusted from memory before it is read again (a `forget` on another
/// receiver removes it from the bucket).
const CACHE_FOR: std::time::Duration = std::time::Duration::from_secs(600);

/// Why a report is refused by the pins.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PinError {
    /// The cluster's key is pinned and the report is not signed by it.
    #[error("{0}")]
    Refused(&'static str),
    /// The store failed: nothing is decided.
    #[error("cannot read this cluster's pinned key: {0}")]
    Store(#[from] StoreError),
    /// The store holds a pin that cannot be read: nothing is decided.
    #[error("the pinned key at {key} {why}")]
    Unreadable {
        /// The pin's key.
        key: String,
        /// What is wrong with it.
        why: &'static str,
    },
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pin {
    /// The public key, hex.
    ed25519: String,
    /// When it was pinned.
    pinned_at: String,
}

/// The pins this receiver has read.
#[derive(Debug, Default)]
pub struct Pins {
    known: Mutex<HashMap<String, ([u8; 32], std::time::Instant)>>,
}

impl Pins {
    fn cached(&self, cluster: &str) -> Option<[u8; 32]> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known
            .get(cluster)
            .filter(|(_, at)| at.elapsed() < CACHE_FOR)
            .map(|(k, _)| *k)
    }

    fn remember(&self, cluster: &str, key: [u8; 32]) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= MAX_CACHED {
            known.clear();
        }
        known.insert(cluster.to_string(), (key, std::time::Instant::now()));
    }

    async fn read(&self, store: &Store, cluster: &str) -> Result<Option<[u8; 32]>, PinError> {
        if let Some(k) = self.cached(cluster) {
            return Ok(Some(k));
        }
        match store.get(&layout::pin_key(cluster)).await {
            Ok(obj) => {
                let key = serde_json::from_slice::<Pin>(&obj.bytes)
                    .ok()
                    .and_then(|p| unhex(&p.ed25519))
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| PinError::Unreadable {
                        key: layout::pin_key(cluster),
                        why: "is corrupted",
                    })?;
                self.remember(cluster, key);
                Ok(Some(key))
            }
            Err(StoreError::NotFound { .. }) => Ok(None),
            Err(e) => Err(PinError::Store(e)),
        }
    }

    /// Whether a report for `cluster`, signed with `key` (or unsigned), may be stored; pins
    /// `key` if it is the cluster's first signed report.
    ///
    /// # Errors
    ///
    /// What the store said; a report whose key differs from its cluster's pinned one is `Ok`
    /// with a refusal, not an error.
    pub async fn check(
        &self,
        store: &Store,
        cluster: &str,
        key: Option<[u8; 32]>,
    ) -> Result<(), PinError> {
        let pinned = self.read(store, cluster).await?;
        let pinned = match (pinned, key) {
            (None, None) => return Ok(()),
            (None, Some(k)) => self.pin(store, cluster, k).await?,
            (Some(p), _) => p,
        };
        match key {
            Some(k) if k == pinned => Ok(()),
            Some(_) => Err(PinError::Refused(
                "this cluster's reports are signed with another key: refused",
            )),
            None => Err(PinError::Refused(
                "this cluster signs its reports: an unsigned report for it is refused",
            )),
        }
    }

    /// Pins `key` unless another receiver pinned one first; the key pinned.
    async fn pin(&self, store: &Store, cluster: &str, key: [u8; 32]) -> Result<[u8; 32], PinError> {
        let pin = Pin {
            ed25519: hex(&key),
            pinned_at: crate::timefmt::rfc3339_nano(&chrono::Utc::now()),
        };
        let bytes = serde_json::to_vec(&pin).map_err(|_| PinError::Unreadable {
            key: layout::pin_key(cluster),
            why: "could not be encoded",
        })?;
        match store.create(&layout::pin_key(cluster), bytes).await {
            Ok(_) => {
                self.remember(cluster, key);
                Ok(key)
            }
            Err(StoreError::AlreadyExists { .. }) => {
                self.read(store, cluster)
                    .await?
                    .ok_or_else(|| PinError::Unreadable {
                        key: layout::pin_key(cluster),
                        why: "vanished while it was read",
                    })
            }
            Err(e) => Err(PinError::Store(e)),
        }
    }

    /// Forgets a cluster's pin (after `reporter forget`).
    pub fn forget(&self, cluster: &str) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        known.remove(cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_signed_key_is_pinned_and_nothing_else_passes_after_it() {
        let store = Store::memory();
        let pins = Pins::default();
        let (a, b) = ([1u8; 32], [2u8; 32]);
        // Never signed: unsigned passes.
        pins.check(&store, "c", None).await.unwrap();
        pins.check(&store, "c", Some(a)).await.unwrap();
        pins.check(&store, "c", Some(a)).await.unwrap();
        assert!(matches!(
            pins.check(&store, "c", Some(b)).await,
            Err(PinError::Refused(_))
        ));
        assert!(matches!(
            pins.check(&store, "c", None).await,
            Err(PinError::Refused(_))
        ));
        // Another receiver on the same bucket, memory empty, agrees.
        let other = Pins::default();
        assert!(matches!(
            other.check(&store, "c", Some(b)).await,
            Err(PinError::Refused(_))
        ));
        other.check(&store, "c", Some(a)).await.unwrap();
    }
}
