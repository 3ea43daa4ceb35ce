//! The contract through the real function binaries: each Lambda binary of `template.yaml`
//! runs as its own processes under a local Runtime API, behind a local API Gateway that
//! routes by the template and speaks the HTTP API v2 payload; queues feed their consumers
//! SQS batches. A request crosses the Runtime API here exactly as it would in AWS.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use imagegen_shared::aws::{AwsClients, ensure_bucket, ensure_table};
use imagegen_shared::bootstrap::build_app;
use integration_tests::{aws_endpoint, client_with_key, create_key};
use local_stack::dev::ensure_local_queues;
use local_stack::gateway::{
    LambdaConfig, LocalQueue, RunningFunctions, TEMPLATE, function_environment, run_functions,
};
use local_stack::http_server::bind_loopback;
use local_stack::sim::{SimConfig, Simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};

const FUNCTIONS: [&str; 6] = [
    "submit",
    "webhook",
    "fetch-result",
    "reconciler",
    "copier",
    "callbacks",
];

/// The function binaries, built (debug, like the tests): a no-op when they are fresh, and
/// `cargo test` alone builds no other package's binaries.
fn binaries() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut command = std::process::Command::new(cargo);
            command.args(["build", "-q"]);
            for function in FUNCTIONS {
                command.args(["-p", function]);
            }
            let status = command.status().expect("cargo runs");
            assert!(status.success(), "the function binaries build");
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug")
        })
        .clone()
}

struct BinaryStack {
    base: String,
    http: reqwest::Client,
    sim: Simulator,
    running: RunningFunctions,
    /// The functions' stdout, one file per process.
    logs: PathBuf,
}

async fn start() -> BinaryStack {
    let binaries = binaries();
    let sim = Simulator::start(SimConfig::default())
        .await
        .expect("simulator");
    let endpoint = aws_endpoint();
    let aws = AwsClients::local(&endpoint).await;
    let name = format!("bin-{}", uuid::Uuid::new_v4().simple());
    ensure_table(&aws.dynamodb, &name).await.expect("table");
    ensure_bucket(&aws.s3, &name).await.expect("bucket");
    let queues = ensure_local_queues(&aws.sqs, &name).await.expect("queues");
    let listener = bind_loopback(0).await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let vars: HashMap<String, String> = [
        ("TABLE_NAME", name.clone()),
        ("BUCKET_NAME", name.clone()),
        ("COPY_QUEUE_URL", queues.copy.clone()),
        ("CALLBACK_QUEUE_URL", queues.callback.clone()),
        (
            "CALLBACK_DEAD_LETTER_QUEUE_URL",
            queues.callback_dead_letter.clone(),
        ),
        ("PUBLIC_BASE_URL", format!("http://{addr}")),
        ("REPLICATE_API_BASE_URL", sim.api_base()),
        ("REPLICATE_API_TOKEN", "r8_binaries".to_owned()),
        ("REPLICATE_WEBHOOK_SECRET", sim.secret().to_owned()),
        ("OUTPUT_HOST_ALLOWLIST", sim.output_host()),
        ("FETCH_SYNC_INTERVAL_SECONDS", "1".to_owned()),
        ("RUST_LOG", "warn".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let lookup = |n: &str| vars.get(n).cloned();
    // An app in this process only to store a key, as `make key` would.
    let admin = build_app(aws.clone(), lookup).await.expect("app builds");
    let key = create_key(&admin, "binaries", 1000, None).await;
    let env = function_environment(lookup, &endpoint, &aws.ssm)
        .await
        .expect("environment");
    assert!(
        !env.contains_key("REPLICATE_API_TOKEN")
            && env.contains_key("REPLICATE_API_TOKEN_PARAMETER"),
        "the token reaches the functions through SSM, as in AWS"
    );
    let logs = std::env::temp_dir().join(format!("imagegen-{name}"));
    std::fs::create_dir_all(&logs).expect("log directory");
    let config = LambdaConfig {
        binaries: &binaries,
        env: &env,
        processes: 2,
        logs: Some(&logs),
    };
    let local_queues = [
        LocalQueue {
            logical_id: "CopyQueue",
            url: queues.copy.clone(),
        },
        LocalQueue {
            logical_id: "CallbackQueue",
            url: queues.callback.clone(),
        },
    ];
    let running = run_functions(
        listener,
        TEMPLATE,
        &config,
        &aws.sqs,
        &local_queues,
        Duration::from_secs(3600),
    )
    .await
    .expect("functions start");
    BinaryStack {
        base: format!("http://{addr}"),
        http: client_with_key(&key),
        sim,
        running,
        logs,
    }
}

impl Drop for BinaryStack {
    fn drop(&mut self) {
        self.running.lambdas.stop();
        let _ = std::fs::remove_dir_all(&self.logs);
    }
}

impl BinaryStack {
    fn invocations(&self, function: &str) -> u64 {
        self.running
            .lambdas
            .function(function)
            .map_or(0, |f| f.api.invocations())
    }

    /// The EMF metric lines `function`'s processes wrote (CloudWatch would read them).
    fn metric_lines(&self, function: &str) -> Vec<Value> {
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(&self.logs)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("{function}-")) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            lines.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|v| v.get("_aws").is_some()),
            );
        }
        lines
    }

    async fn json(&self, response: reqwest::Response) -> (StatusCode, Value) {
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

#[tokio::test]
async fn a_prediction_runs_through_the_function_binaries_and_the_runtime_api() {
    let stack = start().await;
    let (status, submitted) = stack
        .json(
            stack
                .http
                .post(format!("{}/v1/predictions", stack.base))
                .json(
                    &json!({"model": "flux-schnell", "input": {"prompt": "through the binaries"}}),
                )
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    assert!(
        stack.invocations("SubmitFunction") >= 1,
        "submit crossed the Runtime API"
    );
    let id = submitted["id"].as_str().unwrap().to_owned();

    // Replicate's webhook reaches the webhook binary; the copier binary stores the output.
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (_, current) = stack
            .json(
                stack
                    .http
                    .get(format!("{}/v1/predictions/{id}", stack.base))
                    .send()
                    .await
                    .unwrap(),
            )
            .await;
        if current["status"] == "succeeded" || Instant::now() > deadline {
            break current;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["output"].as_array().map(Vec::len), Some(1));
    for function in ["FetchResultFunction", "WebhookFunction", "CopierFunction"] {
        assert!(stack.invocations(function) >= 1, "{function} was invoked");
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
    let (status, listed) = stack
        .json(
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
    let (status, canceled) = stack
        .json(
            stack
                .http
                .post(format!("{}/v1/predictions/{id}/cancel", stack.base))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(
        (status, canceled["status"].as_str()),
        (StatusCode::OK, Some("succeeded")),
        "an ended prediction is answered unchanged"
    );
    let (status, secret) = stack
        .json(
            stack
                .http
                .get(format!("{}/v1/webhooks/secret", stack.base))
                .send()
                .await
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(secret["key"].as_str().unwrap().starts_with("whsec_"));
    let unauthenticated = reqwest::get(format!("{}/v1/usage", stack.base))
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_route_missing_from_the_template_is_not_served() {
    let stack = start().await;
    let before: u64 = ["SubmitFunction", "FetchResultFunction", "WebhookFunction"]
        .iter()
        .map(|f| stack.invocations(f))
        .sum();
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
    let after: u64 = ["SubmitFunction", "FetchResultFunction", "WebhookFunction"]
        .iter()
        .map(|f| stack.invocations(f))
        .sum();
    assert_eq!(before, after, "no function was invoked");
}
