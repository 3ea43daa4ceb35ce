//! `make cost`: what AWS would charge per 1,000 images, next to what Replicate charges for
//! them. Runs `COST_COUNT` flux-schnell predictions (default 300; distinct prompts, so no
//! cache hits) through the local stack, `COST_CONCURRENCY` at a time (16), as a client
//! would: submit, poll every second until terminal, download each output once. Every AWS
//! request passes a counting proxy in front of moto (`local_stack::meter`): DynamoDB
//! capacity units by item size, S3 requests and bytes stored, SQS requests. Every API
//! request and copy job counts as a Lambda invocation of the function the template maps it
//! to, billed for its handler's wall time at that function's memory.
//!
//! Then `COST_CACHE_HITS` (50) repeated requests answered from the result cache, and three
//! reconciler passes (its fixed monthly cost). Bounded by `COST_SECONDS` (180); all
//! traffic on 127.0.0.1. Exits non-zero only if predictions did not succeed.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use integration_tests::{Stack, aws_endpoint, env_number};
use local_stack::meter::prices::{GB, PRICES};
use local_stack::meter::report::{self, Phase};
use local_stack::meter::{InvocationTally, Invocations, Meter, StoredItem, Tally, logs};
use local_stack::sam::{Template, runs_per_month};
use local_stack::sim::SimConfig;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::Semaphore;

const TEMPLATE: &str = include_str!("../../../../template.yaml");
/// How often the client asks whether its prediction is done.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// Prediction `i`: a prompt of a realistic length, unique to this run; one image, every
/// tenth asks for two.
fn request_body(run: &str, i: usize) -> Value {
    json!({"model": "flux-schnell", "input": {
        "prompt": format!("{run}-{i}: a lighthouse on a rocky coast at dusk, warm light in the windows, waves breaking, 35mm photo"),
        "num_outputs": if i % 10 == 9 { 2 } else { 1 },
    }})
}

#[derive(Default)]
struct Outcome {
    images: u64,
    polls: u64,
    cached: bool,
    problem: Option<String>,
}

/// One client's prediction: submit (again after 429/503), poll until terminal, then
/// download every output once through its presigned URL.
async fn predict(stack: &Stack, body: &Value, deadline: Instant) -> Outcome {
    let mut outcome = Outcome::default();
    let mut view = loop {
        let (status, answer) = stack.submit(body).await;
        match status {
            StatusCode::OK | StatusCode::ACCEPTED => break answer,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(POLL_EVERY).await;
            }
            _ => {
                outcome.problem = Some(format!("submit answered {status}: {answer}"));
                return outcome;
            }
        }
    };
    outcome.cached = view["cached"].as_bool() == Some(true);
    let id = view["id"].as_str().unwrap_or_default().to_owned();
    while !matches!(
        view["status"].as_str(),
        Some("succeeded" | "failed" | "canceled" | "aborted")
    ) {
        if Instant::now() > deadline {
            outcome.problem = Some(format!("{id} unfinished: {}", view["status"]));
            return outcome;
        }
        tokio::time::sleep(POLL_EVERY).await;
        let (status, answer) = stack.get(&id).await;
        outcome.polls += 1;
        if status == StatusCode::OK {
            view = answer;
        }
    }
    if view["status"] != "succeeded" {
        outcome.problem = Some(format!("{id} ended {}: {}", view["status"], view["error"]));
        return outcome;
    }
    for output in view["output"].as_array().into_iter().flatten() {
        let url = output["url"].as_str().unwrap_or_default();
        match stack.http.get(url).send().await {
            Ok(r) if r.status().is_success() => {
                let size = r.bytes().await.map_or(0, |b| b.len());
                if output["size"].as_u64() == Some(size as u64) {
                    outcome.images += 1;
                } else {
                    outcome.problem = Some(format!("{id}: download of {url} was cut short"));
                }
            }
            other => outcome.problem = Some(format!("{id}: download failed: {other:?}")),
        }
    }
    outcome
}

