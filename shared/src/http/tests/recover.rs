//! Lost creates: an ambiguous create is never repeated; it is found in Replicate's list,
//! or ended when nothing was created.

use super::*;

#[tokio::test]
async fn an_ambiguous_create_is_never_repeated_and_is_found_in_replicates_list() {
    let app = app();
    app.replicate.lose_next_create_answer();
    let mut request = submit_event(fox());
    request
        .headers_mut()
        .insert("idempotency-key", HeaderValue::from_static("order-1"));
    let response = routes::submit::submit(&app, request).await;
    assert_eq!(response.status(), 202, "the kept record is the answer");
    let id = json_of(&response)["id"].as_str().unwrap().to_owned();
    assert_eq!(app.replicate.created().len(), 1);
    // The same key, or the same body long after the create lease, joins the kept record.
    let mut again = submit_event(fox());
    again
        .headers_mut()
        .insert("idempotency-key", HeaderValue::from_static("order-1"));
    assert_eq!(
        json_of(&routes::submit::submit(&app, again).await)["id"],
        json!(id)
    );
    app.clock.advance(Duration::from_secs(45));
    let (status, joined) = submitted(&app, fox()).await;
    assert_eq!((status, joined["id"].as_str()), (202, Some(id.as_str())));
    assert_eq!(app.replicate.created().len(), 1, "never a second create");
    // Not looked for yet: too early to be sure the list shows it.
    fetched(&app, &id).await;
    assert_eq!(app.replicate.list_calls(), 0);
    // Later, a fetch finds the prediction in Replicate's list (same model and input).
    app.clock.advance(Duration::from_secs(300));
    let view = fetched(&app, &id).await;
    assert_eq!(view["status"], "starting");
    assert_eq!(
        record(&app, &id).await.replicate_id.as_deref(),
        Some("rep-1")
    );
    assert!(app.replicate.list_calls() >= 1);
    assert_eq!(app.replicate.created().len(), 1);
}

#[tokio::test]
async fn an_ambiguous_create_that_created_nothing_ends_failed_and_frees_the_key() {
    let app = app();
    app.replicate
        .fail_next_create(ReplicateError::CreateOutcomeUnknown {
            reason: "timeout".into(),
        });
    let (status, body) = submitted(&app, fox()).await;
    assert_eq!(status, 202);
    let id = body["id"].as_str().unwrap().to_owned();
    // Too early to trust an empty list: still starting.
    assert_eq!(fetched(&app, &id).await["status"], "starting");
    app.clock.advance(Duration::from_secs(301));
    let view = fetched(&app, &id).await;
    assert_eq!(view["status"], "failed", "{view}");
    assert!(view["error"].as_str().unwrap().contains("not created"));
    let (status, fresh) = submitted(&app, fox()).await;
    assert_eq!(status, 202);
    assert_ne!(fresh["id"], json!(id));
    assert_eq!(app.replicate.created().len(), 1);
}
