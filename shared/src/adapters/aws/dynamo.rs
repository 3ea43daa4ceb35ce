//! The record store on DynamoDB: one table, string partition key `pk`, TTL on `expires_at`.
//! Every item is converted to and from Rust types here and nowhere else.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use crate::domain::callbacks::{CallbackEvent, CallbackState, CallbackStatus, CallbackTarget};
use crate::domain::claims::{Claim, ClaimGuard};
use crate::domain::claims::{ClaimOutcome, Settlement};
use crate::domain::cost::{CostSettlement, Reservation, Usage, usage_key};
use crate::domain::ids::PredictionId;
use crate::domain::pacing::{CreateSlot, Pace};
use crate::domain::record::{Advance, PredictionRecord, QueueState};
use crate::domain::replicate::{Deadline, PredictionStatus};
use crate::domain::tenancy::{
    DEFAULT_RATE_PER_MINUTE, KeyHash, KeyId, KeyRecord, LimitsUpdate, RateWindow, TenantId,
    TenantLimits,
};
use crate::domain::time::Timestamp;
use crate::domain::uploads::{ImageKind, UploadId, UploadRecord};
use crate::ports::StoreError;
use crate::ports::accounts::AccountStore;
use crate::ports::records::{
    ListCursor, OpenEntry, OpenPage, RecordStore, SyncMark, TenantPage, open_shard,
};

type Item = HashMap<String, AttributeValue>;

pub const TTL_ATTRIBUTE: &str = "expires_at";

/// A sparse index of the predictions still running: only they carry `open_shard` (one of
/// `ports::OPEN_SHARDS`), which a terminal update removes. Only its keys are read, so it
/// may project keys only. The reconciler queries it.
pub const OPEN_INDEX: &str = "open-index";
pub const OPEN_SHARD_ATTRIBUTE: &str = "open_shard";

/// A tenant's predictions, newest first, for `GET /v1/predictions`: keyed on the record's
/// `owner` (only prediction items carry it) and creation time; keys only, so it is written
/// once, when the record is stored.
pub const TENANT_INDEX: &str = "tenant-index";
pub const TENANT_ATTRIBUTE: &str = "owner";

#[derive(Debug, Clone)]
pub struct DynamoRecords {
    client: Client,
    table: String,
}

impl DynamoRecords {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

fn prediction_pk(id: &PredictionId) -> AttributeValue {
    AttributeValue::S(format!("pred#{id}"))
}

/// The item that binds a Replicate prediction to the one record of ours it belongs to.
fn binding_pk(replicate_id: &str) -> AttributeValue {
    AttributeValue::S(format!("replicate#{replicate_id}"))
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Times are stored as milliseconds since the epoch (TTL attributes, in seconds, are not
/// times of this kind: they are written with `n`).
fn time(t: Timestamp) -> AttributeValue {
    n(t.as_millis())
}

fn failed<E: std::error::Error>(operation: &'static str, err: E) -> StoreError {
    StoreError::new(operation, DisplayErrorContext(err).to_string())
}

fn read_s(item: &Item, name: &str) -> Result<String, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(StoreError::new(
            "read item",
            format!("attribute `{name}` missing or not a string"),
        )),
    }
}

fn read_opt_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

fn read_opt_n(item: &Item, name: &str) -> Option<u64> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

fn read_n(item: &Item, name: &str) -> Result<u64, StoreError> {
    read_opt_n(item, name).ok_or_else(|| {
        StoreError::new(
            "read item",
            format!("attribute `{name}` missing or not a number"),
        )
    })
}

fn read_time(item: &Item, name: &str) -> Result<Timestamp, StoreError> {
    read_n(item, name).map(Timestamp::from_millis)
}

fn read_opt_time(item: &Item, name: &str) -> Option<Timestamp> {
    read_opt_n(item, name).map(Timestamp::from_millis)
}

fn read_json<T: serde::de::DeserializeOwned>(
    item: &Item,
    name: &str,
) -> Result<Option<T>, StoreError> {
    read_opt_s(item, name)
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| StoreError::new("read item", format!("attribute `{name}`: {e}")))
}

fn json_attr<T: serde::Serialize>(value: &T) -> Result<AttributeValue, StoreError> {
    serde_json::to_string(value)
        .map(AttributeValue::S)
        .map_err(|e| StoreError::new("write item", e.to_string()))
}

/// The record as a DynamoDB item. `rank` mirrors the status's place in the lifecycle so
/// forward-only updates are a numeric condition.
fn prediction_to_item(r: &PredictionRecord) -> Result<Item, StoreError> {
    let mut item = Item::from([
        ("pk".to_owned(), prediction_pk(&r.id)),
        ("alias".to_owned(), s(&r.alias)),
        ("model".to_owned(), s(&r.model)),
        ("input".to_owned(), json_attr(&r.input)?),
        ("status".to_owned(), s(r.status.as_str())),
        (
            "rank".to_owned(),
            n(u64::from(r.status.progress_rank().unwrap_or(0))),
        ),
        ("outputs".to_owned(), json_attr(&r.outputs)?),
        ("created_at".to_owned(), time(r.created_at)),
        (TTL_ATTRIBUTE.to_owned(), n(r.expires_at)),
        ("cost_estimate".to_owned(), n(r.cost_estimate)),
    ]);
    let optional = [
        ("replicate_id", r.replicate_id.clone().map(s)),
        ("version", r.version.clone().map(s)),
        ("error", r.error.clone().map(s)),
        ("metrics", r.metrics.as_ref().map(json_attr).transpose()?),
        ("started_at", r.started_at.map(time)),
        ("completed_at", r.completed_at.map(time)),
        ("synced_at", r.synced_at.map(time)),
        ("copy_queued_at", r.copy_queued_at.map(time)),
        ("cancel_requested_at", r.cancel_requested_at.map(time)),
        ("webhook_token", r.webhook_token.clone().map(s)),
        (TENANT_ATTRIBUTE, r.tenant.as_ref().map(|t| s(t.as_str()))),
        ("price", r.price.as_ref().map(json_attr).transpose()?),
        ("cost", r.cost.map(n)),
        (
            "input_files",
            (!r.input_files.is_empty())
                .then(|| json_attr(&r.input_files))
                .transpose()?,
        ),
        (
            "callback",
            r.callback
                .as_ref()
                .map(|c| json_attr(&c.target))
                .transpose()?,
        ),
        (
            "callback_event",
            r.callback
                .as_ref()
                .and_then(|c| c.event)
                .map(|e| s(e.as_str())),
        ),
        (
            "callback_status",
            r.callback
                .as_ref()
                .and_then(|c| c.status)
                .map(|st| s(st.as_str())),
        ),
        (
            "callback_attempts",
            r.callback
                .as_ref()
                .filter(|c| c.attempts > 0)
                .map(|c| n(u64::from(c.attempts))),
        ),
        ("queue_slot_at", r.queue.as_ref().map(|q| time(q.slot_at))),
        (
            "queue_webhook_base",
            r.queue.as_ref().map(|q| s(&q.webhook_base)),
        ),
        (
            "queue_deadline",
            r.queue
                .as_ref()
                .filter(|q| q.deadline != Deadline::MAX)
                .map(|q| s(q.deadline.to_string())),
        ),
        (
            CREATE_SENT_ATTRIBUTE,
            r.queue.as_ref().and_then(|q| q.sent_at).map(time),
        ),
    ];
    if !r.status.is_terminal() {
        item.insert(OPEN_SHARD_ATTRIBUTE.to_owned(), s(open_shard(&r.id)));
    }
    item.extend(
        optional
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v))),
    );
    Ok(item)
}

