//! Predictions: stored whole, bound to one Replicate prediction, moved only forward, and
//! synced at most once per interval.

use super::*;

pub(super) async fn predictions_round_trip<S: RecordStore>(store: &S) {
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

pub(super) async fn attach_binds_one_replicate_id_to_one_record<S: RecordStore>(store: &S) {
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

pub(super) async fn advance_only_moves_forward<S: RecordStore>(store: &S) {
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

pub(super) async fn claim_sync_once_per_interval<S: RecordStore>(store: &S) {
    for mark in [
        SyncMark::Fetched,
        SyncMark::CopyQueued,
        SyncMark::CancelRequested,
    ] {
        claim_sync_mark(store, mark).await;
    }
}

/// The record's time for `mark`.
pub(super) fn mark_of(record: &PredictionRecord, mark: SyncMark) -> Option<Timestamp> {
    match mark {
        SyncMark::Fetched => record.synced_at,
        SyncMark::CopyQueued => record.copy_queued_at,
        SyncMark::CancelRequested => record.cancel_requested_at,
    }
}

pub(super) fn with_mark(
    record: &PredictionRecord,
    mark: SyncMark,
    at: Timestamp,
) -> PredictionRecord {
    let mut record = record.clone();
    match mark {
        SyncMark::Fetched => record.synced_at = Some(at),
        SyncMark::CopyQueued => record.copy_queued_at = Some(at),
        SyncMark::CancelRequested => record.cancel_requested_at = Some(at),
    }
    record
}

pub(super) async fn claim_sync_mark<S: RecordStore>(store: &S, mark: SyncMark) {
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
