//! Usage metrics a service records: typed handles from a registry.
//!
//! Kinds, as in Loki's and Tempo's usage stats:
//! - [`StringVar`], [`IntVar`], [`FloatVar`]: last value wins.
//! - [`Counter`]: `{"total": int, "rate": float}`, rate = total / seconds since the previous slot;
//!   both reset only when a slot's report is frozen (by the replica, at each slot).
//! - [`Statistics`]: `{"min","max","avg","count","stddev","stdvar"}` with population variance
//!   from Welford's online update, min/max omitted while empty, never reset.
//! - [`WordCounter`]: how many distinct words were seen, never reset. It keeps a 64-bit hash per
//!   distinct word, not the word, so memory per word is bounded whatever the word's length.
//!
//! Handles are get-or-create by name; asking for an existing name as another kind is a
//! [`RegisterError::TypeMismatch`] the caller sees. Registration takes a lock; the hot path never does:
//! counters add to one of [`SHARDS`] cache-line-padded atomics picked per thread, statistics and
//! word counters lock one of [`SHARDS`] uncontended shards. Reads merge the shards.
//!
//! [`global()`] is a process-wide registry (like Go's expvar); tests build their own
//! [`Registry`].

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use serde_json::{json, Map, Value};

/// The one lock policy: every critical section here leaves its value consistent (a counter, a
/// set, a map insert), so a lock poisoned by a panicking thread still holds a usable value and
/// is taken as it is. A metric never stops working, and never panics, because of another
/// thread's panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// How many shards a counter, statistics or word counter spreads its updates over.
pub const SHARDS: usize = 16;

/// Names the reporter fills itself; a service cannot register them.
pub const RESERVED: [&str; 4] = ["num_cpu", "memstats", "num_threads", "cpu_usage"];

fn shard_index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// A string; last value wins.
#[derive(Default, Debug)]
pub struct StringVar(Mutex<String>);

impl StringVar {
    /// Sets the value.
    pub fn set(&self, value: impl Into<String>) {
        *lock(&self.0) = value.into();
    }
    /// The value.
    pub fn get(&self) -> String {
        lock(&self.0).clone()
    }
}

/// An integer; last value wins.
#[derive(Default, Debug)]
pub struct IntVar(AtomicI64);

impl IntVar {
    /// Sets the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }
    /// Adds `n` (negative to subtract), wrapping at the ends of `i64`: a gauge of things
    /// in use, say.
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A float; last value wins.
#[derive(Default, Debug)]
pub struct FloatVar(AtomicU64);

impl FloatVar {
    /// Sets the value.
    pub fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::Relaxed);
    }
    /// Adds `x` (negative to subtract), atomically with respect to other adds and sets.
    pub fn add(&self, x: f64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + x).to_bits())
            });
    }
    /// The value.
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A counter with a rate; reset when a slot's report is frozen.
pub struct Counter {
    shards: [Padded<AtomicI64>; SHARDS],
    since: Mutex<Instant>,
}

impl std::fmt::Debug for Counter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counter")
            .field("total", &self.total())
            .finish()
    }
}

impl Default for Counter {
    fn default() -> Self {
        Counter {
            shards: Default::default(),
            since: Mutex::new(Instant::now()),
        }
    }
}

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: i64) {
        self.shards[shard_index()].0.fetch_add(n, Ordering::Relaxed);
    }
    /// The running total since the last freeze.
    pub fn total(&self) -> i64 {
        self.shards
            .iter()
            .map(|s| s.0.load(Ordering::Relaxed))
            .fold(0i64, i64::wrapping_add)
    }
    fn rate(total: i64, since: Instant, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(since).as_secs_f64();
        if secs > 0.0 {
            total as f64 / secs
        } else {
            0.0
        }
    }
    /// `{"total","rate"}` without resetting anything.
    pub fn value(&self) -> Value {
        let since = *lock(&self.since);
        let total = self.total();
        json!({"total": total, "rate": Self::rate(total, since, Instant::now())})
    }
    /// `{"total","rate"}` of the slot that ends now, and a fresh start. Every increment lands
    /// in exactly one slot: the shards are swapped to zero one by one.
    pub(crate) fn freeze(&self, now: Instant) -> Value {
        let mut since = lock(&self.since);
        let total = self
            .shards
            .iter()
            .map(|s| s.0.swap(0, Ordering::Relaxed))
            .fold(0i64, i64::wrapping_add);
        let value = json!({"total": total, "rate": Self::rate(total, *since, now)});
        *since = now;
        value
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Welford {
    count: u64,
    mean: f64,
    m2: f64,
    min: f64,
    max: f64,
}

impl Welford {
    fn record(&mut self, x: f64) {
        if self.count == 0 {
            self.min = x;
            self.max = x;
        } else {
            self.min = self.min.min(x);
            self.max = self.max.max(x);
        }
        self.count += 1;
        let delta = x - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (x - self.mean);
    }
    /// Chan et al.'s parallel combination.
    fn merge(&mut self, other: &Welford) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let n = self.count + other.count;
        let delta = other.mean - self.mean;
        self.mean += delta * other.count as f64 / n as f64;
        self.m2 += other.m2 + delta * delta * (self.count as f64 * other.count as f64) / n as f64;
        self.count = n;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }
}

