//! The SDK clients, built once per process (at a Lambda's cold start), and the one SSM read
//! (the Replicate token).

use crate::ports::StoreError;

/// SDK clients, built once per process (at a Lambda's cold start).
#[derive(Debug, Clone)]
pub struct AwsClients {
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub s3: aws_sdk_s3::Client,
    pub ssm: aws_sdk_ssm::Client,
    pub sqs: aws_sdk_sqs::Client,
    /// The credentials the clients sign with (S3 needs their expiry for presigned URLs).
    pub credentials: Option<aws_sdk_s3::config::SharedCredentialsProvider>,
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
            ssm: aws_sdk_ssm::Client::new(config),
            sqs: aws_sdk_sqs::Client::new(config),
            credentials: config.credentials_provider(),
        }
    }

    /// Reads an SSM SecureString (decrypted; `ssm:GetParameter`): how the Lambda functions get the Replicate
    /// token without it ever being a plain environment value.
    pub async fn secure_parameter(&self, name: &str) -> Result<String, StoreError> {
        let output = self
            .ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| {
                StoreError::new(
                    "get parameter",
                    aws_sdk_ssm::error::DisplayErrorContext(e).to_string(),
                )
            })?;
        output
            .parameter()
            .and_then(|p| p.value())
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().to_owned())
            .ok_or_else(|| {
                StoreError::new("get parameter", format!("parameter `{name}` has no value"))
            })
    }
}
