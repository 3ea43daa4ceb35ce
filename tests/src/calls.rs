//! What a test asks of a running stack: submits, reads, cancels, uploads, keys, waits, and
//! verified downloads; every answer is checked against the OpenAPI document.

use std::time::{Duration, Instant};

use imagegen_shared::domain::ids::PredictionId;
use imagegen_shared::domain::record::PredictionRecord;
use imagegen_shared::ports::records::RecordStore;
use reqwest::StatusCode;
use serde_json::Value;

use crate::{Stack, contract, create_key, hex_sha256};

impl Stack {
    /// An upload slot for `size` bytes of `content_type`, as `client`'s tenant.
    pub async fn upload_slot(
        &self,
        client: &reqwest::Client,
        content_type: &str,
        size: usize,
    ) -> (StatusCode, Value) {
        read(
            "POST",
            client
                .post(format!("{}/v1/uploads", self.base))
                .json(&serde_json::json!({"content_type": content_type, "size": size}))
                .send()
                .await
                .expect("upload slot"),
        )
        .await
    }

    /// PUTs `bytes` to a slot's URL with the headers it names (`content_type` overrides
    /// the slot's, to send something else than declared); the upload's status.
    pub async fn put_upload(&self, slot: &Value, bytes: Vec<u8>) -> StatusCode {
        let mut request = self
            .plain
            .put(slot["upload_url"].as_str().expect("upload_url"));
        for (name, value) in slot["headers"].as_object().expect("headers") {
            // The client sets the length of what it really sends.
            if name != "content-length" {
                request = request.header(name, value.as_str().unwrap_or_default());
            }
        }
        request
            .body(bytes)
            .send()
            .await
            .expect("PUT upload")
            .status()
    }

    /// A slot with `bytes` uploaded to it, as this stack's tenant; its `upload://` ref.
    pub async fn uploaded(&self, content_type: &str, bytes: Vec<u8>) -> String {
        let (status, slot) = self
            .upload_slot(&self.http, content_type, bytes.len())
            .await;
        assert_eq!(status, StatusCode::CREATED, "{slot}");
        assert!(self.put_upload(&slot, bytes).await.is_success());
        slot["ref"].as_str().expect("ref").to_owned()
    }

    /// A new API key of `tenant` in this stack's table (setting the tenant's limits).
    pub async fn new_key(&self, tenant: &str, rate_per_minute: u32, budget: Option<u64>) -> String {
        create_key(&self.app, tenant, rate_per_minute, budget).await
    }

    pub async fn submit(&self, body: &Value) -> (StatusCode, Value) {
        read(
            "POST",
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

    /// `POST /v1/predictions/{id}/cancel` with this stack's key.
    pub async fn cancel(&self, id: &str) -> (StatusCode, Value) {
        self.cancel_as(&self.http, id).await
    }

    /// `cancel` with `client`'s API key (or none).
    pub async fn cancel_as(&self, client: &reqwest::Client, id: &str) -> (StatusCode, Value) {
        read(
            "POST",
            client
                .post(format!("{}/v1/predictions/{id}/cancel", self.base))
                .send()
                .await
                .expect("cancel"),
        )
        .await
    }

    /// Reads a prediction with `client`'s API key.
    pub async fn get_as(&self, client: &reqwest::Client, id: &str) -> (StatusCode, Value) {
        read(
            "GET",
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

/// The status and JSON body of a response to `method`, checked against the OpenAPI
/// document.
async fn read(method: &str, response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let path = response.url().path().to_owned();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    contract::OpenApi::get().assert_conforms(
        method,
        &path,
        status.as_u16(),
        content_type.as_deref(),
        &body,
    );
    (status, body)
}
