//! Every default and every floor of `reporter run`, said once. The CLI's help, the builder's
//! [`Options::default`](crate::replica::Options) and the docs all take them from here.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

/// `--store`: a directory beside the process.
pub const STORE: &str = "./reporter-data";
/// `--listen`: loopback only, Tempo's port.
pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3200));
/// `--target`.
pub const TARGET: &str = "all";
/// `--interval`: a report every 4 hours, as Tempo and Loki send.
pub const INTERVAL: Duration = Duration::from_secs(4 * 3600);
/// `--lease-ttl`.
pub const LEASE_TTL: Duration = Duration::from_secs(5 * 60);
/// `--collect-delay`.
pub const COLLECT_DELAY: Duration = Duration::from_secs(60);
/// `--seed-check`.
pub const SEED_CHECK: Duration = Duration::from_secs(15 * 60);
/// `--post-timeout`.
pub const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// `--max-report-age`, in intervals.
pub const MAX_REPORT_AGE_INTERVALS: u32 = 6;
/// `--retention`, in intervals.
pub const RETENTION_INTERVALS: u32 = 2;
/// Reports a delivery pass reads, POSTs and records at once.
pub const DELIVERY_CONCURRENCY: usize = 32;
/// How often CPU use is sampled for `cpu_usage`.
pub const CPU_SAMPLE_PERIOD: Duration = Duration::from_secs(60);

/// The shortest `--interval`.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// The shortest `--lease-ttl`.
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(300);
/// The shortest `--seed-check`: every check reads the store.
pub const MIN_SEED_CHECK: Duration = Duration::from_secs(1);
/// The shortest `--post-timeout`.
pub const MIN_POST_TIMEOUT: Duration = Duration::from_millis(100);
