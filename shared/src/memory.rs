//! In-memory implementations of the ports, for unit tests of the handlers. They follow the
//! same conditional-write rules as the DynamoDB and S3 adapters.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use url::Url;

use crate::outputs::{Download, OutputError, OutputSource};
use crate::ports::{ClaimOutcome, ObjectStore, RecordStore, StoreError};
use crate::record::{Advance, Claim, ClaimGuard, Millis, PredictionId, PredictionRecord};
use crate::replicate::{
    Model, ModelRef, Prediction, PredictionStatus, ReplicateApi, ReplicateError, WebhookTarget,
};
use crate::webhook::WebhookSecret;

/// The in-memory ports, for handler tests.
pub struct InMemory;

impl crate::app::Ports for InMemory {
    type Replicate = FakeReplicate;
    type Records = MemoryRecords;
    type Objects = MemoryObjects;
    type Downloads = MemorySource;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Default)]
pub struct MemoryRecords {
    predictions: Mutex<HashMap<PredictionId, PredictionRecord>>,
    claims: Mutex<HashMap<String, Claim>>,
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
}

fn guard_holds(claim: &Claim, guard: ClaimGuard<'_>) -> bool {
    match guard {
        ClaimGuard::Token(token) => claim.token == token,
        ClaimGuard::Prediction(id) => claim.prediction_id.as_ref() == Some(id),
    }
}

