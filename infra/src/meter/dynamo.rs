//! Pricing DynamoDB calls as they pass the meter: the capacity units each would bill (a
//! write's units from the item's size before and after, its index entries included), read
//! from the meter's own copy of every item written through it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header;
use serde_json::{Value, json};

use super::classify::key_prefix;
use super::size::{item_size, read_units, write_units};
use super::tally::Capacity;
use super::{Item, Meter, StoredItem};
use crate::http_server::HttpResponse;

impl Meter {
    pub(super) async fn dynamo(
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
}