/// A prediction item's id, from its key (no copy is stored: every byte of a record is paid
/// on each write).
fn prediction_id_of(item: &Item) -> Result<PredictionId, StoreError> {
    read_s(item, "pk")?
        .strip_prefix("pred#")
        .and_then(|id| PredictionId::parse(id).ok())
        .ok_or_else(|| StoreError::new("read item", "`pk` is not a prediction's"))
}

fn prediction_from_item(item: &Item) -> Result<PredictionRecord, StoreError> {
    let id = prediction_id_of(item)?;
    Ok(PredictionRecord {
        id,
        replicate_id: read_opt_s(item, "replicate_id"),
        alias: read_s(item, "alias")?,
        model: read_s(item, "model")?,
        version: read_opt_s(item, "version"),
        input: read_json(item, "input")?.unwrap_or_default(),
        status: PredictionStatus::parse(&read_s(item, "status")?),
        outputs: read_json(item, "outputs")?.unwrap_or_default(),
        error: read_opt_s(item, "error"),
        metrics: read_json(item, "metrics")?,
        created_at: read_time(item, "created_at")?,
        started_at: read_opt_time(item, "started_at"),
        completed_at: read_opt_time(item, "completed_at"),
        synced_at: read_opt_time(item, "synced_at"),
        copy_queued_at: read_opt_time(item, "copy_queued_at"),
        cancel_requested_at: read_opt_time(item, "cancel_requested_at"),
        expires_at: read_n(item, TTL_ATTRIBUTE)?,
        webhook_token: read_opt_s(item, "webhook_token"),
        tenant: read_opt_s(item, TENANT_ATTRIBUTE)
            .map(|t| TenantId::parse(&t))
            .transpose()
            .map_err(|e| StoreError::new("read item", format!("attribute `owner`: {e}")))?,
        price: read_json(item, "price")?,
        cost_estimate: read_opt_n(item, "cost_estimate").unwrap_or(0),
        cost: read_opt_n(item, "cost"),
        input_files: read_json(item, "input_files")?.unwrap_or_default(),
        callback: read_json::<CallbackTarget>(item, "callback")?.map(|target| CallbackState {
            target,
            event: read_opt_s(item, "callback_event").and_then(|e| CallbackEvent::parse(&e)),
            status: read_opt_s(item, "callback_status").and_then(|st| CallbackStatus::parse(&st)),
            attempts: read_opt_n(item, "callback_attempts")
                .map_or(0, |a| u32::try_from(a).unwrap_or(u32::MAX)),
        }),
        queue: read_queue(item)?,
    })
}

fn read_queue(item: &Item) -> Result<Option<QueueState>, StoreError> {
    let Some(slot_at) = read_opt_time(item, "queue_slot_at") else {
        return Ok(None);
    };
    let deadline = match read_opt_s(item, "queue_deadline") {
        Some(text) => Deadline::parse(&text)
            .map_err(|e| StoreError::new("read item", format!("`queue_deadline`: {e}")))?,
        None => Deadline::MAX,
    };
    Ok(Some(QueueState {
        slot_at,
        webhook_base: read_s(item, "queue_webhook_base")?,
        deadline,
        sent_at: read_opt_time(item, CREATE_SENT_ATTRIBUTE),
    }))
}

/// When a queued prediction's create was claimed by a drainer (README, "Bursts").
const CREATE_SENT_ATTRIBUTE: &str = "create_sent_at";
/// The create pacer's one item: the theoretical arrival time of the next create slot.
const PACER_PK: &str = "pace#creates";
/// Conditional writes one reservation may try before giving up (each refused one means
/// another instance got a slot meanwhile).
const PACER_ROUNDS: usize = 32;
/// `rank` of a terminal status.
fn terminal_rank() -> u64 {
    u64::from(
        PredictionStatus::Succeeded
            .progress_rank()
            .unwrap_or(u8::MAX),
    )
}

fn claim_to_item(c: &Claim) -> Item {
    let mut item = Item::from([
        ("pk".to_owned(), s(&c.key)),
        ("token".to_owned(), s(&c.token)),
        ("lease_until".to_owned(), time(c.lease_until)),
        (TTL_ATTRIBUTE.to_owned(), n(c.expires_at)),
        ("from_cache".to_owned(), AttributeValue::Bool(c.from_cache)),
    ]);
    if let Some(id) = &c.prediction_id {
        item.insert("prediction_id".to_owned(), s(id.as_str()));
    }
    if let Some(hash) = &c.request_hash {
        item.insert("request_hash".to_owned(), s(hash));
    }
    item
}

