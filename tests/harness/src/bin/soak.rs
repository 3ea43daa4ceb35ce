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

use integration_tests::verify::{check, open_count, submit_retrying, webhook_faults};
use integration_tests::{Stack, env_number};
use local_stack::sim::Faults;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

const CONCURRENCY: usize = 16;

/// The webhook faults (`verify::webhook_faults`), and faults of creates and downloads.
fn fault_mix() -> Faults {
    Faults {
        create_throttle: 0.10,
        throttle_retry_after: 0.5,
        create_lost: 0.04,
        create_slow: 0.02,
        download_fail_once: 0.05,
        download_truncate_once: 0.03,
        fail: 0.03,
        cancel: 0.02,
        abort: 0.02,
        ..webhook_faults()
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

/// Submission `i`, retried as a client should (`verify::submit_retrying`).
async fn submit(stack: &Stack, i: usize) -> Result<String, String> {
    let answer = submit_retrying(stack, &format!("soak-{i}"), &request_body(i)).await?;
    GATEWAY_RETRIES.fetch_add(answer.gateway_retries, Ordering::Relaxed);
    Ok(answer.body["id"].as_str().unwrap_or_default().to_owned())
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

    let summary = check(&stack, &ids, &distinct, request_body).await;
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
    summary.print();
    for problem in refused.iter().chain(&summary.problems).take(20) {
        println!("  ! {problem}");
    }
    if refused.is_empty() && summary.is_clean() {
        println!("soak: 0 lost, 0 duplicates, 0 orphans, 0 wrong states");
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}
