//! A stable identity for "this model version with this input", used as the result-cache key.

use std::fmt::Write as _;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::domain::replicate::ModelRef;

/// Bumped if the canonical form ever changes, so old cache entries are simply not found.
const CACHE_KEY_SCHEME: &str = "imagegen-cache-v3";

/// JSON with object keys sorted at every level and no insignificant whitespace. Sorting is
/// done here rather than relying on `serde_json::Map` being ordered, which a feature flag
/// elsewhere in the build (`preserve_order`) would silently change.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// SHA-256 (hex) of the model reference and the canonical input. Two requests get the same
/// key exactly when Replicate would be asked to run the same thing.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey(String);

impl CacheKey {
    /// The tenant is part of the key: one tenant's results never answer another's requests.
    /// So is the alias: two aliases of one model version (`sdxl` and `sdxl-img2img`) never
    /// answer each other's requests, so an answer names what was asked.
    pub fn new(tenant: &str, alias: &str, model: &ModelRef, input: &Map<String, Value>) -> Self {
        let mut hasher = Sha256::new();
        for part in [
            CACHE_KEY_SCHEME,
            tenant,
            alias,
            &model.to_string(),
            &canonical_json(&Value::Object(input.clone())),
        ] {
            // Length-prefixed, so no two different (model, input) pairs share a byte stream.
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let digest = hasher.finalize();
        let mut hex = String::with_capacity(64);
        for byte in digest.iter() {
            let _ = write!(hex, "{byte:02x}");
        }
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_sorted_at_every_level() {
        let v = json!({"b": 1, "a": {"d": [3, {"z": 1, "y": 2}], "c": "x\"y"}});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"c":"x\"y","d":[3,{"y":2,"z":1}]},"b":1}"#
        );
    }

    #[test]
    fn unicode_keys_sort_by_code_point() {
        let v = json!({"é": 1, "z": 2, "A": 3});
        assert_eq!(canonical_json(&v), r#"{"A":3,"z":2,"é":1}"#);
    }
}
