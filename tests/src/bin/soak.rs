//! `make soak`: a few hundred submissions through the local stack (HTTP routes, moto, the
//! simulator) under a fault mix — webhooks dropped, duplicated, reordered and delayed,
//! creates throttled, creates whose answer is lost (a gateway error) or comes too late
//! (after the service's request timeout) although the prediction was created, downloads
//! failing once, some predictions failing, canceled or aborted — with nobody fetching until
//! the end: only webhooks and the reconciler may save the images. Then it checks every
//! prediction against the simulator's truth and prints a summary; it exits non-zero on any
//! lost image, duplicate, orphaned Replicate prediction or wrong state.
//!
//! Bounded: `SOAK_COUNT` submissions (default 300), `SOAK_SECONDS` to settle (default 180),
//! all traffic on 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use imagegen_shared::replicate::PredictionStatus;
use integration_tests::{Stack, hex_sha256};
use local_stack::sim::Faults;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

const CONCURRENCY: usize = 16;

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn fault_mix() -> Faults {
    Faults {
        webhook_drop: 0.30,
        webhook_duplicate: 0.20,
        webhook_reorder: 0.20,
        webhook_delay: 0.10,
        webhook_delay_ms: 300,
        create_throttle: 0.10,
        throttle_retry_after: 0.5,
        create_lost: 0.04,
        create_slow: 0.02,
        download_fail_once: 0.05,
        download_truncate_once: 0.03,
        fail: 0.03,
        cancel: 0.02,
        abort: 0.02,
        ..Faults::default()
    }
}

/// The request for submission `i`: mostly distinct, some repeating an earlier one (which
/// must be answered by the same prediction, never a second one).
fn request_body(i: usize) -> Value {
    let n = if i % 10 == 9 { i - 5 } else { i };
    if n % 3 == 0 {
        json!({"model": "flux-schnell", "input": {"prompt": format!("soak {n}"), "megapixels": "0.25", "num_outputs": 1 + n % 2}})
    } else {
        json!({"model": "sdxl", "input": {"prompt": format!("soak {n}"), "width": 256, "height": 256, "seed": n}})
    }
}

/// Submits answered by a gateway error and tried again.
static GATEWAY_RETRIES: AtomicUsize = AtomicUsize::new(0);

