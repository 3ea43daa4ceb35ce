//! Property tests of the public routes and the webhook parser with hostile input: malformed
//! JSON, wrong types, huge and deeply nested bodies, unicode edge cases, absurd dimensions,
//! oversized data URLs, junk signatures. Every answer is a clear 4xx (or, for a request that
//! happens to be valid, a 2xx) — never a 5xx or a panic — and a refused request writes
//! nothing and reaches nobody.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use imagegen_shared::app::App;
use imagegen_shared::app::Settings;
use imagegen_shared::domain::registry::ModelRegistry;
use imagegen_shared::domain::signing::SigningSecret;
use imagegen_shared::domain::tenancy::{
    ApiKey, KeyRecord, MAX_RATE_PER_MINUTE, TenantId, TenantLimits,
};
use imagegen_shared::domain::time::Timestamp;
use imagegen_shared::ports::PortSet;
use imagegen_shared::testing::fakes::{
    FakeReplicate, MemoryCallbacks, MemoryObjects, MemoryQueue, MemoryRecords, MemoryResolver,
    MemorySource,
};
use lambda_http::Body;
use proptest::prelude::*;
use serde_json::{Value, json};

type TestApp = App<imagegen_shared::testing::fakes::InMemory>;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const API_KEY: &str = "igk_bad_input_property_tests_key_0123456789";

fn app() -> TestApp {
    let settings = Settings::from_lookup(|name| match name {
        "TABLE_NAME"
        | "BUCKET_NAME"
        | "COPY_QUEUE_URL"
        | "CALLBACK_QUEUE_URL"
        | "CALLBACK_DEAD_LETTER_QUEUE_URL"
        | "CREATE_QUEUE_URL" => Some("x".into()),
        "REPLICATE_WEBHOOK_SECRET" => Some(SECRET.into()),
        "PUBLIC_BASE_URL" => Some("https://api.example.com".into()),
        _ => None,
    })
    .unwrap();
    let records = MemoryRecords::default();
    let fuzz = TenantId::parse("fuzz").unwrap();
    records.put_key(KeyRecord::new(
        &ApiKey::parse(API_KEY).unwrap(),
        fuzz.clone(),
        Timestamp::EPOCH,
    ));
    records.put_limits(TenantLimits::new(fuzz, MAX_RATE_PER_MINUTE, None).unwrap());
    let ports = PortSet {
        replicate: FakeReplicate::default(),
        records,
        objects: MemoryObjects::default(),
        downloads: MemorySource::default(),
        queue: MemoryQueue::default(),
        callbacks: MemoryCallbacks::default(),
        resolver: MemoryResolver::default(),
    };
    App::new(ports, ModelRegistry::shipped().unwrap(), settings)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn request(
    method: &str,
    uri: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> lambda_http::Request {
    let mut builder = http::Request::builder()
        .method(method)
        .uri(uri)
        .header("host", "api.example.com")
        .header("authorization", format!("Bearer {API_KEY}"));
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::try_from(name.as_str()),
            http::HeaderValue::try_from(value.as_str()),
        ) {
            builder = builder.header(n, v);
        }
    }
    builder.body(Body::Binary(body)).unwrap()
}

