//! The composition root: the production `App` built from the environment, once per
//! process, with the real adapters plugged into the ports. Each function's `main` hands
//! one of `init` or `init_worker` to its `lambda` runner.
//!
//! Every environment variable the functions read is read in `boot_config`, through one
//! lookup function, so a test can see exactly which variables the code needs (and compare
//! them with the SAM template).

use crate::adapters::aws::{
    AwsClients, DynamoRecords, QueueUrls, S3Objects, SqsQueues, SqsRedelivery,
};
use crate::adapters::http::callbacks::HttpCallbacks;
use crate::adapters::http::dns::SystemResolver;
use crate::adapters::http::downloads::HttpDownloads;
use crate::adapters::replicate::{
    ApiToken, ClientBuildError, ClientConfig, OnFirstUse, ReplicateClient, SetupError,
    check_base_url,
};
use crate::app::{App, Settings};
use crate::config::{ConfigError, replicate_token};
use crate::domain::registry::{ModelRegistry, RegistryError};
use crate::lambda::RedeliveringQueue;
use crate::ports::{PortSet, StoreError};

/// The real ports: Replicate over HTTP, DynamoDB, S3, HTTP downloads.
pub struct Production;

impl crate::ports::Ports for Production {
    type Replicate = OnFirstUse;
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
    /// The token; reads SSM when it lives there.
    pub async fn resolve(&self, aws: &AwsClients) -> Result<String, StoreError> {
        match self {
            Self::Value(token) => Ok(token.clone()),
            Self::Parameter(name) => aws.secure_parameter(name).await,
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

/// Builds every client. Nothing here talks to the network: Replicate's client (and the
/// token it needs) and the webhook secret, if not configured, are set up on first use.
pub fn production_app(aws: AwsClients, config: BootConfig) -> Result<ProductionApp, BootError> {
    let BootConfig {
        settings,
        registry,
        token,
        ..
    } = config;
    check_base_url(&settings.replicate_base_url)?;
    let base_url = settings.replicate_base_url.clone();
    let ssm = aws.clone();
    let replicate = OnFirstUse::new(Box::new(move || {
        let (base_url, ssm, token) = (base_url.clone(), ssm.clone(), token.clone());
        Box::pin(async move {
            let token = token
                .resolve(&ssm)
                .await
                .map_err(|e| SetupError::Transient(e.to_string()))?;
            ReplicateClient::new(ClientConfig::new(base_url, ApiToken::new(token)))
                .map_err(|e| SetupError::Permanent(e.to_string()))
        })
    }));
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

/// Reads the configuration and builds the app from `lookup`.
pub async fn build_app(
    aws: AwsClients,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<ProductionApp, BootError> {
    production_app(aws, boot_config(lookup)?)
}

/// Cold start: logs, SDK clients, configuration; the app lives for the process.
pub async fn init() -> Result<&'static ProductionApp, BootError> {
    init_with_aws().await.map(|(app, _)| app)
}

/// `init`, and what hides `queue`'s received messages until they are due (the callbacks
/// function's backoff, the drainer's slots).
pub async fn init_worker(
    queue: RedeliveringQueue,
) -> Result<(&'static ProductionApp, SqsRedelivery), BootError> {
    let (app, aws) = init_with_aws().await?;
    let redelivery = SqsRedelivery {
        client: aws.sqs,
        queue_url: queue.url(&app.settings),
    };
    Ok((app, redelivery))
}

async fn init_with_aws() -> Result<(&'static ProductionApp, AwsClients), BootError> {
    let env = |name: &str| std::env::var(name).ok();
    crate::telemetry::init_json_logs(env("RUST_LOG").as_deref());
    let aws = AwsClients::from_env().await;
    match build_app(aws.clone(), env).await {
        Ok(app) => Ok((Box::leak(Box::new(app)), aws)),
        Err(err) => {
            tracing::error!(error = %err, "configuration error");
            Err(err)
        }
    }
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
