//! End to end through the HTTP routes: submit → simulator → signed webhook → S3 and
//! DynamoDB on moto → fetch with presigned download links.

use std::time::Duration;

use integration_tests::{Stack, noise_png_data_url, png_data_url, webhook_query};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn decoded_size(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("a real image");
    (img.width(), img.height())
}

/// Submits, waits for success, downloads every output, and checks type and size.
async fn run_to_success(
    stack: &Stack,
    body: Value,
    expected: (u32, u32),
    outputs: usize,
    content_type: &str,
) -> Value {
    let (status, submitted) = stack.submit(&body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{submitted}");
    assert_eq!(submitted["cached"], json!(false));
    assert_eq!(submitted["output"], json!([]));
    let id = submitted["id"].as_str().expect("id").to_owned();
    let done = stack.wait_terminal(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    let list = done["output"].as_array().expect("output list");
    assert_eq!(list.len(), outputs, "{done}");
    for output in list {
        assert_eq!(output["content_type"], content_type);
        let bytes = stack.download_verified(output).await;
        assert_eq!(decoded_size(&bytes), expected);
    }
    assert!(
        done["completed_at"].is_string() && done["started_at"].is_string(),
        "{done}"
    );
    assert!(done["metrics"]["predict_time"].is_number(), "{done}");
    done
}

#[tokio::test]
async fn flux_schnell_end_to_end() {
    let stack = Stack::start().await;
    let done = run_to_success(
        &stack,
        json!({"model": "flux-schnell", "input": {"prompt": "a red fox", "megapixels": "0.25", "num_outputs": 2, "aspect_ratio": "16:9"}}),
        (672, 384),
        2,
        "image/webp",
    )
    .await;
    assert_eq!(done["input"]["go_fast"], json!(true), "defaults applied");
    assert_eq!(done["model"], "flux-schnell");
    assert_eq!(done["version"], Value::Null);
    // Outputs sit under deterministic keys.
    let id = done["id"].as_str().unwrap();
    let mut keys = stack.object_keys().await;
    keys.sort();
    assert_eq!(
        keys,
        vec![
            format!("outputs/{id}/0.webp"),
            format!("outputs/{id}/1.webp")
        ]
    );
}

#[tokio::test]
async fn flux_pro_single_url_output_is_a_list() {
    let stack = Stack::start().await;
    run_to_success(
        &stack,
        json!({"model": "flux-1.1-pro", "input": {"prompt": "a castle", "aspect_ratio": "custom", "width": 320, "height": 256, "output_format": "jpg"}}),
        (320, 256),
        1,
        "image/jpeg",
    )
    .await;
}

#[tokio::test]
async fn sdxl_by_alias_and_by_pinned_version() {
    let stack = Stack::start().await;
    let done = run_to_success(
        &stack,
        json!({"model": "sdxl", "input": {"prompt": "a robot", "width": 256, "height": 320}}),
        (256, 320),
        1,
        "image/png",
    )
    .await;
    assert_eq!(
        done["version"],
        "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc"
    );
    run_to_success(
        &stack,
        json!({"model": "stability-ai/sdxl:7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc",
               "input": {"prompt": "another robot", "width": 256, "height": 256}}),
        (256, 256),
        1,
        "image/png",
    )
    .await;
}

#[tokio::test]
async fn sdxl_img2img_inpainting_and_upscaling() {
    let stack = Stack::start().await;
    run_to_success(
        &stack,
        json!({"model": "sdxl-img2img", "input": {"prompt": "watercolour", "image": png_data_url(16, 16), "width": 256, "height": 256, "prompt_strength": 0.6}}),
        (256, 256),
        1,
        "image/png",
    )
    .await;
    run_to_success(
        &stack,
        json!({"model": "sd-inpainting", "input": {"prompt": "a hat", "image": png_data_url(16, 16), "mask": png_data_url(16, 16), "width": 256, "height": 192}}),
        (256, 192),
        1,
        "image/png",
    )
    .await;
    run_to_success(
        &stack,
        json!({"model": "real-esrgan", "input": {"image": png_data_url(24, 16), "scale": 2}}),
        (48, 32),
        1,
        "image/png",
    )
    .await;
}

/// The contract allows inline images up to 1 MB decoded: each works end to end, and the
/// record and every answer hold a short reference instead of the bytes.
#[tokio::test]
async fn inline_images_at_the_cap_work_end_to_end() {
    let stack = Stack::start().await;
    let big = noise_png_data_url(1_000_000);
    let decoded = big.len() / 4 * 3;
    assert!((900_000..=1_048_576).contains(&decoded), "{decoded} bytes");
    let done = run_to_success(
        &stack,
        json!({"model": "sdxl-img2img", "input": {"prompt": "watercolour", "image": big, "width": 256, "height": 256}}),
        (256, 256),
        1,
        "image/png",
    )
    .await;
    assert!(
        done["input"]["image"]
            .as_str()
            .unwrap()
            .starts_with("inline://")
    );
    assert!(done.to_string().len() < 8192, "no image in the answer");
    let mask = noise_png_data_url(990_000);
    let done = run_to_success(
        &stack,
        json!({"model": "sd-inpainting", "input": {"prompt": "a hat", "image": noise_png_data_url(1_000_000), "mask": mask, "width": 256, "height": 192}}),
        (256, 192),
        1,
        "image/png",
    )
    .await;
    assert!(
        done["input"]["mask"]
            .as_str()
            .unwrap()
            .starts_with("inline://")
    );
    // Content-addressed: the same image in both requests is one object, the mask another.
    let keys = stack.object_keys().await;
    assert_eq!(
        keys.iter().filter(|k| k.starts_with("inputs/")).count(),
        2,
        "{keys:?}"
    );
    // Replicate got a URL it could fetch (the simulator decoded the image from it).
    let sent = stack.sim.predictions();
    assert!(
        sent.iter().all(|p| p["input"]["image"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://127.0.0.1"))),
        "{sent:?}"
    );
}

/// A create whose answer is lost (a gateway error after creating, or an answer later than
/// the client waits) is answered with the kept record, never repeated, and tied to its
/// Replicate prediction; the outputs arrive as usual.
#[tokio::test]
async fn ambiguous_creates_are_found_not_repeated() {
    let stack = Stack::start().await;
    // The third loses every webhook too: only Replicate's list can tie the record.
    for (faults, marker) in [
        (json!({"create_lost": 1.0}), ""),
        (json!({"create_slow": 1.0, "create_slow_ms": 11000}), ""),
        (json!({"create_lost": 1.0}), " [sim:no-webhook]"),
    ] {
        stack
            .sim
            .set_faults(serde_json::from_value(faults.clone()).unwrap());
        let body = json!({"model": "flux-schnell", "input": {"prompt": format!("ambiguous {faults}{marker}"), "megapixels": "0.25"}});
        let response = stack
            .http
            .post(format!("{}/v1/predictions", stack.base))
            .header("idempotency-key", format!("amb-{faults}{marker}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{faults}");
        let first: Value = response.json().await.unwrap();
        stack.sim.set_faults(Default::default());
        let id = first["id"].as_str().unwrap();
        let (status, again) = stack.submit(&body).await;
        assert!(status.is_success(), "{again}");
        assert_eq!(
            again["id"], first["id"],
            "the same body joins the kept record"
        );
        let done = stack.wait_terminal(id).await;
        assert_eq!(done["status"], "succeeded", "{faults}: {done}");
        let matching = stack
            .sim
            .predictions()
            .into_iter()
            .filter(|p| p["input"]["prompt"] == body["input"]["prompt"])
            .count();
        assert_eq!(matching, 1, "{faults}: one Replicate prediction");
    }
    assert!(stack.sim.stats().lists >= 1, "{:?}", stack.sim.stats());
}

#[tokio::test]
async fn identical_request_is_answered_from_cache_and_no_cache_starts_anew() {
    let stack = Stack::start().await;
    let body =
        json!({"model": "flux-schnell", "input": {"prompt": "cache me", "megapixels": "0.25"}});
    let first = run_to_success(&stack, body.clone(), (512, 512), 1, "image/webp").await;
    // Same request spelled differently (defaults explicit, other key order): still a hit.
    let same = json!({"input": {"megapixels": "0.25", "go_fast": true, "prompt": "cache me"}, "model": "black-forest-labs/flux-schnell"});
    let (status, cached) = stack.submit(&same).await;
    assert_eq!(status, StatusCode::OK, "{cached}");
    assert_eq!(cached["cached"], json!(true));
    assert_eq!(cached["id"], first["id"]);
    assert_eq!(cached["status"], "succeeded");
    stack.download_verified(&cached["output"][0]).await;
    assert_eq!(stack.sim.stats().creates, 1);

    let fresh = stack
        .http
        .post(format!("{}/v1/predictions", stack.base))
        .header("cache-control", "no-cache")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::ACCEPTED);
    let fresh: Value = fresh.json().await.unwrap();
    assert_ne!(fresh["id"], first["id"]);
    assert_eq!(stack.sim.stats().creates, 2);
}

#[tokio::test]
async fn concurrent_identical_submits_create_one_replicate_prediction() {
    let stack = Stack::start().await;
    let body = json!({"model": "sdxl", "input": {"prompt": "one of a kind", "width": 256, "height": 256, "seed": 7}});
    let answers = futures_join(&stack, &body, 8).await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|(_, v)| v["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 1, "{answers:?}");
    for (status, _) in &answers {
        assert!(
            *status == StatusCode::ACCEPTED || *status == StatusCode::OK,
            "{status}"
        );
    }
    assert_eq!(stack.sim.stats().creates, 1);
    let id = ids.into_iter().next().unwrap();
    assert_eq!(stack.wait_terminal(&id).await["status"], "succeeded");
}

async fn futures_join(stack: &Stack, body: &Value, n: usize) -> Vec<(StatusCode, Value)> {
    let mut handles = Vec::new();
    for _ in 0..n {
        let http = stack.http.clone();
        let url = format!("{}/v1/predictions", stack.base);
        let body = body.clone();
        handles.push(tokio::spawn(async move {
            let response = http.post(url).json(&body).send().await.unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }));
    }
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test]
async fn idempotency_key_returns_the_same_prediction_and_refuses_another_body() {
    let stack = Stack::start().await;
    let send = |body: Value| {
        stack
            .http
            .post(format!("{}/v1/predictions", stack.base))
            .header("idempotency-key", "order-1234")
            .header("cache-control", "no-cache")
            .json(&body)
            .send()
    };
    let body = json!({"model": "sdxl", "input": {"prompt": "idem", "width": 256, "height": 256}});
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let again = send(body.clone()).await.unwrap();
    assert_eq!(
        again.status(),
        StatusCode::ACCEPTED,
        "replayed as first answered"
    );
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(
        stack.sim.stats().creates,
        1,
        "no-cache does not bypass the idempotency key"
    );
    let other = send(json!({"model": "sdxl", "input": {"prompt": "something else"}}))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = other.json().await.unwrap();
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
}

fn signed_headers(secret: &str, body: &[u8], timestamp: i64) -> Vec<(&'static str, String)> {
    let secret = imagegen_shared::domain::signing::SigningSecret::parse(secret).unwrap();
    vec![
        ("webhook-id", "msg_test".to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        (
            "webhook-signature",
            secret.sign("msg_test", timestamp, body),
        ),
    ]
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn post_webhook(
    stack: &Stack,
    id: &str,
    body: &[u8],
    headers: &[(&str, String)],
) -> (StatusCode, Value) {
    let query = webhook_query(stack, id).await;
    let mut request = stack
        .http
        .post(format!("{}/webhooks/replicate?{query}", stack.base))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn forged_stale_and_missing_signatures_are_refused_and_change_nothing() {
    let stack = Stack::start().await;
    let (_, submitted) = stack
        .submit(&json!({"model": "sdxl", "input": {"prompt": "guarded [sim:no-webhook] [sim:slow]", "width": 256, "height": 256}}))
        .await;
    let id = submitted["id"].as_str().unwrap();
    let body =
        json!({"id": "forged", "status": "succeeded", "output": ["https://evil.example/x.png"]})
            .to_string();
    let cases = [
        ("missing", vec![]),
        (
            "forged",
            signed_headers(
                "whsec_c2VjcmV0c2VjcmV0c2VjcmV0",
                body.as_bytes(),
                now_secs(),
            ),
        ),
        (
            "stale",
            signed_headers(stack.sim.secret(), body.as_bytes(), now_secs() - 360),
        ),
        (
            "future",
            // A minute past the 5-minute tolerance: the request may reach the verifier
            // seconds after it was signed on a loaded machine.
            signed_headers(stack.sim.secret(), body.as_bytes(), now_secs() + 360),
        ),
    ];
    for (case, headers) in cases {
        let (status, problem) = post_webhook(&stack, id, body.as_bytes(), &headers).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {problem}");
        assert_eq!(problem["type"], "/problems/invalid-signature", "{case}");
    }
    let (_, now) = stack.get(id).await;
    assert_ne!(now["status"], "succeeded");
    assert!(stack.object_keys().await.is_empty());
}

#[tokio::test]
async fn duplicate_and_out_of_order_webhooks_change_nothing() {
    let stack = Stack::start().await;
    // The simulator sends the completed webhook twice (the service asks for no `start`
    // deliveries; an older state arriving late is replayed below).
    let (_, submitted) = stack
        .submit(&json!({"model": "sdxl", "input": {"prompt": "twice [sim:duplicate] [sim:reorder]", "width": 256, "height": 256}}))
        .await;
    let id = submitted["id"].as_str().unwrap().to_owned();
    stack.wait_record(&id, |r| r.status.is_terminal()).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // let the late deliveries land
    let (_, done) = stack.get(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(
        stack.sim.stats().webhooks_delivered >= 2,
        "{:?}",
        stack.sim.stats()
    );

    // A replayed older state, correctly signed and fresh, is still ignored.
    let replicate_id = stack.replicate_id(&id).await;
    let mut stale = stack.sim.prediction(&replicate_id).unwrap();
    stale["status"] = json!("processing");
    let body = stale.to_string();
    let (status, receipt) = post_webhook(
        &stack,
        &id,
        body.as_bytes(),
        &signed_headers(stack.sim.secret(), body.as_bytes(), now_secs()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(receipt["result"], "ignored");
    let (_, after) = stack.get(&id).await;
    assert_eq!(after["status"], "succeeded");
    assert_eq!(after["output"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_lost_webhook_is_recovered_by_fetch() {
    let stack = Stack::start().await;
    let (_, submitted) = stack
        .submit(&json!({"model": "flux-schnell", "input": {"prompt": "lost [sim:no-webhook]", "megapixels": "0.25"}}))
        .await;
    let id = submitted["id"].as_str().unwrap();
    let done = stack.wait_terminal(id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    stack.download_verified(&done["output"][0]).await;
    assert_eq!(stack.sim.stats().webhooks_delivered, 0);
    assert!(stack.sim.stats().gets >= 1);
}

#[tokio::test]
async fn failed_and_aborted_predictions_are_reported_and_never_cached() {
    let stack = Stack::start().await;
    for (marker, status) in [("[sim:fail]", "failed"), ("[sim:abort]", "aborted")] {
        let body = json!({"model": "sdxl", "input": {"prompt": format!("doomed {marker}"), "width": 256, "height": 256}});
        let (_, submitted) = stack.submit(&body).await;
        let id = submitted["id"].as_str().unwrap().to_owned();
        stack.wait_record(&id, |r| r.status.is_terminal()).await;
        let (_, done) = stack.get(&id).await;
        assert_eq!(done["status"], status, "{done}");
        assert!(
            done["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{done}"
        );
        assert_eq!(done["output"], json!([]));
        let (again_status, again) = stack.submit(&body).await;
        assert_eq!(again_status, StatusCode::ACCEPTED, "{again}");
        assert_ne!(
            again["id"], done["id"],
            "a {status} prediction is not served from cache"
        );
    }
}

#[tokio::test]
async fn a_canceled_prediction_is_reported() {
    let stack = Stack::start().await;
    let (_, submitted) = stack
        .submit(&json!({"model": "sdxl", "input": {"prompt": "cancel me [sim:slow]", "width": 256, "height": 256}}))
        .await;
    let id = submitted["id"].as_str().unwrap().to_owned();
    stack.wait_record(&id, |r| r.replicate_id.is_some()).await;
    let replicate_id = stack.replicate_id(&id).await;
    let canceled = stack
        .http
        .post(format!(
            "{}/predictions/{replicate_id}/cancel",
            stack.sim.api_base()
        ))
        .bearer_auth("r8_test")
        .send()
        .await
        .unwrap();
    assert_eq!(canceled.status(), StatusCode::OK);
    stack.wait_record(&id, |r| r.status.is_terminal()).await;
    assert_eq!(stack.get(&id).await.1["status"], "canceled");
}

#[tokio::test]
async fn outputs_from_hosts_outside_the_allowlist_are_refused() {
    let stack = Stack::start().await;
    let (_, submitted) = stack
        .submit(&json!({"model": "sdxl", "input": {"prompt": "elsewhere [sim:foreign-host]", "width": 256, "height": 256}}))
        .await;
    let id = submitted["id"].as_str().unwrap().to_owned();
    stack.wait_record(&id, |r| r.status.is_terminal()).await;
    let (_, done) = stack.get(&id).await;
    assert_eq!(done["status"], "failed", "{done}");
    assert!(
        done["error"]
            .as_str()
            .unwrap()
            .contains("OUTPUT_HOST_ALLOWLIST"),
        "{done}"
    );
    assert!(stack.object_keys().await.is_empty());
    assert_eq!(stack.sim.stats().file_downloads, 0);
}

#[tokio::test]
async fn malformed_invalid_unknown_and_oversized_requests() {
    // In process: the 5.9 MB body below tests the handler's bounded parsing. Behind API
    // Gateway its event (the body JSON-escaped into a string) passes Lambda's 6 MB and is
    // refused with 413 before any handler runs.
    let stack = Stack::start_in_process().await;
    let post_raw = |body: Vec<u8>| {
        stack
            .http
            .post(format!("{}/v1/predictions", stack.base))
            .body(body)
            .send()
    };
    let bad_json = post_raw(b"{\"model\": ".to_vec()).await.unwrap();
    assert_eq!(bad_json.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        bad_json.headers()["content-type"],
        "application/problem+json"
    );

    let oversized = post_raw(vec![b' '; 6 * 1024 * 1024 + 1]).await.unwrap();
    assert_eq!(oversized.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // 500,000 unknown keys in 5.9 MB: a small 422 that says how many.
    let mut many = String::from("{\"model\": \"flux-schnell\", \"input\": {\"prompt\": \"x\"}");
    for i in 0..500_000 {
        many.push_str(&format!(",\"k{i}\":0"));
    }
    many.push('}');
    assert!(many.len() < 6 * 1024 * 1024);
    let amplified = post_raw(many.into_bytes()).await.unwrap();
    assert_eq!(amplified.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let text = amplified.text().await.unwrap();
    assert!(text.len() < 64 * 1024, "{} bytes", text.len());
    let problem: Value = serde_json::from_str(&text).unwrap();
    assert!(problem["errors"].as_array().unwrap().len() <= 20);
    assert!(
        problem["detail"].as_str().unwrap().contains("500000"),
        "{problem}"
    );

    let (status, problem) = stack
        .submit(&json!({"model": "dall-e-3", "input": {"prompt": "x"}}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem["type"], "/problems/unknown-model");

    let (status, problem) = stack
        .submit(&json!({"model": "flux-schnell", "input": {"prompt": "", "num_outputs": 9, "steps": 3}}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        vec!["input.num_outputs", "input.prompt", "input.steps"],
        "{problem}"
    );

    let (status, _) = stack.get("0123456789abcdef0123456789abcdef").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = stack.get("not-an-id").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(stack.sim.stats().creates, 0, "nothing reached Replicate");
}

#[tokio::test]
async fn the_reconciler_saves_outputs_when_webhooks_are_lost_and_nobody_fetches() {
    let stack = Stack::start_with(|vars| {
        vars.insert("RECONCILE_AFTER_SECONDS".into(), "1".into());
    })
    .await;
    let mut ids = Vec::new();
    for prompt in [
        "kept [sim:no-webhook]",
        "kept too [sim:no-webhook] [sim:fail]",
    ] {
        let (_, submitted) = stack
            .submit(
                &json!({"model": "sdxl", "input": {"prompt": prompt, "width": 256, "height": 256}}),
            )
            .await;
        ids.push(submitted["id"].as_str().unwrap().to_owned());
    }
    let early = stack.app.reconcile(None).await;
    assert_eq!(early.examined, 0, "younger than the threshold: left alone");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let report = stack.app.reconcile(None).await;
    // The failed one is ended; the succeeded one's copy is queued for the copier.
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
    stack
        .wait_record(&ids[0], |r| {
            r.status == imagegen_shared::domain::replicate::PredictionStatus::Succeeded
        })
        .await;
    stack
        .wait_record(&ids[1], |r| {
            r.status == imagegen_shared::domain::replicate::PredictionStatus::Failed
        })
        .await;
    assert_eq!(stack.object_keys().await.len(), 1);
    assert_eq!(
        stack.app.reconcile(None).await.examined,
        0,
        "terminal predictions leave the open index"
    );
}
