//! `make cost`'s instruments: a counting reverse proxy in front of the AWS emulator (every
//! DynamoDB, S3 and SQS request the stack makes, with the capacity units DynamoDB would
//! bill), a meter of Lambda invocations (`dev::serve_app_metered` and
//! `dev::spawn_copy_worker_metered` feed it), a counter of the bytes the functions would
//! log, the price table and the report.

pub mod classify;
mod lambda;
pub mod logs;
pub mod prices;
pub mod report;
pub mod size;
pub mod template;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Sub;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::{Map, Value, json};

use crate::http_server::{HttpRequest, HttpResponse, Server, bind_loopback, serve};
use classify::{Request, S3Op, S3Request, classify, key_prefix, object_prefix};
use size::{IndexSpec, item_size, read_units, write_units};
use template::Template;

pub use lambda::{FunctionCalls, InvocationTally, Invocations, billed_ms};

/// S3 parts are 8 MiB; anything a test stack sends fits.
const MAX_PROXIED_BODY: usize = 64 * 1024 * 1024;
/// SQS bills every 64 KB of payload as one request.
const SQS_CHUNK_BYTES: u64 = 64 * 1024;

type Item = Map<String, Value>;

/// DynamoDB capacity billed for one kind of call.
/// `Sub` field by field, for the counters a phase's share is taken from (`Tally::since`).
macro_rules! fieldwise_sub {
    ($type:ident { $($field:ident),+ }) => {
        impl std::ops::Sub for $type {
            type Output = Self;
            fn sub(self, o: Self) -> Self {
                Self { $($field: self.$field - o.$field),+ }
            }
        }
    };
}
pub(crate) use fieldwise_sub;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Capacity {
    pub calls: u64,
    /// Write request units on the table.
    pub write_units: u64,
    /// Write request units on global secondary indexes.
    pub index_write_units: u64,
    pub read_units: f64,
    /// Conditional writes refused (they are billed all the same).
    pub failed_conditions: u64,
}

fieldwise_sub!(Capacity {
    calls,
    write_units,
    index_write_units,
    read_units,
    failed_conditions
});

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqsCount {
    pub calls: u64,
    /// Billed requests: one per 64 KB of payload.
    pub billed: u64,
    /// Receives that returned nothing: pollers waiting, not work for an image.
    pub empty: u64,
    pub messages: u64,
}

fieldwise_sub!(SqsCount {
    calls,
    billed,
    empty,
    messages
});

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub objects: u64,
    pub bytes: u64,
}

impl Sub for Stored {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            objects: self.objects.saturating_sub(o.objects),
            bytes: self.bytes.saturating_sub(o.bytes),
        }
    }
}

/// What passed the proxy, cumulative; `since` gives one phase's share.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Every request by service and operation, setup and control plane included.
    pub requests: BTreeMap<(String, String), u64>,
    /// DynamoDB capacity by operation and key group (`pred#`, `cache#`, `index:open-index`).
    pub dynamo: BTreeMap<(String, String), Capacity>,
    /// S3 requests by operation, object prefix and whether the URL was presigned.
    pub s3: BTreeMap<(S3Op, String, bool), u64>,
    /// Objects written, per key prefix (an overwrite counts its size change).
    pub stored: BTreeMap<String, Stored>,
    /// Bytes served to presigned downloads: data transfer out, in AWS.
    pub downloaded_bytes: u64,
    pub sqs: BTreeMap<String, SqsCount>,
    /// Operations the cost model does not price, with how often they were seen.
    pub unmetered: BTreeMap<String, u64>,
    /// Requests forwarded and their total round trip to the emulator, in microseconds:
    /// the emulator's latency is part of every handler time measured.
    pub forwarded: u64,
    pub upstream_micros: u64,
}

fn minus<K: Ord + Clone, V: Copy + Default + PartialEq + Sub<Output = V>>(
    now: &BTreeMap<K, V>,
    before: &BTreeMap<K, V>,
) -> BTreeMap<K, V> {
    now.iter()
        .map(|(k, v)| (k.clone(), *v - before.get(k).copied().unwrap_or_default()))
        .filter(|(_, v)| *v != V::default())
        .collect()
}

