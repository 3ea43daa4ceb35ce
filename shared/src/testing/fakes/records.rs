//! The record store in memory: predictions, claims, bindings, the open and tenant
//! indexes, the pacer; with the conditional-write rules of the DynamoDB adapter.

use super::*;

#[derive(Default)]
pub struct MemoryRecords {
    pub(super) predictions: Mutex<HashMap<PredictionId, PredictionRecord>>,
    pub(super) claims: Mutex<HashMap<String, Claim>>,
    /// Replicate id → the record it is bound to.
    pub(super) bindings: Mutex<HashMap<String, PredictionId>>,
    pub(super) keys: Mutex<HashMap<String, StoredKey>>,
    pub(super) tenants: Mutex<HashMap<TenantId, TenantLimits>>,
    /// Rate windows and usage months: counters by store key (signed, as DynamoDB's `ADD`).
    pub(super) counters: Mutex<HashMap<String, HashMap<&'static str, i128>>>,
    /// Inserts that store their record but answer with an error (a lost answer).
    pub(super) lost_insert_answers: Mutex<usize>,
    /// The predictions the open index lists (DynamoDB's sparse `open_shard` attribute).
    pub(super) open: Mutex<std::collections::HashSet<PredictionId>>,
    pub(super) uploads: Mutex<HashMap<String, UploadRecord>>,
    pub(super) callback_secrets: Mutex<HashMap<TenantId, String>>,
    /// The create pacer's stored slot time.
    pub(super) pace: Mutex<Option<Timestamp>>,
}

impl MemoryRecords {
    pub(super) fn counter(&self, key: &str, name: &str) -> i128 {
        lock(&self.counters)
            .get(key)
            .and_then(|c| c.get(name))
            .copied()
            .unwrap_or(0)
    }
}

/// A conditional put (`attribute_not_exists`): fails if `id` exists.
pub(super) fn insert_new<T: Clone>(
    map: &Mutex<HashMap<String, T>>,
    id: &str,
    item: &T,
    operation: &'static str,
) -> Result<(), StoreError> {
    let mut map = lock(map);
    if map.contains_key(id) {
        return Err(StoreError::new(operation, "the item exists"));
    }
    map.insert(id.to_owned(), item.clone());
    Ok(())
}

impl MemoryRecords {
    pub fn claim(&self, key: &str) -> Option<Claim> {
        lock(&self.claims).get(key).cloned()
    }

    pub fn prediction_count(&self) -> usize {
        lock(&self.predictions).len()
    }

    /// Overwrites a record as is, for setting up a test's starting state.
    pub fn put_record(&self, record: PredictionRecord) {
        lock(&self.predictions).insert(record.id.clone(), record);
    }

    /// Overwrites a claim as is, for setting up a test's starting state.
    pub fn put_claim(&self, claim: Claim) {
        lock(&self.claims).insert(claim.key.clone(), claim);
    }

    pub fn records(&self) -> Vec<PredictionRecord> {
        lock(&self.predictions).values().cloned().collect()
    }

    /// The next `n` inserts store their record but report an error, as a write whose
    /// answer was lost does.
    pub fn lose_next_insert_answers(&self, n: usize) {
        *lock(&self.lost_insert_answers) = n;
    }

    /// Stores an API key carrying its tenant's limits, as `create_key` does, for setting
    /// up a test's callers.
    pub fn put_key(&self, key: KeyRecord) {
        let limits = lock(&self.tenants).get(&key.tenant).cloned();
        let stored = StoredKey {
            record: key,
            limits: CarriedLimits::Carried(limits),
        };
        lock(&self.keys).insert(stored.record.id.as_str().to_owned(), stored);
    }

    /// Stores an API key as keys were stored before they carried their tenant's limits.
    pub fn put_key_without_limits(&self, key: KeyRecord) {
        let stored = StoredKey {
            record: key,
            limits: CarriedLimits::NotCarried,
        };
        lock(&self.keys).insert(stored.record.id.as_str().to_owned(), stored);
    }

