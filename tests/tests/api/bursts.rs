//! Bursts (README, "Bursts"), through the function binaries: submits over the create rate
//! answer 202 `queued` and the drainer creates them at the rate; identical requests share
//! one queued prediction; a cancel ends a queued one without Replicate; past the backlog
//! limit submits are refused with an honest `Retry-After`.

use std::time::{Duration, Instant};

use integration_tests::Stack;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// One create a second, with at most eight seconds of backlog.
async fn paced_stack() -> Stack {
    Stack::start_with(|vars| {
        vars.insert("REPLICATE_CREATES_PER_MINUTE".into(), "60".into());
        vars.insert("MAX_QUEUE_SECONDS".into(), "8".into());
    })
    .await
}

fn prompt(text: &str) -> Value {
    json!({"model": "flux-schnell", "input": {"prompt": text, "megapixels": "0.25"}})
}

/// The simulator's creates whose prompt starts with `prefix`.
fn created_with(stack: &Stack, prefix: &str) -> usize {
    stack
        .sim
        .predictions()
        .iter()
        .filter(|p| {
            p["input"]["prompt"]
                .as_str()
                .is_some_and(|t| t.starts_with(prefix))
        })
        .count()
}

#[tokio::test]
async fn a_burst_is_queued_created_at_the_rate_and_succeeds() {
    let stack = paced_stack().await;
    let started = Instant::now();
    let mut views = Vec::new();
    for n in 0..5 {
        let (status, view) = stack.submit(&prompt(&format!("burst {n}"))).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{view}");
        views.push(view);
    }
    // The first two go within the burst second; the others wait their turn.
    let queued: Vec<&Value> = views.iter().filter(|v| v["status"] == "queued").collect();
    assert!(queued.len() >= 2, "{views:?}");
    for view in &queued {
        assert!(view["queue"]["position"].as_u64() >= Some(1), "{view}");
        assert!(view["queue"]["expected_start"].is_string(), "{view}");
    }
    // Identical to a queued one: the same prediction, still one create.
    let last = views.last().unwrap();
    let (status, joined) = stack.submit(&prompt("burst 4")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{joined}");
    assert_eq!(joined["id"], last["id"], "joined the queued prediction");
    for view in &views {
        let done = stack.wait_terminal(view["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "succeeded", "{done}");
        assert_eq!(done["queue"], Value::Null);
        assert_eq!(done["output"].as_array().map(Vec::len), Some(1), "{done}");
    }
    assert_eq!(
        created_with(&stack, "burst"),
        5,
        "one create each, none twice"
    );
    // Five creates at one a second, after a burst second: not all at once.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_queued_prediction_is_canceled_without_replicate_and_a_full_queue_refuses() {
    let stack = paced_stack().await;
    let mut accepted = Vec::new();
    let refused = loop {
        let n = accepted.len();
        let (status, view) = stack.submit(&prompt(&format!("fill {n}"))).await;
        if status != StatusCode::ACCEPTED {
            break (status, view);
        }
        accepted.push(view);
        assert!(accepted.len() < 30, "never refused");
    };
    let (status, problem) = refused;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["type"], "/problems/queue-full");
    // About ten accepted: two in the burst second, then eight seconds' worth.
    assert!((9..=12).contains(&accepted.len()), "{}", accepted.len());
    // The last one accepted waits longest: cancel it.
    let last = accepted.last().unwrap();
    assert_eq!(last["status"], "queued", "{last}");
    let id = last["id"].as_str().unwrap();
    let (status, canceled) = stack.cancel(id).await;
    assert_eq!(status, StatusCode::OK, "{canceled}");
    assert_eq!(canceled["status"], "canceled", "{canceled}");
    assert_eq!(
        canceled["cost"]["usd"],
        json!(0.0),
        "never created, never billed"
    );
    // The others drain; the canceled one never reaches Replicate.
    for view in &accepted[..accepted.len() - 1] {
        let done = stack.wait_terminal(view["id"].as_str().unwrap()).await;
        assert_eq!(done["status"], "succeeded", "{done}");
    }
    assert_eq!(created_with(&stack, "fill"), accepted.len() - 1);
    let (_, still) = stack.get(id).await;
    assert_eq!(still["status"], "canceled");
}
