//! One storage conformance suite, run against the in-memory fakes (`testing::fakes`, in this
//! module's tests) and against the real adapters (`adapters::aws`, on moto, in the
//! integration tests): whatever the use cases' unit tests learn from the fakes holds for
//! DynamoDB, S3 and SQS.
//!
//! Each suite is a sequence of assertions on behaviour the port traits document. Every id and
//! key is fresh and random, so one store can run a suite any number of times, next to other
//! data. Time-based rules are checked with explicit timestamps, never the clock; nothing
//! depends on what emulators do not implement (TTL deletion, presigned-URL signatures).

mod accounts;
mod claims;
mod indexes;
mod objects;
mod predictions;
mod queues;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::domain::callbacks::{
    CallbackEvent, CallbackJob, CallbackState, CallbackStatus, CallbackTarget,
};
use crate::domain::claims::{Claim, ClaimGuard};
use crate::domain::claims::{ClaimOutcome, Settlement};
use crate::domain::cost::Price;
use crate::domain::cost::{CostSettlement, Reservation, Usage};
use crate::domain::ids::PredictionId;
use crate::domain::jobs::CopyJob;
use crate::domain::record::{Advance, PredictionRecord, StoredOutput};
use crate::domain::replicate::{Metrics, Prediction, PredictionStatus, PredictionUrls};
use crate::domain::tenancy::{
    ApiKey, CarriedLimits, DEFAULT_RATE_PER_MINUTE, KeyRecord, LimitsUpdate, RateWindow, StoredKey,
    TenantId, TenantLimits,
};
use crate::domain::time::Timestamp;
use crate::domain::uploads::{ImageKind, UploadId, UploadRecord};
use crate::ports::accounts::AccountStore;
use crate::ports::jobs::JobQueue;
use crate::ports::objects::{ObjectRead, ObjectStore};
use crate::ports::records::{LEGACY_OPEN_SHARD, OpenEntry, RecordStore, SyncMark, open_shard};

pub use accounts::account_store_suite;
use claims::*;
use indexes::*;
pub use objects::object_store_suite;
use predictions::*;
pub use queues::{callback_queue_suite, copy_queue_suite};

/// The "now" of the claim checks: any fixed time works, only the order of times matters.
const NOW: Timestamp = Timestamp::from_millis(1_700_000_000_000);

/// Milliseconds, for the stores' times in these tests.
const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// S3's smallest part of a multipart upload, except the last (`EntityTooSmall`).
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A fresh id whose first hex digit is `digit`: it is listed under `open#<digit>`.
pub fn id_in_shard(digit: char) -> PredictionId {
    let random = unique();
    PredictionId::parse(&format!("{digit}{}", &random[1..]))
        .unwrap_or_else(|_| panic!("`{digit}` is not a lowercase hex digit"))
}

fn claim(key: &str, token: &str, lease_until: Timestamp) -> Claim {
    Claim {
        key: key.to_owned(),
        token: token.to_owned(),
        prediction_id: None,
        request_hash: None,
        lease_until,
        expires_at: lease_until.unix_seconds() + 86_400,
        from_cache: false,
    }
}

fn claim_key() -> String {
    format!("cache#conformance-{}", unique())
}

/// The claim stored at `key`, read through the trait: a claim attempt never takes a held
/// key, and comes back with the holder; if nobody held it, the probe is released.
async fn peek<S: RecordStore>(store: &S, key: &str) -> Option<Claim> {
    let probe = claim(key, &format!("probe-{}", unique()), Timestamp::EPOCH);
    match store.try_claim(&probe).await.expect("try_claim (peek)") {
        ClaimOutcome::HeldBy(held) => Some(held),
        ClaimOutcome::Claimed => {
            let released = store
                .release_claim(key, ClaimGuard::Token(&probe.token))
                .await
                .expect("release_claim (peek)");
            assert!(released, "release_claim: the probe just claimed `{key}`");
            None
        }
    }
}

/// A record as submit stores it: `starting`, nothing optional set.
fn bare_record(id: PredictionId, created_at: Timestamp) -> PredictionRecord {
    PredictionRecord {
        id,
        replicate_id: None,
        alias: "flux-schnell".to_owned(),
        model: "black-forest-labs/flux-schnell".to_owned(),
        version: None,
        input: Map::new(),
        status: PredictionStatus::Starting,
        outputs: Vec::new(),
        error: None,
        metrics: None,
        created_at,
        started_at: None,
        completed_at: None,
        synced_at: None,
        copy_queued_at: None,
        cancel_requested_at: None,
        expires_at: created_at.unix_seconds() + 86_400,
        webhook_token: None,
        tenant: None,
        price: None,
        cost_estimate: 0,
        cost: None,
        input_files: BTreeMap::new(),
        callback: None,
        queue: None,
    }
}

fn metrics(predict_time: f64, extra: (&str, Value)) -> Metrics {
    Metrics {
        predict_time: Some(predict_time),
        total_time: Some(predict_time + 0.5),
        other: Map::from_iter([(extra.0.to_owned(), extra.1)]),
    }
}

