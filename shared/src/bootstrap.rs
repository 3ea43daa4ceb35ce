//! Building the production `App` from the environment, once per process, and running a
//! handler under the Lambda runtime. The three functions' `main`s are one call each.

use std::future::Future;

use lambda_http::{Body, Request, Response};
use tracing::Instrument;

use crate::app::{App, request_id};
use crate::aws::{AwsClients, DynamoRecords, S3Objects};
use crate::config::{ConfigError, Settings, replicate_token};
use crate::outputs::HttpDownloads;
use crate::registry::{ModelRegistry, RegistryError};
use crate::replicate::{ApiToken, ClientBuildError, ClientConfig, ReplicateClient};

pub type ProductionApp = App<ReplicateClient, DynamoRecords, S3Objects, HttpDownloads>;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("could not build the download client: {0}")]
    Downloads(#[from] reqwest::Error),
}

/// Reads the configuration through `lookup` (the environment, or the environment with the
/// local stack's additions) and builds every client. Nothing here talks to the network:
/// the webhook secret, if not configured, is fetched on first use.
pub fn production_app(
    aws: AwsClients,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<ProductionApp, BootError> {
    let settings = Settings::from_lookup(&lookup)?;
    let registry = ModelRegistry::from_env()?;
    let token = ApiToken::new(replicate_token(&lookup)?);
    let replicate = ReplicateClient::new(ClientConfig::new(
        settings.replicate_base_url.clone(),
        token,
    ))?;
    let records = DynamoRecords::new(aws.dynamodb, settings.table_name.clone());
    let objects = S3Objects::new(aws.s3, settings.bucket_name.clone());
    let downloads = HttpDownloads::new(settings.output_hosts.clone())?;
    Ok(App::new(
        replicate, records, objects, downloads, registry, settings,
    ))
}

/// Runs `handler` for every invocation, inside a span carrying the request id (and, once
/// known, the prediction id) so every log line of a request can be found together.
pub async fn run_lambda<F, Fut>(handler: F) -> Result<(), lambda_http::Error>
where
    F: Fn(&'static ProductionApp, Request) -> Fut + Copy + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    crate::telemetry::init_json_logs();
    let aws = AwsClients::from_env().await;
    let app: &'static ProductionApp = match production_app(aws, |name| std::env::var(name).ok()) {
        Ok(app) => Box::leak(Box::new(app)),
        Err(err) => {
            tracing::error!(error = %err, "configuration error");
            return Err(err.into());
        }
    };
    lambda_http::run(lambda_http::service_fn(
        move |request: Request| async move {
            let span = tracing::info_span!(
                "request",
                request_id = %request_id(&request),
                prediction_id = tracing::field::Empty
            );
            Ok::<_, std::convert::Infallible>(handler(app, request).instrument(span).await)
        },
    ))
    .await
}
