//! Building the production `App` from the environment, once per process, and running a
//! handler under the Lambda runtime. The three functions' `main`s are one call each.
//!
//! Every environment variable the functions read is read in `boot_config`, through one
//! lookup function, so a test can see exactly which variables the code needs (and compare
//! them with the SAM template).

use std::future::Future;
use std::time::Duration;

use lambda_http::{Body, Request, Response};
use tracing::Instrument;

use crate::adapters::aws::SqsRedelivery;
use crate::app::{App, request_id};
use crate::ports::jobs::Redelivery;

use crate::adapters::aws::{AwsClients, DynamoRecords, QueueUrls, S3Objects, SqsQueues};
use crate::adapters::http::callbacks::HttpCallbacks;
use crate::adapters::http::dns::SystemResolver;
use crate::adapters::http::downloads::HttpDownloads;
use crate::adapters::replicate::{ApiToken, ClientBuildError, ClientConfig, ReplicateClient};
use crate::config::{ConfigError, Settings, replicate_token};
use crate::domain::registry::{ModelRegistry, RegistryError};
use crate::ports::PortSet;

/// The real ports: Replicate over HTTP, DynamoDB, S3, HTTP downloads.
pub struct Production;

impl crate::ports::Ports for Production {
    type Replicate = ReplicateClient;
    type Records = DynamoRecords;
    type Objects = S3Objects;
    type Downloads = HttpDownloads;
    type Queue = SqsQueues;
    type Callbacks = HttpCallbacks;
    type Resolver = SystemResolver;
}

pub type ProductionApp = App<Production>;

/// Names the SSM SecureString holding the Replicate token (how the SAM stack provides it).
pub const TOKEN_PARAMETER_ENV: &str = "REPLICATE_API_TOKEN_PARAMETER";

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("could not build an HTTP client: {0}")]
    Downloads(#[from] reqwest::Error),
    #[error("could not read the Replicate token from SSM: {0}")]
    Token(#[from] crate::ports::StoreError),
}

/// Where the Replicate token comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `REPLICATE_API_TOKEN` (local use).
    Value(String),
    /// The SSM SecureString named by `REPLICATE_API_TOKEN_PARAMETER` (in AWS).
    Parameter(String),
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(_) => f.write_str("Value(<redacted>)"),
            Self::Parameter(name) => write!(f, "Parameter({name})"),
        }
    }
}

impl TokenSource {
    /// The token; reads SSM (once, at cold start) when it lives there.
    pub async fn resolve(self, aws: &AwsClients) -> Result<String, BootError> {
        match self {
            Self::Value(token) => Ok(token),
            Self::Parameter(name) => Ok(aws.secure_parameter(&name).await?),
        }
    }
}

/// Everything read from the environment.
#[derive(Debug)]
pub struct BootConfig {
    pub settings: Settings,
    pub registry: ModelRegistry,
    pub token: TokenSource,
    /// `RUST_LOG`
    pub log_filter: Option<String>,
}

/// Reads the whole configuration through `lookup`: the environment, or the environment
/// with the local stack's additions.
pub fn boot_config(lookup: impl Fn(&str) -> Option<String>) -> Result<BootConfig, BootError> {
    let settings = Settings::from_lookup(&lookup)?;
    let registry = ModelRegistry::from_lookup(&lookup)?;
    let token = match replicate_token(&lookup) {
        Ok(token) => TokenSource::Value(token),
        Err(missing) => match lookup(TOKEN_PARAMETER_ENV)
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
        {
            Some(name) => TokenSource::Parameter(name),
            None => return Err(missing.into()),
        },
    };
    Ok(BootConfig {
        settings,
        registry,
        token,
        log_filter: lookup("RUST_LOG"),
    })
}

