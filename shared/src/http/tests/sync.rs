//! Fetch and cancel: syncing a running prediction at most once per interval, 404s, the
//! read function's routes, cancels.

use super::*;

#[tokio::test]
async fn fetch_recovers_a_lost_webhook_and_syncs_at_most_once_per_interval() {
    let app = app();
    let (_, body) = submitted(&app, fox()).await;
    let id = body["id"].as_str().unwrap().to_owned();
    app.replicate
        .set_prediction(remote("rep-1", PredictionStatus::Processing));
    assert_eq!(
        fetched(&app, &id).await["status"],
        "starting",
        "a prediction younger than the interval is left to its webhook"
    );
    assert_eq!(app.replicate.get_calls(), 0);
    app.clock.advance(Duration::from_secs(6));
    assert_eq!(fetched(&app, &id).await["status"], "processing");
    assert_eq!(fetched(&app, &id).await["status"], "processing");
    assert_eq!(
        app.replicate.get_calls(),
        1,
        "the second fetch within the interval did not ask"
    );
    app.replicate
        .set_prediction(remote("rep-1", PredictionStatus::Succeeded));
    app.clock.advance(Duration::from_secs(6));
    assert_eq!(fetched(&app, &id).await["status"], "processing");
    assert_eq!(
        app.queue.len(),
        1,
        "the copy is queued, not done in the fetch"
    );
    app.clock.advance(Duration::from_secs(6));
    assert_eq!(fetched(&app, &id).await["status"], "processing");
    assert_eq!(
        app.queue.len(),
        1,
        "polling does not queue the same copy again"
    );
    run_copies(&app).await;
    let view = fetched(&app, &id).await;
    assert_eq!(view["status"], "succeeded");
    assert_eq!(view["output"].as_array().unwrap().len(), 1);
    assert_eq!(app.replicate.get_calls(), 3);
    app.clock.advance(Duration::from_secs(60));
    fetched(&app, &id).await;
    assert_eq!(
        app.replicate.get_calls(),
        3,
        "a terminal prediction is never synced"
    );
}

#[tokio::test]
async fn fetch_of_an_unknown_expired_or_malformed_id_is_404() {
    let app = app();
    let response =
        routes::fetch::fetch(&app, event("fetch", &PredictionId::generate().to_string())).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let mut weird = event("fetch", "");
    *weird.uri_mut() = "/v1/predictions/..%2F..%2Fetc".parse().unwrap();
    assert_eq!(crate::http::route(&app, weird).await.status(), 404);
    // Past its TTL a record is gone, even before DynamoDB deletes it.
    let (_, body) = submitted(&app, fox()).await;
    let id = body["id"].as_str().unwrap();
    assert_eq!(
        routes::fetch::fetch(&app, event("fetch", id))
            .await
            .status(),
        200
    );
    app.clock.advance(Duration::from_secs(31 * 24 * 3600));
    assert_eq!(
        routes::fetch::fetch(&app, event("fetch", id))
            .await
            .status(),
        404
    );
}

#[tokio::test]
async fn the_read_function_serves_usage_and_predictions_by_route_key() {
    let app = app();
    let (_, body) = submitted(&app, fox()).await;
    let id = body["id"].as_str().unwrap().to_owned();
    let usage = json_of(&crate::http::read(&app, event("usage", "")).await);
    assert_eq!(usage["tenant"], "acme", "{usage}");
    let fetched = json_of(&crate::http::read(&app, event("fetch", &id)).await);
    assert_eq!(fetched["id"], id.as_str());
    // Behind a custom domain's base path the route key still says which route it is.
    let text = include_str!("../../../tests/fixtures/apigw-v2-usage.json")
        .replace(
            "\"rawPath\": \"/v1/usage\"",
            "\"rawPath\": \"/api/v1/usage\"",
        )
        .replace("\"path\": \"/v1/usage\"", "\"path\": \"/api/v1/usage\"");
    let request = lambda_http::request::from_str(&text).unwrap();
    let usage = json_of(&crate::http::read(&app, request).await);
    assert_eq!(usage["tenant"], "acme", "{usage}");
    let text = include_str!("../../../tests/fixtures/apigw-v2-fetch.json")
        .replace(PLACEHOLDER_ID, &id)
        .replace("\"rawPath\": \"/v1/", "\"rawPath\": \"/api/v1/");
    let request = lambda_http::request::from_str(&text).unwrap();
    assert_eq!(
        json_of(&crate::http::read(&app, request).await)["id"],
        id.as_str()
    );
}

