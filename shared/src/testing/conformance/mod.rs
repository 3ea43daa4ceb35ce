//! One storage conformance suite, run against the in-memory fakes (`memory`, in this
//! module's tests) and against the real adapters (`aws`, on moto, in the integration tests):
//! whatever the handlers' unit tests learn from the fakes holds for DynamoDB, S3 and SQS.
//!
//! Each suite is a sequence of assertions on behaviour the port traits document. Every id and
//! key is fresh and random, so one store can run a suite any number of times, next to other
//! data. Time-based rules are checked with explicit timestamps, never the clock; nothing
//! depends on what emulators do not implement (TTL deletion, presigned-URL signatures).

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
    ApiKey, DEFAULT_RATE_PER_MINUTE, KeyRecord, LimitsUpdate, RateWindow, TenantId, TenantLimits,
};
use crate::domain::time::Timestamp;
use crate::domain::uploads::{ImageKind, UploadId, UploadRecord};
use crate::ports::accounts::AccountStore;
use crate::ports::jobs::JobQueue;
use crate::ports::objects::{ObjectRead, ObjectStore};
use crate::ports::records::{LEGACY_OPEN_SHARD, OpenEntry, RecordStore, SyncMark, open_shard};

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

/// Whether `list_open` lists `id` (created before `created_before`).
async fn is_listed_open<S: RecordStore>(
    store: &S,
    id: &PredictionId,
    created_before: Timestamp,
) -> bool {
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_open(open_shard(id), created_before, cursor.as_deref(), 100)
            .await
            .expect("list_open");
        if page.entries.iter().any(|e| e.id == *id) {
            return true;
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return false,
        }
    }
}

/// An ended record that still owes its `completed` callback stays in the open index until
/// the callback is noted as queued; attempts count, and set the status only of the event
/// the record shows.
async fn callbacks_keep_an_ended_record_open_until_queued<S: RecordStore>(store: &S) {
    let created_at = NOW.minus(ms(3_600_000));
    let record = PredictionRecord {
        callback: Some(CallbackState::new(CallbackTarget {
            url: "https://hooks.example.com/in".to_owned(),
            events: vec![CallbackEvent::Start, CallbackEvent::Completed],
        })),
        ..bare_record(PredictionId::generate(), created_at)
    };
    insert(store, &record).await;
    assert!(
        store
            .callback_queued(&record.id, CallbackEvent::Start)
            .await
            .expect("callback_queued"),
        "callback_queued: the first note of an event changes the record"
    );
    assert!(
        !store
            .callback_queued(&record.id, CallbackEvent::Start)
            .await
            .expect("callback_queued"),
        "callback_queued: an event already noted changes nothing"
    );
    let ended = Advance {
        keep_open: true,
        completed_at: Some(created_at.plus(ms(5))),
        ..advance_to(PredictionStatus::Failed)
    };
    assert!(store.advance(&record.id, &ended).await.expect("advance"));
    assert!(
        is_listed_open(store, &record.id, created_at.plus(ms(1))).await,
        "advance: a terminal advance with keep_open leaves the record in the open index"
    );
    store
        .callback_attempted(&record.id, CallbackEvent::Start, CallbackStatus::Delivered)
        .await
        .expect("callback_attempted");
    assert!(
        store
            .callback_queued(&record.id, CallbackEvent::Completed)
            .await
            .expect("callback_queued")
    );
    assert!(
        !is_listed_open(store, &record.id, created_at.plus(ms(1))).await,
        "callback_queued: noting `completed` takes the record out of the open index"
    );
    // A late attempt of `start` counts, but the status is `completed`'s.
    store
        .callback_attempted(&record.id, CallbackEvent::Start, CallbackStatus::Delivered)
        .await
        .expect("callback_attempted");
    let callback = stored(store, &record.id)
        .await
        .callback
        .expect("a callback");
    assert_eq!(
        (callback.event, callback.status, callback.attempts),
        (
            Some(CallbackEvent::Completed),
            Some(CallbackStatus::Pending),
            2
        ),
        "callback_attempted: attempts of every event count; only the shown event's set the status"
    );
    store
        .callback_attempted(&record.id, CallbackEvent::Completed, CallbackStatus::Failed)
        .await
        .expect("callback_attempted");
    let callback = stored(store, &record.id)
        .await
        .callback
        .expect("a callback");
    assert_eq!(
        (callback.status, callback.attempts),
        (Some(CallbackStatus::Failed), 3)
    );
    // An attempt that got in before the note: the note keeps its status, the record still
    // leaves the index, and a delivered event never goes back to pending.
    let quick = PredictionRecord {
        id: PredictionId::generate(),
        ..record.clone()
    };
    insert(store, &quick).await;
    assert!(store.advance(&quick.id, &ended).await.expect("advance"));
    store
        .callback_attempted(
            &quick.id,
            CallbackEvent::Completed,
            CallbackStatus::Delivered,
        )
        .await
        .expect("callback_attempted");
    assert!(
        !store
            .callback_queued(&quick.id, CallbackEvent::Completed)
            .await
            .expect("callback_queued"),
        "callback_queued: an event an attempt already set is not noted again"
    );
    assert!(
        !is_listed_open(store, &quick.id, created_at.plus(ms(1))).await,
        "callback_queued: the record leaves the open index even when already noted"
    );
    store
        .callback_attempted(&quick.id, CallbackEvent::Completed, CallbackStatus::Pending)
        .await
        .expect("callback_attempted");
    store
        .callback_attempted(&quick.id, CallbackEvent::Start, CallbackStatus::Failed)
        .await
        .expect("callback_attempted");
    let callback = stored(store, &quick.id).await.callback.expect("a callback");
    assert_eq!(
        (callback.event, callback.status, callback.attempts),
        (
            Some(CallbackEvent::Completed),
            Some(CallbackStatus::Delivered),
            3
        ),
        "callback_attempted: delivered stays delivered; a start never hides completed"
    );
    let plain = bare_record(PredictionId::generate(), created_at);
    insert(store, &plain).await;
    assert!(
        !store
            .callback_queued(&plain.id, CallbackEvent::Completed)
            .await
            .expect("callback_queued"),
        "callback_queued: a record without a callback is not changed"
    );
}

async fn claims_have_one_holder<S: RecordStore>(store: &S) {
    let key = claim_key();
    let first = Claim {
        prediction_id: Some(PredictionId::generate()),
        request_hash: Some(format!("hash-{}", unique())),
        from_cache: true,
        ..claim(&key, "first", NOW.plus(ms(1_000)))
    };
    let second = Claim {
        prediction_id: Some(PredictionId::generate()),
        request_hash: Some("another hash".to_owned()),
        ..claim(&key, "second", NOW.plus(ms(5_000)))
    };
    assert_eq!(
        store.try_claim(&first).await.expect("try_claim"),
        ClaimOutcome::Claimed,
        "try_claim: the first claim of a free key wins"
    );
    assert_eq!(
        store.try_claim(&second).await.expect("try_claim"),
        ClaimOutcome::HeldBy(first.clone()),
        "try_claim: a second claim gets the holder's claim exactly as stored (every field)"
    );
    // An ended lease is not taken over by a claim: only the holder's state (its prediction
    // record) can say whether taking over is safe, so takeover is `replace_claim` with the
    // holder's token, decided by the caller.
    let expired_second = Claim {
        lease_until: NOW.plus(ms(10_000)),
        ..second.clone()
    };
    assert_eq!(
        store.try_claim(&expired_second).await.expect("try_claim"),
        ClaimOutcome::HeldBy(first.clone()),
        "try_claim: a held key is never taken, whatever the holder's lease"
    );
    assert!(
        store
            .replace_claim(&second, &first.token)
            .await
            .expect("replace_claim"),
        "replace_claim: the holder's token takes over"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(second.clone()),
        "replace_claim: the taker's claim replaced the old one"
    );

    // A claim with nothing optional set comes back the same: no field is invented.
    let key = claim_key();
    let bare = claim(&key, "bare", NOW.plus(ms(1_000)));
    assert_eq!(
        store.try_claim(&bare).await.expect("try_claim"),
        ClaimOutcome::Claimed
    );
    assert_eq!(
        store
            .try_claim(&claim(&key, "other", NOW.plus(ms(2_000))))
            .await
            .expect("try_claim"),
        ClaimOutcome::HeldBy(bare),
        "try_claim: a holder without prediction id, request hash or cache flag comes back as stored"
    );
}

