//! `make bench` (part): what checking API keys in the function costs, measured through the
//! local stack (HTTP routes, DynamoDB on moto): a request whose key is in the process's
//! key cache against one whose key must be read from the table, and the cached check alone
//! in process. The README weighs these figures against an API Gateway Lambda authorizer.
//!
//! Bounded: `AUTH_BENCH_COUNT` requests per case (default 200), all on 127.0.0.1.

use std::time::{Duration, Instant};

use imagegen_shared::app::KEY_CACHE_TTL;
use integration_tests::{Stack, env_number};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(label: &str, mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    let p50 = percentile(&samples, 0.5);
    println!(
        "{label:<44} p50 {:>7.3} ms   p90 {:>7.3} ms",
        p50.as_secs_f64() * 1e3,
        percentile(&samples, 0.9).as_secs_f64() * 1e3
    );
    p50
}

#[tokio::main]
async fn main() {
    let count = env_number("AUTH_BENCH_COUNT", 200) as usize;
    let stack = Stack::start_in_process().await;
    let url = format!("{}/v1/usage", stack.base);
    let timed = || async {
        let started = Instant::now();
        let response = stack.http.get(&url).send().await.expect("usage");
        assert!(response.status().is_success(), "{}", response.status());
        response.bytes().await.expect("body");
        started.elapsed()
    };
    // Warm up the connection and the key cache.
    for _ in 0..20 {
        timed().await;
    }
    let mut cached = Vec::with_capacity(count);
    for _ in 0..count {
        cached.push(timed().await);
    }
    let mut uncached = Vec::with_capacity(count);
    for _ in 0..count {
        // Past the cache's lifetime: this request reads the key from the table.
        stack.app.clock.advance(KEY_CACHE_TTL);
        uncached.push(timed().await);
    }
    println!("GET /v1/usage through the local stack, {count} requests each:");
    let hit = summary("  key in the process's cache", cached);
    let miss = summary("  key read from DynamoDB (moto)", uncached);
    println!(
        "  a key read adds {:.3} ms at p50 (in AWS a GetItem takes a few ms)",
        (miss.saturating_sub(hit)).as_secs_f64() * 1e3
    );

    let request = || {
        let mut request = lambda_http::Request::new(lambda_http::Body::Empty);
        request.headers_mut().insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_str(&format!("Bearer {}", stack.api_key)).expect("header"),
        );
        request
    };
    let one = request();
    imagegen_shared::http::auth::caller(&stack.app, &one)
        .await
        .expect("a valid key");
    let rounds = 100_000u32;
    let started = Instant::now();
    for _ in 0..rounds {
        imagegen_shared::http::auth::caller(&stack.app, &one)
            .await
            .expect("a valid key");
    }
    println!(
        "cached key check in process (hash + cache + constant-time compare): {:.2} µs",
        started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    );
}
