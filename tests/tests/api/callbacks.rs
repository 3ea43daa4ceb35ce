//! Callbacks to the caller end to end on moto and the simulator, through the function
//! binaries (the callbacks function fed by its queue): signed so that a Standard
//! Webhooks library accepts them, retried through the queue with the same `webhook-id`
//! until the receiver accepts, shown on the prediction, and refused at submit for
//! destinations on this machine or not https (before anything is created).

use std::time::{Duration, Instant};

use integration_tests::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// A receiver on loopback that answers 500 to the first `failures` deliveries, then 204.
async fn receiver(failures: u64) -> MockServer {
    let server = MockServer::start().await;
    if failures > 0 {
        Mock::given(method("POST"))
            .and(path("/hook"))
            .respond_with(ResponseTemplate::new(500))
            .up_to_n_times(failures)
            .with_priority(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

/// A stack whose callbacks may reach `server` (plain http on loopback, listed).
async fn stack_for(server: &MockServer) -> Stack {
    let allowed = server.address().to_string();
    Stack::start_binaries_with(move |vars| {
        vars.insert("CALLBACK_ALLOW_HOSTS".into(), allowed);
    })
    .await
}

async fn received_at_least(server: &MockServer, count: usize) -> Vec<Request> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let received = server.received_requests().await.unwrap_or_default();
        if received.len() >= count || Instant::now() > deadline {
            return received;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn header<'a>(request: &'a Request, name: &str) -> &'a str {
    request
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

/// The signing secret of `client`'s tenant.
async fn signing_secret(stack: &Stack, client: &reqwest::Client) -> String {
    let response = client
        .get(format!("{}/v1/webhooks/secret", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["key"].as_str().unwrap().to_owned()
}

fn verify(secret: &str, request: &Request) {
    let verifier = standardwebhooks::Webhook::new(secret).expect("a Standard Webhooks secret");
    let mut headers = http::HeaderMap::new();
    for name in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        headers.insert(name, header(request, name).parse().unwrap());
    }
    verifier
        .verify(&request.body, &headers)
        .expect("the Standard Webhooks library accepts the signature");
}

#[tokio::test]
async fn a_receiver_failing_twice_gets_one_event_three_times_with_one_id_all_verified() {
    let server = receiver(2).await;
    let stack = stack_for(&server).await;
    let url = format!("http://{}/hook", server.address());
    let (status, submitted) = stack
        .submit(
            &json!({"model": "flux-schnell", "input": {"prompt": "callback me"}, "webhook": url}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    assert_eq!(submitted["webhook"]["url"], url);
    assert_eq!(submitted["webhook"]["events"], json!(["completed"]));
    assert_eq!(submitted["webhook"]["status"], "pending");
    let id = submitted["id"].as_str().unwrap().to_owned();

    let received = received_at_least(&server, 3).await;
    assert_eq!(received.len(), 3, "two refusals, then the accepted one");
    let ids: Vec<&str> = received.iter().map(|r| header(r, "webhook-id")).collect();
    assert!(
        !ids[0].is_empty() && ids.iter().all(|i| *i == ids[0]),
        "one event, one id: {ids:?}"
    );
    let secret = signing_secret(&stack, &stack.http).await;
    assert!(secret.starts_with("whsec_"));
    for request in &received {
        verify(&secret, request);
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        assert_eq!(body["id"], id.as_str());
        assert_eq!(
            body["status"], "succeeded",
            "completed: after the outputs are stored"
        );
        assert_eq!(body["output"].as_array().map(Vec::len), Some(1));
        stack.download_verified(&body["output"][0]).await;
    }
    // Retried after the base delay, then twice it (CALLBACK_RETRY_BASE_SECONDS = 1).
    assert_eq!(header(&received[0], "content-type"), "application/json");

    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let (_, shown) = stack.get(&id).await;
        if shown["webhook"]["status"] == "delivered" || Instant::now() > deadline {
            break shown;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(shown["webhook"]["status"], "delivered", "{shown}");
    assert_eq!(shown["webhook"]["attempts"], 3);

    // Another tenant has another secret: our signature does not verify under it.
    let other = integration_tests::client_with_key(&stack.new_key("cb-other", 60, None).await);
    assert_ne!(signing_secret(&stack, &other).await, secret);
}

#[tokio::test]
async fn start_and_completed_are_two_events_with_their_own_ids() {
    let server = receiver(0).await;
    let stack = stack_for(&server).await;
    let url = format!("http://{}/hook", server.address());
    let (status, submitted) = stack
        .submit(&json!({
            "model": "flux-schnell",
            "input": {"prompt": "both events"},
            "webhook": url,
            "webhook_events_filter": ["completed", "start", "start"],
        }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    assert_eq!(
        submitted["webhook"]["events"],
        json!(["start", "completed"])
    );
    let received = received_at_least(&server, 2).await;
    let mut seen: Vec<(String, String)> = received
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            (
                header(r, "webhook-id").to_owned(),
                body["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    seen.sort();
    seen.dedup_by(|a, b| a.0 == b.0);
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().any(|(_, status)| status == "succeeded"),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|(_, status)| status == "starting" || status == "processing"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn callbacks_to_this_machine_or_without_https_are_refused_before_anything_is_created() {
    let server = receiver(0).await;
    let stack = stack_for(&server).await;
    let created_before = stack.sim.predictions().len();
    let listed_port = server.address().port();
    for url in [
        "https://127.0.0.2/hook".to_owned(),
        "https://localhost/hook".to_owned(),
        "https://[::1]/hook".to_owned(),
        "https://[::ffff:127.0.0.1]/hook".to_owned(),
        // Listed host, another port: neither exempt nor https.
        format!("http://127.0.0.1:{}/hook", listed_port.wrapping_add(1)),
        "http://hooks.example.com/hook".to_owned(),
        "https://user:pass@hooks.example.com/hook".to_owned(),
        "not a url".to_owned(),
    ] {
        let (status, problem) = stack
            .submit(&json!({"model": "flux-schnell", "input": {"prompt": "x"}, "webhook": url}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {problem}");
        assert_eq!(problem["errors"][0]["field"], "webhook", "{url}: {problem}");
    }
    let (status, problem) = stack
        .submit(&json!({"model": "flux-schnell", "input": {"prompt": "x"}, "webhook_events_filter": ["start"]}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    let (status, problem) = stack
        .submit(&json!({"model": "flux-schnell", "input": {"prompt": "x"},
            "webhook": format!("http://{}/hook", server.address()),
            "webhook_events_filter": ["logs"]}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(
        stack.sim.predictions().len(),
        created_before,
        "nothing was created at Replicate"
    );
    assert!(
        server
            .received_requests()
            .await
            .unwrap_or_default()
            .is_empty()
    );
}
