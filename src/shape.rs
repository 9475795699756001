//! The exact shape of a report this version freezes, checked before any report leaves: the
//! contract's top-level keys and no others, in their order, each of its JSON type; a `version`
//! object of the known keys, all strings, `buildUser` empty; no key twice in any object; every
//! number finite. A planted object that carries the cluster's identity but anything else
//! (a `hostname`, a payload, a duplicate `clusterID` whose first value is foreign) is refused.

use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The JSON type a key must hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Str,
    Num,
    Obj,
}

/// Top-level keys, in the order [`crate::report::Report`] writes them.
const TOP: [(&str, Kind); 11] = [
    ("clusterID", Kind::Str),
    ("createdAt", Kind::Str),
    ("interval", Kind::Str),
    ("intervalPeriod", Kind::Num),
    ("target", Kind::Str),
    ("instanceID", Kind::Str),
    ("version", Kind::Obj),
    ("os", Kind::Str),
    ("arch", Kind::Str),
    ("edition", Kind::Str),
    ("metrics", Kind::Obj),
];

/// The `version` object's keys, in order; all strings.
const VERSION: [&str; 6] = [
    "version",
    "revision",
    "branch",
    "buildUser",
    "buildDate",
    "rustVersion",
];

/// Why bytes are not a report of this version's shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// Not JSON, or not an object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// A key twice in one object.
    #[error("the key {0:?} appears twice in one object")]
    DuplicateKey(String),
    /// A key this version never writes.
    #[error("the key {0:?} is not one a report has")]
    UnknownKey(String),
    /// The keys, not in the order this version writes them, or some missing.
    #[error("its keys are not a report's, in a report's order: {0}")]
    Keys(String),
    /// A value of the wrong type.
    #[error("{0} is not of a report's type for it")]
    Type(String),
    /// A number that is not finite.
    #[error("a number is not finite")]
    NotFinite,
    /// `buildUser` is not empty: it would name a person.
    #[error("version.buildUser is not empty")]
    BuildUser,
    /// `intervalPeriod` is not the cluster's interval.
    #[error("intervalPeriod is {found} s, not the cluster's interval of {expected} s")]
    IntervalPeriod {
        /// In the report.
        found: String,
        /// The cluster's.
        expected: String,
    },
}

impl ShapeError {
    /// The `reason` label it is counted under.
    pub fn reason(&self) -> &'static str {
        match self {
            ShapeError::NotJson(_) => "not_json",
            ShapeError::DuplicateKey(_) => "duplicate_key",
            ShapeError::UnknownKey(_) => "unknown_key",
            ShapeError::Keys(_) => "keys",
            ShapeError::Type(_) => "type",
            ShapeError::NotFinite => "not_finite",
            ShapeError::BuildUser => "build_user",
            ShapeError::IntervalPeriod { .. } => "interval_period",
        }
    }
}

/// Checks `bytes` against the report shape, `intervalPeriod` against `interval_secs`.
pub fn check(bytes: &[u8], interval_secs: f64) -> Result<(), ShapeError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let top = Node::deserialize_any(&mut de).map_err(|e| {
        let text = e.to_string();
        // The visitor's own errors come back as messages; keep them typed.
        parse_error(&text).unwrap_or(ShapeError::NotJson(text))
    })?;
    de.end().map_err(|e| ShapeError::NotJson(e.to_string()))?;
    let Node::Obj(fields) = top else {
        return Err(ShapeError::NotJson("not an object".into()));
    };
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    if let Some(unknown) = names.iter().find(|n| !TOP.iter().any(|(t, _)| t == *n)) {
        return Err(ShapeError::UnknownKey((*unknown).to_string()));
    }
    if names.len() != TOP.len() || names.iter().zip(TOP.iter()).any(|(n, (t, _))| n != t) {
        return Err(ShapeError::Keys(names.join(",")));
    }
    for ((name, node), (_, kind)) in fields.iter().zip(TOP.iter()) {
        if node.kind() != Some(*kind) {
            return Err(ShapeError::Type(name.clone()));
        }
        if name == "intervalPeriod" {
            if let Node::Num(found) = node {
                if (found - interval_secs).abs() > 1e-9 * interval_secs.max(1.0) {
                    return Err(ShapeError::IntervalPeriod {
                        found: found.to_string(),
                        expected: interval_secs.to_string(),
                    });
                }
            }
        }
        if name == "version" {
            check_version(node)?;
        }
    }
    Ok(())
}

fn check_version(node: &Node) -> Result<(), ShapeError> {
    let Node::Obj(fields) = node else {
        return Err(ShapeError::Type("version".into()));
    };
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    if let Some(unknown) = names.iter().find(|n| !VERSION.contains(n)) {
        return Err(ShapeError::UnknownKey(format!("version.{unknown}")));
    }
    if names != VERSION {
        return Err(ShapeError::Keys(format!("version: {}", names.join(","))));
    }
    for (name, value) in fields {
        let Node::Str(text) = value else {
            return Err(ShapeError::Type(format!("version.{name}")));
        };
        if name == "buildUser" && !text.is_empty() {
            return Err(ShapeError::BuildUser);
        }
    }
    Ok(())
}

