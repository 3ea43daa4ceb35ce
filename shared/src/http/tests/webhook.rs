//! Replicate's webhooks: signatures, addressing, the output copy, duplicates and
//! stale states, bounds on what is stored.

use super::*;

#[tokio::test]
async fn a_start_webhook_records_replicates_id_even_while_starting() {
    let app = app();
    app.replicate
        .fail_next_create(ReplicateError::CreateOutcomeUnknown {
            reason: "HTTP 500".into(),
        });
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let start = json!(remote("rep-77", PredictionStatus::Starting));
    let response = crate::http::webhook(
        &app,
        webhook_event(&app, &id, &start, app.clock.system_time()).await,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        record(&app, id.as_str()).await.replicate_id.as_deref(),
        Some("rep-77")
    );
    // Tied now: another Replicate prediction is never applied to it.
    let other = json!(remote("rep-78", PredictionStatus::Failed));
    let response = crate::http::webhook(
        &app,
        webhook_event(&app, &id, &other, app.clock.system_time()).await,
    )
    .await;
    assert_eq!(json_of(&response)["result"], "ignored");
    assert_eq!(
        record(&app, id.as_str()).await.status,
        PredictionStatus::Starting
    );
}

#[tokio::test]
async fn a_signed_delivery_cannot_be_replayed_onto_another_record() {
    let app = app();
    app.replicate
        .fail_next_create(ReplicateError::CreateOutcomeUnknown {
            reason: "HTTP 500".into(),
        });
    let (_, victim) = submitted(&app, fox()).await;
    let victim = PredictionId::parse(victim["id"].as_str().unwrap()).unwrap();
    let (_, mine) = submitted(
        &app,
        json!({"model": "flux-schnell", "input": {"prompt": "mine"}}),
    )
    .await;
    let mine = PredictionId::parse(mine["id"].as_str().unwrap()).unwrap();
    let my_token = record(&app, mine.as_str()).await.webhook_token.unwrap();
    // A delivery signed by Replicate for my prediction, replayed to the victim's id with my
    // token, or with none at all.
    let delivery = json!(remote("rep-2", PredictionStatus::Failed));
    for query in [
        format!("id={victim}&token={my_token}"),
        format!("id={victim}"),
    ] {
        let response = crate::http::webhook(
            &app,
            signed_webhook(&query, &delivery, app.clock.system_time()),
        )
        .await;
        assert_eq!(json_of(&response)["result"], "ignored", "{query}");
    }
    let kept = record(&app, victim.as_str()).await;
    assert_eq!(kept.replicate_id, None);
    assert_eq!(kept.status, PredictionStatus::Starting);
    // A delivery of another model, even to the right URL, is not applied either.
    let mut sdxl = remote("rep-9", PredictionStatus::Failed);
    sdxl.model = "stability-ai/sdxl".into();
    let response = crate::http::webhook(
        &app,
        webhook_event(&app, &victim, &json!(sdxl), app.clock.system_time()).await,
    )
    .await;
    assert_eq!(json_of(&response)["result"], "ignored");
}

#[tokio::test]
async fn a_webhook_queues_the_copy_and_outputs_are_stored_before_succeeded() {
    let app = app();
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let response = crate::http::webhook(
        &app,
        webhook_event(
            &app,
            &id,
            &json!(remote("rep-1", PredictionStatus::Succeeded)),
            app.clock.system_time(),
        )
        .await,
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(&response)["result"], "queued");
    assert!(app.objects.keys().is_empty(), "the webhook copies nothing");
    assert_eq!(
        record(&app, id.as_str()).await.status,
        PredictionStatus::Starting
    );
    assert_eq!(run_copies(&app).await, 0);
    let key = format!("outputs/{id}/0.png");
    assert_eq!(app.objects.keys(), vec![key.clone()]);
    let stored = record(&app, id.as_str()).await;
    assert_eq!(stored.status, PredictionStatus::Succeeded);
    assert_eq!(stored.outputs[0].key, key);
    assert_eq!(stored.outputs[0].size, png().len() as u64);
    let view = fetched(&app, id.as_str()).await;
    assert_eq!(
        view["output"][0]["url"],
        format!("https://bucket.example/{key}?expires-in=3600")
    );
    assert_eq!(view["completed_at"], "2025-01-01T00:00:05.000Z");
}