fn claim_from_item(item: &Item) -> Result<Claim, StoreError> {
    let prediction_id = read_opt_s(item, "prediction_id")
        .map(|s| PredictionId::parse(&s))
        .transpose()
        .map_err(|e| StoreError::new("read claim", e.to_string()))?;
    Ok(Claim {
        key: read_s(item, "pk")?,
        token: read_s(item, "token")?,
        prediction_id,
        request_hash: read_opt_s(item, "request_hash"),
        lease_until: read_time(item, "lease_until")?,
        expires_at: read_n(item, TTL_ATTRIBUTE)?,
        from_cache: matches!(item.get("from_cache"), Some(AttributeValue::Bool(true))),
    })
}

/// Condition (with its value) that `guard` still holds a claim.
fn guard_condition(guard: ClaimGuard<'_>) -> (&'static str, AttributeValue) {
    match guard {
        ClaimGuard::Token(token) => ("#token = :guard", s(token)),
        ClaimGuard::Prediction(id) => ("#prediction_id = :guard", s(id.as_str())),
    }
}

/// Builds `SET #a = :a, …` / `REMOVE #b` for an advance. Every attribute is referred to
/// by a `#name` placeholder: several (`status`, `metrics`, `token`, …) are DynamoDB
/// reserved words.
fn advance_expression(advance: &Advance) -> Result<(String, Item), StoreError> {
    let rank = advance.status.progress_rank().unwrap_or(0);
    let mut values = Item::from([
        (":status".to_owned(), s(advance.status.as_str())),
        (":rank".to_owned(), n(u64::from(rank))),
        (":outputs".to_owned(), json_attr(&advance.outputs)?),
    ]);
    let mut set = vec!["#status = :status", "#rank = :rank", "#outputs = :outputs"];
    let mut remove = Vec::new();
    match &advance.error {
        Some(error) => {
            set.push("#error = :error");
            values.insert(":error".to_owned(), s(error));
        }
        None => remove.push("#error"),
    }
    if advance.status.is_terminal() && !advance.keep_open {
        remove.push("#open_shard");
    }
    if let Some(metrics) = &advance.metrics {
        set.push("#metrics = :metrics");
        values.insert(":metrics".to_owned(), json_attr(metrics)?);
    }
    if let Some(cost) = advance.cost {
        set.push("#cost = :cost");
        values.insert(":cost".to_owned(), n(cost));
    }
    if let Some(rid) = &advance.replicate_id {
        values.insert(":rid".to_owned(), s(rid));
    }
    if let Some(t) = advance.started_at {
        set.push("#started_at = if_not_exists(#started_at, :started)");
        values.insert(":started".to_owned(), time(t));
    }
    if let Some(t) = advance.completed_at {
        set.push("#completed_at = if_not_exists(#completed_at, :completed)");
        values.insert(":completed".to_owned(), time(t));
    }
    let mut expression = format!("SET {}", set.join(", "));
    if !remove.is_empty() {
        expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
    }
    Ok((expression, values))
}

/// `#name → name` for every `#name` placeholder in `expressions`: each placeholder stands
/// for the attribute of the same name, so none can be forgotten.
fn names_in(expressions: &[&str]) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for expression in expressions {
        for (start, _) in expression.match_indices('#') {
            let name: String = expression[start + 1..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(format!("#{name}"), name);
            }
        }
    }
    names
}

/// What a conditional put found.
enum PutOutcome {
    Written,
    /// The condition failed; this is the item that is there.
    Refused(Item),
}

impl DynamoRecords {
    /// A `PutItem` that applies only if `condition` holds; when it does not, the item in the
    /// way comes back in the same round trip (`ReturnValuesOnConditionCheckFailure=ALL_OLD`).
    async fn put_if(
        &self,
        operation: &'static str,
        item: Item,
        condition: &str,
        values: Option<Item>,
    ) -> Result<PutOutcome, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names_in(&[condition])))
            .set_expression_attribute_values(values)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result.map_err(|e| e.into_service_error()) {
            Ok(_) => Ok(PutOutcome::Written),
            Err(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(e)) => Ok(
                PutOutcome::Refused(e.item().cloned().unwrap_or_default()),
            ),
            Err(other) => Err(failed(operation, other)),
        }
    }

    /// An unconditional `UpdateItem` on `pk` (counters: `ADD` is atomic by itself).
    async fn update(
        &self,
        operation: &'static str,
        pk: AttributeValue,
        update: &str,
        values: Item,
    ) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk)
            .update_expression(update)
            .set_expression_attribute_names(Some(names_in(&[update])))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(|e| failed(operation, e))?;
        Ok(())
    }

    /// A strongly consistent `GetItem` of `pk`: every caller needs the latest write (a
    /// record's state, a key created a moment ago, the month's spend).
    async fn get_item(
        &self,
        operation: &'static str,
        pk: AttributeValue,
    ) -> Result<Option<Item>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", pk)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failed(operation, e))?;
        Ok(output.item)
    }

    /// An `UpdateItem` on `pk` that applies only if `condition` holds; `Ok(false)` if not.
    async fn update_if(
        &self,
        operation: &'static str,
        pk: AttributeValue,
        update: &str,
        condition: &str,
        values: Item,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk)
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names_in(&[update, condition])))
            // DynamoDB refuses an empty map (an expression without values).
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .send()
            .await;
        conditional(operation, result.map_err(|e| e.into_service_error()))
    }
}

impl RecordStore for DynamoRecords {
    async fn try_claim(&self, claim: &Claim) -> Result<ClaimOutcome, StoreError> {
        match self
            .put_if(
                "claim",
                claim_to_item(claim),
                "attribute_not_exists(#pk)",
                None,
            )
            .await?
        {
            PutOutcome::Written => Ok(ClaimOutcome::Claimed),
            PutOutcome::Refused(held) => Ok(ClaimOutcome::HeldBy(claim_from_item(&held)?)),
        }
    }

    async fn replace_claim(&self, claim: &Claim, expected_token: &str) -> Result<bool, StoreError> {
        let values = Item::from([(":expected".to_owned(), s(expected_token))]);
        let outcome = self
            .put_if(
                "replace claim",
                claim_to_item(claim),
                "#token = :expected",
                Some(values),
            )
            .await?;
        Ok(matches!(outcome, PutOutcome::Written))
    }