/// Submits with an Idempotency-Key, retrying throttling and upstream errors as a client
/// should (bounded). After a 502 or 504 the client cannot know whether its request took
/// effect, so it repeats it with the same key: that must never start a second prediction.
async fn submit(stack: &Stack, i: usize) -> Result<String, String> {
    let key = format!("soak-{i}");
    for _ in 0..12 {
        let response = stack
            .http
            .post(format!("{}/v1/predictions", stack.base))
            .header("idempotency-key", &key)
            .json(&request_body(i))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let wait = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        match status {
            StatusCode::OK | StatusCode::ACCEPTED => {
                return Ok(body["id"].as_str().unwrap_or_default().to_owned());
            }
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::CONFLICT => {
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
                GATEWAY_RETRIES.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(wait)).await;
            }
            _ => return Err(format!("{status}: {body}")),
        }
    }
    Err("gave up after 12 tries".into())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // Quiet unless asked: `RUST_LOG=warn make soak` shows what the service logged.
    if let Ok(filter) = std::env::var("RUST_LOG") {
        imagegen_shared::telemetry::init_json_logs(Some(&filter));
    }
    let count = env_number("SOAK_COUNT", 300) as usize;
    let settle = Duration::from_secs(env_number("SOAK_SECONDS", 180));
    let started = Instant::now();
    let stack = Arc::new(
        Stack::start_with(|vars| {
            vars.insert("RECONCILE_AFTER_SECONDS".into(), "2".into());
        })
        .await,
    );
    stack.sim.set_faults(fault_mix());
    println!("soak: {count} submissions, fault mix {:?}", fault_mix());

    let permits = Arc::new(Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::new();
    for i in 0..count {
        let (stack, permits) = (stack.clone(), permits.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore");
            (i, submit(&stack, i).await)
        }));
    }
    let mut ids: BTreeMap<usize, String> = BTreeMap::new();
    let mut refused = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            (i, Ok(id)) => {
                ids.insert(i, id);
            }
            (i, Err(e)) => refused.push(format!("#{i}: {e}")),
        }
    }
    println!("soak: submitted in {:.1}s", started.elapsed().as_secs_f64());

    // Nobody fetches: only webhooks and the reconciler (run as its schedule would) act.
    let distinct: BTreeSet<String> = ids.values().cloned().collect();
    let deadline = Instant::now() + settle;
    loop {
        let open = open_count(&stack, &distinct).await;
        if open == 0 || Instant::now() > deadline {
            break;
        }
        let report = stack.app.reconcile(None).await;
        if report.errors > 0 {
            println!("soak: reconcile could not sync everything: {report:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let summary = check(&stack, &ids, &distinct).await;
    let stats = stack.sim.stats();
    println!("soak summary ({:.1}s)", started.elapsed().as_secs_f64());
    println!("  submitted:                      {count}");
    println!("  refused (client gave up):       {}", refused.len());
    println!("  distinct predictions:           {}", distinct.len());
    println!("  created at Replicate:           {}", stats.creates);
    println!("  throttled creates (retried):    {}", stats.throttled);
    println!(
        "  create answers lost / late:     {} / {}",
        stats.lost_creates, stats.slow_creates
    );
    println!(
        "  submits retried after 502/504:  {}",
        GATEWAY_RETRIES.load(Ordering::Relaxed)
    );
    println!(
        "  webhooks delivered:             {}",
        stats.webhooks_delivered
    );
    println!(
        "  downloads failed (injected):    {}",
        stats.failed_downloads
    );
    println!("  succeeded:                      {}", summary.succeeded);
    println!("  failed/canceled/aborted:        {}", summary.unsuccessful);
    println!(
        "  outputs stored and verified:    {} of {}",
        summary.verified, summary.expected_outputs
    );
    println!("  duplicates created:             {}", summary.duplicates);
    println!("  Replicate predictions orphaned: {}", summary.orphans);
    println!("  lost:                           {}", summary.lost);
    println!("  wrong final states:             {}", summary.wrong);
    for problem in refused.iter().chain(&summary.problems).take(20) {
        println!("  ! {problem}");
    }
    if refused.is_empty()
        && summary.duplicates == 0
        && summary.orphans == 0
        && summary.lost == 0
        && summary.wrong == 0
    {
        println!("soak: 0 lost, 0 duplicates, 0 orphans, 0 wrong states");
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

async fn open_count(stack: &Stack, ids: &BTreeSet<String>) -> usize {
    let mut open = 0;
    for id in ids {
        if stack
            .record(id)
            .await
            .is_none_or(|r| !r.status.is_terminal())
        {
            open += 1;
        }
    }
    open
}

#[derive(Default)]
struct Summary {
    succeeded: usize,
    unsuccessful: usize,
    expected_outputs: usize,
    verified: usize,
    duplicates: usize,
    /// Replicate predictions no record of ours names: billed, and nobody gets the result.
    orphans: usize,
    lost: usize,
    wrong: usize,
    problems: Vec<String>,
}

/// Compares every prediction with the simulator's truth: its final state, and each output
/// byte-for-byte (downloaded through the presigned URL fetch-result hands out).
async fn check(
    stack: &Stack,
    ids: &BTreeMap<usize, String>,
    distinct: &BTreeSet<String>,
) -> Summary {
    let mut summary = Summary::default();
    let truth: BTreeMap<String, Value> = stack
        .sim
        .predictions()
        .into_iter()
        .map(|p| (p["id"].as_str().unwrap_or_default().to_owned(), p))
        .collect();
    count_duplicates(stack, ids, &truth, &mut summary).await;
    let mut claimed_replicate_ids = BTreeSet::new();
    for id in distinct {
        let (status, view) = stack.get(id).await;
        let record = stack.record(id).await.expect("record");
        let ours = view["status"].as_str().unwrap_or_default().to_owned();
        let Some(replicate_id) = record.replicate_id.clone() else {
            summary.wrong += 1;
            summary.problems.push(format!(
                "{id}: never linked to a Replicate prediction ({ours})"
            ));
            continue;
        };
        claimed_replicate_ids.insert(replicate_id.clone());
        let Some(real) = truth.get(&replicate_id) else {
            summary.wrong += 1;
            summary
                .problems
                .push(format!("{id}: Replicate has no {replicate_id}"));
            continue;
        };
        // A prediction adopted after a lost create answer must be this request's own.
        let asked = record.input.get("prompt").and_then(Value::as_str);
        if asked != Some(prompt_of(real)) {
            summary.wrong += 1;
            summary.problems.push(format!(
                "{id}: asked for {asked:?} but is linked to {replicate_id}, made for {:?}",
                prompt_of(real)
            ));
            continue;
        }
        let theirs = real["status"].as_str().unwrap_or_default();
        if status != StatusCode::OK || ours != theirs {
            if theirs == "succeeded" {
                summary.lost += 1;
            } else {
                summary.wrong += 1;
            }
            summary
                .problems
                .push(format!("{id}: ours {ours}, Replicate's {theirs}"));
            continue;
        }
        if ours != "succeeded" {
            summary.unsuccessful += 1;
            continue;
        }
        summary.succeeded += 1;
        let originals: Vec<String> = match &real["output"] {
            Value::String(url) => vec![url.clone()],
            Value::Array(urls) => urls
                .iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        summary.expected_outputs += originals.len();
        let stored = view["output"].as_array().cloned().unwrap_or_default();
        if stored.len() != originals.len() {
            summary.lost += 1;
            summary.problems.push(format!(
                "{id}: {} of {} outputs stored",
                stored.len(),
                originals.len()
            ));
            continue;
        }
        for (original, output) in originals.iter().zip(&stored) {
            let expected = stack.sim.file(original).map(|b| hex_sha256(&b));
            let downloaded = match stack
                .http
                .get(output["url"].as_str().unwrap_or_default())
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => r.bytes().await.ok().map(|b| hex_sha256(&b)),
                _ => None,
            };
            if expected.is_some()
                && downloaded == expected
                && output["sha256"].as_str() == expected.as_deref()
            {
                summary.verified += 1;
            } else {
                summary.lost += 1;
                summary
                    .problems
                    .push(format!("{id}: output {original} does not match"));
            }
        }
    }
    // A Replicate prediction no record of ours points at was created in vain, e.g. a create
    // whose answer was lost and which was never adopted.
    let orphans: Vec<&String> = truth
        .keys()
        .filter(|id| !claimed_replicate_ids.contains(*id))
        .collect();
    if !orphans.is_empty() {
        summary.orphans = orphans.len();
        summary.problems.push(format!(
            "{} Replicate predictions belong to no record: {orphans:?}",
            orphans.len()
        ));
    }
    summary
}

/// Each soak body has a prompt of its own, which Replicate's copy of the input keeps.
fn prompt_of(body_or_prediction: &Value) -> &str {
    body_or_prediction["input"]["prompt"]
        .as_str()
        .unwrap_or_default()
}

/// Duplicates, per request body, from both sides. Identical requests share one prediction,
/// except that one which failed is never reused, so:
/// - at most one of our records answering the body may succeed;
/// - at Replicate, the body's next prediction may only be created after the previous one
///   ended failed, canceled or aborted. A create repeated after its answer was lost breaks
///   this whether or not a record names either prediction.
///
/// A body counts the larger of the two excesses, so one mistake is not counted twice.
async fn count_duplicates(
    stack: &Stack,
    ids: &BTreeMap<usize, String>,
    truth: &BTreeMap<String, Value>,
    summary: &mut Summary,
) {
    let mut answered: BTreeMap<String, BTreeSet<&String>> = BTreeMap::new();
    for (i, id) in ids {
        let body = request_body(*i);
        answered
            .entry(prompt_of(&body).to_owned())
            .or_default()
            .insert(id);
    }
    let mut at_replicate: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for prediction in truth.values() {
        at_replicate
            .entry(prompt_of(prediction).to_owned())
            .or_default()
            .push(prediction);
    }
    let prompts: BTreeSet<&String> = answered.keys().chain(at_replicate.keys()).collect();
    for prompt in prompts {
        let ours = answered.get(prompt).cloned().unwrap_or_default();
        let mut succeeded = 0;
        for id in &ours {
            let record = stack.record(id).await;
            succeeded +=
                usize::from(record.is_some_and(|r| r.status == PredictionStatus::Succeeded));
        }
        let theirs = at_replicate.get(prompt).cloned().unwrap_or_default();
        let overlapping = overlapping_creates(theirs.clone());
        let excess = succeeded.saturating_sub(1).max(overlapping);
        if excess > 0 {
            summary.duplicates += excess;
            let replicate_ids: Vec<&str> = theirs.iter().filter_map(|p| p["id"].as_str()).collect();
            summary.problems.push(format!(
                "{prompt:?}: {succeeded} of ours succeeded ({ours:?}); Replicate ran \
                 {replicate_ids:?}, {overlapping} made while an earlier one ran or had succeeded"
            ));
        }
    }
}

/// How many of one body's Replicate predictions were created while an earlier one had not
/// yet ended unsuccessfully. (The simulator writes fixed-width UTC timestamps, so their
/// text order is their time order.)
fn overlapping_creates(mut created: Vec<&Value>) -> usize {
    let at = |p: &Value, field: &str| p[field].as_str().unwrap_or_default().to_owned();
    let over_unsuccessfully_before = |earlier: &Value, later: &Value| {
        matches!(
            earlier["status"].as_str(),
            Some("failed" | "canceled" | "aborted")
        ) && earlier["completed_at"].is_string()
            && at(earlier, "completed_at") <= at(later, "created_at")
    };
    created.sort_by_key(|p| at(p, "created_at"));
    (1..created.len())
        .filter(|&i| {
            created[..i]
                .iter()
                .any(|earlier| !over_unsuccessfully_before(earlier, created[i]))
        })
        .count()
}
