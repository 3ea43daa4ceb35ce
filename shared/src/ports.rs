//! The storage the handlers depend on, as small traits: DynamoDB and S3 implement them in
//! production (`aws`), in-memory fakes in unit tests (`memory`).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use serde::{Deserialize, Serialize};

use crate::callbacks::{CallbackEvent, CallbackJob, CallbackStatus};
use crate::pacing::{CreateSlot, Pace};
use crate::record::{Advance, Claim, ClaimGuard, PredictionId, PredictionRecord, QueueState};
use crate::replicate::Prediction;
use crate::tenancy::{
    CostSettlement, KeyId, KeyRecord, LimitsUpdate, RateWindow, Reservation, TenantId,
    TenantLimits, Usage,
};
use crate::time::Timestamp;
use crate::uploads::{UploadId, UploadRecord};

/// A storage call failed. The message is for logs only; clients see a generic 5xx.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {message}")]
pub struct StoreError {
    pub operation: &'static str,
    pub message: String,
}

impl StoreError {
    pub fn new(operation: &'static str, message: impl Into<String>) -> Self {
        Self {
            operation,
            message: message.into(),
        }
    }
}

/// The outcome of trying to take a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Claimed,
    /// Someone else holds it; this is their claim, as stored.
    HeldBy(Claim),
}

/// The open (not yet terminal) predictions are spread over this many index partitions, so
/// one busy partition key cannot throttle the index; a record's shard is the first hex
/// digit of its id.
pub const OPEN_SHARDS: &[&str] = &[
    "open#0", "open#1", "open#2", "open#3", "open#4", "open#5", "open#6", "open#7", "open#8",
    "open#9", "open#a", "open#b", "open#c", "open#d", "open#e", "open#f",
];

/// The one shard of records written before the index was sharded; the reconciler reads it
/// too until it is empty.
pub const LEGACY_OPEN_SHARD: &str = "open";

/// The shard of the open index a prediction is listed under while it runs.
pub fn open_shard(id: &PredictionId) -> &'static str {
    let digit = id.as_str().as_bytes().first().copied().unwrap_or(b'0');
    let index = match digit {
        b'0'..=b'9' => usize::from(digit - b'0'),
        b'a'..=b'f' => usize::from(digit - b'a') + 10,
        _ => 0,
    };
    OPEN_SHARDS[index]
}

/// One page of open predictions, oldest first, and where the next page starts. Only keys:
/// the reconciler reads each record itself (strongly consistent, and the index may then
/// project keys only, which saves an index write per prediction).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OpenPage {
    pub entries: Vec<OpenEntry>,
    /// Opaque; `None` when the shard has no more.
    pub next: Option<String>,
}

/// An open prediction as the index lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenEntry {
    pub id: PredictionId,
    pub created_at: Timestamp,
}

/// One page of a tenant's predictions, newest first, and where the next page starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TenantPage {
    pub entries: Vec<OpenEntry>,
    /// Where the next page starts; `None` when there are no more.
    pub next: Option<ListCursor>,
}

/// Where a page of a tenant's predictions ends: the last one's creation time and id. Opaque
/// to clients (`encode`), and meaningful only within the caller's own tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: Timestamp,
    pub id: PredictionId,
}

impl ListCursor {
    /// URL-safe base64 of `created_at.id`.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
            "{}.{}",
            self.created_at.as_millis(),
            self.id
        ))
    }

    pub fn decode(text: &str) -> Option<Self> {
        use base64::Engine as _;
        if text.len() > 128 {
            return None;
        }
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .ok()?;
        let text = String::from_utf8(bytes).ok()?;
        let (created_at, id) = text.split_once('.')?;
        Some(Self {
            created_at: created_at.parse().map(Timestamp::from_millis).ok()?,
            id: PredictionId::parse(id).ok()?,
        })
    }
}

/// A time a record keeps of its last sync of one kind (`claim_sync`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncMark {
    /// A fetch asked Replicate (`synced_at`).
    Fetched,
    /// A fetch or the reconciler queued the output copy (`copy_queued_at`).
    CopyQueued,
    /// A client asked to cancel it (`cancel_requested_at`).
    CancelRequested,
}

/// How a claim is settled: who does the work, until when nobody else may take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement<'a> {
    pub prediction_id: &'a PredictionId,
    /// Never shortens a lease already longer (completion may have set the cache window).
    pub lease_until: Timestamp,
    pub from_cache: bool,
}

pub trait RecordStore: Send + Sync {
    /// Takes `claim` if nobody holds its key (one conditional write; otherwise the holder
    /// comes back in the same trip). A held key is never taken here, whatever its lease:
    /// whether taking over is safe depends on the holder's prediction, so the caller decides
    /// and takes over with `replace_claim`.
    fn try_claim(
        &self,
        claim: &Claim,
    ) -> impl Future<Output = Result<ClaimOutcome, StoreError>> + Send;

