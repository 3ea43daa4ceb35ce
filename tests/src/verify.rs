//! Checking a run of many predictions (`make soak`, `make load`) against the simulator's
//! truth: each prediction's final state, each output byte for byte (downloaded through the
//! URL fetch-result hands out), duplicates from both sides, and Replicate predictions no
//! record names. Request bodies carry a prompt of their own, which is how a prediction at
//! Replicate is matched to the request that made it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use imagegen_shared::domain::replicate::PredictionStatus;
use reqwest::StatusCode;
use serde_json::Value;

use local_stack::sim::Faults;

use crate::{Stack, hex_sha256};

/// The webhook faults `make soak` and `make load` run under: deliveries dropped,
/// duplicated, reordered and delayed.
pub fn webhook_faults() -> Faults {
    Faults {
        webhook_drop: 0.30,
        webhook_duplicate: 0.20,
        webhook_reorder: 0.20,
        webhook_delay: 0.10,
        webhook_delay_ms: 300,
        ..Faults::default()
    }
}

/// A submission a client got accepted.
pub struct Submitted {
    pub body: Value,
    /// How long the accepted try took.
    pub latency: Duration,
    /// Tries answered by a gateway error (502, 504) before it.
    pub gateway_retries: usize,
}

/// Submits `body` with Idempotency-Key `key`, retrying as a client should (at most 12 tries,
/// waiting each `Retry-After`): throttling, unavailability, a key in use, and gateway
/// errors. After a 502 or 504 a client cannot know whether its request took effect, so it
/// repeats it with the same key: that must never start a second prediction.
pub async fn submit_retrying(stack: &Stack, key: &str, body: &Value) -> Result<Submitted, String> {
    let mut gateway_retries = 0;
    for _ in 0..12 {
        let started = Instant::now();
        let response = stack
            .http
            .post(format!("{}/v1/predictions", stack.base))
            .header("idempotency-key", key)
            .json(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let latency = started.elapsed();
        let status = response.status();
        let wait = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let answer: Value = response.json().await.map_err(|e| e.to_string())?;
        match status {
            StatusCode::OK | StatusCode::ACCEPTED => {
                return Ok(Submitted {
                    body: answer,
                    latency,
                    gateway_retries,
                });
            }
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::CONFLICT => {}
            StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => gateway_retries += 1,
            _ => return Err(format!("{status}: {answer}")),
        }
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
    Err("gave up after 12 tries".into())
}

/// Predictions among `ids` not yet ended.
pub async fn open_count(stack: &Stack, ids: &BTreeSet<String>) -> usize {
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
pub struct Summary {
    pub succeeded: usize,
    pub unsuccessful: usize,
    pub expected_outputs: usize,
    pub verified: usize,
    pub duplicates: usize,
    /// Replicate predictions no record of ours names: billed, and nobody gets the result.
    pub orphans: usize,
    pub lost: usize,
    pub wrong: usize,
    pub problems: Vec<String>,
}

impl Summary {
    /// Nothing lost, duplicated, orphaned or left in a wrong state: what the soak and the
    /// load both require.
    pub fn is_clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.orphans == 0 && self.wrong == 0
    }

    /// The outcome lines of the soak's and the load's reports.
    pub fn print(&self) {
        println!("  succeeded:                      {}", self.succeeded);
        println!("  failed/canceled/aborted:        {}", self.unsuccessful);
        println!(
            "  outputs stored and verified:    {} of {}",
            self.verified, self.expected_outputs
        );
        println!("  duplicates created:             {}", self.duplicates);
        println!("  Replicate predictions orphaned: {}", self.orphans);
        println!("  lost:                           {}", self.lost);
        println!("  wrong final states:             {}", self.wrong);
    }
}

/// Compares every prediction with the simulator's truth: its final state, and each output
/// byte-for-byte (downloaded through the presigned URL fetch-result hands out).
pub async fn check(
    stack: &Stack,
    ids: &BTreeMap<usize, String>,
    distinct: &BTreeSet<String>,
    request_body: fn(usize) -> Value,
) -> Summary {
    let mut summary = Summary::default();
    let truth: BTreeMap<String, Value> = stack
        .sim
        .predictions()
        .into_iter()
        .map(|p| (p["id"].as_str().unwrap_or_default().to_owned(), p))
        .collect();
    count_duplicates(stack, ids, &truth, request_body, &mut summary).await;
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
    request_body: fn(usize) -> Value,
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
