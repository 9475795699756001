//! The options of one replica (`reporter run`'s flags, a library user's builder settings):
//! their defaults (in [`crate::defaults`]), the checks [`Options::validate`] makes against
//! each floor and against each other, and the one-line [`OptionError`] naming the option.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use url::Url;

use crate::defaults;
use crate::delivery::DeliveryConfig;
use crate::report::MAX_STATIC_METRICS_BYTES;
use crate::{stats, timefmt};

/// An option, for errors; `reporter` names each by its flag, a library user by [`Setting::name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Setting {
    /// [`Options::interval`]
    Interval,
    /// [`Options::lease_ttl`]
    LeaseTtl,
    /// [`Options::collect_delay`]
    CollectDelay,
    /// [`Options::seed_check`]
    SeedCheck,
    /// [`Options::max_report_age`]
    MaxReportAge,
    /// [`Options::post_timeout`]
    PostTimeout,
    /// [`Options::metrics`]
    Metrics,
    /// [`Options::stats_url`]
    StatsUrl,
}

impl Setting {
    /// The option's name in [`Options`] words.
    pub fn name(self) -> &'static str {
        match self {
            Setting::Interval => "the interval",
            Setting::LeaseTtl => "the lease TTL",
            Setting::CollectDelay => "the collect delay",
            Setting::SeedCheck => "the seed check period",
            Setting::MaxReportAge => "the maximum report age",
            Setting::PostTimeout => "the POST timeout",
            Setting::Metrics => "the static metrics",
            Setting::StatsUrl => "the stats URL",
        }
    }
}

/// An option out of range, and why the range is what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionError {
    /// Below its floor.
    TooShort {
        /// Which option.
        setting: Setting,
        /// Its floor.
        min: Duration,
    },
    /// The collect delay must end before the next slot.
    CollectDelayNotShorter {
        /// The collect delay given.
        collect_delay: Duration,
        /// The interval given.
        interval: Duration,
    },
    /// The age bound leaves no time to deliver.
    MaxReportAgeTooShort {
        /// The age given.
        age: Duration,
        /// Collect delay plus interval.
        floor: Duration,
    },
    /// An `https` stats URL in a build without a TLS provider (features `aws-lc` or `ring`).
    NoTls,
    /// A static metric takes a built-in metric's name.
    ReservedMetric(String),
    /// The static metrics would push a report towards its size cap.
    StaticMetricsTooLarge {
        /// Their size.
        bytes: usize,
        /// [`MAX_STATIC_METRICS_BYTES`].
        cap: usize,
    },
}

impl OptionError {
    /// The option the error is about.
    pub fn setting(&self) -> Setting {
        match self {
            OptionError::TooShort { setting, .. } => *setting,
            OptionError::CollectDelayNotShorter { .. } => Setting::CollectDelay,
            OptionError::MaxReportAgeTooShort { .. } => Setting::MaxReportAge,
            OptionError::NoTls => Setting::StatsUrl,
            OptionError::ReservedMetric(_) | OptionError::StaticMetricsTooLarge { .. } => {
                Setting::Metrics
            }
        }
    }

    /// The error in one line, naming each option with `name` (the CLI passes flag names).
    pub fn describe(&self, name: impl Fn(Setting) -> &'static str) -> String {
        let d = timefmt::format_duration;
        match self {
            OptionError::TooShort { setting, min } => {
                let why = match setting {
                    Setting::SeedCheck => ": every check reads the store, and more than one a second per replica only loads it",
                    Setting::PostTimeout => ": a shorter deadline fails POSTs the receiver would have answered, and every retry sends the report again",
                    _ => "",
                };
                format!("{} must be at least {}{why}", name(*setting), d(*min))
            }
            OptionError::CollectDelayNotShorter {
                collect_delay,
                interval,
            } => format!(
                "{} ({}) must be shorter than {} ({})",
                name(Setting::CollectDelay),
                d(*collect_delay),
                name(Setting::Interval),
                d(*interval)
            ),
            OptionError::MaxReportAgeTooShort { age, floor } => format!(
                "{} ({}) must be at least {} plus {} ({}): a report needs one interval after its collect delay to be delivered before it is dropped",
                name(Setting::MaxReportAge),
                d(*age),
                name(Setting::CollectDelay),
                name(Setting::Interval),
                d(*floor)
            ),
            OptionError::NoTls => format!(
                "{} is https, but this build has no TLS provider: enable the feature aws-lc or ring of usage-reporter",
                name(Setting::StatsUrl)
            ),
            OptionError::ReservedMetric(k) => format!(
                "{} {k:?} is reserved for the reporter's built-in metrics",
                name(Setting::Metrics)
            ),
            OptionError::StaticMetricsTooLarge { bytes, cap } => format!(
                "{} take {bytes} bytes of JSON; at most {cap} are allowed, so that a report stays under its size cap",
                name(Setting::Metrics)
            ),
        }
    }
}

