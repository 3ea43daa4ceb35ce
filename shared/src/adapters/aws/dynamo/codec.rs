//! Every item converted to and from Rust types, here and nowhere else: predictions,
//! claims, keys, tenants, uploads, cursors; and the update expressions built from them.

use super::*;

pub(super) fn prediction_pk(id: &PredictionId) -> AttributeValue {
    AttributeValue::S(format!("pred#{id}"))
}

/// The item that binds a Replicate prediction to the one record of ours it belongs to.
pub(super) fn binding_pk(replicate_id: &str) -> AttributeValue {
    AttributeValue::S(format!("replicate#{replicate_id}"))
}

pub(super) fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

pub(super) fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Times are stored as milliseconds since the epoch (TTL attributes, in seconds, are not
/// times of this kind: they are written with `n`).
pub(super) fn time(t: Timestamp) -> AttributeValue {
    n(t.as_millis())
}

pub(super) fn failed<E: std::error::Error>(operation: &'static str, err: E) -> StoreError {
    StoreError::new(operation, DisplayErrorContext(err).to_string())
}

pub(super) fn read_s(item: &Item, name: &str) -> Result<String, StoreError> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Ok(v.clone()),
        _ => Err(StoreError::new(
            "read item",
            format!("attribute `{name}` missing or not a string"),
        )),
    }
}

pub(super) fn read_opt_s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v.clone()),
        _ => None,
    }
}

pub(super) fn read_opt_n(item: &Item, name: &str) -> Option<u64> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse().ok(),
        _ => None,
    }
}

pub(super) fn read_n(item: &Item, name: &str) -> Result<u64, StoreError> {
    read_opt_n(item, name).ok_or_else(|| {
        StoreError::new(
            "read item",
            format!("attribute `{name}` missing or not a number"),
        )
    })
}

pub(super) fn read_time(item: &Item, name: &str) -> Result<Timestamp, StoreError> {
    read_n(item, name).map(Timestamp::from_millis)
}

pub(super) fn read_opt_time(item: &Item, name: &str) -> Option<Timestamp> {
    read_opt_n(item, name).map(Timestamp::from_millis)
}

pub(super) fn read_json<T: serde::de::DeserializeOwned>(
    item: &Item,
    name: &str,
) -> Result<Option<T>, StoreError> {
    read_opt_s(item, name)
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|e| StoreError::new("read item", format!("attribute `{name}`: {e}")))
}

pub(super) fn json_attr<T: serde::Serialize>(value: &T) -> Result<AttributeValue, StoreError> {
    serde_json::to_string(value)
        .map(AttributeValue::S)
        .map_err(|e| StoreError::new("write item", e.to_string()))
}