impl RecordStore for MemoryRecords {
    async fn try_claim(&self, claim: &Claim, now: Millis) -> Result<ClaimOutcome, StoreError> {
        let mut claims = lock(&self.claims);
        match claims.get(&claim.key) {
            Some(held) if !held.is_expired(now) => Ok(ClaimOutcome::HeldBy(held.clone())),
            _ => {
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
        prediction_id: &PredictionId,
        lease_until: Millis,
    ) -> Result<bool, StoreError> {
        let mut claims = lock(&self.claims);
        match claims.get_mut(key) {
            Some(claim) if guard_holds(claim, guard) => {
                claim.prediction_id = Some(prediction_id.clone());
                claim.lease_until = lease_until;
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
    ) -> Result<bool, StoreError> {
        let mut predictions = lock(&self.predictions);
        match predictions.get_mut(id) {
            Some(r)
                if r.replicate_id
                    .as_deref()
                    .is_none_or(|have| have == replicate_id) =>
            {
                r.replicate_id = Some(replicate_id.to_owned());
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
        let same_prediction = match (&record.replicate_id, &advance.replicate_id) {
            (Some(have), Some(given)) => have == given,
            _ => true,
        };
        if !same_prediction || !record.status.can_advance_to(&advance.status) {
            return Ok(false);
        }
        record.status = advance.status.clone();
        if advance.replicate_id.is_some() {
            record.replicate_id = advance.replicate_id.clone();
        }
        record.outputs = advance.outputs.clone();
        record.error = advance.error.clone();
        if advance.metrics.is_some() {
            record.metrics = advance.metrics.clone();
        }
        record.started_at = advance.started_at.or(record.started_at);
        record.completed_at = advance.completed_at.or(record.completed_at);
        Ok(true)
    }

    async fn claim_sync(
        &self,
        id: &PredictionId,
        now: Millis,
        not_since: Millis,
    ) -> Result<bool, StoreError> {
        let mut predictions = lock(&self.predictions);
        match predictions.get_mut(id) {
            Some(r) if r.synced_at.is_none_or(|t| t < not_since) => {
                r.synced_at = Some(now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn delete_prediction(&self, id: &PredictionId) -> Result<(), StoreError> {
        lock(&self.predictions).remove(id);
        Ok(())
    }

    async fn list_open(
        &self,
        created_before: Millis,
        limit: usize,
    ) -> Result<Vec<PredictionRecord>, StoreError> {
        let mut open: Vec<PredictionRecord> = lock(&self.predictions)
            .values()
            .filter(|r| !r.status.is_terminal() && r.created_at < created_before)
            .cloned()
            .collect();
        open.sort_by_key(|r| r.created_at);
        open.truncate(limit);
        Ok(open)
    }
}

/// A multipart upload in progress: key, content type, parts so far.
type OpenUpload = (String, String, Vec<(i32, Bytes)>);

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
            (key.to_owned(), content_type.to_owned(), Vec::new()),
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
        let mut uploads = lock(&self.uploads);
        let upload = uploads
            .get_mut(upload_id)
            .filter(|u| u.0 == key)
            .ok_or_else(|| StoreError::new("upload part", "no such upload"))?;
        upload.2.push((part_number, body));
        Ok(format!("etag-{part_number}"))
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StoreError> {
        let (stored_key, content_type, mut uploaded) = lock(&self.uploads)
            .remove(upload_id)
            .ok_or_else(|| StoreError::new("complete multipart", "no such upload"))?;
        if stored_key != key || uploaded.len() != parts.len() {
            return Err(StoreError::new("complete multipart", "parts do not match"));
        }
        uploaded.sort_by_key(|(n, _)| *n);
        let sizes = uploaded.iter().map(|(_, b)| b.len()).collect();
        let body = uploaded
            .iter()
            .flat_map(|(_, b)| b.iter().copied())
            .collect();
        lock(&self.part_sizes).insert(key.to_owned(), sizes);
        lock(&self.objects).insert(key.to_owned(), (body, content_type));
        Ok(())
    }

    async fn abort_multipart(&self, _key: &str, upload_id: &str) -> Result<(), StoreError> {
        lock(&self.uploads).remove(upload_id);
        Ok(())
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
        Ok(format!(
            "https://bucket.example/{key}?expires-in={}",
            ttl.as_secs()
        ))
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
}

/// Replicate, in memory: creates answer `starting` predictions with ids `rep-1`, `rep-2`, …;
/// tests set what `get` answers and queue errors.
#[derive(Default)]
pub struct FakeReplicate {
    created: Mutex<Vec<CreatedCall>>,
    predictions: Mutex<HashMap<String, Prediction>>,
    create_errors: Mutex<VecDeque<ReplicateError>>,
    gets: Mutex<usize>,
    secret: Mutex<Option<WebhookSecret>>,
}

impl FakeReplicate {
    pub fn created(&self) -> Vec<CreatedCall> {
        lock(&self.created).clone()
    }

    pub fn get_calls(&self) -> usize {
        *lock(&self.gets)
    }

    pub fn fail_next_create(&self, err: ReplicateError) {
        lock(&self.create_errors).push_back(err);
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

impl ReplicateApi for FakeReplicate {
    async fn create_prediction(
        &self,
        model: &ModelRef,
        input: &Map<String, Value>,
        webhook: Option<&WebhookTarget>,
    ) -> Result<Prediction, ReplicateError> {
        if let Some(err) = lock(&self.create_errors).pop_front() {
            return Err(err);
        }
        let mut created = lock(&self.created);
        created.push(CreatedCall {
            model: model.clone(),
            input: input.clone(),
            webhook: webhook.cloned(),
        });
        let mut prediction = Self::prediction(
            &format!("rep-{}", created.len()),
            PredictionStatus::Starting,
            vec![],
        );
        prediction.model = model.path();
        prediction.version = model.version.as_ref().map(|v| v.to_string());
        prediction.input = input.clone();
        lock(&self.predictions).insert(prediction.id.clone(), prediction.clone());
        Ok(prediction)
    }

    async fn get_prediction(&self, id: &str) -> Result<Prediction, ReplicateError> {
        *lock(&self.gets) += 1;
        lock(&self.predictions)
            .get(id)
            .cloned()
            .ok_or(ReplicateError::Rejected {
                status: 404,
                problem: Default::default(),
            })
    }

    async fn cancel_prediction(&self, id: &str) -> Result<Prediction, ReplicateError> {
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

/// Wraps a store and writes down the name of every port method called on it: which calls a
/// handler makes decides which IAM actions its function needs.
pub struct Recorded<T> {
    pub inner: T,
    calls: std::sync::Arc<Mutex<Vec<&'static str>>>,
}

impl<T> Recorded<T> {
    pub fn new(inner: T, calls: std::sync::Arc<Mutex<Vec<&'static str>>>) -> Self {
        Self { inner, calls }
    }

    fn note(&self, method: &'static str) {
        lock(&self.calls).push(method);
    }
}

impl<T: RecordStore> RecordStore for Recorded<T> {
    async fn try_claim(&self, claim: &Claim, now: Millis) -> Result<ClaimOutcome, StoreError> {
        self.note("try_claim");
        self.inner.try_claim(claim, now).await
    }

    async fn replace_claim(&self, claim: &Claim, expected_token: &str) -> Result<bool, StoreError> {
        self.note("replace_claim");
        self.inner.replace_claim(claim, expected_token).await
    }

    async fn settle_claim(
        &self,
        key: &str,
        guard: ClaimGuard<'_>,
        prediction_id: &PredictionId,
        lease_until: Millis,
    ) -> Result<bool, StoreError> {
        self.note("settle_claim");
        self.inner
            .settle_claim(key, guard, prediction_id, lease_until)
            .await
    }

    async fn release_claim(&self, key: &str, guard: ClaimGuard<'_>) -> Result<bool, StoreError> {
        self.note("release_claim");
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
    ) -> Result<bool, StoreError> {
        self.note("attach_replicate_id");
        self.inner.attach_replicate_id(id, replicate_id).await
    }

    async fn advance(&self, id: &PredictionId, advance: &Advance) -> Result<bool, StoreError> {
        self.note("advance");
        self.inner.advance(id, advance).await
    }

    async fn claim_sync(
        &self,
        id: &PredictionId,
        now: Millis,
        not_since: Millis,
    ) -> Result<bool, StoreError> {
        self.note("claim_sync");
        self.inner.claim_sync(id, now, not_since).await
    }

    async fn delete_prediction(&self, id: &PredictionId) -> Result<(), StoreError> {
        self.note("delete_prediction");
        self.inner.delete_prediction(id).await
    }

    async fn list_open(
        &self,
        created_before: Millis,
        limit: usize,
    ) -> Result<Vec<PredictionRecord>, StoreError> {
        self.note("list_open");
        self.inner.list_open(created_before, limit).await
    }
}

impl<T: ObjectStore> ObjectStore for Recorded<T> {
    async fn put_object(
        &self,
        key: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), StoreError> {
        self.note("put_object");
        self.inner.put_object(key, content_type, body).await
    }

    async fn create_multipart(&self, key: &str, content_type: &str) -> Result<String, StoreError> {
        self.note("create_multipart");
        self.inner.create_multipart(key, content_type).await
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        self.note("upload_part");
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
        self.note("complete_multipart");
        self.inner.complete_multipart(key, upload_id, parts).await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.note("abort_multipart");
        self.inner.abort_multipart(key, upload_id).await
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
        self.note("presign_get");
        self.inner.presign_get(key, ttl).await
    }
}