fn output(id: &PredictionId, index: usize) -> StoredOutput {
    StoredOutput {
        key: format!("outputs/{id}/{index}.webp"),
        content_type: "image/webp".to_owned(),
        size: 1234 + index as u64,
        sha256: format!("{index:064x}"),
    }
}

/// A record with every optional field set.
fn full_record(id: PredictionId, created_at: Timestamp) -> PredictionRecord {
    let input = json!({
        "prompt": "a lighthouse at dusk — ünïcödé",
        "num_outputs": 2,
        "guidance": 3.5,
        "go_fast": true,
        "nested": {"list": [1, "two", null]},
    });
    PredictionRecord {
        replicate_id: Some(format!("conformance-{}", unique())),
        version: Some("f".repeat(64)),
        input: input.as_object().cloned().unwrap_or_default(),
        status: PredictionStatus::Processing,
        outputs: vec![output(&id, 0), output(&id, 1)],
        error: Some("an error text\non two lines".to_owned()),
        metrics: Some(metrics(1.25, ("image_count", json!(2)))),
        started_at: Some(created_at.plus(ms(10))),
        completed_at: Some(created_at.plus(ms(20))),
        synced_at: Some(created_at.plus(ms(30))),
        copy_queued_at: Some(created_at.plus(ms(40))),
        cancel_requested_at: Some(created_at.plus(ms(50))),
        webhook_token: Some(unique()),
        tenant: Some(TenantId::parse("conformance").expect("a tenant")),
        price: Some(Price::Second {
            micros: 975,
            typical_seconds: 6,
            typical_pixels: Some(1024 * 1024),
            typical_steps: Some(50),
            seconds_with_image: Some(30),
        }),
        cost_estimate: 11_700,
        cost: Some(2_438),
        input_files: BTreeMap::from([("image".to_owned(), "a".repeat(64))]),
        callback: Some(CallbackState {
            target: CallbackTarget {
                url: "https://hooks.example.com/in?tenant=ünï".to_owned(),
                events: vec![CallbackEvent::Start, CallbackEvent::Completed],
            },
            event: Some(CallbackEvent::Start),
            status: Some(CallbackStatus::Delivered),
            attempts: 3,
        }),
        ..bare_record(id, created_at)
    }
}

async fn insert<S: RecordStore>(store: &S, record: &PredictionRecord) {
    store
        .insert_prediction(record)
        .await
        .unwrap_or_else(|e| panic!("insert_prediction {}: {e}", record.id));
}

async fn stored<S: RecordStore>(store: &S, id: &PredictionId) -> PredictionRecord {
    store
        .get_prediction(id)
        .await
        .expect("get_prediction")
        .unwrap_or_else(|| panic!("get_prediction {id}: the record is missing"))
}

fn advance_to(status: PredictionStatus) -> Advance {
    Advance {
        status,
        replicate_id: None,
        outputs: Vec::new(),
        error: None,
        metrics: None,
        started_at: None,
        completed_at: None,
        cost: None,
        keep_open: false,
    }
}

/// Every rule of `RecordStore` that the handlers rely on.
pub async fn record_store_suite<S: RecordStore>(store: &S) {
    claims_have_one_holder(store).await;
    replace_claim_needs_the_token(store).await;
    settle_claim_needs_the_guard_and_never_shortens(store).await;
    release_claim_needs_the_guard(store).await;
    predictions_round_trip(store).await;
    attach_binds_one_replicate_id_to_one_record(store).await;
    advance_only_moves_forward(store).await;
    claim_sync_once_per_interval(store).await;
    list_open_pages_through_each_open_record_once(store).await;
    list_tenant_pages_newest_first_without_gaps_or_repeats(store).await;
    callbacks_keep_an_ended_record_open_until_queued(store).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fakes::{MemoryObjects, MemoryQueue, MemoryRecords};

    #[tokio::test]
    async fn memory_records_conform() {
        let store = MemoryRecords::default();
        record_store_suite(&store).await;
        // Fresh ids every run: the same store passes again.
        record_store_suite(&store).await;
        account_store_suite(&store).await;
        account_store_suite(&store).await;
    }

    #[test]
    fn output_parts_are_large_enough_for_s3() {
        const { assert!(crate::domain::outputs::PART_SIZE >= MIN_PART_SIZE) };
    }

    #[tokio::test]
    async fn memory_objects_conform() {
        let objects = MemoryObjects::default();
        object_store_suite(&objects, |key| {
            let stored = objects.get(&key);
            async move { stored }
        })
        .await;
        assert_eq!(objects.open_multipart_uploads(), 0, "every upload ended");
    }

    #[tokio::test]
    async fn memory_queue_conforms() {
        let queue = MemoryQueue::default();
        copy_queue_suite(&queue, || {
            let jobs = queue.drain();
            async move { jobs }
        })
        .await;
        assert!(queue.is_empty());
    }
}
