//! The contract through the real function binaries: each Lambda binary of `template.yaml`
//! runs as its own processes under a local Runtime API, behind a local API Gateway that
//! routes by the template and speaks the HTTP API v2 payload; queues feed their consumers
//! SQS batches; the token reaches them through SSM. A request crosses the Runtime API here
//! exactly as it would in AWS.

use std::time::{Duration, Instant};

use integration_tests::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn invocations(stack: &Stack, function: &str) -> u64 {
    stack
        .functions()
        .and_then(|f| f.lambdas.function(function))
        .map_or(0, |f| f.api.invocations())
}

async fn json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_prediction_runs_through_the_function_binaries_and_the_runtime_api() {
    let stack = Stack::start_binaries_with(|_| {}).await;
    let (status, submitted) = stack
        .submit(&json!({"model": "flux-schnell", "input": {"prompt": "through the binaries"}}))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    assert!(
        invocations(&stack, "SubmitFunction") >= 1,
        "submit crossed the Runtime API"
    );
    let id = submitted["id"].as_str().unwrap().to_owned();

    // Replicate's webhook reaches the webhook binary; the copier binary stores the output.
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (_, current) = stack.get(&id).await;
        if current["status"] == "succeeded" || Instant::now() > deadline {
            break current;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"].as_array().map(Vec::len), Some(1));
    stack.download_verified(&done["output"][0]).await;
    for function in ["FetchResultFunction", "WebhookFunction", "CopierFunction"] {
        assert!(invocations(&stack, function) >= 1, "{function} was invoked");
    }
    assert_eq!(stack.sim.stats().creates, 1);
    // Metrics as CloudWatch Embedded Metric Format lines on the functions' stdout.
    let created = stack.metric_lines("SubmitFunction");
    assert!(
        created.iter().any(|m| m["PredictionsCreated"] == 1.0
            && m["Model"] == "flux-schnell"
            && m["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "ImageGen"),
        "{created:?}"
    );
    let copied = stack.metric_lines("CopierFunction");
    for name in [
        "PredictionsSucceeded",
        "BytesCopied",
        "CopyTime",
        "QueueAge",
    ] {
        assert!(
            copied.iter().any(|m| m.get(name).is_some()),
            "{name}: {copied:?}"
        );
    }

    // Path parameters, query strings and the other routes of each function.
    let (status, listed) = json(
        stack
            .http
            .get(format!("{}/v1/predictions?limit=1", stack.base))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    assert_eq!(listed["items"][0]["id"], id.as_str());
    let (status, canceled) = stack.cancel(&id).await;
    assert_eq!(
        (status, canceled["status"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "an ended prediction is answered unchanged"
    );
    let unauthenticated = stack
        .plain
        .get(format!("{}/v1/usage", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_route_missing_from_the_template_is_not_served() {
    let stack = Stack::start_binaries_with(|_| {}).await;
    let total = |stack: &Stack| -> u64 {
        ["SubmitFunction", "FetchResultFunction", "WebhookFunction"]
            .iter()
            .map(|f| invocations(stack, f))
            .sum()
    };
    let before = total(&stack);
    // The handlers would answer these paths; the template has no such routes.
    for (method, path) in [
        ("GET", "/v1/predictions/abc/cancel"),
        ("DELETE", "/v1/predictions/abc"),
        ("POST", "/v1/usage"),
        ("GET", "/webhooks/replicate"),
        ("GET", "/"),
    ] {
        let response = stack
            .http
            .request(method.parse().unwrap(), format!("{}{path}", stack.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{method} {path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["message"], "Not Found", "API Gateway's own answer");
    }
    assert_eq!(before, total(&stack), "no function was invoked");
}

#[tokio::test]
async fn a_function_process_that_dies_is_replaced() {
    let stack = Stack::start_binaries_with(|_| {}).await;
    let submit = stack
        .functions()
        .and_then(|f| f.lambdas.function("SubmitFunction"))
        .expect("the submit function runs");
    let before = submit.pids();
    assert_eq!(before.len(), 2);
    // One of the processes this test started dies, as an execution environment can.
    let killed = std::process::Command::new("kill")
        .args(["-9", &before[0].to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while submit.pids().contains(&before[0]) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = submit.pids();
    assert_eq!(after.len(), 2, "{after:?}");
    assert!(
        !after.contains(&before[0]),
        "replaced: {before:?} → {after:?}"
    );
    for n in 0..4 {
        let (status, body) = stack
            .submit(&json!({"model": "flux-schnell", "input": {"prompt": format!("after a crash {n}")}}))
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
}

/// The event a process held when it died fails at once with API Gateway's 500, as Lambda
/// reports a runtime that exited mid-invocation, instead of waiting out the timeout.
#[tokio::test]
async fn a_request_whose_process_dies_is_answered_500_at_once() {
    let stack = Stack::start_binaries_with(|_| {}).await;
    let submit = stack
        .functions()
        .and_then(|f| f.lambdas.function("SubmitFunction"))
        .expect("the submit function runs");
    // The create hangs for 8 s, so the submit is still in its process when that dies.
    stack.sim.set_faults(
        serde_json::from_value(json!({"create_slow": 1.0, "create_slow_ms": 8000})).unwrap(),
    );
    let request = stack
        .http
        .post(format!("{}/v1/predictions", stack.base))
        .json(&json!({"model": "flux-schnell", "input": {"prompt": "a process that dies"}}))
        .send();
    let pending = tokio::spawn(request);
    let deadline = Instant::now() + Duration::from_secs(5);
    while invocations(&stack, "SubmitFunction") == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        invocations(&stack, "SubmitFunction"),
        1,
        "the submit is in flight"
    );
    let started = Instant::now();
    // Both processes this test started die: one of them holds the submit.
    for pid in submit.pids() {
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(killed.success());
    }
    let response = pending.await.unwrap().expect("an answer");
    let waited = started.elapsed();
    let (status, body) = json(response).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(
        body["message"], "Internal Server Error",
        "API Gateway's own answer"
    );
    assert!(
        waited < Duration::from_secs(6),
        "answered when the process died, not when the slow create would have ended ({waited:?})"
    );
}
