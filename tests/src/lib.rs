//! A whole stack per test: the real handlers behind the dev server's HTTP routes, DynamoDB
//! and S3 on moto (`AWS_ENDPOINT_URL`, started by `make test`) with a table and bucket of
//! the test's own, and a Replicate simulator of its own.

pub mod heap;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use imagegen_shared::aws::{AwsClients, ensure_bucket, ensure_queue, ensure_table};
use imagegen_shared::bootstrap::{ProductionApp, build_app};
use imagegen_shared::ports::{AccountStore, RecordStore};
use imagegen_shared::record::{PredictionId, PredictionRecord};
use imagegen_shared::tenancy::{ApiKey, KeyRecord, LimitsUpdate, TenantId};
use local_stack::dev::{
    LOCAL_MAX_RECEIVES, LOCAL_VISIBILITY_TIMEOUT_SECONDS, serve_app_metered,
    spawn_copy_worker_metered,
};
use local_stack::http_server::{Server, bind_loopback};
use local_stack::meter::Invocations;
use local_stack::sim::{SimConfig, Simulator};
use reqwest::StatusCode;
use serde_json::Value;
use sha2::{Digest, Sha256};

pub struct Stack {
    pub base: String,
    pub sim: Simulator,
    pub app: Arc<ProductionApp>,
    pub aws: AwsClients,
    pub bucket: String,
    /// A client sending this stack's API key (of tenant `TENANT`) with every request.
    pub http: reqwest::Client,
    /// A client sending no key (downloads, and requests that must be refused).
    pub plain: reqwest::Client,
    pub api_key: String,
    _server: Server,
    _copier: AbortOnDrop,
}

/// Stops the stack's copy worker with the stack.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The tenant of a stack's own API key.
pub const TENANT: &str = "it";

/// Sets `tenant`'s limits and stores a new API key for it (as `make key` does); returns the
/// key.
pub async fn create_key(
    app: &ProductionApp,
    tenant: &str,
    rate_per_minute: u32,
    budget: Option<u64>,
) -> String {
    let key = ApiKey::generate();
    let tenant = TenantId::parse(tenant).expect("a tenant name");
    let limits = LimitsUpdate::new(tenant.clone(), Some(rate_per_minute), Some(budget))
        .expect("valid limits");
    app.records
        .update_tenant(&limits)
        .await
        .expect("limits stored");
    let record = KeyRecord::new(&key, tenant, app.clock.millis());
    app.records.create_key(&record).await.expect("key stored");
    key.expose().to_owned()
}

/// A client that sends `Authorization: Bearer <key>` with every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = http::HeaderMap::new();
    let value = http::HeaderValue::from_str(&format!("Bearer {key}")).expect("a header value");
    headers.insert(http::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("a client")
}

/// The moto endpoint `make test` provides.
pub fn aws_endpoint() -> String {
    std::env::var("AWS_ENDPOINT_URL")
        .expect("integration tests need a local AWS emulator in AWS_ENDPOINT_URL; run them with `make test`")
}

impl Stack {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Starts a stack; `adjust` may change the app's environment before it is built.
    pub async fn start_with(adjust: impl FnOnce(&mut HashMap<String, String>)) -> Self {
        Self::start_on(&aws_endpoint(), SimConfig::default(), None, adjust).await
    }

