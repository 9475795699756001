//! The `reporter` command line: `run`, `seed show`, `lease show`.
//!
//! Parsing only; every command is a thin wrapper over the library. Each `run` flag can also be
//! given as `REPORTER_<NAME>` in the environment. Exit status: 0 on success and clean shutdown,
//! 2 for bad arguments (clap's own, bad URLs, bad store options), 1 with a one-line reason for
//! anything else.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::defaults;
use crate::replica::{Options, Setting, StartError};
use crate::timefmt::{format_duration, parse_duration};

/// A duration flag: parsed as `500ms`, `15m`, `4h`; printed the same way in `--help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl std::fmt::Display for Dur {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

impl std::str::FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Dur)
    }
}

/// A duration flag that may be zero (`0`, `0s`): a wait that can be turned off.
fn wait_or_zero(s: &str) -> Result<Dur, String> {
    match s.trim() {
        "0" | "0s" | "0ms" => Ok(Dur(Duration::ZERO)),
        other => other.parse(),
    }
}

/// Anonymous usage reporting for a cluster of replicas sharing one bucket
#[derive(Debug, Parser)]
#[command(
    name = "reporter",
    version = env!("REPORTER_VERSION_LONG"),
    propagate_version = true
)]
pub(crate) struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr: text or json (one object per line).
    #[arg(long, global = true, env = "REPORTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level: error, warn, info, debug or trace [default: info for run, warn otherwise].
    /// RUST_LOG, when set, wins.
    #[arg(long, global = true, env = "REPORTER_LOG_LEVEL", value_parser = ["error", "warn", "info", "debug", "trace"])]
    pub log_level: Option<String>,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run one replica: agree on the cluster seed, elect a leader, freeze and deliver reports,
    /// serve this replica's live report.
    Run(Box<RunArgs>),
    /// Inspect the cluster seed.
    Seed {
        /// What to do with it.
        #[command(subcommand)]
        command: SeedCommand,
    },
    /// Inspect the leader lease.
    Lease {
        /// What to do with it.
        #[command(subcommand)]
        command: LeaseCommand,
    },
    /// Receive reports: store each once, roll them up into Parquet, serve the query API and
    /// the dashboard.
    Receive(Box<ReceiveArgs>),
    /// Roll up what receivers stored, once, and exit.
    Rollup(RollupArgs),
    /// Remove everything a receiver holds of one cluster: raw reports, Parquet rows, summary
    /// entries, its pinned key.
    Forget(ForgetArgs),
}

/// The arguments of `forget`.
#[derive(Debug, Clone, Args)]
pub(crate) struct ForgetArgs {
    /// Where the bucket is.
    #[command(flatten)]
    pub store: ReceiverStoreArgs,
    /// The cluster ID to forget.
    #[arg(long, value_parser = parse_cluster_id)]
    pub cluster: String,
    /// How long to wait for the rollup leader (or for the lease, with no receiver running) to
    /// carry it out; the request stays in the bucket past it.
    #[arg(long, env = "REPORTER_WAIT", default_value = "10m")]
    pub wait: Dur,
}

fn parse_cluster_id(s: &str) -> Result<String, String> {
    uuid::Uuid::parse_str(s)
        .map(|u| u.to_string())
        .map_err(|_| format!("{s:?} is not a cluster ID (a UUID)"))
}

/// Where the receiver's bucket is.
#[derive(Debug, Clone, Args)]
pub struct ReceiverStoreArgs {
    /// The receiver's bucket: the same URLs as `run --store`.
    #[arg(long, env = "REPORTER_STORE", default_value = usage_reporter_receiver::defaults::STORE)]
    pub store: String,
    /// Store client options.
    #[command(flatten)]
    pub client: ClientOptions,
}

