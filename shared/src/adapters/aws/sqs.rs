//! The queues on SQS. Webhooks and syncs send copy jobs; the copy worker (a Lambda fed by
//! the queue, or the local stack's poller) runs them. Ended predictions send callback jobs,
//! which the callback worker delivers. Submits over the create rate send create jobs,
//! delayed until their slot, which the drainer creates. Failed jobs come back after the
//! visibility timeout and end in the dead-letter queue after the redrive limit.

use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;

use crate::domain::callbacks::CallbackJob;
use crate::domain::jobs::{CopyJob, CreateJob};
use crate::ports::StoreError;
use crate::ports::jobs::JobQueue;

#[derive(Debug, Clone)]
pub struct SqsQueues {
    client: Client,
    queue_url: String,
    callback_queue_url: String,
    callback_dead_letter_url: String,
    create_queue_url: String,
}

impl SqsQueues {
    pub fn new(client: Client, urls: QueueUrls) -> Self {
        Self {
            client,
            queue_url: urls.copy,
            callback_queue_url: urls.callback,
            callback_dead_letter_url: urls.callback_dead_letter,
            create_queue_url: urls.create,
        }
    }

    async fn send(
        &self,
        operation: &'static str,
        queue_url: &str,
        body: String,
    ) -> Result<(), StoreError> {
        self.send_delayed(operation, queue_url, body, 0).await
    }

    async fn send_delayed(
        &self,
        operation: &'static str,
        queue_url: &str,
        body: String,
        delay_seconds: i32,
    ) -> Result<(), StoreError> {
        self.client
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
            .set_delay_seconds((delay_seconds > 0).then_some(delay_seconds))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StoreError::new(operation, DisplayErrorContext(e).to_string()))
    }
}

/// The queues, by what they carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrls {
    pub copy: String,
    pub callback: String,
    pub callback_dead_letter: String,
    pub create: String,
}

/// SQS's longest message delay.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

impl JobQueue for SqsQueues {
    async fn send_copy(&self, job: &CopyJob) -> Result<(), StoreError> {
        let body = serde_json::to_string(job)
            .map_err(|e| StoreError::new("send copy job", e.to_string()))?;
        self.send("send copy job", &self.queue_url, body).await
    }

    async fn send_callback(&self, job: &CallbackJob) -> Result<(), StoreError> {
        let body = serde_json::to_string(job)
            .map_err(|e| StoreError::new("send callback job", e.to_string()))?;
        self.send("send callback job", &self.callback_queue_url, body)
            .await
    }

    async fn send_create(&self, job: &CreateJob, delay: Duration) -> Result<(), StoreError> {
        let body = serde_json::to_string(job)
            .map_err(|e| StoreError::new("send create job", e.to_string()))?;
        // Whole seconds, rounded up: never visible before its slot.
        let seconds = delay.min(MAX_DELAY).as_millis().div_ceil(1000);
        let seconds = i32::try_from(seconds).unwrap_or(i32::MAX);
        self.send_delayed("send create job", &self.create_queue_url, body, seconds)
            .await
    }

    async fn dead_letter_callback(&self, job: &CallbackJob) -> Result<(), StoreError> {
        let body = serde_json::to_string(job)
            .map_err(|e| StoreError::new("dead-letter callback job", e.to_string()))?;
        self.send(
            "dead-letter callback job",
            &self.callback_dead_letter_url,
            body,
        )
        .await
    }
}

/// `Redelivery` on an SQS queue (`ChangeMessageVisibility`).
pub struct SqsRedelivery {
    pub client: aws_sdk_sqs::Client,
    pub queue_url: String,
}

impl crate::ports::jobs::Redelivery for SqsRedelivery {
    async fn hide_for(
        &self,
        receipt_handle: &str,
        wait: Duration,
    ) -> Result<(), crate::ports::StoreError> {
        // Whole seconds, rounded up (never back before the wait is over); at most 12 hours.
        let seconds = wait.as_millis().div_ceil(1000).clamp(1, 12 * 3600) as i32;
        self.client
            .change_message_visibility()
            .queue_url(&self.queue_url)
            .receipt_handle(receipt_handle)
            .visibility_timeout(seconds)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| {
                crate::ports::StoreError::new(
                    "hide job",
                    aws_sdk_sqs::error::DisplayErrorContext(e).to_string(),
                )
            })
    }
}