impl Tally {
    pub fn since(&self, before: &Tally) -> Tally {
        Tally {
            requests: minus(&self.requests, &before.requests),
            dynamo: minus(&self.dynamo, &before.dynamo),
            s3: minus(&self.s3, &before.s3),
            stored: minus(&self.stored, &before.stored),
            downloaded_bytes: self.downloaded_bytes - before.downloaded_bytes,
            sqs: minus(&self.sqs, &before.sqs),
            unmetered: minus(&self.unmetered, &before.unmetered),
            forwarded: self.forwarded - before.forwarded,
            upstream_micros: self.upstream_micros - before.upstream_micros,
        }
    }
}

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

    async fn dynamo(
        self: &Arc<Self>,
        op: String,
        parts: &http::request::Parts,
        body: Bytes,
    ) -> HttpResponse {
        if let Some(auth) = parts.headers.get(header::AUTHORIZATION) {
            self.lock().authorization = Some(auth.clone());
        }
        let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let table = request["TableName"].as_str().unwrap_or_default().to_owned();
        match op.as_str() {
            "PutItem" | "UpdateItem" | "DeleteItem" => self.write(op, &request, parts, body).await,
            "GetItem" => {
                let group = self.key_group(request["Key"].as_object().unwrap_or(&Item::new()));
                let response = self.forward(parts, body).await;
                let consistent = request["ConsistentRead"].as_bool() == Some(true);
                if response.status().is_success() {
                    let answer: Value =
                        serde_json::from_slice(response.body()).unwrap_or(Value::Null);
                    let bytes = answer["Item"].as_object().map_or(0, item_size);
                    self.add_read(&op, group, bytes, consistent);
                }
                response
            }
            "Query" | "Scan" => {
                let group = match request["IndexName"].as_str() {
                    Some(index) => format!("index:{index}"),
                    None => "table".to_owned(),
                };
                // Index queries are always eventually consistent.
                let consistent = request["ConsistentRead"].as_bool() == Some(true)
                    && request["IndexName"].is_null();
                let response = self.forward(parts, body).await;
                if response.status().is_success() {
                    let answer: Value =
                        serde_json::from_slice(response.body()).unwrap_or(Value::Null);
                    let bytes = answer["Items"].as_array().map_or(0, |items| {
                        items
                            .iter()
                            .filter_map(Value::as_object)
                            .map(item_size)
                            .sum()
                    });
                    self.add_read(&op, group, bytes, consistent);
                }
                response
            }
            "BatchWriteItem"
            | "BatchGetItem"
            | "TransactWriteItems"
            | "TransactGetItems"
            | "ExecuteStatement"
            | "BatchExecuteStatement"
            | "ExecuteTransaction" => {
                self.unmetered(format!("DynamoDB {op}"));
                self.count_request("dynamodb", &op);
                self.forward(parts, body).await
            }
            // Control plane (CreateTable, UpdateTimeToLive, …): not billed per request.
            _ => {
                self.count_request("dynamodb", &op);
                let response = self.forward(parts, body).await;
                if op == "CreateTable" && response.status().is_success() {
                    self.lock().tables.insert(table);
                }
                response
            }
        }
    }

    /// A write, priced by the larger of its item before and after. Before comes from the
    /// meter's copy of the item (every write since the table was created passes here) or
    /// else a read; after from the request (PutItem, DeleteItem) or, for UpdateItem, a read
    /// made once the answer is on its way: the handler's time never includes the meter's
    /// own reads. The item stays locked until its copy is current, so writes to one item
    /// are priced in order.
    async fn write(
        self: &Arc<Self>,
        op: String,
        request: &Value,
        parts: &http::request::Parts,
        body: Bytes,
    ) -> HttpResponse {
        let table = request["TableName"].as_str().unwrap_or_default().to_owned();
        let put = request["Item"].as_object().cloned();
        let key: Item = match (&put, request["Key"].as_object()) {
            (Some(item), _) if op == "PutItem" => self
                .table_keys
                .iter()
                .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
                .collect(),
            (_, Some(key)) => key.clone(),
            _ => Item::new(),
        };
        let id = self.item_id(&table, &key);
        let guard = self.item_lock(&id).lock_owned().await;
        let (copy, table_known) = {
            let state = self.lock();
            (state.items.get(&id).cloned(), state.tables.contains(&table))
        };
        let before = match copy {
            Some(item) => Ok(item),
            None if table_known => Ok(None),
            None => self.read_item(&table, &key).await,
        };
        let response = self.forward(parts, body).await;
        let written = response.status().is_success();
        let refused = !written
            && String::from_utf8_lossy(response.body()).contains("ConditionalCheckFailedException");
        self.pending.fetch_add(1, Ordering::SeqCst);
        let meter = self.clone();
        tokio::spawn(async move {
            let _item_locked = guard;
            let after = match op.as_str() {
                _ if !written => before.clone(),
                "PutItem" => Ok(put),
                "DeleteItem" => Ok(None),
                _ => meter.read_item(&table, &key).await,
            };
            let mut capacity = Capacity {
                calls: 1,
                ..Capacity::default()
            };
            match (&before, &after) {
                (Ok(before), Ok(after)) => {
                    let size = |i: &Option<Item>| i.as_ref().map_or(0, item_size);
                    if written {
                        capacity.write_units = write_units(size(before).max(size(after)));
                        capacity.index_write_units = meter
                            .indexes
                            .iter()
                            .map(|index| {
                                index.write_units(
                                    before.as_ref(),
                                    after.as_ref(),
                                    &meter.table_keys,
                                )
                            })
                            .sum();
                    } else if refused {
                        // A refused condition is billed by the item that is there.
                        capacity.write_units = write_units(size(before));
                        capacity.failed_conditions = 1;
                    }
                }
                _ => meter.unmetered(format!("DynamoDB {op} (item not readable)")),
            }
            meter.add_dynamo(&op, meter.key_group(&key), capacity);
            match after {
                Ok(after) => meter.lock().items.insert(id, after),
                Err(_) => meter.lock().items.remove(&id),
            };
            meter.pending.fetch_sub(1, Ordering::SeqCst);
        });
        response
    }

    /// Waits until every write's pricing is done (they finish after their answers).
    pub async fn settled(&self) {
        while self.pending.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One item's identity: its table and key attributes, in the table's key order.
    fn item_id(&self, table: &str, key: &Item) -> String {
        let mut id = table.to_owned();
        for name in &self.table_keys {
            id.push('\n');
            id.push_str(&key.get(name).map(Value::to_string).unwrap_or_default());
        }
        id
    }

    fn key_group(&self, key: &Item) -> String {
        let pk = self
            .table_keys
            .first()
            .and_then(|k| key.get(k))
            .and_then(|v| v.as_object())
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_default();
        key_prefix(pk)
    }

    fn item_lock(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.item_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.to_owned())
            .or_default()
            .clone()
    }

    /// One read call that returned `bytes` of items.
    fn add_read(&self, op: &str, group: String, bytes: u64, consistent: bool) {
        let capacity = Capacity {
            calls: 1,
            read_units: read_units(bytes, consistent),
            ..Capacity::default()
        };
        self.add_dynamo(op, group, capacity);
    }

    fn add_dynamo(&self, op: &str, group: String, capacity: Capacity) {
        let mut state = self.lock();
        *state
            .tally
            .requests
            .entry(("dynamodb".into(), op.to_owned()))
            .or_default() += 1;
        let entry = state
            .tally
            .dynamo
            .entry((op.to_owned(), group))
            .or_default();
        entry.calls += capacity.calls;
        entry.write_units += capacity.write_units;
        entry.index_write_units += capacity.index_write_units;
        entry.read_units += capacity.read_units;
        entry.failed_conditions += capacity.failed_conditions;
    }

    fn count_request(&self, service: &str, op: &str) {
        *self
            .lock()
            .tally
            .requests
            .entry((service.to_owned(), op.to_owned()))
            .or_default() += 1;
    }

    fn unmetered(&self, what: String) {
        *self.lock().tally.unmetered.entry(what).or_default() += 1;
    }

    /// The item as it is now, read consistently straight from the emulator (not counted).
    async fn read_item(&self, table: &str, key: &Item) -> Result<Option<Item>, String> {
        let answer = self
            .call_dynamo(
                "GetItem",
                json!({"TableName": table, "Key": key, "ConsistentRead": true}),
            )
            .await?;
        Ok(answer["Item"].as_object().cloned())
    }

    async fn call_dynamo(&self, op: &str, body: Value) -> Result<Value, String> {
        let authorization = self.lock().authorization.clone();
        let mut request = self
            .http
            .post(format!("{}/", self.upstream))
            .header(header::CONTENT_TYPE, "application/x-amz-json-1.0")
            .header("x-amz-target", format!("DynamoDB_20120810.{op}"))
            .body(body.to_string());
        if let Some(authorization) = authorization {
            request = request.header(header::AUTHORIZATION, authorization);
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let text = response.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{op}: {status} {text}"));
        }
        serde_json::from_str(&text).map_err(|e| e.to_string())
    }

    /// Every item of `table` with its size (an uncounted scan), for storage pricing.
    pub async fn stored_items(
        &self,
        table: &str,
        ttl_attribute: Option<&str>,
    ) -> Result<Vec<StoredItem>, String> {
        let mut items = Vec::new();
        let mut start: Option<Value> = None;
        loop {
            let mut request = json!({"TableName": table});
            if let Some(start) = start.take() {
                request["ExclusiveStartKey"] = start;
            }
            let answer = self.call_dynamo("Scan", request).await?;
            for item in answer["Items"].as_array().into_iter().flatten() {
                let Some(item) = item.as_object() else {
                    continue;
                };
                let attribute = |name: &str| {
                    item.get(name)
                        .and_then(Value::as_object)
                        .and_then(|v| v.values().next())
                        .and_then(Value::as_str)
                };
                items.push(StoredItem {
                    pk: self
                        .table_keys
                        .first()
                        .and_then(|k| attribute(k))
                        .unwrap_or_default()
                        .to_owned(),
                    bytes: item_size(item),
                    expires_at: ttl_attribute
                        .and_then(attribute)
                        .and_then(|v| v.parse().ok()),
                });
            }
            match answer.get("LastEvaluatedKey") {
                Some(key) if !key.is_null() => start = Some(key.clone()),
                _ => return Ok(items),
            }
        }
    }

    fn count_sqs(&self, op: &str, body: &[u8], response: &HttpResponse) {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let chunks = |bytes: u64| bytes.div_ceil(SQS_CHUNK_BYTES).max(1);
        let mut count = SqsCount {
            calls: 1,
            billed: 1,
            ..SqsCount::default()
        };
        match op {
            "SendMessage" => {
                count.billed = chunks(request["MessageBody"].as_str().map_or(0, str::len) as u64);
                count.messages = 1;
            }
            "SendMessageBatch" => {
                let entries = request["Entries"].as_array().cloned().unwrap_or_default();
                let bytes: usize = entries
                    .iter()
                    .filter_map(|e| e["MessageBody"].as_str())
                    .map(str::len)
                    .sum();
                count.billed = chunks(bytes as u64);
                count.messages = entries.len() as u64;
            }
            "ReceiveMessage" if response.status().is_success() => {
                let answer: Value = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
                let messages = answer["Messages"].as_array().cloned().unwrap_or_default();
                let bytes: usize = messages
                    .iter()
                    .filter_map(|m| m["Body"].as_str())
                    .map(str::len)
                    .sum();
                count.billed = chunks(bytes as u64);
                count.messages = messages.len() as u64;
                count.empty = u64::from(messages.is_empty());
            }
            _ => {}
        }
        let mut state = self.lock();
        *state
            .tally
            .requests
            .entry(("sqs".into(), op.to_owned()))
            .or_default() += 1;
        let entry = state.tally.sqs.entry(op.to_owned()).or_default();
        entry.calls += count.calls;
        entry.billed += count.billed;
        entry.empty += count.empty;
        entry.messages += count.messages;
    }

    fn count_s3(
        &self,
        request: S3Request,
        query: &str,
        headers: &HeaderMap,
        body: &[u8],
        response: &HttpResponse,
    ) {
        let key = request.key.clone().unwrap_or_default();
        let prefix = if request.key.is_some() {
            object_prefix(&key)
        } else {
            "(bucket)".to_owned()
        };
        // With aws-chunked uploads the body carries signatures; this header has the size.
        let size = headers
            .get("x-amz-decoded-content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(body.len() as u64);
        let param = |name: &str| {
            query.split('&').find_map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k == name).then(|| v.to_owned())
            })
        };
        let ok = response.status().is_success();
        let mut state = self.lock();
        let op_name = format!("{:?}", request.op);
        *state
            .tally
            .requests
            .entry(("s3".into(), op_name))
            .or_default() += 1;
        *state
            .tally
            .s3
            .entry((request.op, prefix, request.presigned))
            .or_default() += 1;
        if !ok {
            return;
        }
        let upload = || (key.clone(), param("uploadId").unwrap_or_default());
        match request.op {
            S3Op::PutObject | S3Op::CopyObject => set_object(&mut state, &key, Some(size)),
            S3Op::UploadPart => {
                let part = param("partNumber").unwrap_or_default();
                state
                    .uploads
                    .entry(upload())
                    .or_default()
                    .insert(part, size);
            }
            S3Op::CompleteMultipartUpload => {
                let total = state
                    .uploads
                    .remove(&upload())
                    .map(|parts| parts.values().sum());
                set_object(&mut state, &key, total);
            }
            S3Op::AbortMultipartUpload => {
                state.uploads.remove(&upload());
            }
            S3Op::DeleteObject => set_object(&mut state, &key, None),
            S3Op::GetObject if request.presigned => {
                state.tally.downloaded_bytes += response.body().len() as u64;
            }
            _ => {}
        }
    }
}