/// The arguments of `receive`.
#[derive(Debug, Clone, Args)]
pub struct ReceiveArgs {
    /// Where the bucket is.
    #[command(flatten)]
    pub store: ReceiverStoreArgs,
    /// Address to serve on.
    #[arg(long, env = "REPORTER_LISTEN", default_value_t = usage_reporter_receiver::defaults::LISTEN)]
    pub listen: SocketAddr,
    /// Require `Authorization: Bearer TOKEN` to read the dashboard and the query API (POSTing
    /// reports never needs it).
    #[arg(long, env = "REPORTER_READ_TOKEN", hide_env_values = true)]
    pub read_token: Option<String>,
    /// How often the elected receiver rolls up.
    #[arg(long, env = "REPORTER_ROLLUP_EVERY", default_value_t = Dur(usage_reporter_receiver::defaults::ROLLUP_EVERY))]
    pub rollup_every: Dur,
    /// Reports per second one client may send, sustained.
    #[arg(long, env = "REPORTER_RATE_LIMIT", default_value_t = usage_reporter_receiver::defaults::RATE_LIMIT)]
    pub rate_limit: f64,
    /// Reports one client may send at once before the rate applies (a leader delivering a slot
    /// of many replicas sends them together).
    #[arg(long, env = "REPORTER_RATE_BURST", default_value_t = usage_reporter_receiver::defaults::BURST)]
    pub rate_burst: f64,
    /// How long a stored report waits before a rollup takes it (batches bursts; nothing depends
    /// on it).
    #[arg(long, env = "REPORTER_SETTLE", value_parser = wait_or_zero, default_value_t = Dur(usage_reporter_receiver::rollup::DEFAULT_SETTLE))]
    pub settle: Dur,
    /// A load balancer or proxy (CIDR or address; repeatable, or comma-separated in the
    /// variable) whose X-Forwarded-For / Forwarded header is believed. Others' are ignored.
    #[arg(
        long = "trusted-proxy",
        env = "REPORTER_TRUSTED_PROXY",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<crate::net::Cidr>,
    /// The header the trusted proxies write (only that one is read).
    #[arg(long, env = "REPORTER_FORWARDED_HEADER", value_enum, default_value_t = Forwarded::XForwardedFor)]
    pub forwarded_header: Forwarded,
    /// Connections at once; past 3/4 of it idle connections are closed early.
    #[arg(long, env = "REPORTER_MAX_CONNECTIONS", default_value_t = usage_reporter_receiver::defaults::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Connections at once from one client (its /24 or /48); trusted proxies are exempt.
    #[arg(long, env = "REPORTER_MAX_CLIENT_CONNECTIONS", default_value_t = usage_reporter_receiver::defaults::MAX_CLIENT_CONNECTIONS)]
    pub max_client_connections: usize,
    /// Once its headers are in (within 5s), a request's body must arrive within this.
    #[arg(long, env = "REPORTER_REQUEST_TIMEOUT", default_value_t = Dur(usage_reporter_receiver::defaults::REQUEST_TIMEOUT))]
    pub request_timeout: Dur,
    /// Distinct instances one cluster may report unsigned for one slot.
    #[arg(long, env = "REPORTER_MAX_INSTANCES", default_value_t = usage_reporter_receiver::defaults::MAX_INSTANCES)]
    pub max_instances: usize,
    /// Remove raw received reports of slot days older than this (at least 8d); Parquet rollups
    /// and summaries are kept. Unset: kept for ever.
    #[arg(long, env = "REPORTER_RETENTION")]
    pub retention: Option<Dur>,
    /// A metric value (or key) reported by fewer clusters is never shown: the API, the
    /// dashboard and /metrics count it in "other".
    #[arg(long, env = "REPORTER_MIN_CLUSTERS", default_value_t = usage_reporter_receiver::defaults::MIN_CLUSTERS)]
    pub min_clusters: u64,
}

/// The arguments of `rollup`.
#[derive(Debug, Clone, Args)]
pub(crate) struct RollupArgs {
    /// Where the bucket is.
    #[command(flatten)]
    pub store: ReceiverStoreArgs,
}

/// `--forwarded-header`: which header the trusted proxies write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Forwarded {
    /// `X-Forwarded-For` (nginx, HAProxy, AWS and GCP load balancers).
    XForwardedFor,
    /// `Forwarded` (RFC 7239).
    Forwarded,
}

impl From<ReceiveArgs> for usage_reporter_receiver::ReceiverOptions {
    fn from(a: ReceiveArgs) -> Self {
        let mut o = usage_reporter_receiver::ReceiverOptions::default();
        o.store = a.store.store;
        o.store_options = a.store.client.store_options;
        o.listen = a.listen;
        o.read_token = a.read_token.filter(|t| !t.is_empty());
        o.rollup_every = a.rollup_every.0;
        o.settle = a.settle.0;
        o.rate_limit = a.rate_limit;
        o.rate_burst = a.rate_burst;
        o.trusted_proxies = a.trusted_proxies;
        o.forwarded_header = match a.forwarded_header {
            Forwarded::XForwardedFor => crate::net::ForwardedHeader::XForwardedFor,
            Forwarded::Forwarded => crate::net::ForwardedHeader::Forwarded,
        };
        o.max_connections = a.max_connections;
        o.max_client_connections = a.max_client_connections;
        o.request_timeout = a.request_timeout.0;
        o.max_instances = a.max_instances;
        o.retention = a.retention.map(|d| d.0);
        o.min_clusters = a.min_clusters;
        o
    }
}

