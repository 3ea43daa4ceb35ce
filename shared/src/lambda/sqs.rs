//! The queue-fed functions: SQS batches as Lambda delivers them (`aws_lambda_events`), each
//! message's job run through its use case, and the partial batch response (the messages to
//! deliver again; the others are deleted). Copy jobs return to the queue on failure;
//! callbacks and creates hide their own message until they are due again.

use std::future::Future;
use std::time::Duration;

pub use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::{LambdaEvent, service_fn};
use tracing::Instrument;

use super::work_deadline;
use crate::app::{App, Settings};
use crate::ports::Ports;
use crate::ports::jobs::Redelivery;
use crate::telemetry::metrics::{self, Metric, Unit};

/// A batch whose message cannot be named in a partial batch response fails whole (Lambda
/// would read an empty identifier as the whole batch's failure anyway, and then redeliver
/// the messages that succeeded); SQS always sends ids, so this is a malformed event.
fn every_message_has_an_id(batch: &SqsEvent) -> Result<(), lambda_runtime::Error> {
    if batch.records.iter().any(|m| m.message_id.is_none()) {
        tracing::error!("an SQS message without an id; the batch is failed whole");
        return Err("an SQS message without an id".into());
    }
    Ok(())
}

/// A batch of `messages`, as Lambda delivers one (the local stack's pollers build theirs).
pub fn sqs_event(messages: impl IntoIterator<Item = SqsMessage>) -> SqsEvent {
    let mut event = SqsEvent::default();
    event.records = messages.into_iter().collect();
    event
}

/// A message with an id and a body, received once.
pub fn sqs_message(id: impl Into<String>, body: impl Into<String>) -> SqsMessage {
    let mut message = SqsMessage::default();
    message.message_id = Some(id.into());
    message.body = Some(body.into());
    message
}

/// Records how long `message` waited in `queue` (the backlog an operator watches).
fn record_age(message: &SqsMessage, queue: &'static str) {
    let Some(sent) = message
        .attributes
        .get("SentTimestamp")
        .and_then(|t| t.parse::<u128>().ok())
    else {
        return;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    metrics::record(
        Metric::value(
            "QueueAge",
            now.saturating_sub(sent) as f64,
            Unit::Milliseconds,
        )
        .by("Queue", queue),
    );
}

/// Which delivery attempt `message` is (from 1): SQS's receive count.
pub fn attempt(message: &SqsMessage) -> u32 {
    message
        .attributes
        .get("ApproximateReceiveCount")
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// A message to deliver again (Lambda's `ReportBatchItemFailures`).
fn failure(message_id: Option<String>) -> BatchItemFailure {
    let mut failure = BatchItemFailure::default();
    failure.item_identifier = message_id.unwrap_or_default();
    failure
}

/// Delivers each message's callback attempt, at once; those to try again are hidden until
/// their retry is due and reported back (the others are done, and deleted).
pub async fn callback_batch<P: Ports, R: Redelivery>(
    app: &App<P>,
    batch: SqsEvent,
    redelivery: &R,
) -> SqsBatchResponse {
    use crate::app::CallbackDisposition;
    redelivering_batch(batch, redelivery, "callbacks", |job: crate::domain::callbacks::CallbackJob, attempt| async move {
        let span = tracing::info_span!("callback", prediction_id = %job.prediction_id);
        let disposition = match app.deliver_callback(&job, attempt).instrument(span).await {
            Ok(disposition) => disposition,
            Err(err) => {
                tracing::warn!(prediction_id = %job.prediction_id, error = %err, "callback attempt could not run; retried");
                app.callback_not_run(&job, attempt).await
            }
        };
        let outcome = match disposition {
            CallbackDisposition::Done => "done",
            CallbackDisposition::DeadLettered => "dead_lettered",
            CallbackDisposition::RetryAfter(_) => "retry",
        };
        metrics::record(
            Metric::count("CallbackAttempts").by("Outcome", outcome),
        );
        match disposition {
            CallbackDisposition::RetryAfter(wait) => Some(wait),
            CallbackDisposition::Done | CallbackDisposition::DeadLettered => None,
        }
    })
    .await
}

/// Runs the create job of each message (the drainer, README "Bursts"), all at once: their
/// slots were spaced by the pacer. A job not due yet, or throttled, is hidden until it is.
pub async fn create_batch<P: Ports, R: Redelivery>(
    app: &App<P>,
    batch: SqsEvent,
    redelivery: &R,
) -> SqsBatchResponse {
    use crate::app::CreateDisposition;
    redelivering_batch(batch, redelivery, "create", |job: crate::domain::jobs::CreateJob, _| async move {
        let span = tracing::info_span!("create", prediction_id = %job.prediction_id);
        match app.drain_create(&job).instrument(span).await {
            Ok(CreateDisposition::Done) => None,
            Ok(CreateDisposition::RetryAfter(wait)) => Some(wait),
            Err(err) => {
                tracing::warn!(prediction_id = %job.prediction_id, error = %err, "create job could not run; retried");
                Some(Duration::from_secs(10))
            }
        }
    })
    .await
}

/// Runs each message's job at once (`run` gets the job and the delivery's attempt number,
/// and says how long until it is due again, if it is). A job to try again hides its message
/// until then and is reported back; an unreadable one can never run, and is dropped.
async fn redelivering_batch<R, J, F, Fut>(
    batch: SqsEvent,
    redelivery: &R,
    queue: &'static str,
    run: F,
) -> SqsBatchResponse
where
    R: Redelivery,
    J: serde::de::DeserializeOwned,
    F: Fn(J, u32) -> Fut,
    Fut: Future<Output = Option<Duration>>,
{
    let run = &run;
    let attempts = batch.records.into_iter().map(|message| async move {
        record_age(&message, queue);
        let body = message.body.as_deref().unwrap_or_default();
        let job = match serde_json::from_str::<J>(body) {
            Ok(job) => job,
            Err(err) => {
                tracing::error!(message_id = ?message.message_id, queue, error = %err, "unreadable job; dropped");
                return None;
            }
        };
        let wait = run(job, attempt(&message)).await?;
        let receipt = message.receipt_handle.as_deref().unwrap_or_default();
        if let Err(err) = redelivery.hide_for(receipt, wait).await {
            tracing::warn!(queue, error = %err, "could not delay the job's retry; it comes back sooner");
        }
        Some(failure(message.message_id))
    });
    let mut response = SqsBatchResponse::default();
    response.batch_item_failures = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .flatten()
        .collect();
    response
}

/// The queues whose jobs hide their own messages until they are due again
/// (`ChangeMessageVisibility`): callbacks (their backoff) and creates (their slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeliveringQueue {
    Callbacks,
    Creates,
}

impl RedeliveringQueue {
    pub fn url(self, settings: &Settings) -> String {
        match self {
            Self::Callbacks => settings.callback_queue_url.clone(),
            Self::Creates => settings.create_queue_url.clone(),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Callbacks => "callbacks",
            Self::Creates => "creates",
        }
    }

    /// Runs one batch of this queue's jobs.
    pub async fn run_batch<P: Ports, R: Redelivery>(
        self,
        app: &App<P>,
        batch: SqsEvent,
        redelivery: &R,
    ) -> SqsBatchResponse {
        match self {
            Self::Callbacks => callback_batch(app, batch, redelivery).await,
            Self::Creates => create_batch(app, batch, redelivery).await,
        }
    }
}

/// The worker fed by `queue`: the callbacks function, or the drainer. `init` builds, once
/// per process, the app and what hides this queue's messages.
pub async fn run_redelivering_worker<P, R, E, Fut>(
    queue: RedeliveringQueue,
    init: impl FnOnce(RedeliveringQueue) -> Fut,
) -> Result<(), lambda_runtime::Error>
where
    P: Ports,
    R: Redelivery + 'static,
    E: Into<lambda_runtime::Error>,
    Fut: Future<Output = Result<(&'static App<P>, R), E>>,
{
    let (app, redelivery) = init(queue).await.map_err(Into::into)?;
    let redelivery: &'static R = Box::leak(Box::new(redelivery));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        every_message_has_an_id(&event.payload)?;
        let request_id = &event.context.request_id;
        let span = match queue {
            RedeliveringQueue::Callbacks => tracing::info_span!("callback-batch", %request_id),
            RedeliveringQueue::Creates => tracing::info_span!("create-batch", %request_id),
        };
        let response = queue
            .run_batch(app, event.payload, redelivery)
            .instrument(span)
            .await;
        Ok::<_, lambda_runtime::Error>(response)
    }))
    .await
}

