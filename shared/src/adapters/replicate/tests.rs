//! The Replicate client against a local mock HTTP server: every retry rule and failure mode.

use std::time::{Duration, Instant, SystemTime};

use crate::adapters::replicate::{ApiToken, ClientConfig, ReplicateClient, RetryPolicy};

use crate::domain::replicate::{
    Deadline, ModelRef, PredictionStatus, ReplicateError, WebhookEvent, WebhookTarget,
};

use crate::ports::replicate::ReplicateApi;
use serde_json::{Map, Value, json};
use wiremock::matchers::{body_json, header, method, path, query_param, query_param_is_missing};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "r8_testtoken";
const SDXL: &str = "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc";

fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 4,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(40),
        max_retry_after: Duration::from_secs(5),
        max_total_time: Duration::from_secs(8),
    }
}

fn client_with(
    server: &MockServer,
    retry: RetryPolicy,
    request_timeout: Duration,
) -> ReplicateClient {
    let mut config = ClientConfig::new(format!("{}/v1", server.uri()), ApiToken::new(TOKEN));
    config.retry = retry;
    config.request_timeout = request_timeout;
    ReplicateClient::new(config).expect("client builds")
}

fn client(server: &MockServer) -> ReplicateClient {
    client_with(server, policy(), Duration::from_secs(5))
}

fn prediction_json(id: &str, status: &str) -> Value {
    json!({
        "id": id, "model": "stability-ai/sdxl", "version": SDXL,
        "input": {"prompt": "a cat"}, "output": null, "error": null, "logs": "",
        "status": status, "data_removed": false, "created_at": "2025-01-01T00:00:00.000Z",
        "urls": {"get": format!("https://api.replicate.com/v1/predictions/{id}"),
                 "cancel": format!("https://api.replicate.com/v1/predictions/{id}/cancel"),
                 "web": format!("https://replicate.com/p/{id}")}
    })
}

fn sdxl() -> ModelRef {
    ModelRef::parse(&format!("stability-ai/sdxl:{SDXL}")).unwrap()
}

fn input() -> Map<String, Value> {
    Map::from_iter([("prompt".to_owned(), json!("a cat"))])
}

async fn request_count(server: &MockServer) -> usize {
    server.received_requests().await.map_or(0, |r| r.len())
}

#[tokio::test]
async fn create_by_version_sends_exact_body_and_accepts_201() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/predictions"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        // Every prediction ends within 30 minutes: the service's give-ups rely on it.
        .and(header("cancel-after", "1800s"))
        .and(body_json(json!({
            "version": SDXL, "input": {"prompt": "a cat"},
            "webhook": "https://api.example.com/webhooks/replicate",
            "webhook_events_filter": ["start", "completed"]
        })))
        .respond_with(ResponseTemplate::new(201).set_body_json(prediction_json("p1", "starting")))
        .expect(1)
        .mount(&server)
        .await;
    let webhook = WebhookTarget {
        url: "https://api.example.com/webhooks/replicate".into(),
        events: vec![WebhookEvent::Start, WebhookEvent::Completed],
    };
    let p = client(&server)
        .create_prediction(&sdxl(), &input(), Some(&webhook), Deadline::MAX)
        .await
        .unwrap();
    assert_eq!(p.id, "p1");
    assert_eq!(p.status, PredictionStatus::Starting);
    assert_eq!(p.version.as_deref(), Some(SDXL));
}

#[tokio::test]
async fn create_official_model_uses_model_endpoint_and_accepts_202() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path(
            "/v1/models/black-forest-labs/flux-schnell/predictions",
        ))
        .and(body_json(json!({"input": {"prompt": "a cat"}})))
        .respond_with(ResponseTemplate::new(202).set_body_json(json!({
            "id": "p2", "model": "black-forest-labs/flux-schnell", "version": "hidden",
            "input": {"prompt": "a cat"}, "output": null, "error": null, "status": "starting",
            "data_removed": false, "created_at": "2025-01-01T00:00:00Z", "urls": {}
        })))
        .expect(1)
        .mount(&server)
        .await;
    let model = ModelRef::parse("black-forest-labs/flux-schnell").unwrap();
    let p = client(&server)
        .create_prediction(&model, &input(), None, Deadline::MAX)
        .await
        .unwrap();
    assert_eq!(p.id, "p2");
    assert_eq!(p.version, None);
}

