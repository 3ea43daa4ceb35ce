//! `Recorded`: any store, with every port method called on it written down (the template
//! test compares them with each function's IAM grants).

use super::*;

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

    async fn get_key(&self, id: &KeyId) -> Result<Option<StoredKey>, StoreError> {
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
