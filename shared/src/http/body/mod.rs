//! Reading a submit body (`{"model", "input"}`) in memory bounded by the body's size,
//! whatever the body holds: half a million unknown keys, a huge `input`, or deeply nested
//! arrays in place of a prompt. Nothing builds a `serde_json::Value` of the whole body:
//! unknown keys and the contents of nested values are skipped as they are read, and at most
//! [`InputErrors::MAX_LISTED`] errors are kept (all are counted).
//!

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use super::MAX_BODY_BYTES;
use crate::app::{ApiError, SubmitBody};
use crate::domain::callbacks::CallbackEvent;
use crate::domain::digest::hex;
use crate::domain::input_errors::InputErrors;
use crate::domain::registry::canonical_json;

/// Most fields an `input` may have; no model takes more.
pub const MAX_INPUT_FIELDS: usize = 64;

const UNKNOWN_FIELD: &str = "is not a field of this request (expected `model`, `input`, `webhook` and `webhook_events_filter`)";
/// Most entries `webhook_events_filter` may list (there are two events).
const MAX_EVENTS: usize = 8;

/// Parses a submit body: 413 over [`MAX_BODY_BYTES`], 400 unless it is a JSON object, 422
/// with per-field errors for a wrong or missing `model` or `input`, an `input` of more than
/// [`MAX_INPUT_FIELDS`] fields, or any other top-level key.
pub fn parse_submit_body(bytes: &[u8]) -> Result<SubmitBody, ApiError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let top = json
        .deserialize_any(TopVisitor)
        .and_then(|top| json.end().map(|()| top))
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    let Some(top) = top else {
        return Err(ApiError::BadRequest(
            "request body must be a JSON object".to_owned(),
        ));
    };

    let mut errors = InputErrors::new();
    let model = match top.model {
        Some(Value::String(m)) if !m.trim().is_empty() => Some(m),
        Some(_) => {
            errors.push("model", "must be a non-empty string naming a model");
            None
        }
        None => {
            errors.push("model", "is required");
            None
        }
    };
    let input = match top.input {
        Some(Input::Object { fields, dropped: 0 }) => Some(Value::Object(fields)),
        Some(Input::Object { fields, dropped }) => {
            let count = fields.len().saturating_add(dropped);
            errors.push(
                "input",
                format!("has {count} fields; no model takes more than {MAX_INPUT_FIELDS}"),
            );
            None
        }
        Some(Input::NotObject) => {
            errors.push("input", "must be a JSON object");
            None
        }
        None => {
            errors.push("input", "is required");
            None
        }
    };
    let webhook = match top.webhook {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) => Some(url),
        Some(_) => {
            errors.push("webhook", "must be an https URL string");
            None
        }
    };
    let events = events_filter(top.events, webhook.is_some(), &mut errors);
    for name in &top.unknown_names {
        errors.push(name, UNKNOWN_FIELD);
    }
    errors.add_unlisted(top.unknown_count - top.unknown_names.len());

    match (model, input) {
        (Some(model), Some(input)) if errors.is_empty() => {
            // The input is moved in and back out, not copied. The callback fields join the
            // hash only when given, so bodies without them hash as they always did.
            let mut body = serde_json::json!({"model": model.as_str(), "input": input});
            if let Some(url) = &webhook {
                body["webhook"] = Value::String(url.clone());
                body["webhook_events_filter"] =
                    events.iter().map(|e| Value::from(e.as_str())).collect();
            }
            let hash = hex(&Sha256::digest(canonical_json(&body).as_bytes()));
            let input = body["input"].take();
            Ok(SubmitBody {
                model,
                input,
                callback_url: webhook,
                callback_events: events,
                hash,
            })
        }
        _ => Err(ApiError::InvalidInput(errors)),
    }
}