/// Builds every client. Nothing here talks to the network: the webhook secret, if not
/// configured, is fetched on first use.
pub fn production_app(
    aws: AwsClients,
    token: String,
    config: BootConfig,
) -> Result<ProductionApp, BootError> {
    let BootConfig {
        settings, registry, ..
    } = config;
    let replicate = ReplicateClient::new(ClientConfig::new(
        settings.replicate_base_url.clone(),
        ApiToken::new(token),
    ))?;
    let records = DynamoRecords::new(aws.dynamodb, settings.table_name.clone());
    let objects = S3Objects::new(aws.s3, settings.bucket_name.clone(), aws.credentials);
    let downloads = HttpDownloads::new(settings.output_hosts.clone());
    let queue = SqsQueues::new(
        aws.sqs,
        QueueUrls {
            copy: settings.copy_queue_url.clone(),
            callback: settings.callback_queue_url.clone(),
            callback_dead_letter: settings.callback_dead_letter_url.clone(),
            create: settings.create_queue_url.clone(),
        },
    );
    let callbacks = HttpCallbacks::new(settings.callback_allow.clone());
    let ports = PortSet {
        replicate,
        records,
        objects,
        downloads,
        queue,
        callbacks,
        resolver: SystemResolver,
    };
    Ok(App::new(ports, registry, settings))
}

/// Reads the configuration and builds the app from `lookup`, resolving the token.
pub async fn build_app(
    aws: AwsClients,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<ProductionApp, BootError> {
    let mut config = boot_config(lookup)?;
    let token = std::mem::replace(&mut config.token, TokenSource::Value(String::new()))
        .resolve(&aws)
        .await?;
    production_app(aws, token, config)
}

/// Cold start: logs, SDK clients, configuration, the token; the app lives for the process.
async fn init_app() -> Result<&'static ProductionApp, lambda_http::Error> {
    init_app_with_sqs().await.map(|(app, _)| app)
}

/// `init_app`, also handing back the SQS client (the callback worker hides messages).
async fn init_app_with_sqs()
-> Result<(&'static ProductionApp, aws_sdk_sqs::Client), lambda_http::Error> {
    let env = |name: &str| std::env::var(name).ok();
    crate::telemetry::init_json_logs(env("RUST_LOG").as_deref());
    let aws = AwsClients::from_env().await;
    let sqs = aws.sqs.clone();
    match build_app(aws, env).await {
        Ok(app) => Ok((Box::leak(Box::new(app)), sqs)),
        Err(err) => {
            tracing::error!(error = %err, "configuration error");
            Err(err.into())
        }
    }
}

