//! Structured JSON logs for the Lambda functions and the local server.

use tracing_subscriber::EnvFilter;

/// JSON lines on stdout at `filter` (`RUST_LOG` syntax; default `info`). Spans' fields
/// (request and prediction ids) are included in every event inside them.
pub fn init_json_logs(filter: Option<&str>) {
    let filter = filter
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
