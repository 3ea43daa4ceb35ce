//! Tenants: keys on every route, isolation, rate limits, budgets and what is billed.

use super::*;

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
            crate::http::route(&app, with_key(submit_event(fox()), key)).await,
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
    let response = crate::http::webhook(&app, with_key(event("webhook", ""), None)).await;
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
    crate::http::webhook(
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
    crate::http::webhook(
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
    crate::http::webhook(
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

/// A key stored before keys carried their tenant's limits is still held to them: its
/// tenant's item is read with it.
#[tokio::test]
async fn a_key_that_carries_no_limits_is_held_to_its_tenants() {
    let app = app();
    let old = "igk_key_stored_before_keys_carried_limits_0099";
    let tenant = TenantId::parse("older").unwrap();
    app.records
        .put_limits(TenantLimits::new(tenant, 1, None).unwrap());
    app.records.put_key_without_limits(key_record(old, "older"));
    let (_, next_minute) = app.clock.now().period(Duration::from_secs(60));
    app.clock.advance(next_minute.since(app.clock.now()));
    let submit =
        |text: &str| routes::submit::submit(&app, with_key(submit_event(prompt(text)), Some(old)));
    assert_eq!(submit("a").await.status(), 202);
    assert_eq!(
        submit("b").await.status(),
        429,
        "the rate of the tenant's item"
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
