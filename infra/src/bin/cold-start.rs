//! `make bench`: how long a function binary takes from exec to asking the Lambda Runtime API
//! for its first event (its init: configuration, SDK and HTTP clients), how much memory and
//! CPU that init took, and, with `--against`, the same figures for a yardstick binary (the
//! minimal handler) measured in the same run, alternating, with the ratios.
//!
//! `cold-start [--against YARDSTICK] PATH [RUNS]` (binaries built for this machine, not
//! arm64). Peak RSS is the process's high-water mark (`VmHWM`) and CPU its on-CPU time
//! (`/proc/<pid>/schedstat`), both read when it first asks for an event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use local_stack::http_server::{bind_loopback, serve};
use local_stack::meter::process::{cpu_time, peak_rss_kb};
use tokio::sync::Notify;

/// One init, measured.
#[derive(Debug, Clone, Copy)]
struct Init {
    wall: Duration,
    peak_rss_kb: u64,
    cpu: Duration,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let against = match args.iter().position(|a| a == "--against") {
        Some(i) => {
            args.remove(i);
            Some(args.remove(i))
        }
        None => None,
    };
    let mut args = args.into_iter();
    let binary = args
        .next()
        .ok_or("usage: cold-start [--against YARDSTICK] PATH [RUNS]")?;
    let runs: usize = args.next().map(|r| r.parse()).transpose()?.unwrap_or(10);

    // The Runtime API stand-in: notes when `next` is asked for, then keeps the request open
    // (as the real one does while no event is waiting).
    let asked = Arc::new(Notify::new());
    let notify = asked.clone();
    let server = serve(
        bind_loopback(0).await?,
        1024,
        || http::Response::new(Bytes::new()),
        move |request| {
            let notify = notify.clone();
            async move {
                if request.uri().path().ends_with("/invocation/next") {
                    notify.notify_one();
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
                http::Response::new(Bytes::new())
            }
        },
    );
    let api = server.addr.to_string();

    let mut measured: Vec<Init> = Vec::new();
    let mut yardstick: Vec<Init> = Vec::new();
    for _ in 0..runs {
        measured.push(measure(&binary, &api, &asked).await?);
        if let Some(other) = &against {
            yardstick.push(measure(other, &api, &asked).await?);
        }
    }
    let ours = summary(&binary, &mut measured);
    println!("{}", ours.line);
    if let Some(other) = &against {
        let theirs = summary(other, &mut yardstick);
        println!("{}", theirs.line);
        println!(
            "cold-start: {binary} against {other}: init {:.2}x, peak RSS {:.2}x, init CPU {:.2}x (medians)",
            ours.wall_ms / theirs.wall_ms,
            ours.rss_kb / theirs.rss_kb,
            ours.cpu_ms / theirs.cpu_ms,
        );
    }
    Ok(())
}

struct Summary {
    line: String,
    wall_ms: f64,
    rss_kb: f64,
    cpu_ms: f64,
}

fn summary(binary: &str, inits: &mut [Init]) -> Summary {
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let mut wall: Vec<f64> = inits
        .iter()
        .map(|i| i.wall.as_secs_f64() * 1000.0)
        .collect();
    let mut rss: Vec<f64> = inits.iter().map(|i| i.peak_rss_kb as f64).collect();
    let mut cpu: Vec<f64> = inits.iter().map(|i| i.cpu.as_secs_f64() * 1000.0).collect();
    let (min, max) = (
        wall.iter().copied().fold(f64::MAX, f64::min),
        wall.iter().copied().fold(0.0, f64::max),
    );
    let (wall_ms, rss_kb, cpu_ms) = (median(&mut wall), median(&mut rss), median(&mut cpu));
    Summary {
        line: format!(
            "cold-start: {binary}: init to first event request over {} runs: min {min:.1} ms, median {wall_ms:.1} ms, max {max:.1} ms; peak RSS {:.1} MB; init CPU {cpu_ms:.1} ms",
            inits.len(),
            rss_kb / 1024.0,
        ),
        wall_ms,
        rss_kb,
        cpu_ms,
    }
}

async fn measure(
    binary: &str,
    api: &str,
    asked: &Notify,
) -> Result<Init, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut child = tokio::process::Command::new(binary)
        .env_clear()
        .envs([
            ("AWS_LAMBDA_RUNTIME_API", api),
            ("AWS_LAMBDA_FUNCTION_NAME", "cold-start"),
            ("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256"),
            ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
            ("AWS_LAMBDA_LOG_STREAM_NAME", "bench"),
            ("AWS_LAMBDA_LOG_GROUP_NAME", "bench"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", "bench"),
            ("AWS_SECRET_ACCESS_KEY", "bench"),
            ("TABLE_NAME", "bench"),
            ("BUCKET_NAME", "bench"),
            (
                "COPY_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/1/bench",
            ),
            (
                "CALLBACK_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/1/bench-callbacks",
            ),
            (
                "CALLBACK_DEAD_LETTER_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/1/bench-callbacks-dlq",
            ),
            (
                "CREATE_QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/1/bench-creates",
            ),
            ("REPLICATE_API_TOKEN", "r8_bench"),
            ("RUST_LOG", "error"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    tokio::time::timeout(Duration::from_secs(10), asked.notified()).await?;
    let wall = started.elapsed();
    let pid = child.id().ok_or("the process is gone")?;
    let init = Init {
        wall,
        peak_rss_kb: peak_rss_kb(pid).unwrap_or(0),
        cpu: cpu_time(pid).unwrap_or_default(),
    };
    child.kill().await?;
    Ok(init)
}