#[tokio::test]
async fn create_429_with_retry_after_waits_that_long_then_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({"detail": "Request was throttled."})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(prediction_json("p3", "starting")))
        .mount(&server)
        .await;
    let started = Instant::now();
    let p = client(&server)
        .create_prediction(&sdxl(), &input(), None, Deadline::MAX)
        .await
        .unwrap();
    assert_eq!(p.id, "p3");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After honoured: {:?}",
        started.elapsed()
    );
    assert_eq!(request_count(&server).await, 2);
}

#[tokio::test]
async fn create_429_without_retry_after_backs_off_and_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429).set_body_json(json!({"detail": "Request was throttled."})),
        )
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(prediction_json("p4", "starting")))
        .mount(&server)
        .await;
    let p = client(&server)
        .create_prediction(&sdxl(), &input(), None, Deadline::MAX)
        .await
        .unwrap();
    assert_eq!(p.id, "p4");
    assert_eq!(request_count(&server).await, 3);
}

#[tokio::test]
async fn throttle_hint_in_429_body_is_used_when_no_header() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(429).set_body_json(
            json!({"detail": "Request was throttled. Expected available in 1 second."}),
        ))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(prediction_json("p5", "processing")))
        .mount(&server)
        .await;
    let started = Instant::now();
    client(&server).get_prediction("p5").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn persistent_429_ends_in_throttled_with_a_retry_hint() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(429).set_body_json(json!({"detail": "Request was throttled."})),
        )
        .mount(&server)
        .await;
    let err = client(&server)
        .create_prediction(&sdxl(), &input(), None, Deadline::MAX)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplicateError::Throttled { attempts: 4, .. }),
        "{err:?}"
    );
    assert!(err.retry_later().is_some());
    assert_eq!(request_count(&server).await, 4);
}

#[tokio::test]
async fn retry_after_beyond_the_cap_is_handed_back_without_waiting() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "120"))
        .mount(&server)
        .await;
    let started = Instant::now();
    let err = client(&server)
        .create_prediction(&sdxl(), &input(), None, Deadline::MAX)
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match err {
        ReplicateError::Throttled {
            retry_after,
            attempts,
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(120)));
            assert_eq!(attempts, 1);
        }
        other => panic!("expected Throttled, got {other:?}"),
    }
    assert_eq!(request_count(&server).await, 1);
}

#[tokio::test]
async fn total_time_budget_stops_retries() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503).insert_header("retry-after", "1"))
        .mount(&server)
        .await;
    let retry = RetryPolicy {
        max_attempts: 10,
        max_total_time: Duration::from_millis(1500),
        ..policy()
    };
    let err = client_with(&server, retry, Duration::from_secs(5))
        .get_prediction("p")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ReplicateError::Unavailable {
                status: 503,
                attempts: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.retry_later().unwrap().after, Duration::from_secs(1));
    assert_eq!(request_count(&server).await, 2);
}

#[tokio::test]
async fn get_500_then_success_is_retried() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/predictions/p6"))
        .respond_with(ResponseTemplate::new(500).set_body_string("Internal Server Error"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/predictions/p6"))
        .respond_with(ResponseTemplate::new(200).set_body_json(prediction_json("p6", "succeeded")))
        .mount(&server)
        .await;
    let p = client(&server).get_prediction("p6").await.unwrap();
    assert_eq!(p.status, PredictionStatus::Succeeded);
    assert_eq!(request_count(&server).await, 2);
}

#[tokio::test]
async fn persistent_5xx_on_get_ends_in_unavailable() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(502))
        .mount(&server)
        .await;
    let err = client(&server).get_prediction("p").await.unwrap_err();
    assert!(
        matches!(
            err,
            ReplicateError::Unavailable {
                status: 502,
                attempts: 4,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(request_count(&server).await, 4);
}

#[tokio::test]
async fn create_is_not_retried_on_an_ambiguous_500() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500).set_body_json(json!({"detail": "oops"})))
        .mount(&server)
        .await;
    let err = client(&server)
        .create_prediction(&sdxl(), &input(), None, Deadline::MAX)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplicateError::CreateOutcomeUnknown { .. }),
        "{err:?}"
    );
    assert!(err.retry_later().is_none());
    assert_eq!(request_count(&server).await, 1);
}

#[tokio::test]
async fn create_timeout_is_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(prediction_json("slow", "starting"))
                .set_delay(Duration::from_secs(2)),
        )
        .mount(&server)
        .await;
    let client = client_with(&server, policy(), Duration::from_millis(300));
    let err = client
        .create_prediction(&sdxl(), &input(), None, Deadline::MAX)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplicateError::CreateOutcomeUnknown { .. }),
        "{err:?}"
    );
    assert_eq!(request_count(&server).await, 1);
}