    /// Stores a tenant's limits, carried by its keys as `update_tenant` has them carried,
    /// for setting up a test's callers.
    pub fn put_limits(&self, limits: TenantLimits) {
        self.carry(&limits);
        lock(&self.tenants).insert(limits.tenant.clone(), limits);
    }

    /// Has every key of `limits`' tenant that carries limits carry these.
    pub(super) fn carry(&self, limits: &TenantLimits) {
        for key in lock(&self.keys).values_mut() {
            if key.record.tenant == limits.tenant && key.limits != CarriedLimits::NotCarried {
                key.limits = CarriedLimits::Carried(Some(limits.clone()));
            }
        }
    }
}

fn guard_holds(claim: &Claim, guard: ClaimGuard<'_>) -> bool {
    match guard {
        ClaimGuard::Token(token) => claim.token == token,
        ClaimGuard::Prediction(id) => claim.prediction_id.as_ref() == Some(id),
    }
}

impl RecordStore for MemoryRecords {
    async fn try_claim(&self, claim: &Claim) -> Result<ClaimOutcome, StoreError> {
        let mut claims = lock(&self.claims);
        match claims.get(&claim.key) {
            Some(held) => Ok(ClaimOutcome::HeldBy(held.clone())),
            None => {
                claims.insert(claim.key.clone(), claim.clone());
                Ok(ClaimOutcome::Claimed)
            }
        }
    }

