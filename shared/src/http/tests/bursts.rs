//! Bursts: creates over the rate wait in the create queue, in order, and past the backlog
//! submits are refused.

use super::*;

#[tokio::test]
async fn a_create_throttled_past_the_retry_budget_waits_in_the_create_queue() {
    let app = app();
    app.replicate.fail_next_create(ReplicateError::Throttled {
        retry_after: Some(Duration::from_secs(3)),
        attempts: 4,
    });
    let (status, queued) = submitted(&app, fox()).await;
    assert_eq!(status, 202, "{queued}");
    assert_eq!(queued["status"], "queued");
    let jobs = app.queue.drain_creates();
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].1,
        Duration::from_secs(3),
        "invisible for Replicate's Retry-After"
    );
    // Not before its time; then created, and going on like any other.
    let early = app.drain_create(&jobs[0].0).await.unwrap();
    assert!(
        matches!(early, crate::app::CreateDisposition::RetryAfter(w) if w > Duration::from_secs(2) && w <= Duration::from_secs(3)),
        "{early:?}"
    );
    app.clock.advance(Duration::from_secs(3));
    assert_eq!(
        app.drain_create(&jobs[0].0).await.unwrap(),
        crate::app::CreateDisposition::Done
    );
    assert_eq!(app.replicate.created().len(), 1);
    let view = fetched(&app, queued["id"].as_str().unwrap()).await;
    assert_eq!(view["status"], "starting", "{view}");
    assert_eq!(view["queue"], Value::Null);
    // A second run of the same job (SQS delivers at least once) creates nothing more.
    assert_eq!(
        app.drain_create(&jobs[0].0).await.unwrap(),
        crate::app::CreateDisposition::Done
    );
    assert_eq!(app.replicate.created().len(), 1);
}

#[tokio::test]
async fn over_the_create_rate_submits_queue_in_order_and_past_the_backlog_are_refused() {
    // Two a minute, at most two minutes of backlog.
    let app = app_with(&[
        ("REPLICATE_CREATES_PER_MINUTE", "2"),
        ("MAX_QUEUE_SECONDS", "120"),
    ]);
    let mut views = Vec::new();
    for n in 0..5 {
        let (status, view) = submitted(
            &app,
            json!({"model": "flux-schnell", "input": {"prompt": format!("burst {n}")}}),
        )
        .await;
        assert_eq!(status, 202, "{view}");
        views.push(view);
    }
    assert_eq!(views[0]["status"], "starting", "the first goes at once");
    for (n, view) in views.iter().enumerate().skip(1) {
        assert_eq!(view["status"], "queued", "{view}");
        assert_eq!(view["queue"]["position"], json!(n), "{view}");
    }
    let response = routes::submit::submit(
        &app,
        submit_event(json!({"model": "flux-schnell", "input": {"prompt": "one too many"}})),
    )
    .await;
    assert_eq!(response.status(), 503);
    assert_eq!(json_of(&response)["type"], "/problems/queue-full");
    assert_eq!(
        response.headers()["retry-after"],
        "30",
        "until the backlog is two minutes"
    );
    assert_eq!(app.replicate.created().len(), 1);
    // Cancel the second queued one: it ends at once, never created.
    let canceled = routes::cancel::cancel(
        &app,
        cancel_event(views[2]["id"].as_str().unwrap(), Some(FIXTURE_KEY)),
    )
    .await;
    assert_eq!(json_of(&canceled)["status"], "canceled");
    // The drainer, as time passes: each in its slot, the canceled one skipped.
    let jobs = app.queue.drain_creates();
    assert_eq!(jobs.len(), 4);
    for (n, (_, delay)) in jobs.iter().enumerate() {
        // As SQS takes it: whole seconds, rounded up.
        let seconds = delay.as_millis().div_ceil(1000);
        assert_eq!(seconds, 30 * (n as u128 + 1), "job {n}");
    }
    app.clock.advance(Duration::from_secs(120));
    for (job, _) in &jobs {
        assert_eq!(
            app.drain_create(job).await.unwrap(),
            crate::app::CreateDisposition::Done
        );
    }
    let prompts: Vec<String> = app
        .replicate
        .created()
        .iter()
        .map(|p| p.input["prompt"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(prompts, ["burst 0", "burst 1", "burst 3", "burst 4"]);
}