    async fn settle_claim(
        &self,
        key: &str,
        guard: ClaimGuard<'_>,
        settlement: &Settlement<'_>,
    ) -> Result<bool, StoreError> {
        let (guard, guard_value) = guard_condition(guard);
        let condition = format!("{guard} AND #lease_until <= :lease");
        let values = Item::from([
            (":pid".to_owned(), s(settlement.prediction_id.as_str())),
            (":lease".to_owned(), time(settlement.lease_until)),
            (
                ":cached".to_owned(),
                AttributeValue::Bool(settlement.from_cache),
            ),
            (":guard".to_owned(), guard_value),
        ]);
        let update = "SET #prediction_id = :pid, #lease_until = :lease, #from_cache = :cached";
        self.update_if("settle claim", s(key), update, &condition, values)
            .await
    }

    async fn release_claim(&self, key: &str, guard: ClaimGuard<'_>) -> Result<bool, StoreError> {
        let (condition, guard_value) = guard_condition(guard);
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names_in(&[condition])))
            .expression_attribute_values(":guard", guard_value)
            .send()
            .await;
        conditional("release claim", result.map_err(|e| e.into_service_error()))
    }

    async fn insert_prediction(&self, record: &PredictionRecord) -> Result<(), StoreError> {
        match self
            .put_if(
                "insert prediction",
                prediction_to_item(record)?,
                "attribute_not_exists(#pk)",
                None,
            )
            .await?
        {
            PutOutcome::Written => Ok(()),
            PutOutcome::Refused(_) => Err(StoreError::new("insert prediction", "the id exists")),
        }
    }

    async fn get_prediction(
        &self,
        id: &PredictionId,
    ) -> Result<Option<PredictionRecord>, StoreError> {
        self.get_item("get prediction", prediction_pk(id))
            .await?
            .as_ref()
            .map(prediction_from_item)
            .transpose()
    }

    async fn attach_replicate_id(
        &self,
        id: &PredictionId,
        replicate_id: &str,
        expires_at: u64,
    ) -> Result<bool, StoreError> {
        // First the binding: it decides which record owns the Replicate prediction.
        let binding = Item::from([
            ("pk".to_owned(), binding_pk(replicate_id)),
            ("prediction_id".to_owned(), s(id.as_str())),
            (TTL_ATTRIBUTE.to_owned(), n(expires_at)),
        ]);
        let mine = Item::from([(":id".to_owned(), s(id.as_str()))]);
        let bound = self
            .put_if(
                "bind replicate id",
                binding,
                "attribute_not_exists(#pk) OR #prediction_id = :id",
                Some(mine.clone()),
            )
            .await?;
        if matches!(bound, PutOutcome::Refused(_)) {
            return Ok(false);
        }
        let update = "SET #replicate_id = :rid";
        let condition = "attribute_exists(#pk) AND (attribute_not_exists(#replicate_id) OR #replicate_id = :rid)";
        let values = Item::from([(":rid".to_owned(), s(replicate_id))]);
        if self
            .update_if(
                "attach replicate id",
                prediction_pk(id),
                update,
                condition,
                values,
            )
            .await?
        {
            return Ok(true);
        }
        // The record has another id (or is gone): give the binding back, so the Replicate
        // prediction can still go to the record it belongs to.
        let released = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", binding_pk(replicate_id))
            .condition_expression("#prediction_id = :id")
            .set_expression_attribute_names(Some(names_in(&["#prediction_id = :id"])))
            .set_expression_attribute_values(Some(mine))
            .send()
            .await;
        conditional(
            "unbind replicate id",
            released.map_err(|e| e.into_service_error()),
        )?;
        Ok(false)
    }

    async fn advance(&self, id: &PredictionId, advance: &Advance) -> Result<bool, StoreError> {
        if advance.status.progress_rank().is_none() {
            return Ok(false);
        }
        let (update, values) = advance_expression(advance)?;
        let mut condition = "attribute_exists(#pk) AND #rank < :rank".to_owned();
        condition.push_str(match advance.replicate_id {
            Some(_) => " AND #replicate_id = :rid",
            None => " AND attribute_not_exists(#replicate_id)",
        });
        self.update_if(
            "advance prediction",
            prediction_pk(id),
            &update,
            &condition,
            values,
        )
        .await
    }

    async fn claim_sync(
        &self,
        id: &PredictionId,
        mark: SyncMark,
        now: Timestamp,
        not_since: Timestamp,
    ) -> Result<bool, StoreError> {
        let (update, condition) = match mark {
            SyncMark::Fetched => (
                "SET #synced_at = :now",
                "attribute_exists(#pk) AND (attribute_not_exists(#synced_at) OR #synced_at < :since)",
            ),
            SyncMark::CopyQueued => (
                "SET #copy_queued_at = :now",
                "attribute_exists(#pk) AND (attribute_not_exists(#copy_queued_at) OR #copy_queued_at < :since)",
            ),
            SyncMark::CancelRequested => (
                "SET #cancel_requested_at = :now",
                "attribute_exists(#pk) AND (attribute_not_exists(#cancel_requested_at) OR #cancel_requested_at < :since)",
            ),
        };
        let values = Item::from([
            (":now".to_owned(), time(now)),
            (":since".to_owned(), time(not_since)),
        ]);
        self.update_if("claim sync", prediction_pk(id), update, condition, values)
            .await
    }

    async fn claim_create(&self, id: &PredictionId, now: Timestamp) -> Result<bool, StoreError> {
        let condition = "attribute_exists(#pk) AND attribute_exists(#queue_slot_at) \
            AND attribute_not_exists(#create_sent_at) AND attribute_not_exists(#replicate_id) \
            AND attribute_not_exists(#cancel_requested_at) AND #rank < :terminal";
        let values = Item::from([
            (":now".to_owned(), time(now)),
            (":terminal".to_owned(), n(terminal_rank())),
        ]);
        self.update_if(
            "claim create",
            prediction_pk(id),
            "SET #create_sent_at = :now",
            condition,
            values,
        )
        .await
    }

    async fn mark_queued(&self, id: &PredictionId, queue: &QueueState) -> Result<bool, StoreError> {
        let mut update = "SET #queue_slot_at = :slot, #queue_webhook_base = :base".to_owned();
        let mut values = Item::from([
            (":slot".to_owned(), time(queue.slot_at)),
            (":base".to_owned(), s(&queue.webhook_base)),
            (":terminal".to_owned(), n(terminal_rank())),
        ]);
        if queue.deadline != Deadline::MAX {
            update.push_str(", #queue_deadline = :deadline");
            values.insert(":deadline".to_owned(), s(queue.deadline.to_string()));
        }
        let condition = "attribute_exists(#pk) AND attribute_not_exists(#replicate_id) \
            AND attribute_not_exists(#queue_slot_at) AND #rank < :terminal";
        self.update_if(
            "queue create",
            prediction_pk(id),
            &update,
            condition,
            values,
        )
        .await
    }

    async fn release_create(
        &self,
        id: &PredictionId,
        sent_at: Timestamp,
        slot_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let values = Item::from([
            (":sent".to_owned(), time(sent_at)),
            (":slot".to_owned(), time(slot_at)),
        ]);
        self.update_if(
            "release create",
            prediction_pk(id),
            "SET #queue_slot_at = :slot REMOVE #create_sent_at",
            "#create_sent_at = :sent AND attribute_not_exists(#replicate_id)",
            values,
        )
        .await
    }

    async fn reserve_create_slot(
        &self,
        pace: &Pace,
        now: Timestamp,
    ) -> Result<CreateSlot, StoreError> {
        // Optimistic: read the slot time, write the next one if nobody moved it meanwhile; a
        // refused write returns the winner's value, for the next round.
        let mut stored = self
            .get_item("read create pace", s(PACER_PK))
            .await?
            .and_then(|item| read_opt_time(&item, "tat"));
        for _ in 0..PACER_ROUNDS {
            let (slot, next) = pace.grant(stored, now);
            let Some(next) = next else {
                return Ok(slot);
            };
            let item = Item::from([
                ("pk".to_owned(), s(PACER_PK)),
                ("tat".to_owned(), time(next)),
            ]);
            let (condition, values) = match stored {
                None => ("attribute_not_exists(#pk)", None),
                Some(old) => (
                    "#tat = :old",
                    Some(Item::from([(":old".to_owned(), time(old))])),
                ),
            };
            match self
                .put_if("reserve create slot", item, condition, values)
                .await?
            {
                PutOutcome::Written => return Ok(slot),
                PutOutcome::Refused(winner) => stored = read_opt_time(&winner, "tat"),
            }
        }
        Err(StoreError::new(
            "reserve create slot",
            "too many concurrent writers of the create pace",
        ))
    }

    async fn callback_queued(
        &self,
        id: &PredictionId,
        event: CallbackEvent,
    ) -> Result<bool, StoreError> {
        // Events only move forward (`start`, then `completed`); an attempt that got in
        // before this note already set its event, and its status is kept.
        let (update, condition) = match event {
            CallbackEvent::Start => (
                "SET #callback_event = :event, #callback_status = :pending",
                "attribute_exists(#callback) AND attribute_not_exists(#callback_event)",
            ),
            CallbackEvent::Completed => (
                "SET #callback_event = :event, #callback_status = :pending REMOVE #open_shard",
                "attribute_exists(#callback) AND (attribute_not_exists(#callback_event) OR #callback_event <> :event)",
            ),
        };
        let values = Item::from([
            (":event".to_owned(), s(event.as_str())),
            (":pending".to_owned(), s(CallbackStatus::Pending.as_str())),
        ]);
        let noted = self
            .update_if(
                "note queued callback",
                prediction_pk(id),
                update,
                condition,
                values,
            )
            .await?;
        if !noted && event == CallbackEvent::Completed {
            // Noted already (by an earlier note or a quick attempt): it is queued, so the
            // record leaves the open index all the same.
            self.update_if(
                "note queued callback",
                prediction_pk(id),
                "REMOVE #open_shard",
                "attribute_exists(#open_shard)",
                Item::new(),
            )
            .await?;
        }
        Ok(noted)
    }

    async fn callback_attempted(
        &self,
        id: &PredictionId,
        event: CallbackEvent,
        status: CallbackStatus,
    ) -> Result<(), StoreError> {
        let values = Item::from([
            (":one".to_owned(), n(1)),
            (":event".to_owned(), s(event.as_str())),
            (":status".to_owned(), s(status.as_str())),
            (
                ":delivered".to_owned(),
                s(CallbackStatus::Delivered.as_str()),
            ),
        ]);
        // The attempt's event becomes the one shown unless a later one is (`completed` is
        // the last), and a delivered event never goes back (a duplicate job's failure).
        let condition = match event {
            CallbackEvent::Start => {
                "attribute_exists(#callback) AND (attribute_not_exists(#callback_event) OR #callback_event = :event) AND NOT (#callback_event = :event AND #callback_status = :delivered)"
            }
            CallbackEvent::Completed => {
                "attribute_exists(#callback) AND NOT (#callback_event = :event AND #callback_status = :delivered)"
            }
        };
        // A `completed` job exists, so the record is out of the open index whatever happened
        // to its queue note.
        let (update, count_only) = match event {
            CallbackEvent::Start => (
                "SET #callback_event = :event, #callback_status = :status ADD #callback_attempts :one",
                "ADD #callback_attempts :one",
            ),
            CallbackEvent::Completed => (
                "SET #callback_event = :event, #callback_status = :status ADD #callback_attempts :one REMOVE #open_shard",
                "ADD #callback_attempts :one REMOVE #open_shard",
            ),
        };
        let noted = self
            .update_if(
                "note callback attempt",
                prediction_pk(id),
                update,
                condition,
                values,
            )
            .await?;
        if noted {
            return Ok(());
        }
        // Another event is the one shown, or this one was delivered: only count the attempt.
        self.update_if(
            "note callback attempt",
            prediction_pk(id),
            count_only,
            "attribute_exists(#pk)",
            Item::from([(":one".to_owned(), n(1))]),
        )
        .await
        .map(|_| ())
    }

    async fn list_tenant(
        &self,
        tenant: &TenantId,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<TenantPage, StoreError> {
        let condition = "#owner = :owner";
        let start = cursor.map(|c| {
            Item::from([
                ("pk".to_owned(), prediction_pk(&c.id)),
                (TENANT_ATTRIBUTE.to_owned(), s(tenant.as_str())),
                ("created_at".to_owned(), time(c.created_at)),
            ])
        });
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(TENANT_INDEX)
            .key_condition_expression(condition)
            .set_expression_attribute_names(Some(names_in(&[condition])))
            .expression_attribute_values(":owner", s(tenant.as_str()))
            .scan_index_forward(false)
            .set_exclusive_start_key(start)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| failed("list predictions", e))?;
        let entries: Vec<OpenEntry> = output
            .items()
            .iter()
            .filter_map(|item| open_entry(item).ok())
            .collect();
        // DynamoDB may say there is more after a full last page; the page after it is then
        // empty. The cursor names the last entry read.
        let next = output
            .last_evaluated_key()
            .and(entries.last())
            .map(|last| ListCursor {
                created_at: last.created_at,
                id: last.id.clone(),
            });
        Ok(TenantPage { entries, next })
    }

    async fn list_open(
        &self,
        shard: &str,
        created_before: Timestamp,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<OpenPage, StoreError> {
        let condition = "#open_shard = :shard AND #created_at < :before";
        let start = cursor.map(|c| cursor_to_key(shard, c)).transpose()?;
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(OPEN_INDEX)
            .key_condition_expression(condition)
            .set_expression_attribute_names(Some(names_in(&[condition])))
            .expression_attribute_values(":shard", s(shard))
            .expression_attribute_values(":before", time(created_before))
            .set_exclusive_start_key(start)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| failed("list open predictions", e))?;
        // One unreadable item must not hide the rest from the reconciler.
        let entries = output
            .items()
            .iter()
            .filter_map(|item| match open_entry(item) {
                Ok(entry) => Some(entry),
                Err(err) => {
                    tracing::error!(error = %err, "unreadable entry in the open index");
                    None
                }
            })
            .collect();
        Ok(OpenPage {
            entries,
            next: output.last_evaluated_key().and_then(key_to_cursor),
        })
    }
}