async fn replace_claim_needs_the_token<S: RecordStore>(store: &S) {
    let key = claim_key();
    let held = claim(&key, "holder", NOW.plus(ms(1_000)));
    assert_eq!(
        store.try_claim(&held).await.expect("try_claim"),
        ClaimOutcome::Claimed
    );
    let replacement = Claim {
        prediction_id: Some(PredictionId::generate()),
        request_hash: Some("h".to_owned()),
        from_cache: true,
        ..claim(&key, "replacement", NOW.plus(ms(2_000)))
    };
    assert!(
        !store
            .replace_claim(&replacement, "not-the-holder")
            .await
            .expect("replace_claim"),
        "replace_claim: refused without the holder's token"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(held),
        "replace_claim: a refused replace changes nothing"
    );
    assert!(
        store
            .replace_claim(&replacement, "holder")
            .await
            .expect("replace_claim"),
        "replace_claim: applies with the holder's token"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(replacement.clone()),
        "replace_claim: the whole claim is replaced"
    );
    assert!(
        !store
            .replace_claim(&claim(&key, "again", NOW), "holder")
            .await
            .expect("replace_claim"),
        "replace_claim: the old token no longer holds the claim"
    );

    let missing = claim_key();
    assert!(
        !store
            .replace_claim(&claim(&missing, "t", NOW.plus(ms(1_000))), "t")
            .await
            .expect("replace_claim"),
        "replace_claim: nothing to replace at a free key"
    );
    assert_eq!(
        peek(store, &missing).await,
        None,
        "replace_claim: a refused replace does not create a claim"
    );
}