/// Runs `handler` for every invocation, inside a span carrying the request id (and, once
/// known, the prediction id) so every log line of a request can be found together.
pub async fn run_lambda<F, Fut>(handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(&'static ProductionApp, Request) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let app = init_app().await?;
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
fn work_deadline(context: &lambda_http::lambda_runtime::Context) -> tokio::time::Instant {
    let deadline = std::time::UNIX_EPOCH + Duration::from_millis(context.deadline);
    let remaining = deadline
        .duration_since(std::time::SystemTime::now())
        .unwrap_or_default()
        .saturating_sub(DEADLINE_MARGIN);
    tokio::time::Instant::now() + remaining
}

/// The scheduled reconciler: each invocation (an EventBridge schedule event, whose content
/// does not matter) runs one reconcile pass, within the invocation's time, and returns its
/// report.
pub async fn run_reconciler() -> Result<(), lambda_http::Error> {
    use lambda_http::lambda_runtime::{LambdaEvent, run, service_fn};
    let app = init_app().await?;
    run(service_fn(
        move |event: LambdaEvent<serde_json::Value>| async move {
            let span = tracing::info_span!("reconcile", request_id = %event.context.request_id);
            let deadline = work_deadline(&event.context);
            let report = app.reconcile(Some(deadline)).instrument(span).await;
            Ok::<_, lambda_http::Error>(serde_json::to_value(report)?)
        },
    ))
    .await
}

/// An SQS event, as Lambda delivers a batch (only what the worker reads).
#[derive(Debug, serde::Deserialize)]
pub struct SqsBatch {
    #[serde(rename = "Records", default)]
    pub records: Vec<SqsMessage>,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct SqsMessage {
    #[serde(rename = "messageId")]
    pub message_id: String,
    #[serde(rename = "receiptHandle", default)]
    pub receipt_handle: String,
    #[serde(default)]
    pub body: String,
    #[serde(default)]
    pub attributes: SqsAttributes,
}

#[derive(Debug, Default, serde::Deserialize)]
pub struct SqsAttributes {
    /// How many times the message was received, this time included (a string in events).
    #[serde(rename = "ApproximateReceiveCount", default)]
    pub receive_count: Option<String>,
    /// When it was sent, in ms since the epoch (a string in events).
    #[serde(rename = "SentTimestamp", default)]
    pub sent_timestamp: Option<String>,
}

impl SqsMessage {
    /// Records how long the message waited in `queue` (the backlog an operator watches).
    fn record_age(&self, queue: &'static str) {
        let Some(sent) = self
            .attributes
            .sent_timestamp
            .as_deref()
            .and_then(|t| t.parse::<u128>().ok())
        else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        crate::telemetry::metrics::record(
            crate::telemetry::metrics::Metric::value(
                "QueueAge",
                now.saturating_sub(sent) as f64,
                crate::telemetry::metrics::Unit::Milliseconds,
            )
            .by("Queue", queue),
        );
    }

    /// Which delivery attempt this is (from 1).
    pub fn attempt(&self) -> u32 {
        self.attributes
            .receive_count
            .as_deref()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1)
            .max(1)
    }
}

/// Delivers each message's callback attempt, at once; those to try again are hidden until
/// their retry is due and reported back (the others are done, and deleted).
pub async fn callback_batch<P: crate::ports::Ports, R: Redelivery>(
    app: &App<P>,
    batch: SqsBatch,
    redelivery: &R,
) -> BatchResponse {
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
        crate::telemetry::metrics::record(
            crate::telemetry::metrics::Metric::count("CallbackAttempts").by("Outcome", outcome),
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
pub async fn create_batch<P: crate::ports::Ports, R: Redelivery>(
    app: &App<P>,
    batch: SqsBatch,
    redelivery: &R,
) -> BatchResponse {
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
    batch: SqsBatch,
    redelivery: &R,
    queue: &'static str,
    run: F,
) -> BatchResponse
where
    R: Redelivery,
    J: serde::de::DeserializeOwned,
    F: Fn(J, u32) -> Fut,
    Fut: Future<Output = Option<Duration>>,
{
    let run = &run;
    let attempts = batch.records.into_iter().map(|message| async move {
        message.record_age(queue);
        let job = match serde_json::from_str::<J>(&message.body) {
            Ok(job) => job,
            Err(err) => {
                tracing::error!(message_id = %message.message_id, queue, error = %err, "unreadable job; dropped");
                return None;
            }
        };
        let wait = run(job, message.attempt()).await?;
        if let Err(err) = redelivery.hide_for(&message.receipt_handle, wait).await {
            tracing::warn!(queue, error = %err, "could not delay the job's retry; it comes back sooner");
        }
        Some(BatchItemFailure {
            id: message.message_id,
        })
    });
    BatchResponse {
        failures: futures_util::future::join_all(attempts)
            .await
            .into_iter()
            .flatten()
            .collect(),
    }
}

/// The queues whose jobs hide their own messages until they are due again
/// (`ChangeMessageVisibility`): callbacks (their backoff) and creates (their slot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedeliveringQueue {
    Callbacks,
    Creates,
}

impl RedeliveringQueue {
    pub fn url(self, settings: &crate::config::Settings) -> String {
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
    pub async fn run_batch<P: crate::ports::Ports, R: Redelivery>(
        self,
        app: &App<P>,
        batch: SqsBatch,
        redelivery: &R,
    ) -> BatchResponse {
        match self {
            Self::Callbacks => callback_batch(app, batch, redelivery).await,
            Self::Creates => create_batch(app, batch, redelivery).await,
        }
    }
}

/// The worker fed by `queue`: the callbacks function, or the drainer.
pub async fn run_redelivering_worker(queue: RedeliveringQueue) -> Result<(), lambda_http::Error> {
    use lambda_http::lambda_runtime::{LambdaEvent, run, service_fn};
    let (app, sqs) = init_app_with_sqs().await?;
    let redelivery: &'static SqsRedelivery = Box::leak(Box::new(SqsRedelivery {
        client: sqs,
        queue_url: queue.url(&app.settings),
    }));
    run(service_fn(move |event: LambdaEvent<SqsBatch>| async move {
        let request_id = &event.context.request_id;
        let span = match queue {
            RedeliveringQueue::Callbacks => tracing::info_span!("callback-batch", %request_id),
            RedeliveringQueue::Creates => tracing::info_span!("create-batch", %request_id),
        };
        let response = queue
            .run_batch(app, event.payload, redelivery)
            .instrument(span)
            .await;
        Ok::<_, lambda_http::Error>(response)
    }))
    .await
}

/// The partial batch response: the messages to deliver again (Lambda's
/// `ReportBatchItemFailures`); the others are deleted.
#[derive(Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct BatchResponse {
    #[serde(rename = "batchItemFailures")]
    pub failures: Vec<BatchItemFailure>,
}