/// Running min, max, mean and population variance; never reset.
#[derive(Default)]
pub struct Statistics {
    shards: [Padded<Mutex<Welford>>; SHARDS],
}

impl std::fmt::Debug for Statistics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statistics")
            .field("value", &self.value())
            .finish()
    }
}

impl Statistics {
    /// Records one observation; NaN and infinities are ignored.
    pub fn record(&self, x: f64) {
        if !x.is_finite() {
            return;
        }
        let mut w = lock(&self.shards[shard_index()].0);
        w.record(x);
    }
    fn merged(&self) -> Welford {
        let mut total = Welford::default();
        for s in &self.shards {
            total.merge(&lock(&s.0));
        }
        total
    }
    /// How many so far.
    pub fn count(&self) -> u64 {
        self.merged().count
    }
    /// The report's value, changing nothing.
    pub fn value(&self) -> Value {
        let w = self.merged();
        let var = if w.count > 0 {
            (w.m2 / w.count as f64).max(0.0)
        } else {
            0.0
        };
        let mut m = Map::new();
        if w.count > 0 {
            m.insert("min".into(), json!(w.min));
            m.insert("max".into(), json!(w.max));
        }
        m.insert("avg".into(), json!(if w.count > 0 { w.mean } else { 0.0 }));
        m.insert("count".into(), json!(w.count));
        m.insert("stddev".into(), json!(var.sqrt()));
        m.insert("stdvar".into(), json!(var));
        Value::Object(m)
    }
}

/// Counts distinct words; never reset.
pub struct WordCounter {
    hasher: RandomState,
    shards: [Padded<RwLock<HashSet<u64>>>; SHARDS],
}

impl Default for WordCounter {
    fn default() -> Self {
        WordCounter {
            hasher: RandomState::new(),
            shards: Default::default(),
        }
    }
}

impl std::fmt::Debug for WordCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WordCounter")
            .field("distinct", &self.count())
            .finish()
    }
}

impl WordCounter {
    /// Counts `word` if it is new.
    pub fn add(&self, word: &str) {
        let h = self.hasher.hash_one(word);
        // The shard is chosen by hash, so a word lives in one shard only.
        let shard = &self.shards[(h >> 58) as usize % SHARDS].0;
        // Most adds are words already seen: a shared read lock answers those.
        if read(shard).contains(&h) {
            return;
        }
        let mut set = write(shard);
        set.insert(h);
    }
    /// How many so far.
    pub fn count(&self) -> u64 {
        self.shards.iter().map(|s| read(&s.0).len() as u64).sum()
    }
}

/// One registered metric.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Metric {
    /// A string.
    String(Arc<StringVar>),
    /// An integer.
    Int(Arc<IntVar>),
    /// A float.
    Float(Arc<FloatVar>),
    /// A counter with rate.
    Counter(Arc<Counter>),
    /// Running statistics.
    Statistics(Arc<Statistics>),
    /// A distinct-word counter.
    Words(Arc<WordCounter>),
}

