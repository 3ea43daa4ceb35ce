//! In-memory implementations of the ports, for unit tests of the handlers. They follow the
//! same conditional-write rules as the DynamoDB and S3 adapters.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use sha2::Digest as _;
use url::Url;

use crate::domain::callbacks::{CallbackEvent, CallbackJob, CallbackStatus};
use crate::domain::claims::{Claim, ClaimGuard};
use crate::domain::claims::{ClaimOutcome, Settlement};
use crate::domain::cost::{CostSettlement, Reservation, Usage, usage_key};
use crate::domain::ids::PredictionId;
use crate::domain::jobs::{CopyJob, CreateJob};
use crate::domain::outputs::OutputError;
use crate::domain::pacing::{CreateSlot, Pace};
use crate::domain::record::{Advance, PredictionRecord, QueueState};
use crate::domain::replicate::{
    Deadline, Model, ModelRef, Prediction, PredictionStatus, ReplicateError, WebhookTarget,
};
use crate::domain::signing::WebhookSecret;
use crate::domain::tenancy::{KeyId, KeyRecord, LimitsUpdate, RateWindow, TenantId, TenantLimits};
use crate::domain::time::Timestamp;
use crate::domain::uploads::{UploadId, UploadRecord};
use crate::ports::StoreError;
use crate::ports::accounts::AccountStore;
use crate::ports::callbacks::{CallbackRequest, CallbackSender, DeliveryOutcome};
use crate::ports::dns::HostResolver;
use crate::ports::downloads::{Download, OutputSource};
use crate::ports::jobs::JobQueue;
use crate::ports::objects::{ObjectRead, ObjectStore, PresignedPut};
use crate::ports::records::{
    ListCursor, OpenEntry, OpenPage, RecordStore, SyncMark, TenantPage, open_shard,
};
use crate::ports::replicate::ReplicateApi;

/// The in-memory ports, for handler tests.
pub struct InMemory;

impl crate::ports::Ports for InMemory {
    type Replicate = FakeReplicate;
    type Records = MemoryRecords;
    type Objects = MemoryObjects;
    type Downloads = MemorySource;
    type Queue = MemoryQueue;
    type Callbacks = MemoryCallbacks;
    type Resolver = MemoryResolver;
}

/// Names and their addresses, as a test sets them; any other name does not resolve.
#[derive(Default)]
pub struct MemoryResolver {
    names: Mutex<HashMap<String, Vec<std::net::IpAddr>>>,
}

impl MemoryResolver {
    pub fn set(&self, name: &str, addresses: Vec<std::net::IpAddr>) {
        lock(&self.names).insert(name.to_ascii_lowercase(), addresses);
    }
}

impl HostResolver for MemoryResolver {
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
        lock(&self.names)
            .get(&host.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}

/// Callback attempts, written down and answered as scripted (2xx unless told otherwise).
#[derive(Default)]
pub struct MemoryCallbacks {
    sent: Mutex<Vec<CallbackRequest>>,
    answers: Mutex<VecDeque<DeliveryOutcome>>,
}

impl MemoryCallbacks {
    /// The next attempts get these answers, in order.
    pub fn answer_next(&self, outcomes: impl IntoIterator<Item = DeliveryOutcome>) {
        lock(&self.answers).extend(outcomes);
    }

    /// Every attempt so far.
    pub fn sent(&self) -> Vec<CallbackRequest> {
        lock(&self.sent).clone()
    }
}

impl CallbackSender for MemoryCallbacks {
    async fn post(&self, request: CallbackRequest) -> DeliveryOutcome {
        lock(&self.sent).push(request);
        lock(&self.answers)
            .pop_front()
            .unwrap_or(DeliveryOutcome::Delivered { status: 204 })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Default)]
pub struct MemoryRecords {
    predictions: Mutex<HashMap<PredictionId, PredictionRecord>>,
    claims: Mutex<HashMap<String, Claim>>,
    /// Replicate id → the record it is bound to.
    bindings: Mutex<HashMap<String, PredictionId>>,
    keys: Mutex<HashMap<String, KeyRecord>>,
    tenants: Mutex<HashMap<TenantId, TenantLimits>>,
    /// Rate windows and usage months: counters by store key (signed, as DynamoDB's `ADD`).
    counters: Mutex<HashMap<String, HashMap<&'static str, i128>>>,
    /// Inserts that store their record but answer with an error (a lost answer).
    lost_insert_answers: Mutex<usize>,
    /// The predictions the open index lists (DynamoDB's sparse `open_shard` attribute).
    open: Mutex<std::collections::HashSet<PredictionId>>,
    uploads: Mutex<HashMap<String, UploadRecord>>,
    callback_secrets: Mutex<HashMap<TenantId, String>>,
    /// The create pacer's stored slot time.
    pace: Mutex<Option<Timestamp>>,
}

impl MemoryRecords {
    fn counter(&self, key: &str, name: &str) -> i128 {
        lock(&self.counters)
            .get(key)
            .and_then(|c| c.get(name))
            .copied()
            .unwrap_or(0)
    }
}

/// A conditional put (`attribute_not_exists`): fails if `id` exists.
fn insert_new<T: Clone>(
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

impl AccountStore for MemoryRecords {
    async fn put_upload(&self, upload: &UploadRecord) -> Result<(), StoreError> {
        insert_new(&self.uploads, upload.id.as_str(), upload, "create upload")
    }

    async fn get_upload(&self, id: &UploadId) -> Result<Option<UploadRecord>, StoreError> {
        Ok(lock(&self.uploads).get(id.as_str()).cloned())
    }

    async fn callback_secret(
        &self,
        tenant: &TenantId,
        candidate: &str,
    ) -> Result<String, StoreError> {
        Ok(lock(&self.callback_secrets)
            .entry(tenant.clone())
            .or_insert_with(|| candidate.to_owned())
            .clone())
    }

    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        insert_new(&self.keys, key.id.as_str(), key, "create key")
    }

    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        Ok(lock(&self.keys).get(id.as_str()).cloned())
    }

