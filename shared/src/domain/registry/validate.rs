//! Checking a request's `input` against an alias's field specs, before anything is sent to
//! Replicate (failed predictions still cost GPU time).

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Number, Value};

use super::spec::{DEFAULT_MAX_INLINE_IMAGE_BYTES, FieldSpec, Rule};
use crate::domain::input_errors::InputErrors;
use crate::domain::numbers::as_integer;

/// Longest http(s) image URL accepted.
const MAX_IMAGE_URL_LEN: usize = 4096;

/// An input that passed validation: known fields only, values normalised (integers as
/// integers, numbers as floats), defaults applied. This is exactly what is sent to Replicate.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedInput(Map<String, Value>);

impl ValidatedInput {
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }

    pub fn into_map(self) -> Map<String, Value> {
        self.0
    }
}

pub(super) fn validate(
    inputs: &BTreeMap<String, FieldSpec>,
    rules: &[Rule],
    raw: &Value,
) -> Result<ValidatedInput, InputErrors> {
    let mut errors = InputErrors::new();
    let Some(given) = raw.as_object() else {
        errors.push("input", "must be a JSON object");
        return Err(errors);
    };
    let mut out = Map::new();
    // Built once, and only if some field is unknown.
    let mut unknown_message = None;

    for (name, value) in given {
        if value.is_null() {
            continue; // an explicit null means "not given"
        }
        match inputs.get(name) {
            None => {
                let message = unknown_message.get_or_insert_with(|| unknown_field_message(inputs));
                errors.push(input_field(name), message.as_str());
            }
            Some(spec) => match check_value(spec, value) {
                Ok(normalised) => {
                    out.insert(name.clone(), normalised);
                }
                Err(message) => errors.push(input_field(name), message),
            },
        }
    }
    for (name, spec) in inputs {
        let given = given.get(name).is_some_and(|v| !v.is_null());
        if given {
            continue;
        }
        if spec.is_required() {
            errors.push(input_field(name), "is required");
        } else if let Some(default) = default_value(spec) {
            out.insert(name.clone(), default);
        }
    }
    for rule in rules {
        check_rule(rule, given, &out, &mut errors);
    }

    if errors.is_empty() {
        Ok(ValidatedInput(out))
    } else {
        Err(errors)
    }
}

/// `input.<name>`, formatted only if the error is kept.
fn input_field(name: &str) -> InputField<'_> {
    InputField(name)
}

struct InputField<'a>(&'a str);

impl fmt::Display for InputField<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "input.{}", self.0)
    }
}

fn unknown_field_message(inputs: &BTreeMap<String, FieldSpec>) -> String {
    let known: Vec<&str> = inputs.keys().map(String::as_str).collect();
    format!(
        "is not an input of this model (known: {})",
        known.join(", ")
    )
}

fn check_rule(
    rule: &Rule,
    given: &Map<String, Value>,
    out: &Map<String, Value>,
    errors: &mut InputErrors,
) {
    let is_given = |f: &str| given.get(f).is_some_and(|v| !v.is_null());
    match rule {
        Rule::Requires { field, requires } => {
            if is_given(field) && !out.contains_key(requires) {
                errors.push(
                    input_field(field),
                    format!("needs `{requires}` to be given too"),
                );
            }
        }
        Rule::OnlyWhen {
            fields,
            field,
            equals,
        } => {
            let holds = out.get(field).and_then(Value::as_str) == Some(equals.as_str());
            for f in fields.iter().filter(|f| is_given(f)) {
                if !holds {
                    errors.push(
                        input_field(f),
                        format!("is only used when `{field}` is \"{equals}\""),
                    );
                }
            }
        }
    }
}

fn default_value(spec: &FieldSpec) -> Option<Value> {
    match spec {
        FieldSpec::String { default, .. } | FieldSpec::Enum { default, .. } => {
            default.clone().map(Value::String)
        }
        FieldSpec::Integer { default, .. } => default.map(Value::from),
        FieldSpec::Number { default, .. } => default.and_then(Number::from_f64).map(Value::Number),
        FieldSpec::Boolean { default, .. } => default.map(Value::Bool),
        FieldSpec::Image { .. } => None,
    }
}