impl std::fmt::Display for OptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe(Setting::name))
    }
}

impl std::error::Error for OptionError {}

/// Everything `reporter run` can set. Defaults are in [`crate::defaults`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Options {
    /// The store URL or path.
    pub store: String,
    /// Store client options, `key=value`.
    pub store_options: Vec<(String, String)>,
    /// The endpoint's address.
    pub listen: SocketAddr,
    /// This replica's role, reported as `target`.
    pub target: String,
    /// Where the leader POSTs reports; `None` keeps them in the bucket.
    pub stats_url: Option<Url>,
    /// The report period.
    pub interval: Duration,
    /// The leader lease's duration.
    pub lease_ttl: Duration,
    /// The leader's wait after a slot before delivering.
    pub collect_delay: Duration,
    /// Static metrics of this replica.
    pub metrics: Vec<(String, Value)>,
    /// The seed object's name under the store prefix.
    pub seed_name: String,
    /// `false`: no store access and no network at all.
    pub reporting_enabled: bool,
    /// How often the seed is checked.
    pub seed_check: Duration,
    /// Undelivered reports older than this are dropped; `None`: some intervals.
    pub max_report_age: Option<Duration>,
    /// Delivered reports are deleted after this; `None`: some intervals.
    pub retention: Option<Duration>,
    /// The deadline of one POST.
    pub post_timeout: Duration,
    /// How often CPU use is sampled.
    pub cpu_sample_period: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            store: defaults::STORE.to_string(),
            store_options: Vec::new(),
            listen: defaults::LISTEN,
            target: defaults::TARGET.to_string(),
            stats_url: None,
            interval: defaults::INTERVAL,
            lease_ttl: defaults::LEASE_TTL,
            collect_delay: defaults::COLLECT_DELAY,
            metrics: Vec::new(),
            seed_name: crate::seed::DEFAULT_SEED_NAME.to_string(),
            reporting_enabled: true,
            seed_check: defaults::SEED_CHECK,
            max_report_age: None,
            retention: None,
            post_timeout: defaults::POST_TIMEOUT,
            cpu_sample_period: defaults::CPU_SAMPLE_PERIOD,
        }
    }
}

impl Options {
    /// Checks every option against its floor and the others.
    ///
    /// # Errors
    ///
    /// [`OptionError`] for the first option out of its range or at odds with another, naming
    /// it.
    pub fn validate(&self) -> Result<(), OptionError> {
        if self
            .stats_url
            .as_ref()
            .is_some_and(|u| u.scheme() == "https")
            && !usage_reporter_core::HTTPS
        {
            return Err(OptionError::NoTls);
        }
        for (k, _) in &self.metrics {
            if stats::RESERVED.contains(&k.as_str()) {
                return Err(OptionError::ReservedMetric(k.clone()));
            }
        }
        let floors = [
            (Setting::Interval, self.interval, defaults::MIN_INTERVAL),
            (Setting::LeaseTtl, self.lease_ttl, defaults::MIN_LEASE_TTL),
            (
                Setting::SeedCheck,
                self.seed_check,
                defaults::MIN_SEED_CHECK,
            ),
            (
                Setting::PostTimeout,
                self.post_timeout,
                defaults::MIN_POST_TIMEOUT,
            ),
        ];
        for (setting, value, min) in floors {
            if value < min {
                return Err(OptionError::TooShort { setting, min });
            }
        }
        if self.collect_delay >= self.interval {
            return Err(OptionError::CollectDelayNotShorter {
                collect_delay: self.collect_delay,
                interval: self.interval,
            });
        }
        if let Some(age) = self.max_report_age {
            let floor = self.collect_delay + self.interval;
            if age < floor {
                return Err(OptionError::MaxReportAgeTooShort { age, floor });
            }
        }
        let bytes = serde_json::to_vec(&self.metrics).map_or(usize::MAX, |b| b.len());
        if bytes > MAX_STATIC_METRICS_BYTES {
            return Err(OptionError::StaticMetricsTooLarge {
                bytes,
                cap: MAX_STATIC_METRICS_BYTES,
            });
        }
        Ok(())
    }

    /// How the leader delivers, with the derived defaults filled in.
    pub(crate) fn delivery(&self) -> DeliveryConfig {
        DeliveryConfig {
            stats_url: self.stats_url.clone(),
            interval: self.interval,
            collect_delay: self.collect_delay,
            max_age: self
                .max_report_age
                .unwrap_or(self.interval * defaults::MAX_REPORT_AGE_INTERVALS),
            retention: self
                .retention
                .unwrap_or(self.interval * defaults::RETENTION_INTERVALS),
            attempts: 5,
            request_timeout: self.post_timeout,
            concurrency: defaults::DELIVERY_CONCURRENCY,
        }
    }
}