#[tokio::test]
async fn a_copy_out_of_time_is_retried_and_a_failed_queue_send_asks_for_redelivery() {
    let app = app();
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let done = json!(remote("rep-1", PredictionStatus::Succeeded));
    app.queue.fail_next_sends(1);
    let response = crate::http::webhook(
        &app,
        webhook_event(&app, &id, &done, app.clock.system_time()).await,
    )
    .await;
    assert_eq!(response.status(), 500, "Replicate will deliver it again");
    crate::http::webhook(
        &app,
        webhook_event(&app, &id, &done, app.clock.system_time()).await,
    )
    .await;
    let job = app.queue.drain().pop().unwrap();
    let past = tokio::time::Instant::now();
    assert!(app.copy_outputs(&job, past).await.is_err());
    assert_eq!(
        record(&app, id.as_str()).await.status,
        PredictionStatus::Starting
    );
    let later = tokio::time::Instant::now() + Duration::from_secs(30);
    app.copy_outputs(&job, later).await.unwrap();
    assert_eq!(
        record(&app, id.as_str()).await.status,
        PredictionStatus::Succeeded
    );
}

#[tokio::test]
async fn duplicate_and_backward_webhooks_are_ignored() {
    let app = app();
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    complete(&app, &id, "rep-1").await;
    let done = json!(remote("rep-1", PredictionStatus::Succeeded));
    for late in [
        done.clone(),
        json!(remote("rep-1", PredictionStatus::Processing)),
        json!(remote("rep-1", PredictionStatus::Failed)),
    ] {
        let response = crate::http::webhook(
            &app,
            webhook_event(&app, &id, &late, app.clock.system_time()).await,
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(json_of(&response)["result"], "ignored", "{late}");
    }
    let other = json!(remote("rep-other", PredictionStatus::Failed));
    let response = crate::http::webhook(
        &app,
        webhook_event(&app, &id, &other, app.clock.system_time()).await,
    )
    .await;
    assert_eq!(json_of(&response)["result"], "ignored");
    assert!(app.queue.is_empty());
    assert_eq!(
        record(&app, id.as_str()).await.status,
        PredictionStatus::Succeeded
    );
}

#[tokio::test]
async fn a_copy_that_cannot_be_stored_fails_and_its_retry_succeeds() {
    let app = app();
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    app.objects.fail_next_puts(3);
    let done = json!(remote("rep-1", PredictionStatus::Succeeded));
    crate::http::webhook(
        &app,
        webhook_event(&app, &id, &done, app.clock.system_time()).await,
    )
    .await;
    let job = app.queue.drain().pop().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    assert!(app.copy_outputs(&job, deadline).await.is_err());
    assert_eq!(
        record(&app, id.as_str()).await.status,
        PredictionStatus::Starting,
        "not succeeded without outputs"
    );
    app.copy_outputs(&job, deadline).await.unwrap();
    assert_eq!(
        record(&app, id.as_str()).await.status,
        PredictionStatus::Succeeded
    );
}

#[tokio::test]
async fn unsigned_stale_and_malformed_webhooks_are_refused() {
    let app = app();
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let done = json!(remote("rep-1", PredictionStatus::Succeeded));
    let mut unsigned = webhook_event(&app, &id, &done, app.clock.system_time()).await;
    unsigned.headers_mut().remove("webhook-signature");
    assert_eq!(crate::http::webhook(&app, unsigned).await.status(), 401);
    let stale = webhook_event(
        &app,
        &id,
        &done,
        app.clock.system_time() - Duration::from_secs(301),
    )
    .await;
    assert_eq!(crate::http::webhook(&app, stale).await.status(), 401);
    let mut tampered = webhook_event(&app, &id, &done, app.clock.system_time()).await;
    *tampered.body_mut() = Body::Text(json!(remote("rep-1", PredictionStatus::Failed)).to_string());
    assert_eq!(crate::http::webhook(&app, tampered).await.status(), 401);
    let junk = webhook_event(
        &app,
        &id,
        &json!({"not": "a prediction"}),
        app.clock.system_time(),
    )
    .await;
    assert_eq!(crate::http::webhook(&app, junk).await.status(), 400);
    assert_eq!(
        record(&app, id.as_str()).await.status,
        PredictionStatus::Starting
    );
    assert!(app.queue.is_empty());
}

#[tokio::test]
async fn unauthenticated_webhooks_never_make_the_service_call_replicate() {
    // No configured secret and Replicate cannot give one.
    let app = app_with(&[("REPLICATE_WEBHOOK_SECRET", "")]);
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let done = json!(remote("rep-1", PredictionStatus::Succeeded));
    let mut unsigned = webhook_event(&app, &id, &done, app.clock.system_time()).await;
    unsigned.headers_mut().remove("webhook-signature");
    assert_eq!(crate::http::webhook(&app, unsigned).await.status(), 401);
    let stale = webhook_event(
        &app,
        &id,
        &done,
        app.clock.system_time() - Duration::from_secs(600),
    )
    .await;
    assert_eq!(crate::http::webhook(&app, stale).await.status(), 401);
    assert_eq!(app.replicate.secret_calls(), 0, "refused before any call");
    // A well-formed delivery needs the secret: one call, then the failure is remembered.
    for _ in 0..3 {
        let signed = webhook_event(&app, &id, &done, app.clock.system_time()).await;
        assert_eq!(crate::http::webhook(&app, signed).await.status(), 500);
    }
    assert_eq!(app.replicate.secret_calls(), 1);
}

#[tokio::test]
async fn the_webhook_secret_is_fetched_from_replicate_when_not_configured() {
    let app = app_with(&[("REPLICATE_WEBHOOK_SECRET", "")]);
    app.replicate
        .set_secret(SigningSecret::parse(SECRET).unwrap());
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let processing = json!(remote("rep-1", PredictionStatus::Processing));
    let response = crate::http::webhook(
        &app,
        webhook_event(&app, &id, &processing, app.clock.system_time()).await,
    )
    .await;
    assert_eq!(json_of(&response)["result"], "applied");
}

#[tokio::test]
async fn replicates_text_and_numbers_are_stored_bounded() {
    let app = app();
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let mut failed = remote("rep-1", PredictionStatus::Failed);
    failed.error = Some("x".repeat(200_000));
    for i in 0..1000 {
        failed.metrics.other.insert(format!("metric_{i}"), json!(i));
    }
    failed.metrics.other.insert("k".repeat(500), json!(1));
    crate::http::webhook(
        &app,
        webhook_event(&app, &id, &json!(failed), app.clock.system_time()).await,
    )
    .await;
    let stored = record(&app, id.as_str()).await;
    assert_eq!(stored.status, PredictionStatus::Failed);
    assert!(stored.error.unwrap().chars().count() <= crate::domain::limits::MAX_ERROR_CHARS + 1);
    assert!(stored.metrics.unwrap().other.len() <= 8);

    // Thousands of outputs: the prediction fails clearly instead of outgrowing its record.
    let (_, body) = submitted(
        &app,
        json!({"model": "flux-schnell", "input": {"prompt": "many"}}),
    )
    .await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let mut many = remote("rep-2", PredictionStatus::Succeeded);
    many.output = (0..5000).map(|i| format!("{OUTPUT_URL}?{i}")).collect();
    let response = crate::http::webhook(
        &app,
        webhook_event(&app, &id, &json!(many), app.clock.system_time()).await,
    )
    .await;
    assert_eq!(json_of(&response)["result"], "applied");
    assert!(
        app.queue.is_empty(),
        "nothing that cannot be stored is queued"
    );
    let stored = record(&app, id.as_str()).await;
    assert_eq!(stored.status, PredictionStatus::Failed);
    assert!(stored.error.unwrap().contains("at most 16"));
    assert!(app.objects.keys().is_empty());
}