/// Checks one value against its spec and returns its normalised form, or why it is wrong.
pub(super) fn check_value(spec: &FieldSpec, value: &Value) -> Result<Value, String> {
    match spec {
        FieldSpec::String {
            min_length,
            max_length,
            ..
        } => {
            let s = value.as_str().ok_or("must be a string")?;
            let length = s.chars().count();
            let min = min_length.unwrap_or(0);
            if length < min || (min > 0 && s.trim().is_empty()) {
                return Err(match min {
                    1 => "must not be empty".to_owned(),
                    _ => format!("must be at least {min} characters"),
                });
            }
            if length > *max_length {
                return Err(format!(
                    "must be at most {max_length} characters (got {length})"
                ));
            }
            Ok(value.clone())
        }
        FieldSpec::Integer {
            min,
            max,
            multiple_of,
            ..
        } => {
            let n = as_integer(value).ok_or("must be an integer")?;
            check_range(n, *min, *max)?;
            if let Some(step) = multiple_of.filter(|step| *step > 0)
                && n % step != 0
            {
                return Err(format!("must be a multiple of {step}"));
            }
            Ok(Value::from(n))
        }
        FieldSpec::Number { min, max, .. } => {
            let x = value
                .as_f64()
                .filter(|x| x.is_finite())
                .ok_or("must be a number")?;
            check_range(x, *min, *max)?;
            Number::from_f64(x)
                .map(Value::Number)
                .ok_or_else(|| "must be a number".to_owned())
        }
        FieldSpec::Boolean { .. } => value
            .as_bool()
            .map(Value::Bool)
            .ok_or_else(|| "must be true or false".to_owned()),
        FieldSpec::Enum { values, .. } => {
            let s = value.as_str();
            match s.filter(|s| values.iter().any(|v| v == s)) {
                Some(_) => Ok(value.clone()),
                None => Err(format!("must be one of {}", quoted_list(values))),
            }
        }
        FieldSpec::Image {
            max_inline_bytes, ..
        } => {
            let s = value
                .as_str()
                .ok_or("must be an http(s) URL, a data URL or an upload:// reference string")?;
            if let Some(reference) = crate::domain::uploads::UploadId::from_reference(s) {
                // Whether the upload exists and is the caller's is submit's to check.
                return reference.map(|_| value.clone()).map_err(|e| e.to_string());
            }
            check_image(
                s,
                max_inline_bytes.unwrap_or(DEFAULT_MAX_INLINE_IMAGE_BYTES),
            )?;
            Ok(value.clone())
        }
    }
}

fn check_range<T: PartialOrd + fmt::Display + Copy>(
    n: T,
    min: Option<T>,
    max: Option<T>,
) -> Result<(), String> {
    match (min, max) {
        (Some(lo), Some(hi)) if n < lo || n > hi => Err(format!("must be between {lo} and {hi}")),
        (Some(lo), None) if n < lo => Err(format!("must be at least {lo}")),
        (None, Some(hi)) if n > hi => Err(format!("must be at most {hi}")),
        _ => Ok(()),
    }
}

