//! Creating the table and bucket, for the local stack and tests. In AWS the SAM template
//! owns them, and the functions' roles may not create anything.

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    TimeToLiveSpecification,
};

use super::TTL_ATTRIBUTE;
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
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("pk")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| failed("create table", e))?,
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("pk")
                .key_type(KeyType::Hash)
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