    async fn replace_claim(&self, claim: &Claim, expected_token: &str) -> Result<bool, StoreError> {
        let mut claims = lock(&self.claims);
        match claims.get(&claim.key) {
            Some(held) if held.token == expected_token => {
                claims.insert(claim.key.clone(), claim.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn settle_claim(
        &self,
        key: &str,
        guard: ClaimGuard<'_>,
        settlement: &Settlement<'_>,
    ) -> Result<bool, StoreError> {
        let mut claims = lock(&self.claims);
        match claims.get_mut(key) {
            Some(claim)
                if guard_holds(claim, guard) && claim.lease_until <= settlement.lease_until =>
            {
                claim.prediction_id = Some(settlement.prediction_id.clone());
                claim.lease_until = settlement.lease_until;
                claim.from_cache = settlement.from_cache;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_claim(&self, key: &str, guard: ClaimGuard<'_>) -> Result<bool, StoreError> {
        let mut claims = lock(&self.claims);
        if claims.get(key).is_some_and(|c| guard_holds(c, guard)) {
            claims.remove(key);
            return Ok(true);
        }
        Ok(false)
    }

    async fn insert_prediction(&self, record: &PredictionRecord) -> Result<(), StoreError> {
        let mut predictions = lock(&self.predictions);
        if predictions.contains_key(&record.id) {
            return Err(StoreError::new("insert prediction", "id exists"));
        }
        predictions.insert(record.id.clone(), record.clone());
        if !record.status.is_terminal() {
            lock(&self.open).insert(record.id.clone());
        }
        let mut lost = lock(&self.lost_insert_answers);
        if *lost > 0 {
            *lost -= 1;
            return Err(StoreError::new("insert prediction", "the answer was lost"));
        }
        Ok(())
    }

    async fn get_prediction(
        &self,
        id: &PredictionId,
    ) -> Result<Option<PredictionRecord>, StoreError> {
        Ok(lock(&self.predictions).get(id).cloned())
    }

    async fn attach_replicate_id(
        &self,
        id: &PredictionId,
        replicate_id: &str,
        _expires_at: u64,
    ) -> Result<bool, StoreError> {
        let mut predictions = lock(&self.predictions);
        let mut bindings = lock(&self.bindings);
        let bound_elsewhere = bindings.get(replicate_id).is_some_and(|owner| owner != id);
        match predictions.get_mut(id) {
            Some(r)
                if !bound_elsewhere
                    && r.replicate_id
                        .as_deref()
                        .is_none_or(|have| have == replicate_id) =>
            {
                r.replicate_id = Some(replicate_id.to_owned());
                bindings.insert(replicate_id.to_owned(), id.clone());
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn advance(&self, id: &PredictionId, advance: &Advance) -> Result<bool, StoreError> {
        let mut predictions = lock(&self.predictions);
        let Some(record) = predictions.get_mut(id) else {
            return Ok(false);
        };
        let same_prediction = record.replicate_id == advance.replicate_id;
        // As DynamoDB stores it: a status of unknown rank counts as `starting` (rank 0).
        let stored_rank = record.status.progress_rank().unwrap_or(0);
        let forward = advance
            .status
            .progress_rank()
            .is_some_and(|rank| rank > stored_rank);
        if !same_prediction || !forward {
            return Ok(false);
        }
        record.status = advance.status.clone();
        record.outputs = advance.outputs.clone();
        record.error = advance.error.clone();
        if advance.metrics.is_some() {
            record.metrics = advance.metrics.clone();
        }
        if advance.cost.is_some() {
            record.cost = advance.cost;
        }
        // `if_not_exists`: a time already stored is kept.
        record.started_at = record.started_at.or(advance.started_at);
        record.completed_at = record.completed_at.or(advance.completed_at);
        if advance.status.is_terminal() && !advance.keep_open {
            lock(&self.open).remove(id);
        }
        Ok(true)
    }

    async fn callback_queued(
        &self,
        id: &PredictionId,
        event: CallbackEvent,
    ) -> Result<bool, StoreError> {
        let mut predictions = lock(&self.predictions);
        if event == CallbackEvent::Completed && predictions.contains_key(id) {
            lock(&self.open).remove(id);
        }
        let Some(callback) = predictions.get_mut(id).and_then(|r| r.callback.as_mut()) else {
            return Ok(false);
        };
        let noted = match event {
            CallbackEvent::Start => callback.event.is_none(),
            CallbackEvent::Completed => callback.event != Some(event),
        };
        if noted {
            callback.event = Some(event);
            callback.status = Some(CallbackStatus::Pending);
        }
        Ok(noted)
    }

    async fn callback_attempted(
        &self,
        id: &PredictionId,
        event: CallbackEvent,
        status: CallbackStatus,
    ) -> Result<(), StoreError> {
        let mut predictions = lock(&self.predictions);
        let Some(record) = predictions.get_mut(id) else {
            return Ok(());
        };
        if event == CallbackEvent::Completed {
            lock(&self.open).remove(id);
        }
        if let Some(callback) = record.callback.as_mut() {
            callback.attempts = callback.attempts.saturating_add(1);
            let shown_later =
                event == CallbackEvent::Start && callback.event.is_some_and(|shown| shown != event);
            let was_delivered =
                callback.event == Some(event) && callback.status == Some(CallbackStatus::Delivered);
            if !shown_later && !was_delivered {
                callback.event = Some(event);
                callback.status = Some(status);
            }
        }
        Ok(())
    }

    async fn claim_sync(
        &self,
        id: &PredictionId,
        mark: SyncMark,
        now: Timestamp,
        not_since: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut predictions = lock(&self.predictions);
        let Some(record) = predictions.get_mut(id) else {
            return Ok(false);
        };
        let last = match mark {
            SyncMark::Fetched => &mut record.synced_at,
            SyncMark::CopyQueued => &mut record.copy_queued_at,
            SyncMark::CancelRequested => &mut record.cancel_requested_at,
        };
        if last.is_some_and(|t| t >= not_since) {
            return Ok(false);
        }
        *last = Some(now);
        Ok(true)
    }

    async fn claim_create(&self, id: &PredictionId, now: Timestamp) -> Result<bool, StoreError> {
        let mut predictions = lock(&self.predictions);
        let Some(record) = predictions.get_mut(id) else {
            return Ok(false);
        };
        if record.cancel_requested_at.is_some() || !record.is_queued() {
            return Ok(false);
        }
        if let Some(queue) = record.queue.as_mut() {
            queue.sent_at = Some(now);
        }
        Ok(true)
    }

    async fn mark_queued(&self, id: &PredictionId, queue: &QueueState) -> Result<bool, StoreError> {
        let mut predictions = lock(&self.predictions);
        let Some(record) = predictions.get_mut(id) else {
            return Ok(false);
        };
        if record.replicate_id.is_some() || record.status.is_terminal() || record.queue.is_some() {
            return Ok(false);
        }
        record.queue = Some(queue.clone());
        Ok(true)
    }

    async fn release_create(
        &self,
        id: &PredictionId,
        sent_at: Timestamp,
        slot_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let mut predictions = lock(&self.predictions);
        let Some(record) = predictions.get_mut(id) else {
            return Ok(false);
        };
        if record.replicate_id.is_some() {
            return Ok(false);
        }
        match record.queue.as_mut() {
            Some(queue) if queue.sent_at == Some(sent_at) => {
                queue.sent_at = None;
                queue.slot_at = slot_at;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn reserve_create_slot(
        &self,
        pace: &Pace,
        now: Timestamp,
    ) -> Result<CreateSlot, StoreError> {
        let mut stored = lock(&self.pace);
        let (slot, next) = pace.grant(*stored, now);
        if let Some(next) = next {
            *stored = Some(next);
        }
        Ok(slot)
    }

    async fn list_tenant(
        &self,
        tenant: &TenantId,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<TenantPage, StoreError> {
        if limit == 0 {
            return Err(StoreError::new(
                "list predictions",
                "limit must be at least 1",
            ));
        }
        let mut mine: Vec<OpenEntry> = lock(&self.predictions)
            .values()
            .filter(|r| r.tenant.as_ref() == Some(tenant))
            .map(|r| OpenEntry {
                id: r.id.clone(),
                created_at: r.created_at,
            })
            .filter(|e| cursor.is_none_or(|c| (e.created_at, &e.id) < (c.created_at, &c.id)))
            .collect();
        mine.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        let more = mine.len() > limit;
        mine.truncate(limit);
        let next = more.then(|| mine.last()).flatten().map(|last| ListCursor {
            created_at: last.created_at,
            id: last.id.clone(),
        });
        Ok(TenantPage {
            entries: mine,
            next,
        })
    }

    async fn list_open(
        &self,
        shard: &str,
        created_before: Timestamp,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<OpenPage, StoreError> {
        // DynamoDB refuses `Limit: 0` (here a page of none would point past its first record).
        if limit == 0 {
            return Err(StoreError::new(
                "list open predictions",
                "limit must be at least 1",
            ));
        }
        let after = match cursor {
            Some(c) => Some(parse_cursor(c)?),
            None => None,
        };
        let listed = lock(&self.open).clone();
        let mut open: Vec<PredictionRecord> = lock(&self.predictions)
            .values()
            .filter(|r| listed.contains(&r.id) && r.created_at < created_before)
            .filter(|r| open_shard(&r.id) == shard)
            .filter(|r| {
                after
                    .as_ref()
                    .is_none_or(|a| (r.created_at, &r.id) > (a.0, &a.1))
            })
            .cloned()
            .collect();
        open.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let next = (open.len() > limit)
            .then(|| open.get(limit.saturating_sub(1)))
            .flatten()
            .map(|r| format!("{}|{}", r.created_at.as_millis(), r.id));
        open.truncate(limit);
        let entries = open
            .into_iter()
            .map(|r| OpenEntry {
                id: r.id,
                created_at: r.created_at,
            })
            .collect();
        Ok(OpenPage { entries, next })
    }
}

fn parse_cursor(cursor: &str) -> Result<(Timestamp, PredictionId), StoreError> {
    let invalid = || StoreError::new("list open predictions", "invalid cursor");
    let (created, id) = cursor.split_once('|').ok_or_else(invalid)?;
    Ok((
        created
            .parse()
            .map(Timestamp::from_millis)
            .map_err(|_| invalid())?,
        PredictionId::parse(id).map_err(|_| invalid())?,
    ))
}
