//! `reporter receive`'s options: their defaults (one home, which the CLI's flags read), and
//! the checks [`ReceiverOptions::validate`] makes before anything starts.

use std::net::SocketAddr;
use std::time::Duration;

use crate::rollup;
use crate::store::OpenError;

/// The receiver's defaults.
pub mod defaults {
    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::Duration;

    /// `--store`.
    pub const STORE: &str = "./receiver-data";
    /// `--listen`.
    pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3300));
    /// `--rollup-every`.
    pub const ROLLUP_EVERY: Duration = Duration::from_secs(60);
    /// `--rate-limit`: reports per second one client may send, sustained.
    pub const RATE_LIMIT: f64 = 20.0;
    /// `--rate-burst`: how many reports a client may send at once before the rate applies (a
    /// leader delivering a slot of many replicas sends a burst).
    pub const BURST: f64 = 2000.0;
    /// `--max-connections`.
    pub const MAX_CONNECTIONS: usize = 4096;
    /// `--max-client-connections`: a leader sends 32 reports at once.
    pub const MAX_CLIENT_CONNECTIONS: usize = 64;
    /// `--request-timeout`: a 1 MiB report at 100 KiB/s; Tempo's own client gives up at 5 s.
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
    /// `--max-instances`: distinct unsigned instances per cluster and slot.
    pub const MAX_INSTANCES: usize = 1000;
    /// `--min-clusters`: a metric value shared by fewer clusters is never shown.
    pub const MIN_CLUSTERS: u64 = 5;
    /// The shortest `--retention`: raw reports are what tells a repeat from a new report, and a
    /// slot is accepted for 7 days.
    pub const MIN_RETENTION: Duration = Duration::from_secs(8 * 86400);
    /// How often retention runs.
    pub const RETENTION_EVERY: Duration = Duration::from_secs(3600);
}

/// Everything `reporter receive` can set.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReceiverOptions {
    /// The store URL or path.
    pub store: String,
    /// Store client options.
    pub store_options: Vec<(String, String)>,
    /// The address to serve on.
    pub listen: SocketAddr,
    /// With a token, reading the API and dashboard needs `Authorization: Bearer <token>`.
    pub read_token: Option<String>,
    /// How often the elected receiver rolls up.
    pub rollup_every: Duration,
    /// How long an arrival is left to settle before it is rolled up.
    pub settle: Duration,
    /// Reports per second per client, sustained.
    pub rate_limit: f64,
    /// Reports one client may send at once before the rate applies.
    pub rate_burst: f64,
    /// Peers whose forwarding header is believed.
    pub trusted_proxies: Vec<crate::net::Cidr>,
    /// The header those proxies write.
    pub forwarded_header: crate::net::ForwardedHeader,
    /// Connections at once.
    pub max_connections: usize,
    /// Connections at once from one client.
    pub max_client_connections: usize,
    /// A request's body and answer within this.
    pub request_timeout: Duration,
    /// Distinct unsigned instances per cluster and slot.
    pub max_instances: usize,
    /// Raw received reports of slot days older than this are removed; `None` keeps them.
    pub retention: Option<Duration>,
    /// A metric value (or key) shared by fewer clusters is never shown.
    pub min_clusters: u64,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        ReceiverOptions {
            store: defaults::STORE.to_string(),
            store_options: Vec::new(),
            listen: defaults::LISTEN,
            read_token: None,
            rollup_every: defaults::ROLLUP_EVERY,
            settle: rollup::DEFAULT_SETTLE,
            rate_limit: defaults::RATE_LIMIT,
            rate_burst: defaults::BURST,
            trusted_proxies: Vec::new(),
            forwarded_header: crate::net::ForwardedHeader::default(),
            max_connections: defaults::MAX_CONNECTIONS,
            max_client_connections: defaults::MAX_CLIENT_CONNECTIONS,
            request_timeout: defaults::REQUEST_TIMEOUT,
            max_instances: defaults::MAX_INSTANCES,
            retention: None,
            min_clusters: defaults::MIN_CLUSTERS,
        }
    }
}

/// Why a receiver could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The store URL or its options are wrong.
    #[error(transparent)]
    Store(#[from] OpenError),
    /// An option is out of range.
    #[error("{0}")]
    Invalid(&'static str),
    /// The address is taken or not ours.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the system said.
        source: std::io::Error,
    },
}

impl ReceiverOptions {
    /// Checks every option; the first one out of range, in one line.
    ///
    /// # Errors
    ///
    /// [`ReceiveError::Invalid`] for the first option out of range.
    pub fn validate(&self) -> Result<(), ReceiveError> {
        if !(self.rate_limit > 0.0 && self.rate_limit.is_finite()) {
            return Err(ReceiveError::Invalid(
                "the rate limit must be a positive number",
            ));
        }
        if !(self.rate_burst >= 1.0 && self.rate_burst.is_finite()) {
            return Err(ReceiveError::Invalid("the rate burst must be at least 1"));
        }
        if self.rollup_every < Duration::from_secs(1) {
            return Err(ReceiveError::Invalid("rollups must be at least 1s apart"));
        }
        if self.max_connections < 16 {
            return Err(ReceiveError::Invalid(
                "the connection cap must be at least 16",
            ));
        }
        if self.max_client_connections < 1 {
            return Err(ReceiveError::Invalid(
                "the per-client connection cap must be at least 1",
            ));
        }
        if self.request_timeout < Duration::from_millis(100) {
            return Err(ReceiveError::Invalid(
                "the request timeout must be at least 100ms",
            ));
        }
        if self.min_clusters < 2 {
            return Err(ReceiveError::Invalid(
                "--min-clusters must be at least 2: one cluster's values are its own",
            ));
        }
        if self.max_instances < 1 {
            return Err(ReceiveError::Invalid("the instance cap must be at least 1"));
        }
        if self.retention.is_some_and(|r| r < defaults::MIN_RETENTION) {
            return Err(ReceiveError::Invalid(
                "the retention must be at least 8d: raw reports tell repeats from new reports for the 7 days a slot is accepted",
            ));
        }
        Ok(())
    }
}
