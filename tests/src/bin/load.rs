//! `make load`: a burst far over Replicate's create limit through the local stack as it
//! deploys (the function binaries, moto, the simulator limited to `LOAD_RATE` creates a
//! minute with 429s beyond), with the webhook fault mix of `make soak`. `LOAD_COUNT`
//! submissions (default 2,000) are sent evenly over `LOAD_SUBMIT_SECONDS` (default 60); the
//! service paces its creates at the same rate (README, "Bursts"). It prints accepted,
//! queued, created, succeeded, lost, duplicated and wrong states, the time until the last
//! one succeeded against the ideal (count / rate), and submit latency; it exits non-zero on
//! anything lost, duplicated or wrong, or a drain more than 10% over the ideal.
//!
//! Bounded: the count, the submit window, and `LOAD_SECONDS` (default 600) to settle; all
//! traffic on 127.0.0.1.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::verify::{check, open_count, submit_retrying, webhook_faults};
use integration_tests::{Stack, env_number};
use local_stack::sim::SimConfig;
use serde_json::{Value, json};

/// Predictions read per round while waiting for the drain.
const PER_ROUND: usize = 40;
/// How often the reconciler runs meanwhile (a schedule's stand-in).
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

    // Until every prediction ended. Nobody fetches: webhooks, and the reconciler every five
    // seconds, must do it. Only predictions not yet seen ended are read again, the oldest
    // first, a few each round (reading all of them each round would load moto more than
    // the service does).
    let distinct: BTreeSet<String> = ids.values().cloned().collect();
    let mut pending: Vec<String> = Vec::new();
    for id in ids.values() {
        if !pending.contains(id) {
            pending.push(id.clone());
        }
    }
    let deadline = started + settle;
    let mut drained = None;
    let mut last_reconcile = Instant::now();
    loop {
        let mut still = Vec::new();
        for (n, id) in pending.iter().enumerate() {
            if n >= PER_ROUND {
                still.extend(pending[n..].iter().cloned());
                break;
            }
            if open_count(&stack, &BTreeSet::from([id.clone()])).await > 0 {
                still.push(id.clone());
            }
        }
        pending = still;
        if pending.is_empty() {
            drained = Some(started.elapsed());
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        if last_reconcile.elapsed() >= RECONCILE_EVERY {
            stack.app.reconcile(None).await;
            last_reconcile = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let summary = check(&stack, &ids, &distinct, request_body).await;
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
    println!("  succeeded:                      {}", summary.succeeded);
    println!("  failed/canceled/aborted:        {}", summary.unsuccessful);
    println!(
        "  outputs stored and verified:    {} of {}",
        summary.verified, summary.expected_outputs
    );
    println!("  lost:                           {}", summary.lost);
    println!("  duplicated:                     {}", summary.duplicates);
    println!("  Replicate predictions orphaned: {}", summary.orphans);
    println!("  wrong final states:             {}", summary.wrong);
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
    println!(
        "  submit latency:                 p50 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 0.50).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    for problem in refused.iter().chain(&summary.problems).take(20) {
        println!("  ! {problem}");
    }
    let within = ratio.is_some_and(|r| r <= 1.10);
    if refused.is_empty()
        && summary.lost == 0
        && summary.duplicates == 0
        && summary.orphans == 0
        && summary.wrong == 0
        && summary.unsuccessful == 0
        && within
    {
        println!("load: 0 lost, 0 duplicated, 0 wrong states; drained within 10% of ideal");
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
