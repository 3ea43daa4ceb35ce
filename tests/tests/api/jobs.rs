//! The job API around a prediction, end to end on moto and the simulator: cancel through our
//! route (running, finished, unknown, another tenant's) and deadlines (`Cancel-After`)
//! that Replicate enforces by aborting or canceling.

use std::collections::HashMap;
use std::time::Duration;

use integration_tests::{Stack, aws_endpoint, client_with_key};
use local_stack::sim::SimConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn slow_sdxl(text: &str) -> Value {
    json!({"model": "sdxl", "input": {"prompt": format!("{text} [sim:slow]"), "width": 256, "height": 256}})
}

#[tokio::test]
async fn cancel_stops_a_running_prediction_once_and_answers_ended_ones_unchanged() {
    let stack = Stack::start().await;
    let (status, running) = stack.submit(&slow_sdxl("cancel me")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{running}");
    let id = running["id"].as_str().unwrap().to_owned();
    assert_eq!(
        running["urls"]["cancel"],
        format!("/v1/predictions/{id}/cancel")
    );

    let other = client_with_key(&stack.new_key("other", 60, None).await);
    assert_eq!(stack.cancel_as(&other, &id).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        stack
            .cancel_as(&stack.http, "0123456789abcdef0123456789abcdef")
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        stack.cancel_as(&stack.plain, &id).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        stack.sim.stats().cancels,
        0,
        "nobody else reached Replicate"
    );

    let (status, canceled) = stack.cancel(&id).await;
    assert_eq!(
        (status, canceled["status"].as_str()),
        (StatusCode::OK, Some("canceled")),
        "{canceled}"
    );
    assert!(canceled["cost"]["usd"].is_number(), "{canceled}");
    let (status, again) = stack.cancel(&id).await;
    assert_eq!(
        (status, again["status"].as_str()),
        (StatusCode::OK, Some("canceled"))
    );
    assert_eq!(
        stack.sim.stats().cancels,
        1,
        "a cancel of an ended prediction calls nobody"
    );
    // The late `completed` webhook of the cancel changes nothing.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stack.get(&id).await.1["status"], "canceled");

    let (_, quick) = stack
        .submit(&json!({"model": "flux-schnell", "input": {"prompt": "done first", "megapixels": "0.25"}}))
        .await;
    let quick_id = quick["id"].as_str().unwrap();
    assert_eq!(stack.wait_terminal(quick_id).await["status"], "succeeded");
    let (status, unchanged) = stack.cancel(quick_id).await;
    assert_eq!(
        (status, unchanged["status"].as_str()),
        (StatusCode::OK, Some("succeeded"))
    );
    assert_eq!(unchanged["output"].as_array().map(Vec::len), Some(1));
}

/// A stack whose simulated runs take `start` starting and `run` processing.
async fn stack_with_times(start: Duration, run: Duration) -> Stack {
    let sim = SimConfig {
        start_delay: start,
        run_time: run,
        ..SimConfig::default()
    };
    Stack::start_on(
        &aws_endpoint(),
        sim,
        None,
        |_: &mut HashMap<String, String>| {},
    )
    .await
}

async fn submit_with_deadline(stack: &Stack, deadline: &str) -> (StatusCode, Value) {
    let response = stack
        .http
        .post(format!("{}/v1/predictions", stack.base))
        .header("cancel-after", deadline)
        .json(&json!({"model": "flux-schnell", "input": {"prompt": format!("deadline {deadline}"), "megapixels": "0.25"}}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn a_deadline_before_the_start_aborts_and_costs_nothing() {
    let stack = stack_with_times(Duration::from_secs(8), Duration::from_millis(150)).await;
    let (status, body) = submit_with_deadline(&stack, "5s").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = stack.wait_terminal(body["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "aborted", "{done}");
    assert_eq!(done["cost"]["usd"], 0.0);
    let (status, refused) = submit_with_deadline(&stack, "45m").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["errors"][0]["field"], "Cancel-After");
}

#[tokio::test]
async fn a_deadline_while_running_cancels() {
    let stack = stack_with_times(Duration::from_millis(50), Duration::from_secs(9)).await;
    let (status, body) = submit_with_deadline(&stack, "6s").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let done = stack.wait_terminal(body["id"].as_str().unwrap()).await;
    assert_eq!(done["status"], "canceled", "{done}");
}

#[tokio::test]
async fn the_list_pages_through_the_callers_own_predictions_without_gaps_or_repeats() {
    let stack = Stack::start().await;
    let mine = client_with_key(&stack.new_key("pager", 1000, None).await);
    let other = client_with_key(&stack.new_key("stranger", 1000, None).await);
    let mut submitted = Vec::new();
    for i in 0..23 {
        let body = json!({"model": "flux-schnell", "input": {"prompt": format!("page {i}"), "megapixels": "0.25"}});
        let response = mine
            .post(format!("{}/v1/predictions", stack.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let body: Value = response.json().await.unwrap();
        submitted.push(body["id"].as_str().unwrap().to_owned());
    }
    let list = |client: &reqwest::Client, query: String| {
        let url = format!("{}/v1/predictions?{query}", stack.base);
        let client = client.clone();
        async move {
            let response = client.get(url).send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let mut seen: Vec<String> = Vec::new();
    let mut times: Vec<String> = Vec::new();
    let mut query = "limit=10".to_owned();
    for page in 0.. {
        assert!(page < 10, "the cursors never end");
        let (status, body) = list(&mine, query.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let items = body["items"].as_array().unwrap();
        assert!(items.len() <= 10);
        for item in items {
            seen.push(item["id"].as_str().unwrap().to_owned());
            times.push(item["created_at"].as_str().unwrap().to_owned());
        }
        match body["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=10&cursor={cursor}"),
            None => break,
        }
    }
    let mut newest_first = submitted.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first, "every prediction once, newest first");
    assert!(times.windows(2).all(|t| t[0] >= t[1]));

    let (status, theirs) = list(&other, String::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        theirs["items"],
        json!([]),
        "another tenant lists none of them"
    );
    assert_eq!(theirs["next_cursor"], Value::Null);
    let (_, first) = list(&mine, String::new()).await;
    assert_eq!(
        first["items"].as_array().map(Vec::len),
        Some(20),
        "20 by default"
    );
    for bad in ["limit=0", "limit=101", "cursor=not-a-cursor"] {
        let (status, problem) = list(&mine, bad.to_owned()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {problem}");
    }
    let unauthenticated = stack
        .plain
        .get(format!("{}/v1/predictions", stack.base))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
}