#[derive(Debug, serde::Serialize, PartialEq, Eq)]
pub struct BatchItemFailure {
    #[serde(rename = "itemIdentifier")]
    pub id: String,
}

/// Runs the copy job of each message until `deadline`; failed (and unreadable) ones are
/// reported for another delivery, ending in the dead-letter queue after the redrive limit.
pub async fn copy_batch<P: crate::ports::Ports>(
    app: &App<P>,
    batch: SqsBatch,
    deadline: tokio::time::Instant,
) -> BatchResponse {
    let mut response = BatchResponse::default();
    for message in batch.records {
        message.record_age("copy");
        let started = std::time::Instant::now();
        let failed = match serde_json::from_str::<crate::domain::jobs::CopyJob>(&message.body) {
            Ok(job) => {
                let span = tracing::info_span!("copy", prediction_id = %job.prediction_id);
                let copied = app.copy_outputs(&job, deadline).instrument(span).await;
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
                tracing::error!(message_id = %message.message_id, error = %err, "unreadable copy job");
                true
            }
        };
        if failed {
            response.failures.push(BatchItemFailure {
                id: message.message_id,
            });
        }
    }
    response
}

/// The copy worker, fed by the copy queue.
pub async fn run_copier() -> Result<(), lambda_http::Error> {
    use lambda_http::lambda_runtime::{LambdaEvent, run, service_fn};
    let app = init_app().await?;
    run(service_fn(move |event: LambdaEvent<SqsBatch>| async move {
        let deadline = work_deadline(&event.context);
        let span = tracing::info_span!("copy-batch", request_id = %event.context.request_id);
        let response = copy_batch(app, event.payload, deadline)
            .instrument(span)
            .await;
        Ok::<_, lambda_http::Error>(response)
    }))
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_comes_from_the_environment_or_an_ssm_parameter() {
        let base = |extra: &'static [(&'static str, &'static str)]| {
            move |name: &str| match name {
                "TABLE_NAME"
                | "BUCKET_NAME"
                | "COPY_QUEUE_URL"
                | "CALLBACK_QUEUE_URL"
                | "CALLBACK_DEAD_LETTER_QUEUE_URL"
                | "CREATE_QUEUE_URL" => Some("x".to_owned()),
                _ => extra
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned()),
            }
        };
        let direct = boot_config(base(&[("REPLICATE_API_TOKEN", "r8_x")])).unwrap();
        assert_eq!(direct.token, TokenSource::Value("r8_x".into()));
        assert!(!format!("{direct:?}").contains("r8_x"));
        let ssm = boot_config(base(&[(TOKEN_PARAMETER_ENV, "/app/token")])).unwrap();
        assert_eq!(ssm.token, TokenSource::Parameter("/app/token".into()));
        let missing = boot_config(base(&[])).unwrap_err();
        assert_eq!(missing.to_string(), "REPLICATE_API_TOKEN is required");
    }
}