/// Sends one request and checks the property; returns the status.
fn check(
    app: &TestApp,
    rt: &tokio::runtime::Runtime,
    request: lambda_http::Request,
) -> Result<u16, TestCaseError> {
    let writes_before = (
        app.records.prediction_count(),
        app.replicate.created().len(),
        app.objects.keys().len(),
    );
    let response = rt.block_on(imagegen_shared::http::route(app, request));
    let status = response.status().as_u16();
    prop_assert!(
        status < 500,
        "5xx for hostile input: {status} {:?}",
        String::from_utf8_lossy(response.body().as_ref())
    );
    if (400..500).contains(&status) {
        let problem: Value =
            serde_json::from_slice(response.body().as_ref()).expect("problem+json body");
        prop_assert_eq!(problem["status"].as_u64(), Some(u64::from(status)));
        prop_assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
        let writes_after = (
            app.records.prediction_count(),
            app.replicate.created().len(),
            app.objects.keys().len(),
        );
        prop_assert_eq!(
            writes_before,
            writes_after,
            "a refused request changed something"
        );
    }
    Ok(status)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "\\PC{0,20}".prop_map(Value::String),
        // Unicode edge cases: combining marks, RTL, zero-width, astral plane, lone escapes.
        prop::sample::select(vec![
            "",
            " ",
            "\u{0301}",
            "\u{202e}abc",
            "\u{200b}",
            "😀🎨",
            "\u{feff}",
            "a\u{0}b",
            "\\ud800"
        ])
        .prop_map(|s| Value::String(s.to_owned())),
        Just(json!(1e308)),
        Just(json!(-1)),
        Just(json!(u64::MAX)),
    ];
    leaf.prop_recursive(3, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("\\PC{0,8}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "prompt",
    "width",
    "height",
    "num_outputs",
    "aspect_ratio",
    "image",
    "mask",
    "scale",
    "seed",
    "guidance_scale",
    "output_format",
    "megapixels",
    "go_fast",
    "prompt_strength",
    "num_inference_steps",
    "image_prompt",
];

fn submit_body() -> impl Strategy<Value = Value> {
    let model = prop_oneof![
        prop::sample::select(vec![
            "flux-schnell",
            "flux-1.1-pro",
            "sdxl",
            "sdxl-img2img",
            "sd-inpainting",
            "real-esrgan"
        ])
        .prop_map(Value::from),
        json_value(),
    ];
    let input = prop_oneof![
        prop::collection::btree_map(
            prop::sample::select(FIELDS.to_vec()).prop_map(str::to_owned),
            json_value(),
            0..6
        )
        .prop_map(|m| Value::Object(m.into_iter().collect())),
        json_value(),
    ];
    (model, input, prop::option::of(json_value())).prop_map(|(model, input, extra)| {
        let mut body = json!({"model": model, "input": input});
        if let Some(extra) = extra {
            body["extra"] = extra;
        }
        body
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn submit_never_answers_5xx_or_writes_on_refusal(body in submit_body()) {
        let (app, rt) = (app(), runtime());
        check(&app, &rt, request("POST", "/v1/predictions", &[], body.to_string().into_bytes()))?;
    }

    #[test]
    fn arbitrary_bytes_are_a_clean_400(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let (app, rt) = (app(), runtime());
        let status = check(&app, &rt, request("POST", "/v1/predictions", &[], bytes))?;
        prop_assert!(status == 400 || status == 422, "{status}");
    }

    #[test]
    fn absurd_dimensions_and_counts_are_422(width in any::<i64>(), height in any::<f64>(), outputs in any::<i64>()) {
        prop_assume!(height.is_finite());
        let (app, rt) = (app(), runtime());
        let body = json!({"model": "sdxl", "input": {"prompt": "x", "width": width, "height": height, "num_outputs": outputs}});
        let valid = (256..=2048).contains(&width) && width % 8 == 0
            && height.fract() == 0.0 && (256.0..=2048.0).contains(&height) && (height as i64) % 8 == 0
            && (1..=4).contains(&outputs);
        let status = check(&app, &rt, request("POST", "/v1/predictions", &[], body.to_string().into_bytes()))?;
        prop_assert_eq!(status, if valid { 202 } else { 422 });
    }

    #[test]
    fn junk_headers_never_break_submit(key in "\\PC{0,300}", cache in "\\PC{0,40}") {
        let (app, rt) = (app(), runtime());
        let headers = vec![("idempotency-key".to_owned(), key), ("cache-control".to_owned(), cache)];
        let body = json!({"model": "flux-schnell", "input": {"prompt": "hello"}}).to_string().into_bytes();
        check(&app, &rt, request("POST", "/v1/predictions", &headers, body))?;
    }

    #[test]
    fn junk_api_keys_are_401_on_every_route(auth in prop_oneof![
        "\\PC{0,300}",
        "[A-Za-z0-9._~+/=-]{0,300}".prop_map(|k| format!("Bearer {k}")),
        "\\PC{0,40}".prop_map(|k| format!("bearer {k}")),
    ]) {
        let (app, rt) = (app(), runtime());
        let body = json!({"model": "flux-schnell", "input": {"prompt": "hello"}}).to_string().into_bytes();
        for (method, path, body) in [
            ("POST", "/v1/predictions", body),
            ("GET", "/v1/predictions/0123456789abcdef0123456789abcdef", vec![]),
            ("GET", "/v1/usage", vec![]),
        ] {
            let mut request = request(method, path, &[], body);
            match http::HeaderValue::try_from(auth.as_str()) {
                Ok(value) => { request.headers_mut().insert("authorization", value); }
                Err(_) => { request.headers_mut().remove("authorization"); }
            }
            let status = check(&app, &rt, request)?;
            prop_assert_eq!(status, 401, "{} {}", method, path);
        }
    }

    #[test]
    // An empty id is `/v1/predictions/`, the list.
    fn fetch_paths_are_404_not_5xx(id in "\\PC{1,80}") {
        let (app, rt) = (app(), runtime());
        let encoded: String = url_encode(&id);
        let status = check(&app, &rt, request("GET", &format!("/v1/predictions/{encoded}"), &[], vec![]))?;
        prop_assert_eq!(status, 404);
    }

    #[test]
    fn webhooks_with_junk_signatures_are_401(
        body in prop::collection::vec(any::<u8>(), 0..256),
        id in "\\PC{0,40}", timestamp in "\\PC{0,20}", signature in "\\PC{0,200}",
    ) {
        let (app, rt) = (app(), runtime());
        let headers = vec![
            ("webhook-id".to_owned(), id),
            ("webhook-timestamp".to_owned(), timestamp),
            ("webhook-signature".to_owned(), signature),
        ];
        let status = check(&app, &rt, request("POST", "/webhooks/replicate?id=0123456789abcdef0123456789abcdef", &headers, body))?;
        prop_assert_eq!(status, 401);
    }

    #[test]
    fn correctly_signed_garbage_is_400_or_ignored(body in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        json_value().prop_map(|v| v.to_string().into_bytes()),
    ]) {
        let (app, rt) = (app(), runtime());
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
        let signature = SigningSecret::parse(SECRET).unwrap().sign("msg_x", now, &body);
        let headers = vec![
            ("webhook-id".to_owned(), "msg_x".to_owned()),
            ("webhook-timestamp".to_owned(), now.to_string()),
            ("webhook-signature".to_owned(), signature),
        ];
        let status = check(&app, &rt, request("POST", "/webhooks/replicate?id=0123456789abcdef0123456789abcdef", &headers, body))?;
        prop_assert!(status == 400 || status == 200, "{status}");
        prop_assert_eq!(app.records.prediction_count(), 0);
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
fn deeply_nested_and_oversized_bodies_are_refused_cleanly() {
    let (app, rt) = (app(), runtime());
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let response = rt.block_on(imagegen_shared::http::route(
        &app,
        request("POST", "/v1/predictions", &[], deep.into_bytes()),
    ));
    assert_eq!(response.status(), 400);
    let nested_input = format!(
        r#"{{"model":"sdxl","input":{{"prompt":{}"x"{}}}}}"#,
        "{\"a\":".repeat(200),
        "}".repeat(200)
    );
    let response = rt.block_on(imagegen_shared::http::route(
        &app,
        request("POST", "/v1/predictions", &[], nested_input.into_bytes()),
    ));
    assert!(
        response.status() == 400 || response.status() == 422,
        "{}",
        response.status()
    );
    let huge = vec![b'{'; 6 * 1024 * 1024 + 1];
    let response = rt.block_on(imagegen_shared::http::route(
        &app,
        request("POST", "/v1/predictions", &[], huge),
    ));
    assert_eq!(response.status(), 413);
    let big_image = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(vec![0u8; 1024 * 1024 + 1])
    );
    let body = json!({"model": "sdxl-img2img", "input": {"prompt": "x", "image": big_image}});
    let response = rt.block_on(imagegen_shared::http::route(
        &app,
        request(
            "POST",
            "/v1/predictions",
            &[],
            body.to_string().into_bytes(),
        ),
    ));
    assert_eq!(response.status(), 422);
    assert_eq!(app.records.prediction_count(), 0);
    assert!(app.replicate.created().is_empty());
}
