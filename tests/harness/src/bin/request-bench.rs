//! `make bench` (part): the release `fetch-result` binary against the minimal handler
//! (`infra/minimal-handler`: the caller's key GetItem, the record GetItem and one presign),
//! each under a local Runtime API, fed the same API Gateway v2 event for a finished
//! prediction stored on moto:
//!
//! - init plus the first request: a fresh process each time, from exec to the first
//!   response (what a caller waits on a cold start), alternating between the two;
//! - CPU per warm request: one process each, rounds alternating; each round reads the
//!   process's on-CPU time before and after its requests.
//!
//! `request-bench RELEASE_DIR` (e.g. `target/release`, with `fetch-result` and
//! `minimal-handler` built). Bounded: `FIRST_REQUEST_ROUNDS` fresh processes of each
//! (default 20), `WARM_BENCH_REQUESTS` per round (default 200), `WARM_BENCH_ROUNDS` rounds
//! (default 5), all on 127.0.0.1.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use integration_tests::{Stack, aws_endpoint, env_number};
use local_stack::meter::process::{cpu_time, peak_rss_kb};
use local_stack::stack::gateway::events::{http_api_v2, http_response};
use local_stack::stack::gateway::{FunctionProcess, LocalFunction, function_environment};
use serde_json::json;

const ROUTE: &str = "/v1/predictions/{id}";

/// One function process and what its rounds measured.
struct Subject {
    name: &'static str,
    function: LocalFunction,
    cpu_per_request: Vec<Duration>,
    wall_per_request: Vec<Duration>,
}

impl Subject {
    async fn start(
        name: &'static str,
        binary: &Path,
        env: &std::collections::HashMap<String, String>,
    ) -> Self {
        let logs = log_dir();
        std::fs::create_dir_all(&logs).expect("a log directory");
        assert!(
            binary.exists(),
            "{} is not built (cargo build --release)",
            binary.display()
        );
        let process = FunctionProcess {
            name,
            binary,
            memory_mb: 256,
            timeout: Duration::from_secs(10),
        };
        let function = LocalFunction::start(&process, env, 1, Some(&logs))
            .await
            .expect("the function starts");
        Self {
            name,
            function,
            cpu_per_request: Vec::new(),
            wall_per_request: Vec::new(),
        }
    }

    fn pid(&self) -> u32 {
        *self.function.pids().first().expect("a running process")
    }

    async fn call(&self, event: &Bytes) {
        let payload = self
            .function
            .invoke(event.clone())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        let response = http_response(&payload).expect("an API Gateway v2 response");
        assert_eq!(
            response.status(),
            200,
            "{}: {}",
            self.name,
            String::from_utf8_lossy(response.body())
        );
    }

    async fn round(&mut self, event: &Bytes, requests: usize) {
        let pid = self.pid();
        let before = cpu_time(pid).expect("/proc schedstat");
        let started = Instant::now();
        for _ in 0..requests {
            self.call(event).await;
        }
        let wall = started.elapsed();
        let cpu = cpu_time(pid)
            .expect("/proc schedstat")
            .saturating_sub(before);
        let n = u32::try_from(requests).unwrap_or(u32::MAX);
        self.cpu_per_request.push(cpu / n);
        self.wall_per_request.push(wall / n);
    }

    fn median_cpu(&self) -> Duration {
        median(&self.cpu_per_request)
    }

    fn report(&self, requests: usize) {
        println!(
            "warm: {:<16} CPU per request: median {:>6.1} µs (rounds {}); wall per request {:>6.2} ms; peak RSS {:.1} MB after {} requests",
            self.name,
            self.median_cpu().as_secs_f64() * 1e6,
            self.cpu_per_request
                .iter()
                .map(|d| format!("{:.0}", d.as_secs_f64() * 1e6))
                .collect::<Vec<_>>()
                .join("/"),
            median(&self.wall_per_request).as_secs_f64() * 1e3,
            peak_rss_kb(self.pid()).unwrap_or(0) as f64 / 1024.0,
            requests * self.cpu_per_request.len(),
        );
    }
}

