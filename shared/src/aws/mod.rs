//! The AWS implementations of the storage ports, and building their clients.

mod dynamo;
mod s3;

pub use dynamo::{DynamoRecords, TTL_ATTRIBUTE, ensure_table};
pub use s3::{S3Objects, ensure_bucket};

/// SDK clients, built once per process (at a Lambda's cold start).
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
}

impl AwsClients {
    /// Region, credentials and `AWS_ENDPOINT_URL` come from the standard environment.
    pub async fn from_env() -> Self {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        // A local emulator (moto) serves buckets by path, not as subdomains.
        let path_style = std::env::var_os("AWS_ENDPOINT_URL").is_some();
        Self::from_config(&config, path_style)
    }

    /// Clients for a local AWS emulator at `endpoint`, with placeholder credentials (an
    /// emulator accepts any) unless the environment has real ones.
    pub async fn local(endpoint: &str) -> Self {
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).endpoint_url(endpoint);
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            loader = loader.region(aws_config::Region::new("us-east-1"));
        }
        if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
            loader = loader.credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "local",
                "local",
                None,
                None,
                "local-emulator",
            ));
        }
        Self::from_config(&loader.load().await, true)
    }

    fn from_config(config: &aws_config::SdkConfig, path_style: bool) -> Self {
        let s3_config = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .build();
        Self {
            dynamodb: aws_sdk_dynamodb::Client::new(config),
            s3: aws_sdk_s3::Client::from_conf(s3_config),
        }
    }
}
