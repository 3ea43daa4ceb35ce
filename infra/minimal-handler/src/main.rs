//! The yardstick of `make bench`: what any Rust Lambda serving fetch-result's job must do at
//! init (SDK configuration, a DynamoDB and an S3 client, the runtime) and per request (the
//! caller's key read by its hash, the record read, one presigned GET), and nothing else.

use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use lambda_http::{Body, Error, Request, Response, run, service_fn};
use sha2::{Digest, Sha256};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let dynamodb = aws_sdk_dynamodb::Client::new(&config);
    let s3 = aws_sdk_s3::Client::new(&config);
    let table = std::env::var("TABLE_NAME").unwrap_or_default();
    let bucket = std::env::var("BUCKET_NAME").unwrap_or_default();
    let (dynamodb, s3, table, bucket) = (&dynamodb, &s3, &table, &bucket);
    run(service_fn(move |request: Request| async move {
        let key = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        let key_id: String = Sha256::digest(key.as_bytes())
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let caller = dynamodb
            .get_item()
            .table_name(table)
            .key("pk", AttributeValue::S(format!("apikey#{key_id}")))
            .send()
            .await?;
        let id = request
            .uri()
            .path()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned();
        let item = dynamodb
            .get_item()
            .table_name(table)
            .key("pk", AttributeValue::S(format!("pred#{id}")))
            .consistent_read(true)
            .send()
            .await?;
        let presigned = s3
            .get_object()
            .bucket(bucket)
            .key(format!("outputs/{id}/0.webp"))
            .presigned(aws_sdk_s3::presigning::PresigningConfig::expires_in(
                Duration::from_secs(3600),
            )?)
            .await?;
        let body = format!(
            "{{\"caller\": {}, \"found\": {}, \"url\": \"{}\"}}",
            caller.item.is_some(),
            item.item.is_some(),
            presigned.uri()
        );
        Ok::<_, Error>(Response::new(Body::Text(body)))
    }))
    .await
}