/// `webhook_events_filter`: a non-empty list of `start` and `completed` (repeats dropped,
/// in a fixed order), only with a `webhook`. Unset: `[completed]`.
fn events_filter(
    given: Option<Events>,
    has_webhook: bool,
    errors: &mut InputErrors,
) -> Vec<CallbackEvent> {
    const FIELD: &str = "webhook_events_filter";
    let default = vec![CallbackEvent::Completed];
    let listed = match given {
        None | Some(Events::Null) => return default,
        Some(Events::List(values)) => values,
        Some(Events::TooMany) => {
            errors.push(FIELD, format!("must list at most {MAX_EVENTS} events"));
            return default;
        }
        Some(Events::NotList) => {
            errors.push(FIELD, "must be a list of \"start\" and \"completed\"");
            return default;
        }
    };
    if !has_webhook {
        errors.push(FIELD, "is only allowed together with `webhook`");
        return default;
    }
    let mut events: Vec<CallbackEvent> = Vec::new();
    for value in &listed {
        match value.as_str().and_then(CallbackEvent::parse) {
            Some(event) => events.push(event),
            None => {
                errors.push(FIELD, "may only list \"start\" and \"completed\"");
                return default;
            }
        }
    }
    events.sort_unstable();
    events.dedup();
    if events.is_empty() {
        errors.push(FIELD, "must list at least one event");
        return default;
    }
    events
}

/// `webhook_events_filter` as read: at most `MAX_EVENTS` scalar entries are kept.
enum Events {
    Null,
    List(Vec<Value>),
    TooMany,
    NotList,
}

impl<'de> de::Deserialize<'de> for Events {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(EventsVisitor)
    }
}

struct EventsVisitor;