#[tokio::test]
async fn cancel_ends_running_predictions_once_and_leaves_ended_ones_alone() {
    let app = app();
    add_caller(&app.records, BETA_KEY, "beta", 100, None);
    let (_, body) = submitted(&app, prompt("to cancel")).await;
    let id = body["id"].as_str().unwrap().to_owned();

    // Another tenant's prediction, or none: 404, and Replicate is not asked.
    for (who, target) in [
        (Some(BETA_KEY), id.as_str()),
        (Some(FIXTURE_KEY), PLACEHOLDER_ID),
    ] {
        let response = crate::http::write(&app, cancel_event(target, who)).await;
        assert_eq!(response.status(), 404);
    }
    assert_eq!(
        crate::http::write(&app, cancel_event(&id, None))
            .await
            .status(),
        401
    );
    assert_eq!(app.replicate.cancel_calls(), 0);

    let canceled = json_of(&crate::http::write(&app, cancel_event(&id, Some(FIXTURE_KEY))).await);
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    assert_eq!(
        canceled["cost"]["usd"], 0.0,
        "an official model bills no canceled image"
    );
    assert_eq!(app.replicate.cancel_calls(), 1);
    let again = json_of(&crate::http::write(&app, cancel_event(&id, Some(FIXTURE_KEY))).await);
    assert_eq!(again["status"], "canceled");
    assert_eq!(
        app.replicate.cancel_calls(),
        1,
        "an ended prediction is not cancelled again"
    );

    // Finished before the cancel: returned as it is.
    let (_, body) = submitted(&app, prompt("already done")).await;
    let done_id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    complete(&app, &done_id, "rep-2").await;
    let view =
        json_of(&crate::http::write(&app, cancel_event(done_id.as_str(), Some(FIXTURE_KEY))).await);
    assert_eq!(view["status"], "succeeded");
    assert_eq!(
        view["urls"]["cancel"],
        format!("/v1/predictions/{done_id}/cancel")
    );
    assert_eq!(app.replicate.cancel_calls(), 1);

    // A create whose answer was lost: the cancel is kept, and carried out once the
    // prediction is tied to the record (here by its first webhook).
    app.replicate.lose_next_create_answer();
    let (_, body) = submitted(&app, prompt("unconfirmed")).await;
    let lost = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let pending =
        json_of(&crate::http::write(&app, cancel_event(lost.as_str(), Some(FIXTURE_KEY))).await);
    assert_eq!(pending["status"], "starting", "{pending}");
    assert!(
        record(&app, lost.as_str())
            .await
            .cancel_requested_at
            .is_some()
    );
    assert_eq!(app.replicate.cancel_calls(), 1);
    let rid = format!("rep-{}", app.replicate.created().len());
    let start = remote(&rid, PredictionStatus::Processing);
    crate::http::webhook(
        &app,
        webhook_event(&app, &lost, &json!(start), app.clock.system_time()).await,
    )
    .await;
    assert_eq!(
        app.replicate.cancel_calls(),
        2,
        "cancelled as soon as it was tied"
    );
    assert_eq!(
        record(&app, lost.as_str()).await.status,
        PredictionStatus::Canceled
    );
}

#[tokio::test]
async fn a_cancel_of_a_create_that_never_happened_ends_it_canceled() {
    let app = app_with(&[("RESOLVE_AFTER_SECONDS", "1")]);
    app.replicate.lose_next_create_answer();
    let (_, body) = submitted(&app, prompt("never made")).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    // Replicate never had it (its list is empty around the attempt).
    app.replicate
        .forget(&format!("rep-{}", app.replicate.created().len()));
    app.clock.advance(Duration::from_secs(2));
    let view =
        json_of(&crate::http::write(&app, cancel_event(id.as_str(), Some(FIXTURE_KEY))).await);
    assert_eq!(view["status"], "canceled", "{view}");
    assert_eq!(view["cost"]["usd"], 0.0);
    assert_eq!(app.replicate.cancel_calls(), 0);
}

#[tokio::test]
async fn a_cancel_answer_without_predict_time_bills_the_time_it_ran() {
    let app = app();
    let sdxl = json!({"model": "sdxl", "input": {"prompt": "long run"}});
    let (_, body) = submitted(&app, sdxl).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let mut canceled = remote("rep-1", PredictionStatus::Canceled);
    canceled.model = "stability-ai/sdxl".into();
    canceled.version = record(&app, id.as_str()).await.version;
    canceled.metrics.predict_time = None;
    canceled.started_at = Some("2025-01-01T00:00:02.000Z".into());
    canceled.completed_at = Some("2025-01-01T00:00:05.000Z".into());
    crate::http::webhook(
        &app,
        webhook_event(&app, &id, &json!(canceled), app.clock.system_time()).await,
    )
    .await;
    assert_eq!(record(&app, id.as_str()).await.cost, Some(3 * 975));
}