    async fn update_tenant(&self, update: &LimitsUpdate) -> Result<TenantLimits, StoreError> {
        let mut tenants = lock(&self.tenants);
        let limits = update.applied_to(tenants.get(&update.tenant));
        tenants.insert(update.tenant.clone(), limits.clone());
        Ok(limits)
    }

    async fn get_tenant(&self, tenant: &TenantId) -> Result<Option<TenantLimits>, StoreError> {
        Ok(lock(&self.tenants).get(tenant).cloned())
    }

    async fn revoke_key(&self, id: &KeyId, at: Timestamp) -> Result<bool, StoreError> {
        Ok(lock(&self.keys)
            .get_mut(id.as_str())
            .map(|key| key.revoked_at = key.revoked_at.or(Some(at)))
            .is_some())
    }

    async fn count_request(&self, window: &RateWindow, limit: u32) -> Result<bool, StoreError> {
        let mut counters = lock(&self.counters);
        let count = counters
            .entry(window.key.clone())
            .or_default()
            .entry("count")
            .or_insert(0);
        if *count >= i128::from(limit) {
            return Ok(false);
        }
        *count += 1;
        Ok(true)
    }

    async fn reserve_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        reservation: &Reservation,
    ) -> Result<bool, StoreError> {
        let mut counters = lock(&self.counters);
        let usage = counters.entry(usage_key(tenant, month)).or_default();
        let committed = usage.get("committed").copied().unwrap_or(0);
        let estimate = i128::from(reservation.estimate);
        if reservation
            .budget
            .is_some_and(|b| committed + estimate > i128::from(b))
        {
            return Ok(false);
        }
        *usage.entry("committed").or_insert(0) += estimate;
        *usage.entry("images").or_insert(0) += i128::from(reservation.images);
        *usage.entry("predictions").or_insert(0) += 1;
        Ok(true)
    }

    async fn settle_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        settlement: &CostSettlement,
    ) -> Result<(), StoreError> {
        let (cost, images, predictions) = settlement.deltas();
        let mut counters = lock(&self.counters);
        let usage = counters.entry(usage_key(tenant, month)).or_default();
        *usage.entry("committed").or_insert(0) += cost;
        *usage.entry("images").or_insert(0) += images;
        *usage.entry("predictions").or_insert(0) += predictions;
        Ok(())
    }

    async fn usage(&self, tenant: &TenantId, month: &str) -> Result<Usage, StoreError> {
        let key = usage_key(tenant, month);
        let count = |name| self.counter(&key, name).max(0) as u64;
        Ok(Usage {
            predictions: count("predictions"),
            images: count("images"),
            committed: count("committed"),
        })
    }
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

    /// Stores an API key as is, for setting up a test's callers.
    pub fn put_key(&self, key: KeyRecord) {
        lock(&self.keys).insert(key.id.as_str().to_owned(), key);
    }

    /// Stores a tenant's limits as they are, for setting up a test's callers.
    pub fn put_limits(&self, limits: TenantLimits) {
        lock(&self.tenants).insert(limits.tenant.clone(), limits);
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

/// Copy and callback jobs, queued in order.
#[derive(Default)]
pub struct MemoryQueue {
    jobs: Mutex<VecDeque<CopyJob>>,
    /// Create jobs with the delay each was sent with.
    creates: Mutex<VecDeque<(CreateJob, Duration)>>,
    callbacks: Mutex<VecDeque<CallbackJob>>,
    dead_callbacks: Mutex<Vec<CallbackJob>>,
    failing_sends: Mutex<usize>,
}

impl MemoryQueue {
    /// Takes every queued create job, with its delay.
    pub fn drain_creates(&self) -> Vec<(CreateJob, Duration)> {
        lock(&self.creates).drain(..).collect()
    }

    /// Takes every queued callback job.
    pub fn drain_callbacks(&self) -> Vec<CallbackJob> {
        lock(&self.callbacks).drain(..).collect()
    }

    /// The callback jobs dead-lettered so far.
    pub fn dead_callbacks(&self) -> Vec<CallbackJob> {
        lock(&self.dead_callbacks).clone()
    }

    fn injected_failure(&self, operation: &'static str) -> Result<(), StoreError> {
        let mut failing = lock(&self.failing_sends);
        if *failing > 0 {
            *failing -= 1;
            return Err(StoreError::new(operation, "injected failure"));
        }
        Ok(())
    }

    /// Takes every queued job (a test then runs them, as the worker would).
    pub fn drain(&self) -> Vec<CopyJob> {
        lock(&self.jobs).drain(..).collect()
    }

    pub fn len(&self) -> usize {
        lock(&self.jobs).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes the next `n` sends fail, as an SQS outage would.
    pub fn fail_next_sends(&self, n: usize) {
        *lock(&self.failing_sends) = n;
    }
}

impl JobQueue for MemoryQueue {
    async fn send_copy(&self, job: &CopyJob) -> Result<(), StoreError> {
        self.injected_failure("send copy job")?;
        lock(&self.jobs).push_back(job.clone());
        Ok(())
    }

    async fn send_callback(&self, job: &CallbackJob) -> Result<(), StoreError> {
        self.injected_failure("send callback job")?;
        lock(&self.callbacks).push_back(job.clone());
        Ok(())
    }

    async fn send_create(&self, job: &CreateJob, delay: Duration) -> Result<(), StoreError> {
        self.injected_failure("send create job")?;
        lock(&self.creates).push_back((job.clone(), delay));
        Ok(())
    }

    async fn dead_letter_callback(&self, job: &CallbackJob) -> Result<(), StoreError> {
        self.injected_failure("dead-letter callback job")?;
        lock(&self.dead_callbacks).push(job.clone());
        Ok(())
    }
}

/// A multipart upload in progress: key, content type, parts so far by number (ETag, body).
type OpenUpload = (String, String, BTreeMap<i32, (String, Bytes)>);

/// S3's smallest part of a multipart upload, except the last (`EntityTooSmall`).
const S3_MIN_PART_SIZE: usize = 5 * 1024 * 1024;

#[derive(Default)]
pub struct MemoryObjects {
    objects: Mutex<HashMap<String, (Vec<u8>, String)>>,
    uploads: Mutex<HashMap<String, OpenUpload>>,
    part_sizes: Mutex<HashMap<String, Vec<usize>>>,
    started: Mutex<usize>,
    failing_puts: Mutex<usize>,
}

impl MemoryObjects {
    pub fn get(&self, key: &str) -> Option<(Vec<u8>, String)> {
        lock(&self.objects).get(key).cloned()
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = lock(&self.objects).keys().cloned().collect();
        keys.sort();
        keys
    }

    pub fn multipart_uploads_started(&self) -> usize {
        *lock(&self.started)
    }

    pub fn open_multipart_uploads(&self) -> usize {
        lock(&self.uploads).len()
    }

    pub fn part_sizes(&self, key: &str) -> Vec<usize> {
        lock(&self.part_sizes).get(key).cloned().unwrap_or_default()
    }

    /// Makes the next `n` object writes fail, as an S3 outage would.
    pub fn fail_next_puts(&self, n: usize) {
        *lock(&self.failing_puts) = n;
    }

    fn injected_failure(&self) -> Result<(), StoreError> {
        let mut failing = lock(&self.failing_puts);
        if *failing > 0 {
            *failing -= 1;
            return Err(StoreError::new("put object", "injected failure"));
        }
        Ok(())
    }
}

impl ObjectStore for MemoryObjects {
    async fn put_object(
        &self,
        key: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), StoreError> {
        self.injected_failure()?;
        lock(&self.objects).insert(key.to_owned(), (body.to_vec(), content_type.to_owned()));
        Ok(())
    }

    async fn create_multipart(&self, key: &str, content_type: &str) -> Result<String, StoreError> {
        let id = PredictionId::generate().to_string();
        lock(&self.uploads).insert(
            id.clone(),
            (key.to_owned(), content_type.to_owned(), BTreeMap::new()),
        );
        *lock(&self.started) += 1;
        Ok(id)
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        self.injected_failure()?;
        if !(1..=10_000).contains(&part_number) {
            return Err(StoreError::new(
                "upload part",
                "part numbers are 1 to 10000",
            ));
        }
        let mut uploads = lock(&self.uploads);
        let upload = uploads
            .get_mut(upload_id)
            .filter(|u| u.0 == key)
            .ok_or_else(|| StoreError::new("upload part", "no such upload"))?;
        // Like S3's (an MD5), the ETag names the content; a part uploaded again replaces it.
        let digest = sha2::Sha256::digest(&body);
        let etag: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        let etag = format!("\"{etag}\"");
        upload.2.insert(part_number, (etag.clone(), body));
        Ok(etag)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StoreError> {
        // S3's checks; a refused complete leaves the upload open, as S3 does.
        let refused = |why: &str| Err(StoreError::new("complete multipart", why));
        let mut uploads = lock(&self.uploads);
        let Some((_, content_type, uploaded)) = uploads.get(upload_id).filter(|u| u.0 == key)
        else {
            return refused("no such upload");
        };
        if parts.is_empty() {
            return refused("no parts (MalformedXML)");
        }
        if parts.windows(2).any(|w| w[0].0 >= w[1].0) {
            return refused("parts not in ascending order (InvalidPartOrder)");
        }
        let mut chosen = Vec::with_capacity(parts.len());
        for (number, etag) in parts {
            match uploaded.get(number) {
                Some((stored, body)) if stored.trim_matches('"') == etag.trim_matches('"') => {
                    chosen.push(body);
                }
                _ => return refused("a part was not uploaded with that ETag (InvalidPart)"),
            }
        }
        if chosen[..chosen.len() - 1]
            .iter()
            .any(|b| b.len() < S3_MIN_PART_SIZE)
        {
            return refused("a part other than the last is under 5 MiB (EntityTooSmall)");
        }
        let sizes = chosen.iter().map(|b| b.len()).collect();
        let body = chosen.iter().flat_map(|b| b.iter().copied()).collect();
        let content_type = content_type.clone();
        uploads.remove(upload_id);
        drop(uploads);
        lock(&self.part_sizes).insert(key.to_owned(), sizes);
        lock(&self.objects).insert(key.to_owned(), (body, content_type));
        Ok(())
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<(), StoreError> {
        match lock(&self.uploads).remove(upload_id) {
            Some(_) => Ok(()),
            None => Err(StoreError::new("abort multipart", "no such upload")),
        }
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
        Ok(format!(
            "https://bucket.example/{key}?expires-in={}",
            ttl.as_secs()
        ))
    }

    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
        ttl: Duration,
    ) -> Result<PresignedPut, StoreError> {
        Ok(PresignedPut {
            url: format!(
                "https://bucket.example/{key}?method=PUT&expires-in={}",
                ttl.as_secs()
            ),
            headers: vec![
                ("content-length".to_owned(), size.to_string()),
                ("content-type".to_owned(), content_type.to_owned()),
            ],
        })
    }

    async fn read_object(&self, key: &str, max_bytes: u64) -> Result<ObjectRead, StoreError> {
        Ok(match lock(&self.objects).get(key) {
            None => ObjectRead::Missing,
            Some((bytes, _)) if bytes.len() as u64 > max_bytes => ObjectRead::TooLarge {
                size: bytes.len() as u64,
            },
            Some((bytes, content_type)) => ObjectRead::Found {
                content_type: content_type.clone(),
                bytes: Bytes::from(bytes.clone()),
            },
        })
    }
}

/// A download that yields the given chunks.
pub struct ScriptedDownload {
    chunks: VecDeque<Vec<u8>>,
    content_type: Option<String>,
    length: Option<u64>,
}

impl ScriptedDownload {
    pub fn new(chunks: Vec<Vec<u8>>, content_type: Option<&str>) -> Self {
        let length = Some(chunks.iter().map(|c| c.len() as u64).sum());
        Self {
            chunks: chunks.into(),
            content_type: content_type.map(str::to_owned),
            length,
        }
    }

    pub fn with_length(mut self, length: u64) -> Self {
        self.length = Some(length);
        self
    }
}

impl Download for ScriptedDownload {
    fn content_type(&self) -> Option<String> {
        self.content_type.clone()
    }

    fn content_length(&self) -> Option<u64> {
        self.length
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, OutputError> {
        Ok(self.chunks.pop_front().map(Bytes::from))
    }
}

/// Output files by URL.
#[derive(Default)]
pub struct MemorySource {
    files: Mutex<HashMap<String, Vec<u8>>>,
    opened: Mutex<Vec<String>>,
}

impl MemorySource {
    pub fn insert(&self, url: &str, body: Vec<u8>) {
        lock(&self.files).insert(url.to_owned(), body);
    }

    pub fn opened(&self) -> Vec<String> {
        lock(&self.opened).clone()
    }
}

impl OutputSource for MemorySource {
    type Download = ScriptedDownload;

    async fn open(&self, url: &Url) -> Result<ScriptedDownload, OutputError> {
        lock(&self.opened).push(url.to_string());
        match lock(&self.files).get(url.as_str()) {
            Some(body) => Ok(ScriptedDownload::new(vec![body.clone()], None)),
            None => Err(OutputError::Http(404)),
        }
    }
}

/// A create call as the fake received it.
#[derive(Debug, Clone)]
pub struct CreatedCall {
    pub model: ModelRef,
    pub input: Map<String, Value>,
    pub webhook: Option<WebhookTarget>,
    pub deadline: Deadline,
}

/// Replicate, in memory: creates answer `starting` predictions with ids `rep-1`, `rep-2`, …
/// stamped with the real time; tests set what `get` answers and queue errors. `list`
/// pages through every prediction it holds, `LIST_PAGE_SIZE` at a time.
#[derive(Default)]
pub struct FakeReplicate {
    cancel_calls: Mutex<usize>,
    created: Mutex<Vec<CreatedCall>>,
    predictions: Mutex<HashMap<String, Prediction>>,
    create_errors: Mutex<VecDeque<ReplicateError>>,
    lost_answers: Mutex<usize>,
    get_errors: Mutex<HashMap<String, VecDeque<ReplicateError>>>,
    gets: Mutex<usize>,
    lists: Mutex<usize>,
    secret: Mutex<Option<WebhookSecret>>,
    secret_calls: Mutex<usize>,
}

/// Replicate's page size for `GET /predictions`.
const LIST_PAGE_SIZE: usize = 100;

impl FakeReplicate {
    pub fn created(&self) -> Vec<CreatedCall> {
        lock(&self.created).clone()
    }

    pub fn get_calls(&self) -> usize {
        *lock(&self.gets)
    }

    /// Calls of `webhook_secret`.
    pub fn cancel_calls(&self) -> usize {
        *lock(&self.cancel_calls)
    }

    pub fn secret_calls(&self) -> usize {
        *lock(&self.secret_calls)
    }

    /// Makes the next `get_prediction(id)` fail with `err` (errors queue up per id).
    pub fn fail_next_get(&self, id: &str, err: ReplicateError) {
        lock(&self.get_errors)
            .entry(id.to_owned())
            .or_default()
            .push_back(err);
    }

    /// Calls of `list_predictions`, pages included.
    pub fn list_calls(&self) -> usize {
        *lock(&self.lists)
    }

    /// Makes the next create fail without creating anything (errors queue up in order).
    pub fn fail_next_create(&self, err: ReplicateError) {
        lock(&self.create_errors).push_back(err);
    }

    /// Makes the next create succeed at Replicate but lose its answer: the prediction is
    /// created (and `created`, get and list see it) while the caller gets
    /// `CreateOutcomeUnknown`, as after a gateway error or a timeout. Calls add up.
    pub fn lose_next_create_answer(&self) {
        *lock(&self.lost_answers) += 1;
    }

    fn take_lost_answer(&self) -> bool {
        let mut lost = lock(&self.lost_answers);
        let take = *lost > 0;
        *lost = lost.saturating_sub(1);
        take
    }

    /// The stored predictions created in [after, before), newest first (ties: latest
    /// `rep-N` first), as the list shows them.
    fn listed(&self, after: Timestamp, before: Timestamp) -> Vec<Prediction> {
        let mut listed: Vec<(Timestamp, u64, Prediction)> = lock(&self.predictions)
            .values()
            .filter_map(|p| {
                let created = p.created_at.as_deref().and_then(Timestamp::parse_rfc3339)?;
                (after..before)
                    .contains(&created)
                    .then(|| (created, creation_number(&p.id), p.clone()))
            })
            .collect();
        listed.sort_by_key(|(created, number, _)| std::cmp::Reverse((*created, *number)));
        listed.into_iter().map(|(_, _, p)| p).collect()
    }

    /// Sets what `get_prediction` answers for `prediction.id`.
    pub fn set_prediction(&self, prediction: Prediction) {
        lock(&self.predictions).insert(prediction.id.clone(), prediction);
    }

    /// Makes `get_prediction` answer 404 for `id`, as for a prediction Replicate deleted.
    pub fn forget(&self, id: &str) {
        lock(&self.predictions).remove(id);
    }

    pub fn set_secret(&self, secret: WebhookSecret) {
        *lock(&self.secret) = Some(secret);
    }

    pub fn prediction(id: &str, status: PredictionStatus, output: Vec<String>) -> Prediction {
        Prediction {
            id: id.to_owned(),
            model: String::new(),
            version: None,
            input: Map::new(),
            output,
            error: None,
            logs: None,
            status,
            data_removed: false,
            created_at: Some("2025-01-01T00:00:00.000Z".to_owned()),
            started_at: None,
            completed_at: None,
            urls: Default::default(),
            metrics: Default::default(),
            deadline: None,
        }
    }
}

/// `N` of a fake id `rep-N` (0 for other ids): the order creates happened in.
fn creation_number(id: &str) -> u64 {
    id.strip_prefix("rep-")
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The fake's `next` links: `page:2`, `page:3`, …
fn list_page_number(page: Option<&str>) -> Result<usize, ReplicateError> {
    let Some(link) = page else { return Ok(1) };
    link.strip_prefix("page:")
        .and_then(|n| n.parse().ok())
        .filter(|n| *n >= 1)
        .ok_or_else(|| ReplicateError::InvalidResponse {
            status: 200,
            message: format!("not a next link of this fake: {link}"),
        })
}

impl ReplicateApi for FakeReplicate {
    async fn create_prediction(
        &self,
        model: &ModelRef,
        input: &Map<String, Value>,
        webhook: Option<&WebhookTarget>,
        deadline: Deadline,
    ) -> Result<Prediction, ReplicateError> {
        if let Some(err) = lock(&self.create_errors).pop_front() {
            return Err(err);
        }
        let mut created = lock(&self.created);
        created.push(CreatedCall {
            model: model.clone(),
            input: input.clone(),
            webhook: webhook.cloned(),
            deadline,
        });
        let mut prediction = Self::prediction(
            &format!("rep-{}", created.len()),
            PredictionStatus::Starting,
            vec![],
        );
        prediction.model = model.path();
        prediction.version = model.version.as_ref().map(|v| v.to_string());
        prediction.input = input.clone();
        // The real time, so a list over a window around "now" finds it.
        prediction.created_at = Some(Timestamp::now().rfc3339());
        lock(&self.predictions).insert(prediction.id.clone(), prediction.clone());
        if self.take_lost_answer() {
            return Err(ReplicateError::CreateOutcomeUnknown {
                reason: "the answer was lost (simulated)".to_owned(),
            });
        }
        Ok(prediction)
    }

    async fn list_predictions(
        &self,
        created_after: std::time::SystemTime,
        created_before: std::time::SystemTime,
        page: Option<&str>,
    ) -> Result<crate::domain::replicate::PredictionPage, ReplicateError> {
        *lock(&self.lists) += 1;
        let number = list_page_number(page)?;
        // Like the client's query, the end is rounded up to a whole millisecond.
        let listed = self.listed(
            Timestamp::from_system(created_after),
            Timestamp::from_system(created_before + std::time::Duration::from_nanos(999_999)),
        );
        let start = (number - 1).saturating_mul(LIST_PAGE_SIZE);
        let results: Vec<Prediction> = listed
            .iter()
            .skip(start)
            .take(LIST_PAGE_SIZE)
            .cloned()
            .collect();
        let more = listed.len() > start.saturating_add(LIST_PAGE_SIZE);
        Ok(crate::domain::replicate::PredictionPage {
            results,
            next: more.then(|| format!("page:{}", number + 1)),
        })
    }

    async fn get_prediction(&self, id: &str) -> Result<Prediction, ReplicateError> {
        *lock(&self.gets) += 1;
        if let Some(err) = lock(&self.get_errors)
            .get_mut(id)
            .and_then(VecDeque::pop_front)
        {
            return Err(err);
        }
        lock(&self.predictions)
            .get(id)
            .cloned()
            .ok_or(ReplicateError::Rejected {
                status: 404,
                problem: Default::default(),
            })
    }

    async fn cancel_prediction(&self, id: &str) -> Result<Prediction, ReplicateError> {
        *lock(&self.cancel_calls) += 1;
        let mut predictions = lock(&self.predictions);
        let prediction = predictions.get_mut(id).ok_or(ReplicateError::Rejected {
            status: 404,
            problem: Default::default(),
        })?;
        if !prediction.status.is_terminal() {
            prediction.status = PredictionStatus::Canceled;
        }
        Ok(prediction.clone())
    }

    async fn webhook_secret(&self) -> Result<WebhookSecret, ReplicateError> {
        *lock(&self.secret_calls) += 1;
        lock(&self.secret).clone().ok_or(ReplicateError::Rejected {
            status: 404,
            problem: Default::default(),
        })
    }

    async fn get_model(&self, owner: &str, name: &str) -> Result<Model, ReplicateError> {
        Ok(Model {
            owner: owner.to_owned(),
            name: name.to_owned(),
            is_official: false,
            visibility: Some("public".to_owned()),
            latest_version: None,
        })
    }
}

/// One port call as `Recorded` writes it down: the method, and the key prefix it acted on
/// where that varies: object store calls (`outputs/*`, `inputs/*`), which IAM scopes S3
/// actions by, and claim calls (`cache#`, `idem#`), which it scopes table items by.
pub type RecordedCall = (&'static str, Option<String>);

/// Wraps a store and writes down every port method called on it: which calls a handler
/// makes decides which IAM actions its function needs (and on which resources).
pub struct Recorded<T> {
    pub inner: T,
    calls: std::sync::Arc<Mutex<Vec<RecordedCall>>>,
}

impl<T> Recorded<T> {
    pub fn new(inner: T, calls: std::sync::Arc<Mutex<Vec<RecordedCall>>>) -> Self {
        Self { inner, calls }
    }

    fn note(&self, method: &'static str) {
        lock(&self.calls).push((method, None));
    }

    /// A claim call on `key`, written down with the key's prefix (`cache#`, `idem#`).
    fn note_claim(&self, method: &'static str, key: &str) {
        let prefix = key.split_once('#').map_or(key, |(prefix, _)| prefix);
        lock(&self.calls).push((method, Some(format!("{prefix}#"))));
    }

    /// An object store call on `key`, written down with the key's prefix.
    fn note_key(&self, method: &'static str, key: &str) {
        let prefix = key.split_once('/').map_or(key, |(prefix, _)| prefix);
        lock(&self.calls).push((method, Some(format!("{prefix}/*"))));
    }
}

impl<T: RecordStore> RecordStore for Recorded<T> {
    async fn try_claim(&self, claim: &Claim) -> Result<ClaimOutcome, StoreError> {
        self.note_claim("try_claim", &claim.key);
        self.inner.try_claim(claim).await
    }

    async fn replace_claim(&self, claim: &Claim, expected_token: &str) -> Result<bool, StoreError> {
        self.note_claim("replace_claim", &claim.key);
        self.inner.replace_claim(claim, expected_token).await
    }

    async fn settle_claim(
        &self,
        key: &str,
        guard: ClaimGuard<'_>,
        settlement: &Settlement<'_>,
    ) -> Result<bool, StoreError> {
        self.note_claim("settle_claim", key);
        self.inner.settle_claim(key, guard, settlement).await
    }

    async fn release_claim(&self, key: &str, guard: ClaimGuard<'_>) -> Result<bool, StoreError> {
        self.note_claim("release_claim", key);
        self.inner.release_claim(key, guard).await
    }

    async fn insert_prediction(&self, record: &PredictionRecord) -> Result<(), StoreError> {
        self.note("insert_prediction");
        self.inner.insert_prediction(record).await
    }

    async fn get_prediction(
        &self,
        id: &PredictionId,
    ) -> Result<Option<PredictionRecord>, StoreError> {
        self.note("get_prediction");
        self.inner.get_prediction(id).await
    }

    async fn attach_replicate_id(
        &self,
        id: &PredictionId,
        replicate_id: &str,
        expires_at: u64,
    ) -> Result<bool, StoreError> {
        self.note("attach_replicate_id");
        self.inner
            .attach_replicate_id(id, replicate_id, expires_at)
            .await
    }

    async fn advance(&self, id: &PredictionId, advance: &Advance) -> Result<bool, StoreError> {
        self.note("advance");
        self.inner.advance(id, advance).await
    }

    async fn callback_queued(
        &self,
        id: &PredictionId,
        event: CallbackEvent,
    ) -> Result<bool, StoreError> {
        self.note("callback_queued");
        self.inner.callback_queued(id, event).await
    }

    async fn callback_attempted(
        &self,
        id: &PredictionId,
        event: CallbackEvent,
        status: CallbackStatus,
    ) -> Result<(), StoreError> {
        self.note("callback_attempted");
        self.inner.callback_attempted(id, event, status).await
    }

    async fn claim_sync(
        &self,
        id: &PredictionId,
        mark: SyncMark,
        now: Timestamp,
        not_since: Timestamp,
    ) -> Result<bool, StoreError> {
        self.note("claim_sync");
        self.inner.claim_sync(id, mark, now, not_since).await
    }

    async fn claim_create(&self, id: &PredictionId, now: Timestamp) -> Result<bool, StoreError> {
        self.note("claim_create");
        self.inner.claim_create(id, now).await
    }

    async fn mark_queued(&self, id: &PredictionId, queue: &QueueState) -> Result<bool, StoreError> {
        self.note("mark_queued");
        self.inner.mark_queued(id, queue).await
    }

    async fn release_create(
        &self,
        id: &PredictionId,
        sent_at: Timestamp,
        slot_at: Timestamp,
    ) -> Result<bool, StoreError> {
        self.note("release_create");
        self.inner.release_create(id, sent_at, slot_at).await
    }

    async fn reserve_create_slot(
        &self,
        pace: &Pace,
        now: Timestamp,
    ) -> Result<CreateSlot, StoreError> {
        self.note("reserve_create_slot");
        self.inner.reserve_create_slot(pace, now).await
    }

    async fn list_tenant(
        &self,
        tenant: &TenantId,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<TenantPage, StoreError> {
        self.note("list_tenant");
        self.inner.list_tenant(tenant, cursor, limit).await
    }

    async fn list_open(
        &self,
        shard: &str,
        created_before: Timestamp,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<OpenPage, StoreError> {
        self.note("list_open");
        self.inner
            .list_open(shard, created_before, cursor, limit)
            .await
    }
}

impl<T: AccountStore> AccountStore for Recorded<T> {
    async fn put_upload(&self, upload: &UploadRecord) -> Result<(), StoreError> {
        self.note_claim("put_upload", &format!("upload#{}", upload.id));
        self.inner.put_upload(upload).await
    }

    async fn get_upload(&self, id: &UploadId) -> Result<Option<UploadRecord>, StoreError> {
        self.note_claim("get_upload", &format!("upload#{id}"));
        self.inner.get_upload(id).await
    }

    async fn callback_secret(
        &self,
        tenant: &TenantId,
        candidate: &str,
    ) -> Result<String, StoreError> {
        self.note_claim("callback_secret", &format!("whsec#{tenant}"));
        self.inner.callback_secret(tenant, candidate).await
    }

    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        self.note("create_key");
        self.inner.create_key(key).await
    }

    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.note("get_key");
        self.inner.get_key(id).await
    }

    async fn update_tenant(&self, update: &LimitsUpdate) -> Result<TenantLimits, StoreError> {
        self.note("update_tenant");
        self.inner.update_tenant(update).await
    }

    async fn get_tenant(&self, tenant: &TenantId) -> Result<Option<TenantLimits>, StoreError> {
        self.note("get_tenant");
        self.inner.get_tenant(tenant).await
    }

    async fn revoke_key(&self, id: &KeyId, at: Timestamp) -> Result<bool, StoreError> {
        self.note("revoke_key");
        self.inner.revoke_key(id, at).await
    }

    async fn count_request(&self, window: &RateWindow, limit: u32) -> Result<bool, StoreError> {
        self.note("count_request");
        self.inner.count_request(window, limit).await
    }

    async fn reserve_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        reservation: &Reservation,
    ) -> Result<bool, StoreError> {
        self.note("reserve_cost");
        self.inner.reserve_cost(tenant, month, reservation).await
    }

    async fn settle_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        settlement: &CostSettlement,
    ) -> Result<(), StoreError> {
        self.note("settle_cost");
        self.inner.settle_cost(tenant, month, settlement).await
    }

    async fn usage(&self, tenant: &TenantId, month: &str) -> Result<Usage, StoreError> {
        self.note("usage");
        self.inner.usage(tenant, month).await
    }
}

impl<T: JobQueue> JobQueue for Recorded<T> {
    async fn send_copy(&self, job: &CopyJob) -> Result<(), StoreError> {
        self.note("send_copy");
        self.inner.send_copy(job).await
    }

    async fn send_callback(&self, job: &CallbackJob) -> Result<(), StoreError> {
        self.note("send_callback");
        self.inner.send_callback(job).await
    }

    async fn send_create(&self, job: &CreateJob, delay: Duration) -> Result<(), StoreError> {
        self.note("send_create");
        self.inner.send_create(job, delay).await
    }

    async fn dead_letter_callback(&self, job: &CallbackJob) -> Result<(), StoreError> {
        self.note("dead_letter_callback");
        self.inner.dead_letter_callback(job).await
    }
}

impl<T: ObjectStore> ObjectStore for Recorded<T> {
    async fn put_object(
        &self,
        key: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), StoreError> {
        self.note_key("put_object", key);
        self.inner.put_object(key, content_type, body).await
    }

    async fn create_multipart(&self, key: &str, content_type: &str) -> Result<String, StoreError> {
        self.note_key("create_multipart", key);
        self.inner.create_multipart(key, content_type).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        self.note_key("upload_part", key);
        self.inner
            .upload_part(key, upload_id, part_number, body)
            .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StoreError> {
        self.note_key("complete_multipart", key);
        self.inner.complete_multipart(key, upload_id, parts).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.note_key("abort_multipart", key);
        self.inner.abort_multipart(key, upload_id).await
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
        self.note_key("presign_get", key);
        self.inner.presign_get(key, ttl).await
    }

    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
        ttl: Duration,
    ) -> Result<PresignedPut, StoreError> {
        self.note_key("presign_put", key);
        self.inner.presign_put(key, content_type, size, ttl).await
    }

    async fn read_object(&self, key: &str, max_bytes: u64) -> Result<ObjectRead, StoreError> {
        self.note_key("read_object", key);
        self.inner.read_object(key, max_bytes).await
    }
}

#[cfg(test)]
mod fake_replicate_tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn model() -> ModelRef {
        ModelRef::parse("black-forest-labs/flux-schnell").unwrap()
    }

    #[tokio::test]
    async fn a_lost_answer_still_creates_and_the_list_pages_newest_first() {
        let fake = FakeReplicate::default();
        let since = SystemTime::now() - Duration::from_secs(1);
        for _ in 0..100 {
            fake.create_prediction(&model(), &Map::new(), None, Deadline::MAX)
                .await
                .unwrap();
        }
        fake.lose_next_create_answer();
        let lost = fake
            .create_prediction(&model(), &Map::new(), None, Deadline::MAX)
            .await;
        assert!(matches!(
            lost,
            Err(ReplicateError::CreateOutcomeUnknown { .. })
        ));
        assert_eq!(fake.created().len(), 101);
        assert!(fake.get_prediction("rep-101").await.is_ok());
        fake.set_prediction(FakeReplicate::prediction(
            "old",
            PredictionStatus::Starting,
            vec![],
        ));

        let until = SystemTime::now();
        let first = fake.list_predictions(since, until, None).await.unwrap();
        assert_eq!(first.results.len(), 100);
        assert_eq!(first.results[0].id, "rep-101", "newest first");
        let next = first.next.expect("a second page");
        let last = fake
            .list_predictions(since, until, Some(&next))
            .await
            .unwrap();
        let ids: Vec<&str> = last.results.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            (ids, last.next),
            (vec!["rep-1"], None),
            "2025's `old` is outside"
        );
        assert!(
            fake.list_predictions(since, until, Some("https://elsewhere/"))
                .await
                .is_err()
        );
        assert_eq!(fake.list_calls(), 3);
    }
}