/// Runs the copy job of each message until `deadline`; failed (and unreadable) ones are
/// reported for another delivery, ending in the dead-letter queue after the redrive limit.
pub async fn copy_batch<P: Ports>(
    app: &App<P>,
    batch: SqsEvent,
    deadline: tokio::time::Instant,
) -> SqsBatchResponse {
    let mut response = SqsBatchResponse::default();
    for message in batch.records {
        record_age(&message, "copy");
        let started = std::time::Instant::now();
        let body = message.body.as_deref().unwrap_or_default();
        let failed = match serde_json::from_str::<crate::domain::jobs::CopyJob>(body) {
            Ok(job) => {
                let span = tracing::info_span!("copy", prediction_id = %job.prediction_id);
                // Boxed: the copy's future (download, multipart upload, the state path) is
                // deep enough to pass the compiler's layout depth inside the runtime's.
                let copied = Box::pin(app.copy_outputs(&job, deadline))
                    .instrument(span)
                    .await;
                crate::telemetry::metrics::record(crate::telemetry::metrics::Metric::value(
                    "CopyTime",
                    started.elapsed().as_secs_f64() * 1000.0,
                    crate::telemetry::metrics::Unit::Milliseconds,
                ));
                match copied {
                    Ok(outcome) => {
                        tracing::info!(prediction_id = %job.prediction_id, ?outcome, "copy job done");
                        false
                    }
                    Err(err) => {
                        tracing::warn!(prediction_id = %job.prediction_id, error = %err, "copy job failed; it will be retried");
                        true
                    }
                }
            }
            Err(err) => {
                tracing::error!(message_id = ?message.message_id, error = %err, "unreadable copy job");
                true
            }
        };
        if failed {
            response
                .batch_item_failures
                .push(failure(message.message_id));
        }
    }
    response
}

/// The copy worker, fed by the copy queue.
pub async fn run_copier<P, E>(
    init: impl Future<Output = Result<&'static App<P>, E>>,
) -> Result<(), lambda_runtime::Error>
where
    P: Ports,
    E: Into<lambda_runtime::Error>,
{
    let app = init.await.map_err(Into::into)?;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEvent>| async move {
        every_message_has_an_id(&event.payload)?;
        let deadline = work_deadline(&event.context);
        let span = tracing::info_span!("copy-batch", request_id = %event.context.request_id);
        let response = copy_batch(app, event.payload, deadline)
            .instrument(span)
            .await;
        Ok::<_, lambda_runtime::Error>(response)
    }))
    .await
}
