//! Insights, the arithmetic: one cluster's figures from its replicas' reports of one slot, and
//! aggregates over clusters that a cluster's figures can be added to and taken back from
//! exactly (so that each cluster counts once, by its latest slot, as it moves on), and what of
//! an aggregate may be shown (`--min-clusters`).
//!
//! How replicas combine into their cluster's figure for a key:
//! - text (strings, booleans as `true`/`false`): the set of values any replica reported; the
//!   cluster counts once for each;
//! - numbers: if every replica's is 0 or 1 (a flag), the largest (enabled if any replica has
//!   it); else if they are all equal (a setting such as a replication factor), that value;
//!   else their sum (counters and sizes: the cluster's total).
//!
//! Numbers are also kept in a histogram of relative width 2 % (a value is known within 1 %),
//! from which quantiles across clusters are read; exact values are never kept, and neither
//! minima nor maxima are ever shown.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::leaves::Leaf;

/// Distinct values kept per key; clusters with others count in `other`.
pub const MAX_VALUES: usize = 256;
/// Distinct numbers that still make a key's values worth listing (flags, settings).
pub const FEW_NUMBERS: usize = 16;
/// Clusters needed before p5 and p95 are shown, so that neither is a single cluster's
/// extreme (with fewer, the 5 % rank is the minimum).
pub const EXTREME_QUANTILES_FROM: u64 = 20;
/// The histogram's relative bucket width.
const GAMMA: f64 = 1.02;

/// One key's figure for one cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figure {
    /// Text values any replica reported.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub texts: BTreeSet<String>,
    /// The replicas' numbers combined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<f64>,
}

/// A cluster's figures for one slot, by key.
pub type Figures = BTreeMap<String, Figure>;

/// One key's values over the replicas merged so far: enough to merge one more replica in
/// without keeping each replica's value.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Partial {
    /// Text values any replica reported.
    #[serde(default, rename = "t", skip_serializing_if = "BTreeSet::is_empty")]
    pub texts: BTreeSet<String>,
    /// Numbers: `(min, max, sum, all 0 or 1)`; stored as `[value, count]` when all are equal,
    /// else `[min, max, sum, all01]`, integers without a fraction (states stay small).
    #[serde(
        default,
        rename = "n",
        skip_serializing_if = "Option::is_none",
        with = "compact_numbers"
    )]
    pub numbers: Option<(f64, f64, f64, bool)>,
}

/// The stored form of [`Partial::numbers`].
mod compact_numbers {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Num {
        Int(i64),
        Float(f64),
        Flag(bool),
    }

    fn num(x: f64) -> Num {
        if x.fract() == 0.0 && x.abs() < 9.0e15 {
            Num::Int(x as i64)
        } else {
            Num::Float(x)
        }
    }

    fn float(n: &Num) -> Option<f64> {
        match n {
            Num::Int(i) => Some(*i as f64),
            Num::Float(f) => Some(*f),
            Num::Flag(_) => None,
        }
    }

    pub(super) fn serialize<S: Serializer>(
        v: &Option<(f64, f64, f64, bool)>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            None => s.serialize_none(),
            Some((lo, hi, _, _)) if lo == hi && *lo == 0.0 => [num(0.0), num(1.0)].serialize(s),
            Some((lo, hi, sum, _)) if lo == hi && (sum / lo).fract() == 0.0 => {
                [num(*lo), num(sum / lo)].serialize(s)
            }
            Some((lo, hi, sum, flags)) => {
                [num(*lo), num(*hi), num(*sum), Num::Flag(*flags)].serialize(s)
            }
        }
    }

    type Numbers = Option<(f64, f64, f64, bool)>;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Numbers, D::Error> {
        let v: Option<Vec<Num>> = Option::deserialize(d)?;
        let bad = || serde::de::Error::custom("numbers: [value, count] or [min, max, sum, all01]");
        match v.as_deref() {
            None => Ok(None),
            Some([value, count]) => {
                let (value, count) = (float(value).ok_or_else(bad)?, float(count).ok_or_else(bad)?);
                Ok(Some((
                    value,
                    value,
                    value * count,
                    value == 0.0 || value == 1.0,
                )))
            }
            Some([lo, hi, sum, Num::Flag(flags)]) => Ok(Some((
                float(lo).ok_or_else(bad)?,
                float(hi).ok_or_else(bad)?,
                float(sum).ok_or_else(bad)?,
                *flags,
            ))),
            Some(_) => Err(bad()),
        }
    }
}