/// What to do with the seed.
#[derive(Debug, Subcommand)]
pub(crate) enum SeedCommand {
    /// Print the cluster seed and exit.
    Show(SeedShowArgs),
}

/// What to do with the lease.
#[derive(Debug, Subcommand)]
pub(crate) enum LeaseCommand {
    /// Print the leader lease and exit.
    Show(LeaseShowArgs),
}

/// Where the bucket is.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// The shared bucket: a path, file:///abs/path, memory://, s3://bucket/prefix,
    /// gs://bucket/prefix or az://container/prefix.
    #[arg(long, env = "REPORTER_STORE", default_value = defaults::STORE)]
    pub store: String,
    /// Store client options.
    #[command(flatten)]
    pub client: ClientOptions,
}

/// `--store-option`, shared by every command that opens a store.
#[derive(Debug, Clone, Args)]
pub struct ClientOptions {
    /// A store client option (repeatable), such as aws_endpoint=http://127.0.0.1:9000 or
    /// azure_storage_use_emulator=true. Credentials also come from AWS_*, GOOGLE_*, AZURE_*.
    /// Values may contain commas (JSON keys do), so REPORTER_STORE_OPTION holds one option.
    #[arg(
        long = "store-option",
        env = "REPORTER_STORE_OPTION",
        value_name = "KEY=VALUE",
        value_parser = parse_store_option
    )]
    pub store_options: Vec<(String, String)>,
}

/// The arguments of `seed show`.
#[derive(Debug, Clone, Args)]
pub(crate) struct SeedShowArgs {
    /// Where the bucket is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Seed object name under the store prefix.
    #[arg(long, env = "REPORTER_SEED_NAME", default_value = crate::seed::DEFAULT_SEED_NAME, value_parser = parse_seed_name)]
    pub seed_name: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `lease show`.
#[derive(Debug, Clone, Args)]
pub(crate) struct LeaseShowArgs {
    /// Where the bucket is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The arguments of `run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Where the bucket is.
    #[command(flatten)]
    pub store: StoreArgs,
    /// Seed object name under the store prefix.
    #[arg(long, env = "REPORTER_SEED_NAME", default_value = crate::seed::DEFAULT_SEED_NAME, value_parser = parse_seed_name)]
    pub seed_name: String,
    /// Local HTTP endpoint (port 0 picks a free port; the bound address is logged).
    #[arg(long, env = "REPORTER_LISTEN", default_value_t = defaults::LISTEN)]
    pub listen: SocketAddr,
    /// This replica's role, reported as `target`.
    #[arg(long, env = "REPORTER_TARGET", default_value = defaults::TARGET)]
    pub target: String,
    /// Where the leader POSTs reports; without it reports stay in the bucket.
    #[arg(long, env = "REPORTER_STATS_URL", value_parser = parse_stats_url)]
    pub stats_url: Option<url::Url>,
    /// Report period.
    #[arg(long, env = "REPORTER_INTERVAL", default_value_t = Dur(defaults::INTERVAL))]
    pub interval: Dur,
    /// Leader lease duration.
    #[arg(long, env = "REPORTER_LEASE_TTL", default_value_t = Dur(defaults::LEASE_TTL))]
    pub lease_ttl: Dur,
    /// How long after a slot the leader waits for replicas' reports before delivering.
    #[arg(long, env = "REPORTER_COLLECT_DELAY", default_value_t = Dur(defaults::COLLECT_DELAY))]
    pub collect_delay: Dur,
    /// Static metric for this replica (repeatable); integers and floats stay numbers.
    /// REPORTER_METRIC takes several, separated by commas.
    #[arg(long = "metric", env = "REPORTER_METRIC", value_name = "KEY=VALUE", value_delimiter = ',', value_parser = parse_metric)]
    pub metrics: Vec<(String, serde_json::Value)>,
    /// `false`: nothing touches the store or the network.
    #[arg(long, env = "REPORTER_REPORTING_ENABLED", default_value = "true", value_parser = parse_bool, action = clap::ArgAction::Set)]
    pub reporting_enabled: bool,
    /// How often each replica checks that the seed is still there (restoring it if not).
    #[arg(long, env = "REPORTER_SEED_CHECK", default_value_t = Dur(defaults::SEED_CHECK))]
    pub seed_check: Dur,
    /// Reports older than this are dropped undelivered [default: 6 intervals].
    #[arg(long, env = "REPORTER_MAX_REPORT_AGE")]
    pub max_report_age: Option<Dur>,
    /// How long delivered reports are kept in the bucket [default: 2 intervals].
    #[arg(long, env = "REPORTER_RETENTION")]
    pub retention: Option<Dur>,
    /// The deadline of one POST to --stats-url; a POST that misses it is retried, with the same
    /// Idempotency-Key.
    #[arg(long, env = "REPORTER_POST_TIMEOUT", default_value_t = Dur(defaults::POST_TIMEOUT))]
    pub post_timeout: Dur,
}

impl From<RunArgs> for Options {
    fn from(a: RunArgs) -> Options {
        Options {
            store: a.store.store,
            store_options: a.store.client.store_options,
            listen: a.listen,
            target: a.target,
            stats_url: a.stats_url,
            interval: a.interval.0,
            lease_ttl: a.lease_ttl.0,
            collect_delay: a.collect_delay.0,
            metrics: a.metrics,
            seed_name: a.seed_name,
            reporting_enabled: a.reporting_enabled,
            seed_check: a.seed_check.0,
            max_report_age: a.max_report_age.map(|d| d.0),
            retention: a.retention.map(|d| d.0),
            post_timeout: a.post_timeout.0,
            ..Options::default()
        }
    }
}

/// The flag that sets an option.
pub(crate) fn flag(setting: Setting) -> &'static str {
    match setting {
        Setting::Interval => "--interval",
        Setting::LeaseTtl => "--lease-ttl",
        Setting::CollectDelay => "--collect-delay",
        Setting::SeedCheck => "--seed-check",
        Setting::MaxReportAge => "--max-report-age",
        Setting::PostTimeout => "--post-timeout",
        Setting::Metrics => "--metric",
        Setting::StatsUrl => "--stats-url",
    }
}

