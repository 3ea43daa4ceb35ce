//! Handler tests on in-memory fakes, driven by API Gateway HTTP API (v2) events as Lambda
//! receives them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderValue;
use lambda_http::{Body, Request, Response};
use serde_json::{Value, json};

use super::routes;
use crate::app::App;
use crate::app::Settings;
use crate::domain::claims::Claim;
use crate::domain::claims::IdempotencyKey;
use crate::domain::ids::PredictionId;
use crate::domain::record::PredictionRecord;
use crate::domain::registry::ModelRegistry;
use crate::domain::replicate::{Prediction, PredictionStatus, ReplicateError};
use crate::domain::signing::WebhookSecret;
use crate::domain::tenancy::{ApiKey, KeyRecord, TenantId, TenantLimits};
use crate::domain::time::Timestamp;
use crate::ports::PortSet;
use crate::ports::accounts::AccountStore;
use crate::ports::objects::ObjectStore;
use crate::ports::records::RecordStore;
use crate::testing::fakes::{
    FakeReplicate, MemoryCallbacks, MemoryObjects, MemoryQueue, MemoryRecords, MemoryResolver,
    MemorySource,
};

type TestApp = App<crate::testing::fakes::InMemory>;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const PLACEHOLDER_ID: &str = "00000000000000000000000000000000";
const HOST: &str = "abc123.execute-api.us-east-1.amazonaws.com";
const OUTPUT_URL: &str = "https://pbxt.replicate.delivery/abc/out-0.png";
/// The key the API Gateway fixtures carry: tenant `acme`'s.
const FIXTURE_KEY: &str = "igk_fixture_key_of_tenant_acme_7f3c9a1e5b2d4f6a8c1e";

fn app_with(extra: &[(&str, &str)]) -> TestApp {
    let settings = Settings::from_lookup(|name| {
        extra
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
            .or_else(|| match name {
                "TABLE_NAME" => Some("t".into()),
                "BUCKET_NAME" => Some("b".into()),
                "COPY_QUEUE_URL" => Some("q".into()),
                "CALLBACK_QUEUE_URL" => Some("c".into()),
                "CALLBACK_DEAD_LETTER_QUEUE_URL" => Some("d".into()),
                "CREATE_QUEUE_URL" => Some("n".into()),
                // Bursts are queued only where a test asks for a rate.
                "REPLICATE_CREATES_PER_MINUTE" => Some("60000".into()),
                "REPLICATE_WEBHOOK_SECRET" => Some(SECRET.into()),
                _ => None,
            })
    })
    .unwrap();
    let source = MemorySource::default();
    source.insert(OUTPUT_URL, png());
    let records = MemoryRecords::default();
    add_caller(&records, FIXTURE_KEY, "acme", 10_000, None);
    let ports = PortSet {
        replicate: FakeReplicate::default(),
        records,
        objects: MemoryObjects::default(),
        downloads: source,
        queue: MemoryQueue::default(),
        callbacks: MemoryCallbacks::default(),
        resolver: MemoryResolver::default(),
    };
    App::new(ports, ModelRegistry::shipped().unwrap(), settings)
}

fn key_record(key: &str, tenant: &str) -> KeyRecord {
    KeyRecord::new(
        &ApiKey::parse(key).unwrap(),
        TenantId::parse(tenant).unwrap(),
        Timestamp::EPOCH,
    )
}

/// Stores `key` for `tenant` and sets the tenant's limits.
fn add_caller(records: &MemoryRecords, key: &str, tenant: &str, rate: u32, budget: Option<u64>) {
    records.put_key(key_record(key, tenant));
    records.put_limits(TenantLimits::new(TenantId::parse(tenant).unwrap(), rate, budget).unwrap());
}

/// `request` sent with another API key (`None`: with none).
fn with_key(mut request: Request, key: Option<&str>) -> Request {
    let headers = request.headers_mut();
    match key {
        Some(key) => {
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {key}")).unwrap(),
            );
        }
        None => {
            headers.remove(http::header::AUTHORIZATION);
        }
    }
    request
}

/// Runs every queued copy job as the copy worker would; returns how many failed.
async fn run_copies(app: &TestApp) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut failed = 0;
    for job in app.queue.drain() {
        if app.copy_outputs(&job, deadline).await.is_err() {
            failed += 1;
        }
    }
    failed
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
        "submit" => include_str!("../../../tests/fixtures/apigw-v2-submit.json"),
        "fetch" => include_str!("../../../tests/fixtures/apigw-v2-fetch.json"),
        "usage" => include_str!("../../../tests/fixtures/apigw-v2-usage.json"),
        _ => include_str!("../../../tests/fixtures/apigw-v2-webhook.json"),
    };
    lambda_http::request::from_str(&text.replace(PLACEHOLDER_ID, id))
        .expect("fixture is an API Gateway v2 event")
}

fn submit_event(body: Value) -> Request {
    let mut request = event("submit", "");
    *request.body_mut() = Body::Text(body.to_string());
    request
}

/// A signed webhook to the URL Replicate was given for `id` (with the record's token).
async fn webhook_event(
    app: &TestApp,
    id: &PredictionId,
    body: &Value,
    signed_at: SystemTime,
) -> Request {
    let token = record(app, id.as_str()).await.webhook_token.unwrap();
    signed_webhook(&format!("id={id}&token={token}"), body, signed_at)
}

/// A signed webhook to `/webhooks/replicate?{query}`.
fn signed_webhook(query: &str, body: &Value, signed_at: SystemTime) -> Request {
    let mut request = event("webhook", "");
    *request.uri_mut() = format!("https://{HOST}/webhooks/replicate?{query}")
        .parse()
        .unwrap();
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
    let response = routes::submit::submit(app, submit_event(body)).await;
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
    p.model = "black-forest-labs/flux-schnell".into();
    p.completed_at = Some("2025-01-01T00:00:05.000Z".into());
    p
}

async fn fetched(app: &TestApp, id: &str) -> Value {
    json_of(&routes::fetch::fetch(app, event("fetch", id)).await)
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
    let stored = record(&app, id).await;
    let token = stored.webhook_token.clone().unwrap();
    assert_eq!(token.len(), 32);
    let webhook = created[0].webhook.as_ref().unwrap();
    assert_eq!(
        webhook.url,
        format!("https://{HOST}/webhooks/replicate?id={id}&token={token}")
    );
    assert_eq!(
        webhook.events,
        [crate::domain::replicate::WebhookEvent::Completed],
        "no `start` deliveries: they cost a request, an invocation and a write each"
    );
    assert_eq!(stored.replicate_id.as_deref(), Some("rep-1"));
}