/// A slot's keys, over the replicas merged so far.
pub type Partials = BTreeMap<String, Partial>;

/// Merges one replica's leaves in.
pub fn add_replica(into: &mut Partials, leaves: &[Leaf]) {
    for leaf in leaves {
        let p = into.entry(leaf.key.clone()).or_default();
        if let Some(t) = &leaf.text {
            p.texts.insert(t.clone());
        }
        if let Some(n) = leaf.number.filter(|n| n.is_finite()) {
            let flag = n == 0.0 || n == 1.0;
            p.numbers = Some(match p.numbers {
                None => (n, n, n, flag),
                Some((lo, hi, sum, all)) => (lo.min(n), hi.max(n), sum + n, all && flag),
            });
        }
    }
}

/// The cluster's figures from its merged replicas: see the module docs.
pub fn figures_of(partials: &Partials) -> Figures {
    partials
        .iter()
        .map(|(key, p)| {
            let number = p.numbers.map(|(lo, hi, sum, flags)| {
                if flags {
                    hi
                } else if lo == hi {
                    lo
                } else {
                    sum
                }
            });
            (
                key.clone(),
                Figure {
                    texts: p.texts.clone(),
                    number,
                },
            )
        })
        .filter(|(_, f)| !f.texts.is_empty() || f.number.is_some())
        .collect()
}

/// Merges the leaves of a cluster's replicas (one list per replica) into its figures.
pub fn merge<'a>(replicas: impl IntoIterator<Item = &'a [Leaf]>) -> Figures {
    let mut partials = Partials::new();
    for leaves in replicas {
        add_replica(&mut partials, leaves);
    }
    figures_of(&partials)
}

/// The clusters counted for one key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyAggregate {
    /// Clusters reporting the key.
    pub clusters: u64,
    /// Clusters per value (text as reported; numbers as JSON numbers), at most
    /// [`MAX_VALUES`] values.
    #[serde(default)]
    pub values: BTreeMap<String, u64>,
    /// Clusters whose value found no room in `values`.
    #[serde(default)]
    pub unlisted: u64,
    /// Clusters with a number for the key.
    #[serde(default)]
    pub numbers: u64,
    /// Of those, how many are zero.
    #[serde(default)]
    pub zero: u64,
    /// Positive numbers by histogram bucket.
    #[serde(default)]
    pub positive: BTreeMap<i32, u64>,
    /// Negative numbers by the bucket of their magnitude.
    #[serde(default)]
    pub negative: BTreeMap<i32, u64>,
}

/// Clusters counted, and their figures by key.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    /// Clusters counted.
    pub clusters: u64,
    /// By key.
    pub keys: BTreeMap<String, KeyAggregate>,
    /// Clusters by the version of their slot (see [`Counted::version`]).
    #[serde(default)]
    pub versions: BTreeMap<String, u64>,
    /// Clusters by how many replicas reported their slot.
    #[serde(default)]
    pub replicas: BTreeMap<String, u64>,
    /// Replicas that reported, summed over the clusters.
    #[serde(default)]
    pub instances: u64,
}

/// One cluster's slot as an aggregate counts it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counted {
    /// Its figures, its replicas merged.
    pub figures: Figures,
    /// The lowest version (semver order) of its replicas: the version the whole cluster has
    /// reached, so a cluster halfway through a rolling upgrade counts at the old one.
    pub version: String,
    /// Replicas that reported the slot.
    pub instances: u64,
}

