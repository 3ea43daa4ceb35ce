//! The simulator and our client against Replicate's own OpenAPI spec (a copy in
//! `fixtures/`): every response and webhook body the simulator produces, and every request
//! body our client sends, must validate, so neither can drift from the real API.

use std::time::{Duration, Instant};

use imagegen_shared::adapters::replicate::{ApiToken, ClientConfig, ReplicateClient};

use imagegen_shared::domain::replicate::{Deadline, ModelRef, WebhookEvent, WebhookTarget};

use imagegen_shared::domain::signing::{SignatureVerifier, SigningSecret};
use imagegen_shared::ports::replicate::ReplicateApi;
use local_stack::sim::{SimConfig, Simulator};
use serde_json::{Map, Value, json};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

const SDXL: &str = "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc";

/// OpenAPI 3.0's `nullable: true` as JSON Schema: `type: [T, "null"]`. Replicate's spec
/// uses it (e.g. on `error`) although it declares OpenAPI 3.1.
fn nullable_to_json_schema(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.remove("nullable") == Some(Value::Bool(true))
                && let Some(Value::String(t)) = map.get("type").cloned()
            {
                map.insert("type".to_owned(), json!([t, "null"]));
            }
            map.values_mut().for_each(nullable_to_json_schema);
        }
        Value::Array(items) => items.iter_mut().for_each(nullable_to_json_schema),
        _ => {}
    }
}

struct Spec(Value);

impl Spec {
    fn load() -> Self {
        let mut spec: Value =
            serde_json::from_str(include_str!("../../fixtures/replicate-openapi.json")).unwrap();
        nullable_to_json_schema(&mut spec);
        // `version` is `oneOf: [string, enum ["hidden"]]`, which no value can satisfy when
        // it is "hidden" (both branches match); `anyOf` is what the spec means.
        let version = &mut spec["components"]["schemas"]["schemas_prediction_response"]["properties"]
            ["version"];
        let branches = version
            .as_object_mut()
            .and_then(|v| v.remove("oneOf"))
            .expect("spec still has the oneOf");
        version["anyOf"] = branches;
        Self(spec)
    }

    /// Validates `instance` against the schema at `pointer` within the spec.
    fn check(&self, pointer: &str, instance: &Value, what: &str) {
        let schema = json!({
            "$ref": format!("#{pointer}"),
            "components": self.0["components"].clone(),
            "paths": self.0["paths"].clone(),
        });
        let validator = jsonschema::options()
            .should_validate_formats(true)
            .build(&schema)
            .expect("schema compiles");
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{what} does not match {pointer}: {errors:?}\n{instance}"
        );
    }

    fn prediction(&self, instance: &Value, what: &str) {
        self.check(
            "/components/schemas/schemas_prediction_response",
            instance,
            what,
        );
    }

    /// A page of `GET /predictions` (predictions.list).
    fn list_page(&self, instance: &Value, what: &str) {
        self.check(
            "/paths/~1predictions/get/responses/200/content/application~1json/schema",
            instance,
            what,
        );
    }
}

