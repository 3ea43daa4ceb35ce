//! Fault injection: the random `Faults`, the `Markers` that steer one prediction (from its
//! prompt and from the faults rolled for it), and the faulty answers to API calls and creates.

use std::time::Duration;

use http::{Method, StatusCode, header};
use serde::Serialize;
use serde_json::{Map, Value};

use super::answers::{gateway_error, problem};
use super::{State, lock};
use crate::http_server::HttpResponse;

/// How one prediction behaves: from markers in its prompt, and from the random faults
/// rolled when it was created.
#[derive(Debug, Clone, Default)]
pub(super) struct Markers {
    pub(super) fail: bool,
    pub(super) abort: bool,
    pub(super) cancel: bool,
    pub(super) slow: bool,
    /// Stays `starting` twenty times as long, as a model booting cold does.
    pub(super) cold: bool,
    pub(super) no_webhook: bool,
    pub(super) duplicate: bool,
    pub(super) reorder: bool,
    pub(super) delay_webhooks: bool,
    pub(super) foreign_host: bool,
}

/// Random faults, each a probability per prediction or per request (0 = never). Set in
/// `SimConfig`, from `SIM_FAULTS` (JSON) for the binary, or at run time with
/// `POST /_sim/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// No webhook at all for the prediction (a lost delivery, retries included).
    pub webhook_drop: f64,
    /// The completed webhook is delivered twice.
    pub webhook_duplicate: f64,
    /// The start webhook arrives after the completed one.
    pub webhook_reorder: f64,
    /// Webhooks wait `webhook_delay_ms` before being sent.
    pub webhook_delay: f64,
    pub webhook_delay_ms: u64,
    /// A create is answered 429 (and creates nothing).
    pub create_throttle: f64,
    /// Share of those 429s that carry `Retry-After: 1`.
    pub throttle_retry_after: f64,
    /// A create creates and runs its prediction (webhooks included), but the answer is a
    /// gateway error (502 or 504): the caller cannot know the prediction exists.
    pub create_lost: f64,
    /// A create creates and runs its prediction, but answers only after `create_slow_ms`
    /// (default 11000, past the service's 10 s request timeout, so the caller gives up).
    pub create_slow: f64,
    pub create_slow_ms: u64,
    /// A get, list or cancel is answered 503.
    pub server_error: f64,
    /// An API call answers only after `slow_ms`.
    pub slow: f64,
    pub slow_ms: u64,
    /// The prediction ends failed, canceled or aborted.
    pub fail: f64,
    pub cancel: f64,
    pub abort: f64,
    /// The first download of an output file is answered 500.
    pub download_fail_once: f64,
    /// The first download of an output file stops halfway (its Content-Length promises
    /// the whole file).
    pub download_truncate_once: f64,
    /// A download answers only after `download_stall_ms`.
    pub download_stall: f64,
    pub download_stall_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            webhook_drop: 0.0,
            webhook_duplicate: 0.0,
            webhook_reorder: 0.0,
            webhook_delay: 0.0,
            webhook_delay_ms: 0,
            create_throttle: 0.0,
            throttle_retry_after: 0.0,
            create_lost: 0.0,
            create_slow: 0.0,
            create_slow_ms: 11_000,
            server_error: 0.0,
            slow: 0.0,
            slow_ms: 0,
            fail: 0.0,
            cancel: 0.0,
            abort: 0.0,
            download_fail_once: 0.0,
            download_truncate_once: 0.0,
            download_stall: 0.0,
            download_stall_ms: 0,
        }
    }
}

pub(super) fn roll(probability: f64) -> bool {
    probability > 0.0 && fastrand::f64() < probability
}

