//! The bounded submit-body parser, on bodies a client would never send.

use super::*;
use serde_json::json;

fn invalid(body: &[u8]) -> InputErrors {
    match parse_submit_body(body) {
        Err(ApiError::InvalidInput(errors)) => errors,
        other => panic!("{other:?}"),
    }
}

fn fields(errors: &InputErrors) -> Vec<&str> {
    errors.listed().iter().map(|e| e.field.as_str()).collect()
}

fn rendered(err: ApiError) -> (usize, Value) {
    let response = err.into_response();
    assert_eq!(response.status(), 422);
    let bytes = response.body().as_ref();
    (bytes.len(), serde_json::from_slice(bytes).unwrap())
}

#[test]
fn body_shape_errors_are_per_field() {
    let errors = invalid(br#"{"model": 3, "inputs": {}}"#);
    assert_eq!(fields(&errors), vec!["model", "input", "inputs"]);
    assert_eq!(errors.total(), 3);
    let errors = invalid(br#"{"model": " ", "input": [1]}"#);
    assert_eq!(
        errors.listed()[1].message,
        "must be a JSON object",
        "{errors:?}"
    );
    let errors = invalid(br#"{"input": null, "model": {"a": [1]}}"#);
    assert_eq!(fields(&errors), vec!["model", "input"]);
    let errors = invalid(br#"{}"#);
    assert_eq!(
        errors.to_string(),
        "invalid input: model: is required; input: is required"
    );
    for bad in [
        &b"{\"model\": "[..],
        b"[1,2]",
        b"",
        b"\"model\"",
        b"null",
        b"{} {}",
        b"{\"model\": \"sdxl\", \"input\": {}} x",
        b"{\"model\": \"sdxl\", \"input\": {\"a\": [1,}}",
    ] {
        assert!(
            matches!(parse_submit_body(bad), Err(ApiError::BadRequest(_))),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
    assert!(matches!(
        parse_submit_body(&vec![b' '; MAX_BODY_BYTES + 1]),
        Err(ApiError::PayloadTooLarge { .. })
    ));
}

#[test]
fn a_valid_body_keeps_model_and_scalar_input() {
    let body = parse_submit_body(
        br#"{"model":"sdxl","input":{"prompt":"a \"cat\"","seed":-1,"n":2,"g":7.5,"x":true,"y":null,"z":[1],"o":{"a":1}}}"#,
    )
    .unwrap();
    assert_eq!(body.model, "sdxl");
    assert_eq!(
        body.input,
        json!({"prompt": "a \"cat\"", "seed": -1, "n": 2, "g": 7.5, "x": true, "y": null,
               "z": [], "o": {}})
    );
}

#[test]
fn the_same_body_hashes_the_same_whatever_its_formatting() {
    let parse = |b: &[u8]| parse_submit_body(b).unwrap();
    let a = parse(br#"{"model":"sdxl","input":{"prompt":"x","seed":1}}"#);
    let b = parse(b"{ \"input\": {\"seed\": 1, \"prompt\": \"\\u0078\"},\n \"model\": \"sdxl\" }");
    let c = parse(br#"{"model":"sdxl","input":{"prompt":"y","seed":1}}"#);
    let d = parse(br#"{"model":"sdxl-img2img","input":{"prompt":"x","seed":1}}"#);
    assert_eq!(a.hash, b.hash);
    assert_ne!(a.hash, c.hash);
    assert_ne!(a.hash, d.hash);
    // The hash of the whole canonical body, as before bodies were read field by field.
    let whole = json!({"model": "sdxl", "input": {"prompt": "x", "seed": 1}});
    assert_eq!(
        a.hash,
        hex(&Sha256::digest(canonical_json(&whole).as_bytes()))
    );
}

#[test]
fn repeated_keys_mean_the_last_one() {
    let body =
        parse_submit_body(br#"{"model":"x","input":{"seed":1,"seed":2},"model":"sdxl"}"#).unwrap();
    assert_eq!(
        (body.model.as_str(), &body.input),
        ("sdxl", &json!({"seed": 2}))
    );
    let errors = invalid(br#"{"model":"sdxl","model":3,"input":{}}"#);
    assert_eq!(fields(&errors), vec!["model"]);
}

fn unknown_keys_body(n: usize) -> Vec<u8> {
    let mut body = br#"{"model": "sdxl", "input": {"prompt": "x"}"#.to_vec();
    for i in 0..n {
        body.extend_from_slice(format!(r#","k{i}":0"#).as_bytes());
    }
    body.push(b'}');
    body
}

#[test]
fn half_a_million_unknown_keys_get_a_small_422() {
    let body = unknown_keys_body(500_000);
    assert!(
        body.len() > 5_000_000 && body.len() <= MAX_BODY_BYTES,
        "{}",
        body.len()
    );
    let errors = invalid(&body);
    assert_eq!(errors.total(), 500_000);
    assert_eq!(errors.listed().len(), InputErrors::MAX_LISTED);
    assert_eq!(fields(&errors)[..2], ["k0", "k1"]);
    let (size, problem) = rendered(ApiError::InvalidInput(errors));
    assert!(size < 64 * 1024, "{size} bytes");
    assert_eq!(
        problem["detail"],
        "the request has 500000 invalid fields; the first 20 are listed"
    );
    assert_eq!(problem["errors"].as_array().unwrap().len(), 20);
}

#[test]
fn model_and_input_errors_are_listed_before_unknown_keys() {
    let mut body = b"{".to_vec();
    for i in 0..100 {
        body.extend_from_slice(format!(r#""k{i}": [[{{}}]], "#).as_bytes());
    }
    body.extend_from_slice(br#""input": 1}"#);
    let errors = invalid(&body);
    assert_eq!(errors.total(), 102);
    assert_eq!(fields(&errors)[..3], ["model", "input", "k0"]);
    assert_eq!(fields(&errors)[19], "k17");
}

#[test]
fn long_and_unprintable_unknown_keys_are_cut() {
    let key = format!("{}{}", "\\u0007\\n".repeat(10), "é".repeat(300_000));
    let body = format!(r#"{{"model": "sdxl", "input": {{}}, "{key}": 1}}"#);
    let errors = invalid(body.as_bytes());
    let field = &errors.listed()[0].field;
    assert_eq!(
        *field,
        format!("{}…", "é".repeat(InputErrors::MAX_FIELD_CHARS))
    );
    let short = invalid(br#"{"model": "sdxl", "input": {}, "a\tb": 1}"#);
    assert_eq!(short.listed()[0].field, "ab");
}

#[test]
fn an_input_of_half_a_million_fields_is_one_error() {
    let mut body = br#"{"model": "sdxl", "input": {"prompt": "x""#.to_vec();
    for i in 0..500_000 {
        body.extend_from_slice(format!(r#","{i}":[]"#).as_bytes());
    }
    body.extend_from_slice(b"}}");
    assert!(body.len() <= MAX_BODY_BYTES, "{}", body.len());
    let errors = invalid(&body);
    assert_eq!(errors.total(), 1);
    assert_eq!(
        errors.listed()[0],
        crate::domain::input_errors::FieldError {
            field: "input".into(),
            message: "has 500001 fields; no model takes more than 64".into()
        }
    );
    let (size, _) = rendered(ApiError::InvalidInput(errors));
    assert!(size < 1024, "{size} bytes");
}

#[test]
fn an_input_of_exactly_the_limit_is_read_whole() {
    let body_of = |fields: &str| format!(r#"{{"model": "sdxl", "input": {{{fields}}}}}"#);
    let limit: Vec<String> = (0..MAX_INPUT_FIELDS)
        .map(|i| format!(r#""f{i}": {i}"#))
        .collect();
    let parsed = parse_submit_body(body_of(&limit.join(",")).as_bytes()).unwrap();
    assert_eq!(parsed.input.as_object().unwrap().len(), MAX_INPUT_FIELDS);
    assert_eq!(parsed.input["f63"], 63);
    // Once full, a key already held is still the same field (the last value counts).
    let again = format!(r#"{}, "f0": "again""#, limit.join(","));
    let parsed = parse_submit_body(body_of(&again).as_bytes()).unwrap();
    assert_eq!(parsed.input["f0"], "again");
    let over = format!(r#"{}, "extra": 1"#, limit.join(","));
    assert_eq!(
        invalid(body_of(&over).as_bytes()).listed()[0].message,
        "has 65 fields; no model takes more than 64"
    );
}

#[test]
fn a_megabyte_nested_array_as_prompt_is_a_small_type_error() {
    // Wide and deep: far past serde_json's recursion limit of 128.
    let mut nested = String::new();
    while nested.len() < 1024 * 1024 {
        nested.push_str("[[1, \"two\", {\"three\": [3]}]], ");
    }
    let prompt = format!("{}[{nested}[]]{}", "[".repeat(50_000), "]".repeat(50_000));
    let body = format!(r#"{{"model": "flux-schnell", "input": {{"prompt": {prompt}}}}}"#);
    let parsed = parse_submit_body(body.as_bytes()).unwrap();
    assert_eq!(parsed.input, json!({"prompt": []}));
    let registry = crate::domain::registry::ModelRegistry::shipped().unwrap();
    let alias = registry.resolve(&parsed.model).unwrap();
    let errors = alias.validate(&parsed.input).unwrap_err();
    assert_eq!(fields(&errors), vec!["input.prompt"]);
    assert_eq!(errors.listed()[0].message, "must be a string");
    let (size, _) = rendered(errors.into());
    assert!(size < 1024, "{size} bytes");
}