/// The lowest of some versions, in semver order (`unknown` for none or an empty one).
pub fn lowest_version<'a>(versions: impl IntoIterator<Item = &'a str>) -> String {
    versions
        .into_iter()
        .map(|v| if v.is_empty() { "unknown" } else { v })
        .min_by(|a, b| semver_cmp(a, b))
        .unwrap_or("unknown")
        .to_string()
}

/// Adds one to (or takes one from) a count in a map without a cap, dropping zeros.
fn count(map: &mut BTreeMap<String, u64>, k: &str, up: bool) {
    if up {
        *map.entry(k.to_string()).or_default() += 1;
    } else if let Some(n) = map.get_mut(k) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(k);
        }
    }
}

fn bucket(x: f64) -> i32 {
    (x.ln() / GAMMA.ln())
        .ceil()
        .clamp(i32::MIN as f64, i32::MAX as f64) as i32
}

/// A bucket's representative value: within 1 % of every value in it.
fn bucket_value(i: i32) -> f64 {
    2.0 * GAMMA.powi(i) / (GAMMA + 1.0)
}

fn bump(map: &mut BTreeMap<String, u64>, k: &str, up: bool) -> bool {
    if up {
        if let Some(n) = map.get_mut(k) {
            *n += 1;
            return true;
        }
        if map.len() < MAX_VALUES {
            map.insert(k.to_string(), 1);
            return true;
        }
        false
    } else {
        match map.get_mut(k) {
            Some(n) => {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(k);
                }
                true
            }
            None => false,
        }
    }
}

fn step(n: &mut u64, up: bool) {
    *n = if up { *n + 1 } else { n.saturating_sub(1) };
}

impl Aggregate {
    /// Counts one cluster's slot in (`up`) or takes it back out (`!up`): its figures, its
    /// version and its replicas.
    pub fn apply_cluster(&mut self, c: &Counted, up: bool) {
        self.apply(&c.figures, up);
        count(&mut self.versions, &c.version, up);
        count(&mut self.replicas, &c.instances.to_string(), up);
        self.instances = if up {
            self.instances + c.instances
        } else {
            self.instances.saturating_sub(c.instances)
        };
    }

    /// Counts one cluster's figures in (`up`) or takes them back out (`!up`). Taking back
    /// exactly what was added leaves the aggregate as it was.
    pub fn apply(&mut self, figures: &Figures, up: bool) {
        step(&mut self.clusters, up);
        for (key, f) in figures {
            let k = self.keys.entry(key.clone()).or_default();
            step(&mut k.clusters, up);
            let mut listed = true;
            for t in &f.texts {
                listed &= bump(
                    &mut k.values,
                    &serde_json::Value::from(t.as_str()).to_string(),
                    up,
                );
            }
            if let Some(n) = f.number {
                if f.texts.is_empty() {
                    listed &= bump(&mut k.values, &number_text(n), up);
                }
                step(&mut k.numbers, up);
                let hist = if n > 0.0 {
                    Some((&mut k.positive, n))
                } else if n < 0.0 {
                    Some((&mut k.negative, -n))
                } else {
                    step(&mut k.zero, up);
                    None
                };
                if let Some((hist, magnitude)) = hist {
                    let e = hist.entry(bucket(magnitude)).or_default();
                    step(e, up);
                    if *e == 0 {
                        hist.remove(&bucket(magnitude));
                    }
                }
            }
            if !listed {
                step(&mut k.unlisted, up);
            }
            if k.clusters == 0 {
                self.keys.remove(key);
            }
        }
    }

