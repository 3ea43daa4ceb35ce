//! DynamoDB's item size rules and capacity units, on items in DynamoDB's JSON wire format
//! (`{"name": {"S": "…"}}`). From the DynamoDB developer guide, "Item sizes and formats"
//! and "Read/write capacity units".

use serde_json::{Map, Value};

use crate::sam::{IndexSpec, Projection};

/// One write request unit covers an item of up to 1 KB, one read request unit up to 4 KB.
pub const WRITE_UNIT_BYTES: u64 = 1024;
pub const READ_UNIT_BYTES: u64 = 4096;
/// What DynamoDB adds to every stored item (table or index) for storage billing.
pub const STORAGE_OVERHEAD_BYTES: u64 = 100;

/// An item's size: for each attribute, its name's UTF-8 length plus its value's size.
pub fn item_size(item: &Map<String, Value>) -> u64 {
    item.iter()
        .map(|(name, value)| name.len() as u64 + value_size(value))
        .sum()
}

/// A typed value's size. Numbers are stored as base-100 digits: about one byte per two
/// significant digits, plus one. Lists and maps cost 3 bytes plus their contents.
pub fn value_size(value: &Value) -> u64 {
    let Some((kind, inner)) = value.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    match (kind.as_str(), inner) {
        ("S", Value::String(s)) => s.len() as u64,
        ("N", Value::String(n)) => number_size(n),
        ("B", Value::String(b)) => base64_len(b),
        ("BOOL" | "NULL", _) => 1,
        ("SS", Value::Array(items)) => strings(items).map(|s| s.len() as u64).sum(),
        ("NS", Value::Array(items)) => strings(items).map(number_size).sum(),
        ("BS", Value::Array(items)) => strings(items).map(base64_len).sum(),
        ("L", Value::Array(items)) => 3 + items.iter().map(value_size).sum::<u64>(),
        ("M", Value::Object(map)) => 3 + item_size(map),
        _ => 0,
    }
}

fn strings(items: &[Value]) -> impl Iterator<Item = &str> {
    items.iter().filter_map(Value::as_str)
}

/// `(significant digits / 2, rounded up) + 1`: leading and trailing zeroes, the sign, the
/// decimal point and an exponent are not stored as digits.
pub fn number_size(number: &str) -> u64 {
    let mantissa = number
        .trim_start_matches(['-', '+'])
        .split(['e', 'E'])
        .next()
        .unwrap_or_default();
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len();
    (significant.max(1) as u64).div_ceil(2) + 1
}

/// The decoded length of base64 text (how binary values travel in DynamoDB's JSON).
fn base64_len(text: &str) -> u64 {
    let padding = text.bytes().rev().take_while(|b| *b == b'=').count();
    ((text.len() / 4 * 3).saturating_sub(padding)) as u64
}

/// Write request units for a write touching `bytes` (at least 1).
pub fn write_units(bytes: u64) -> u64 {
    bytes.div_ceil(WRITE_UNIT_BYTES).max(1)
}

/// Read request units for reading `bytes` (at least one unit); an eventually consistent
/// read costs half.
pub fn read_units(bytes: u64, consistent: bool) -> f64 {
    let units = bytes.div_ceil(READ_UNIT_BYTES).max(1) as f64;
    if consistent { units } else { units / 2.0 }
}

/// A global secondary index as far as its write costs go.
impl IndexSpec {
    /// The item's entry in this index, if it has one: its projected attributes (the index
    /// keys and the table's keys always).
    pub fn entry(
        &self,
        item: &Map<String, Value>,
        table_keys: &[String],
    ) -> Option<Map<String, Value>> {
        if !self.keys.iter().all(|k| item.contains_key(k)) {
            return None;
        }
        let projected = |name: &str| {
            table_keys.iter().any(|k| k == name)
                || self.keys.iter().any(|k| k == name)
                || match &self.projection {
                    Projection::All => true,
                    Projection::KeysOnly => false,
                    Projection::Include(names) => names.iter().any(|n| n == name),
                }
        };
        Some(
            item.iter()
                .filter(|(name, _)| projected(name))
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
        )
    }

