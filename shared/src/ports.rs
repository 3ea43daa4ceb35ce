//! The storage the handlers depend on, as small traits: DynamoDB and S3 implement them in
//! production (`aws`), in-memory fakes in unit tests (`memory`).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::record::{Advance, Claim, ClaimGuard, Millis, PredictionId, PredictionRecord};

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

pub trait RecordStore: Send + Sync {
    /// Takes `claim` if nobody holds its key or the holder's lease ended before `now`
    /// (one conditional write; on failure the current holder comes back in the same trip).
    fn try_claim(
        &self,
        claim: &Claim,
        now: Millis,
    ) -> impl Future<Output = Result<ClaimOutcome, StoreError>> + Send;

    /// Replaces the claim at `claim.key` only if it is still held by `expected_token`.
    fn replace_claim(
        &self,
        claim: &Claim,
        expected_token: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Points a claim at a prediction and extends or ends its lease, if `guard` still holds.
    fn settle_claim(
        &self,
        key: &str,
        guard: ClaimGuard<'_>,
        prediction_id: &PredictionId,
        lease_until: Millis,
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

    /// Records Replicate's id for a prediction, unless it already has a different one.
    fn attach_replicate_id(
        &self,
        id: &PredictionId,
        replicate_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Applies `advance` only if it moves the status forward (and the Replicate id agrees).
    /// `false` means the stored state was already as far or further along.
    fn advance(
        &self,
        id: &PredictionId,
        advance: &Advance,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Marks the prediction as being synced at `now`, only if it was last synced before
    /// `not_since`: at most one fetch asks Replicate per interval.
    fn claim_sync(
        &self,
        id: &PredictionId,
        now: Millis,
        not_since: Millis,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn delete_prediction(
        &self,
        id: &PredictionId,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Up to `limit` predictions not yet terminal that were created before `created_before`,
    /// oldest first (for the reconciler).
    fn list_open(
        &self,
        created_before: Millis,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<PredictionRecord>, StoreError>> + Send;
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
}
