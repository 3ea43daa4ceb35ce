//! Submit: the webhook URL it gives Replicate, validation before anything is written, the
//! result cache, joins, Idempotency-Key replays and take-overs, refused creates, uploads.

use super::*;

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
    crate::http::webhook(
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
    crate::http::webhook(
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
    let hash = crate::http::body::parse_submit_body(fox().to_string().as_bytes())
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

/// A Replicate client that cannot be set up (its token unreadable) is found out before
/// anything is reserved or stored: the submit answers 503 and leaves nothing behind.
#[tokio::test]
async fn a_submit_whose_replicate_client_cannot_be_set_up_leaves_nothing_behind() {
    let app = app();
    app.replicate.fail_setup("SSM is unreachable");
    let (status, problem) = submitted(&app, fox()).await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(app.records.prediction_count(), 0, "no record");
    let usage = json_of(&routes::usage::usage(&app, event("usage", "")).await);
    assert_eq!(usage["predictions"], 0, "nothing reserved: {usage}");
    assert_eq!(usage["cost_usd"], 0.0, "{usage}");
    assert!(app.replicate.created().is_empty());
}