    /// Adds another aggregate (of other clusters) to this one.
    pub fn merge(&mut self, other: &Aggregate) {
        self.clusters += other.clusters;
        self.instances += other.instances;
        for (mine, theirs) in [
            (&mut self.versions, &other.versions),
            (&mut self.replicas, &other.replicas),
        ] {
            for (k, n) in theirs {
                *mine.entry(k.clone()).or_default() += n;
            }
        }
        for (key, o) in &other.keys {
            let k = self.keys.entry(key.clone()).or_default();
            k.clusters += o.clusters;
            k.numbers += o.numbers;
            k.zero += o.zero;
            k.unlisted += o.unlisted;
            for (v, n) in &o.values {
                if k.values.contains_key(v) || k.values.len() < MAX_VALUES {
                    *k.values.entry(v.clone()).or_default() += n;
                } else {
                    k.unlisted += n;
                }
            }
            for (b, n) in &o.positive {
                *k.positive.entry(*b).or_default() += n;
            }
            for (b, n) in &o.negative {
                *k.negative.entry(*b).or_default() += n;
            }
        }
    }
}

/// A number as a value: integers without a fraction, as JSON writes them.
fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e15 {
        format!("{}", n as i64)
    } else {
        serde_json::Value::from(n).to_string()
    }
}

/// What may be shown of one key: values shared by at least `min` clusters, the rest folded
/// into `other`; quantiles only over enough clusters; never a minimum or a maximum.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyView {
    /// Clusters reporting the key.
    pub clusters: u64,
    /// `(value as reported, clusters)`, most clusters first; empty for numbers with many
    /// distinct values.
    pub values: Vec<(serde_json::Value, u64)>,
    /// Clusters whose value is not listed.
    pub other: u64,
    /// p5, p25, p50, p75, p95 across clusters, those that may be shown.
    pub quantiles: Option<BTreeMap<&'static str, f64>>,
    /// Clusters whose number is zero, when at least `min` are (or none).
    pub zero: Option<u64>,
}

impl KeyAggregate {
    /// Whether the key's values are numbers only.
    pub fn numeric(&self) -> bool {
        self.numbers > 0
            && self.numbers == self.clusters
            && self.values.keys().all(|v| !v.starts_with('"'))
    }

    /// What may be shown, with `min` the least clusters a value must have.
    pub fn view(&self, min: u64) -> KeyView {
        let list_values = !self.numeric() || self.values.len() <= FEW_NUMBERS;
        let mut values: Vec<(serde_json::Value, u64)> = Vec::new();
        let mut other = self.unlisted;
        for (v, n) in &self.values {
            if list_values && *n >= min {
                values.push((
                    serde_json::from_str(v).unwrap_or(serde_json::Value::Null),
                    *n,
                ));
            } else {
                other += n;
            }
        }
        values.sort_by(|a, b| {
            b.1.cmp(&a.1)
                .then_with(|| a.0.to_string().cmp(&b.0.to_string()))
        });
        let numeric = self.numbers >= min.max(1);
        KeyView {
            clusters: self.clusters,
            values,
            other,
            quantiles: numeric.then(|| self.quantiles()),
            zero: (numeric && (self.zero == 0 || self.zero >= min)).then_some(self.zero),
        }
    }

