//! Callbacks to callers: destinations refused before anything is created, signed
//! attempts, backoff, dead-lettering, and repair by the reconciler.

use super::*;

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

/// A name is checked where it resolves, through the DNS port: one private answer among
/// public ones refuses it, a name that does not resolve is refused, and a public one is
/// accepted (nothing is sent at submit).
#[tokio::test]
async fn callback_hosts_are_refused_when_any_of_their_addresses_is_inside() {
    let app = app();
    let public: std::net::IpAddr = "93.184.216.34".parse().unwrap();
    let metadata: std::net::IpAddr = "169.254.169.254".parse().unwrap();
    app.resolver.set("hooks.example.com", vec![public]);
    app.resolver
        .set("rebind.example.com", vec![public, metadata]);
    for (url, refused_for) in [
        ("https://rebind.example.com/hook", Some("metadata")),
        ("https://nowhere.example.com/hook", Some("does not resolve")),
        ("https://hooks.example.com/hook", None),
    ] {
        let (status, view) = submitted(&app, with_callback(url, json!(["completed"]))).await;
        match refused_for {
            Some(reason) => {
                assert_eq!(status, 422, "{url}: {view}");
                let message = view["errors"][0]["message"].as_str().unwrap_or_default();
                assert!(message.contains(reason), "{url}: {message}");
            }
            None => assert_eq!(status, 202, "{url}: {view}"),
        }
    }
    assert_eq!(
        app.replicate.created().len(),
        1,
        "only the public one was created"
    );
    assert!(app.callbacks.sent().is_empty(), "nothing is sent at submit");
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
        crate::ports::callbacks::CallbackOutcome::Rejected { status: 503 },
        crate::ports::callbacks::CallbackOutcome::Unreachable("timed out".into()),
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
        SigningSecret::parse(&secret).unwrap().sign(
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
        .answer_next([crate::ports::callbacks::CallbackOutcome::Rejected { status: 500 }]);
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
        .answer_next([crate::ports::callbacks::CallbackOutcome::Forbidden(
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
