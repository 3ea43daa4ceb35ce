//! Callers end to end, through the HTTP routes on moto and the simulator: API keys on every
//! `/v1/*` route, tenants isolated from each other, the per-tenant rate limit under
//! concurrent submits, and the monthly budget (refused before anything is created, settled to
//! the actual cost when the prediction ends).

use std::collections::BTreeMap;

use imagegen_shared::app::KEY_CACHE_TTL;
use imagegen_shared::domain::tenancy::ApiKey;
use imagegen_shared::ports::accounts::AccountStore;
use integration_tests::{Stack, client_with_key};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn read(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let www = response
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let mut body: Value = response.json().await.unwrap_or(Value::Null);
    if let Some(www) = www {
        body["_www_authenticate"] = json!(www);
    }
    (status, body)
}

fn prompt(text: &str) -> Value {
    json!({"model": "flux-schnell", "input": {"prompt": text, "megapixels": "0.25"}})
}

#[tokio::test]
async fn every_route_refuses_missing_malformed_unknown_and_revoked_keys() {
    // In process: the revocation is seen once `app`'s clock passes the key cache's lifetime.
    let stack = Stack::start_in_process().await;
    let (status, mine) = stack.submit(&prompt("keyed")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{mine}");
    let id = mine["id"].as_str().unwrap();

    let revoked = stack.new_key("it", 60, None).await;
    let usage = format!("{}/v1/usage", stack.base);
    let ok = client_with_key(&revoked).get(&usage).send().await.unwrap();
    assert_eq!(
        ok.status(),
        StatusCode::OK,
        "the key works before it is revoked"
    );
    let key_id = ApiKey::parse(&revoked).unwrap().hash().key_id();
    let now = stack.app.clock.now();
    assert!(stack.app.records.revoke_key(&key_id, now).await.unwrap());
    // Revocation takes effect everywhere within the key cache's lifetime.
    stack.app.clock.advance(KEY_CACHE_TTL);

    let creates = stack.sim.stats().creates;
    let unknown = ApiKey::generate();
    let cases: [(&str, Option<String>); 5] = [
        ("missing", None),
        ("malformed", Some("Bearer not-a-key".to_owned())),
        ("not bearer", Some(format!("Basic {}", unknown.expose()))),
        ("unknown", Some(format!("Bearer {}", unknown.expose()))),
        ("revoked", Some(format!("Bearer {revoked}"))),
    ];
    for (case, authorization) in cases {
        let requests = [
            stack
                .plain
                .post(format!("{}/v1/predictions", stack.base))
                .json(&prompt(case)),
            stack
                .plain
                .get(format!("{}/v1/predictions/{id}", stack.base)),
            stack.plain.get(&usage),
        ];
        for request in requests {
            let request = match &authorization {
                Some(value) => request.header("authorization", value),
                None => request,
            };
            let (status, body) = read(request.send().await.unwrap()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{case}: {body}");
            assert_eq!(body["type"], "/problems/unauthorized", "{case}");
            assert_eq!(body["_www_authenticate"], "Bearer realm=\"api\"", "{case}");
        }
    }
    assert_eq!(stack.sim.stats().creates, creates, "nothing was created");
}

#[tokio::test]
async fn two_tenants_cannot_read_replay_or_reuse_each_others_work() {
    let stack = Stack::start().await;
    let other = client_with_key(&stack.new_key("other", 60, None).await);
    let submit_as = |client: &reqwest::Client, body: &Value, key: Option<&str>| {
        let mut request = client
            .post(format!("{}/v1/predictions", stack.base))
            .json(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send()
    };

    let (status, mine) = read(
        submit_as(&stack.http, &prompt("shared input"), Some("order-7"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{mine}");
    let id = mine["id"].as_str().unwrap().to_owned();
    let done = stack.wait_terminal(&id).await;
    assert_eq!(done["status"], "succeeded");

    // Reading it as the other tenant is exactly an unknown id.
    let get = |client: &reqwest::Client, id: &str| {
        client
            .get(format!("{}/v1/predictions/{id}", stack.base))
            .send()
    };
    let theirs = read(get(&other, &id).await.unwrap()).await;
    let unknown = read(
        get(&other, "0123456789abcdef0123456789abcdef")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(theirs.0, StatusCode::NOT_FOUND);
    assert_eq!(theirs, unknown);

    // The same input is a new prediction of its own, never the other's cached result; the
    // same Idempotency-Key with another body is no conflict.
    let (status, own) = read(
        submit_as(&other, &prompt("shared input"), Some("order-7"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{own}");
    assert_eq!(own["cached"], json!(false));
    assert_ne!(own["id"], mine["id"]);
    let (status, reused) = read(
        submit_as(&other, &prompt("another body"), Some("order-7"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, reused["type"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("/problems/idempotency-key-reused")
        ),
        "within one tenant the key is still bound to its first body"
    );
    let (status, replay) = read(
        submit_as(&stack.http, &prompt("shared input"), Some("order-7"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "replayed as first answered: {replay}"
    );
    assert_eq!(
        replay["id"], mine["id"],
        "each tenant replays its own answer"
    );

    // Usage is per tenant.
    let usage = |client: &reqwest::Client| client.get(format!("{}/v1/usage", stack.base)).send();
    let (_, mine) = read(usage(&stack.http).await.unwrap()).await;
    let (_, theirs) = read(usage(&other).await.unwrap()).await;
    assert_eq!(
        (mine["tenant"].as_str(), mine["predictions"].as_u64()),
        (Some("it"), Some(1))
    );
    assert_eq!(
        (theirs["tenant"].as_str(), theirs["predictions"].as_u64()),
        (Some("other"), Some(1))
    );
}

#[tokio::test]
async fn the_rate_limit_holds_under_concurrent_submits_without_touching_another_tenant() {
    let stack = Stack::start().await;
    let limited = client_with_key(&stack.new_key("limited", 8, None).await);
    // Stay inside one minute's window.
    let now = stack.app.clock.now();
    let (_, next_minute) = now.period(std::time::Duration::from_secs(60));
    let left = next_minute.since(now);
    if left < std::time::Duration::from_secs(15) {
        tokio::time::sleep(left).await;
    }
    let burst = (0..30).map(|i| {
        let client = if i % 3 == 2 {
            stack.http.clone()
        } else {
            limited.clone()
        };
        let url = format!("{}/v1/predictions", stack.base);
        let body = prompt(&format!("burst {i}"));
        tokio::spawn(async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
            (i % 3 == 2, response.status(), retry_after)
        })
    });
    let mut outcomes: BTreeMap<(bool, u16), usize> = BTreeMap::new();
    for handle in burst {
        let (other, status, retry_after) = handle.await.unwrap();
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(
                retry_after.is_some_and(|s| (1..=60).contains(&s)),
                "{retry_after:?}"
            );
        }
        *outcomes.entry((other, status.as_u16())).or_default() += 1;
    }
    assert_eq!(
        outcomes,
        BTreeMap::from([((false, 202), 8), ((false, 429), 12), ((true, 202), 10)]),
        "exactly the limit of the limited tenant's 20 submits get in; the other tenant's 10 all do"
    );
}

#[tokio::test]
async fn the_budget_refuses_before_creating_and_settles_on_completion() {
    let stack = Stack::start().await;
    // Two flux-schnell images ($0.003 each) fit in $0.007; a third does not.
    let capped = client_with_key(&stack.new_key("capped", 60, Some(7_000)).await);
    let submit = |text: &str| {
        capped
            .post(format!("{}/v1/predictions", stack.base))
            .json(&prompt(text))
            .send()
    };
    let (status, first) = read(submit("first").await.unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["cost"], json!({"estimated_usd": 0.003, "usd": null}));
    let (status, _) = read(submit("second").await.unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let creates = stack.sim.stats().creates;
    let (status, refused) = read(submit("third").await.unwrap()).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "{refused}");
    assert_eq!(refused["type"], "/problems/budget-exhausted");
    assert_eq!(
        stack.sim.stats().creates,
        creates,
        "refused before creating"
    );

    // Settled on completion: the actual cost is on the prediction and in the month. The
    // second one fails (an official model bills no image then): its estimate is given back.
    let id = first["id"].as_str().unwrap();
    let done = stack.wait_terminal_as(&capped, id).await;
    assert_eq!(done["status"], "succeeded");
    assert_eq!(done["cost"], json!({"estimated_usd": 0.003, "usd": 0.003}));
    let (status, doomed) = read(submit_raw(&capped, &stack, "doomed [sim:fail]").await).await;
    assert_eq!(status, StatusCode::PAYMENT_REQUIRED, "still over: {doomed}");
    let usage = |client: &reqwest::Client| client.get(format!("{}/v1/usage", stack.base)).send();
    let (_, before) = read(usage(&capped).await.unwrap()).await;
    assert_eq!(before["cost_usd"], 0.006, "{before}");

    // A second budgeted tenant: one success and one failure, then exact figures.
    let other = client_with_key(&stack.new_key("settled", 60, Some(6_000)).await);
    let (_, ok) = read(submit_raw(&other, &stack, "fine").await).await;
    let (_, failing) = read(submit_raw(&other, &stack, "broken [sim:fail]").await).await;
    let ok = stack
        .wait_terminal_as(&other, ok["id"].as_str().unwrap())
        .await;
    let failing = stack
        .wait_terminal_as(&other, failing["id"].as_str().unwrap())
        .await;
    assert_eq!(
        (ok["status"].as_str(), failing["status"].as_str()),
        (Some("succeeded"), Some("failed"))
    );
    assert_eq!(failing["cost"], json!({"estimated_usd": 0.003, "usd": 0.0}));
    let (_, settled) = read(usage(&other).await.unwrap()).await;
    assert_eq!(
        (
            settled["predictions"].as_u64(),
            settled["images"].as_u64(),
            settled["cost_usd"].as_f64()
        ),
        (Some(2), Some(1), Some(0.003)),
        "the failure's estimate was replaced by its actual cost: {settled}"
    );
    let (status, _) = read(submit_raw(&other, &stack, "fits again").await).await;
    assert_eq!(status, StatusCode::ACCEPTED, "the budget has room again");

    let (_, usage) = read(usage(&capped).await.unwrap()).await;
    assert_eq!(usage["tenant"], "capped");
    assert_eq!(usage["predictions"], 2);
    assert_eq!(usage["budget_usd"], 0.007);
    assert!(
        usage["month"].as_str().is_some_and(|m| m.len() == 7),
        "{usage}"
    );
    // A cached answer costs nothing and works with the budget spent.
    let (status, cached) = read(submit("first").await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{cached}");
    assert_eq!(cached["cost"], json!({"estimated_usd": 0.0, "usd": 0.0}));
}

async fn submit_raw(client: &reqwest::Client, stack: &Stack, text: &str) -> reqwest::Response {
    client
        .post(format!("{}/v1/predictions", stack.base))
        .json(&prompt(text))
        .send()
        .await
        .unwrap()
}