fn quoted_list(values: &[String]) -> String {
    values
        .iter()
        .map(|v| format!("\"{v}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

fn check_image(s: &str, max_inline_bytes: usize) -> Result<(), String> {
    if let Some(rest) = strip_prefix_ignore_case(s, "data:") {
        return check_data_url(rest, max_inline_bytes);
    }
    if s.len() > MAX_IMAGE_URL_LEN {
        return Err(format!(
            "URL must be at most {MAX_IMAGE_URL_LEN} characters"
        ));
    }
    let url = url::Url::parse(s).map_err(|_| "must be an http(s) URL or a data URL".to_owned())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("must be an http(s) URL or a data URL".to_owned());
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("URL must have a host".to_owned());
    }
    Ok(())
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// `data:image/<type>;base64,<payload>`, at most `max_bytes` once decoded. The encoded
/// length is checked first so an oversized payload is refused without decoding it.
fn check_data_url(rest: &str, max_bytes: usize) -> Result<(), String> {
    let (meta, payload) = rest
        .split_once(',')
        .ok_or("data URL has no `,` before its data")?;
    let mut params = meta.split(';');
    let media_type = params
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if !media_type.starts_with("image/") || media_type.len() <= "image/".len() {
        return Err(
            "data URL must have an image media type (e.g. data:image/png;base64,...)".to_owned(),
        );
    }
    if !params.any(|p| p.trim().eq_ignore_ascii_case("base64")) {
        return Err("data URL must be base64-encoded (;base64,)".to_owned());
    }
    let limit = human_bytes(max_bytes);
    if payload.len() > max_bytes.div_ceil(3) * 4 {
        return Err(format!(
            "inline image must be at most {limit} decoded; pass a URL instead"
        ));
    }
    let decoded = BASE64
        .decode(payload)
        .map_err(|_| "data URL payload is not valid base64".to_owned())?;
    if decoded.is_empty() {
        return Err("data URL has no data".to_owned());
    }
    if decoded.len() > max_bytes {
        return Err(format!(
            "inline image must be at most {limit} decoded; pass a URL instead"
        ));
    }
    Ok(())
}

fn human_bytes(n: usize) -> String {
    if n >= 1024 * 1024 && n.is_multiple_of(1024 * 1024) {
        format!("{} MB", n / (1024 * 1024))
    } else if n >= 1024 && n.is_multiple_of(1024) {
        format!("{} KB", n / 1024)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::input_errors::FieldError;
    use serde_json::json;

    fn image(required: bool) -> FieldSpec {
        FieldSpec::Image {
            required,
            max_inline_bytes: Some(30),
            max_pixels: None,
        }
    }

    #[test]
    fn data_urls_are_checked_for_type_encoding_and_size() {
        let spec = image(false);
        let ok = format!("data:image/png;base64,{}", BASE64.encode([7u8; 30]));
        assert!(check_value(&spec, &json!(ok)).is_ok());
        let upper = format!(
            "DATA:image/PNG;charset=x;BASE64,{}",
            BASE64.encode([7u8; 3])
        );
        assert!(check_value(&spec, &json!(upper)).is_ok());
        let too_big = format!("data:image/png;base64,{}", BASE64.encode([7u8; 31]));
        assert!(
            check_value(&spec, &json!(too_big))
                .unwrap_err()
                .contains("at most 30 bytes")
        );
        for (bad, needle) in [
            ("data:text/plain;base64,aGk=", "image media type"),
            ("data:image/png,rawbytes", "base64-encoded"),
            ("data:image/png;base64", "no `,`"),
            ("data:image/png;base64,!!!!", "not valid base64"),
            ("data:image/png;base64,", "no data"),
            ("data:image/;base64,aGk=", "image media type"),
        ] {
            let err = check_value(&spec, &json!(bad)).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }

    #[test]
    fn oversized_payload_is_refused_before_decoding() {
        // Not valid base64 at all, but too long: the size message wins, proving no decode.
        let huge = format!("data:image/png;base64,{}", "*".repeat(1000));
        assert!(
            check_value(&image(false), &json!(huge))
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn image_urls_must_be_http_with_a_host() {
        let spec = image(true);
        assert!(check_value(&spec, &json!("https://example.com/cat.png")).is_ok());
        assert!(check_value(&spec, &json!("http://127.0.0.1:9000/x.jpg")).is_ok());
        for bad in [
            json!("ftp://example.com/x.png"),
            json!("file:///etc/passwd"),
            json!("not a url"),
            json!(42),
            json!("https://"),
        ] {
            assert!(check_value(&spec, &bad).is_err(), "{bad}");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_IMAGE_URL_LEN));
        assert!(
            check_value(&spec, &json!(long))
                .unwrap_err()
                .contains("at most")
        );
    }

    #[test]
    fn integers_accept_whole_floats_and_reject_fractions() {
        let spec = FieldSpec::Integer {
            required: false,
            min: Some(1),
            max: Some(4),
            multiple_of: None,
            default: None,
        };
        assert_eq!(check_value(&spec, &json!(4.0)), Ok(json!(4)));
        assert_eq!(check_value(&spec, &json!(2)), Ok(json!(2)));
        assert_eq!(
            check_value(&spec, &json!(2.5)),
            Err("must be an integer".to_owned())
        );
        assert_eq!(
            check_value(&spec, &json!("2")),
            Err("must be an integer".to_owned())
        );
        assert_eq!(
            check_value(&spec, &json!(1e300)),
            Err("must be an integer".to_owned())
        );
        assert_eq!(
            check_value(&spec, &json!(u64::MAX)),
            Err("must be an integer".to_owned())
        );
        assert_eq!(
            check_value(&spec, &json!(5)),
            Err("must be between 1 and 4".to_owned())
        );
    }

    #[test]
    fn numbers_normalise_to_floats() {
        let spec = FieldSpec::Number {
            required: false,
            min: Some(0.0),
            max: Some(1.0),
            default: None,
        };
        assert_eq!(check_value(&spec, &json!(1)), Ok(json!(1.0)));
        assert_eq!(
            check_value(&spec, &json!(1.0)),
            check_value(&spec, &json!(1))
        );
        assert_eq!(
            check_value(&spec, &json!(1.01)),
            Err("must be between 0 and 1".to_owned())
        );
        assert_eq!(
            check_value(&spec, &json!(true)),
            Err("must be a number".to_owned())
        );
    }

    #[test]
    fn string_lengths_count_characters_not_bytes() {
        let spec = FieldSpec::String {
            required: true,
            min_length: Some(1),
            max_length: 3,
            default: None,
        };
        assert!(check_value(&spec, &json!("猫猫猫")).is_ok());
        assert!(
            check_value(&spec, &json!("猫猫猫猫"))
                .unwrap_err()
                .contains("at most 3 characters (got 4)")
        );
        assert_eq!(
            check_value(&spec, &json!("  ")),
            Err("must not be empty".to_owned())
        );
        assert_eq!(
            check_value(&spec, &json!(["a"])),
            Err("must be a string".to_owned())
        );
    }

    #[test]
    fn input_must_be_an_object() {
        let err = validate(&BTreeMap::new(), &[], &json!(["prompt"])).unwrap_err();
        assert_eq!(
            err.listed(),
            [FieldError {
                field: "input".into(),
                message: "must be a JSON object".into()
            }]
        );
        assert_eq!(err.total(), 1);
    }

    #[test]
    fn errors_past_the_cap_are_counted_not_kept() {
        let mut inputs = BTreeMap::new();
        inputs.insert(
            "prompt".to_owned(),
            FieldSpec::String {
                required: true,
                min_length: Some(1),
                max_length: 10,
                default: None,
            },
        );
        let raw: Map<String, Value> = (0..10_000)
            .map(|i| (format!("k{i:05}"), json!(1)))
            .collect();
        let err = validate(&inputs, &[], &Value::Object(raw)).unwrap_err();
        assert_eq!(
            err.total(),
            10_001,
            "10000 unknown fields and a missing prompt"
        );
        assert_eq!(err.listed().len(), InputErrors::MAX_LISTED);
        assert_eq!(err.listed()[0].field, "input.k00000");
        assert_eq!(
            err.listed()[0].message,
            "is not an input of this model (known: prompt)"
        );
        assert_eq!(
            err.summary(),
            "the request has 10001 invalid fields; the first 20 are listed"
        );
        assert!(err.to_string().ends_with("; and 9981 more"), "{err}");
    }
}