async fn call(method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .request(method, url)
        .bearer_auth("r8_test");
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn wait_terminal(sim: &Simulator, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let p = sim.prediction(id).unwrap();
        if matches!(
            p["status"].as_str(),
            Some("succeeded" | "failed" | "canceled" | "aborted")
        ) {
            return p;
        }
        assert!(started.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Creates an SDXL prediction with `body` (version added) and waits until it ends.
async fn run_to_end(sim: &Simulator, mut body: Value) -> Value {
    body["version"] = json!(SDXL);
    let (status, created) = call(
        reqwest::Method::POST,
        format!("{}/predictions", sim.api_base()),
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    wait_terminal(sim, created["id"].as_str().unwrap()).await
}

#[tokio::test]
async fn simulator_responses_match_the_spec() {
    let spec = Spec::load();
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let api = sim.api_base();

    let (status, created) = call(
        reqwest::Method::POST,
        format!("{api}/predictions"),
        Some(json!({"version": SDXL, "input": {"prompt": "spec", "width": 64, "height": 64}})),
    )
    .await;
    assert_eq!(status, 201);
    spec.prediction(&created, "create (version)");
    let id = created["id"].as_str().unwrap();
    let done = wait_terminal(&sim, id).await;
    assert_eq!(done["status"], "succeeded");
    let (status, fetched) = call(
        reqwest::Method::GET,
        format!("{api}/predictions/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    spec.prediction(&fetched, "get (succeeded)");
    assert!(fetched["output"].is_array());

    let (status, official) = call(
        reqwest::Method::POST,
        format!("{api}/models/black-forest-labs/flux-1.1-pro/predictions"),
        Some(json!({"input": {"prompt": "spec", "aspect_ratio": "custom", "width": 64, "height": 64}})),
    )
    .await;
    assert_eq!(status, 201);
    spec.prediction(&official, "create (official)");
    assert_eq!(official["version"], "hidden");
    let done = wait_terminal(&sim, official["id"].as_str().unwrap()).await;
    spec.prediction(&done, "get (official, succeeded)");
    assert!(done["output"].is_string(), "flux-1.1-pro returns one URL");

    let (_, slow) = call(
        reqwest::Method::POST,
        format!("{api}/predictions"),
        Some(json!({"version": SDXL, "input": {"prompt": "[sim:slow]"}})),
    )
    .await;
    let (status, canceled) = call(
        reqwest::Method::POST,
        format!("{api}/predictions/{}/cancel", slow["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(canceled["status"], "canceled");
    spec.prediction(&canceled, "cancel");

    for (marker, status) in [("[sim:fail]", "failed"), ("[sim:abort]", "aborted")] {
        let done = run_to_end(&sim, json!({"input": {"prompt": marker}})).await;
        assert_eq!(done["status"], status);
        spec.prediction(&done, status);
    }

    let (status, secret) = call(
        reqwest::Method::GET,
        format!("{api}/webhooks/default/secret"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    spec.check(
        "/paths/~1webhooks~1default~1secret/get/responses/200/content/application~1json/schema",
        &secret,
        "webhook secret",
    );
    let (status, model) = call(
        reqwest::Method::GET,
        format!("{api}/models/stability-ai/sdxl"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    spec.check(
        "/components/schemas/schemas_model_response",
        &model,
        "model",
    );

    let (status, listed) = call(
        reqwest::Method::GET,
        format!("{api}/predictions?created_after=2025-01-01T00:00:00Z"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    spec.list_page(&listed, "list");
    let created: Vec<&str> = listed["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["created_at"].as_str().unwrap())
        .collect();
    assert_eq!(created.len(), 5, "every prediction made above");
    assert!(created.is_sorted_by(|a, b| a >= b), "newest first");
    assert_eq!(
        (&listed["next"], &listed["previous"]),
        (&json!(null), &json!(null))
    );
}

#[tokio::test]
async fn list_pages_match_the_spec() {
    let spec = Spec::load();
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let api = sim.api_base();
    for i in 0..101 {
        let (status, _) = call(
            reqwest::Method::POST,
            format!("{api}/predictions"),
            Some(json!({"version": SDXL, "input": {"prompt": format!("[sim:abort] {i}")}})),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (status, first) = call(
        reqwest::Method::GET,
        format!("{api}/predictions?created_after=2025-01-01T00:00:00Z"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    spec.list_page(&first, "first page");
    assert_eq!(first["results"].as_array().unwrap().len(), 100);
    let next = first["next"].as_str().expect("a second page").to_owned();
    assert!(next.starts_with(&format!("{api}/predictions?")), "{next}");
    assert!(next.contains("created_after="), "filters are kept: {next}");
    let (status, second) = call(reqwest::Method::GET, next, None).await;
    assert_eq!(status, 200);
    spec.list_page(&second, "last page");
    assert_eq!(second["results"].as_array().unwrap().len(), 1);
    assert_eq!(second["next"], json!(null));
    assert_eq!(second["results"][0]["input"]["prompt"], "[sim:abort] 0");

    // Our client reads both pages and follows the simulator's next link.
    let client = ReplicateClient::new(ClientConfig::new(api.clone(), ApiToken::new("t"))).unwrap();
    let now = std::time::SystemTime::now();
    let window = (now - Duration::from_secs(600), now + Duration::from_secs(1));
    let page = client
        .list_predictions(window.0, window.1, None)
        .await
        .unwrap();
    assert_eq!(page.results.len(), 100);
    let last = client
        .list_predictions(window.0, window.1, page.next.as_deref())
        .await
        .unwrap();
    assert_eq!((last.results.len(), last.next), (1, None));

    let (status, _) = call(
        reqwest::Method::GET,
        format!("{api}/predictions?created_before=last%20week"),
        None,
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn simulator_refuses_what_replicate_refuses() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let api = sim.api_base();
    let unauthenticated = reqwest::Client::new()
        .get(format!("{api}/predictions/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let (status, _) = call(
        reqwest::Method::POST,
        format!("{api}/predictions"),
        Some(json!({"version": SDXL, "input": {}, "stream": false, "extra": 1})),
    )
    .await;
    assert_eq!(status, 422, "additionalProperties: false");
    let (status, _) = call(
        reqwest::Method::POST,
        format!("{api}/predictions"),
        Some(json!({"version": "nope", "input": {}})),
    )
    .await;
    assert_eq!(status, 422);
    let (status, _) = call(
        reqwest::Method::GET,
        format!("{api}/predictions/doesnotexist"),
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn webhook_bodies_match_the_spec_and_are_signed_for_the_requested_events() {
    let spec = Spec::load();
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let (_, created) = call(
        reqwest::Method::POST,
        format!("{}/predictions", sim.api_base()),
        Some(json!({"version": SDXL, "input": {"prompt": "hooks", "width": 64, "height": 64},
                    "webhook": format!("{}/hook", receiver.uri()), "webhook_events_filter": ["start", "completed"]})),
    )
    .await;
    wait_terminal(&sim, created["id"].as_str().unwrap()).await;
    let started = Instant::now();
    let requests = loop {
        let requests = receiver.received_requests().await.unwrap();
        if requests.len() >= 2 || started.elapsed() > Duration::from_secs(10) {
            break requests;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let statuses: Vec<String> = requests
        .iter()
        .map(|r| {
            serde_json::from_slice::<Value>(&r.body).unwrap()["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(statuses, vec!["processing", "succeeded"]);
    let verifier = SignatureVerifier::new(SigningSecret::parse(sim.secret()).unwrap());
    for request in &requests {
        let body: Value = serde_json::from_slice(&request.body).unwrap();
        spec.prediction(&body, "webhook body");
        let headers = imagegen_shared::http::signature_headers(&request.headers).unwrap();
        verifier
            .verify(headers, &request.body, std::time::SystemTime::now())
            .expect("signed");
    }

    // With `completed` only, no start event is sent.
    let receiver = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&receiver)
        .await;
    let (_, created) = call(
        reqwest::Method::POST,
        format!("{}/predictions", sim.api_base()),
        Some(
            json!({"version": SDXL, "input": {"prompt": "only done", "width": 64, "height": 64},
                    "webhook": receiver.uri(), "webhook_events_filter": ["completed"]}),
        ),
    )
    .await;
    wait_terminal(&sim, created["id"].as_str().unwrap()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = receiver.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
}

#[tokio::test]
async fn our_client_sends_bodies_the_spec_accepts() {
    let spec = Spec::load();
    let fake = MockServer::start().await;
    let answer = json!({"id": "p", "status": "starting", "model": "m", "version": "hidden", "input": {}, "output": null,
                        "error": null, "data_removed": false, "created_at": "2025-01-01T00:00:00Z", "urls": {}});
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(201).set_body_json(answer))
        .mount(&fake)
        .await;
    let client = ReplicateClient::new(ClientConfig::new(
        format!("{}/v1", fake.uri()),
        ApiToken::new("t"),
    ))
    .unwrap();
    let input = Map::from_iter([("prompt".to_owned(), json!("x"))]);
    let webhook = WebhookTarget {
        url: "https://api.example.com/webhooks/replicate?id=1".into(),
        events: vec![WebhookEvent::Start, WebhookEvent::Completed],
    };
    client
        .create_prediction(
            &ModelRef::parse(&format!("stability-ai/sdxl:{SDXL}")).unwrap(),
            &input,
            Some(&webhook),
            Deadline::MAX,
        )
        .await
        .unwrap();
    client
        .create_prediction(
            &ModelRef::parse("black-forest-labs/flux-schnell").unwrap(),
            &input,
            Some(&webhook),
            Deadline::MAX,
        )
        .await
        .unwrap();
    let requests = fake.received_requests().await.unwrap();
    let versioned: Value = serde_json::from_slice(&requests[0].body).unwrap();
    spec.check(
        "/components/schemas/schemas_version_prediction_request",
        &versioned,
        "version create body",
    );
    let official: Value = serde_json::from_slice(&requests[1].body).unwrap();
    spec.check(
        "/components/schemas/schemas_prediction_request",
        &official,
        "official create body",
    );
    // The check has teeth: a field Replicate does not accept fails it.
    let mut wrong = official.clone();
    wrong["model"] = json!("black-forest-labs/flux-schnell");
    let schema = json!({"$ref": "#/components/schemas/schemas_prediction_request", "components": spec.0["components"].clone()});
    assert!(!jsonschema::is_valid(&schema, &wrong));
}

#[tokio::test]
async fn faults_are_controlled_per_run_through_the_control_endpoint() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let api = sim.api_base();
    let control = api.trim_end_matches("/v1").to_owned();
    let http = reqwest::Client::new();
    let set = |faults: Value| {
        http.post(format!("{control}/_sim/faults"))
            .json(&faults)
            .send()
    };
    assert_eq!(
        set(json!({"create_throttle": 1.0, "throttle_retry_after": 1.0}))
            .await
            .unwrap()
            .status(),
        200
    );
    let throttled = http
        .post(format!("{api}/predictions"))
        .bearer_auth("t")
        .json(&json!({"version": SDXL, "input": {"prompt": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(throttled.status(), 429);
    assert_eq!(throttled.headers()["retry-after"], "1");
    let detail: Value = throttled.json().await.unwrap();
    assert_eq!(
        detail["detail"],
        "Request was throttled. Expected available in 1 second."
    );
    assert_eq!(sim.stats().creates, 0, "a throttled create creates nothing");

    assert_eq!(
        set(json!({"server_error": 1.0})).await.unwrap().status(),
        200
    );
    assert_eq!(
        call(reqwest::Method::GET, format!("{api}/predictions/x"), None)
            .await
            .0,
        503
    );

    assert_eq!(
        set(json!({"download_fail_once": 1.0}))
            .await
            .unwrap()
            .status(),
        200
    );
    let done = run_to_end(
        &sim,
        json!({"input": {"prompt": "files", "width": 64, "height": 64}}),
    )
    .await;
    let url = done["output"][0].as_str().unwrap().to_owned();
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        500,
        "first download fails"
    );
    assert_eq!(
        http.get(&url).send().await.unwrap().status(),
        200,
        "the retry succeeds"
    );

    assert_eq!(
        set(json!({"download_truncate_once": 1.0}))
            .await
            .unwrap()
            .status(),
        200
    );
    let done = run_to_end(
        &sim,
        json!({"input": {"prompt": "cut", "width": 64, "height": 64}}),
    )
    .await;
    let url = done["output"][0].as_str().unwrap().to_owned();
    let whole = sim.file(&url).unwrap();
    let first = http.get(&url).send().await.unwrap();
    assert_eq!(first.content_length(), Some(whole.len() as u64));
    assert!(
        first.bytes().await.is_err(),
        "the body ends before its Content-Length"
    );
    assert_eq!(
        http.get(&url).send().await.unwrap().bytes().await.unwrap(),
        whole
    );

    assert_eq!(set(json!({"abort": 1.0})).await.unwrap().status(), 200);
    assert_eq!(
        run_to_end(&sim, json!({"input": {"prompt": "p"}})).await["status"],
        "aborted"
    );

    let refused = set(json!({"webhook_drop": "often"})).await.unwrap();
    assert_eq!(refused.status(), 422, "bad fault settings are refused");
}
