//! Handler tests on in-memory fakes, driven by API Gateway HTTP API (v2) events as Lambda
//! receives them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};

use super::App;
use crate::config::Settings;
use crate::memory::{FakeReplicate, MemoryObjects, MemoryRecords, MemorySource};
use crate::ports::RecordStore;
use crate::record::{Claim, PredictionId, PredictionRecord};
use crate::registry::ModelRegistry;
use crate::replicate::{Prediction, PredictionStatus, ReplicateError};
use crate::webhook::WebhookSecret;

type TestApp = App<crate::memory::InMemory>;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PLACEHOLDER_ID: &str = "00000000000000000000000000000000";
const HOST: &str = "abc123.execute-api.us-east-1.amazonaws.com";
const OUTPUT_URL: &str = "https://pbxt.replicate.delivery/abc/out-0.png";

fn app_with(extra: &[(&str, &str)]) -> TestApp {
    let settings = Settings::from_lookup(|name| {
        extra
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
            .or_else(|| match name {
                "TABLE_NAME" => Some("t".into()),
                "BUCKET_NAME" => Some("b".into()),
                "REPLICATE_WEBHOOK_SECRET" => Some(SECRET.into()),
                _ => None,
            })
    })
    .unwrap();
    let source = MemorySource::default();
    source.insert(OUTPUT_URL, png());
    App::new(
        FakeReplicate::default(),
        MemoryRecords::default(),
        MemoryObjects::default(),
        source,
        ModelRegistry::shipped().unwrap(),
        settings,
    )
}

fn app() -> TestApp {
    app_with(&[])
}

fn png() -> Vec<u8> {
    let mut bytes = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    bytes.extend_from_slice(&[1; 100]);
    bytes
}

fn event(fixture: &str, id: &str) -> Request {
    let text = match fixture {
        "submit" => include_str!("../../tests/fixtures/apigw-v2-submit.json"),
        "fetch" => include_str!("../../tests/fixtures/apigw-v2-fetch.json"),
        _ => include_str!("../../tests/fixtures/apigw-v2-webhook.json"),
    };
    lambda_http::request::from_str(&text.replace(PLACEHOLDER_ID, id))
        .expect("fixture is an API Gateway v2 event")
}

fn submit_event(body: Value) -> Request {
    let mut request = event("submit", "");
    *request.body_mut() = Body::Text(body.to_string());
    request
}

fn webhook_event(id: &PredictionId, body: &Value, signed_at: SystemTime) -> Request {
    let mut request = event("webhook", id.as_str());
    let text = body.to_string();
    let timestamp = signed_at.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let signature = WebhookSecret::parse(SECRET)
        .unwrap()
        .sign("msg_1", timestamp, text.as_bytes());
    let headers = request.headers_mut();
    headers.insert("webhook-id", HeaderValue::from_static("msg_1"));
    headers.insert("webhook-timestamp", HeaderValue::from(timestamp));
    headers.insert(
        "webhook-signature",
        HeaderValue::from_str(&signature).unwrap(),
    );
    *request.body_mut() = Body::Text(text);
    request
}

fn json_of(response: &Response<Body>) -> Value {
    serde_json::from_slice(response.body().as_ref()).unwrap()
}

fn fox() -> Value {
    json!({"model": "flux-schnell", "input": {"prompt": "a red fox"}})
}

async fn submitted(app: &TestApp, body: Value) -> (u16, Value) {
    let response = app.submit(submit_event(body)).await;
    (response.status().as_u16(), json_of(&response))
}

async fn record(app: &TestApp, id: &str) -> PredictionRecord {
    app.records
        .get_prediction(&PredictionId::parse(id).unwrap())
        .await
        .unwrap()
        .expect("record exists")
}

fn remote(id: &str, status: PredictionStatus) -> Prediction {
    let output = if status == PredictionStatus::Succeeded {
        vec![OUTPUT_URL.to_owned()]
    } else {
        vec![]
    };
    let mut p = FakeReplicate::prediction(id, status, output);
    p.completed_at = Some("2025-01-01T00:00:05.000Z".into());
    p
}

#[tokio::test]
async fn submit_creates_a_prediction_with_a_webhook_back_to_the_api() {
    let app = app();
    let (status, body) = submitted(&app, fox()).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap();
    assert_eq!(body["status"], "starting");
    assert_eq!(body["urls"]["get"], format!("/v1/predictions/{id}"));
    assert_eq!(body["input"]["go_fast"], json!(true));
    let created = app.replicate.created();
    assert_eq!(created.len(), 1);
    assert_eq!(
        created[0].model.to_string(),
        "black-forest-labs/flux-schnell"
    );
    let webhook = created[0].webhook.as_ref().unwrap();
    assert_eq!(
        webhook.url,
        format!("https://{HOST}/webhooks/replicate?id={id}")
    );
    assert_eq!(
        record(&app, id).await.replicate_id.as_deref(),
        Some("rep-1")
    );
}