impl Metric {
    fn kind(&self) -> &'static str {
        match self {
            Metric::String(_) => "string",
            Metric::Int(_) => "int",
            Metric::Float(_) => "float",
            Metric::Counter(_) => "counter",
            Metric::Statistics(_) => "statistics",
            Metric::Words(_) => "word counter",
        }
    }

    fn value(&self) -> Value {
        match self {
            Metric::String(v) => json!(v.get()),
            Metric::Int(v) => json!(v.get()),
            Metric::Float(v) => float_value(v.get()),
            Metric::Counter(c) => c.value(),
            Metric::Statistics(s) => s.value(),
            Metric::Words(w) => json!(w.count()),
        }
    }
}

/// JSON has no NaN or infinity; those become null rather than breaking the report.
fn float_value(f: f64) -> Value {
    serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// A name is already registered as another kind, or is one the reporter reserves.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// The name is taken by a metric of another kind.
    #[error("usage metric {name:?} is already registered as a {existing}, not a {requested}")]
    TypeMismatch {
        /// The metric's name.
        name: String,
        /// The kind it has.
        existing: &'static str,
        /// The kind asked for.
        requested: &'static str,
    },
    /// The name is a built-in metric's.
    #[error("usage metric {0:?} is reserved for the reporter's built-in metrics")]
    Reserved(String),
    /// An empty name.
    #[error("usage metric names must not be empty")]
    EmptyName,
}

/// Metrics by name.
#[derive(Default, Debug)]
pub struct Registry {
    metrics: RwLock<BTreeMap<String, Metric>>,
}

