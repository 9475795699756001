//! Waiting well: backoff delays, shutdown-aware sleeps, and logging a failing state once.
//!
//! Every retry loop in the crate (seed agreement, the store self-test, the lease, keeping and
//! delivering reports, the inspection commands) uses these, so they back off alike, stop alike on shutdown, and
//! log a failure when it starts or changes and once when it ends, never on every attempt.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// Exponential delays with jitter from `min` up to `max`, without end.
pub fn backoff(min: Duration, max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(min)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Sleeps; `true` if shutdown fired first.
pub async fn sleep_or_stop(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

/// Calls `f` up to `attempts` times while it fails with an error `retryable` accepts, waiting
/// 200 ms, then four times longer each time. For one-shot commands, which must not wait long.
///
/// # Errors
///
/// The last error, once `attempts` calls failed or one failed with an error `retryable`
/// refuses.
pub async fn a_few_times<T, E>(
    attempts: u32,
    retryable: impl Fn(&E) -> bool,
    mut f: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match f().await {
            Err(e) if attempt < attempts && retryable(&e) => {
                tokio::time::sleep(delay).await;
                delay *= 4;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Tracks a failing state so that it is logged when it starts or changes, and its end once.
#[derive(Debug, Default)]
pub struct StateLog(Option<String>);

impl StateLog {
    /// Records a failure of this kind; `true` when it is new, and the caller should log it.
    pub fn failing(&mut self, kind: impl Into<String>) -> bool {
        let kind = kind.into();
        if self.0.as_deref() == Some(kind.as_str()) {
            return false;
        }
        self.0 = Some(kind);
        true
    }

    /// Records success; `true` when it ends a failure, and the caller should log that.
    pub fn recovered(&mut self) -> bool {
        self.0.take().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_log_reports_changes_only() {
        let mut log = StateLog::default();
        assert!(!log.recovered());
        assert!(log.failing("timeout"));
        assert!(!log.failing("timeout"));
        assert!(log.failing("permission_denied"));
        assert!(log.recovered());
        assert!(!log.recovered());
        assert!(log.failing("timeout"));
    }

    #[test]
    fn backoff_stays_within_bounds() {
        let max = Duration::from_millis(400);
        let delays: Vec<_> = backoff(Duration::from_millis(10), max).take(20).collect();
        assert_eq!(delays.len(), 20, "never runs out");
        // Jitter adds up to one more delay on top; never unbounded.
        assert!(delays.iter().all(|d| *d <= max * 2), "{delays:?}");
        assert!(delays.last().unwrap() >= &max, "{delays:?}");
    }
}
