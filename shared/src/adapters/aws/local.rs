//! Creating the table and bucket, for the local stack and tests. In AWS the SAM template
//! owns them, and the functions' roles may not create anything.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, GlobalSecondaryIndex, KeySchemaElement, KeyType, Projection,
    ProjectionType, ScalarAttributeType, TimeToLiveSpecification,
};

use super::{OPEN_INDEX, OPEN_SHARD_ATTRIBUTE, TENANT_ATTRIBUTE, TENANT_INDEX, TTL_ATTRIBUTE};
use crate::ports::StoreError;

fn failed<E: std::error::Error>(operation: &'static str, err: E) -> StoreError {
    StoreError::new(
        operation,
        aws_sdk_dynamodb::error::DisplayErrorContext(err).to_string(),
    )
}

/// Creates the table (and its TTL) if it does not exist: for the local stack and tests;
/// in AWS the SAM template owns the table.
pub async fn ensure_table(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
) -> Result<(), StoreError> {
    let created = client
        .create_table()
        .table_name(table)
        .set_attribute_definitions(Some(vec![
            attribute("pk", ScalarAttributeType::S)?,
            attribute(OPEN_SHARD_ATTRIBUTE, ScalarAttributeType::S)?,
            attribute("created_at", ScalarAttributeType::N)?,
            attribute(TENANT_ATTRIBUTE, ScalarAttributeType::S)?,
        ]))
        .key_schema(key("pk", KeyType::Hash)?)
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(OPEN_INDEX)
                .key_schema(key(OPEN_SHARD_ATTRIBUTE, KeyType::Hash)?)
                .key_schema(key("created_at", KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::All)
                        .build(),
                )
                .build()
                .map_err(|e| failed("create table", e))?,
        )
        .global_secondary_indexes(
            GlobalSecondaryIndex::builder()
                .index_name(TENANT_INDEX)
                .key_schema(key(TENANT_ATTRIBUTE, KeyType::Hash)?)
                .key_schema(key("created_at", KeyType::Range)?)
                .projection(
                    Projection::builder()
                        .projection_type(ProjectionType::KeysOnly)
                        .build(),
                )
                .build()
                .map_err(|e| failed("create table", e))?,
        )
        .billing_mode(BillingMode::PayPerRequest)
        .send()
        .await;
    match created {
        Ok(_) => {}
        Err(err)
            if err
                .as_service_error()
                .is_some_and(|e| e.is_resource_in_use_exception()) =>
        {
            return Ok(());
        }
        Err(err) => return Err(failed("create table", err)),
    }
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder()
                .attribute_name(TTL_ATTRIBUTE)
                .enabled(true)
                .build()
                .map_err(|e| failed("enable ttl", e))?,
        )
        .send()
        .await
        .map_err(|e| failed("enable ttl", e))?;
    Ok(())
}

/// Creates the bucket if it does not exist: for the local stack and tests.
pub async fn ensure_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<(), StoreError> {
    match client.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(err)
            if err.as_service_error().is_some_and(|e| {
                e.is_bucket_already_owned_by_you() || e.is_bucket_already_exists()
            }) =>
        {
            Ok(())
        }
        Err(err) => Err(failed("create bucket", err)),
    }
}

fn attribute(name: &str, kind: ScalarAttributeType) -> Result<AttributeDefinition, StoreError> {
    AttributeDefinition::builder()
        .attribute_name(name)
        .attribute_type(kind)
        .build()
        .map_err(|e| failed("create table", e))
}

fn key(name: &str, kind: KeyType) -> Result<KeySchemaElement, StoreError> {
    KeySchemaElement::builder()
        .attribute_name(name)
        .key_type(kind)
        .build()
        .map_err(|e| failed("create table", e))
}

/// Creates the copy queue and its dead-letter queue (`<name>-dlq`, after `max_receives`
/// failed attempts) if missing, and returns the queue's URL: for the local stack and tests.
pub async fn ensure_queue(
    client: &aws_sdk_sqs::Client,
    name: &str,
    visibility_timeout_seconds: u32,
    max_receives: u32,
) -> Result<String, StoreError> {
    ensure_queue_pair(client, name, visibility_timeout_seconds, max_receives)
        .await
        .map(|pair| pair.url)
}

/// A queue and its dead-letter queue (`<name>-dlq`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePair {
    pub url: String,
    pub dead_letter_url: String,
}

/// `ensure_queue`, telling both URLs.
pub async fn ensure_queue_pair(
    client: &aws_sdk_sqs::Client,
    name: &str,
    visibility_timeout_seconds: u32,
    max_receives: u32,
) -> Result<QueuePair, StoreError> {
    use aws_sdk_sqs::types::QueueAttributeName;
    let dlq_url = client
        .create_queue()
        .queue_name(format!("{name}-dlq"))
        .send()
        .await
        .map_err(|e| sqs_failed("create dead-letter queue", e))?
        .queue_url
        .unwrap_or_default();
    let dlq_arn = client
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| sqs_failed("read dead-letter queue", e))?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| StoreError::new("read dead-letter queue", "no queue ARN"))?;
    let redrive =
        serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives});
    client
        .create_queue()
        .queue_name(name)
        .attributes(
            QueueAttributeName::VisibilityTimeout,
            visibility_timeout_seconds.to_string(),
        )
        .attributes(QueueAttributeName::RedrivePolicy, redrive.to_string())
        .send()
        .await
        .map_err(|e| sqs_failed("create queue", e))?
        .queue_url
        .ok_or_else(|| StoreError::new("create queue", "no queue URL"))
        .map(|url| QueuePair {
            url,
            dead_letter_url: dlq_url,
        })
}

fn sqs_failed<E: std::error::Error + Send + Sync + 'static>(
    operation: &'static str,
    err: E,
) -> StoreError {
    StoreError::new(
        operation,
        aws_sdk_sqs::error::DisplayErrorContext(err).to_string(),
    )
}