macro_rules! getter {
    ($(#[$doc:meta])* $fn:ident, $variant:ident, $ty:ty, $kind:literal) => {
        $(#[$doc])*
        ///
        /// # Errors
        ///
        /// [`RegisterError`] if `name` is empty, reserved for the report's built-in metrics,
        /// or registered already as another kind.
        pub fn $fn(&self, name: &str) -> Result<Arc<$ty>, RegisterError> {
            match self.get_or_insert(name, || Metric::$variant(Arc::default()))? {
                Metric::$variant(m) => Ok(m),
                other => Err(RegisterError::TypeMismatch {
                    name: name.to_string(),
                    existing: other.kind(),
                    requested: $kind,
                }),
            }
        }
    };
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    fn get_or_insert(
        &self,
        name: &str,
        make: impl FnOnce() -> Metric,
    ) -> Result<Metric, RegisterError> {
        if name.is_empty() {
            return Err(RegisterError::EmptyName);
        }
        if RESERVED.contains(&name) {
            return Err(RegisterError::Reserved(name.to_string()));
        }
        if let Some(m) = read(&self.metrics).get(name) {
            return Ok(m.clone());
        }
        let mut map = write(&self.metrics);
        Ok(map.entry(name.to_string()).or_insert_with(make).clone())
    }

    getter!(/// A string metric.
        string, String, StringVar, "string");
    getter!(/// An integer metric.
        int, Int, IntVar, "int");
    getter!(/// A float metric.
        float, Float, FloatVar, "float");
    getter!(/// A counter with rate.
        counter, Counter, Counter, "counter");
    getter!(/// Running statistics.
        statistics, Statistics, Statistics, "statistics");
    getter!(/// A distinct-word counter.
        words, Words, WordCounter, "word counter");

    fn all(&self) -> Vec<(String, Metric)> {
        read(&self.metrics)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every metric's current value; changes nothing.
    pub fn snapshot(&self) -> Map<String, Value> {
        self.all()
            .into_iter()
            .map(|(k, m)| (k, m.value()))
            .collect()
    }

    /// Every metric's value for the slot that ends `now`; counters restart from zero.
    pub(crate) fn freeze(&self, now: Instant) -> Map<String, Value> {
        self.all()
            .into_iter()
            .map(|(k, m)| {
                let v = match &m {
                    Metric::Counter(c) => c.freeze(now),
                    other => other.value(),
                };
                (k, v)
            })
            .collect()
    }
}

/// The process-wide registry; a replica built without a registry of its own reports it.
///
/// ```
/// use usage_reporter::stats;
///
/// let queries = stats::global().counter("queries_total")?;
/// queries.inc(); // a few nanoseconds: the hot path touches one atomic
/// stats::global().string("storage_backend")?.set("s3");
/// stats::global().int("ring_replication_factor")?.set(3);
/// assert_eq!(queries.total(), 1);
/// # Ok::<(), usage_reporter::stats::RegisterError>(())
/// ```
pub fn global() -> &'static Arc<Registry> {
    static GLOBAL: OnceLock<Arc<Registry>> = OnceLock::new();
    GLOBAL.get_or_init(|| Arc::new(Registry::new()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int_and_float_vars_add_from_many_threads() {
        let (i, f) = (Arc::new(IntVar::default()), Arc::new(FloatVar::default()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (i, f) = (i.clone(), f.clone());
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        i.add(3);
                        i.add(-1);
                        f.add(0.5);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(i.get(), 8000);
        assert_eq!(f.get(), 2000.0);
    }
    use std::time::Duration;

    #[test]
    fn published_statistics_case() {
        let s = Statistics::default();
        for x in [100.0, 200.0, 300.0] {
            s.record(x);
        }
        let v = s.value();
        assert_eq!(v["min"], json!(100.0));
        assert_eq!(v["max"], json!(300.0));
        assert_eq!(v["count"], json!(3));
        assert_eq!(v["avg"], json!(200.0));
        assert_eq!(v["stddev"], json!(81.64965809277261));
        assert_eq!(v["stdvar"], json!(6666.666666666667));
    }

    #[test]
    fn empty_statistics_omit_min_and_max() {
        let v = Statistics::default().value();
        assert!(v.get("min").is_none() && v.get("max").is_none());
        assert_eq!(v["count"], json!(0));
    }

    #[test]
    fn published_counter_case() {
        let c = Counter::default();
        let start = *lock(&c.since);
        for n in [100, 200, 300] {
            c.add(n);
        }
        let v = c.freeze(start + Duration::from_secs(1));
        assert_eq!(v["total"], json!(600));
        assert!(v["rate"].as_f64().unwrap() >= 590.0);
        let v = c.freeze(start + Duration::from_secs(2));
        assert_eq!(v["total"], json!(0));
        assert_eq!(v["rate"], json!(0.0));
    }

    #[test]
    fn published_word_counter_case() {
        let w = Arc::new(WordCounter::default());
        let threads: Vec<_> = (0..100)
            .map(|_| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for word in ["foo", "bar", "foo"] {
                        w.add(word);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(w.count(), 2);
    }

    #[test]
    fn wrong_kind_and_reserved_names_are_errors() {
        let r = Registry::new();
        r.counter("requests").unwrap().inc();
        let err = r.int("requests").unwrap_err();
        assert_eq!(
            err,
            RegisterError::TypeMismatch {
                name: "requests".into(),
                existing: "counter",
                requested: "int"
            }
        );
        assert!(matches!(r.int("num_cpu"), Err(RegisterError::Reserved(_))));
        assert!(matches!(r.string(""), Err(RegisterError::EmptyName)));
        // Same kind: the same handle.
        r.counter("requests").unwrap().inc();
        assert_eq!(r.counter("requests").unwrap().total(), 2);
    }

    #[test]
    fn snapshot_changes_nothing_and_freeze_resets_counters_only() {
        let r = Registry::new();
        r.counter("c").unwrap().add(5);
        r.statistics("s").unwrap().record(1.0);
        r.words("w").unwrap().add("x");
        r.string("str").unwrap().set("v");
        for _ in 0..3 {
            assert_eq!(r.snapshot()["c"]["total"], json!(5));
        }
        let frozen = r.freeze(Instant::now());
        assert_eq!(frozen["c"]["total"], json!(5));
        let after = r.snapshot();
        assert_eq!(after["c"]["total"], json!(0));
        assert_eq!(after["s"]["count"], json!(1));
        assert_eq!(after["w"], json!(1));
        assert_eq!(after["str"], json!("v"));
    }

    #[test]
    fn non_finite_floats_become_null() {
        let r = Registry::new();
        r.float("f").unwrap().set(f64::NAN);
        assert_eq!(r.snapshot()["f"], Value::Null);
        r.float("f").unwrap().set(2.5);
        assert_eq!(r.snapshot()["f"], json!(2.5));
    }
}