#[tokio::test]
async fn the_webhook_url_comes_from_the_api_domain_never_from_client_headers() {
    let app = app();
    let mut request = submit_event(fox());
    request
        .headers_mut()
        .insert("host", HeaderValue::from_static("attacker.example"));
    request
        .headers_mut()
        .insert("x-forwarded-proto", HeaderValue::from_static("http"));
    routes::submit::submit(&app, request).await;
    let url = app.replicate.created()[0].webhook.clone().unwrap().url;
    assert!(
        url.starts_with(&format!("https://{HOST}/webhooks/replicate?id=")),
        "{url}"
    );

    // A custom domain mapped under a base path keeps it.
    let app = app_with(&[]);
    let text = include_str!("../../../tests/fixtures/apigw-v2-submit.json")
        .replace(HOST, "images.example.com")
        .replace(
            "\"path\": \"/v1/predictions\"",
            "\"path\": \"/api/v1/predictions\"",
        )
        .replace(
            "\"rawPath\": \"/v1/predictions\"",
            "\"rawPath\": \"/api/v1/predictions\"",
        );
    let mut request = lambda_http::request::from_str(&text).unwrap();
    *request.body_mut() = Body::Text(fox().to_string());
    routes::submit::submit(&app, request).await;
    let url = app.replicate.created()[0].webhook.clone().unwrap().url;
    assert!(
        url.starts_with("https://images.example.com/api/webhooks/replicate?id="),
        "{url}"
    );

    // Without API Gateway's context (and no PUBLIC_BASE_URL) nothing is created.
    let app = app_with(&[]);
    let mut bare = http::Request::builder()
        .method("POST")
        .uri("http://attacker.example/v1/predictions")
        .body(Body::Text(fox().to_string()))
        .unwrap();
    bare.headers_mut()
        .insert("host", HeaderValue::from_static("attacker.example"));
    let bare = with_key(bare, Some(FIXTURE_KEY));
    assert_eq!(routes::submit::submit(&app, bare).await.status(), 500);
    assert!(app.replicate.created().is_empty());
}

#[tokio::test]
async fn public_base_url_decides_the_webhook_url() {
    let app = app_with(&[("PUBLIC_BASE_URL", "https://images.example.com/api/")]);
    let (_, body) = submitted(&app, fox()).await;
    let url = app.replicate.created()[0].webhook.clone().unwrap().url;
    let id = body["id"].as_str().unwrap();
    assert!(
        url.starts_with(&format!(
            "https://images.example.com/api/webhooks/replicate?id={id}&token="
        )),
        "{url}"
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
    assert_eq!(routes::submit::submit(&app, malformed).await.status(), 400);
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

/// Completes `id` (Replicate id `rid`) through a webhook and the copy worker.
async fn complete(app: &TestApp, id: &PredictionId, rid: &str) {
    let mut done = remote(rid, PredictionStatus::Succeeded);
    done.completed_at = Some(app.clock.now().rfc3339());
    let response = super::webhook(
        app,
        webhook_event(app, id, &json!(done), app.clock.system_time()).await,
    )
    .await;
    assert_eq!(json_of(&response)["result"], "queued");
    assert_eq!(run_copies(app).await, 0);
}

#[tokio::test]
async fn a_success_is_served_from_cache_within_the_window_only() {
    let app = app();
    let (_, first) = submitted(&app, fox()).await;
    let id = PredictionId::parse(first["id"].as_str().unwrap()).unwrap();
    complete(&app, &id, "rep-1").await;
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
async fn a_cache_hit_answers_the_alias_that_was_asked_for() {
    let app = app();
    let sdxl = json!({"model": "sdxl", "input": {"prompt": "a cat", "image": "https://example.com/cat.png"}});
    let (_, first) = submitted(&app, sdxl.clone()).await;
    let id = PredictionId::parse(first["id"].as_str().unwrap()).unwrap();
    let mut done = remote("rep-1", PredictionStatus::Succeeded);
    done.model = "stability-ai/sdxl".into();
    done.version = record(&app, id.as_str()).await.version;
    done.completed_at = Some(app.clock.now().rfc3339());
    super::webhook(
        &app,
        webhook_event(&app, &id, &json!(done), app.clock.system_time()).await,
    )
    .await;
    run_copies(&app).await;
    let (status, cached) = submitted(&app, sdxl).await;
    assert_eq!((status, cached["model"].as_str()), (200, Some("sdxl")));
    let img2img = json!({"model": "sdxl-img2img", "input": {"prompt": "a cat", "image": "https://example.com/cat.png"}});
    let (status, other) = submitted(&app, img2img).await;
    assert_eq!(status, 202, "another alias is another request: {other}");
    assert_eq!(other["model"], "sdxl-img2img");
}

#[tokio::test]
async fn idempotent_replays_answer_as_the_original_did() {
    let app = app();
    let keyed = |body: Value, key: &'static str| {
        let mut request = submit_event(body);
        request
            .headers_mut()
            .insert("idempotency-key", HeaderValue::from_static(key));
        request
    };
    let first = routes::submit::submit(&app, keyed(fox(), "k1")).await;
    assert_eq!(first.status(), 202);
    let replay = routes::submit::submit(&app, keyed(fox(), "k1")).await;
    assert_eq!(replay.status(), 202, "a new prediction replays as 202");
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(json_of(&replay)["id"], json_of(&first)["id"]);
    let id = PredictionId::parse(json_of(&first)["id"].as_str().unwrap()).unwrap();
    complete(&app, &id, "rep-1").await;
    let cached = routes::submit::submit(&app, keyed(fox(), "k2")).await;
    assert_eq!(cached.status(), 200);
    let replay = routes::submit::submit(&app, keyed(fox(), "k2")).await;
    assert_eq!(replay.status(), 200, "a cached answer replays as 200");
    assert_eq!(json_of(&replay)["cached"], json!(true));
    assert_eq!(app.replicate.created().len(), 1);
}

#[tokio::test]
async fn an_expired_creation_claim_is_taken_over_and_a_live_one_is_waited_for() {
    // A submit that claimed the cache key and died before recording its prediction.
    let app = app();
    let alias = app.registry.get("flux-schnell").unwrap().clone();
    let input = alias.validate(&fox()["input"]).unwrap();
    let key = format!("cache#{}", alias.cache_key("acme", &input).as_str());
    let now = app.clock.now();
    let mut stale = Claim {
        key: key.clone(),
        token: "dead-submit".into(),
        prediction_id: Some(PredictionId::generate()),
        request_hash: None,
        lease_until: now.plus(Duration::from_millis(60_000)),
        expires_at: now.plus(Duration::from_secs(3600)).unix_seconds(),
        from_cache: false,
    };
    app.records.try_claim(&stale).await.unwrap();
    // Lease still running: the submit waits, then asks the client to come back.
    let response = routes::submit::submit(&app, submit_event(fox())).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    assert!(app.replicate.created().is_empty());
    // Lease over (one millisecond in the past): the next submit takes over and creates.
    stale.lease_until = now.minus(Duration::from_millis(1));
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
async fn a_running_prediction_is_joined_whatever_its_claims_lease() {
    // The create's answer was lost; a webhook tied the record later. Long after every
    // lease of the claim, the prediction is still running (a cold boot): join it.
    let app = app();
    app.replicate.lose_next_create_answer();
    let (_, first) = submitted(&app, fox()).await;
    let id = PredictionId::parse(first["id"].as_str().unwrap()).unwrap();
    let start = json!(remote("rep-1", PredictionStatus::Starting));
    super::webhook(
        &app,
        webhook_event(&app, &id, &start, app.clock.system_time()).await,
    )
    .await;
    app.clock.advance(Duration::from_secs(11 * 60));
    let (status, again) = submitted(&app, fox()).await;
    assert_eq!((status, again["id"].clone()), (202, first["id"].clone()));
    assert_eq!(app.replicate.created().len(), 1, "never a second create");

    // A submit that died mid-create: its record exists, unconfirmed, its lease long over.
    let app = app_with(&[]);
    app.replicate
        .fail_next_create(ReplicateError::CreateOutcomeUnknown {
            reason: "crash".into(),
        });
    let (_, first) = submitted(&app, fox()).await;
    let claim = {
        let alias = app.registry.get("flux-schnell").unwrap();
        let input = alias.validate(&fox()["input"]).unwrap();
        app.records
            .claim(&format!(
                "cache#{}",
                alias.cache_key("acme", &input).as_str()
            ))
            .unwrap()
    };
    let mut dead = claim.clone();
    dead.lease_until = app.clock.now().minus(Duration::from_millis(1));
    app.records.put_claim(dead);
    let (status, again) = submitted(&app, fox()).await;
    assert_eq!((status, again["id"].clone()), (202, first["id"].clone()));
    assert_eq!(app.replicate.created().len(), 0, "nothing created twice");
}

#[tokio::test]
async fn an_idempotency_key_whose_holder_died_is_taken_over_only_if_nothing_was_stored() {
    let app = app();
    let keyed = || {
        let mut request = submit_event(fox());
        request
            .headers_mut()
            .insert("idempotency-key", HeaderValue::from_static("k-dead"));
        request
    };
    let hash = super::body::parse_submit_body(fox().to_string().as_bytes())
        .unwrap()
        .hash;
    let key = crate::app::submit::claims::idempotency_claim_key(
        &TenantId::parse("acme").unwrap(),
        &IdempotencyKey::parse(b"k-dead").unwrap(),
    );
    let now = app.clock.now();
    let holder = Claim {
        key: key.clone(),
        token: "dead".into(),
        prediction_id: Some(PredictionId::generate()),
        request_hash: Some(hash),
        lease_until: now.plus(Duration::from_millis(30_000)),
        expires_at: now.plus(Duration::from_secs(86_400)).unix_seconds(),
        from_cache: false,
    };
    app.records.put_claim(holder.clone());
    // Its lease runs: the request is in progress.
    assert_eq!(routes::submit::submit(&app, keyed()).await.status(), 409);
    // The lease ended and its prediction was never stored: nothing was created, take over.
    app.records.put_claim(Claim {
        lease_until: now.minus(Duration::from_millis(1)),
        ..holder.clone()
    });
    let taken = routes::submit::submit(&app, keyed()).await;
    assert_eq!(taken.status(), 202);
    assert_eq!(app.replicate.created().len(), 1);
    // The same, but its prediction was stored: it is the answer, never a new create.
    let stored_id = PredictionId::parse(json_of(&taken)["id"].as_str().unwrap()).unwrap();
    app.records.put_claim(Claim {
        prediction_id: Some(stored_id.clone()),
        lease_until: now.minus(Duration::from_millis(1)),
        ..holder
    });
    let replay = routes::submit::submit(&app, keyed()).await;
    assert_eq!(replay.status(), 202);
    assert_eq!(json_of(&replay)["id"], json!(stored_id.as_str()));
    assert_eq!(app.replicate.created().len(), 1);
}

#[tokio::test]
async fn a_refused_create_ends_its_record_failed_and_frees_the_cache_key() {
    let app = app();
    app.replicate.fail_next_create(ReplicateError::Unavailable {
        status: 503,
        retry_after: Some(Duration::from_secs(3)),
        attempts: 4,
    });
    let response = routes::submit::submit(&app, submit_event(fox())).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "3");
    // Anyone who joined it holds an id that still answers, with the reason.
    let failed = app.records.records();
    assert_eq!(failed.len(), 1, "the record is kept, never deleted");
    assert_eq!(failed[0].status, PredictionStatus::Failed);
    assert!(
        failed[0]
            .error
            .as_deref()
            .unwrap()
            .contains("could not be reached")
    );
    let view = fetched(&app, failed[0].id.as_str()).await;
    assert_eq!(view["status"], "failed", "{view}");
    let (status, retried) = submitted(&app, fox()).await;
    assert_eq!(status, 202, "the key was released, so a retry creates");
    assert_ne!(retried["id"].as_str(), Some(failed[0].id.as_str()));
}

#[tokio::test]
async fn a_create_throttled_past_the_retry_budget_waits_in_the_create_queue() {
    let app = app();
    app.replicate.fail_next_create(ReplicateError::Throttled {
        retry_after: Some(Duration::from_secs(3)),
        attempts: 4,
    });
    let (status, queued) = submitted(&app, fox()).await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["status"], "queued");
    let jobs = app.queue.drain_creates();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].1,
        Duration::from_secs(3),
        "invisible for Replicate's Retry-After"
    );
    // Not before its time; then created, and going on like any other.
    let early = app.drain_create(&jobs[0].0).await.unwrap();
    assert!(
        matches!(early, crate::app::CreateDisposition::RetryAfter(w) if w > Duration::from_secs(2) && w <= Duration::from_secs(3)),
        "{early:?}"
    );
    app.clock.advance(Duration::from_secs(3));
    assert_eq!(
        app.drain_create(&jobs[0].0).await.unwrap(),
        crate::app::CreateDisposition::Done
    );
    assert_eq!(app.replicate.created().len(), 1);
    let view = fetched(&app, queued["id"].as_str().unwrap()).await;
    assert_eq!(view["status"], "starting", "{view}");
    assert_eq!(view["queue"], Value::Null);
    // A second run of the same job (SQS delivers at least once) creates nothing more.
    assert_eq!(
        app.drain_create(&jobs[0].0).await.unwrap(),
        crate::app::CreateDisposition::Done
    );
    assert_eq!(app.replicate.created().len(), 1);
}

