//! When and how long to wait before trying a Replicate call again.
//!
//! The decisions are pure functions so the rules (which request may be repeated after
//! which failure) are tested directly, apart from any network.

use std::time::{Duration, SystemTime};

/// Bounds on retrying one call. The defaults keep a synchronous API request (behind API
/// Gateway's 30 s limit) inside its time: at most 4 attempts, and no retry that would start
/// after 15 s (so with the 10 s request timeout a call ends within about 25 s, inside the
/// functions' 29 s timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles for each further one.
    pub base_delay: Duration,
    /// Ceiling of one computed backoff.
    pub max_delay: Duration,
    /// The longest `Retry-After` worth waiting for here. A longer one is handed back to the
    /// caller, whose own client can come back later, instead of holding a Lambda open.
    pub max_retry_after: Duration,
    /// No further attempt once this much time has passed since the first (attempts and
    /// waits together).
    pub max_total_time: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(2),
            max_retry_after: Duration::from_secs(5),
            max_total_time: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// No retries at all: every failure is reported at once.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Exponential backoff with "equal jitter": half the step is fixed so waits grow, half is
    /// random so many Lambdas throttled at once do not return in lockstep.
    /// `retry` counts from 0 for the first retry.
    pub fn backoff(&self, retry: u32) -> Duration {
        let step = self
            .base_delay
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let half = step / 2;
        half + jitter_up_to(step - half)
    }

    /// The wait before the next attempt, given the server's `Retry-After` (if any):
    /// at least what the server asked for, plus a little jitter.
    pub fn delay_for(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        match retry_after {
            Some(server_asked) => server_asked + jitter_up_to(self.base_delay / 2),
            None => self.backoff(retry),
        }
    }
}

fn jitter_up_to(max: Duration) -> Duration {
    let max_micros = u64::try_from(max.as_micros()).unwrap_or(u64::MAX);
    Duration::from_micros(fastrand::u64(0..=max_micros))
}

/// The kind of call, which decides what may be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// GET and cancel: repeating them changes nothing.
    Idempotent,
    /// Creating a prediction: Replicate has no idempotency key, so a repeat after an
    /// ambiguous failure could start (and bill) a second prediction.
    Create,
}

/// What one attempt ended in, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// An HTTP status that is not a success.
    Status(u16),
    /// The connection could not be made, so no request bytes left this process.
    Connect,
    /// No full answer within the timeout; the request may have been processed.
    Timeout,
    /// The connection failed after the request was (perhaps) sent.
    Transport,
}

/// Whether an attempt that failed this way may be made again.
pub fn is_retryable(kind: CallKind, failure: AttemptFailure) -> bool {
    match (kind, failure) {
        (_, AttemptFailure::Status(429)) | (_, AttemptFailure::Connect) => true,
        (CallKind::Idempotent, AttemptFailure::Status(status)) => (500..600).contains(&status),
        (CallKind::Idempotent, AttemptFailure::Timeout | AttemptFailure::Transport) => true,
        (CallKind::Create, _) => false,
    }
}

/// Parses a `Retry-After` value: delay-seconds (a fractional value is tolerated) or an
/// HTTP date. A date in the past means "now". Unparseable values are ignored.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits but too large for u64: as good as forever.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0)
            .then(|| Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Replicate's 429 body says `Expected available in N second(s).`; used when no
/// `Retry-After` header came with it.
pub fn retry_hint_from_detail(detail: &str) -> Option<Duration> {
    const MARKER: &str = "available in ";
    let start = detail.find(MARKER)? + MARKER.len();
    let rest = &detail[start..];
    let number_len = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let unit = rest[number_len..].trim_start();
    if !unit.starts_with("second") {
        return None;
    }
    let seconds: f64 = rest[..number_len].parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0)
        .then(|| Duration::try_from_secs_f64(seconds).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_rules_for_idempotent_calls() {
        use AttemptFailure::*;
        for failure in [
            Status(429),
            Status(500),
            Status(502),
            Status(503),
            Status(504),
            Connect,
            Timeout,
            Transport,
        ] {
            assert!(is_retryable(CallKind::Idempotent, failure), "{failure:?}");
        }
        for status in [400, 401, 403, 404, 409, 422] {
            assert!(
                !is_retryable(CallKind::Idempotent, Status(status)),
                "{status}"
            );
        }
    }

    #[test]
    fn create_is_retried_only_when_nothing_was_created() {
        use AttemptFailure::*;
        assert!(is_retryable(CallKind::Create, Status(429)));
        assert!(is_retryable(CallKind::Create, Connect));
        for failure in [
            Status(500),
            Status(502),
            Status(503),
            Status(504),
            Timeout,
            Transport,
            Status(422),
        ] {
            assert!(!is_retryable(CallKind::Create, failure), "{failure:?}");
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("1.5", now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        // Obsolete RFC 850 form, still legal for recipients to accept.
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:10 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        for junk in ["", "soon", "-1", "NaN", "inf", "1s"] {
            assert_eq!(parse_retry_after(junk, now), None, "{junk:?}");
        }
    }

    #[test]
    fn throttle_hint_in_replicates_429_body() {
        assert_eq!(
            retry_hint_from_detail("Request was throttled. Expected available in 1 second."),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry_hint_from_detail("Request was throttled. Expected available in 12 seconds."),
            Some(Duration::from_secs(12))
        );
        assert_eq!(
            retry_hint_from_detail("Expected available in 0.5 seconds"),
            Some(Duration::from_millis(500))
        );
        assert_eq!(retry_hint_from_detail("Request was throttled."), None);
        assert_eq!(retry_hint_from_detail("available in 3 minutes"), None);
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy = RetryPolicy {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(800),
            ..RetryPolicy::default()
        };
        for _ in 0..200 {
            let first = policy.backoff(0);
            assert!(
                first >= Duration::from_millis(50) && first <= Duration::from_millis(100),
                "{first:?}"
            );
            let third = policy.backoff(2);
            assert!(
                third >= Duration::from_millis(200) && third <= Duration::from_millis(400),
                "{third:?}"
            );
            let late = policy.backoff(40);
            assert!(
                late >= Duration::from_millis(400) && late <= Duration::from_millis(800),
                "{late:?}"
            );
        }
        let samples: std::collections::HashSet<_> = (0..50).map(|_| policy.backoff(3)).collect();
        assert!(samples.len() > 1, "backoff must be jittered");
    }

    #[test]
    fn server_retry_after_is_a_floor() {
        let policy = RetryPolicy::default();
        for _ in 0..100 {
            let wait = policy.delay_for(0, Some(Duration::from_secs(2)));
            assert!(wait >= Duration::from_secs(2));
            assert!(wait <= Duration::from_secs(2) + policy.base_delay / 2);
        }
    }
}