/// Init and the first request of a fresh process of `binary`: from exec to its response.
async fn first_request(
    name: &'static str,
    binary: &Path,
    env: &std::collections::HashMap<String, String>,
    event: &Bytes,
) -> Duration {
    let started = Instant::now();
    let subject = Subject::start(name, binary, env).await;
    subject.call(event).await;
    let elapsed = started.elapsed();
    subject.function.stop();
    elapsed
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[sorted.len() / 2]
}

#[tokio::main]
async fn main() {
    let release = std::env::args()
        .nth(1)
        .expect("usage: request-bench RELEASE_DIR");
    let release = Path::new(&release);
    let requests = env_number("WARM_BENCH_REQUESTS", 200).max(1) as usize;
    let rounds = env_number("WARM_BENCH_ROUNDS", 5).max(1) as usize;
    let first_rounds = env_number("FIRST_REQUEST_ROUNDS", 20).max(1) as usize;

    // A finished prediction with one output, made the ordinary way.
    let stack = Stack::start_in_process().await;
    let (status, created) = stack
        .submit(&json!({"model": "flux-schnell", "input": {"prompt": "a warm request"}}))
        .await;
    assert_eq!(status, 202, "{created}");
    let id = created["id"].as_str().expect("an id").to_owned();
    let done = stack.wait_terminal(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");

    let env = function_environment(
        |name| stack.vars.get(name).cloned(),
        &aws_endpoint(),
        &stack.aws.ssm,
    )
    .await
    .expect("the functions' environment");
    let request = http::Request::get(format!("/v1/predictions/{id}"))
        .header(http::header::HOST, "bench.local")
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", stack.api_key),
        )
        .body(Bytes::new())
        .expect("a request");
    let event = http_api_v2(&request, "GET", ROUTE, "127.0.0.1");

    // Init plus the first request, fresh processes alternating.
    let binaries = [
        ("fetch-result", release.join("fetch-result")),
        ("minimal-handler", release.join("minimal-handler")),
    ];
    let mut firsts: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..first_rounds {
        for (n, (name, binary)) in binaries.iter().enumerate() {
            firsts[n].push(first_request(name, binary, &env, &event).await);
        }
    }
    for (n, (name, _)) in binaries.iter().enumerate() {
        let mut sorted = firsts[n].clone();
        sorted.sort_unstable();
        println!(
            "first request: {name:<16} init + first request over {first_rounds} fresh processes: min {:.1} ms, median {:.1} ms, max {:.1} ms",
            millis(sorted[0]),
            millis(median(&sorted)),
            millis(sorted[sorted.len() - 1]),
        );
    }
    println!(
        "first request: fetch-result against minimal-handler: init + first request {:.2}x (medians)",
        median(&firsts[0]).as_secs_f64() / median(&firsts[1]).as_secs_f64()
    );

    let mut subjects = [
        Subject::start("fetch-result", &release.join("fetch-result"), &env).await,
        Subject::start("minimal-handler", &release.join("minimal-handler"), &env).await,
    ];
    // Warm: the first requests build what is built on first use (clients, caches).
    for subject in &subjects {
        for _ in 0..5 {
            subject.call(&event).await;
        }
    }
    for _ in 0..rounds {
        for subject in subjects.iter_mut() {
            subject.round(&event, requests).await;
        }
    }
    for subject in &subjects {
        subject.report(requests);
    }
    let [ours, theirs] = &subjects;
    println!(
        "warm: fetch-result against minimal-handler: CPU per request {:.2}x (medians)",
        ours.median_cpu().as_secs_f64() / theirs.median_cpu().as_secs_f64()
    );
    for subject in &subjects {
        subject.function.stop();
    }
    let _ = std::fs::remove_dir_all(log_dir());
}

/// Where this run's function processes log (to files, not into the figures).
fn log_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("request-bench-{}", std::process::id()))
}
