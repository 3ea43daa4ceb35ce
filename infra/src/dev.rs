//! The dev server: plain HTTP requests in, `lambda_http` requests to the shared handlers,
//! responses back out. The routes behave as they do behind API Gateway.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, header};
use imagegen_shared::app::{ApiError, App, MAX_BODY_BYTES, Ports, request_id};
use lambda_http::Body;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::http_server::{HttpRequest, HttpResponse, Server, serve};
use crate::meter::Invocations;

fn too_large() -> HttpResponse {
    from_lambda(
        ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        }
        .into_response(),
    )
}

/// The request as `lambda_http` would build it from an API Gateway event: same method, path,
/// query, headers and body; `x-forwarded-proto` as API Gateway sets it; a request id.
pub fn to_lambda(request: HttpRequest) -> lambda_http::Request {
    let (mut parts, body) = request.into_parts();
    parts
        .headers
        .entry("x-forwarded-proto")
        .or_insert(HeaderValue::from_static("http"));
    if !parts.headers.contains_key("x-request-id")
        && let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
    {
        parts.headers.insert("x-request-id", id);
    }
    let body = if body.is_empty() {
        Body::Empty
    } else {
        Body::Binary(body.to_vec())
    };
    http::Request::from_parts(parts, body)
}

pub fn from_lambda(response: http::Response<Body>) -> HttpResponse {
    let (parts, body) = response.into_parts();
    let bytes = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(data) => Bytes::from(data),
        _ => Bytes::new(),
    };
    let mut response = http::Response::from_parts(parts, bytes);
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response
}

/// Serves the three routes of `app` on `listener`.
pub fn serve_app<P: Ports>(listener: TcpListener, app: Arc<App<P>>) -> Server {
    serve_app_metered(listener, app, None)
}

/// `serve_app`, telling `invocations` (`make cost`) each request's route and handler time.
pub fn serve_app_metered<P: Ports>(
    listener: TcpListener,
    app: Arc<App<P>>,
    invocations: Option<Arc<Invocations>>,
) -> Server {
    serve(listener, MAX_BODY_BYTES, too_large, move |request| {
        let app = app.clone();
        let invocations = invocations.clone();
        async move {
            let request = to_lambda(request);
            let span = tracing::info_span!(
                "request",
                request_id = %request_id(&request),
                method = %request.method(),
                path = %request.uri().path(),
                prediction_id = tracing::field::Empty,
                tenant = tracing::field::Empty
            );
            let (method, path) = (request.method().clone(), request.uri().path().to_owned());
            let started = std::time::Instant::now();
            let response = app.route(request).instrument(span).await;
            if let Some(invocations) = &invocations {
                invocations.record_request(method.as_str(), &path, started.elapsed());
            }
            from_lambda(response)
        }
    })
}

/// Queue settings of the local stack: a failed copy job is seen again after this long, and
/// dead-lettered after `LOCAL_MAX_RECEIVES` tries (the template's values are larger).
pub const LOCAL_VISIBILITY_TIMEOUT_SECONDS: u32 = 20;
pub const LOCAL_MAX_RECEIVES: u32 = 5;
/// Time one local copy job may take (the Lambda worker's comes from its timeout).
const LOCAL_COPY_BUDGET: std::time::Duration = std::time::Duration::from_secs(15);

/// The copy worker's local stand-in: long-polls the copy queue (moto's SQS) and runs each
/// batch through the same handler as the Lambda worker, deleting the jobs that succeeded.
pub fn spawn_copy_worker(
    app: Arc<imagegen_shared::bootstrap::ProductionApp>,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
) -> tokio::task::JoinHandle<()> {
    spawn_copy_worker_metered(app, sqs, queue_url, None)
}

/// `spawn_copy_worker`, telling `invocations` (`make cost`) each job's handler time.
pub fn spawn_copy_worker_metered(
    app: Arc<imagegen_shared::bootstrap::ProductionApp>,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    invocations: Option<Arc<Invocations>>,
) -> tokio::task::JoinHandle<()> {
    use imagegen_shared::bootstrap::{SqsBatch, SqsMessage, copy_batch};
    tokio::spawn(async move {
        loop {
            let received = sqs
                .receive_message()
                .queue_url(&queue_url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .send()
                .await;
            let messages = match received {
                Ok(output) => output.messages.unwrap_or_default(),
                Err(err) => {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(err), "copy queue receive failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            if messages.is_empty() {
                continue;
            }
            // One message a batch, each with its own deadline, as the Lambda worker runs
            // them (BatchSize 1): a slow job never eats the next one's time.
            let mut failures = Vec::new();
            for message in &messages {
                let batch = SqsBatch {
                    records: vec![SqsMessage {
                        message_id: message.message_id.clone().unwrap_or_default(),
                        body: message.body.clone().unwrap_or_default(),
                    }],
                };
                let started = tokio::time::Instant::now();
                let deadline = started + LOCAL_COPY_BUDGET;
                failures.extend(copy_batch(&app, batch, deadline).await.failures);
                if let Some(invocations) = &invocations {
                    invocations.record_queue_job(started.elapsed());
                }
            }
            for message in &messages {
                let failed = failures
                    .iter()
                    .any(|f| Some(f.id.as_str()) == message.message_id.as_deref());
                if failed {
                    continue;
                }
                if let Some(handle) = &message.receipt_handle
                    && let Err(err) = sqs
                        .delete_message()
                        .queue_url(&queue_url)
                        .receipt_handle(handle)
                        .send()
                        .await
                {
                    tracing::warn!(error = %aws_sdk_sqs::error::DisplayErrorContext(err), "copy job could not be deleted; it will run again");
                }
            }
        }
    })
}