fn key_pk(id: &KeyId) -> AttributeValue {
    s(format!("apikey#{id}"))
}

/// A signed number (DynamoDB's `ADD` subtracts a negative one).
fn signed(v: i128) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn key_to_item(key: &KeyRecord) -> Item {
    let mut item = Item::from([
        ("pk".to_owned(), key_pk(&key.id)),
        ("key_hash".to_owned(), s(key.hash.as_str())),
        ("tenant".to_owned(), s(key.tenant.as_str())),
        ("created_at".to_owned(), time(key.created_at)),
    ]);
    if let Some(at) = key.revoked_at {
        item.insert("revoked_at".to_owned(), time(at));
    }
    item
}

fn read_tenant(item: &Item) -> Result<TenantId, StoreError> {
    TenantId::parse(&read_s(item, "tenant")?)
        .map_err(|e| StoreError::new("read item", format!("attribute `tenant`: {e}")))
}

fn key_from_item(item: &Item) -> Result<KeyRecord, StoreError> {
    let hash = KeyHash::from_stored(read_s(item, "key_hash")?);
    Ok(KeyRecord {
        id: hash.key_id(),
        tenant: read_tenant(item)?,
        created_at: read_time(item, "created_at")?,
        revoked_at: read_opt_time(item, "revoked_at"),
        hash,
    })
}