    /// `start_with` on another AWS endpoint (`make cost`'s metering proxy), with this
    /// simulator configuration; `invocations`, if given, meters the handlers as Lambda calls.
    pub async fn start_on(
        aws_endpoint: &str,
        sim: SimConfig,
        invocations: Option<Arc<Invocations>>,
        adjust: impl FnOnce(&mut HashMap<String, String>),
    ) -> Self {
        let sim = Simulator::start(sim).await.expect("simulator starts");
        let aws = AwsClients::local(aws_endpoint).await;
        let name = format!("it-{}", uuid::Uuid::new_v4().simple());
        ensure_table(&aws.dynamodb, &name).await.expect("table");
        ensure_bucket(&aws.s3, &name).await.expect("bucket");
        let queue = ensure_queue(
            &aws.sqs,
            &name,
            LOCAL_VISIBILITY_TIMEOUT_SECONDS,
            LOCAL_MAX_RECEIVES,
        )
        .await
        .expect("queue");
        let listener = bind_loopback(0).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut vars: HashMap<String, String> = [
            ("TABLE_NAME", name.clone()),
            ("BUCKET_NAME", name.clone()),
            ("COPY_QUEUE_URL", queue.clone()),
            ("PUBLIC_BASE_URL", format!("http://{addr}")),
            ("REPLICATE_API_BASE_URL", sim.api_base()),
            ("REPLICATE_API_TOKEN", "r8_integration".to_owned()),
            ("OUTPUT_HOST_ALLOWLIST", sim.output_host()),
            ("FETCH_SYNC_INTERVAL_SECONDS", "1".to_owned()),
            // Unconfirmed creates are looked for in the simulator's list after 2 s, not 5 min.
            ("RESOLVE_AFTER_SECONDS", "2".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        adjust(&mut vars);
        let app = Arc::new(
            build_app(aws.clone(), |n| vars.get(n).cloned())
                .await
                .expect("app builds"),
        );
        let copier =
            spawn_copy_worker_metered(app.clone(), aws.sqs.clone(), queue, invocations.clone());
        let server = serve_app_metered(listener, app.clone(), invocations);
        let api_key = create_key(&app, TENANT, 100_000, None).await;
        Self {
            base: format!("http://{}", server.addr),
            sim,
            app,
            aws,
            bucket: name,
            http: client_with_key(&api_key),
            plain: reqwest::Client::new(),
            api_key,
            _server: server,
            _copier: AbortOnDrop(copier),
        }
    }

    /// A new API key of `tenant` in this stack's table (setting the tenant's limits).
    pub async fn new_key(&self, tenant: &str, rate_per_minute: u32, budget: Option<u64>) -> String {
        create_key(&self.app, tenant, rate_per_minute, budget).await
    }

    pub async fn submit(&self, body: &Value) -> (StatusCode, Value) {
        read(
            self.http
                .post(format!("{}/v1/predictions", self.base))
                .json(body)
                .send()
                .await
                .expect("submit"),
        )
        .await
    }

    pub async fn get(&self, id: &str) -> (StatusCode, Value) {
        self.get_as(&self.http, id).await
    }

    /// Reads a prediction with `client`'s API key.
    pub async fn get_as(&self, client: &reqwest::Client, id: &str) -> (StatusCode, Value) {
        read(
            client
                .get(format!("{}/v1/predictions/{id}", self.base))
                .send()
                .await
                .expect("get"),
        )
        .await
    }

    /// Fetches until the prediction is terminal (each fetch may sync from Replicate).
    pub async fn wait_terminal(&self, id: &str) -> Value {
        self.wait_terminal_as(&self.http, id).await
    }

    /// `wait_terminal` with `client`'s API key.
    pub async fn wait_terminal_as(&self, client: &reqwest::Client, id: &str) -> Value {
        let started = Instant::now();
        loop {
            let (status, body) = self.get_as(client, id).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            if matches!(
                body["status"].as_str(),
                Some("succeeded" | "failed" | "canceled" | "aborted")
            ) {
                return body;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "prediction {id} did not finish: {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The stored record of one of our predictions, read directly (no sync).
    pub async fn record(&self, id: &str) -> Option<PredictionRecord> {
        let id = PredictionId::parse(id).expect("a prediction id");
        self.app.records.get_prediction(&id).await.expect("read")
    }

    /// Waits until the stored record (read directly, no sync) satisfies `done`.
    pub async fn wait_record(&self, id: &str, done: impl Fn(&PredictionRecord) -> bool) {
        let started = Instant::now();
        loop {
            let record = self.record(id).await.expect("exists");
            if done(&record) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "record never got there: {record:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Replicate's id for one of our predictions (once created there).
    pub async fn replicate_id(&self, id: &str) -> String {
        let record = self.record(id).await.expect("exists");
        record.replicate_id.expect("created at Replicate")
    }

    /// Downloads an output through its presigned URL and checks it against its metadata.
    pub async fn download_verified(&self, output: &Value) -> Vec<u8> {
        let url = output["url"].as_str().expect("url");
        let response = self.plain.get(url).send().await.expect("download");
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        let bytes = response.bytes().await.expect("body").to_vec();
        assert_eq!(bytes.len() as u64, output["size"].as_u64().expect("size"));
        assert_eq!(
            hex_sha256(&bytes),
            output["sha256"].as_str().expect("sha256")
        );
        bytes
    }

    /// Keys stored in this stack's bucket.
    pub async fn object_keys(&self) -> Vec<String> {
        let listed = self
            .aws
            .s3
            .list_objects_v2()
            .bucket(&self.bucket)
            .send()
            .await
            .expect("list");
        listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }
}

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A small PNG as a data URL, for image inputs.
pub fn png_data_url(width: u32, height: u32) -> String {
    png_as_data_url(&image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 5) as u8, 128])
    }))
}

/// A PNG of noise (it does not compress) of about `bytes` bytes, as a data URL: for inputs
/// near the inline-image cap.
pub fn noise_png_data_url(bytes: usize) -> String {
    let side = ((bytes / 3) as f64).sqrt() as u32;
    let mut state = 0x2545_f491_u32;
    png_as_data_url(&image::RgbImage::from_fn(side, side, |_, _| {
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        };
        image::Rgb([next(), next(), next()])
    }))
}

fn png_as_data_url(image: &image::RgbImage) -> String {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image
        .write_to(&mut bytes, image::ImageFormat::Png)
        .expect("encode");
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes.into_inner())
    )
}

/// The record's webhook token: what Replicate's deliveries carry in their URL.
pub async fn webhook_query(stack: &Stack, id: &str) -> String {
    let token = stack
        .record(id)
        .await
        .and_then(|r| r.webhook_token)
        .unwrap_or_default();
    format!("id={id}&token={token}")
}