#[tokio::test]
async fn get_timeout_is_retried_then_succeeds() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(prediction_json("p7", "processing"))
                .set_delay(Duration::from_secs(2)),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(prediction_json("p7", "processing")))
        .mount(&server)
        .await;
    let client = client_with(&server, policy(), Duration::from_millis(300));
    let p = client.get_prediction("p7").await.unwrap();
    assert_eq!(p.id, "p7");
    assert_eq!(request_count(&server).await, 2);
}

#[tokio::test]
async fn get_that_always_times_out_ends_in_timed_out() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .mount(&server)
        .await;
    let retry = RetryPolicy {
        max_attempts: 2,
        ..policy()
    };
    let err = client_with(&server, retry, Duration::from_millis(200))
        .get_prediction("p")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplicateError::TimedOut { attempts: 2 }),
        "{err:?}"
    );
    assert!(err.retry_later().is_some());
}

#[tokio::test]
async fn malformed_json_is_an_invalid_response() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"id\": \"p8\", \"status\": "))
        .mount(&server)
        .await;
    let err = client(&server).get_prediction("p8").await.unwrap_err();
    assert!(
        matches!(err, ReplicateError::InvalidResponse { .. }),
        "{err:?}"
    );
    assert_eq!(request_count(&server).await, 1);
}

/// A create answered 2xx with a body this client cannot read did create the prediction: an
/// unknown outcome (resolved, never repeated), not a refusal.
#[tokio::test]
async fn an_unreadable_create_answer_is_an_unknown_outcome() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(201)
                .set_body_json(json!({"id": "p9", "status": "starting", "metrics": "soon"})),
        )
        .mount(&server)
        .await;
    let err = client(&server)
        .create_prediction(&sdxl(), &input(), None, Deadline::MAX)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplicateError::CreateOutcomeUnknown { .. }),
        "{err:?}"
    );
    assert_eq!(request_count(&server).await, 1);
}

#[tokio::test]
async fn client_errors_carry_replicates_problem_and_are_not_retried() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(422).set_body_json(json!({
            "title": "Input validation failed", "status": 422,
            "detail": "- input.width: Must be less than or equal to 1440",
            "invalid_fields": [{"type": "maximum", "field": "input.width",
                                "description": "Must be less than or equal to 1440"}]
        })))
        .mount(&server)
        .await;
    let err = client(&server)
        .create_prediction(&sdxl(), &input(), None, Deadline::MAX)
        .await
        .unwrap_err();
    match &err {
        ReplicateError::Rejected {
            status: 422,
            problem,
        } => {
            assert_eq!(
                problem.invalid_fields[0].field.as_deref(),
                Some("input.width")
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("Must be less than or equal to 1440")
    );
    assert_eq!(request_count(&server).await, 1);
}

#[tokio::test]
async fn not_found_is_recognisable() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"detail": "Not found."})))
        .mount(&server)
        .await;
    let err = client(&server).get_prediction("missing").await.unwrap_err();
    assert!(err.is_not_found(), "{err:?}");
}

#[tokio::test]
async fn connection_refused_is_retried_then_unreachable() {
    // Bind to learn a free port, then close it so connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = ClientConfig::new(format!("http://127.0.0.1:{port}/v1"), ApiToken::new(TOKEN));
    config.retry = policy();
    let client = ReplicateClient::new(config).unwrap();
    for err in [
        client
            .create_prediction(&sdxl(), &input(), None, Deadline::MAX)
            .await
            .unwrap_err(),
        client.get_prediction("p").await.unwrap_err(),
    ] {
        assert!(
            matches!(err, ReplicateError::Unreachable { attempts: 4, .. }),
            "{err:?}"
        );
        assert!(err.retry_later().is_some());
    }
}

#[tokio::test]
async fn cancel_posts_to_the_cancel_url() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/v1/predictions/p9/cancel"))
        .respond_with(ResponseTemplate::new(200).set_body_json(prediction_json("p9", "canceled")))
        .expect(1)
        .mount(&server)
        .await;
    let p = client(&server).cancel_prediction("p9").await.unwrap();
    assert_eq!(p.status, PredictionStatus::Canceled);
}

#[tokio::test]
async fn webhook_secret_is_fetched_and_parsed() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/webhooks/default/secret"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(json!({"key": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"})),
        )
        .mount(&server)
        .await;
    let secret = client(&server).webhook_secret().await.unwrap();
    assert_eq!(
        secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );
}

