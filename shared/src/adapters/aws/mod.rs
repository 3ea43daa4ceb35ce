//! The AWS implementations of the storage ports, and building their clients.

mod dynamo;
mod local;
mod s3;
mod sqs;

pub use dynamo::{
    DynamoRecords, OPEN_INDEX, OPEN_SHARD_ATTRIBUTE, TENANT_ATTRIBUTE, TENANT_INDEX, TTL_ATTRIBUTE,
};
pub use local::{QueuePair, ensure_bucket, ensure_queue, ensure_queue_pair, ensure_table};
pub use s3::S3Objects;
pub use sqs::{QueueUrls, SqsQueues, SqsRedelivery};

/// The IAM actions each port method needs from the AWS adapters (`dynamo.rs`, `s3.rs`).
/// The SAM template grants each function the actions of the methods its handler calls.
pub fn iam_actions(port_method: &str) -> &'static [&'static str] {
    match port_method {
        "try_claim" | "replace_claim" | "insert_prediction" | "create_key" | "put_upload" => {
            &["dynamodb:PutItem"]
        }
        "settle_claim" | "advance" | "claim_sync" | "revoke_key" | "update_tenant"
        | "count_request" | "reserve_cost" | "settle_cost" | "callback_queued"
        | "callback_attempted" | "claim_create" | "release_create" | "mark_queued" => {
            &["dynamodb:UpdateItem"]
        }
        // Read the pace, then put the next slot conditionally.
        "reserve_create_slot" => &["dynamodb:GetItem", "dynamodb:PutItem"],
        // Read first; put (conditionally) only when the tenant has none yet.
        "callback_secret" => &["dynamodb:GetItem", "dynamodb:PutItem"],
        // The `replicate#` binding is put, the record updated (the binding given back if not).
        "attach_replicate_id" => &[
            "dynamodb:PutItem",
            "dynamodb:UpdateItem",
            "dynamodb:DeleteItem",
        ],
        "release_claim" => &["dynamodb:DeleteItem"],
        "get_prediction" | "get_key" | "get_tenant" | "usage" | "get_upload" => {
            &["dynamodb:GetItem"]
        }
        // On the `open-index` and `tenant-index` indexes only.
        "list_open" | "list_tenant" => &["dynamodb:Query"],
        // Creating, uploading parts of and completing a multipart upload are all s3:PutObject.
        "put_object" | "create_multipart" | "upload_part" | "complete_multipart" => {
            &["s3:PutObject"]
        }
        "abort_multipart" => &["s3:AbortMultipartUpload"],
        // A presigned URL carries the signer's permission.
        "presign_get" => &["s3:GetObject"],
        // ListBucket (on the bucket, for its prefix) makes a missing key a 404, not a 403.
        "read_object" => &["s3:GetObject", "s3:ListBucket"],
        "presign_put" => &["s3:PutObject"],
        "send_copy" | "send_callback" | "dead_letter_callback" | "send_create" => {
            &["sqs:SendMessage"]
        }
        _ => &[],
    }
}

/// The table items a record-store method acts on, by key prefix (`dynamodb:LeadingKeys`),
/// with each IAM action: what a function's statements on the table must allow, and no
/// more. A claim method acts on its claim's prefix (`cache#` or `idem#`), `claim_prefix`.
pub fn item_actions(port_method: &str, claim_prefix: Option<&str>) -> Vec<(&'static str, String)> {
    let on = |prefix: &str| prefix.to_owned();
    let claim = || on(claim_prefix.unwrap_or("cache#"));
    let (put, get, update, delete) = (
        "dynamodb:PutItem",
        "dynamodb:GetItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    );
    match port_method {
        "try_claim" | "replace_claim" => vec![(put, claim())],
        "settle_claim" => vec![(update, claim())],
        "release_claim" => vec![(delete, claim())],
        "insert_prediction" => vec![(put, on("pred#"))],
        "get_prediction" => vec![(get, on("pred#"))],
        "advance" | "claim_sync" | "callback_queued" | "callback_attempted" | "claim_create"
        | "release_create" | "mark_queued" => vec![(update, on("pred#"))],
        "reserve_create_slot" => vec![(get, on("pace#")), (put, on("pace#"))],
        "attach_replicate_id" => vec![
            (put, on("replicate#")),
            (update, on("pred#")),
            (delete, on("replicate#")),
        ],
        "create_key" => vec![(put, on("apikey#"))],
        "get_key" => vec![(get, on("apikey#"))],
        "revoke_key" => vec![(update, on("apikey#"))],
        "update_tenant" => vec![(update, on("tenant#"))],
        "get_tenant" => vec![(get, on("tenant#"))],
        "count_request" => vec![(update, on("rate#"))],
        "reserve_cost" | "settle_cost" => vec![(update, on("usage#"))],
        "usage" => vec![(get, on("usage#"))],
        "put_upload" => vec![(put, on("upload#"))],
        "get_upload" => vec![(get, on("upload#"))],
        "callback_secret" => vec![(get, on("whsec#")), (put, on("whsec#"))],
        _ => Vec::new(),
    }
}

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
    pub async fn secure_parameter(&self, name: &str) -> Result<String, crate::ports::StoreError> {
        let output = self
            .ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| {
                crate::ports::StoreError::new(
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
                crate::ports::StoreError::new(
                    "get parameter",
                    format!("parameter `{name}` has no value"),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::iam_actions;

    /// Every SDK operation the adapters call has its IAM action in `iam_actions`, and every
    /// action there is called: the table cannot drift from the code.
    #[test]
    fn iam_table_matches_the_sdk_calls_in_the_adapters() {
        const OPERATIONS: &[(&str, &str)] = &[
            (".put_item()", "dynamodb:PutItem"),
            (".update_item()", "dynamodb:UpdateItem"),
            (".delete_item()", "dynamodb:DeleteItem"),
            (".get_item()", "dynamodb:GetItem"),
            (".query()", "dynamodb:Query"),
            (".scan()", "dynamodb:Scan"),
            (".put_object()", "s3:PutObject"),
            (".create_multipart_upload()", "s3:PutObject"),
            (".upload_part()", "s3:PutObject"),
            (".complete_multipart_upload()", "s3:PutObject"),
            (".abort_multipart_upload()", "s3:AbortMultipartUpload"),
            (".get_object()", "s3:GetObject"),
            (".delete_object()", "s3:DeleteObject"),
            (".send_message()", "sqs:SendMessage"),
        ];
        let source = [
            include_str!("dynamo.rs"),
            include_str!("s3.rs"),
            include_str!("sqs.rs"),
        ]
        .concat();
        let called: std::collections::BTreeSet<&str> = OPERATIONS
            .iter()
            .filter(|(op, _)| source.contains(op))
            .map(|(_, action)| *action)
            .collect();
        let methods = [
            "try_claim",
            "replace_claim",
            "insert_prediction",
            "settle_claim",
            "attach_replicate_id",
            "advance",
            "claim_sync",
            "release_claim",
            "get_prediction",
            "put_object",
            "create_multipart",
            "upload_part",
            "complete_multipart",
            "abort_multipart",
            "presign_get",
            "list_open",
            "send_copy",
        ];
        let mapped: std::collections::BTreeSet<&str> = methods
            .iter()
            .flat_map(|m| iam_actions(m).iter().copied())
            .collect();
        assert_eq!(called, mapped);
        for method in methods {
            assert!(
                !iam_actions(method).is_empty(),
                "{method} has no IAM action"
            );
        }
    }
}
