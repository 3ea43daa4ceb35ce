//! Hostile submit bodies of just under the 6 MB limit cost memory bounded by the body's
//! size, not by what it holds, and are answered with a small problem (at most 64 KB, Lambda
//! caps responses at 6 MB): half a million unknown keys, half a million `input` fields, a
//! prompt that is one huge nested array. Peak heap is measured with a counting allocator
//! (this test binary only) over parsing, validating and rendering the 422.

use std::time::Instant;

use imagegen_shared::app::ApiError;
use imagegen_shared::domain::input_errors::InputErrors;
use imagegen_shared::domain::registry::ModelRegistry;
use imagegen_shared::http::MAX_BODY_BYTES;
use imagegen_shared::http::body::{MAX_INPUT_FIELDS, parse_submit_body};
use integration_tests::heap;
use serde_json::Value;

const MB: usize = 1024 * 1024;
/// The contract: an error body is at most 64 KB, whatever the request.
const MAX_PROBLEM_BYTES: usize = 64 * 1024;
/// Peak heap allowed while answering one hostile body (Lambda has 256 MB).
const MAX_PEAK: usize = 64 * MB;

/// What the submit route does before it touches a store: parse, resolve, validate. The
/// error rendered as the client would get it.
fn answer(registry: &ModelRegistry, bytes: &[u8]) -> lambda_http::Response<lambda_http::Body> {
    let result = parse_submit_body(bytes).and_then(|body| {
        let alias = registry
            .resolve(&body.model)
            .map_err(|e| ApiError::UnknownModel(e.reason))?;
        alias.validate(&body.input).map_err(ApiError::from)
    });
    match result {
        Ok(_) => panic!("a hostile body was accepted"),
        Err(err) => err.into_response(),
    }
}

struct Measured {
    peak: usize,
    problem: Value,
    problem_bytes: usize,
}

/// Peak heap above the starting point (the body itself is already allocated) while
/// answering `body`, and the problem it got.
fn measure(label: &str, registry: &ModelRegistry, body: &[u8]) -> Measured {
    assert!(
        body.len() <= MAX_BODY_BYTES,
        "{label}: {} bytes",
        body.len()
    );
    let started = Instant::now();
    let baseline = heap::start();
    let response = answer(registry, body);
    let peak = heap::peak_since(baseline);
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 422, "{label}");
    let problem_bytes = response.body().as_ref().len();
    let problem: Value = serde_json::from_slice(response.body().as_ref()).unwrap();
    println!(
        "hostile-bodies: {label}: {:.1} MB body, peak heap {:.2} MB, 422 of {problem_bytes} bytes, {elapsed:.2?}",
        body.len() as f64 / MB as f64,
        peak as f64 / MB as f64,
    );
    assert!(
        peak < MAX_PEAK,
        "{label}: peaked at {peak} bytes (bound {MAX_PEAK})"
    );
    assert!(
        problem_bytes <= MAX_PROBLEM_BYTES,
        "{label}: a 422 of {problem_bytes} bytes"
    );
    let listed = problem["errors"].as_array().unwrap().len();
    assert!(
        listed <= InputErrors::MAX_LISTED,
        "{label}: {listed} errors"
    );
    Measured {
        peak,
        problem,
        problem_bytes,
    }
}

/// Grows `body` with `item(i)` for i = 0, 1, … while it stays `room` bytes under the limit.
fn fill(body: &mut Vec<u8>, room: usize, item: impl Fn(usize) -> String) -> usize {
    let mut n = 0;
    loop {
        let next = item(n);
        if body.len() + next.len() + room > MAX_BODY_BYTES {
            return n;
        }
        body.extend_from_slice(next.as_bytes());
        n += 1;
    }
}

#[test]
fn hostile_bodies_near_the_limit_cost_bounded_memory_and_get_small_422s() {
    let _alone = heap::exclusive();
    let registry = ModelRegistry::shipped().unwrap();

    // 1. Half a million unknown top-level keys: was a 107 MB 422.
    let mut body = br#"{"model": "flux-schnell", "input": {"prompt": "x"}"#.to_vec();
    let unknown = fill(&mut body, 1, |i| format!(r#","k{i}":0"#));
    body.push(b'}');
    assert!(unknown >= 500_000, "{unknown}");
    let measured = measure(
        &format!("{unknown} unknown top-level keys"),
        &registry,
        &body,
    );
    assert_eq!(
        measured.problem["detail"],
        format!("the request has {unknown} invalid fields; the first 20 are listed")
    );
    assert_eq!(measured.problem["errors"][0]["field"], "k0");
    assert!(measured.problem_bytes < 4096, "{}", measured.problem_bytes);
    let peak_unknown = measured.peak;

    // 2. Half a million fields in `input`, each an unknown field of the model.
    let mut body = br#"{"model": "flux-schnell", "input": {"prompt": "x""#.to_vec();
    let fields = fill(&mut body, 2, |i| format!(r#","{i}":[]"#));
    body.extend_from_slice(b"}}");
    assert!(fields >= 500_000, "{fields}");
    let measured = measure(&format!("{fields} input fields"), &registry, &body);
    assert_eq!(measured.problem["errors"][0]["field"], "input");
    assert_eq!(
        measured.problem["errors"][0]["message"],
        format!(
            "has {} fields; no model takes more than {MAX_INPUT_FIELDS}",
            fields + 1
        )
    );

    // 3. The prompt is one nested array filling the body: a million levels deep (far past
    //    serde_json's recursion limit, skipped without recursion) and wide inside.
    let depth = MB;
    let mut body = br#"{"model": "flux-schnell", "input": {"prompt": "#.to_vec();
    body.extend(std::iter::repeat_n(b'[', depth));
    fill(&mut body, depth + 3, |_| {
        r#"[1, "two", {"three": [3.0, null]}], "#.to_owned()
    });
    body.extend_from_slice(b"[]");
    body.extend(std::iter::repeat_n(b']', depth));
    body.extend_from_slice(b"}}");
    let measured = measure("a nested-array prompt", &registry, &body);
    assert_eq!(
        measured.problem["errors"],
        serde_json::json!([{"field": "input.prompt", "message": "must be a string"}])
    );
    assert_eq!(
        measured.problem["detail"],
        "the request has 1 invalid field(s)"
    );

    // Unknown keys are skipped, not kept: half a million of them cost about what the
    // body itself does, nowhere near 107 MB.
    assert!(peak_unknown < 8 * MB, "{peak_unknown}");
}