    /// Nearest-rank quantiles over the histogram; p5 and p95 only from
    /// [`EXTREME_QUANTILES_FROM`] clusters on.
    fn quantiles(&self) -> BTreeMap<&'static str, f64> {
        // Every number in order: negatives by falling magnitude, zeros, positives rising.
        let ordered: Vec<(f64, u64)> = self
            .negative
            .iter()
            .rev()
            .map(|(b, n)| (-bucket_value(*b), *n))
            .chain(std::iter::once((0.0, self.zero)))
            .chain(self.positive.iter().map(|(b, n)| (bucket_value(*b), *n)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let total: u64 = ordered.iter().map(|(_, n)| n).sum();
        let at = |q: f64| {
            let rank = ((q * total as f64).ceil() as u64).max(1);
            let mut seen = 0;
            for (v, n) in &ordered {
                seen += n;
                if seen >= rank {
                    return *v;
                }
            }
            0.0
        };
        let mut out = BTreeMap::new();
        for (name, q) in [("p25", 0.25), ("p50", 0.5), ("p75", 0.75)] {
            out.insert(name, at(q));
        }
        if total >= EXTREME_QUANTILES_FROM {
            out.insert("p5", at(0.05));
            out.insert("p95", at(0.95));
        }
        out
    }
}

/// For each version, the share of clusters at or above it, newest first (semver order;
/// versions that are not semver come last, by name).
pub fn penetration(versions: &BTreeMap<String, u64>) -> Vec<(String, f64)> {
    let total: u64 = versions.values().sum();
    if total == 0 {
        return Vec::new();
    }
    let mut ordered: Vec<(&String, u64)> = versions.iter().map(|(v, n)| (v, *n)).collect();
    ordered.sort_by(|a, b| semver_cmp(b.0, a.0));
    let mut at_or_above = 0;
    ordered
        .into_iter()
        .map(|(v, n)| {
            at_or_above += n;
            (v.clone(), at_or_above as f64 / total as f64)
        })
        .collect()
}

/// Semver order (`v` prefix allowed; a pre-release below its release); `None` for others.
fn semver(v: &str) -> Option<(u64, u64, u64, bool, String)> {
    let v = v.strip_prefix('v').unwrap_or(v);
    let (core, pre) = match v.split_once(['-', '+']) {
        Some((c, p)) => (c, p.to_string()),
        None => (v, String::new()),
    };
    let mut parts = core.split('.');
    let mut next = || parts.next()?.parse::<u64>().ok();
    let (a, b, c) = (next()?, next()?, next().unwrap_or(0));
    Some((a, b, c, pre.is_empty(), pre))
}

fn semver_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    match (semver(a), semver(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Greater,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (None, None) => b.cmp(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(v: serde_json::Value) -> Vec<Leaf> {
        super::super::leaves::of(&v)
    }

    #[test]
    fn partials_are_stored_small_and_read_back_the_same() {
        for numbers in [
            (0.0, 0.0, 0.0, true),
            (1.0, 1.0, 3.0, true),
            (3.0, 3.0, 9.0, false),
            (0.0, 1.0, 2.0, true),
            (0.1, 0.1, 0.30000000000000004, false),
            (-2.5, 7.0, 4.5, false),
        ] {
            let p = Partial {
                texts: BTreeSet::new(),
                numbers: Some(numbers),
            };
            let text = serde_json::to_string(&p).unwrap();
            let back: Partial = serde_json::from_str(&text).unwrap();
            assert_eq!(back, p, "{text}");
        }
        let text = serde_json::to_string(&Partial {
            texts: BTreeSet::new(),
            numbers: Some((336.0, 336.0, 1008.0, false)),
        })
        .unwrap();
        assert_eq!(text, r#"{"n":[336,3]}"#);
    }

    #[test]
    fn replicas_merge_into_one_cluster_figure() {
        let a = leaves(
            serde_json::json!({"flag": 0, "rf": 3, "bytes": 10, "backend": "s3", "on": true}),
        );
        let b = leaves(serde_json::json!({"flag": 1, "rf": 3, "bytes": 5, "backend": "s3"}));
        let c = leaves(
            serde_json::json!({"flag": 0, "rf": 3, "bytes": 1, "backend": "gcs", "on": false}),
        );
        let f = merge([a.as_slice(), b.as_slice(), c.as_slice()]);
        assert_eq!(f["flag"].number, Some(1.0), "enabled if any replica has it");
        assert_eq!(f["rf"].number, Some(3.0), "a setting stays itself");
        assert_eq!(f["bytes"].number, Some(16.0), "counters add up");
        assert_eq!(f["backend"].texts.iter().collect::<Vec<_>>(), ["gcs", "s3"]);
        assert_eq!(f["on"].texts.len(), 2);
    }

    #[test]
    fn a_cluster_taken_back_leaves_the_aggregate_as_it_was() {
        let mut agg = Aggregate::default();
        let x = merge([leaves(
            serde_json::json!({"backend": "s3", "rf": 3, "heap": 123.4, "neg": -2}),
        )
        .as_slice()]);
        let y = merge([leaves(serde_json::json!({"backend": "gcs", "rf": 0})).as_slice()]);
        agg.apply(&x, true);
        let before = agg.clone();
        agg.apply(&y, true);
        assert_eq!(agg.clusters, 2);
        assert_eq!(agg.keys["backend"].values.len(), 2);
        assert_eq!(agg.keys["rf"].zero, 1);
        agg.apply(&y, false);
        assert_eq!(agg, before);
        agg.apply(&x, false);
        assert_eq!(agg, Aggregate::default());
    }

    #[test]
    fn few_clusters_are_never_shown_and_quantiles_are_within_one_percent() {
        let mut agg = Aggregate::default();
        for i in 0..30u32 {
            let backend = if i < 26 { "s3" } else { "host-7.internal" };
            let m = serde_json::json!({"backend": backend, "heap": 1000.0 + f64::from(i) * 10.0, "rf": 3});
            agg.apply(&merge([leaves(m).as_slice()]), true);
        }
        let v = agg.keys["backend"].view(5);
        assert_eq!(v.values, vec![(serde_json::json!("s3"), 26)]);
        assert_eq!(v.other, 4, "a value of 4 clusters is folded, never shown");
        let heap = agg.keys["heap"].view(5);
        assert!(
            heap.values.is_empty(),
            "many distinct numbers: quantiles, not values"
        );
        assert_eq!(heap.other, 30);
        let q = heap.quantiles.unwrap();
        // Exact nearest-rank p50 over 1000..1290 is 1140; the histogram is within 1 %.
        assert!((q["p50"] - 1140.0).abs() / 1140.0 < 0.011, "{q:?}");
        assert!(q.contains_key("p5") && q.contains_key("p95"));
        assert!(
            !q.values()
                .any(|x| (*x - 1000.0).abs() < 1e-9 || (*x - 1290.0).abs() < 1e-9),
            "never the extremes exactly"
        );
        let rf = agg.keys["rf"].view(5);
        assert_eq!(rf.values, vec![(serde_json::json!(3), 30)]);
        // Under 20 clusters there is no p5 nor p95; under `min`, no quantiles at all.
        let mut small = Aggregate::default();
        for i in 0..6 {
            small.apply(
                &merge([leaves(serde_json::json!({"heap": i})).as_slice()]),
                true,
            );
        }
        let q = small.keys["heap"].view(5).quantiles.unwrap();
        assert!(!q.contains_key("p5") && !q.contains_key("p95"));
        assert!(small.keys["heap"].view(7).quantiles.is_none());
        assert_eq!(
            small.keys["heap"].view(5).zero,
            None,
            "one zero is not shown"
        );
    }

    #[test]
    fn aggregates_of_days_merge() {
        let mut a = Aggregate::default();
        let mut b = Aggregate::default();
        a.apply(
            &merge([leaves(serde_json::json!({"backend": "s3"})).as_slice()]),
            true,
        );
        b.apply(
            &merge([leaves(serde_json::json!({"backend": "s3", "rf": 2})).as_slice()]),
            true,
        );
        a.merge(&b);
        assert_eq!(
            (
                a.clusters,
                a.keys["backend"].values["\"s3\""],
                a.keys["rf"].clusters
            ),
            (2, 2, 1)
        );
    }

    #[test]
    fn version_penetration_in_semver_order() {
        let v: BTreeMap<String, u64> =
            [("1.10.0", 2), ("1.9.3", 5), ("1.10.0-rc1", 1), ("main", 2)]
                .iter()
                .map(|(k, n)| (k.to_string(), *n))
                .collect();
        let p = penetration(&v);
        let names: Vec<&str> = p.iter().map(|(v, _)| v.as_str()).collect();
        assert_eq!(names, ["1.10.0", "1.10.0-rc1", "1.9.3", "main"]);
        assert_eq!(p[0].1, 0.2);
        assert_eq!(p[2].1, 0.8);
        assert_eq!(p[3].1, 1.0);
    }
}