fn tenant_pk(tenant: &TenantId) -> AttributeValue {
    s(format!("tenant#{tenant}"))
}

fn limits_from_item(item: &Item) -> Result<TenantLimits, StoreError> {
    Ok(TenantLimits {
        tenant: read_tenant(item)?,
        rate_per_minute: u32::try_from(read_n(item, "rate_per_minute")?).unwrap_or(u32::MAX),
        monthly_budget: read_opt_n(item, "monthly_budget"),
    })
}

fn upload_pk(id: &UploadId) -> AttributeValue {
    s(format!("upload#{id}"))
}

fn callback_secret_pk(tenant: &TenantId) -> AttributeValue {
    s(format!("whsec#{tenant}"))
}

fn upload_to_item(upload: &UploadRecord) -> Item {
    Item::from([
        ("pk".to_owned(), upload_pk(&upload.id)),
        ("tenant".to_owned(), s(upload.tenant.as_str())),
        ("content_type".to_owned(), s(upload.kind.content_type())),
        ("size".to_owned(), n(upload.size)),
        ("created_at".to_owned(), time(upload.created_at)),
        (TTL_ATTRIBUTE.to_owned(), n(upload.expires_at)),
    ])
}

fn upload_from_item(id: &UploadId, item: &Item) -> Result<UploadRecord, StoreError> {
    Ok(UploadRecord {
        id: id.clone(),
        tenant: read_tenant(item)?,
        kind: ImageKind::from_content_type(&read_s(item, "content_type")?)
            .ok_or_else(|| StoreError::new("read item", "attribute `content_type` unknown"))?,
        size: read_n(item, "size")?,
        created_at: read_time(item, "created_at")?,
        expires_at: read_n(item, TTL_ATTRIBUTE)?,
    })
}

impl AccountStore for DynamoRecords {
    async fn put_upload(&self, upload: &UploadRecord) -> Result<(), StoreError> {
        match self
            .put_if(
                "create upload",
                upload_to_item(upload),
                "attribute_not_exists(#pk)",
                None,
            )
            .await?
        {
            PutOutcome::Written => Ok(()),
            PutOutcome::Refused(_) => Err(StoreError::new("create upload", "the upload exists")),
        }
    }

    async fn get_upload(&self, id: &UploadId) -> Result<Option<UploadRecord>, StoreError> {
        self.get_item("get upload", upload_pk(id))
            .await?
            .as_ref()
            .map(|item| upload_from_item(id, item))
            .transpose()
    }

