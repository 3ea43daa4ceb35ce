//! The Lambda runtime: each function's loop, from its invocation event to a use case and
//! back. HTTP functions get API Gateway v2 requests (`lambda_http`), routed by `http`; the
//! queue-fed ones SQS batches (`sqs`); the reconciler EventBridge schedule events
//! (`schedule`). A function's `main` is one call here, given what builds its app
//! (`bootstrap`), so this layer names no adapter.

pub mod schedule;
pub mod sqs;

use std::future::Future;
use std::time::Duration;

use lambda_http::{Body, Request, Response};
use tracing::Instrument;

use crate::app::App;
use crate::http::request_id;
use crate::ports::Ports;

pub use schedule::run_reconciler;
pub use sqs::{RedeliveringQueue, run_copier, run_redelivering_worker};

/// Runs `handler` (an `http` router) for every invocation, inside a span carrying the
/// request id (and, once known, the prediction id and tenant) so every log line of a
/// request can be found together. `init` builds the app, once per process.
pub async fn run_http<P, E, F, Fut>(
    init: impl Future<Output = Result<&'static App<P>, E>>,
    handler: F,
) -> Result<(), lambda_http::Error>
where
    P: Ports,
    E: Into<lambda_http::Error>,
    F: Fn(&'static App<P>, Request) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let app = init.await.map_err(Into::into)?;
    lambda_http::run(lambda_http::service_fn(
        move |request: Request| async move {
            let span = tracing::info_span!(
                "request",
                request_id = %request_id(&request),
                prediction_id = tracing::field::Empty,
                tenant = tracing::field::Empty
            );
            Ok::<_, std::convert::Infallible>(handler(app, request).instrument(span).await)
        },
    ))
    .await
}

/// Time kept back from an invocation's deadline: to finish the item in hand and answer.
const DEADLINE_MARGIN: Duration = Duration::from_secs(10);

/// The invocation's deadline (Lambda's, in ms since the epoch) less the margin, as an
/// `Instant` for the handlers.
fn work_deadline(context: &lambda_runtime::Context) -> tokio::time::Instant {
    let deadline = std::time::UNIX_EPOCH + Duration::from_millis(context.deadline);
    let remaining = deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(DEADLINE_MARGIN);
    tokio::time::Instant::now() + remaining
}