#[tokio::test]
async fn public_base_url_decides_the_webhook_url() {
    let app = app_with(&[("PUBLIC_BASE_URL", "https://images.example.com/api/")]);
    let (_, body) = submitted(&app, fox()).await;
    let url = app.replicate.created()[0].webhook.clone().unwrap().url;
    assert_eq!(
        url,
        format!(
            "https://images.example.com/api/webhooks/replicate?id={}",
            body["id"].as_str().unwrap()
        )
    );
}

#[tokio::test]
async fn invalid_requests_write_nothing_and_call_nobody() {
    let app = app();
    for (body, status) in [
        (
            json!({"model": "flux-schnell", "input": {"prompt": "x", "num_outputs": 5}}),
            422,
        ),
        (json!({"model": "nope", "input": {}}), 404),
        (json!({"input": {}}), 422),
    ] {
        let (got, problem) = submitted(&app, body).await;
        assert_eq!(got, status, "{problem}");
    }
    let mut malformed = event("submit", "");
    *malformed.body_mut() = Body::Text("{\"model\":".into());
    assert_eq!(app.submit(malformed).await.status(), 400);
    assert_eq!(app.records.prediction_count(), 0);
    assert!(app.replicate.created().is_empty());
}

#[tokio::test]
async fn an_identical_submit_joins_the_prediction_in_flight() {
    let app = app();
    let (_, first) = submitted(&app, fox()).await;
    let (status, second) = submitted(&app, json!({"model": "black-forest-labs/flux-schnell", "input": {"prompt": "a red fox", "go_fast": true}})).await;
    assert_eq!(status, 202);
    assert_eq!(second["id"], first["id"]);
    assert_eq!(app.replicate.created().len(), 1);
}

#[tokio::test]
async fn a_success_is_served_from_cache_within_the_window_only() {
    let app = app();
    let (_, first) = submitted(&app, fox()).await;
    let id = PredictionId::parse(first["id"].as_str().unwrap()).unwrap();
    let mut done = remote("rep-1", PredictionStatus::Succeeded);
    done.completed_at = Some(crate::record::rfc3339(app.clock.millis()));
    let response = app
        .webhook(webhook_event(&id, &json!(done), app.clock.now()))
        .await;
    assert_eq!(response.status(), 200);
    let (status, cached) = submitted(&app, fox()).await;
    assert_eq!(status, 200);
    assert_eq!(cached["cached"], json!(true));
    assert_eq!(cached["id"], first["id"]);
    assert_eq!(cached["output"][0]["content_type"], "image/png");
    app.clock.advance(Duration::from_secs(25 * 3600));
    let (status, fresh) = submitted(&app, fox()).await;
    assert_eq!(status, 202);
    assert_ne!(fresh["id"], first["id"]);
    assert_eq!(app.replicate.created().len(), 2);
}