async fn settle_claim_needs_the_guard_and_never_shortens<S: RecordStore>(store: &S) {
    let key = claim_key();
    let held = Claim {
        request_hash: Some("request".to_owned()),
        ..claim(&key, "holder", NOW.plus(ms(1_000)))
    };
    assert_eq!(
        store.try_claim(&held).await.expect("try_claim"),
        ClaimOutcome::Claimed
    );
    let worker = PredictionId::generate();
    let settle = |lease_until, from_cache, prediction_id| Settlement {
        prediction_id,
        lease_until,
        from_cache,
    };

    assert!(
        !store
            .settle_claim(
                &key,
                ClaimGuard::Token("stranger"),
                &settle(NOW.plus(ms(5_000)), true, &worker)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: refused for another token"
    );
    assert!(
        !store
            .settle_claim(
                &key,
                ClaimGuard::Prediction(&worker),
                &settle(NOW.plus(ms(5_000)), true, &worker)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: refused by prediction when the claim names no prediction"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(held.clone()),
        "settle_claim: refused settles change nothing"
    );

    assert!(
        store
            .settle_claim(
                &key,
                ClaimGuard::Token("holder"),
                &settle(NOW.plus(ms(5_000)), true, &worker)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: applies with the holder's token and a longer lease"
    );
    let settled = Claim {
        prediction_id: Some(worker.clone()),
        lease_until: NOW.plus(ms(5_000)),
        from_cache: true,
        ..held.clone()
    };
    assert_eq!(
        peek(store, &key).await,
        Some(settled.clone()),
        "settle_claim: sets prediction id, lease and cache flag; keeps token, request hash and expiry"
    );

    let other = PredictionId::generate();
    assert!(
        !store
            .settle_claim(
                &key,
                ClaimGuard::Prediction(&worker),
                &settle(NOW.plus(ms(4_999)), false, &other)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: never shortens a longer lease"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(settled.clone()),
        "settle_claim: a settle that would shorten the lease changes nothing"
    );

    assert!(
        store
            .settle_claim(
                &key,
                ClaimGuard::Prediction(&worker),
                &settle(NOW.plus(ms(5_000)), false, &other)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: an equal lease is not a shorter one (`lease_until <= new lease`)"
    );
    let resettled = Claim {
        prediction_id: Some(other.clone()),
        from_cache: false,
        ..settled
    };
    assert_eq!(peek(store, &key).await, Some(resettled.clone()));
    assert!(
        !store
            .settle_claim(
                &key,
                ClaimGuard::Prediction(&worker),
                &settle(NOW.plus(ms(9_000)), true, &worker)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: the prediction the claim no longer names does not hold it"
    );
    assert!(
        store
            .settle_claim(
                &key,
                ClaimGuard::Prediction(&other),
                &settle(NOW.plus(ms(9_000)), true, &other)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: the prediction the claim names holds it"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(Claim {
            lease_until: NOW.plus(ms(9_000)),
            from_cache: true,
            ..resettled
        })
    );

    let missing = claim_key();
    assert!(
        !store
            .settle_claim(
                &missing,
                ClaimGuard::Token("holder"),
                &settle(NOW.plus(ms(5_000)), false, &worker)
            )
            .await
            .expect("settle_claim"),
        "settle_claim: nothing to settle at a free key"
    );
    assert_eq!(
        peek(store, &missing).await,
        None,
        "settle_claim: a refused settle does not create a claim"
    );
}

async fn release_claim_needs_the_guard<S: RecordStore>(store: &S) {
    let key = claim_key();
    let worker = PredictionId::generate();
    let held = Claim {
        prediction_id: Some(worker.clone()),
        ..claim(&key, "holder", NOW.plus(ms(1_000)))
    };
    assert_eq!(
        store.try_claim(&held).await.expect("try_claim"),
        ClaimOutcome::Claimed
    );
    assert!(
        !store
            .release_claim(&key, ClaimGuard::Token("stranger"))
            .await
            .expect("release_claim"),
        "release_claim: refused for another token"
    );
    assert!(
        !store
            .release_claim(&key, ClaimGuard::Prediction(&PredictionId::generate()))
            .await
            .expect("release_claim"),
        "release_claim: refused for another prediction"
    );
    assert_eq!(
        peek(store, &key).await,
        Some(held.clone()),
        "release_claim: refused releases change nothing"
    );
    assert!(
        store
            .release_claim(&key, ClaimGuard::Prediction(&worker))
            .await
            .expect("release_claim"),
        "release_claim: the prediction the claim names may release it"
    );
    assert!(
        !store
            .release_claim(&key, ClaimGuard::Prediction(&worker))
            .await
            .expect("release_claim"),
        "release_claim: nothing left to release"
    );
    let next = claim(&key, "next", NOW.plus(ms(1_000)));
    assert_eq!(
        store.try_claim(&next).await.expect("try_claim"),
        ClaimOutcome::Claimed,
        "release_claim: a released key can be claimed at once, though the old lease has not ended"
    );
    assert!(
        store
            .release_claim(&key, ClaimGuard::Token("next"))
            .await
            .expect("release_claim"),
        "release_claim: the holder's token may release it"
    );
    assert_eq!(
        peek(store, &key).await,
        None,
        "release_claim: the claim is gone"
    );
}

async fn predictions_round_trip<S: RecordStore>(store: &S) {
    let full = full_record(PredictionId::generate(), NOW);
    insert(store, &full).await;
    assert_eq!(
        stored(store, &full.id).await,
        full,
        "get_prediction: a record with every optional field set reads back exactly"
    );

    let bare = bare_record(PredictionId::generate(), NOW);
    insert(store, &bare).await;
    assert_eq!(
        stored(store, &bare.id).await,
        bare,
        "get_prediction: a record with no optional field set reads back exactly"
    );

    let terminal = Advance {
        outputs: vec![output(&bare.id, 0)],
        metrics: Some(Metrics::default()),
        completed_at: Some(NOW.plus(ms(1))),
        ..advance_to(PredictionStatus::Succeeded)
    };
    let succeeded = PredictionRecord {
        id: PredictionId::generate(),
        status: terminal.status.clone(),
        outputs: terminal.outputs.clone(),
        metrics: terminal.metrics.clone(),
        completed_at: terminal.completed_at,
        ..bare.clone()
    };
    insert(store, &succeeded).await;
    assert_eq!(
        stored(store, &succeeded.id).await,
        succeeded,
        "get_prediction: a terminal record with empty metrics reads back exactly"
    );

    let again = PredictionRecord {
        alias: "sdxl".to_owned(),
        status: PredictionStatus::Failed,
        ..full_record(full.id.clone(), NOW.plus(ms(1)))
    };
    assert!(
        store.insert_prediction(&again).await.is_err(),
        "insert_prediction: a second record with the same id is an error"
    );
    assert_eq!(
        stored(store, &full.id).await,
        full,
        "insert_prediction: a refused insert changes nothing"
    );

    assert_eq!(
        store
            .get_prediction(&PredictionId::generate())
            .await
            .expect("get_prediction"),
        None,
        "get_prediction: an unknown id is None, not an error"
    );
}

async fn attach_binds_one_replicate_id_to_one_record<S: RecordStore>(store: &S) {
    let a = bare_record(PredictionId::generate(), NOW);
    let b = bare_record(PredictionId::generate(), NOW);
    insert(store, &a).await;
    insert(store, &b).await;
    let first = format!("conformance-{}", unique());
    let second = format!("conformance-{}", unique());
    let attach = |id: &PredictionId, replicate_id: &str| {
        let (id, replicate_id) = (id.clone(), replicate_id.to_owned());
        async move {
            store
                .attach_replicate_id(&id, &replicate_id, 4_000_000_000)
                .await
                .unwrap_or_else(|e| panic!("attach_replicate_id {id} {replicate_id}: {e}"))
        }
    };

    assert!(
        attach(&a.id, &first).await,
        "attach_replicate_id: the first attach applies"
    );
    assert_eq!(stored(store, &a.id).await.replicate_id, Some(first.clone()));
    assert!(
        attach(&a.id, &first).await,
        "attach_replicate_id: attaching the same id again is idempotent (true)"
    );
    assert!(
        !attach(&a.id, &second).await,
        "attach_replicate_id: a record attached to one Replicate id refuses another"
    );
    assert_eq!(
        stored(store, &a.id).await,
        PredictionRecord {
            replicate_id: Some(first.clone()),
            ..a.clone()
        },
        "attach_replicate_id: a refused attach changes nothing"
    );
    assert!(
        !attach(&b.id, &first).await,
        "attach_replicate_id: a Replicate id already bound to another record is refused"
    );
    assert_eq!(
        stored(store, &b.id).await,
        b,
        "attach_replicate_id: a refused attach changes nothing"
    );
    assert!(
        attach(&b.id, &second).await,
        "attach_replicate_id: the refused attach of `second` to another record left no binding behind"
    );
    assert_eq!(stored(store, &b.id).await.replicate_id, Some(second));

    let unknown = PredictionId::generate();
    let third = format!("conformance-{}", unique());
    assert!(
        !attach(&unknown, &third).await,
        "attach_replicate_id: an unknown record is false, not an error"
    );
    assert_eq!(
        store
            .get_prediction(&unknown)
            .await
            .expect("get_prediction"),
        None,
        "attach_replicate_id: attaching to an unknown record does not create it"
    );
    let c = bare_record(PredictionId::generate(), NOW);
    insert(store, &c).await;
    assert!(
        attach(&c.id, &third).await,
        "attach_replicate_id: the attach to an unknown record left no binding behind"
    );
}

async fn advance_only_moves_forward<S: RecordStore>(store: &S) {
    use PredictionStatus::{Failed, Processing, Starting, Succeeded, Unknown};
    let advance = |id: &PredictionId, advance: Advance| {
        let id = id.clone();
        async move {
            store
                .advance(&id, &advance)
                .await
                .unwrap_or_else(|e| panic!("advance {id}: {e}"))
        }
    };
    let record = bare_record(PredictionId::generate(), NOW);
    insert(store, &record).await;
    let id = record.id.clone();

    assert!(
        !advance(&id, advance_to(Starting)).await,
        "advance: the same rank is refused"
    );
    assert!(
        !advance(&id, advance_to(Unknown("queued".to_owned()))).await,
        "advance: an unknown status never overwrites"
    );
    let first_metrics = metrics(0.5, ("image_count", json!(1)));
    let processing = Advance {
        error: Some("a transient warning".to_owned()),
        metrics: Some(first_metrics.clone()),
        started_at: Some(NOW.plus(ms(100))),
        ..advance_to(Processing)
    };
    assert!(
        advance(&id, processing).await,
        "advance: starting → processing applies"
    );
    let after_processing = PredictionRecord {
        status: Processing,
        error: Some("a transient warning".to_owned()),
        metrics: Some(first_metrics.clone()),
        started_at: Some(NOW.plus(ms(100))),
        ..record.clone()
    };
    assert_eq!(stored(store, &id).await, after_processing);
    assert!(
        !advance(&id, advance_to(Processing)).await,
        "advance: the same rank is refused"
    );
    assert!(
        !advance(&id, advance_to(Starting)).await,
        "advance: backwards is refused"
    );
    assert_eq!(
        stored(store, &id).await,
        after_processing,
        "advance: a refused advance changes nothing"
    );

    let replicate_id = format!("conformance-{}", unique());
    assert!(
        store
            .attach_replicate_id(&id, &replicate_id, 4_000_000_000)
            .await
            .expect("attach_replicate_id")
    );
    let after_attach = PredictionRecord {
        replicate_id: Some(replicate_id.clone()),
        ..after_processing
    };
    let outputs = vec![output(&id, 0), output(&id, 1)];
    let success = Advance {
        outputs: outputs.clone(),
        started_at: Some(NOW.plus(ms(200))),
        completed_at: Some(NOW.plus(ms(300))),
        cost: Some(7_777),
        ..advance_to(Succeeded)
    };
    assert!(
        !advance(
            &id,
            Advance {
                replicate_id: Some("another-replicate-id".to_owned()),
                ..success.clone()
            }
        )
        .await,
        "advance: naming another Replicate id than the record's is refused"
    );
    assert_eq!(
        stored(store, &id).await,
        after_attach,
        "advance: a refused advance changes nothing"
    );
    assert!(
        !advance(&id, success.clone()).await,
        "advance: naming no Replicate id is refused once the record is tied to one (ending \
         an unconfirmed record never ends one a webhook tied meanwhile)"
    );
    assert!(
        advance(
            &id,
            Advance {
                replicate_id: Some(replicate_id.clone()),
                ..success.clone()
            }
        )
        .await,
        "advance: naming the record's Replicate id applies"
    );
    let succeeded = PredictionRecord {
        status: Succeeded,
        outputs,
        error: None,
        metrics: Some(first_metrics),
        started_at: Some(NOW.plus(ms(100))),
        completed_at: Some(NOW.plus(ms(300))),
        cost: Some(7_777),
        ..after_attach
    };
    assert_eq!(
        stored(store, &id).await,
        succeeded,
        "advance: outputs replaced, cost written, error cleared when the advance has none, metrics kept when \
         the advance has none, started_at kept from the first advance"
    );
    for terminal in [Succeeded, Failed] {
        let late = Advance {
            completed_at: Some(NOW.plus(ms(400))),
            ..advance_to(terminal.clone())
        };
        assert!(
            !advance(&id, late).await,
            "advance: nothing follows a terminal status (not even {terminal})"
        );
    }
    assert_eq!(stored(store, &id).await, succeeded);

    // A Replicate id named by an advance is a condition; it is never written.
    let unattached = bare_record(PredictionId::generate(), NOW);
    insert(store, &unattached).await;
    assert!(
        !advance(
            &unattached.id,
            Advance {
                replicate_id: Some(format!("conformance-{}", unique())),
                ..advance_to(Processing)
            }
        )
        .await,
        "advance: naming a Replicate id is refused while the record has none"
    );
    assert_eq!(
        stored(store, &unattached.id).await,
        unattached,
        "advance: a refused advance does not set the Replicate id"
    );

    // started_at / completed_at already stored are kept (first value wins).
    let stamped = PredictionRecord {
        started_at: Some(NOW.plus(ms(1))),
        completed_at: Some(NOW.plus(ms(2))),
        ..bare_record(PredictionId::generate(), NOW)
    };
    insert(store, &stamped).await;
    assert!(
        advance(
            &stamped.id,
            Advance {
                started_at: Some(NOW.plus(ms(50))),
                completed_at: Some(NOW.plus(ms(60))),
                error: Some("boom".to_owned()),
                ..advance_to(Failed)
            }
        )
        .await
    );
    assert_eq!(
        stored(store, &stamped.id).await,
        PredictionRecord {
            status: Failed,
            error: Some("boom".to_owned()),
            ..stamped
        },
        "advance: started_at and completed_at keep the value stored first"
    );

    // A stored status this service does not know counts as the start of the lifecycle.
    let odd = PredictionRecord {
        status: Unknown("queued".to_owned()),
        ..bare_record(PredictionId::generate(), NOW)
    };
    insert(store, &odd).await;
    assert_eq!(
        stored(store, &odd.id).await,
        odd,
        "get_prediction: an unknown status reads back"
    );
    assert!(
        !advance(&odd.id, advance_to(Starting)).await,
        "advance: an unknown stored status ranks as `starting`"
    );
    assert!(
        advance(&odd.id, advance_to(Processing)).await,
        "advance: an unknown stored status ranks as `starting`, so `processing` moves forward"
    );

    let unknown = PredictionId::generate();
    assert!(
        !advance(&unknown, advance_to(Processing)).await,
        "advance: an unknown record is false, not an error"
    );
    assert_eq!(
        store
            .get_prediction(&unknown)
            .await
            .expect("get_prediction"),
        None,
        "advance: advancing an unknown record does not create it"
    );
}

async fn claim_sync_once_per_interval<S: RecordStore>(store: &S) {
    for mark in [
        SyncMark::Fetched,
        SyncMark::CopyQueued,
        SyncMark::CancelRequested,
    ] {
        claim_sync_mark(store, mark).await;
    }
}

/// The record's time for `mark`.
fn mark_of(record: &PredictionRecord, mark: SyncMark) -> Option<Timestamp> {
    match mark {
        SyncMark::Fetched => record.synced_at,
        SyncMark::CopyQueued => record.copy_queued_at,
        SyncMark::CancelRequested => record.cancel_requested_at,
    }
}

fn with_mark(record: &PredictionRecord, mark: SyncMark, at: Timestamp) -> PredictionRecord {
    let mut record = record.clone();
    match mark {
        SyncMark::Fetched => record.synced_at = Some(at),
        SyncMark::CopyQueued => record.copy_queued_at = Some(at),
        SyncMark::CancelRequested => record.cancel_requested_at = Some(at),
    }
    record
}

async fn claim_sync_mark<S: RecordStore>(store: &S, mark: SyncMark) {
    let sync = |id: &PredictionId, now: Timestamp, not_since: Timestamp| {
        let id = id.clone();
        async move {
            store
                .claim_sync(&id, mark, now, not_since)
                .await
                .unwrap_or_else(|e| panic!("claim_sync {id}: {e}"))
        }
    };
    let record = bare_record(PredictionId::generate(), NOW);
    insert(store, &record).await;
    let id = &record.id;
    assert!(
        sync(id, NOW.plus(ms(1_000)), NOW.plus(ms(500))).await,
        "claim_sync {mark:?}: a never-synced record syncs"
    );
    assert_eq!(
        stored(store, id).await,
        with_mark(&record, mark, NOW.plus(ms(1_000))),
        "claim_sync {mark:?}: sets only its own time"
    );
    assert!(
        !sync(id, NOW.plus(ms(1_200)), NOW.plus(ms(1_000))).await,
        "claim_sync {mark:?}: refused when last set exactly at `not_since` (strictly before)"
    );
    assert!(
        !sync(id, NOW.plus(ms(1_200)), NOW.plus(ms(900))).await,
        "claim_sync {mark:?}: refused when last set after `not_since`"
    );
    assert_eq!(
        stored(store, id).await,
        with_mark(&record, mark, NOW.plus(ms(1_000))),
        "claim_sync {mark:?}: a refused sync changes nothing"
    );
    assert!(
        sync(id, NOW.plus(ms(2_000)), NOW.plus(ms(1_001))).await,
        "claim_sync {mark:?}: applies when last set before `not_since`"
    );
    assert_eq!(
        mark_of(&stored(store, id).await, mark),
        Some(NOW.plus(ms(2_000)))
    );

    let unknown = PredictionId::generate();
    assert!(
        !sync(&unknown, NOW, NOW).await,
        "claim_sync {mark:?}: an unknown record is false, not an error"
    );
    assert_eq!(
        store
            .get_prediction(&unknown)
            .await
            .expect("get_prediction"),
        None,
        "claim_sync {mark:?}: syncing an unknown record does not create it"
    );
}

async fn list_tenant_pages_newest_first_without_gaps_or_repeats<S: RecordStore>(store: &S) {
    let tenant = TenantId::parse(&format!("list-{}", unique())).unwrap_or_else(|e| panic!("{e}"));
    let other = TenantId::parse(&format!("list-{}", unique())).unwrap_or_else(|e| panic!("{e}"));
    let mut ours = Vec::new();
    // Ties in creation time too: paging must neither lose nor repeat either of a tie.
    for (offset, owner) in [
        (0, &tenant),
        (1, &tenant),
        (1, &tenant),
        (2, &other),
        (3, &tenant),
        (3, &tenant),
        (5, &tenant),
        (6, &other),
        (9, &tenant),
    ] {
        let record = PredictionRecord {
            tenant: Some(owner.clone()),
            status: if offset % 2 == 0 {
                PredictionStatus::Succeeded
            } else {
                PredictionStatus::Starting
            },
            ..bare_record(PredictionId::generate(), NOW.plus(ms(offset)))
        };
        insert(store, &record).await;
        if owner == &tenant {
            ours.push(record);
        }
    }
    for limit in [1, 2, 3, 100] {
        let mut seen: Vec<OpenEntry> = Vec::new();
        let mut cursor = None;
        for page_number in 0.. {
            assert!(
                page_number < 100,
                "list_tenant limit {limit}: the cursors never end"
            );
            let page = store
                .list_tenant(&tenant, cursor.as_ref(), limit)
                .await
                .unwrap_or_else(|e| panic!("list_tenant: {e}"));
            assert!(
                page.entries.len() <= limit,
                "list_tenant: a page over its limit"
            );
            let empty = page.entries.is_empty();
            seen.extend(page.entries);
            match page.next {
                None => break,
                Some(next) => {
                    assert!(
                        !empty,
                        "list_tenant limit {limit}: an empty page with a cursor"
                    );
                    cursor = Some(next);
                }
            }
        }
        for pair in seen.windows(2) {
            assert!(
                pair[0].created_at >= pair[1].created_at,
                "list_tenant limit {limit}: not newest first"
            );
        }
        let mut seen_ids: Vec<&PredictionId> = seen.iter().map(|e| &e.id).collect();
        let mut expected: Vec<&PredictionId> = ours.iter().map(|r| &r.id).collect();
        seen_ids.sort();
        expected.sort();
        assert_eq!(
            seen_ids, expected,
            "list_tenant limit {limit}: exactly the tenant's predictions, each once"
        );
        for entry in &seen {
            let record = ours.iter().find(|r| r.id == entry.id);
            assert_eq!(
                record.map(|r| r.created_at),
                Some(entry.created_at),
                "list_tenant: an entry carries its record's creation time"
            );
        }
    }
}

/// Follows `next` cursors from the first page to the end, checking every page.
async fn walk_open<S: RecordStore>(
    store: &S,
    shard: &str,
    created_before: Timestamp,
    limit: usize,
) -> Vec<OpenEntry> {
    let mut seen: Vec<OpenEntry> = Vec::new();
    let mut cursor: Option<String> = None;
    for page_number in 0.. {
        assert!(
            page_number < 10_000,
            "list_open {shard} limit {limit}: the cursors never end"
        );
        let page = store
            .list_open(shard, created_before, cursor.as_deref(), limit)
            .await
            .unwrap_or_else(|e| panic!("list_open {shard} limit {limit}: {e}"));
        assert!(
            page.entries.len() <= limit,
            "list_open {shard}: a page of {} entries for limit {limit}",
            page.entries.len()
        );
        for entry in &page.entries {
            assert_eq!(
                open_shard(&entry.id),
                shard,
                "list_open {shard}: {} belongs to another shard",
                entry.id
            );
            assert!(
                entry.created_at < created_before,
                "list_open {shard}: {} was created at {:?}, not before {created_before:?}",
                entry.id,
                entry.created_at
            );
        }
        let empty = page.entries.is_empty();
        seen.extend(page.entries);
        match page.next {
            None => break,
            Some(next) => {
                // DynamoDB may end a full last page with a cursor; the page after it is
                // empty and has none. An empty page with a cursor would loop forever.
                assert!(
                    !empty,
                    "list_open {shard} limit {limit}: an empty page with a `next` cursor"
                );
                assert_ne!(
                    cursor.as_deref(),
                    Some(next.as_str()),
                    "list_open {shard} limit {limit}: the cursor did not move"
                );
                cursor = Some(next);
            }
        }
    }
    for pair in seen.windows(2) {
        assert!(
            pair[0].created_at <= pair[1].created_at,
            "list_open {shard} limit {limit}: not oldest first: {} ({:?}) before {} ({:?})",
            pair[0].id,
            pair[0].created_at,
            pair[1].id,
            pair[1].created_at
        );
    }
    let mut ids = HashSet::new();
    for entry in &seen {
        assert!(
            ids.insert(entry.id.clone()),
            "list_open {shard} limit {limit}: {} listed twice",
            entry.id
        );
    }
    seen
}

/// Of the entries a walk saw, those among `ours`, checked to be exactly `expected` (each
/// once, terminal records never) with their records' creation times.
fn check_ours(
    seen: &[OpenEntry],
    ours: &HashMap<PredictionId, PredictionRecord>,
    expected: &[&PredictionId],
    context: &str,
) {
    let listed: Vec<&OpenEntry> = seen.iter().filter(|e| ours.contains_key(&e.id)).collect();
    for entry in &listed {
        assert_eq!(
            Some(entry.created_at),
            ours.get(&entry.id).map(|r| r.created_at),
            "{context}: an entry carries its record's creation time"
        );
    }
    let mut listed_ids: Vec<&PredictionId> = listed.iter().map(|e| &e.id).collect();
    let mut expected_ids = expected.to_vec();
    listed_ids.sort();
    expected_ids.sort();
    assert_eq!(
        listed_ids, expected_ids,
        "{context}: exactly the open records of the shard created before the bound, each once"
    );
}

async fn list_open_pages_through_each_open_record_once<S: RecordStore>(store: &S) {
    const DIGIT: char = 'c';
    let shard = open_shard(&id_in_shard(DIGIT));
    // A window of creation times of this run's own (other records of the shard may be
    // listed too; they are checked for the page rules but not counted).
    let base = NOW.plus(ms(1_000_000 + fastrand::u64(0..1_000_000_000)));
    let before = base.plus(ms(10));
    let mut ours: HashMap<PredictionId, PredictionRecord> = HashMap::new();
    let mut open = Vec::new();
    // Two pairs share a creation time: paging must not lose or repeat either of a tie.
    for (offset, status) in [
        (0, PredictionStatus::Starting),
        (1, PredictionStatus::Processing),
        (1, PredictionStatus::Starting),
        (2, PredictionStatus::Starting),
        (3, PredictionStatus::Starting),
        (3, PredictionStatus::Processing),
        (9, PredictionStatus::Starting),
    ] {
        let record = PredictionRecord {
            status,
            ..bare_record(id_in_shard(DIGIT), base.plus(ms(offset)))
        };
        insert(store, &record).await;
        open.push(record.id.clone());
        ours.insert(record.id.clone(), record);
    }
    let not_listed = [
        // Terminal when stored.
        PredictionRecord {
            status: PredictionStatus::Succeeded,
            ..bare_record(id_in_shard(DIGIT), base.plus(ms(2)))
        },
        // Created at the bound, and after it.
        bare_record(id_in_shard(DIGIT), before),
        bare_record(id_in_shard(DIGIT), before.plus(ms(1))),
        // Another shard.
        bare_record(id_in_shard('d'), base.plus(ms(1))),
        bare_record(id_in_shard('0'), base.plus(ms(1))),
    ];
    for record in &not_listed {
        insert(store, record).await;
        ours.insert(record.id.clone(), record.clone());
    }
    // Advanced to terminal after it was listed.
    let ended = bare_record(id_in_shard(DIGIT), base.plus(ms(2)));
    insert(store, &ended).await;
    ours.insert(ended.id.clone(), ended.clone());
    let expected: Vec<&PredictionId> = open.iter().chain([&ended.id]).collect();
    for limit in [1, 2, 3, 4, 8, 100] {
        let seen = walk_open(store, shard, before, limit).await;
        check_ours(
            &seen,
            &ours,
            &expected,
            &format!("list_open {shard} limit {limit}"),
        );
    }

    // Moving forward but not to the end keeps a record listed; ending it removes it.
    assert!(
        store
            .advance(&open[0], &advance_to(PredictionStatus::Processing))
            .await
            .expect("advance")
    );
    if let Some(r) = ours.get_mut(&open[0]) {
        r.status = PredictionStatus::Processing;
    }
    assert!(
        store
            .advance(&ended.id, &Advance::failed("ended", base.plus(ms(5))))
            .await
            .expect("advance")
    );
    let expected: Vec<&PredictionId> = open.iter().collect();
    for limit in [1, 3, 100] {
        let seen = walk_open(store, shard, before, limit).await;
        check_ours(
            &seen,
            &ours,
            &expected,
            &format!("list_open {shard} limit {limit} after an advance to `failed`"),
        );
    }

    // A bound between creation times: strictly before it.
    let seen = walk_open(store, shard, base.plus(ms(3)), 2).await;
    let early: Vec<&PredictionId> = open
        .iter()
        .filter(|id| ours[*id].created_at < base.plus(ms(3)))
        .collect();
    check_ours(
        &seen,
        &ours,
        &early,
        &format!("list_open {shard} before base.plus(ms(3))"),
    );

    // The other shards and the legacy shard list none of this shard's records.
    for other in ["open#d", LEGACY_OPEN_SHARD] {
        let seen = walk_open(store, other, before, 100).await;
        assert!(
            seen.iter().all(|e| !open.contains(&e.id)),
            "list_open {other}: lists a record of {shard}"
        );
    }
    let seen = walk_open(store, "open#d", before, 100).await;
    assert!(
        seen.iter().any(|e| e.id == not_listed[3].id),
        "list_open open#d: its own open record is listed"
    );

    assert!(
        store
            .list_open(shard, before, Some("not a cursor"), 10)
            .await
            .is_err(),
        "list_open: a malformed cursor is an error"
    );
}

/// A copy job with every field of Replicate's prediction that survives `CopyJob::new` set.
fn full_copy_job() -> CopyJob {
    let remote = Prediction {
        id: format!("conformance-{}", unique()),
        model: "black-forest-labs/flux-schnell".to_owned(),
        version: Some("a".repeat(64)),
        input: Map::from_iter([("prompt".to_owned(), json!("dropped by CopyJob::new"))]),
        output: vec![
            "https://replicate.delivery/xezq/abc/out-0.webp".to_owned(),
            "https://replicate.delivery/xezq/abc/out-1.webp".to_owned(),
        ],
        error: Some("a warning ünïcödé".to_owned()),
        logs: Some("dropped by CopyJob::new".to_owned()),
        status: PredictionStatus::Succeeded,
        data_removed: false,
        created_at: Some("2025-01-01T00:00:00.123Z".to_owned()),
        started_at: Some("2025-01-01T00:00:01.5Z".to_owned()),
        completed_at: Some("2025-01-01T00:00:02.000000Z".to_owned()),
        urls: PredictionUrls {
            get: Some("https://api.replicate.com/v1/predictions/x".to_owned()),
            cancel: Some("https://api.replicate.com/v1/predictions/x/cancel".to_owned()),
            web: Some("https://replicate.com/p/x".to_owned()),
            stream: None,
        },
        metrics: metrics(1.5, ("image_count", json!(2))),
        deadline: Some("2025-01-01T01:00:00Z".to_owned()),
    };
    CopyJob::new(PredictionId::generate(), &remote)
}

fn bare_copy_job() -> CopyJob {
    let remote = Prediction {
        id: format!("conformance-{}", unique()),
        model: String::new(),
        version: None,
        input: Map::new(),
        output: Vec::new(),
        error: None,
        logs: None,
        status: PredictionStatus::Succeeded,
        data_removed: true,
        created_at: None,
        started_at: None,
        completed_at: None,
        urls: PredictionUrls::default(),
        metrics: Metrics::default(),
        deadline: None,
    };
    CopyJob::new(PredictionId::generate(), &remote)
}

/// `send_copy` queues jobs that come back whole. `receive` takes what the queue holds now
/// (possibly not everything yet, as SQS may); it is called until the jobs are back.
pub async fn copy_queue_suite<Q, F, Fut>(queue: &Q, mut receive: F)
where
    Q: JobQueue,
    F: FnMut() -> Fut,
    Fut: Future<Output = Vec<CopyJob>>,
{
    let sent = [full_copy_job(), bare_copy_job(), full_copy_job()];
    assert!(sent[0].remote.input.is_empty() && sent[0].remote.logs.is_none());
    for job in &sent {
        queue
            .send_copy(job)
            .await
            .unwrap_or_else(|e| panic!("send_copy {}: {e}", job.prediction_id));
    }
    let mut pending: HashMap<PredictionId, &CopyJob> = sent
        .iter()
        .map(|job| (job.prediction_id.clone(), job))
        .collect();
    for _ in 0..50 {
        if pending.is_empty() {
            break;
        }
        for job in receive().await {
            // Jobs of other runs sharing the queue are not this suite's business.
            if let Some(expected) = pending.remove(&job.prediction_id) {
                assert_eq!(&job, expected, "send_copy: the job comes back as sent");
            } else {
                assert!(
                    !sent.iter().any(|s| s.prediction_id == job.prediction_id),
                    "send_copy: job {} came back twice",
                    job.prediction_id
                );
            }
        }
    }
    assert!(
        pending.is_empty(),
        "send_copy: jobs never came back: {:?}",
        pending.keys().collect::<Vec<_>>()
    );
}

/// The rules of `ObjectStore` that S3 enforces and the output copy relies on. `read_back`
/// reads a stored object (bytes, content type), `None` if there is none: the port itself
/// has no read.
pub async fn object_store_suite<O, F, Fut>(objects: &O, read_back: F)
where
    O: ObjectStore,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Option<(Vec<u8>, String)>>,
{
    let prefix = format!("conformance/{}", unique());
    put_object_overwrites(objects, &read_back, &prefix).await;
    multipart_concatenates_in_part_order(objects, &read_back, &prefix).await;
    failed_completes_leave_the_upload_open(objects, &read_back, &prefix).await;
    aborted_uploads_are_gone(objects, &read_back, &prefix).await;

    objects_read_back_within_a_limit(objects, &prefix).await;
    let key = format!("{prefix}/presigned/0.webp");
    let put = objects
        .presign_put(&key, "image/webp", 1234, Duration::from_secs(900))
        .await
        .expect("presign_put");
    assert!(
        put.url.contains(&key),
        "presign_put: `{}` does not name `{key}`",
        put.url
    );
    let header = |name: &str| {
        put.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(
        (header("content-type"), header("content-length")),
        (Some("image/webp"), Some("1234")),
        "presign_put: the PUT must carry the declared type and size: {:?}",
        put.headers
    );
    let url = objects
        .presign_get(&key, Duration::from_secs(3600))
        .await
        .expect("presign_get");
    let parsed =
        url::Url::parse(&url).unwrap_or_else(|e| panic!("presign_get: `{url}` is not a URL: {e}"));
    assert!(
        parsed.path().ends_with(&format!("/{key}")),
        "presign_get: `{url}` does not name `{key}`"
    );
}

async fn objects_read_back_within_a_limit<O: ObjectStore>(objects: &O, prefix: &str) {
    let key = format!("{prefix}/read/upload");
    assert_eq!(
        objects.read_object(&key, 100).await.expect("read_object"),
        ObjectRead::Missing,
        "read_object: no object is Missing"
    );
    objects
        .put_object(&key, "image/png", body(9, 100))
        .await
        .expect("put_object");
    assert_eq!(
        objects.read_object(&key, 100).await.expect("read_object"),
        ObjectRead::Found {
            content_type: "image/png".to_owned(),
            bytes: body(9, 100),
        },
        "read_object: an object within the limit comes back whole"
    );
    assert_eq!(
        objects.read_object(&key, 99).await.expect("read_object"),
        ObjectRead::TooLarge { size: 100 },
        "read_object: an object over the limit is only measured"
    );
}

fn body(byte: u8, len: usize) -> Bytes {
    Bytes::from(vec![byte; len])
}

async fn put_object_overwrites<O, F, Fut>(objects: &O, read_back: &F, prefix: &str)
where
    O: ObjectStore,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Option<(Vec<u8>, String)>>,
{
    let key = format!("{prefix}/put/0.png");
    assert_eq!(
        read_back(key.clone()).await,
        None,
        "no object before it is put"
    );
    objects
        .put_object(&key, "image/png", Bytes::from_static(b"\x89PNG first"))
        .await
        .expect("put_object");
    assert_eq!(
        read_back(key.clone()).await,
        Some((b"\x89PNG first".to_vec(), "image/png".to_owned())),
        "put_object: bytes and content type are stored"
    );
    objects
        .put_object(&key, "image/webp", Bytes::from_static(b"RIFF second"))
        .await
        .expect("put_object");
    assert_eq!(
        read_back(key).await,
        Some((b"RIFF second".to_vec(), "image/webp".to_owned())),
        "put_object: a second put replaces the object"
    );
}

async fn upload<O: ObjectStore>(
    objects: &O,
    key: &str,
    id: &str,
    number: i32,
    body: Bytes,
) -> String {
    objects
        .upload_part(key, id, number, body)
        .await
        .unwrap_or_else(|e| panic!("upload_part {number} of {key}: {e}"))
}

async fn multipart_concatenates_in_part_order<O, F, Fut>(objects: &O, read_back: &F, prefix: &str)
where
    O: ObjectStore,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Option<(Vec<u8>, String)>>,
{
    let key = format!("{prefix}/multipart/0.webp");
    let id = objects
        .create_multipart(&key, "image/webp")
        .await
        .expect("create_multipart");
    // Parts may arrive in any order, and a part uploaded again replaces the first upload.
    let last = upload(objects, &key, &id, 3, body(b'c', 1000)).await;
    let stale = upload(objects, &key, &id, 1, body(b'x', MIN_PART_SIZE)).await;
    let second = upload(objects, &key, &id, 2, body(b'b', MIN_PART_SIZE + 1)).await;
    let first = upload(objects, &key, &id, 1, body(b'a', MIN_PART_SIZE)).await;
    assert_ne!(
        stale, first,
        "upload_part: the ETag names the part's content"
    );
    assert_eq!(
        read_back(key.clone()).await,
        None,
        "no object before the upload completes"
    );
    objects
        .complete_multipart(&key, &id, &[(1, first), (2, second), (3, last)])
        .await
        .expect("complete_multipart: parts uploaded out of order, listed in order");
    let mut expected = vec![b'a'; MIN_PART_SIZE];
    expected.extend(vec![b'b'; MIN_PART_SIZE + 1]);
    expected.extend(vec![b'c'; 1000]);
    let (stored, content_type) = read_back(key.clone())
        .await
        .expect("complete_multipart: the object exists");
    assert_eq!(
        content_type, "image/webp",
        "complete_multipart: the upload's content type"
    );
    assert!(
        stored == expected,
        "complete_multipart: the object is the parts in part-number order, the last upload of \
         each part ({} bytes stored, {} expected)",
        stored.len(),
        expected.len()
    );
    // (Completing it again is not checked: S3 answers a repeated complete of the upload that
    // made the object with success, so that a retried complete is not a failure.)
    assert!(
        objects
            .upload_part(&key, &id, 4, body(b'd', 10))
            .await
            .is_err(),
        "upload_part: a completed upload takes no more parts"
    );

    // A single small part is a whole object.
    let key = format!("{prefix}/multipart/1.webp");
    let id = objects
        .create_multipart(&key, "image/webp")
        .await
        .expect("create_multipart");
    let only = upload(objects, &key, &id, 1, body(b'z', 10)).await;
    objects
        .complete_multipart(&key, &id, &[(1, only)])
        .await
        .expect("complete_multipart: one small part");
    assert_eq!(
        read_back(key).await,
        Some((vec![b'z'; 10], "image/webp".to_owned()))
    );
}

async fn failed_completes_leave_the_upload_open<O, F, Fut>(objects: &O, read_back: &F, prefix: &str)
where
    O: ObjectStore,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Option<(Vec<u8>, String)>>,
{
    let key = format!("{prefix}/refused/0.png");
    let id = objects
        .create_multipart(&key, "image/png")
        .await
        .expect("create_multipart");
    let small = upload(objects, &key, &id, 1, body(b's', 100)).await;
    let tail = upload(objects, &key, &id, 2, body(b't', 100)).await;
    let refused: [(&str, Vec<(i32, String)>); 4] = [
        ("no parts", vec![]),
        (
            "a part other than the last under 5 MiB",
            vec![(1, small), (2, tail.clone())],
        ),
        (
            "an ETag that is not the part's",
            vec![(2, "\"0123456789abcdef0123456789abcdef\"".to_owned())],
        ),
        ("a part never uploaded", vec![(3, tail.clone())]),
    ];
    for (why, parts) in &refused {
        assert!(
            objects.complete_multipart(&key, &id, parts).await.is_err(),
            "complete_multipart: refused for {why}"
        );
    }
    let first = upload(objects, &key, &id, 1, body(b'p', MIN_PART_SIZE)).await;
    assert!(
        objects
            .complete_multipart(&key, &id, &[(2, tail.clone()), (1, first.clone())])
            .await
            .is_err(),
        "complete_multipart: refused for parts listed out of order"
    );
    assert_eq!(
        read_back(key.clone()).await,
        None,
        "a refused complete stores nothing"
    );
    objects
        .complete_multipart(&key, &id, &[(1, first), (2, tail)])
        .await
        .expect("complete_multipart: the upload stays open after refused completes");
    let mut expected = vec![b'p'; MIN_PART_SIZE];
    expected.extend(vec![b't'; 100]);
    let (stored, content_type) = read_back(key).await.expect("the object exists");
    assert!(
        stored == expected && content_type == "image/png",
        "complete_multipart: stored"
    );
}

async fn aborted_uploads_are_gone<O, F, Fut>(objects: &O, read_back: &F, prefix: &str)
where
    O: ObjectStore,
    F: Fn(String) -> Fut,
    Fut: Future<Output = Option<(Vec<u8>, String)>>,
{
    let key = format!("{prefix}/aborted/0.png");
    let id = objects
        .create_multipart(&key, "image/png")
        .await
        .expect("create_multipart");
    let part = upload(objects, &key, &id, 1, body(b'q', 100)).await;
    objects
        .abort_multipart(&key, &id)
        .await
        .expect("abort_multipart");
    assert!(
        objects
            .complete_multipart(&key, &id, &[(1, part)])
            .await
            .is_err(),
        "complete_multipart: an aborted upload cannot complete"
    );
    assert!(
        objects
            .upload_part(&key, &id, 2, body(b'r', 10))
            .await
            .is_err(),
        "upload_part: an aborted upload takes no parts"
    );
    assert!(
        objects.abort_multipart(&key, &id).await.is_err(),
        "abort_multipart: an upload already aborted is unknown (S3: NoSuchUpload)"
    );
    assert_eq!(
        read_back(key).await,
        None,
        "an aborted upload stores nothing"
    );
}

/// Every rule of `AccountStore` that authentication, rate limits and budgets rely on.
pub async fn account_store_suite<S: AccountStore>(store: &S) {
    keys_are_created_once_read_back_and_revoked(store).await;
    tenant_limits_are_set_and_replaced(store).await;
    rate_windows_admit_exactly_the_limit(store).await;
    budgets_reserve_atomically_and_settle_to_the_actual_cost(store).await;
    uploads_are_created_once_and_read_back(store).await;
    callback_secrets_are_made_once(store).await;
}

async fn uploads_are_created_once_and_read_back<S: AccountStore>(store: &S) {
    let upload = UploadRecord {
        id: UploadId::generate(),
        tenant: fresh_tenant(),
        kind: ImageKind::Jpeg,
        size: 3 * 1024 * 1024,
        created_at: NOW,
        expires_at: NOW.unix_seconds() + 86_400,
    };
    store.put_upload(&upload).await.expect("put_upload");
    assert_eq!(
        store.get_upload(&upload.id).await.expect("get_upload"),
        Some(upload.clone()),
        "get_upload: a slot reads back as created"
    );
    assert!(
        store.put_upload(&upload).await.is_err(),
        "put_upload: a slot id that exists is never overwritten"
    );
    assert_eq!(
        store
            .get_upload(&UploadId::generate())
            .await
            .expect("get_upload"),
        None
    );
}

async fn callback_secrets_are_made_once<S: AccountStore>(store: &S) {
    let tenant = fresh_tenant();
    let candidates: Vec<String> = (0..8).map(|i| format!("whsec_candidate{i}")).collect();
    let answers = futures_util::future::join_all(
        candidates
            .iter()
            .map(|candidate| store.callback_secret(&tenant, candidate)),
    )
    .await;
    let answers: Vec<String> = answers
        .into_iter()
        .map(|a| a.expect("callback_secret"))
        .collect();
    assert!(
        candidates.contains(&answers[0]) && answers.iter().all(|a| *a == answers[0]),
        "callback_secret: first callers at once agree on one secret: {answers:?}"
    );
    assert_eq!(
        store
            .callback_secret(&tenant, "whsec_later")
            .await
            .expect("callback_secret"),
        answers[0],
        "callback_secret: a stored secret is kept"
    );
    assert_ne!(
        store
            .callback_secret(&fresh_tenant(), "whsec_other")
            .await
            .expect("callback_secret"),
        answers[0],
        "callback_secret: each tenant has its own"
    );
}

/// Callback jobs come back as sent, from the callback queue and from its dead-letter queue.
pub async fn callback_queue_suite<Q, F, Fut>(queue: &Q, mut receive: F)
where
    Q: JobQueue,
    F: FnMut(bool) -> Fut,
    Fut: Future<Output = Vec<CallbackJob>>,
{
    let job = CallbackJob {
        prediction_id: PredictionId::generate(),
        event: CallbackEvent::Completed,
        queued_at: NOW,
    };
    queue.send_callback(&job).await.expect("send_callback");
    let dead = CallbackJob {
        event: CallbackEvent::Start,
        ..job.clone()
    };
    queue
        .dead_letter_callback(&dead)
        .await
        .expect("dead_letter_callback");
    for (dead_letter, expected) in [(false, &job), (true, &dead)] {
        let mut found = false;
        for _ in 0..20 {
            if receive(dead_letter)
                .await
                .iter()
                .any(|received| received == expected)
            {
                found = true;
                break;
            }
        }
        assert!(
            found,
            "{}: the job comes back as sent",
            if dead_letter {
                "dead_letter_callback"
            } else {
                "send_callback"
            }
        );
    }
}

fn fresh_tenant() -> TenantId {
    TenantId::parse(&format!("t-{}", unique())).unwrap_or_else(|e| panic!("{e}"))
}

async fn keys_are_created_once_read_back_and_revoked<S: AccountStore>(store: &S) {
    let key = ApiKey::generate();
    let record = KeyRecord::new(&key, fresh_tenant(), NOW);
    store
        .create_key(&record)
        .await
        .unwrap_or_else(|e| panic!("create_key: {e}"));
    assert_eq!(
        store.get_key(&record.id).await.ok().flatten(),
        Some(record.clone()),
        "get_key: a key reads back exactly as created"
    );
    assert!(
        store.create_key(&record).await.is_err(),
        "create_key: a key id that exists is never overwritten"
    );
    let unknown = ApiKey::generate().hash().key_id();
    assert_eq!(
        store.get_key(&unknown).await.ok().flatten(),
        None,
        "get_key: an unknown id is None"
    );
    assert!(
        matches!(
            store.revoke_key(&record.id, NOW.plus(ms(5))).await,
            Ok(true)
        ),
        "revoke_key: a known key is revoked"
    );
    assert!(
        matches!(
            store.revoke_key(&record.id, NOW.plus(ms(9))).await,
            Ok(true)
        ),
        "revoke_key: revoking again succeeds"
    );
    assert_eq!(
        store
            .get_key(&record.id)
            .await
            .ok()
            .flatten()
            .and_then(|k| k.revoked_at),
        Some(NOW.plus(ms(5))),
        "revoke_key: the first revocation time is kept"
    );
    assert!(
        matches!(store.revoke_key(&unknown, NOW).await, Ok(false)),
        "revoke_key: an unknown key is not created by revoking it"
    );
    assert_eq!(
        store.get_key(&unknown).await.ok().flatten(),
        None,
        "revoke_key: revoking an unknown key stores nothing"
    );
}

async fn tenant_limits_are_set_and_replaced<S: AccountStore>(store: &S) {
    let tenant = fresh_tenant();
    assert_eq!(
        store.get_tenant(&tenant).await.ok().flatten(),
        None,
        "get_tenant: an unknown tenant is None"
    );
    let update = |rate, budget| {
        let change =
            LimitsUpdate::new(tenant.clone(), rate, budget).unwrap_or_else(|e| panic!("{e}"));
        async move {
            store
                .update_tenant(&change)
                .await
                .unwrap_or_else(|e| panic!("update_tenant: {e}"))
        }
    };
    let limits = |rate, budget| TenantLimits {
        tenant: tenant.clone(),
        rate_per_minute: rate,
        monthly_budget: budget,
    };
    assert_eq!(
        update(None, None).await,
        limits(DEFAULT_RATE_PER_MINUTE, None),
        "update_tenant: a new tenant gets the default rate and no budget"
    );
    assert_eq!(
        update(None, Some(Some(7_500_000))).await,
        limits(DEFAULT_RATE_PER_MINUTE, Some(7_500_000)),
        "update_tenant: a budget alone leaves the rate"
    );
    assert_eq!(
        update(Some(42), None).await,
        limits(42, Some(7_500_000)),
        "update_tenant: a rate alone leaves the budget"
    );
    assert_eq!(
        store.get_tenant(&tenant).await.ok().flatten(),
        Some(limits(42, Some(7_500_000))),
        "get_tenant: limits read back as updated"
    );
    assert_eq!(
        update(None, Some(None)).await,
        limits(42, None),
        "update_tenant: a budget can be removed"
    );
    // Two changes at once, one of the rate and one of the budget: both hold.
    futures_util::future::join(update(Some(9), None), update(None, Some(Some(1_000)))).await;
    assert_eq!(
        store.get_tenant(&tenant).await.ok().flatten(),
        Some(limits(9, Some(1_000))),
        "update_tenant: concurrent changes of different limits are both kept"
    );
}

async fn rate_windows_admit_exactly_the_limit<S: AccountStore>(store: &S) {
    let tenant = fresh_tenant();
    let window = RateWindow::at(&tenant, NOW);
    let next = RateWindow::at(&tenant, window.ends_at);
    let mut admitted = 0;
    for _ in 0..5 {
        if store
            .count_request(&window, 3)
            .await
            .unwrap_or_else(|e| panic!("count_request: {e}"))
        {
            admitted += 1;
        }
    }
    assert_eq!(
        admitted, 3,
        "count_request: a window admits exactly its limit"
    );
    assert!(
        matches!(store.count_request(&next, 3).await, Ok(true)),
        "count_request: the next window starts empty"
    );
    assert!(
        matches!(store.count_request(&window, 4).await, Ok(true)),
        "count_request: a higher limit admits more in the same window"
    );
    // Many at once: the counter is one conditional update, so exactly the limit gets in.
    let burst = RateWindow::at(&fresh_tenant(), NOW);
    let results =
        futures_util::future::join_all((0..24).map(|_| store.count_request(&burst, 7))).await;
    let admitted = results
        .into_iter()
        .filter(|r| matches!(r, Ok(true)))
        .count();
    assert_eq!(
        admitted, 7,
        "count_request: concurrent requests never exceed the limit"
    );
}

async fn budgets_reserve_atomically_and_settle_to_the_actual_cost<S: AccountStore>(store: &S) {
    let tenant = fresh_tenant();
    let month = "2026-11";
    let expires_at = NOW.unix_seconds() + 86_400;
    let usage = |expected: Usage, why: &'static str| {
        let tenant = tenant.clone();
        async move {
            assert_eq!(
                store
                    .usage(&tenant, month)
                    .await
                    .unwrap_or_else(|e| panic!("usage: {e}")),
                expected,
                "{why}"
            );
        }
    };
    usage(Usage::default(), "usage: nothing recorded is zero").await;
    let reserve = |estimate, budget| {
        let tenant = tenant.clone();
        let reservation = Reservation {
            estimate,
            images: 2,
            budget,
            expires_at,
        };
        async move {
            store
                .reserve_cost(&tenant, month, &reservation)
                .await
                .unwrap_or_else(|e| panic!("reserve_cost: {e}"))
        }
    };
    assert!(
        reserve(4_000, Some(10_000)).await,
        "reserve_cost: within the budget"
    );
    assert!(
        reserve(4_000, Some(10_000)).await,
        "reserve_cost: still within"
    );
    assert!(
        !reserve(4_000, Some(10_000)).await,
        "reserve_cost: refused when it would pass the budget"
    );
    assert!(
        reserve(2_000, Some(10_000)).await,
        "reserve_cost: exactly reaching the budget is allowed"
    );
    assert!(
        !reserve(20_000, Some(10_000)).await,
        "reserve_cost: an estimate above the whole budget is refused"
    );
    usage(
        Usage {
            predictions: 3,
            images: 6,
            committed: 10_000,
        },
        "reserve_cost: refusals change nothing",
    )
    .await;
    let settle = |settlement: CostSettlement| {
        let tenant = tenant.clone();
        async move {
            store
                .settle_cost(&tenant, month, &settlement)
                .await
                .unwrap_or_else(|e| panic!("settle_cost: {e}"))
        }
    };
    settle(CostSettlement {
        estimate: 4_000,
        actual: 1_000,
        requested_images: 2,
        stored_images: 1,
        created: true,
    })
    .await;
    settle(CostSettlement {
        estimate: 2_000,
        actual: 0,
        requested_images: 2,
        stored_images: 0,
        created: false,
    })
    .await;
    usage(
        Usage {
            predictions: 2,
            images: 3,
            committed: 5_000,
        },
        "settle_cost: estimates are replaced by actual costs (subtracting too); a \
         never-created prediction is uncounted",
    )
    .await;
    assert!(
        reserve(u64::MAX / 4, None).await,
        "reserve_cost: no budget, no limit"
    );
    // Concurrent reservations against one budget: never more than fits.
    let tight = fresh_tenant();
    let reservation = Reservation {
        estimate: 1_000,
        images: 1,
        budget: Some(5_000),
        expires_at,
    };
    let results = futures_util::future::join_all(
        (0..12).map(|_| store.reserve_cost(&tight, month, &reservation)),
    )
    .await;
    let reserved = results
        .into_iter()
        .filter(|r| matches!(r, Ok(true)))
        .count();
    assert_eq!(
        reserved, 5,
        "reserve_cost: concurrent reservations never pass the budget"
    );
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