    /// Replaces the claim at `claim.key` only if it is still held by `expected_token`.
    fn replace_claim(
        &self,
        claim: &Claim,
        expected_token: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Points a claim at a prediction and extends its lease, if `guard` still holds and the
    /// stored lease is not already longer.
    fn settle_claim(
        &self,
        key: &str,
        guard: ClaimGuard<'_>,
        settlement: &Settlement<'_>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Deletes a claim if `guard` still holds it.
    fn release_claim(
        &self,
        key: &str,
        guard: ClaimGuard<'_>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Stores a new prediction; fails if the id exists.
    fn insert_prediction(
        &self,
        record: &PredictionRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Reads a prediction (strongly consistent).
    fn get_prediction(
        &self,
        id: &PredictionId,
    ) -> impl Future<Output = Result<Option<PredictionRecord>, StoreError>> + Send;

    /// Records Replicate's id for a prediction, unless it already has a different one or
    /// another prediction of ours already has this Replicate id: a `replicate#<id>` binding
    /// (kept until `expires_at`, the record's TTL) is claimed first, then the record updated;
    /// a refused update gives the binding back. A Replicate prediction belongs to one record.
    fn attach_replicate_id(
        &self,
        id: &PredictionId,
        replicate_id: &str,
        expires_at: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Applies `advance` only if it moves the status forward and the record is tied to the
    /// Replicate prediction `advance` names (or, naming none, to none).
    /// `false` means the stored state was already as far or further along.
    fn advance(
        &self,
        id: &PredictionId,
        advance: &Advance,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Sets the record's `mark` to `now`, only if it was last set before `not_since`: at
    /// most one fetch asks Replicate per interval, and polling sources queue at most one
    /// copy job per visibility timeout.
    fn claim_sync(
        &self,
        id: &PredictionId,
        mark: SyncMark,
        now: Timestamp,
        not_since: Timestamp,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Claims a queued prediction's create for one drainer: sets its `sent_at` to `now`,
    /// only if it is queued, unsent, untied, not asked to cancel and not ended. `false`:
    /// someone else sent it, or it must not be sent.
    fn claim_create(
        &self,
        id: &PredictionId,
        now: Timestamp,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Puts a stored, never-created record in the create queue (a submit's create that
    /// Replicate throttled): sets `queue` only if the record is untied, not ended and not
    /// queued already.
    fn mark_queued(
        &self,
        id: &PredictionId,
        queue: &QueueState,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Gives a claimed create back (Replicate certainly created nothing, e.g. it throttled):
    /// clears `sent_at` if it is still `sent_at` and the record is still untied, and gives it
    /// the create slot `slot_at`.
    fn release_create(
        &self,
        id: &PredictionId,
        sent_at: Timestamp,
        slot_at: Timestamp,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The create pacer's step (`pacing`): reads the stored slot time and moves it on with a
    /// conditional write, shared by every instance.
    fn reserve_create_slot(
        &self,
        pace: &Pace,
        now: Timestamp,
    ) -> impl Future<Output = Result<CreateSlot, StoreError>> + Send;

    /// Notes that `event`'s callback was queued: it becomes the event whose delivery the
    /// record shows (`pending`) unless it or a later one is shown already (`false`). For
    /// `completed`, the record leaves the open index either way.
    fn callback_queued(
        &self,
        id: &PredictionId,
        event: CallbackEvent,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Counts one delivery attempt of `event`, and shows `event` with `status` unless a later
    /// event is shown or this one was delivered already. An attempt of `completed` also takes
    /// the record out of the open index (its job exists).
    fn callback_attempted(
        &self,
        id: &PredictionId,
        event: CallbackEvent,
        status: CallbackStatus,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `limit` of a tenant's predictions, newest first, after `cursor` (a tie in
    /// creation time is broken by id, so paging never skips or repeats one).
    fn list_tenant(
        &self,
        tenant: &TenantId,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> impl Future<Output = Result<TenantPage, StoreError>> + Send;

    /// Up to `limit` predictions of one `shard` not yet terminal that were created before
    /// `created_before`, oldest first, from `cursor` on (for the reconciler).
    fn list_open(
        &self,
        shard: &str,
        created_before: Timestamp,
        cursor: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<OpenPage, StoreError>> + Send;
}

/// Creating a queued prediction at Replicate (README, "Bursts"): everything else is in its
/// record, read when the job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateJob {
    pub prediction_id: PredictionId,
}

/// Copying a succeeded prediction's outputs into the bucket, as a job on a durable queue:
/// webhooks and syncs answer at once and a worker with its own deadline does the copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyJob {
    pub prediction_id: PredictionId,
    /// Replicate's state as delivered, without `input` and `logs` (they can be large and
    /// the copy does not need them).
    pub remote: Prediction,
}

impl CopyJob {
    pub fn new(prediction_id: PredictionId, remote: &Prediction) -> Self {
        let mut remote = remote.clone();
        remote.input.clear();
        remote.logs = None;
        Self {
            prediction_id,
            remote,
        }
    }
}

/// The durable queues: output copies, and callbacks to callers.
pub trait JobQueue: Send + Sync {
    /// Queues the job durably; an error means it was not queued.
    fn send_copy(&self, job: &CopyJob) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Queues a callback event durably; an error means it was not queued.
    fn send_callback(
        &self,
        job: &CallbackJob,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Queues a prediction's create for the drainer, invisible for `delay` (SQS allows at
    /// most 15 minutes; a drainer that gets it early hides it again).
    fn send_create(
        &self,
        job: &CreateJob,
        delay: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Moves an event whose retry window closed to the dead-letter queue (where operators
    /// see it, alarmed).
    fn dead_letter_callback(
        &self,
        job: &CallbackJob,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Where output files are kept.
pub trait ObjectStore: Send + Sync {
    fn put_object(
        &self,
        key: &str,
        content_type: &str,
        body: Bytes,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Starts a multipart upload and returns its id.
    fn create_multipart(
        &self,
        key: &str,
        content_type: &str,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Uploads one part (numbered from 1) and returns its ETag.
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn abort_multipart(
        &self,
        key: &str,
        upload_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A time-limited download URL for `key`.
    fn presign_get(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// A time-limited URL to PUT exactly `size` bytes of `content_type` at `key`, and the
    /// headers the PUT must carry (both are signed, so S3 refuses any other).
    fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<PresignedPut, StoreError>> + Send;

    /// Reads an object back, unless it is larger than `max_bytes` (then only its size is
    /// told, and no byte is read).
    fn read_object(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> impl Future<Output = Result<ObjectRead, StoreError>> + Send;
}

/// A presigned PUT: where to send it, and the headers it must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignedPut {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// An object as `read_object` found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectRead {
    Missing,
    TooLarge { size: u64 },
    Found { content_type: String, bytes: Bytes },
}

/// API keys, each tenant's rate and usage counters, upload slots and callback signing
/// secrets: every check that must hold across all Lambda instances at once is one
/// conditional write here.
pub trait AccountStore: Send + Sync {
    /// Stores a new upload slot; fails if one with its id exists.
    fn put_upload(
        &self,
        upload: &UploadRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// An upload slot (strongly consistent), whoever's it is.
    fn get_upload(
        &self,
        id: &UploadId,
    ) -> impl Future<Output = Result<Option<UploadRecord>, StoreError>> + Send;

    /// The tenant's callback signing secret (`whsec_…`): the stored one, or `candidate`
    /// once stored. Two first callers at once agree on one (a conditional put; the loser
    /// reads the winner's).
    fn callback_secret(
        &self,
        tenant: &TenantId,
        candidate: &str,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Stores a new key; fails if a key with its id exists.
    fn create_key(&self, key: &KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn get_key(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<KeyRecord>, StoreError>> + Send;

    /// Changes a tenant's limits (all its keys share them) in one atomic update; returns
    /// the limits now stored.
    fn update_tenant(
        &self,
        update: &LimitsUpdate,
    ) -> impl Future<Output = Result<TenantLimits, StoreError>> + Send;

    /// A tenant's limits, if any were stored.
    fn get_tenant(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Option<TenantLimits>, StoreError>> + Send;

    /// Marks a key revoked at `at` (keeping the first time); `false` if there is no such key.
    fn revoke_key(
        &self,
        id: &KeyId,
        at: Timestamp,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Counts one request in `window` if fewer than `limit` were counted there; `false`
    /// (nothing counted) when the window is full.
    fn count_request(
        &self,
        window: &RateWindow,
        limit: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Adds the reservation's estimate to the month's committed spend, its images, and one
    /// prediction, only if the committed spend stays within its budget. `false`: refused,
    /// nothing changed.
    fn reserve_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        reservation: &Reservation,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Adds a settlement's corrections (`CostSettlement::deltas`), in one atomic update.
    fn settle_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        settlement: &CostSettlement,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A tenant's usage in `month` (zero if nothing was recorded).
    fn usage(
        &self,
        tenant: &TenantId,
        month: &str,
    ) -> impl Future<Output = Result<Usage, StoreError>> + Send;
}
