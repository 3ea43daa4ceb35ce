//! `make load`: a burst far over Replicate's create limit through the local stack as it
//! deploys (the release-built function binaries, moto, the simulator limited to
//! `LOAD_RATE` creates a minute with 429s beyond), with the webhook fault mix of `make
//! soak`. `LOAD_COUNT`
//! submissions (default 2,000) are sent evenly over `LOAD_SUBMIT_SECONDS` (default 60); the
//! service paces its creates at the same rate (README, "Bursts"). It prints accepted,
//! queued, created, succeeded, lost, duplicated and wrong states, the time until the last
//! one succeeded against the ideal (distinct predictions / rate: every tenth submission
//! repeats an earlier one and makes no create of its own), where that time went (creates
//! against their slots), and submit latency; it exits non-zero on anything lost,
//! duplicated or wrong, or a drain more than 10% over the ideal.
//!
//! Bounded: the count, the submit window, and `LOAD_SECONDS` (default 600) to settle; all
//! traffic on 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use imagegen_shared::domain::time::Timestamp;
use integration_tests::verify::{check, open_count, submit_retrying, webhook_faults};
use integration_tests::{Stack, env_number};
use local_stack::sim::SimConfig;
use serde_json::{Value, json};

/// Predictions read per round while waiting for the drain.
const PER_ROUND: usize = 40;
/// How often the reconciler runs (a schedule's stand-in).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// Submission `i`: distinct, but every tenth repeats the one five before (the same
/// prediction must answer both, queued or not).
fn request_body(i: usize) -> Value {
    let n = if i % 10 == 9 { i - 5 } else { i };
    json!({"model": "flux-schnell", "input": {"prompt": format!("load {n}"), "megapixels": "0.25"}})
}

/// How one submission was answered.
struct Answer {
    id: String,
    queued: bool,
    latency: Duration,
}

/// Submission `i`, retried as a client should (`verify::submit_retrying`).
async fn submit(stack: &Stack, i: usize) -> Result<Answer, String> {
    let answer = submit_retrying(stack, &format!("load-{i}"), &request_body(i)).await?;
    Ok(Answer {
        id: answer.body["id"].as_str().unwrap_or_default().to_owned(),
        queued: answer.body["status"] == "queued",
        latency: answer.latency,
    })
}

/// Where the drain's time went, from the records: when creates were sent against the
/// slots the pacer gave them, and when the predictions ended.
struct Timeline {
    /// Seconds from the first submission until each queued prediction's create was sent.
    sent: Vec<f64>,
    /// How late each queued create was sent after its slot, in seconds.
    late: Vec<f64>,
    /// Seconds from the first submission until each prediction ended.
    ended: Vec<f64>,
}

impl Timeline {
    async fn read(stack: &Stack, ids: &BTreeSet<String>, started_at: Timestamp) -> Self {
        let seconds =
            |t: Timestamp| t.as_millis() as f64 / 1e3 - started_at.as_millis() as f64 / 1e3;
        let mut timeline = Timeline {
            sent: Vec::new(),
            late: Vec::new(),
            ended: Vec::new(),
        };
        for id in ids {
            let Some(record) = stack.record(id).await else {
                continue;
            };
            if let Some(queue) = &record.queue
                && let Some(sent_at) = queue.sent_at
            {
                timeline.sent.push(seconds(sent_at));
                timeline
                    .late
                    .push(seconds(sent_at) - seconds(queue.slot_at));
            }
            if let Some(completed_at) = record.completed_at {
                timeline.ended.push(seconds(completed_at));
            }
        }
        for series in [&mut timeline.sent, &mut timeline.late, &mut timeline.ended] {
            series.sort_by(f64::total_cmp);
        }
        timeline
    }

