//! The rate limit of `POST /api/v1/reports`: a token bucket per client.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket per client address, kept in memory only (addresses are never stored or
/// logged). Buckets full again are forgotten, so memory follows the clients of the last
/// seconds.
#[derive(Debug)]
pub(crate) struct RateLimit {
    /// Tokens a second.
    rate: f64,
    /// Tokens a bucket holds, so a client may send this many at once.
    burst: f64,
    /// Per client address (grouped by the caller): its tokens and when they were counted.
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimit {
    /// A limit of `rate` reports a second per client, `burst` at once.
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        RateLimit {
            rate,
            burst,
            buckets: Mutex::default(),
        }
    }

    /// `Ok`, or how long to wait.
    pub(crate) fn check(&self, client: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() > 100_000 {
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < burst
            });
        }
        let (tokens, at) = buckets.entry(client).or_insert((self.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_client() {
        let limit = RateLimit::new(1.0, 3.0);
        let (a, b): (IpAddr, IpAddr) = ([192, 0, 2, 1].into(), [192, 0, 2, 2].into());
        for _ in 0..3 {
            assert!(limit.check(a).is_ok());
        }
        let wait = limit.check(a).expect_err("the burst is spent");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(limit.check(b).is_ok(), "another client has its own bucket");
    }
}