impl<'de> Visitor<'de> for EventsVisitor {
    type Value = Events;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Events, A::Error> {
        let mut values = Vec::new();
        while let Some(Shallow(value)) = seq.next_element::<Shallow>()? {
            if values.len() == MAX_EVENTS {
                skip_seq(seq)?;
                return Ok(Events::TooMany);
            }
            values.push(value);
        }
        Ok(Events::List(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Events, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Events::NotList)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Events, E> {
        Ok(Events::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Events, E> {
        Ok(Events::NotList)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Events, E> {
        Ok(Events::NotList)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Events, E> {
        Ok(Events::NotList)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Events, E> {
        Ok(Events::NotList)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Events, E> {
        Ok(Events::NotList)
    }
}

/// The top level of a body that is an object.
struct Top {
    model: Option<Value>,
    input: Option<Input>,
    webhook: Option<Value>,
    events: Option<Events>,
    /// The first unknown keys (cleaned and cut short), at most `InputErrors::MAX_LISTED`.
    unknown_names: Vec<String>,
    unknown_count: usize,
}

enum Input {
    Object {
        fields: Map<String, Value>,
        /// Keys skipped because `fields` was full.
        dropped: usize,
    },
    NotObject,
}

/// `Some(Top)` for an object, `None` for any other JSON value (read to its end).
struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Option<Top>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut top = Top {
            model: None,
            input: None,
            webhook: None,
            events: None,
            unknown_names: Vec::new(),
            unknown_count: 0,
        };
        let max_names = InputErrors::MAX_LISTED;
        while let Some(key) = map.next_key_seed(TopKeySeed {
            keep_name: top.unknown_names.len() < max_names,
        })? {
            // A repeated key: the last one counts, as in `serde_json::Value`.
            match key {
                TopKey::Model => top.model = Some(map.next_value::<Shallow>()?.0),
                TopKey::Input => top.input = Some(map.next_value::<Input>()?),
                TopKey::Webhook => top.webhook = Some(map.next_value::<Shallow>()?.0),
                TopKey::Events => top.events = Some(map.next_value::<Events>()?),
                TopKey::Other(name) => {
                    map.next_value::<IgnoredAny>()?;
                    top.unknown_count += 1;
                    top.unknown_names.extend(name);
                }
            }
        }
        Ok(Some(top))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        skip_seq(seq).map(|()| None)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

enum TopKey {
    Model,
    Input,
    Webhook,
    Events,
    /// An unknown key: its name if still worth keeping for the error list.
    Other(Option<String>),
}

struct TopKeySeed {
    keep_name: bool,
}

impl<'de> DeserializeSeed<'de> for TopKeySeed {
    type Value = TopKey;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<TopKey, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for TopKeySeed {
    type Value = TopKey;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<TopKey, E> {
        Ok(match key {
            "model" => TopKey::Model,
            "input" => TopKey::Input,
            "webhook" => TopKey::Webhook,
            "webhook_events_filter" => TopKey::Events,
            // Cut here rather than when listed, so a megabyte-long key is never copied.
            // One character over the limit lets the list mark the name as cut.
            other => TopKey::Other(self.keep_name.then(|| {
                other
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(InputErrors::MAX_FIELD_CHARS + 1)
                    .collect()
            })),
        })
    }
}

impl<'de> de::Deserialize<'de> for Input {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(InputVisitor)
    }
}

struct InputVisitor;

impl<'de> Visitor<'de> for InputVisitor {
    type Value = Input;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Input, A::Error> {
        let mut fields = Map::new();
        let mut dropped = 0usize;
        while let Some(key) = map.next_key_seed(InputKeySeed { fields: &fields })? {
            match key {
                Some(key) => {
                    let value = map.next_value::<Shallow>()?.0;
                    fields.insert(key, value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                    dropped += 1;
                }
            }
        }
        Ok(Input::Object { fields, dropped })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Input, A::Error> {
        skip_seq(seq).map(|()| Input::NotObject)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Input, E> {
        Ok(Input::NotObject)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Input, E> {
        Ok(Input::NotObject)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Input, E> {
        Ok(Input::NotObject)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Input, E> {
        Ok(Input::NotObject)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Input, E> {
        Ok(Input::NotObject)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Input, E> {
        Ok(Input::NotObject)
    }
}

/// An `input` key, kept while `fields` has room (or already holds it: the last of repeated
/// keys counts); `None` once full, without copying the key.
struct InputKeySeed<'a> {
    fields: &'a Map<String, Value>,
}

impl<'de> DeserializeSeed<'de> for InputKeySeed<'_> {
    type Value = Option<String>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl Visitor<'_> for InputKeySeed<'_> {
    type Value = Option<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        let keep = self.fields.len() < MAX_INPUT_FIELDS || self.fields.contains_key(key);
        Ok(keep.then(|| key.to_owned()))
    }
}

/// A value whose scalars are kept and whose arrays and objects are skipped (in memory
/// independent of their size and depth) and stand as an empty one of their kind.
struct Shallow(Value);

impl<'de> de::Deserialize<'de> for Shallow {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ShallowVisitor)
    }
}

struct ShallowVisitor;

impl<'de> Visitor<'de> for ShallowVisitor {
    type Value = Shallow;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Shallow, E> {
        Ok(Shallow(Value::Bool(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Shallow, E> {
        Ok(Shallow(Value::from(v)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Shallow, E> {
        Ok(Shallow(Value::from(v)))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Shallow, E> {
        // As `serde_json::Value` does (JSON text cannot hold a non-finite number anyway).
        Ok(Shallow(
            Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Shallow, E> {
        Ok(Shallow(Value::String(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Shallow, E> {
        Ok(Shallow(Value::String(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shallow, E> {
        Ok(Shallow(Value::Null))
    }

    fn visit_none<E: de::Error>(self) -> Result<Shallow, E> {
        Ok(Shallow(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Shallow, A::Error> {
        skip_seq(seq).map(|()| Shallow(Value::Array(Vec::new())))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shallow, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Shallow(Value::Object(Map::new())))
    }
}

/// Reads a sequence to its end, keeping nothing. `serde_json` skips nested values without
/// recursion, in one byte of memory per level of nesting.
fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

#[cfg(test)]
mod tests;
