//! The record store: predictions, their claims, the create pacer, and the two indexes (a
//! tenant's predictions, the open ones). DynamoDB in production
//! (`adapters::aws::dynamo`), an in-memory fake in tests (`testing::fakes`).

use std::future::Future;

use crate::domain::callbacks::{CallbackEvent, CallbackStatus};
use crate::domain::claims::{Claim, ClaimGuard, ClaimOutcome, Settlement};
use crate::domain::ids::PredictionId;
use crate::domain::pacing::{CreateSlot, Pace};
use crate::domain::record::{Advance, PredictionRecord, QueueState};
use crate::domain::tenancy::TenantId;
use crate::domain::time::Timestamp;
use crate::ports::StoreError;

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