/// Errors raised inside the visitor travel as text through serde; this reads them back.
fn parse_error(text: &str) -> Option<ShapeError> {
    if let Some(rest) = text.strip_prefix(DUPLICATE) {
        let key = rest.split(" at line").next().unwrap_or(rest);
        return Some(ShapeError::DuplicateKey(key.to_string()));
    }
    text.starts_with(NOT_FINITE)
        .then_some(ShapeError::NotFinite)
}

const DUPLICATE: &str = "duplicate key: ";
const NOT_FINITE: &str = "not finite";

/// What the checker keeps of a value: the top two levels in full, deeper ones only checked.
#[derive(Debug)]
enum Node {
    Str(String),
    Num(f64),
    Obj(Vec<(String, Node)>),
    Other,
}

impl Node {
    fn kind(&self) -> Option<Kind> {
        match self {
            Node::Str(_) => Some(Kind::Str),
            Node::Num(_) => Some(Kind::Num),
            Node::Obj(_) => Some(Kind::Obj),
            Node::Other => None,
        }
    }

    fn deserialize_any<'de, D: Deserializer<'de>>(d: D) -> Result<Node, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

impl<'de> DeserializeSeed<'de> for NodeVisitor {
    type Value = Node;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        d.deserialize_any(self)
    }
}

#[derive(Clone, Copy)]
struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Num(v as f64))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::Num(v as f64))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        if v.is_finite() {
            Ok(Node::Num(v))
        } else {
            Err(E::custom(NOT_FINITE))
        }
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        while seq.next_element_seed(NodeVisitor)?.is_some() {}
        Ok(Node::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut seen = HashSet::new();
        let mut fields = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key.clone()) {
                return Err(de::Error::custom(format!("{DUPLICATE}{key}")));
            }
            let value = map.next_value_seed(NodeVisitor)?;
            fields.push((key, value));
        }
        Ok(Node::Obj(fields))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> serde_json::Value {
        serde_json::json!({
            "clusterID": "3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e", "createdAt": "2026-01-01T00:00:00Z",
            "interval": "2026-02-01T00:00:00Z", "intervalPeriod": 14400, "target": "all",
            "instanceID": "0b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e",
            "version": {"version": "1.0.0", "revision": "", "branch": "", "buildUser": "",
                        "buildDate": "", "rustVersion": "1.95.0"},
            "os": "linux", "arch": "amd64", "edition": "oss",
            "metrics": {"a": {"b": [1, 2.5, "x", null, true]}},
        })
    }

    fn text(v: &serde_json::Value) -> Vec<u8> {
        // serde_json's map keeps insertion order here (the crate's preserve_order feature is
        // not needed: `json!` builds keys in order only with it, so build the text by hand).
        let mut out = String::from("{");
        for (i, (k, _)) in TOP.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&format!("{:?}:{}", k, v[*k]));
        }
        out.push('}');
        out.into_bytes()
    }

    #[test]
    fn a_report_of_this_shape_passes_and_anything_else_is_refused_by_reason() {
        let good = text(&report());
        assert_eq!(check(&good, 14400.0), Ok(()));
        let good = String::from_utf8(good).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (good.replacen("{", "{\"hostname\":\"db-1\",", 1), "unknown_key"),
            (
                good.replacen("{", "{\"clusterID\":\"1b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e\",", 1),
                "duplicate_key",
            ),
            (good.replacen("\"b\":[", "\"b\":[],\"b\":[", 1), "duplicate_key"),
            (good.replacen(",\"os\":\"linux\"", "", 1), "keys"),
            (good.replacen("\"os\":\"linux\"", "\"os\":7", 1), "type"),
            (good.replacen("\"buildUser\":\"\"", "\"buildUser\":\"alice\"", 1), "build_user"),
            (good.replacen("\"rustVersion\"", "\"goVersion\"", 1), "unknown_key"),
            (good.replacen("14400", "3600", 1), "interval_period"),
            (good.replacen("2.5", "1e999", 1), "not_json"),
            ("[1]".to_string(), "not_json"),
            (
                r#"{"clusterID":"3b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e","createdAt":"2026-01-01T00:00:00Z","interval":"2026-02-01T00:00:00Z","instanceID":"0b0dbe09-7ca4-4c2c-8d5c-4a7c7c2b2c1e","PAYLOAD":"ANYTHING"}"#.to_string(),
                "unknown_key",
            ),
        ];
        for (bytes, reason) in cases {
            let got = check(bytes.as_bytes(), 14400.0);
            assert_eq!(
                got.as_ref().map_err(ShapeError::reason),
                Err(reason),
                "{bytes}: {got:?}"
            );
        }
        // Keys reordered.
        let swapped = good.replacen(
            "\"os\":\"linux\",\"arch\":\"amd64\"",
            "\"arch\":\"amd64\",\"os\":\"linux\"",
            1,
        );
        assert_eq!(
            check(swapped.as_bytes(), 14400.0).map_err(|e| e.reason()),
            Err("keys")
        );
    }
}
