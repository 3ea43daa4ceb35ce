//! `make cost`'s instruments: a counting reverse proxy in front of the AWS emulator (every
//! DynamoDB, S3 and SQS request the stack makes, with the capacity units DynamoDB would
//! bill), a meter of Lambda invocations (`dev::serve_app_metered` and
//! `dev::spawn_copy_worker_metered` feed it), a counter of the bytes the functions would
//! log, the price table and the report.

pub mod classify;
mod dynamo;
mod lambda;
pub mod logs;
pub mod prices;
pub mod process;
mod queues_objects;
pub mod report;
pub mod size;
pub mod tally;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde_json::{Map, Value};

use crate::http_server::{HttpRequest, HttpResponse, Server, bind_loopback, serve};
use crate::sam::IndexSpec;
use crate::sam::Template;
use classify::{Request, classify};

pub use lambda::{FunctionCalls, InvocationTally, Invocations, billed_ms};
pub use tally::{Capacity, SqsCount, Stored, Tally};

/// S3 parts are 8 MiB; anything a test stack sends fits.
const MAX_PROXIED_BODY: usize = 64 * 1024 * 1024;
/// SQS bills every 64 KB of payload as one request.
const SQS_CHUNK_BYTES: u64 = 64 * 1024;

type Item = Map<String, Value>;

#[derive(Default)]
struct State {
    tally: Tally,
    /// Size of every object written, so an overwrite is not stored twice.
    objects: HashMap<String, u64>,
    /// Part sizes of multipart uploads in progress, by (key, upload id).
    uploads: HashMap<(String, String), BTreeMap<String, u64>>,
    /// The stack's last DynamoDB `Authorization` (the emulator reads account and region
    /// from it), reused for the meter's own uncounted reads.
    authorization: Option<HeaderValue>,
    /// Tables created through the meter: it has seen every write to them.
    tables: HashSet<String>,
    /// The meter's copy of every item written through it (`None`: deleted).
    items: HashMap<String, Option<Item>>,
}

/// The counting proxy.
pub struct Meter {
    upstream: String,
    http: reqwest::Client,
    table_keys: Vec<String>,
    indexes: Vec<IndexSpec>,
    state: Mutex<State>,
    item_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Writes whose pricing has not finished.
    pending: AtomicUsize,
}

/// An item read back from the table for storage pricing.
#[derive(Debug, Clone)]
pub struct StoredItem {
    pub pk: String,
    pub bytes: u64,
    /// The TTL attribute's value (epoch seconds), if any.
    pub expires_at: Option<u64>,
}

impl Meter {
    /// A meter for the table the template describes, forwarding to `upstream`.
    pub fn new(upstream: &str, template: &Template) -> Arc<Self> {
        Arc::new(Self {
            upstream: upstream.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(120))
                .build()
                .expect("an HTTP client"),
            table_keys: template.table_keys.clone(),
            indexes: template.indexes.clone(),
            state: Mutex::new(State::default()),
            item_locks: Mutex::new(HashMap::new()),
            pending: AtomicUsize::new(0),
        })
    }

    /// Serves the proxy on a free loopback port; point the stack's AWS clients at its address.
    pub async fn serve(self: &Arc<Self>) -> std::io::Result<Server> {
        let listener = bind_loopback(0).await?;
        let meter = self.clone();
        Ok(serve(
            listener,
            MAX_PROXIED_BODY,
            too_large,
            move |request| {
                let meter = meter.clone();
                async move { meter.handle(request).await }
            },
        ))
    }

    pub fn tally(&self) -> Tally {
        self.lock().tally.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn handle(self: &Arc<Self>, request: HttpRequest) -> HttpResponse {
        let (parts, body) = request.into_parts();
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        let method = parts.method.as_str().to_owned();
        match classify(&method, &path, &query, &parts.headers, &body) {
            Request::Dynamo(op) => self.dynamo(op, &parts, body).await,
            Request::Sqs(op) => {
                let response = self.forward(&parts, body.clone()).await;
                self.count_sqs(&op, &body, &response);
                response
            }
            Request::S3(s3) => {
                let response = self.forward(&parts, body.clone()).await;
                self.count_s3(s3, &query, &parts.headers, &body, &response);
                response
            }
            Request::Other(name) => {
                let response = self.forward(&parts, body).await;
                let mut state = self.lock();
                *state
                    .tally
                    .requests
                    .entry(("other".into(), name.clone()))
                    .or_default() += 1;
                if name != "moto-api" {
                    *state.tally.unmetered.entry(name).or_default() += 1;
                }
                response
            }
        }
    }

    async fn forward(&self, parts: &http::request::Parts, body: Bytes) -> HttpResponse {
        let url = format!(
            "{}{}",
            self.upstream,
            parts.uri.path_and_query().map_or("/", |p| p.as_str())
        );
        let mut headers = parts.headers.clone();
        for name in [
            header::CONTENT_LENGTH,
            header::CONNECTION,
            header::TRANSFER_ENCODING,
            header::EXPECT,
        ] {
            headers.remove(name);
        }
        let started = std::time::Instant::now();
        let sent = self
            .http
            .request(parts.method.clone(), url)
            .headers(headers)
            .body(body)
            .send()
            .await;
        let result = match sent {
            Ok(response) => {
                let status = response.status();
                let mut headers = response.headers().clone();
                match response.bytes().await {
                    Ok(bytes) => Ok((status, std::mem::take(&mut headers), bytes)),
                    Err(err) => Err(err.to_string()),
                }
            }
            Err(err) => Err(err.to_string()),
        };
        // Long polls wait by design, and presigned downloads are the client's, not a handler's.
        let long_poll = parts
            .headers
            .get("x-amz-target")
            .is_some_and(|v| v == "AmazonSQS.ReceiveMessage");
        let presigned = parts
            .uri
            .query()
            .is_some_and(|q| q.contains("X-Amz-Signature"));
        if !long_poll && !presigned {
            let mut state = self.lock();
            state.tally.forwarded += 1;
            state.tally.upstream_micros += started.elapsed().as_micros() as u64;
        }
        match result {
            Ok((status, mut headers, bytes)) => {
                headers.remove(header::TRANSFER_ENCODING);
                headers.remove(header::CONNECTION);
                if parts.method != http::Method::HEAD {
                    headers.remove(header::CONTENT_LENGTH);
                }
                let mut response = http::Response::new(bytes);
                *response.status_mut() = status;
                *response.headers_mut() = headers;
                response
            }
            Err(err) => {
                let mut response = http::Response::new(Bytes::from(format!("meter: {err}")));
                *response.status_mut() = StatusCode::BAD_GATEWAY;
                response
            }
        }
    }
}

fn too_large() -> HttpResponse {
    let mut response = http::Response::new(Bytes::from_static(b"meter: request body too large"));
    *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    response
}
