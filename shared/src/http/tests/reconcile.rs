//! The reconciler: old running predictions synced, vanished ones ended, every shard paged.

use super::*;

#[tokio::test]
async fn the_reconciler_syncs_old_running_predictions_and_gives_up_on_vanished_ones() {
    let app = app_with(&[("RECONCILE_AFTER_SECONDS", "60")]);
    let (_, kept) = submitted(&app, fox()).await;
    let (_, vanished) = submitted(
        &app,
        json!({"model": "flux-schnell", "input": {"prompt": "gone"}}),
    )
    .await;
    app.replicate
        .set_prediction(remote("rep-1", PredictionStatus::Succeeded));
    let report = app.reconcile(None).await;
    assert_eq!(report.examined, 0, "too young to reconcile");
    app.clock.advance(Duration::from_secs(61));
    // rep-2 is unknown to the fake: Replicate answers 404 for it.
    app.replicate.forget("rep-2");
    let report = app.reconcile(None).await;
    assert_eq!(
        (
            report.examined,
            report.advanced,
            report.copies_queued,
            report.errors
        ),
        (2, 1, 1, 0),
        "{report:?}"
    );
    run_copies(&app).await;
    assert_eq!(
        record(&app, kept["id"].as_str().unwrap()).await.status,
        PredictionStatus::Succeeded
    );
    let gone = record(&app, vanished["id"].as_str().unwrap()).await;
    assert_eq!(gone.status, PredictionStatus::Failed);
    assert!(gone.error.unwrap().contains("no longer"));
    assert_eq!(app.reconcile(None).await.examined, 0);
}

#[tokio::test]
async fn the_reconciler_pages_through_every_shard_past_errors_and_ends_the_expired() {
    let app = app_with(&[("RECONCILE_AFTER_SECONDS", "60")]);
    // 250 running predictions, spread over the shards by their random ids.
    for i in 0..250 {
        submitted(
            &app,
            json!({"model": "flux-schnell", "input": {"prompt": format!("p{i}")}}),
        )
        .await;
    }
    // One Replicate cannot answer for (it stays open), every other still running.
    app.replicate
        .set_prediction(remote("rep-7", PredictionStatus::Starting));
    let stuck = app
        .records
        .records()
        .into_iter()
        .find(|r| r.replicate_id.as_deref() == Some("rep-7"))
        .unwrap();
    app.replicate.fail_next_get(
        "rep-7",
        ReplicateError::InvalidResponse {
            status: 200,
            message: "undecodable".into(),
        },
    );
    app.clock.advance(Duration::from_secs(61));
    let report = app.reconcile(None).await;
    assert_eq!(report.examined, 250, "{report:?}");
    assert_eq!(report.errors, 1, "{report:?}");
    assert!(!report.incomplete);
    // Past Replicate's output retention, what is still open is ended with a reason.
    app.clock.advance(Duration::from_secs(71 * 60));
    app.replicate.fail_next_get(
        "rep-7",
        ReplicateError::InvalidResponse {
            status: 200,
            message: "undecodable".into(),
        },
    );
    let report = app.reconcile(None).await;
    assert_eq!(report.examined, 250);
    let ended = record(&app, stuck.id.as_str()).await;
    assert_eq!(ended.status, PredictionStatus::Failed);
    assert!(ended.error.unwrap().contains("retention"));
    assert_eq!(report.expired, 250, "{report:?}");
    // A run out of time stops and says so.
    let report = app.reconcile(Some(tokio::time::Instant::now())).await;
    assert!(report.incomplete);
}