#[tokio::test]
async fn over_the_create_rate_submits_queue_in_order_and_past_the_backlog_are_refused() {
    // Two a minute, at most two minutes of backlog.
    let app = app_with(&[
        ("REPLICATE_CREATES_PER_MINUTE", "2"),
        ("MAX_QUEUE_SECONDS", "120"),
    ]);
    let mut views = Vec::new();
    for n in 0..5 {
        let (status, view) = submitted(
            &app,
            json!({"model": "flux-schnell", "input": {"prompt": format!("burst {n}")}}),
        )
        .await;
        assert_eq!(status, 202, "{view}");
        views.push(view);
    }
    assert_eq!(views[0]["status"], "starting", "the first goes at once");
    for (n, view) in views.iter().enumerate().skip(1) {
        assert_eq!(view["status"], "queued", "{view}");
        assert_eq!(view["queue"]["position"], json!(n), "{view}");
    }
    let response = routes::submit::submit(
        &app,
        submit_event(json!({"model": "flux-schnell", "input": {"prompt": "one too many"}})),
    )
    .await;
    assert_eq!(response.status(), 503);
    assert_eq!(json_of(&response)["type"], "/problems/queue-full");
    assert_eq!(
        response.headers()["retry-after"],
        "30",
        "until the backlog is two minutes"
    );
    assert_eq!(app.replicate.created().len(), 1);
    // Cancel the second queued one: it ends at once, never created.
    let canceled = routes::cancel::cancel(
        &app,
        cancel_event(views[2]["id"].as_str().unwrap(), Some(FIXTURE_KEY)),
    )
    .await;
    assert_eq!(json_of(&canceled)["status"], "canceled");
    // The drainer, as time passes: each in its slot, the canceled one skipped.
    let jobs = app.queue.drain_creates();
    assert_eq!(jobs.len(), 4);
    for (n, (_, delay)) in jobs.iter().enumerate() {
        // As SQS takes it: whole seconds, rounded up.
        let seconds = delay.as_millis().div_ceil(1000);
        assert_eq!(seconds, 30 * (n as u128 + 1), "job {n}");
    }
    app.clock.advance(Duration::from_secs(120));
    for (job, _) in &jobs {
        assert_eq!(
            app.drain_create(job).await.unwrap(),
            crate::app::CreateDisposition::Done
        );
    }
    let prompts: Vec<String> = app
        .replicate
        .created()
        .iter()
        .map(|p| p.input["prompt"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(prompts, ["burst 0", "burst 1", "burst 3", "burst 4"]);
}

#[tokio::test]
async fn an_ambiguous_create_is_never_repeated_and_is_found_in_replicates_list() {
    let app = app();
    app.replicate.lose_next_create_answer();
    let mut request = submit_event(fox());
    request
        .headers_mut()
        .insert("idempotency-key", HeaderValue::from_static("order-1"));
    let response = routes::submit::submit(&app, request).await;
    assert_eq!(response.status(), 202, "the kept record is the answer");
    let id = json_of(&response)["id"].as_str().unwrap().to_owned();
    assert_eq!(app.replicate.created().len(), 1);
    // The same key, or the same body long after the create lease, joins the kept record.
    let mut again = submit_event(fox());
    again
        .headers_mut()
        .insert("idempotency-key", HeaderValue::from_static("order-1"));
    assert_eq!(
        json_of(&routes::submit::submit(&app, again).await)["id"],
        json!(id)
    );
    app.clock.advance(Duration::from_secs(45));
    let (status, joined) = submitted(&app, fox()).await;
    assert_eq!((status, joined["id"].as_str()), (202, Some(id.as_str())));
    assert_eq!(app.replicate.created().len(), 1, "never a second create");
    // Not looked for yet: too early to be sure the list shows it.
    fetched(&app, &id).await;
    assert_eq!(app.replicate.list_calls(), 0);
    // Later, a fetch finds the prediction in Replicate's list (same model and input).
    app.clock.advance(Duration::from_secs(300));
    let view = fetched(&app, &id).await;
    assert_eq!(view["status"], "starting");
    assert_eq!(
        record(&app, &id).await.replicate_id.as_deref(),
        Some("rep-1")
    );
    assert!(app.replicate.list_calls() >= 1);
    assert_eq!(app.replicate.created().len(), 1);
}

#[tokio::test]
async fn an_ambiguous_create_that_created_nothing_ends_failed_and_frees_the_key() {
    let app = app();
    app.replicate
        .fail_next_create(ReplicateError::CreateOutcomeUnknown {
            reason: "timeout".into(),
        });
    let (status, body) = submitted(&app, fox()).await;
    assert_eq!(status, 202);
    let id = body["id"].as_str().unwrap().to_owned();
    // Too early to trust an empty list: still starting.
    assert_eq!(fetched(&app, &id).await["status"], "starting");
    app.clock.advance(Duration::from_secs(301));
    let view = fetched(&app, &id).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert!(view["error"].as_str().unwrap().contains("not created"));
    let (status, fresh) = submitted(&app, fox()).await;
    assert_eq!(status, 202);
    assert_ne!(fresh["id"], json!(id));
    assert_eq!(app.replicate.created().len(), 1);
}

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
    let response = super::webhook(
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
    let response = super::webhook(
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
        let response = super::webhook(
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
    let response = super::webhook(
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
    let response = super::webhook(
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
    let response = super::webhook(
        &app,
        webhook_event(&app, &id, &done, app.clock.system_time()).await,
    )
    .await;
    assert_eq!(response.status(), 500, "Replicate will deliver it again");
    super::webhook(
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
        let response = super::webhook(
            &app,
            webhook_event(&app, &id, &late, app.clock.system_time()).await,
        )
        .await;
        assert_eq!(response.status(), 200);
        assert_eq!(json_of(&response)["result"], "ignored", "{late}");
    }
    let other = json!(remote("rep-other", PredictionStatus::Failed));
    let response = super::webhook(
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
    super::webhook(
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
    assert_eq!(super::webhook(&app, unsigned).await.status(), 401);
    let stale = webhook_event(
        &app,
        &id,
        &done,
        app.clock.system_time() - Duration::from_secs(301),
    )
    .await;
    assert_eq!(super::webhook(&app, stale).await.status(), 401);
    let mut tampered = webhook_event(&app, &id, &done, app.clock.system_time()).await;
    *tampered.body_mut() = Body::Text(json!(remote("rep-1", PredictionStatus::Failed)).to_string());
    assert_eq!(super::webhook(&app, tampered).await.status(), 401);
    let junk = webhook_event(
        &app,
        &id,
        &json!({"not": "a prediction"}),
        app.clock.system_time(),
    )
    .await;
    assert_eq!(super::webhook(&app, junk).await.status(), 400);
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
    assert_eq!(super::webhook(&app, unsigned).await.status(), 401);
    let stale = webhook_event(
        &app,
        &id,
        &done,
        app.clock.system_time() - Duration::from_secs(600),
    )
    .await;
    assert_eq!(super::webhook(&app, stale).await.status(), 401);
    assert_eq!(app.replicate.secret_calls(), 0, "refused before any call");
    // A well-formed delivery needs the secret: one call, then the failure is remembered.
    for _ in 0..3 {
        let signed = webhook_event(&app, &id, &done, app.clock.system_time()).await;
        assert_eq!(super::webhook(&app, signed).await.status(), 500);
    }
    assert_eq!(app.replicate.secret_calls(), 1);
}

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
    assert_eq!(super::route(&app, weird).await.status(), 404);
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
async fn the_webhook_secret_is_fetched_from_replicate_when_not_configured() {
    let app = app_with(&[("REPLICATE_WEBHOOK_SECRET", "")]);
    app.replicate
        .set_secret(WebhookSecret::parse(SECRET).unwrap());
    let (_, body) = submitted(&app, fox()).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let processing = json!(remote("rep-1", PredictionStatus::Processing));
    let response = super::webhook(
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
    super::webhook(
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
    let response = super::webhook(
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

#[tokio::test]
async fn a_large_inline_image_is_kept_in_the_bucket_and_the_record_holds_a_reference() {
    use base64::Engine as _;
    let app = app();
    let bytes: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    );
    let (status, body) = submitted(
        &app,
        json!({"model": "sd-inpainting", "input": {"prompt": "a cat", "image": data_url, "mask": data_url}}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let reference = body["input"]["image"].as_str().unwrap();
    assert!(reference.starts_with("inline://"), "{reference}");
    assert!(body.to_string().len() < 4096, "the answer holds no image");
    let stored = record(&app, body["id"].as_str().unwrap()).await;
    assert_eq!(stored.input["image"], json!(reference));
    assert_eq!(app.objects.keys().len(), 1, "one object for the same bytes");
    let sent = &app.replicate.created()[0].input;
    let url = sent["image"].as_str().unwrap();
    assert!(url.starts_with("https://bucket.example/inputs/"), "{url}");
    assert!(crate::app::inputs::input_matches(&stored.input, sent));
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

const BETA_KEY: &str = "igk_second_tenant_beta_key_2b4d6f8a0c1e3g5h";

fn fetch_as(id: &str, key: Option<&str>) -> Request {
    with_key(event("fetch", id), key)
}

async fn status_and_body(response: Response<Body>) -> (u16, Value) {
    (response.status().as_u16(), json_of(&response))
}

#[tokio::test]
async fn every_route_refuses_missing_malformed_unknown_and_revoked_keys() {
    let app = app();
    let revoked = "igk_revoked_key_of_tenant_acme_000111222333";
    app.records.put_key(key_record(revoked, "acme"));
    let (_, mine) = submitted(&app, fox()).await;
    let id = mine["id"].as_str().unwrap().to_owned();
    let created = app.replicate.created().len();

    // The revoked key works until it is revoked, and stops within the cache's lifetime.
    let usage = |key| with_key(event("usage", ""), key);
    assert_eq!(
        routes::usage::usage(&app, usage(Some(revoked)))
            .await
            .status(),
        200
    );
    use crate::ports::accounts::AccountStore;
    let revoked_id = ApiKey::parse(revoked).unwrap().hash().key_id();
    assert!(
        app.records
            .revoke_key(&revoked_id, app.clock.now())
            .await
            .unwrap()
    );
    app.clock
        .advance(crate::app::KEY_CACHE_TTL + Duration::from_secs(1));

    let bad_keys: [(Option<&str>, &str); 5] = [
        (None, "needs an API key"),
        (Some("short"), "malformed"),
        (
            Some("igk_well_formed_but_unknown_key_123456789"),
            "not valid",
        ),
        (Some("igk_well formed?"), "malformed"),
        (Some(revoked), "revoked"),
    ];
    for (key, says) in bad_keys {
        let responses = [
            routes::submit::submit(&app, with_key(submit_event(fox()), key)).await,
            routes::fetch::fetch(&app, fetch_as(&id, key)).await,
            routes::usage::usage(&app, usage(key)).await,
            super::route(&app, with_key(submit_event(fox()), key)).await,
        ];
        for response in responses {
            assert_eq!(response.status(), 401, "{key:?}");
            assert_eq!(
                response.headers()["www-authenticate"],
                "Bearer realm=\"api\""
            );
            let body = json_of(&response);
            assert_eq!(body["type"], "/problems/unauthorized");
            assert!(body["detail"].as_str().unwrap().contains(says), "{body}");
        }
    }
    assert_eq!(
        app.replicate.created().len(),
        created,
        "nothing was created"
    );
    // The webhook is authenticated by its signature, never by a key.
    let response = super::webhook(&app, with_key(event("webhook", ""), None)).await;
    assert_eq!(json_of(&response)["type"], "/problems/invalid-signature");
    assert!(!response.headers().contains_key("www-authenticate"));
}

#[tokio::test]
async fn tenants_cannot_read_replay_or_reuse_each_others_work() {
    let app = app();
    add_caller(&app.records, BETA_KEY, "beta", 10_000, None);
    let keyed = |key: Option<&str>, idem: &'static str, body: Value| {
        let mut request = with_key(submit_event(body), key);
        request
            .headers_mut()
            .insert("idempotency-key", HeaderValue::from_static(idem));
        request
    };
    let acme = with_key(submit_event(fox()), Some(FIXTURE_KEY));
    let (status, acme) = status_and_body(routes::submit::submit(&app, acme).await).await;
    assert_eq!(status, 202, "{acme}");
    let id = acme["id"].as_str().unwrap().to_owned();

    // Another tenant's prediction is a 404 exactly like an id that does not exist.
    let (status, theirs) =
        status_and_body(routes::fetch::fetch(&app, fetch_as(&id, Some(BETA_KEY))).await).await;
    let (_, unknown) = status_and_body(
        routes::fetch::fetch(
            &app,
            fetch_as(PredictionId::generate().as_str(), Some(BETA_KEY)),
        )
        .await,
    )
    .await;
    assert_eq!((status, &theirs), (404, &unknown));

    // The same input is not joined, and once it succeeded it is not served from the cache.
    let (status, beta) = status_and_body(
        routes::submit::submit(&app, with_key(submit_event(fox()), Some(BETA_KEY))).await,
    )
    .await;
    assert_eq!(status, 202);
    assert_ne!(beta["id"], acme["id"]);
    let rid = record(&app, &id).await.replicate_id.unwrap();
    complete(&app, &PredictionId::parse(&id).unwrap(), &rid).await;
    let (status, again) = status_and_body(
        routes::submit::submit(
            &app,
            with_key(
                submit_event(json!({"model": "flux-schnell", "input": {"prompt": "a red fox"}})),
                Some(BETA_KEY),
            ),
        )
        .await,
    )
    .await;
    assert_eq!(status, 202, "never acme's cached result: {again}");
    assert_eq!(again["id"], beta["id"], "beta's own prediction in flight");

    // The same Idempotency-Key from two tenants: two unrelated requests, even with other
    // bodies (no 422), each replaying its own answer.
    let other = json!({"model": "flux-schnell", "input": {"prompt": "a blue whale"}});
    let (status, first_beta) = status_and_body(
        routes::submit::submit(&app, keyed(Some(BETA_KEY), "order-1", other.clone())).await,
    )
    .await;
    assert_eq!(status, 202, "{first_beta}");
    let (_, replay_beta) = status_and_body(
        routes::submit::submit(&app, keyed(Some(BETA_KEY), "order-1", other)).await,
    )
    .await;
    let (_, replay_acme) = status_and_body(
        routes::submit::submit(&app, keyed(Some(FIXTURE_KEY), "order-1", fox())).await,
    )
    .await;
    assert_eq!(replay_beta["id"], first_beta["id"]);
    assert_ne!(replay_acme["id"], first_beta["id"]);
    assert_eq!(replay_acme["input"]["prompt"], "a red fox");
}

#[tokio::test]
async fn the_rate_limit_holds_per_tenant_per_minute() {
    let app = app();
    let slow = "igk_rate_limited_tenant_key_5a6b7c8d9e0f";
    add_caller(&app.records, slow, "slow", 3, None);
    // Start at the beginning of a minute so the burst stays in one window.
    let (_, next_minute) = app.clock.now().period(Duration::from_secs(60));
    app.clock.advance(next_minute.since(app.clock.now()));
    let burst = (0..10).map(|i| {
        let body = json!({"model": "flux-schnell", "input": {"prompt": format!("burst {i}")}});
        routes::submit::submit(&app, with_key(submit_event(body), Some(slow)))
    });
    let responses = futures_util::future::join_all(burst).await;
    let admitted = responses.iter().filter(|r| r.status() == 202).count();
    assert_eq!(admitted, 3);
    let refused = responses.iter().find(|r| r.status() == 429).unwrap();
    let wait: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((59..=60).contains(&wait), "{wait}");
    assert_eq!(json_of(refused)["type"], "/problems/rate-limited");
    assert_eq!(app.replicate.created().len(), 3);
    // Another tenant is not affected; the next minute admits again.
    assert_eq!(submitted(&app, fox()).await.0, 202);
    app.clock.advance(Duration::from_secs(60));
    let body = json!({"model": "flux-schnell", "input": {"prompt": "next minute"}});
    assert_eq!(
        routes::submit::submit(&app, with_key(submit_event(body), Some(slow)))
            .await
            .status(),
        202
    );
}

fn prompt(text: &str) -> Value {
    json!({"model": "flux-schnell", "input": {"prompt": text}})
}

#[tokio::test]
async fn the_budget_refuses_before_creating_and_settles_to_the_actual_cost() {
    let app = app();
    let capped = "igk_budgeted_tenant_key_9f8e7d6c5b4a3210";
    // $0.01: three flux-schnell images at $0.003.
    add_caller(&app.records, capped, "capped", 1000, Some(10_000));
    let submit =
        |body: Value| routes::submit::submit(&app, with_key(submit_event(body), Some(capped)));
    let mut ids = Vec::new();
    for i in 0..3 {
        let (status, body) = status_and_body(submit(prompt(&format!("p{i}"))).await).await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["cost"], json!({"estimated_usd": 0.003, "usd": null}));
        ids.push(PredictionId::parse(body["id"].as_str().unwrap()).unwrap());
    }
    let (status, refused) = status_and_body(submit(prompt("p3")).await).await;
    assert_eq!(
        (status, refused["type"].as_str()),
        (402, Some("/problems/budget-exhausted"))
    );
    assert_eq!(app.replicate.created().len(), 3, "refused before creating");

    // One succeeds (billed), one fails as an official model (not billed): room again.
    complete(&app, &ids[0], "rep-1").await;
    let fetched_done =
        json_of(&routes::fetch::fetch(&app, fetch_as(ids[0].as_str(), Some(capped))).await);
    assert_eq!(
        fetched_done["cost"],
        json!({"estimated_usd": 0.003, "usd": 0.003})
    );
    let failed = remote("rep-2", PredictionStatus::Failed);
    super::webhook(
        &app,
        webhook_event(&app, &ids[1], &json!(failed), app.clock.system_time()).await,
    )
    .await;
    assert_eq!(record(&app, ids[1].as_str()).await.cost, Some(0));
    assert_eq!(submit(prompt("p3")).await.status(), 202);
    assert_eq!(submit(prompt("p4")).await.status(), 402);

    // A cached answer costs nothing and still works with the budget spent.
    let (status, cached) = status_and_body(submit(prompt("p0")).await).await;
    assert_eq!(status, 200);
    assert_eq!(cached["cost"], json!({"estimated_usd": 0.0, "usd": 0.0}));

    let usage =
        json_of(&routes::usage::usage(&app, with_key(event("usage", ""), Some(capped))).await);
    assert_eq!(usage["tenant"], "capped");
    assert_eq!(
        usage["month"],
        crate::domain::cost::month_of(app.clock.now())
    );
    assert_eq!(usage["predictions"], 4);
    // p0 stored + p1 none + p2 and p3 requested while running.
    assert_eq!(usage["images"], 3);
    // p0 actual + p1 nothing + p2 and p3 estimated while running.
    assert_eq!(usage["cost_usd"], 0.009);
    assert_eq!(usage["budget_usd"], 0.01);
}

#[tokio::test]
async fn per_second_models_bill_predict_time_aborted_and_refused_creates_cost_nothing() {
    let app = app();
    let sdxl = json!({"model": "sdxl", "input": {"prompt": "a cat", "num_outputs": 2}});
    let (_, body) = submitted(&app, sdxl).await;
    // L40S at $0.000975/s, 6 s per output, 2 outputs.
    assert_eq!(body["cost"]["estimated_usd"], 0.0117);
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let mut failed = remote("rep-1", PredictionStatus::Failed);
    failed.model = "stability-ai/sdxl".into();
    failed.version = record(&app, id.as_str()).await.version;
    failed.metrics.predict_time = Some(2.0);
    super::webhook(
        &app,
        webhook_event(&app, &id, &json!(failed), app.clock.system_time()).await,
    )
    .await;
    assert_eq!(
        record(&app, id.as_str()).await.cost,
        Some(1_950),
        "failures bill their time"
    );

    let (_, body) = submitted(&app, prompt("never started")).await;
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    let mut aborted = remote("rep-2", PredictionStatus::Aborted);
    aborted.metrics.predict_time = Some(3.0);
    super::webhook(
        &app,
        webhook_event(&app, &id, &json!(aborted), app.clock.system_time()).await,
    )
    .await;
    assert_eq!(record(&app, id.as_str()).await.cost, Some(0));

    app.replicate.fail_next_create(ReplicateError::Rejected {
        status: 422,
        problem: Default::default(),
    });
    assert_eq!(submitted(&app, prompt("refused")).await.0, 502);
    let usage = json_of(&routes::usage::usage(&app, event("usage", "")).await);
    assert_eq!(
        usage["predictions"], 2,
        "a refused create is not a prediction"
    );
    assert_eq!(usage["cost_usd"], 0.00195);
}

#[tokio::test]
async fn an_insert_whose_answer_was_lost_goes_on_and_is_reserved_once() {
    let app = app();
    app.records.lose_next_insert_answers(1);
    let (status, body) = submitted(&app, prompt("lost insert answer")).await;
    assert_eq!(status, 202, "the record was stored: {body}");
    assert_eq!(app.replicate.created().len(), 1);
    let id = PredictionId::parse(body["id"].as_str().unwrap()).unwrap();
    complete(&app, &id, "rep-1").await;
    let usage = json_of(&routes::usage::usage(&app, event("usage", "")).await);
    assert_eq!(
        (usage["predictions"].as_u64(), usage["cost_usd"].as_f64()),
        (Some(1), Some(0.003)),
        "reserved and settled once: {usage}"
    );
}

#[tokio::test]
async fn all_keys_of_a_tenant_share_its_limits_and_a_change_applies_within_the_cache_ttl() {
    let app = app();
    let first = "igk_first_key_of_a_shared_tenant_00112233";
    let second = "igk_second_key_of_a_shared_tenant_44556677";
    add_caller(&app.records, first, "shared", 2, None);
    app.records.put_key(key_record(second, "shared"));
    let (_, next_minute) = app.clock.now().period(Duration::from_secs(60));
    app.clock.advance(next_minute.since(app.clock.now()));
    let submit = |key: &'static str, text: &str| {
        routes::submit::submit(&app, with_key(submit_event(prompt(text)), Some(key)))
    };
    assert_eq!(submit(first, "a").await.status(), 202);
    assert_eq!(submit(second, "b").await.status(), 202);
    assert_eq!(
        submit(first, "c").await.status(),
        429,
        "one window per tenant"
    );
    assert_eq!(submit(second, "d").await.status(), 429);
    let shared = TenantId::parse("shared").unwrap();
    app.records
        .put_limits(TenantLimits::new(shared, 100, None).unwrap());
    assert_eq!(submit(second, "e").await.status(), 429, "cached limits");
    app.clock.advance(crate::app::KEY_CACHE_TTL);
    assert_eq!(
        submit(second, "f").await.status(),
        202,
        "the new limit applies"
    );
}

#[tokio::test]
async fn the_read_function_serves_usage_and_predictions_by_route_key() {
    let app = app();
    let (_, body) = submitted(&app, fox()).await;
    let id = body["id"].as_str().unwrap().to_owned();
    let usage = json_of(&super::read(&app, event("usage", "")).await);
    assert_eq!(usage["tenant"], "acme", "{usage}");
    let fetched = json_of(&super::read(&app, event("fetch", &id)).await);
    assert_eq!(fetched["id"], id.as_str());
    // Behind a custom domain's base path the route key still says which route it is.
    let text = include_str!("../../../tests/fixtures/apigw-v2-usage.json")
        .replace(
            "\"rawPath\": \"/v1/usage\"",
            "\"rawPath\": \"/api/v1/usage\"",
        )
        .replace("\"path\": \"/v1/usage\"", "\"path\": \"/api/v1/usage\"");
    let request = lambda_http::request::from_str(&text).unwrap();
    let usage = json_of(&super::read(&app, request).await);
    assert_eq!(usage["tenant"], "acme", "{usage}");
    let text = include_str!("../../../tests/fixtures/apigw-v2-fetch.json")
        .replace(PLACEHOLDER_ID, &id)
        .replace("\"rawPath\": \"/v1/", "\"rawPath\": \"/api/v1/");
    let request = lambda_http::request::from_str(&text).unwrap();
    assert_eq!(
        json_of(&super::read(&app, request).await)["id"],
        id.as_str()
    );
}

fn with_header(mut request: Request, name: &'static str, value: &str) -> Request {
    request
        .headers_mut()
        .insert(name, HeaderValue::from_str(value).unwrap());
    request
}

#[tokio::test]
async fn cancel_after_is_validated_and_passed_to_replicate() {
    let app = app();
    assert_eq!(submitted(&app, prompt("default")).await.0, 202);
    let submit = |text: &str, deadline: &str| {
        routes::submit::submit(
            &app,
            with_header(submit_event(prompt(text)), "cancel-after", deadline),
        )
    };
    assert_eq!(submit("ninety", "1m30s").await.status(), 202);
    for bad in ["4s", "31m", "soon", "90"] {
        let response = submit(bad, bad).await;
        assert_eq!(response.status(), 422, "{bad}");
        assert_eq!(json_of(&response)["errors"][0]["field"], "Cancel-After");
    }
    let created = app.replicate.created();
    assert_eq!(created.len(), 2, "nothing created for a bad deadline");
    assert_eq!(created[0].deadline, crate::domain::replicate::Deadline::MAX);
    assert_eq!(created[1].deadline.as_duration(), Duration::from_secs(90));
}

/// `POST /v1/predictions/{id}/cancel` as API Gateway delivers it (the fetch event, moved
/// to the cancel route).
fn cancel_event(id: &str, key: Option<&str>) -> Request {
    let text = include_str!("../../../tests/fixtures/apigw-v2-fetch.json")
        .replace(
            "GET /v1/predictions/{id}",
            "POST /v1/predictions/{id}/cancel",
        )
        .replace("\"method\": \"GET\"", "\"method\": \"POST\"")
        .replace(
            &format!("/v1/predictions/{PLACEHOLDER_ID}\""),
            &format!("/v1/predictions/{PLACEHOLDER_ID}/cancel\""),
        )
        .replace(PLACEHOLDER_ID, id);
    let request = lambda_http::request::from_str(&text).expect("an API Gateway v2 event");
    with_key(request, key)
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
        let response = super::write(&app, cancel_event(target, who)).await;
        assert_eq!(response.status(), 404);
    }
    assert_eq!(
        super::write(&app, cancel_event(&id, None)).await.status(),
        401
    );
    assert_eq!(app.replicate.cancel_calls(), 0);

    let canceled = json_of(&super::write(&app, cancel_event(&id, Some(FIXTURE_KEY))).await);
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    assert_eq!(
        canceled["cost"]["usd"], 0.0,
        "an official model bills no canceled image"
    );
    assert_eq!(app.replicate.cancel_calls(), 1);
    let again = json_of(&super::write(&app, cancel_event(&id, Some(FIXTURE_KEY))).await);
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
        json_of(&super::write(&app, cancel_event(done_id.as_str(), Some(FIXTURE_KEY))).await);
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
        json_of(&super::write(&app, cancel_event(lost.as_str(), Some(FIXTURE_KEY))).await);
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
    super::webhook(
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
    let view = json_of(&super::write(&app, cancel_event(id.as_str(), Some(FIXTURE_KEY))).await);
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
    super::webhook(
        &app,
        webhook_event(&app, &id, &json!(canceled), app.clock.system_time()).await,
    )
    .await;
    assert_eq!(record(&app, id.as_str()).await.cost, Some(3 * 975));
}

#[tokio::test]
async fn a_request_with_its_own_deadline_neither_joins_nor_replays_another() {
    let app = app();
    let with_deadline =
        |deadline: &str| with_header(submit_event(prompt("same input")), "cancel-after", deadline);
    let first = json_of(&routes::submit::submit(&app, with_deadline("90s")).await);
    let second = json_of(&routes::submit::submit(&app, submit_event(prompt("same input"))).await);
    assert_ne!(first["id"], second["id"], "not joined across deadlines");
    assert_eq!(app.replicate.created().len(), 2);
    let keyed = |deadline: Option<&str>| {
        let request = with_header(
            submit_event(prompt("keyed")),
            "idempotency-key",
            "k-deadline",
        );
        match deadline {
            Some(d) => with_header(request, "cancel-after", d),
            None => request,
        }
    };
    assert_eq!(
        routes::submit::submit(&app, keyed(Some("90s")))
            .await
            .status(),
        202
    );
    assert_eq!(
        routes::submit::submit(&app, keyed(None)).await.status(),
        422,
        "the same key with another deadline is another request"
    );
    assert_eq!(
        routes::submit::submit(&app, keyed(Some("1m30s")))
            .await
            .status(),
        202,
        "the same deadline replays"
    );
}

/// Replicate's signed delivery saying the prediction failed.
async fn fail_by_webhook(app: &TestApp, id: &PredictionId) {
    let rid = record(app, id.as_str()).await.replicate_id.unwrap();
    let failed = serde_json::to_value(remote(&rid, PredictionStatus::Failed)).unwrap();
    super::webhook(
        app,
        webhook_event(app, id, &failed, SystemTime::now()).await,
    )
    .await;
}

fn with_callback(url: &str, events: Value) -> Value {
    json!({"model": "flux-schnell", "input": {"prompt": "called back"},
        "webhook": url, "webhook_events_filter": events})
}

#[tokio::test]
async fn callbacks_to_private_metadata_or_link_local_literals_are_refused_unsent() {
    let app = app();
    // Literal addresses: refused without a DNS lookup, and the in-memory sender sends
    // nothing anywhere.
    for url in [
        "https://10.1.2.3/hook",
        "https://192.168.0.10/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[fd00:ec2::254]/hook",
        "https://[fe80::1]/hook",
        "https://0.0.0.0/hook",
    ] {
        let (status, problem) = submitted(&app, with_callback(url, json!(["completed"]))).await;
        assert_eq!(status, 422, "{url}: {problem}");
        assert_eq!(problem["errors"][0]["field"], "webhook", "{url}");
    }
    assert!(app.replicate.created().is_empty(), "nothing created");
    assert!(app.callbacks.sent().is_empty());
}

#[tokio::test]
async fn a_completed_callback_is_signed_retried_with_backoff_then_dead_lettered_after_a_day() {
    let app = app_with(&[("CALLBACK_ALLOW_HOSTS", "127.0.0.1:9")]);
    let (status, view) = submitted(
        &app,
        with_callback("http://127.0.0.1:9/in", json!(["completed"])),
    )
    .await;
    assert_eq!(status, 202, "{view}");
    assert!(
        app.queue.drain_callbacks().is_empty(),
        "no `start` callback was asked for"
    );
    let id = PredictionId::parse(view["id"].as_str().unwrap()).unwrap();
    fail_by_webhook(&app, &id).await;
    let jobs = app.queue.drain_callbacks();
    assert_eq!(jobs.len(), 1);
    let job = &jobs[0];
    assert_eq!(
        job.event,
        crate::domain::callbacks::CallbackEvent::Completed
    );

    app.callbacks.answer_next([
        crate::ports::callbacks::DeliveryOutcome::Rejected { status: 503 },
        crate::ports::callbacks::DeliveryOutcome::Unreachable("timed out".into()),
    ]);
    let first = app.deliver_callback(job, 1).await.unwrap();
    let second = app.deliver_callback(job, 2).await.unwrap();
    assert_eq!(
        (first, second),
        (
            crate::app::CallbackDisposition::RetryAfter(Duration::from_secs(30)),
            crate::app::CallbackDisposition::RetryAfter(Duration::from_secs(60)),
        ),
        "the default base, doubling"
    );
    let sent = app.callbacks.sent();
    let header = |n: usize, name: &str| {
        sent[n]
            .headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(header(0, "webhook-id"), header(1, "webhook-id"));
    // Signed under the tenant's secret, over exactly the body sent.
    let secret = app
        .records
        .callback_secret(&TenantId::parse("acme").unwrap(), "unused")
        .await
        .unwrap();
    let timestamp: i64 = header(0, "webhook-timestamp").parse().unwrap();
    assert_eq!(
        WebhookSecret::parse(&secret).unwrap().sign(
            &header(0, "webhook-id"),
            timestamp,
            &sent[0].body
        ),
        header(0, "webhook-signature")
    );
    let body: Value = serde_json::from_slice(&sent[0].body).unwrap();
    assert_eq!(
        (body["id"].as_str(), body["status"].as_str()),
        (Some(id.as_str()), Some("failed"))
    );
    let shown = fetched(&app, id.as_str()).await;
    assert_eq!(
        (
            shown["webhook"]["status"].as_str(),
            shown["webhook"]["attempts"].as_u64()
        ),
        (Some("pending"), Some(2))
    );

    // A day later a failure is final: dead-lettered, shown `failed`.
    app.clock.advance(Duration::from_secs(24 * 3600));
    app.callbacks
        .answer_next([crate::ports::callbacks::DeliveryOutcome::Rejected { status: 500 }]);
    assert_eq!(
        app.deliver_callback(job, 3).await.unwrap(),
        crate::app::CallbackDisposition::DeadLettered
    );
    assert_eq!(app.queue.dead_callbacks(), vec![job.clone()]);
    let callback = record(&app, id.as_str()).await.callback.unwrap();
    assert_eq!(
        (callback.status, callback.attempts),
        (Some(crate::domain::callbacks::CallbackStatus::Failed), 3)
    );
}

#[tokio::test]
async fn a_destination_that_now_resolves_inside_is_given_up_at_once() {
    let app = app_with(&[("CALLBACK_ALLOW_HOSTS", "127.0.0.1:9")]);
    let (_, view) = submitted(
        &app,
        with_callback("http://127.0.0.1:9/in", json!(["start"])),
    )
    .await;
    let jobs = app.queue.drain_callbacks();
    assert_eq!(jobs.len(), 1, "`start` is queued when Replicate created it");
    app.callbacks
        .answer_next([crate::ports::callbacks::DeliveryOutcome::Forbidden(
            "`hooks.example.com` resolves to a private address".into(),
        )]);
    assert_eq!(
        app.deliver_callback(&jobs[0], 1).await.unwrap(),
        crate::app::CallbackDisposition::DeadLettered
    );
    let shown = fetched(&app, view["id"].as_str().unwrap()).await;
    assert_eq!(shown["webhook"]["status"], "failed");
}

#[tokio::test]
async fn an_ended_prediction_whose_callback_could_not_be_queued_is_queued_by_the_reconciler() {
    let app = app_with(&[("CALLBACK_ALLOW_HOSTS", "127.0.0.1:9")]);
    let (_, view) = submitted(
        &app,
        with_callback("http://127.0.0.1:9/in", json!(["completed"])),
    )
    .await;
    let id = PredictionId::parse(view["id"].as_str().unwrap()).unwrap();
    app.queue.fail_next_sends(1);
    fail_by_webhook(&app, &id).await;
    assert!(app.queue.drain_callbacks().is_empty(), "the send failed");
    assert!(record(&app, id.as_str()).await.owes_completed_callback());
    app.clock.advance(Duration::from_secs(180));
    let report = app.reconcile(None).await;
    assert_eq!(report.callbacks_queued, 1, "{report:?}");
    assert_eq!(app.queue.drain_callbacks().len(), 1);
    assert!(!record(&app, id.as_str()).await.owes_completed_callback());
    assert_eq!(app.reconcile(None).await.callbacks_queued, 0, "once");
}

#[tokio::test]
async fn an_upload_is_verified_stored_by_content_and_keyed_by_content_in_the_cache() {
    let app = app();
    let mut request = event("submit", "");
    *request.uri_mut() = format!("https://{HOST}/v1/uploads").parse().unwrap();
    let mut image = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    image.extend(64u32.to_be_bytes());
    image.extend(64u32.to_be_bytes());
    image.extend([8, 6, 0, 0, 0]);
    image.resize(500, 0);
    *request.body_mut() = Body::Text(json!({"content_type": "image/png", "size": 500}).to_string());
    // The fixture's route key is submit's: the handler is called as its route would.
    let response = routes::uploads::create_upload(&app, request).await;
    assert_eq!(response.status(), 201);
    let slot = json_of(&response);
    let key = format!("uploads/{}", slot["id"].as_str().unwrap());
    app.objects
        .put_object(&key, "image/png", image.clone().into())
        .await
        .unwrap();
    let body = json!({"model": "sdxl-img2img", "input": {"prompt": "a cat", "image": slot["ref"]}});
    let (status, view) = submitted(&app, body.clone()).await;
    assert_eq!(status, 202, "{view}");
    assert_eq!(view["input"]["image"], slot["ref"]);
    let sha = crate::domain::digest::hex(&<sha2::Sha256 as sha2::Digest>::digest(&image));
    assert_eq!(
        app.objects.get(&format!("inputs/{sha}")).map(|o| o.0),
        Some(image.clone()),
        "the verified bytes, stored by content"
    );
    // The slot is written again with other bytes: the next submit is another request.
    let mut other = image.clone();
    other[400] = 1;
    app.objects
        .put_object(&key, "image/png", other.into())
        .await
        .unwrap();
    let (_, again) = submitted(&app, body).await;
    assert_ne!(again["id"], view["id"], "not joined: other content");
    assert_eq!(app.replicate.created().len(), 2);
}
