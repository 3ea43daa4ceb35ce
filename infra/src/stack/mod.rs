//! The local stack: the function binaries behind a local API Gateway and Runtime API
//! (`gateway`), or, in process, plain HTTP requests in, `lambda_http` requests to the
//! shared routes, responses back out (the routes behave as they do behind API Gateway);
//! and the queue workers' local stand-ins.

pub mod gateway;

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, header};
use imagegen_shared::app::{ApiError, App};
use imagegen_shared::http::{MAX_BODY_BYTES, request_id};
use imagegen_shared::lambda::RedeliveringQueue;
use imagegen_shared::lambda::sqs::{SqsMessage, copy_batch, sqs_event};
use imagegen_shared::ports::Ports;
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

/// Serves every route of `app` on `listener`.
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
            let response = imagegen_shared::http::route(&app, request)
                .instrument(span)
                .await;
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
/// The callback queue's: its messages are hidden by the worker's own backoff, and the worker
/// dead-letters them itself when their day is over; the redrive limit is a backstop.
pub const LOCAL_CALLBACK_VISIBILITY_SECONDS: u32 = 30;
pub const LOCAL_CALLBACK_MAX_RECEIVES: u32 = 1000;
pub const LOCAL_CREATE_MAX_RECEIVES: u32 = 100;
/// Time one local copy job may take (the Lambda worker's comes from its timeout).
const LOCAL_COPY_BUDGET: std::time::Duration = std::time::Duration::from_secs(15);

/// The queues of a local stack named `name`: copy jobs, callbacks and their dead-letter
/// queue, and queued creates.
pub async fn ensure_local_queues(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
) -> Result<imagegen_shared::adapters::aws::QueueUrls, imagegen_shared::ports::StoreError> {
    use imagegen_shared::adapters::aws::{ensure_queue, ensure_queue_pair};
    let copy = ensure_queue(
        sqs,
        name,
        LOCAL_VISIBILITY_TIMEOUT_SECONDS,
        LOCAL_MAX_RECEIVES,
    )
    .await?;
    let callbacks = ensure_queue_pair(
        sqs,
        &format!("{name}-callbacks"),
        LOCAL_CALLBACK_VISIBILITY_SECONDS,
        LOCAL_CALLBACK_MAX_RECEIVES,
    )
    .await?;
    // Create jobs come back when throttled or received early; a hundred receives is a
    // poison message (the reconciler queues the prediction again anyway).
    let creates = ensure_queue_pair(
        sqs,
        &format!("{name}-creates"),
        LOCAL_CALLBACK_VISIBILITY_SECONDS,
        LOCAL_CREATE_MAX_RECEIVES,
    )
    .await?;
    Ok(imagegen_shared::adapters::aws::QueueUrls {
        copy,
        callback: callbacks.url,
        callback_dead_letter: callbacks.dead_letter_url,
        create: creates.url,
    })
}

/// A Lambda SQS event source's local stand-in: long-polls `queue_url` (moto's SQS), hands
/// each batch to `handle` as the Lambda event would carry it, and deletes the messages it
/// did not report as failed.
pub fn spawn_poller<F, Fut>(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    what: &'static str,
    batch_size: u32,
    handle: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Vec<aws_sdk_sqs::types::Message>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<String>> + Send,
{
    use aws_sdk_sqs::types::MessageSystemAttributeName;
    tokio::spawn(async move {
        loop {
            let received = sqs
                .receive_message()
                .queue_url(&queue_url)
                .max_number_of_messages(batch_size.clamp(1, 10) as i32)
                .wait_time_seconds(1)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await;
            let messages = match received {
                Ok(output) => output.messages.unwrap_or_default(),
                Err(err) => {
                    tracing::warn!(queue = what, error = %aws_sdk_sqs::error::DisplayErrorContext(err), "queue receive failed");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            if messages.is_empty() {
                continue;
            }
            let failures = handle(messages.clone()).await;
            for message in &messages {
                let failed = failures
                    .iter()
                    .any(|f| Some(f.as_str()) == message.message_id.as_deref());
                if failed {
                    continue;
                }
                if let Some(receipt) = &message.receipt_handle
                    && let Err(err) = sqs
                        .delete_message()
                        .queue_url(&queue_url)
                        .receipt_handle(receipt)
                        .send()
                        .await
                {
                    tracing::warn!(queue = what, error = %aws_sdk_sqs::error::DisplayErrorContext(err), "job could not be deleted; it will run again");
                }
            }
        }
    })
}

fn attribute(
    message: &aws_sdk_sqs::types::Message,
    name: aws_sdk_sqs::types::MessageSystemAttributeName,
) -> Option<String> {
    message.attributes.as_ref()?.get(&name).cloned()
}

/// A received message as the Lambda SQS event carries it to the in-process handlers.
fn lambda_message(m: &aws_sdk_sqs::types::Message) -> SqsMessage {
    use aws_sdk_sqs::types::MessageSystemAttributeName as Name;
    let mut message = SqsMessage::default();
    message.message_id = m.message_id.clone();
    message.receipt_handle = m.receipt_handle.clone();
    message.body = m.body.clone();
    for (name, key) in [
        (Name::ApproximateReceiveCount, "ApproximateReceiveCount"),
        (Name::SentTimestamp, "SentTimestamp"),
    ] {
        if let Some(value) = attribute(m, name) {
            message.attributes.insert(key.to_owned(), value);
        }
    }
    message
}

/// The copy worker's local stand-in, on the copy queue.
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
    spawn_poller(sqs, queue_url, "copy", 10, move |messages| {
        let app = app.clone();
        let invocations = invocations.clone();
        async move {
            // One message a batch, each with its own deadline, as the Lambda worker runs
            // them (BatchSize 1): a slow job never eats the next one's time.
            let mut failures = Vec::new();
            for message in &messages {
                let started = tokio::time::Instant::now();
                let batch = sqs_event([lambda_message(message)]);
                let response = copy_batch(&app, batch, started + LOCAL_COPY_BUDGET).await;
                failures.extend(
                    response
                        .batch_item_failures
                        .into_iter()
                        .map(|f| f.item_identifier),
                );
                if let Some(invocations) = &invocations {
                    invocations.record_queue_job("CopyQueue", started.elapsed());
                }
            }
            failures
        }
    })
}

/// The local stand-in of the callbacks function or the drainer (README, "Bursts"), on its
/// queue: the same handler as the Lambda, hiding messages until they are due again with
/// `ChangeMessageVisibility`.
pub fn spawn_redelivering_worker(
    app: Arc<imagegen_shared::bootstrap::ProductionApp>,
    sqs: aws_sdk_sqs::Client,
    queue: RedeliveringQueue,
) -> tokio::task::JoinHandle<()> {
    use imagegen_shared::adapters::aws::SqsRedelivery;
    let queue_url = queue.url(&app.settings);
    let redelivery = Arc::new(SqsRedelivery {
        client: sqs.clone(),
        queue_url: queue_url.clone(),
    });
    spawn_poller(sqs, queue_url, queue.name(), 10, move |messages| {
        let app = app.clone();
        let redelivery = redelivery.clone();
        async move {
            let batch = sqs_event(messages.iter().map(lambda_message));
            let response = queue.run_batch(&app, batch, redelivery.as_ref()).await;
            response
                .batch_item_failures
                .into_iter()
                .map(|f| f.item_identifier)
                .collect()
        }
    })
}