    async fn callback_secret(
        &self,
        tenant: &TenantId,
        candidate: &str,
    ) -> Result<String, StoreError> {
        let pk = callback_secret_pk(tenant);
        if let Some(item) = self.get_item("get callback secret", pk.clone()).await? {
            return read_s(&item, "secret");
        }
        let item = Item::from([
            ("pk".to_owned(), pk),
            ("tenant".to_owned(), s(tenant.as_str())),
            ("secret".to_owned(), s(candidate)),
        ]);
        match self
            .put_if(
                "create callback secret",
                item,
                "attribute_not_exists(#pk)",
                None,
            )
            .await?
        {
            PutOutcome::Written => Ok(candidate.to_owned()),
            PutOutcome::Refused(winner) => read_s(&winner, "secret"),
        }
    }

    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        match self
            .put_if(
                "create key",
                key_to_item(key),
                "attribute_not_exists(#pk)",
                None,
            )
            .await?
        {
            PutOutcome::Written => Ok(()),
            PutOutcome::Refused(_) => Err(StoreError::new("create key", "the key exists")),
        }
    }

    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.get_item("get key", key_pk(id))
            .await?
            .as_ref()
            .map(key_from_item)
            .transpose()
    }

    async fn update_tenant(&self, update: &LimitsUpdate) -> Result<TenantLimits, StoreError> {
        let mut set = vec!["#tenant = :tenant"];
        let mut remove = Vec::new();
        let mut values = Item::from([(":tenant".to_owned(), s(update.tenant.as_str()))]);
        match update.rate_per_minute {
            Some(rate) => {
                set.push("#rate_per_minute = :rate");
                values.insert(":rate".to_owned(), n(u64::from(rate)));
            }
            None => {
                set.push("#rate_per_minute = if_not_exists(#rate_per_minute, :rate)");
                values.insert(":rate".to_owned(), n(u64::from(DEFAULT_RATE_PER_MINUTE)));
            }
        }
        match update.monthly_budget {
            Some(Some(budget)) => {
                set.push("#monthly_budget = :budget");
                values.insert(":budget".to_owned(), n(budget));
            }
            Some(None) => remove.push("#monthly_budget"),
            None => {}
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", tenant_pk(&update.tenant))
            .update_expression(&expression)
            .set_expression_attribute_names(Some(names_in(&[&expression])))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| failed("update tenant", e))?;
        let item = output
            .attributes
            .ok_or_else(|| StoreError::new("update tenant", "no attributes returned"))?;
        limits_from_item(&item)
    }

    async fn get_tenant(&self, tenant: &TenantId) -> Result<Option<TenantLimits>, StoreError> {
        self.get_item("get tenant", tenant_pk(tenant))
            .await?
            .as_ref()
            .map(limits_from_item)
            .transpose()
    }

    async fn revoke_key(&self, id: &KeyId, at: Timestamp) -> Result<bool, StoreError> {
        let values = Item::from([(":at".to_owned(), time(at))]);
        self.update_if(
            "revoke key",
            key_pk(id),
            "SET #revoked_at = if_not_exists(#revoked_at, :at)",
            "attribute_exists(#pk)",
            values,
        )
        .await
    }

    async fn count_request(&self, window: &RateWindow, limit: u32) -> Result<bool, StoreError> {
        let values = Item::from([
            (":one".to_owned(), n(1)),
            (":limit".to_owned(), n(u64::from(limit))),
            (":ttl".to_owned(), n(window.expires_at)),
        ]);
        self.update_if(
            "count request",
            s(&window.key),
            "SET #expires_at = :ttl ADD #count :one",
            "attribute_not_exists(#count) OR #count < :limit",
            values,
        )
        .await
    }

    async fn reserve_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        reservation: &Reservation,
    ) -> Result<bool, StoreError> {
        let mut values = Item::from([
            (":estimate".to_owned(), n(reservation.estimate)),
            (":images".to_owned(), n(reservation.images)),
            (":one".to_owned(), n(1)),
            (":ttl".to_owned(), n(reservation.expires_at)),
        ]);
        let update = "SET #expires_at = if_not_exists(#expires_at, :ttl) \
                      ADD #committed :estimate, #images :images, #predictions :one";
        let pk = s(usage_key(tenant, month));
        let Some(budget) = reservation.budget else {
            self.update("reserve cost", pk, update, values).await?;
            return Ok(true);
        };
        // DynamoDB conditions cannot add, so the room left for this estimate is computed here.
        let Some(room) = budget.checked_sub(reservation.estimate) else {
            return Ok(false);
        };
        values.insert(":room".to_owned(), n(room));
        let condition = "attribute_not_exists(#committed) OR #committed <= :room";
        self.update_if("reserve cost", pk, update, condition, values)
            .await
    }

    async fn settle_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        settlement: &CostSettlement,
    ) -> Result<(), StoreError> {
        let (cost, images, predictions) = settlement.deltas();
        let values = Item::from([
            (":cost".to_owned(), signed(cost)),
            (":images".to_owned(), signed(images)),
            (":predictions".to_owned(), signed(predictions)),
        ]);
        let update = "ADD #committed :cost, #images :images, #predictions :predictions";
        self.update("settle cost", s(usage_key(tenant, month)), update, values)
            .await
    }

    async fn usage(&self, tenant: &TenantId, month: &str) -> Result<Usage, StoreError> {
        let item = self
            .get_item("get usage", s(usage_key(tenant, month)))
            .await?;
        let Some(item) = item else {
            return Ok(Usage::default());
        };
        // `ADD` of a negative delta can leave a count below zero only through a bug; clamp.
        let count = |name: &str| match item.get(name) {
            Some(AttributeValue::N(v)) => v.parse::<i128>().map_or(0, |v| v.max(0) as u64),
            _ => 0,
        };
        Ok(Usage {
            predictions: count("predictions"),
            images: count("images"),
            committed: count("committed"),
        })
    }
}

/// An open-index item (keys only): the prediction's id from `pk`, and its creation time.
fn open_entry(item: &Item) -> Result<OpenEntry, StoreError> {
    Ok(OpenEntry {
        id: prediction_id_of(item)?,
        created_at: read_time(item, "created_at")?,
    })
}

/// The reconciler's cursor: where a query of the open index stopped, as `created_at|pk`.
fn key_to_cursor(key: &Item) -> Option<String> {
    let created = read_opt_n(key, "created_at")?;
    let pk = read_opt_s(key, "pk")?;
    Some(format!("{created}|{pk}"))
}

