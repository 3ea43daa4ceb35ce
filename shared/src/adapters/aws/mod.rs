//! The AWS implementations of the storage ports (DynamoDB, S3, SQS), their clients, the
//! IAM actions each port method needs, and the local emulator's setup (`local`).

mod clients;
mod dynamo;
mod iam;
mod local;
mod s3;
mod sqs;

pub use clients::AwsClients;
pub use dynamo::{
    DynamoRecords, OPEN_INDEX, OPEN_SHARD_ATTRIBUTE, TENANT_ATTRIBUTE, TENANT_INDEX, TTL_ATTRIBUTE,
};
pub use iam::{iam_actions, item_actions};
pub use local::{QueuePair, ensure_bucket, ensure_queue, ensure_queue_pair, ensure_table};
pub use s3::S3Objects;
pub use sqs::{QueueUrls, SqsQueues, SqsRedelivery};