impl Faults {
    /// Rolls this prediction's share of the faults into its behaviour.
    pub(super) fn apply_to(&self, m: &mut Markers) {
        m.no_webhook |= roll(self.webhook_drop);
        m.duplicate |= roll(self.webhook_duplicate);
        m.reorder |= roll(self.webhook_reorder);
        m.delay_webhooks |= roll(self.webhook_delay);
        m.fail |= roll(self.fail);
        m.cancel |= roll(self.cancel);
        m.abort |= roll(self.abort);
    }
}

impl Markers {
    pub(super) fn from_input(input: &Map<String, Value>) -> Self {
        let prompt = input
            .get("prompt")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Self {
            fail: prompt.contains("[sim:fail]"),
            abort: prompt.contains("[sim:abort]"),
            cancel: prompt.contains("[sim:cancel]"),
            delay_webhooks: false,
            slow: prompt.contains("[sim:slow]"),
            cold: prompt.contains("[sim:cold]"),
            no_webhook: prompt.contains("[sim:no-webhook]"),
            duplicate: prompt.contains("[sim:duplicate]"),
            reorder: prompt.contains("[sim:reorder]"),
            foreign_host: prompt.contains("[sim:foreign-host]"),
        }
    }
}

impl State {
    /// What the caller of a create hears. The faults here strike only a create that
    /// succeeded: its prediction exists and runs (webhooks included) whatever the answer.
    pub(super) async fn answer_create(&self, created: HttpResponse) -> HttpResponse {
        if created.status() != StatusCode::CREATED {
            return created;
        }
        let faults = lock(&self.faults).clone();
        if roll(faults.create_slow) {
            lock(&self.stats).slow_creates += 1;
            tokio::time::sleep(Duration::from_millis(faults.create_slow_ms)).await;
        }
        if roll(faults.create_lost) {
            lock(&self.stats).lost_creates += 1;
            return gateway_error();
        }
        created
    }

    /// Takes a create from the limit's bucket; `Some(wait)` when it is empty (refused).
    fn over_create_limit(&self) -> Option<Duration> {
        let per_minute = self.config.creates_per_minute?;
        let per_second = f64::from(per_minute.max(1)) / 60.0;
        let mut bucket = lock(&self.create_tokens);
        let now = std::time::Instant::now();
        let refilled = bucket.0 + now.duration_since(bucket.1).as_secs_f64() * per_second;
        *bucket = (refilled.min(create_burst(per_minute)), now);
        if bucket.0 >= 1.0 {
            bucket.0 -= 1.0;
            return None;
        }
        Some(Duration::from_secs_f64((1.0 - bucket.0) / per_second))
    }

    /// The injected answer for an API call, if a fault strikes it.
    pub(super) async fn api_fault(
        &self,
        method: &Method,
        segments: &[&str],
    ) -> Option<HttpResponse> {
        let faults = lock(&self.faults).clone();
        if roll(faults.slow) {
            tokio::time::sleep(Duration::from_millis(faults.slow_ms)).await;
        }
        let is_create = method == Method::POST && segments.last() == Some(&"predictions");
        if is_create && let Some(wait) = self.over_create_limit() {
            lock(&self.stats).throttled += 1;
            lock(&self.stats).rate_limited += 1;
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "Request was throttled. Expected available in 1 second.",
            );
            let seconds = wait.as_millis().div_ceil(1000).max(1).to_string();
            if let Ok(value) = http::HeaderValue::from_str(&seconds) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            return Some(response);
        }
        if is_create && roll(faults.create_throttle) {
            lock(&self.stats).throttled += 1;
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "Request was throttled. Expected available in 1 second.",
            );
            if roll(faults.throttle_retry_after) {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            }
            return Some(response);
        }
        if !is_create && segments.get(1) == Some(&"predictions") && roll(faults.server_error) {
            lock(&self.stats).server_errors += 1;
            return Some(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service temporarily unavailable.",
            ));
        }
        None
    }
}

/// The create limit's burst: two seconds' worth.
pub(super) fn create_burst(per_minute: u32) -> f64 {
    (f64::from(per_minute) / 30.0).max(1.0)
}
