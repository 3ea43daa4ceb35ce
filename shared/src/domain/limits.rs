//! Bounds on what a record keeps of Replicate's answers: its size must not depend on what
//! upstream sends (DynamoDB items stop at 400 KB, Lambda responses at 6 MB).

use crate::domain::replicate::Metrics;

/// Most outputs one prediction may store: the image models make at most 4; an upstream
/// that sends thousands must not grow the record past DynamoDB's 400 KB item limit.
pub const MAX_OUTPUTS: usize = 16;
/// Longest error text kept from Replicate (or written by us).
pub const MAX_ERROR_CHARS: usize = 1000;
/// Metrics beyond `predict_time` and `total_time` that are kept, and the longest key.
const MAX_EXTRA_METRICS: usize = 8;
const MAX_METRIC_KEY_CHARS: usize = 64;

/// An error text cut to `MAX_ERROR_CHARS` (on a character boundary), without control
/// characters: it is stored and shown to clients, so its size must not depend on upstream.
pub fn bounded_error(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .take(MAX_ERROR_CHARS)
        .collect();
    if text.chars().count() > MAX_ERROR_CHARS {
        out.push('…');
    }
    out
}

/// Metrics as stored: the two documented timings plus at most a few other numbers.
pub fn bounded_metrics(metrics: &Metrics) -> Metrics {
    let other = metrics
        .other
        .iter()
        .filter(|(k, v)| v.is_number() && k.chars().count() <= MAX_METRIC_KEY_CHARS)
        .take(MAX_EXTRA_METRICS)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Metrics {
        predict_time: metrics.predict_time.filter(|t| t.is_finite()),
        total_time: metrics.total_time.filter(|t| t.is_finite()),
        other,
    }
}
