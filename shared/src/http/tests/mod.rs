//! The routes and their use cases on in-memory fakes, driven by API Gateway HTTP API (v2)
//! events as Lambda receives them; one file per flow, the shared fixtures here.

mod bursts;
mod callbacks;
mod reconcile;
mod recover;
mod submit;
mod sync;
mod tenancy;
mod webhook;

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
use crate::domain::signing::SigningSecret;
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
    let signature = SigningSecret::parse(SECRET)
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

/// Completes `id` (Replicate id `rid`) through a webhook and the copy worker.
async fn complete(app: &TestApp, id: &PredictionId, rid: &str) {
    let mut done = remote(rid, PredictionStatus::Succeeded);
    done.completed_at = Some(app.clock.now().rfc3339());
    let response = crate::http::webhook(
        app,
        webhook_event(app, id, &json!(done), app.clock.system_time()).await,
    )
    .await;
    assert_eq!(json_of(&response)["result"], "queued");
    assert_eq!(run_copies(app).await, 0);
}

const BETA_KEY: &str = "igk_second_tenant_beta_key_2b4d6f8a0c1e3g5h";

fn fetch_as(id: &str, key: Option<&str>) -> Request {
    with_key(event("fetch", id), key)
}

async fn status_and_body(response: Response<Body>) -> (u16, Value) {
    (response.status().as_u16(), json_of(&response))
}

fn prompt(text: &str) -> Value {
    json!({"model": "flux-schnell", "input": {"prompt": text}})
}

fn with_header(mut request: Request, name: &'static str, value: &str) -> Request {
    request
        .headers_mut()
        .insert(name, HeaderValue::from_str(value).unwrap());
    request
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

/// Replicate's signed delivery saying the prediction failed.
async fn fail_by_webhook(app: &TestApp, id: &PredictionId) {
    let rid = record(app, id.as_str()).await.replicate_id.unwrap();
    let failed = serde_json::to_value(remote(&rid, PredictionStatus::Failed)).unwrap();
    crate::http::webhook(
        app,
        webhook_event(app, id, &failed, SystemTime::now()).await,
    )
    .await;
}

fn with_callback(url: &str, events: Value) -> Value {
    json!({"model": "flux-schnell", "input": {"prompt": "called back"},
        "webhook": url, "webhook_events_filter": events})
}
