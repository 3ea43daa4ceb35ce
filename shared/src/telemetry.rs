//! Structured JSON logs for the Lambda functions and the local server.

use tracing_subscriber::EnvFilter;

/// JSON lines on stdout, level from `RUST_LOG` (default `info`). Spans' fields (request and
/// prediction ids) are included in every event inside them.
pub fn init_json_logs() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .with_target(false)
        .without_time()
        .try_init();
}