#[tokio::test]
async fn malformed_webhook_secret_is_an_invalid_response() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"key": "whsec_***"})))
        .mount(&server)
        .await;
    let err = client(&server).webhook_secret().await.unwrap_err();
    assert!(
        matches!(err, ReplicateError::InvalidResponse { .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn get_model_reads_latest_version() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models/stability-ai/sdxl"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "owner": "stability-ai", "name": "sdxl", "visibility": "public", "is_official": false,
            "run_count": 1, "url": "https://replicate.com/stability-ai/sdxl",
            "latest_version": {"id": SDXL, "created_at": "2023-07-26T00:00:00Z", "openapi_schema": {}}
        })))
        .mount(&server)
        .await;
    let model = client(&server)
        .get_model("stability-ai", "sdxl")
        .await
        .unwrap();
    assert_eq!(model.latest_version.unwrap().id, SDXL);
}

#[tokio::test]
async fn slow_attempts_count_against_the_time_budget() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .mount(&server)
        .await;
    let retry = RetryPolicy {
        max_attempts: 10,
        max_total_time: Duration::from_millis(700),
        ..policy()
    };
    let started = Instant::now();
    let err = client_with(&server, retry, Duration::from_millis(300))
        .get_prediction("p")
        .await
        .unwrap_err();
    assert!(
        matches!(err, ReplicateError::TimedOut { attempts } if attempts <= 3),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

/// 2025-01-01T00:00:00Z and ten minutes later: a list window.
fn window() -> (SystemTime, SystemTime) {
    let after = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600);
    (after, after + Duration::from_secs(600))
}

fn page_json(ids: &[&str], next: Option<String>) -> Value {
    let results: Vec<Value> = ids
        .iter()
        .map(|id| prediction_json(id, "processing"))
        .collect();
    json!({"next": next, "previous": null, "results": results})
}

#[tokio::test]
async fn list_sends_the_window_and_follows_next_pages() {
    let server = MockServer::start().await;
    let next = format!(
        "{}/v1/predictions?cursor=cD0y&created_after=2025-01-01T00%3A00%3A00.000Z",
        server.uri()
    );
    Mock::given(method("GET"))
        .and(path("/v1/predictions"))
        .and(query_param("created_after", "2025-01-01T00:00:00.000Z"))
        .and(query_param("created_before", "2025-01-01T00:10:00.000Z"))
        .and(query_param_is_missing("cursor"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(page_json(&["p2", "p1"], Some(next))),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/predictions"))
        .and(query_param("cursor", "cD0y"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page_json(&["p0"], None)))
        .expect(1)
        .mount(&server)
        .await;
    let client = client(&server);
    let (after, before) = window();
    let mut ids = Vec::new();
    let mut page = None;
    loop {
        let listed = client
            .list_predictions(after, before, page.as_deref())
            .await
            .unwrap();
        ids.extend(listed.results.into_iter().map(|p| p.id));
        match listed.next {
            Some(next) => page = Some(next),
            None => break,
        }
    }
    assert_eq!(ids, vec!["p2", "p1", "p0"]);
}

#[tokio::test]
async fn list_is_retried_after_a_5xx() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/predictions"))
        .respond_with(ResponseTemplate::new(503).set_body_string("Service Unavailable"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v1/predictions"))
        .respond_with(ResponseTemplate::new(200).set_body_json(page_json(&["p1"], None)))
        .mount(&server)
        .await;
    let (after, before) = window();
    let listed = client(&server)
        .list_predictions(after, before, None)
        .await
        .unwrap();
    assert_eq!(listed.results[0].id, "p1");
    assert_eq!(request_count(&server).await, 2);
}

#[tokio::test]
async fn a_next_link_elsewhere_is_refused_and_never_sent_the_token() {
    let server = MockServer::start().await;
    let elsewhere = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(200).set_body_json(page_json(&[], None)))
        .expect(0)
        .mount(&elsewhere)
        .await;
    let port = elsewhere.address().port();
    let (after, before) = window();
    let client = client(&server);
    for next in [
        format!("{}/v1/predictions?cursor=x", elsewhere.uri()),
        format!("http://localhost:{port}/v1/predictions?cursor=x"),
        format!("{}/v1/predictions/p1?cursor=x", server.uri()),
        format!("{}/v1/models?cursor=x", server.uri()),
        "/v1/predictions?cursor=x".to_owned(),
    ] {
        let err = client
            .list_predictions(after, before, Some(&next))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ReplicateError::InvalidResponse { .. }),
            "{next}: {err:?}"
        );
    }
    assert_eq!(request_count(&server).await, 0);
    assert_eq!(request_count(&elsewhere).await, 0);
}
