//! `make bench`: how long a function binary takes from exec to asking the Lambda Runtime API
//! for its first event (its init: configuration, SDK and HTTP clients). Runs the binary
//! against a local stand-in for the Runtime API, several times, and prints the figures.
//!
//! `cold-start PATH [RUNS]` (the binary is built for this machine, not arm64).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use local_stack::http_server::{bind_loopback, serve};
use tokio::sync::Notify;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let binary = args.next().ok_or("usage: cold-start PATH [RUNS]")?;
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

    let timings = Arc::new(Mutex::new(Vec::new()));
    for _ in 0..runs {
        let started = Instant::now();
        let mut child = tokio::process::Command::new(&binary)
            .env_clear()
            .envs([
                ("AWS_LAMBDA_RUNTIME_API", api.as_str()),
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
                ("REPLICATE_API_TOKEN", "r8_bench"),
                ("RUST_LOG", "error"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        tokio::time::timeout(Duration::from_secs(10), asked.notified()).await?;
        timings.lock().unwrap().push(started.elapsed());
        child.kill().await?;
    }
    let mut timings = timings.lock().unwrap().clone();
    timings.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "cold-start: {binary}: init to first event request over {runs} runs: min {:.1} ms, median {:.1} ms, max {:.1} ms",
        ms(timings[0]),
        ms(timings[timings.len() / 2]),
        ms(timings[timings.len() - 1])
    );
    Ok(())
}