    /// Write units the index costs for a table write that turned `before` into `after`
    /// (`None`: no item). Entering or leaving the index is one write of that entry; a
    /// changed index key is a delete plus a put; changed projected attributes one write.
    pub fn write_units(
        &self,
        before: Option<&Map<String, Value>>,
        after: Option<&Map<String, Value>>,
        table_keys: &[String],
    ) -> u64 {
        let old = before.and_then(|item| self.entry(item, table_keys));
        let new = after.and_then(|item| self.entry(item, table_keys));
        match (old, new) {
            (None, None) => 0,
            (Some(entry), None) | (None, Some(entry)) => write_units(item_size(&entry)),
            (Some(old), Some(new)) => {
                let key_changed = self.keys.iter().any(|k| old.get(k) != new.get(k));
                if key_changed {
                    write_units(item_size(&old)) + write_units(item_size(&new))
                } else if old != new {
                    write_units(item_size(&old).max(item_size(&new)))
                } else {
                    0
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    #[test]
    fn strings_count_utf8_bytes_and_names_count_too() {
        assert_eq!(item_size(&item(json!({"pk": {"S": "pred#ab"}}))), 2 + 7);
        assert_eq!(item_size(&item(json!({"é": {"S": "ü€"}}))), 2 + 5);
    }

    #[test]
    fn numbers_count_significant_digits() {
        assert_eq!(number_size("0"), 2);
        assert_eq!(number_size("7"), 2);
        assert_eq!(number_size("12"), 2);
        assert_eq!(number_size("123"), 3);
        assert_eq!(number_size("-123.4500"), 4);
        // Trailing zeroes of an integer are not digits either.
        assert_eq!(number_size("1718000000000"), 3);
        assert_eq!(number_size("1718012345678"), 8);
        assert_eq!(number_size("1.5e300"), 2);
    }

    #[test]
    fn other_types() {
        assert_eq!(value_size(&json!({"BOOL": true})), 1);
        assert_eq!(value_size(&json!({"NULL": true})), 1);
        assert_eq!(value_size(&json!({"B": "aGVsbG8="})), 5);
        assert_eq!(value_size(&json!({"SS": ["ab", "c"]})), 3);
        assert_eq!(
            value_size(&json!({"L": [{"S": "ab"}, {"N": "5"}]})),
            3 + 2 + 2
        );
        assert_eq!(value_size(&json!({"M": {"k": {"S": "v"}}})), 3 + 1 + 1);
        assert_eq!(value_size(&json!({"M": {}})), 3);
    }

    #[test]
    fn capacity_units_round_up_with_a_minimum() {
        assert_eq!(write_units(0), 1);
        assert_eq!(write_units(1024), 1);
        assert_eq!(write_units(1025), 2);
        assert_eq!(read_units(0, true), 1.0);
        assert_eq!(read_units(4096, true), 1.0);
        assert_eq!(read_units(4097, true), 2.0);
        assert_eq!(read_units(100, false), 0.5);
        assert_eq!(read_units(5000, false), 1.0);
    }

    fn open_index() -> IndexSpec {
        IndexSpec {
            name: "open-index".into(),
            keys: vec!["open_shard".into(), "created_at".into()],
            projection: Projection::All,
        }
    }

    #[test]
    fn sparse_index_writes() {
        let index = open_index();
        let pk = ["pk".to_owned()];
        let claim = item(json!({"pk": {"S": "cache#k"}, "token": {"S": "t"}}));
        let running = item(json!({"pk": {"S": "pred#1"}, "open_shard": {"S": "open#1"},
            "created_at": {"N": "5"}, "status": {"S": "starting"}}));
        let processing = item(json!({"pk": {"S": "pred#1"}, "open_shard": {"S": "open#1"},
            "created_at": {"N": "5"}, "status": {"S": "processing"}}));
        let done = item(json!({"pk": {"S": "pred#1"}, "created_at": {"N": "5"},
            "status": {"S": "succeeded"}}));
        assert_eq!(index.write_units(None, Some(&claim), &pk), 0);
        assert_eq!(index.write_units(None, Some(&running), &pk), 1);
        assert_eq!(index.write_units(Some(&running), Some(&processing), &pk), 1);
        assert_eq!(index.write_units(Some(&running), Some(&running), &pk), 0);
        assert_eq!(index.write_units(Some(&processing), Some(&done), &pk), 1);
        assert_eq!(index.write_units(Some(&done), Some(&done), &pk), 0);
        let moved = item(json!({"pk": {"S": "pred#1"}, "open_shard": {"S": "open#2"},
            "created_at": {"N": "5"}, "status": {"S": "starting"}}));
        assert_eq!(index.write_units(Some(&running), Some(&moved), &pk), 2);
    }

    #[test]
    fn keys_only_projection_ignores_other_attributes() {
        let index = IndexSpec {
            projection: Projection::KeysOnly,
            ..open_index()
        };
        let pk = ["pk".to_owned()];
        let running = item(json!({"pk": {"S": "pred#1"}, "open_shard": {"S": "s"},
            "created_at": {"N": "5"}, "status": {"S": "starting"}}));
        let processing = item(json!({"pk": {"S": "pred#1"}, "open_shard": {"S": "s"},
            "created_at": {"N": "5"}, "status": {"S": "processing"}}));
        assert_eq!(index.write_units(Some(&running), Some(&processing), &pk), 0);
        let entry = index.entry(&running, &pk).unwrap();
        assert_eq!(entry.len(), 3);
    }
}
