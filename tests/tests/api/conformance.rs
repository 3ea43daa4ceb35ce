//! The storage conformance suite (`imagegen_shared::testing::conformance`) against the real adapters:
//! DynamoDB, S3 and SQS on moto (`AWS_ENDPOINT_URL`), each with a table, bucket or queue of
//! its own. The same suite runs against the in-memory fakes in the shared crate's unit tests,
//! so the fakes and the adapters cannot drift apart unnoticed.

use imagegen_shared::adapters::aws::{
    AwsClients, DynamoRecords, QueueUrls, S3Objects, SqsQueues, ensure_bucket, ensure_queue,
    ensure_queue_pair, ensure_table,
};
use imagegen_shared::domain::ids::PredictionId;
use imagegen_shared::domain::jobs::{CopyJob, CreateJob};
use imagegen_shared::ports::jobs::JobQueue;
use imagegen_shared::testing::conformance::{
    account_store_suite, callback_queue_suite, copy_queue_suite, object_store_suite,
    record_store_suite,
};
use imagegen_shared::testing::fakes::MemoryQueue;
use integration_tests::aws_endpoint;

fn unique_name() -> String {
    format!("conformance-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn dynamo_records_conform() {
    let aws = AwsClients::local(&aws_endpoint()).await;
    let table = unique_name();
    ensure_table(&aws.dynamodb, &table).await.expect("table");
    let store = DynamoRecords::new(aws.dynamodb.clone(), &table);
    record_store_suite(&store).await;
    // Fresh ids every run: the same table passes again, next to the first run's items.
    record_store_suite(&store).await;
    account_store_suite(&store).await;
    account_store_suite(&store).await;
}

#[tokio::test]
async fn s3_objects_conform() {
    let aws = AwsClients::local(&aws_endpoint()).await;
    let bucket = unique_name();
    ensure_bucket(&aws.s3, &bucket).await.expect("bucket");
    let objects = S3Objects::new(aws.s3.clone(), &bucket, aws.credentials.clone());
    let s3 = &aws.s3;
    let bucket = &bucket;
    object_store_suite(&objects, |key| async move {
        let got = match s3.get_object().bucket(bucket).key(&key).send().await {
            Ok(got) => got,
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return None;
            }
            Err(err) => panic!(
                "get_object {key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(err)
            ),
        };
        let content_type = got.content_type().unwrap_or_default().to_owned();
        let bytes = got.body.collect().await.expect("object body").to_vec();
        Some((bytes, content_type))
    })
    .await;
    let open = s3
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .expect("list multipart uploads");
    assert!(
        open.uploads().is_empty(),
        "every upload ended: {:?}",
        open.uploads()
    );
}

/// Every queue of the adapter on `url`, but the callbacks' dead letters on `dead_letter`:
/// each suite sends to one of them and reads that one back.
fn queues_at(sqs: &aws_sdk_sqs::Client, url: &str, dead_letter: &str) -> SqsQueues {
    SqsQueues::new(
        sqs.clone(),
        QueueUrls {
            copy: url.to_owned(),
            callback: url.to_owned(),
            callback_dead_letter: dead_letter.to_owned(),
            create: url.to_owned(),
        },
    )
}

#[tokio::test]
async fn sqs_copy_queue_conforms() {
    let aws = AwsClients::local(&aws_endpoint()).await;
    let url = ensure_queue(&aws.sqs, &unique_name(), 30, 3)
        .await
        .expect("queue");
    let queue = queues_at(&aws.sqs, &url, &url);
    let sqs = &aws.sqs;
    let url = &url;
    copy_queue_suite(&queue, || async move {
        let received = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive message");
        let mut jobs = Vec::new();
        for message in received.messages() {
            let body = message.body().expect("a message body");
            let job: CopyJob = serde_json::from_str(body)
                .unwrap_or_else(|e| panic!("a copy job as JSON: {e}: {body}"));
            jobs.push(job);
            sqs.delete_message()
                .queue_url(url)
                .receipt_handle(message.receipt_handle().expect("a receipt handle"))
                .send()
                .await
                .expect("delete message");
        }
        jobs
    })
    .await;
}

#[tokio::test]
async fn sqs_callback_queues_conform() {
    let aws = AwsClients::local(&aws_endpoint()).await;
    let pair = ensure_queue_pair(&aws.sqs, &unique_name(), 30, 1000)
        .await
        .expect("queues");
    let queue = queues_at(&aws.sqs, &pair.url, &pair.dead_letter_url);
    let sqs = &aws.sqs;
    let pair = &pair;
    callback_queue_suite(&queue, |dead_letter| async move {
        let url = if dead_letter {
            &pair.dead_letter_url
        } else {
            &pair.url
        };
        let received = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive message");
        received
            .messages()
            .iter()
            .filter_map(|m| m.body().and_then(|b| serde_json::from_str(b).ok()))
            .collect()
    })
    .await;
}

#[tokio::test]
async fn memory_callback_queues_conform() {
    let queue = MemoryQueue::default();
    let queue = &queue;
    callback_queue_suite(queue, |dead_letter| async move {
        if dead_letter {
            queue.dead_callbacks()
        } else {
            queue.drain_callbacks()
        }
    })
    .await;
}

/// A create job stays invisible until its slot (`DelaySeconds`, rounded up to whole
/// seconds), then arrives as sent.
#[tokio::test]
async fn sqs_create_jobs_wait_for_their_slot() {
    let aws = AwsClients::local(&aws_endpoint()).await;
    let url = ensure_queue(&aws.sqs, &unique_name(), 30, 3)
        .await
        .expect("queue");
    let queue = queues_at(&aws.sqs, &url, &url);
    let job = CreateJob {
        prediction_id: PredictionId::generate(),
    };
    queue
        .send_create(&job, std::time::Duration::from_millis(1_200))
        .await
        .expect("sent");
    let receive = |wait: i32| {
        aws.sqs
            .receive_message()
            .queue_url(&url)
            .wait_time_seconds(wait)
            .send()
    };
    let early = receive(0).await.expect("receive");
    assert!(early.messages().is_empty(), "visible before its slot");
    let started = std::time::Instant::now();
    let mut bodies = Vec::new();
    while bodies.is_empty() && started.elapsed() < std::time::Duration::from_secs(10) {
        let late = receive(1).await.expect("receive");
        bodies.extend(
            late.messages()
                .iter()
                .filter_map(|m| m.body().map(str::to_owned)),
        );
    }
    assert_eq!(bodies.len(), 1, "arrives once its delay is over");
    let received: CreateJob = serde_json::from_str(&bodies[0]).expect("a create job");
    assert_eq!(received, job);
}