/// Runs `bodies` through `predict`, `concurrency` at a time.
async fn run_clients(
    stack: &Arc<Stack>,
    bodies: Vec<Value>,
    concurrency: usize,
    deadline: Instant,
) -> Vec<Outcome> {
    let permits = Arc::new(Semaphore::new(concurrency));
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let (stack, permits) = (stack.clone(), permits.clone());
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.expect("semaphore");
                predict(&stack, &body, deadline).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap_or_else(|e| Outcome {
            problem: Some(format!("client task: {e}")),
            ..Outcome::default()
        }));
    }
    outcomes
}

/// Counters at one moment, to take a phase's share.
struct Mark {
    aws: Tally,
    lambda: InvocationTally,
    log_bytes: u64,
}

impl Mark {
    /// What happened between `before` and this mark: AWS requests, invocations, log bytes.
    fn since(&self, before: &Mark) -> (Tally, InvocationTally, u64) {
        (
            self.aws.since(&before.aws),
            self.lambda.since(&before.lambda),
            self.log_bytes - before.log_bytes,
        )
    }
}

async fn mark(meter: &Meter, invocations: &Invocations, logs: &logs::LogBytes) -> Mark {
    meter.settled().await;
    Mark {
        aws: meter.tally(),
        lambda: invocations.tally(),
        log_bytes: logs.bytes(),
    }
}

fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let count = env_number("COST_COUNT", 300) as usize;
    let cache_hits = (env_number("COST_CACHE_HITS", 50) as usize).min(count);
    let concurrency = env_number("COST_CONCURRENCY", 16).max(1) as usize;
    let budget = Duration::from_secs(env_number("COST_SECONDS", 180));
    let sim = SimConfig {
        start_delay: Duration::from_millis(env_number("COST_START_MS", 500)),
        run_time: Duration::from_millis(env_number("COST_RUN_MS", 1000)),
        ..SimConfig::default()
    };
    let started = Instant::now();
    let deadline = started + budget;
    let template = Template::parse(TEMPLATE).expect("template.yaml");
    let level = template.log_level.clone().unwrap_or_else(|| "info".into());
    let logs = logs::install(&level, "imagegen_shared").expect("a log counter");
    let meter = Meter::new(&aws_endpoint(), &template);
    let proxy = meter.serve().await.expect("metering proxy");
    let invocations = Arc::new(Invocations::new(template.clone()));
    let (start_ms, run_ms) = (sim.start_delay.as_millis(), sim.run_time.as_millis());
    let stack = Arc::new(
        Stack::start_on(
            &format!("http://{}", proxy.addr),
            sim,
            Some(invocations.clone()),
            |vars| {
                // Production settings, not the tests' shortcuts.
                vars.remove("FETCH_SYNC_INTERVAL_SECONDS");
                vars.remove("RESOLVE_AFTER_SECONDS");
            },
        )
        .await,
    );
    let table = stack.app.settings.table_name.clone();

    // Phase 1: distinct predictions.
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let before = mark(&meter, &invocations, &logs).await;
    let setup_items = meter
        .stored_items(&table, template.ttl_attribute.as_deref())
        .await
        .unwrap_or_default();
    let bodies: Vec<Value> = (0..count).map(|i| request_body(&run, i)).collect();
    let outcomes = run_clients(&stack, bodies.clone(), concurrency, deadline).await;
    let elapsed = started.elapsed();
    // Copy jobs are deleted from the queue just after the record says succeeded.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = mark(&meter, &invocations, &logs).await;
    let setup: HashSet<&str> = setup_items.iter().map(|i| i.pk.as_str()).collect();
    let items: Vec<StoredItem> = meter
        .stored_items(&table, template.ttl_attribute.as_deref())
        .await
        .unwrap_or_else(|e| {
            println!("cost: could not read the table back for storage: {e}");
            Vec::new()
        })
        .into_iter()
        .filter(|i| !setup.contains(i.pk.as_str()))
        .collect();
    let stored_at = now_epoch();
    let problems: Vec<&String> = outcomes.iter().filter_map(|o| o.problem.as_ref()).collect();
    let images: u64 = outcomes.iter().map(|o| o.images).sum();
    let polls: u64 = outcomes.iter().map(|o| o.polls).sum();
    let doubles = bodies
        .iter()
        .filter(|b| b["input"]["num_outputs"] == 2)
        .count();

    // Phase 2: the same requests again, answered from the result cache.
    let hits = run_clients(
        &stack,
        bodies[..cache_hits].to_vec(),
        concurrency,
        Instant::now() + Duration::from_secs(60),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after_hits = mark(&meter, &invocations, &logs).await;
    let known: HashSet<&str> = items
        .iter()
        .chain(&setup_items)
        .map(|i| i.pk.as_str())
        .collect();
    let hit_items: Vec<StoredItem> = meter
        .stored_items(&table, template.ttl_attribute.as_deref())
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !known.contains(i.pk.as_str()))
        .collect();
    let answered_from_cache = hits.iter().filter(|o| o.cached).count() as u64;

    // Phase 3: reconciler passes with nothing left open, as the schedule runs them.
    let reconciler = template.functions.iter().find(|f| f.schedule.is_some());
    const PASSES: u32 = 3;
    let before_passes = mark(&meter, &invocations, &logs).await;
    for _ in 0..PASSES {
        let pass = Instant::now();
        stack.app.reconcile(None).await;
        if let Some(f) = reconciler {
            invocations.record_scheduled(&f.name, pass.elapsed());
        }
    }
    let after_passes = mark(&meter, &invocations, &logs).await;

    // The report.
    let (aws, lambda, log_bytes) = after.since(&before);
    let main = Phase {
        template: &template,
        aws: &aws,
        lambda: &lambda,
        app_log_bytes: log_bytes,
        items: &items,
        now_epoch: stored_at,
    };
    let lines = report::lines(&main);
    let total: f64 = lines.iter().map(|l| l.usd).sum();
    let n = images.max(1) as f64;
    let per_1000 = total / n * 1000.0;
    let replicate_per_1000 = PRICES.replicate_flux_schnell_image * 1000.0;

    println!(
        "make cost: {count} flux-schnell predictions ({} with 1 output, {doubles} with 2), \
         {concurrency} at a time, polled every {} s, outputs downloaded once",
        count - doubles,
        POLL_EVERY.as_secs()
    );
    println!(
        "  simulated Replicate: {start_ms} ms starting + {run_ms} ms processing, \
         webhooks delivered; {} images stored and downloaded in {:.1} s; {:.2} polls per prediction",
        images,
        elapsed.as_secs_f64(),
        polls as f64 / count.max(1) as f64
    );
    println!();
    println!("AWS cost per image (us-east-1, on-demand, arm64; no free tiers)");
    print!("{}", report::render(&lines, images, "image"));
    println!(
        "  {:<52} {:>24} {:>14.6}",
        "Replicate flux-schnell ($0.003 per image)", "", replicate_per_1000
    );
    println!(
        "  {:<52} {:>24} {:>13.3}%",
        "AWS as a share of Replicate's price",
        "",
        per_1000 / replicate_per_1000 * 100.0
    );
    let goal = 0.005 * replicate_per_1000;
    println!(
        "  {:<52} {:>24} {:>14}",
        format!("goal: AWS <= ${goal:.3} per 1,000 images (0.5%)"),
        "",
        if per_1000 <= goal {
            "met".to_owned()
        } else {
            format!("{:.2}x goal", per_1000 / goal)
        }
    );

    println!();
    println!("API requests and Lambda invocations per image");
    for (route, calls) in &lambda.api_requests {
        println!("  {:<40} {:>8.2}", route, *calls as f64 / n);
    }
    for (function, calls) in &lambda.functions {
        let memory = template.function(function).map_or(128, |f| f.memory_mb);
        println!(
            "  {:<40} {:>8.2} invocations, {:>7.1} ms each at {memory} MB",
            function,
            calls.invocations as f64 / n,
            calls.billed_ms as f64 / calls.invocations.max(1) as f64
        );
    }
    println!();
    println!("DynamoDB per image, by operation and key group");
    print!("{}", report::render_dynamo(&aws, images, "image"));
    println!("Items left in the table (storage, kept until their TTL)");
    print!(
        "{}",
        report::render_items(&items, stored_at, images, "image")
    );
    println!();
    println!("S3 and SQS requests per image");
    for ((op, prefix, presigned), calls) in &aws.s3 {
        let by = if *presigned {
            "presigned (client)"
        } else {
            "functions"
        };
        println!(
            "  S3 {:<26} {:<12} {:<20} {:>8.2}",
            format!("{op:?}"),
            prefix,
            by,
            *calls as f64 / n
        );
    }
    for (prefix, stored) in &aws.stored {
        println!(
            "  S3 stored under {prefix}: {:.0} bytes per object, {:.2} objects per image",
            stored.bytes as f64 / stored.objects.max(1) as f64,
            stored.objects as f64 / n
        );
    }
    for (op, sqs) in &aws.sqs {
        println!(
            "  SQS {:<24} {:>8.2} calls, {:>6.2} billed, {:>6.2} messages{}",
            op,
            sqs.calls as f64 / n,
            (sqs.billed - sqs.empty) as f64 / n,
            sqs.messages as f64 / n,
            if sqs.empty > 0 {
                format!(
                    " ({} empty polls by the local copy worker left out)",
                    sqs.empty
                )
            } else {
                String::new()
            }
        );
    }
    if !aws.unmetered.is_empty() {
        println!("  not priced: {:?}", aws.unmetered);
    }

    println!();
    println!("Informational, not in the total");
    let egress = aws.downloaded_bytes as f64 / n;
    println!(
        "  data transfer out of the downloads: {:.0} bytes per image = ${:.6} per 1,000 images at \
         ${}/GB (billed to the bucket's account; the first 100 GB a month are free)",
        egress,
        egress * 1000.0 / GB * PRICES.egress_gb,
        PRICES.egress_gb
    );
    println!(
        "  output sizes are the simulator's (lossless WebP of a synthetic picture), not \
         Replicate's: S3 storage and transfer scale with them (per 100 KB of output per image: \
         storage ${:.6}, transfer ${:.6} per 1,000 images)",
        100.0 * 1024.0 * 1000.0 / GB
            * PRICES.s3_storage_gb_month
            * f64::from(template.retention_days("outputs/").unwrap_or(30))
            * 24.0
            / 730.0,
        100.0 * 1024.0 * 1000.0 / GB * PRICES.egress_gb
    );
    let invoked: u64 = lambda.functions.values().map(|f| f.invocations).sum();
    println!(
        "  handler times are wall times on this machine, {} at a time against moto: {:.1} AWS \
         calls per invocation averaging {:.1} ms each (DynamoDB answers Lambda in a few ms), no \
         cold starts (their init is billed too)",
        concurrency,
        aws.forwarded as f64 / invoked.max(1) as f64,
        aws.upstream_micros as f64 / aws.forwarded.max(1) as f64 / 1000.0
    );
    if let (Some(polls_route), Some(fetch)) = (
        lambda
            .api_requests
            .keys()
            .find(|r| r.starts_with("GET /v1/predictions/")),
        template.route("GET", "/v1/predictions/x"),
    ) {
        let calls = lambda
            .functions
            .get(&fetch.name)
            .copied()
            .unwrap_or_default();
        let poll_usd = PRICES.api_gateway_request
            + PRICES.lambda_request
            + local_stack::meter::prices::gb_seconds(fetch.memory_mb, calls.billed_ms)
                / calls.invocations.max(1) as f64
                * PRICES.lambda_arm_gb_second
            + PRICES.dynamo_read_unit;
        println!(
            "  each poll ({polls_route}) costs at least ${:.6} per 1,000 (API Gateway, Lambda \
             request and mean duration, one consistent read); {:.2} polls per image here",
            poll_usd * 1000.0,
            lambda.api_requests[polls_route] as f64 / n
        );
    }
    println!(
        "  CloudWatch Logs: the app's JSON lines at `{level}` plus {} bytes of platform lines \
         per invocation",
        report::platform_log_bytes_per_invocation(&template)
    );

    let (aws_h, lambda_h, log_h) = after_hits.since(&after);
    let hit_lines = report::lines(&Phase {
        template: &template,
        aws: &aws_h,
        lambda: &lambda_h,
        app_log_bytes: log_h,
        items: &hit_items,
        now_epoch: now_epoch(),
    });
    let hit_images: u64 = hits.iter().map(|o| o.images).sum();
    println!();
    println!(
        "Cache hits: {} repeated requests, {answered_from_cache} answered from the result cache \
         (Replicate charges nothing), {hit_images} images downloaded",
        hits.len()
    );
    print!("{}", report::render(&hit_lines, hit_images, "image"));

    println!();
    println!("Fixed monthly costs (not per image)");
    let (aws_r, lambda_r, log_r) = after_passes.since(&before_passes);
    let pass_usd: f64 = report::lines(&Phase {
        template: &template,
        aws: &aws_r,
        lambda: &lambda_r,
        app_log_bytes: log_r,
        items: &[],
        now_epoch: now_epoch(),
    })
    .iter()
    .map(|l| l.usd)
    .sum::<f64>()
        / f64::from(PASSES);
    if let Some(f) = reconciler {
        let schedule = f.schedule.as_deref().unwrap_or_default();
        let pass_ms = lambda_r
            .functions
            .get(&f.name)
            .map_or(0.0, |c| c.billed_ms as f64 / f64::from(PASSES));
        let reads: f64 =
            aws_r.dynamo.values().map(|c| c.read_units).sum::<f64>() / f64::from(PASSES);
        match runs_per_month(schedule) {
            Some(runs) => println!(
                "  {} `{schedule}`: {runs:.0} runs a month x ({pass_ms:.0} ms at {} MB, {reads:.1} RRU, \
                 logs) = ${:.4} a month (a pass with nothing open, measured over {PASSES})",
                f.name,
                f.memory_mb,
                pass_usd * runs
            ),
            None => println!("  {}: schedule `{schedule}` not priced", f.name),
        }
    }
    // Lambda's SQS pollers long-poll (20 s) while the queue is empty; AWS does not publish
    // how many there are. Five pollers is the usual starting figure.
    let idle_polls = 5.0 * 3.0 * 60.0 * 730.0;
    println!(
        "  copy queue event source, idle: about {idle_polls:.0} long polls a month (5 pollers x 3 a \
         minute, an estimate) = ${:.2} a month",
        idle_polls * PRICES.sqs_request
    );
    let alarms = TEMPLATE.matches("Type: AWS::CloudWatch::Alarm").count();
    println!(
        "  CloudWatch alarms: {alarms} x ${:.2} = ${:.2} a month",
        PRICES.alarm_month,
        alarms as f64 * PRICES.alarm_month
    );

    println!();
    if problems.is_empty() {
        println!("cost: all {count} predictions succeeded");
        std::process::ExitCode::SUCCESS
    } else {
        println!("cost: {} predictions did not succeed:", problems.len());
        for problem in problems.iter().take(20) {
            println!("  ! {problem}");
        }
        std::process::ExitCode::FAILURE
    }
}
