//! Structured JSON logs and CloudWatch metrics (Embedded Metric Format) for the functions
//! and the local server. Any layer may log or count; this module imports nothing of the
//! crate.

pub mod metrics;

use tracing_subscriber::EnvFilter;

/// JSON lines on stdout at `filter` (`RUST_LOG` syntax; default `info`). Spans' fields
/// (request and prediction ids) are included in every event inside them.
pub fn init_json_logs(filter: Option<&str>) {
    let filter = filter
        .or(lambda_log_level(
            std::env::var("AWS_LAMBDA_LOG_LEVEL").ok().as_deref(),
        ))
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .without_time()
        .try_init();
}

/// The filter for Lambda's application log level (`AWS_LAMBDA_LOG_LEVEL`, set by the
/// function's logging configuration), used when `RUST_LOG` (the stack's `LogLevel`) is unset.
/// Metric lines are not logs: they are written whatever the level.
fn lambda_log_level(level: Option<&str>) -> Option<&'static str> {
    match level?.trim().to_ascii_uppercase().as_str() {
        "TRACE" => Some("trace"),
        "DEBUG" => Some("debug"),
        "INFO" => Some("info"),
        "WARN" => Some("warn"),
        "ERROR" | "FATAL" => Some("error"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_log_levels_map_to_filters() {
        assert_eq!(lambda_log_level(Some("DEBUG")), Some("debug"));
        assert_eq!(lambda_log_level(Some("fatal")), Some("error"));
        assert_eq!(lambda_log_level(Some("verbose")), None);
        assert_eq!(lambda_log_level(None), None);
    }
}