#[tokio::test]
async fn an_expired_creation_claim_is_taken_over_and_a_live_one_is_waited_for() {
    // A submit that claimed the cache key and died before recording its prediction.
    let app = app();
    let alias = app.registry.get("flux-schnell").unwrap().clone();
    let input = alias.validate(&fox()["input"]).unwrap();
    let key = format!("cache#{}", alias.cache_key(&input).as_str());
    let now = app.clock.millis();
    let mut stale = Claim {
        key: key.clone(),
        token: "dead-submit".into(),
        prediction_id: Some(PredictionId::generate()),
        request_hash: None,
        lease_until: now + 60_000,
        expires_at: 0,
    };
    app.records.try_claim(&stale, 0).await.unwrap();
    // Lease still running: the submit waits, then asks the client to come back.
    let response = app.submit(submit_event(fox())).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(app.replicate.created().is_empty());
    // Lease over (one millisecond in the past): the next submit takes over and creates.
    stale.lease_until = now - 1;
    app.records
        .replace_claim(&stale, "dead-submit")
        .await
        .unwrap();
    let (status, body) = submitted(&app, fox()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(app.replicate.created().len(), 1);
    assert_ne!(app.records.claim(&key).unwrap().token, "dead-submit");
}

#[tokio::test]
async fn a_throttled_create_answers_429_and_frees_the_cache_key() {
    let app = app();
    app.replicate.fail_next_create(ReplicateError::Throttled {
        retry_after: Some(Duration::from_secs(3)),
        attempts: 4,
    });
    let response = app.submit(submit_event(fox())).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    assert_eq!(
        app.records.prediction_count(),
        0,
        "the unused record is removed"
    );
    let (status, _) = submitted(&app, fox()).await;
    assert_eq!(status, 202, "the key was released, so a retry creates");
}

#[tokio::test]
async fn an_ambiguous_create_keeps_its_record_for_a_late_webhook_or_gives_up_later() {
    let app = app();
    app.replicate
        .fail_next_create(ReplicateError::CreateOutcomeUnknown {
            reason: "HTTP 500".into(),
        });
    let response = app.submit(submit_event(fox())).await;
    assert_eq!(response.status(), 502);
    assert_eq!(app.records.prediction_count(), 1);
    let kept = {
        let alias = app.registry.get("flux-schnell").unwrap();
        let key = format!(
            "cache#{}",
            alias
                .cache_key(&alias.validate(&fox()["input"]).unwrap())
                .as_str()
        );
        app.records.claim(&key).unwrap().prediction_id.unwrap()
    };
    // The prediction did exist: its webhook adopts the record.
    let adopted = app
        .webhook(webhook_event(
            &kept,
            &json!(remote("rep-77", PredictionStatus::Processing)),
            app.clock.now(),
        ))
        .await;
    assert_eq!(json_of(&adopted)["result"], "applied");
    assert_eq!(
        record(&app, kept.as_str()).await.replicate_id.as_deref(),
        Some("rep-77")
    );

    // Another that never existed is given up on after ten minutes.
    let app = app_with(&[]);
    app.replicate
        .fail_next_create(ReplicateError::CreateOutcomeUnknown {
            reason: "timeout".into(),
        });
    app.submit(submit_event(fox())).await;
    let alias = app.registry.get("flux-schnell").unwrap();
    let key = format!(
        "cache#{}",
        alias
            .cache_key(&alias.validate(&fox()["input"]).unwrap())
            .as_str()
    );
    let orphan = app.records.claim(&key).unwrap().prediction_id.unwrap();
    let fetched = app.fetch(event("fetch", orphan.as_str())).await;
    assert_eq!(json_of(&fetched)["status"], "starting");
    app.clock.advance(Duration::from_secs(11 * 60));
    let fetched = app.fetch(event("fetch", orphan.as_str())).await;
    assert_eq!(json_of(&fetched)["status"], "failed");
}

#[tokio::test]
async fn a_webhook_stores_outputs_before_the_record_says_succeeded() {
    let app = app();
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let response = app
        .webhook(webhook_event(
            &id,
            &json!(remote("rep-1", PredictionStatus::Succeeded)),
            app.clock.now(),
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(json_of(&response)["result"], "applied");
    let key = format!("outputs/{id}/0.png");
    assert_eq!(app.objects.keys(), vec![key.clone()]);
    let stored = record(&app, id.as_str()).await;
    assert_eq!(stored.status, PredictionStatus::Succeeded);
    assert_eq!(stored.outputs[0].key, key);
    assert_eq!(stored.outputs[0].size, png().len() as u64);
    let view = json_of(&app.fetch(event("fetch", id.as_str())).await);
    assert_eq!(
        view["output"][0]["url"],
        format!("https://bucket.example/{key}?expires-in=3600")
    );
    assert_eq!(view["completed_at"], "2025-01-01T00:00:05.000Z");
}

#[tokio::test]
async fn duplicate_and_backward_webhooks_are_ignored() {
    let app = app();
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let done = json!(remote("rep-1", PredictionStatus::Succeeded));
    assert_eq!(
        json_of(
            &app.webhook(webhook_event(&id, &done, app.clock.now()))
                .await
        )["result"],
        "applied"
    );
    for late in [
        done.clone(),
        json!(remote("rep-1", PredictionStatus::Processing)),
        json!(remote("rep-1", PredictionStatus::Failed)),
    ] {
        let response = app
            .webhook(webhook_event(&id, &late, app.clock.now()))
            .await;
        assert_eq!(response.status(), 200);
        assert_eq!(json_of(&response)["result"], "ignored", "{late}");
    }
    let other = json!(remote("rep-other", PredictionStatus::Failed));
    assert_eq!(
        json_of(
            &app.webhook(webhook_event(&id, &other, app.clock.now()))
                .await
        )["result"],
        "ignored"
    );
    assert_eq!(
        record(&app, id.as_str()).await.status,
        PredictionStatus::Succeeded
    );
}

#[tokio::test]
async fn a_webhook_that_cannot_be_stored_answers_500_and_its_retry_succeeds() {
    let app = app();
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    app.objects.fail_next_puts(3);
    let done = json!(remote("rep-1", PredictionStatus::Succeeded));
    let response = app
        .webhook(webhook_event(&id, &done, app.clock.now()))
        .await;
    assert_eq!(response.status(), 500);
    assert_eq!(json_of(&response)["type"], "/problems/storage-failed");
    assert_eq!(
        record(&app, id.as_str()).await.status,
        PredictionStatus::Starting,
        "not succeeded without outputs"
    );
    let retried = app
        .webhook(webhook_event(&id, &done, app.clock.now()))
        .await;
    assert_eq!(retried.status(), 200);
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
    let mut unsigned = webhook_event(&id, &done, app.clock.now());
    unsigned.headers_mut().remove("webhook-signature");
    assert_eq!(app.webhook(unsigned).await.status(), 401);
    let stale = webhook_event(&id, &done, app.clock.now() - Duration::from_secs(301));
    assert_eq!(app.webhook(stale).await.status(), 401);
    let mut tampered = webhook_event(&id, &done, app.clock.now());
    *tampered.body_mut() = Body::Text(json!(remote("rep-1", PredictionStatus::Failed)).to_string());
    assert_eq!(app.webhook(tampered).await.status(), 401);
    let junk = webhook_event(&id, &json!({"not": "a prediction"}), app.clock.now());
    assert_eq!(app.webhook(junk).await.status(), 400);
    assert_eq!(
        record(&app, id.as_str()).await.status,
        PredictionStatus::Starting
    );
    assert!(app.objects.keys().is_empty());
}

#[tokio::test]
async fn fetch_recovers_a_lost_webhook_and_syncs_at_most_once_per_interval() {
    let app = app();
    let (_, body) = submitted(&app, fox()).await;
    let id = body["id"].as_str().unwrap().to_owned();
    app.replicate
        .set_prediction(remote("rep-1", PredictionStatus::Processing));
    assert_eq!(
        json_of(&app.fetch(event("fetch", &id)).await)["status"],
        "processing"
    );
    assert_eq!(
        json_of(&app.fetch(event("fetch", &id)).await)["status"],
        "processing"
    );
    assert_eq!(
        app.replicate.get_calls(),
        1,
        "the second fetch within the interval did not ask"
    );
    app.replicate
        .set_prediction(remote("rep-1", PredictionStatus::Succeeded));
    app.clock.advance(Duration::from_secs(6));
    let view = json_of(&app.fetch(event("fetch", &id)).await);
    assert_eq!(view["status"], "succeeded");
    assert_eq!(view["output"].as_array().unwrap().len(), 1);
    assert_eq!(app.replicate.get_calls(), 2);
    app.clock.advance(Duration::from_secs(60));
    app.fetch(event("fetch", &id)).await;
    assert_eq!(
        app.replicate.get_calls(),
        2,
        "a terminal prediction is never synced"
    );
}

#[tokio::test]
async fn fetch_of_an_unknown_or_malformed_id_is_404() {
    let app = app();
    let response = app
        .fetch(event("fetch", &PredictionId::generate().to_string()))
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let mut weird = event("fetch", "");
    *weird.uri_mut() = "/v1/predictions/..%2F..%2Fetc".parse().unwrap();
    assert_eq!(app.route(weird).await.status(), 404);
}

#[tokio::test]
async fn the_webhook_secret_is_fetched_from_replicate_when_not_configured() {
    let app = app_with(&[("REPLICATE_WEBHOOK_SECRET", "")]);
    app.replicate
        .set_secret(WebhookSecret::parse(SECRET).unwrap());
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let response = app
        .webhook(webhook_event(
            &id,
            &json!(remote("rep-1", PredictionStatus::Processing)),
            app.clock.now(),
        ))
        .await;
    assert_eq!(json_of(&response)["result"], "applied");
}

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
    let report = app.reconcile().await.unwrap();
    assert_eq!(report.examined, 0, "too young to reconcile");
    app.clock.advance(Duration::from_secs(61));
    // rep-2 is unknown to the fake: Replicate answers 404 for it.
    app.replicate.forget("rep-2");
    let report = app.reconcile().await.unwrap();
    assert_eq!(
        (report.examined, report.advanced, report.errors),
        (2, 2, 0),
        "{report:?}"
    );
    assert_eq!(
        record(&app, kept["id"].as_str().unwrap()).await.status,
        PredictionStatus::Succeeded
    );
    let gone = record(&app, vanished["id"].as_str().unwrap()).await;
    assert_eq!(gone.status, PredictionStatus::Failed);
    assert!(gone.error.unwrap().contains("no longer"));
    assert_eq!(app.reconcile().await.unwrap().examined, 0);
}