/// Records `key`'s new size (`None`: deleted) in the per-prefix totals.
fn set_object(state: &mut State, key: &str, size: Option<u64>) {
    let old = match size {
        Some(size) => state.objects.insert(key.to_owned(), size),
        None => state.objects.remove(key),
    };
    let stored = state.tally.stored.entry(object_prefix(key)).or_default();
    match (old, size) {
        (None, Some(new)) => {
            stored.objects += 1;
            stored.bytes += new;
        }
        (Some(old), Some(new)) => stored.bytes = (stored.bytes + new).saturating_sub(old),
        (Some(old), None) => {
            stored.objects = stored.objects.saturating_sub(1);
            stored.bytes = stored.bytes.saturating_sub(old);
        }
        (None, None) => {}
    }
}

fn too_large() -> HttpResponse {
    let mut response = http::Response::new(Bytes::from_static(b"meter: request body too large"));
    *response.status_mut() = StatusCode::PAYLOAD_TOO_LARGE;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwrites_and_deletes_keep_stored_bytes_right() {
        let mut state = State::default();
        set_object(&mut state, "outputs/a/0.webp", Some(100));
        set_object(&mut state, "outputs/a/0.webp", Some(120));
        set_object(&mut state, "inputs/x", Some(7));
        assert_eq!(
            state.tally.stored["outputs/"],
            Stored {
                objects: 1,
                bytes: 120
            }
        );
        set_object(&mut state, "inputs/x", None);
        assert_eq!(state.tally.stored["inputs/"], Stored::default());
    }

    #[test]
    fn phases_subtract() {
        let mut before = Tally::default();
        before.sqs.insert(
            "SendMessage".into(),
            SqsCount {
                calls: 2,
                billed: 2,
                empty: 0,
                messages: 2,
            },
        );
        let mut after = before.clone();
        after.sqs.get_mut("SendMessage").unwrap().calls += 3;
        after.downloaded_bytes = 10;
        let delta = after.since(&before);
        assert_eq!(delta.sqs["SendMessage"].calls, 3);
        assert_eq!(delta.downloaded_bytes, 10);
    }
}