/// The record as a DynamoDB item. `rank` mirrors the status's place in the lifecycle so
/// forward-only updates are a numeric condition.
pub(super) fn prediction_to_item(r: &PredictionRecord) -> Result<Item, StoreError> {
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
pub(super) fn prediction_id_of(item: &Item) -> Result<PredictionId, StoreError> {
    read_s(item, "pk")?
        .strip_prefix("pred#")
        .and_then(|id| PredictionId::parse(id).ok())
        .ok_or_else(|| StoreError::new("read item", "`pk` is not a prediction's"))
}

pub(super) fn prediction_from_item(item: &Item) -> Result<PredictionRecord, StoreError> {
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

pub(super) fn read_queue(item: &Item) -> Result<Option<QueueState>, StoreError> {
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
pub(super) const CREATE_SENT_ATTRIBUTE: &str = "create_sent_at";
/// `rank` of a terminal status.
pub(super) fn terminal_rank() -> u64 {
    u64::from(
        PredictionStatus::Succeeded
            .progress_rank()
            .unwrap_or(u8::MAX),
    )
}

pub(super) fn claim_to_item(c: &Claim) -> Item {
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

pub(super) fn claim_from_item(item: &Item) -> Result<Claim, StoreError> {
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
pub(super) fn guard_condition(guard: ClaimGuard<'_>) -> (&'static str, AttributeValue) {
    match guard {
        ClaimGuard::Token(token) => ("#token = :guard", s(token)),
        ClaimGuard::Prediction(id) => ("#prediction_id = :guard", s(id.as_str())),
    }
}

/// Builds `SET #a = :a, …` / `REMOVE #b` for an advance. Every attribute is referred to
/// by a `#name` placeholder: several (`status`, `metrics`, `token`, …) are DynamoDB
/// reserved words.
pub(super) fn advance_expression(advance: &Advance) -> Result<(String, Item), StoreError> {
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
pub(super) fn names_in(expressions: &[&str]) -> HashMap<String, String> {
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

pub(super) fn key_pk(id: &KeyId) -> AttributeValue {
    s(format!("apikey#{id}"))
}

/// A signed number (DynamoDB's `ADD` subtracts a negative one).
pub(super) fn signed(v: i128) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

pub(super) fn key_to_item(key: &KeyRecord) -> Item {
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

pub(super) fn read_tenant(item: &Item) -> Result<TenantId, StoreError> {
    TenantId::parse(&read_s(item, "tenant")?)
        .map_err(|e| StoreError::new("read item", format!("attribute `tenant`: {e}")))
}

pub(super) fn key_from_item(item: &Item) -> Result<StoredKey, StoreError> {
    let hash = KeyHash::from_stored(read_s(item, "key_hash")?);
    let record = KeyRecord {
        id: hash.key_id(),
        tenant: read_tenant(item)?,
        created_at: read_time(item, "created_at")?,
        revoked_at: read_opt_time(item, "revoked_at"),
        hash,
    };
    let limits = match read_opt_n(item, LIMITS_VERSION) {
        Some(_) => CarriedLimits::Carried(opt_limits_from_item(item)?),
        None => CarriedLimits::NotCarried,
    };
    Ok(StoredKey { record, limits })
}

/// The version of a tenant's limits: one more at each change, on the tenant's item and on
/// each key that carries them (a key takes only a newer version).
pub(super) const LIMITS_VERSION: &str = "limits_version";

/// The attributes a key carries of its tenant's limits at `version` (`None`: the tenant has
/// none stored).
pub(super) fn carried_limits(limits: Option<&TenantLimits>, version: u64) -> Item {
    let mut item = Item::from([(LIMITS_VERSION.to_owned(), n(version))]);
    if let Some(limits) = limits {
        item.insert(
            "rate_per_minute".to_owned(),
            n(u64::from(limits.rate_per_minute)),
        );
        if let Some(budget) = limits.monthly_budget {
            item.insert("monthly_budget".to_owned(), n(budget));
        }
    }
    item
}

/// A tenant item's limits and their version (`None`, 0 when it stores none yet: the item
/// may hold only the keys it made).
pub(super) fn tenant_snapshot(
    item: Option<&Item>,
) -> Result<(Option<TenantLimits>, u64), StoreError> {
    match item {
        None => Ok((None, 0)),
        Some(item) => Ok((
            opt_limits_from_item(item)?,
            read_opt_n(item, LIMITS_VERSION).unwrap_or(0),
        )),
    }
}

/// The limits an item holds, if it holds a rate.
pub(super) fn opt_limits_from_item(item: &Item) -> Result<Option<TenantLimits>, StoreError> {
    match read_opt_n(item, "rate_per_minute") {
        Some(_) => limits_from_item(item).map(Some),
        None => Ok(None),
    }
}

/// The ids of the keys a tenant's item lists (the keys that carry its limits).
pub(super) fn tenant_keys(item: &Item) -> Vec<KeyId> {
    match item.get("keys") {
        Some(AttributeValue::Ss(ids)) => {
            ids.iter().filter_map(|id| KeyId::parse(id).ok()).collect()
        }
        _ => Vec::new(),
    }
}

pub(super) fn tenant_pk(tenant: &TenantId) -> AttributeValue {
    s(format!("tenant#{tenant}"))
}

pub(super) fn limits_from_item(item: &Item) -> Result<TenantLimits, StoreError> {
    Ok(TenantLimits {
        tenant: read_tenant(item)?,
        rate_per_minute: u32::try_from(read_n(item, "rate_per_minute")?).unwrap_or(u32::MAX),
        monthly_budget: read_opt_n(item, "monthly_budget"),
    })
}

pub(super) fn upload_pk(id: &UploadId) -> AttributeValue {
    s(format!("upload#{id}"))
}

pub(super) fn callback_secret_pk(tenant: &TenantId) -> AttributeValue {
    s(format!("whsec#{tenant}"))
}

/// A tenant's callback signing secret, as first stored.
pub(super) fn callback_secret_item(tenant: &TenantId, secret: &str) -> Item {
    Item::from([
        ("pk".to_owned(), callback_secret_pk(tenant)),
        ("tenant".to_owned(), s(tenant.as_str())),
        ("secret".to_owned(), s(secret)),
    ])
}

/// A tenant's month of usage. `ADD` of a negative delta can leave a count below zero only
/// through a bug; it reads as zero.
pub(super) fn usage_from_item(item: &Item) -> Usage {
    let count = |name: &str| match item.get(name) {
        Some(AttributeValue::N(v)) => v.parse::<i128>().map_or(0, |v| v.max(0) as u64),
        _ => 0,
    };
    Usage {
        predictions: count("predictions"),
        images: count("images"),
        committed: count("committed"),
    }
}

pub(super) fn upload_to_item(upload: &UploadRecord) -> Item {
    Item::from([
        ("pk".to_owned(), upload_pk(&upload.id)),
        ("tenant".to_owned(), s(upload.tenant.as_str())),
        ("content_type".to_owned(), s(upload.kind.content_type())),
        ("size".to_owned(), n(upload.size)),
        ("created_at".to_owned(), time(upload.created_at)),
        (TTL_ATTRIBUTE.to_owned(), n(upload.expires_at)),
    ])
}

pub(super) fn upload_from_item(id: &UploadId, item: &Item) -> Result<UploadRecord, StoreError> {
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

/// An open-index item (keys only): the prediction's id from `pk`, and its creation time.
pub(super) fn open_entry(item: &Item) -> Result<OpenEntry, StoreError> {
    Ok(OpenEntry {
        id: prediction_id_of(item)?,
        created_at: read_time(item, "created_at")?,
    })
}

/// The reconciler's cursor: where a query of the open index stopped, as `created_at|pk`.
pub(super) fn key_to_cursor(key: &Item) -> Option<String> {
    let created = read_opt_n(key, "created_at")?;
    let pk = read_opt_s(key, "pk")?;
    Some(format!("{created}|{pk}"))
}

pub(super) fn cursor_to_key(shard: &str, cursor: &str) -> Result<Item, StoreError> {
    let invalid = || StoreError::new("list open predictions", "invalid cursor");
    let (created, pk) = cursor.split_once('|').ok_or_else(invalid)?;
    let created: u64 = created.parse().map_err(|_| invalid())?;
    Ok(Item::from([
        ("pk".to_owned(), s(pk)),
        (OPEN_SHARD_ATTRIBUTE.to_owned(), s(shard)),
        ("created_at".to_owned(), n(created)),
    ]))
}