fn cursor_to_key(shard: &str, cursor: &str) -> Result<Item, StoreError> {
    let invalid = || StoreError::new("list open predictions", "invalid cursor");
    let (created, pk) = cursor.split_once('|').ok_or_else(invalid)?;
    let created: u64 = created.parse().map_err(|_| invalid())?;
    Ok(Item::from([
        ("pk".to_owned(), s(pk)),
        (OPEN_SHARD_ATTRIBUTE.to_owned(), s(shard)),
        ("created_at".to_owned(), n(created)),
    ]))
}

/// `Ok(false)` for a failed condition, which is an answer rather than an error.
fn conditional<T, E>(operation: &'static str, result: Result<T, E>) -> Result<bool, StoreError>
where
    E: ProvideErrorMetadata + std::error::Error,
{
    match result {
        Ok(_) => Ok(true),
        Err(err) if err.code() == Some("ConditionalCheckFailedException") => Ok(false),
        Err(err) => Err(failed(operation, err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::record::StoredOutput;
    use serde_json::json;

    fn record() -> PredictionRecord {
        PredictionRecord {
            id: PredictionId::generate(),
            replicate_id: Some("rep1".into()),
            alias: "sdxl".into(),
            model: "stability-ai/sdxl".into(),
            version: Some("v".repeat(64)),
            input: json!({"prompt": "a cat", "seed": 3})
                .as_object()
                .unwrap()
                .clone(),
            status: PredictionStatus::Succeeded,
            outputs: vec![StoredOutput {
                key: "outputs/x/0.png".into(),
                content_type: "image/png".into(),
                size: 10,
                sha256: "ab".into(),
            }],
            error: None,
            metrics: Some(Default::default()),
            created_at: Timestamp::from_millis(1),
            started_at: Some(Timestamp::from_millis(2)),
            completed_at: Some(Timestamp::from_millis(3)),
            synced_at: None,
            copy_queued_at: Some(Timestamp::from_millis(5)),
            cancel_requested_at: Some(Timestamp::from_millis(6)),
            expires_at: 4,
            webhook_token: Some("t".repeat(32)),
            tenant: Some(TenantId::parse("acme").unwrap()),
            price: Some(crate::domain::cost::Price::Image { micros: 3_000 }),
            input_files: Default::default(),
            callback: None,
            queue: None,
            cost_estimate: 3_000,
            cost: Some(3_000),
        }
    }

    /// DynamoDB's size of an item: attribute names plus values (numbers count as their
    /// digits, an upper bound of their stored size).
    fn item_bytes(item: &Item) -> usize {
        item.iter()
            .map(|(name, value)| {
                name.len()
                    + match value {
                        AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
                        _ => 1,
                    }
            })
            .sum()
    }

    /// Whatever a client sends and Replicate answers, a record stays far under DynamoDB's
    /// 400 KB item limit: every part of it is bounded where it is made.
    #[test]
    fn the_largest_possible_record_is_far_under_the_item_limit() {
        use crate::domain::limits::{MAX_ERROR_CHARS, MAX_OUTPUTS, bounded_error, bounded_metrics};
        let registry = crate::domain::registry::ModelRegistry::shipped().unwrap();
        let widest = registry.aliases().max_by_key(|a| a.inputs.len()).unwrap();
        let mut input = serde_json::Map::new();
        for (name, spec) in &widest.inputs {
            let value = match spec {
                crate::domain::registry::FieldSpec::String { max_length, .. } => {
                    json!("\u{1D11E}".repeat(*max_length))
                }
                crate::domain::registry::FieldSpec::Image { .. } => {
                    json!(format!("inline://{}", "f".repeat(64)))
                }
                _ => json!(-1.234_567_890_123_456_7e300),
            };
            input.insert(name.clone(), value);
        }
        let mut metrics = crate::domain::replicate::Metrics::default();
        for i in 0..1000 {
            metrics
                .other
                .insert(format!("{i}{}", "k".repeat(60)), json!(1.0e300));
        }
        let mut r = record();
        r.input = input;
        r.outputs = (0..MAX_OUTPUTS)
            .map(|i| StoredOutput {
                key: format!("outputs/{}/{i}.webp", r.id),
                content_type: "application/octet-stream".into(),
                size: u64::MAX,
                sha256: "f".repeat(64),
            })
            .collect();
        r.error = Some(bounded_error(&"\u{1D11E}".repeat(MAX_ERROR_CHARS * 10)));
        r.metrics = Some(bounded_metrics(&metrics));
        let bytes = item_bytes(&prediction_to_item(&r).unwrap());
        println!("largest prediction item: {bytes} bytes");
        assert!(bytes < 64 * 1024, "{bytes} bytes");
    }

    #[test]
    fn prediction_items_round_trip() {
        let r = record();
        let item = prediction_to_item(&r).unwrap();
        assert_eq!(item["rank"], n(2));
        assert_eq!(prediction_from_item(&item).unwrap(), r);
    }

    #[test]
    fn claim_items_round_trip() {
        let c = Claim {
            key: "cache#abc".into(),
            token: "t".into(),
            prediction_id: Some(PredictionId::generate()),
            request_hash: Some("h".into()),
            lease_until: Timestamp::from_millis(5),
            expires_at: 6,
            from_cache: true,
        };
        assert_eq!(claim_from_item(&claim_to_item(&c)).unwrap(), c);
    }

    #[test]
    fn advance_expression_sets_and_removes() {
        let advance = Advance {
            status: PredictionStatus::Processing,
            replicate_id: None,
            outputs: vec![],
            error: None,
            metrics: None,
            started_at: Some(Timestamp::from_millis(7)),
            completed_at: None,
            cost: None,
            keep_open: false,
        };
        let (expression, values) = advance_expression(&advance).unwrap();
        assert_eq!(
            expression,
            "SET #status = :status, #rank = :rank, #outputs = :outputs, #started_at = if_not_exists(#started_at, :started) REMOVE #error"
        );
        assert_eq!(values[":rank"], n(1));
        let names = names_in(&[&expression, "attribute_exists(#pk) AND #rank < :rank"]);
        let mut found: Vec<&str> = names.values().map(String::as_str).collect();
        found.sort_unstable();
        assert_eq!(
            found,
            ["error", "outputs", "pk", "rank", "started_at", "status"]
        );
    }
}