/// A start failure as one line in flag words, and the exit status: 2 for bad arguments.
pub(crate) fn explain(e: &StartError) -> (u8, String) {
    match e {
        StartError::Invalid(e) => (2, e.describe(flag)),
        StartError::Store(e) if e.about_an_option() => (2, format!("--store-option: {e}")),
        StartError::Store(e) => (2, format!("--store: {e}")),
        other => (1, other.to_string()),
    }
}

fn parse_store_option(s: &str) -> Result<(String, String), String> {
    crate::store::parse_option(s).map_err(|e| e.to_string())
}

fn parse_seed_name(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && !s.starts_with('/')
        && s.split('/').all(|p| !p.is_empty() && p != "." && p != "..");
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not an object name (no empty, '.' or '..' parts)"
        ))
    }
}

fn parse_stats_url(s: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(s).map_err(|e| format!("not a URL: {e}"))?;
    match url.scheme() {
        "http" | "https" if url.host().is_some() => Ok(url),
        _ => Err("must be an http:// or https:// URL with a host".to_string()),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// `KEY=VALUE`: integers and floats become JSON numbers, everything else a string.
pub(crate) fn parse_metric(s: &str) -> Result<(String, serde_json::Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} must look like KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    let value = if let Ok(i) = v.parse::<i64>() {
        serde_json::Value::from(i)
    } else if let Some(f) = v.parse::<f64>().ok().filter(|f| f.is_finite()) {
        serde_json::Value::from(f)
    } else {
        serde_json::Value::from(v)
    };
    Ok((k.to_string(), value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_keep_numbers_numbers() {
        assert_eq!(parse_metric("a=1").unwrap().1, serde_json::json!(1));
        assert_eq!(parse_metric("a=1.5").unwrap().1, serde_json::json!(1.5));
        assert_eq!(parse_metric("a=x=y").unwrap().1, serde_json::json!("x=y"));
        assert_eq!(parse_metric("a=NaN").unwrap().1, serde_json::json!("NaN"));
        assert!(parse_metric("novalue").is_err());
        assert!(parse_metric("=1").is_err());
    }

    #[test]
    fn seed_names() {
        assert!(parse_seed_name("cluster_seed.json").is_ok());
        assert!(parse_seed_name("__mimir_cluster/mimir_cluster_seed.json").is_ok());
        for bad in ["", "/abs", "a/../b", "a//b", "."] {
            assert!(parse_seed_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