    fn print(&self) {
        let at = |series: &[f64], p: f64| {
            let index = ((series.len().max(1) - 1) as f64 * p).round() as usize;
            series.get(index).copied().unwrap_or(f64::NAN)
        };
        println!(
            "  queued creates sent:            {}, the last after {:.1}s; behind their slot p50 {:.2}s, p99 {:.2}s, max {:.2}s",
            self.sent.len(),
            at(&self.sent, 1.0),
            at(&self.late, 0.5),
            at(&self.late, 0.99),
            at(&self.late, 1.0)
        );
        println!(
            "  ended (as recorded):            the last after {:.1}s",
            at(&self.ended, 1.0)
        );
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    if let Ok(filter) = std::env::var("RUST_LOG") {
        imagegen_shared::telemetry::init_json_logs(Some(&filter));
    }
    let count = env_number("LOAD_COUNT", 2000) as usize;
    let rate = env_number("LOAD_RATE", 600);
    let window = Duration::from_secs(env_number("LOAD_SUBMIT_SECONDS", 60));
    let settle = Duration::from_secs(env_number("LOAD_SECONDS", 600));
    let sim = SimConfig {
        faults: webhook_faults(),
        creates_per_minute: Some(u32::try_from(rate).unwrap_or(u32::MAX)),
        ..SimConfig::default()
    };
    let stack = Arc::new(
        Stack::start_binaries_with_sim(sim, |vars| {
            vars.insert("REPLICATE_CREATES_PER_MINUTE".into(), rate.to_string());
            vars.insert("RECONCILE_AFTER_SECONDS".into(), "2".into());
        })
        .await,
    );
    println!(
        "load: {count} submissions over {}s, {rate} creates a minute (Replicate's limit and the service's pace), webhook faults {:?}",
        window.as_secs(),
        webhook_faults()
    );

    // Evenly spread over the window, each in its own task.
    let started = Instant::now();
    let started_at = Timestamp::now();
    let gap = window / u32::try_from(count.max(1)).unwrap_or(u32::MAX);
    let mut tasks = Vec::new();
    for i in 0..count {
        let stack = stack.clone();
        tokio::time::sleep_until((started + gap * i as u32).into()).await;
        tasks.push(tokio::spawn(async move { (i, submit(&stack, i).await) }));
    }
    let mut ids: BTreeMap<usize, String> = BTreeMap::new();
    let mut refused = Vec::new();
    let mut latencies = Vec::new();
    let mut queued = 0;
    for task in tasks {
        match task.await.expect("task") {
            (i, Ok(answer)) => {
                queued += usize::from(answer.queued);
                latencies.push(answer.latency);
                ids.insert(i, answer.id);
            }
            (i, Err(e)) => refused.push(format!("#{i}: {e}")),
        }
    }
    let submitted = started.elapsed();
    println!("load: submitted in {:.1}s", submitted.as_secs_f64());

    // The reconciler's schedule: every five seconds (the template's is five minutes, but the
    // simulator drops 30% of webhooks for good and nobody fetches), beside the watch, as a
    // pass over a long backlog takes seconds. It starts once the submissions are in: each
    // pass reads every open record, and on moto (one Python process, unlike DynamoDB)
    // passes that often would take the submissions' turn.
    let reconciler = {
        let stack = stack.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RECONCILE_EVERY).await;
                stack.app.reconcile(None).await;
            }
        })
    };

    // Until every prediction ended. Nobody fetches: webhooks, and the reconciler every five
    // seconds, must do it. Predictions are created oldest first, so each round reads the
    // records from the oldest not yet seen ended and stops at the first still open (at most
    // `PER_ROUND`): reading every open one each round would load moto more than the service
    // does, and the drain ends with the last one anyway.
    let distinct: BTreeSet<String> = ids.values().cloned().collect();
    let mut pending: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for id in ids.values() {
        if !pending.contains(id) {
            pending.push_back(id.clone());
        }
    }
    let deadline = started + settle;
    let mut drained = None;
    loop {
        for _ in 0..PER_ROUND {
            let Some(oldest) = pending.front() else { break };
            if open_count(&stack, &BTreeSet::from([oldest.clone()])).await > 0 {
                break;
            }
            pending.pop_front();
        }
        if pending.is_empty() {
            drained = Some(started.elapsed());
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    reconciler.abort();
    let _ = reconciler.await;
    let summary = check(&stack, &ids, &distinct, request_body).await;
    let timeline = Timeline::read(&stack, &distinct, started_at).await;
    let stats = stack.sim.stats();
    latencies.sort_unstable();
    let ideal = Duration::from_secs_f64(distinct.len() as f64 * 60.0 / rate as f64);
    let ratio = drained.map(|d| d.as_secs_f64() / ideal.as_secs_f64());
    println!("load summary");
    println!("  submitted:                      {count}");
    println!("  accepted:                       {}", ids.len());
    println!("  queued at submit:               {queued}");
    println!("  refused (client gave up):       {}", refused.len());
    println!("  distinct predictions:           {}", distinct.len());
    println!("  created at Replicate:           {}", stats.creates);
    println!("  creates throttled by Replicate: {}", stats.rate_limited);
    summary.print();
    match drained {
        Some(d) => println!(
            "  last one succeeded after:       {:.1}s (ideal {:.1}s = {} / {rate} a minute: {:.3}x)",
            d.as_secs_f64(),
            ideal.as_secs_f64(),
            distinct.len(),
            ratio.unwrap_or(f64::NAN)
        ),
        None => println!("  not drained within {}s", settle.as_secs()),
    }
    timeline.print();
    println!(
        "  submit latency:                 p50 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    for problem in refused.iter().chain(&summary.problems).take(20) {
        println!("  ! {problem}");
    }
    let within = ratio.is_some_and(|r| r <= 1.10);
    if refused.is_empty() && summary.is_clean() && summary.unsuccessful == 0 && within {
        println!("load: 0 lost, 0 duplicated, 0 wrong states; drained within 10% of ideal");
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
