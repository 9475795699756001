//! The POST: signing, retries with the same bytes, failures logged on change, and a replica's
//! own report sent directly when its store refuses writes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;
use url::Url;

use crate::layout::SIGNING_KEY;
use crate::report::{Report, MAX_REPORT_BYTES};
use crate::retry::{backoff, sleep_or_stop};
use crate::seed::Seed;
use crate::signing::ClusterKey;
use crate::store::StoreError;
use crate::timefmt;

use super::*;

/// Why a POST did not deliver a report.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PostError {
    /// A 3xx, which is never followed.
    #[error("the receiver answered {0} (redirects are not followed; point --stats-url at the final URL)")]
    Redirect(reqwest::StatusCode),
    /// Any other status but a 2xx.
    #[error("the receiver answered {0}")]
    Status(reqwest::StatusCode),
    /// No answer: connection, timeout, TLS. The source has no URL (a stats URL may carry a
    /// token); the message adds its causes, redacted.
    #[error("the request failed: {}", crate::store::redact(&crate::store::error_chain(.0)))]
    Request(#[source] reqwest::Error),
    /// Leadership was lost before the POST.
    #[error("no longer leader")]
    NotLeader,
    /// Shutdown came first.
    #[error("shutting down")]
    Shutdown,
}

impl PostError {
    /// What kind of failure it is, for logging on change.
    fn kind(&self) -> String {
        match self {
            PostError::Redirect(code) | PostError::Status(code) => format!("status {code}"),
            PostError::Request(_) => "request".into(),
            PostError::NotLeader => "not leader".into(),
            PostError::Shutdown => "shutdown".into(),
        }
    }
}

impl Delivery {
    /// Logs a failed POST when failures start or change kind, with the receiver's answer;
    /// never once per report or per attempt.
    pub(super) fn post_failed(&self, e: &PostError) {
        if matches!(e, PostError::NotLeader | PostError::Shutdown) {
            return;
        }
        let mut memory = self.memory();
        memory.failed_posts += 1;
        if memory.posts.failing(e.kind()) {
            tracing::warn!(error = %e, "deliveries are failing; retried on every pass, logged again when they work or fail differently");
        }
    }

    /// Logs the end of a failure, with how many attempts it cost.
    pub(super) fn post_worked(&self) {
        let mut memory = self.memory();
        if memory.posts.recovered() {
            tracing::info!(
                failed_attempts = memory.failed_posts,
                "deliveries work again"
            );
        }
        memory.failed_posts = 0;
    }

    /// POSTs one report, retrying with backoff while still leader. The same bytes every time,
    /// signed if the key can be read (created if `create_key` and there is none yet).
    pub(super) async fn post(
        &self,
        url: &Url,
        body: Bytes,
        idempotency_key: &str,
        leader: &Term<'_>,
        shutdown: &CancellationToken,
        create_key: bool,
    ) -> Result<Duration, PostError> {
        let started = Instant::now();
        // Retries scale with the interval: 500 ms to 30 s at hours, faster for short slots.
        let mut delays = backoff(
            Duration::from_millis(500).min(self.cfg.interval / 10),
            Duration::from_secs(30).min(self.cfg.interval / 2),
        );
        let mut last = PostError::Shutdown;
        for attempt in 0..self.cfg.attempts {
            if attempt > 0 {
                let wait = delays.next().unwrap_or(Duration::from_secs(30));
                if sleep_or_stop(wait, shutdown).await {
                    break;
                }
            }
            if leader().is_none() {
                return Err(PostError::NotLeader);
            }
            // On every attempt: a key that could not be read at the first may be by the next.
            let signature = self.signing_key(create_key).await.map(|k| k.header(&body));
            let mut request = self
                .client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", idempotency_key);
            if let Some(signature) = &signature {
                request = request.header(crate::signing::HEADER, signature);
            }
            let result = request.body(body.clone()).send().await;
            last = match result {
                Ok(resp) if resp.status().is_success() => return Ok(started.elapsed()),
                Ok(resp) if resp.status().is_redirection() => PostError::Redirect(resp.status()),
                Ok(resp) => PostError::Status(resp.status()),
                Err(e) => PostError::Request(e.without_url()),
            };
            self.health.report_failed();
        }
        Err(last)
    }

    /// Sends this replica's own frozen report straight to the stats URL, for a replica that
    /// cannot write the bucket: retries until the next slot, at most one 2xx per slot, the same
    /// bytes and `Idempotency-Key` every time.
    pub(crate) async fn send_own(
        &self,
        slot: DateTime<Utc>,
        instance: &str,
        report: Report,
        seed: &Seed,
        shutdown: &CancellationToken,
    ) {
        let Some(url) = &self.cfg.stats_url else {
            return;
        };
        let bytes = match serde_json::to_vec(&report) {
            Ok(b) if b.len() <= MAX_REPORT_BYTES => Bytes::from(b),
            _ => {
                tracing::error!(slot = %timefmt::rfc3339_nano(&slot), "this slot's report cannot be encoded within the report size cap; not sent");
                self.health.report_dropped();
                return;
            }
        };
        let Verdict::Send(key) = vet(&bytes, seed, slot, instance, self.cfg.interval) else {
            return;
        };
        let give_up = Instant::now() + self.cfg.interval;
        let mut delays = backoff(
            Duration::from_secs(1).min(self.cfg.interval / 10),
            Duration::from_secs(300).min(self.cfg.interval / 2),
        );
        loop {
            match self
                .post(url, bytes.clone(), &key, &|| Some(0), shutdown, false)
                .await
            {
                Ok(latency) => {
                    self.post_worked();
                    self.health.report_delivered(latency);
                    return;
                }
                Err(PostError::Shutdown) => return,
                Err(e) => {
                    let wait = delays.next().unwrap_or(Duration::from_secs(300));
                    if Instant::now() + wait > give_up {
                        tracing::error!(slot = %timefmt::rfc3339_nano(&slot), error = %e, "gave up sending this slot's report before the next slot");
                        self.health.report_dropped();
                        return;
                    }
                    self.post_failed(&e);
                    if sleep_or_stop(wait, shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// The cluster's signing key: read from the bucket, created there first if `create` (a
    /// replica that can write), `None` while neither works (logged once, then its end).
    pub(super) async fn signing_key(&self, create: bool) -> Option<ClusterKey> {
        let got = self
            .key
            .get_or_try_init(|| async {
                match self.store.get(SIGNING_KEY).await {
                    Ok(obj) => ClusterKey::parse(&obj.bytes).map_err(|e| e.to_string()),
                    Err(StoreError::NotFound { .. }) if create => {
                        let key = ClusterKey::generate().map_err(|e| e.to_string())?;
                        match self.store.create(SIGNING_KEY, key.to_object()).await {
                            Ok(_) => Ok(key),
                            Err(StoreError::AlreadyExists { .. }) => {
                                let obj = self
                                    .store
                                    .get(SIGNING_KEY)
                                    .await
                                    .map_err(|e| e.to_string())?;
                                ClusterKey::parse(&obj.bytes).map_err(|e| e.to_string())
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Err(e) => Err(e.to_string()),
                }
            })
            .await;
        let mut memory = self.memory();
        match got {
            Ok(key) => {
                if memory.signing.recovered() {
                    tracing::info!("signing key read: reports are signed again");
                }
                Some(key.clone())
            }
            Err(e) => {
                if memory.signing.failing(e.clone()) {
                    tracing::warn!(key = SIGNING_KEY, error = %e, "cannot read the cluster's signing key: reports go unsigned, and a receiver that pinned this cluster's key refuses them; restore the object if it was damaged");
                }
                None
            }
        }
    }
}
