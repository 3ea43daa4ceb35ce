//! The queues on SQS. Webhooks and syncs send copy jobs; the copy worker (a Lambda fed by
//! the queue, or the local stack's poller) runs them. Ended predictions send callback jobs,
//! which the callback worker delivers. Failed jobs come back after the
//! visibility timeout and end in the dead-letter queue after the redrive limit.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;

use crate::callbacks::CallbackJob;
use crate::ports::{CopyJob, JobQueue, StoreError};

#[derive(Debug, Clone)]
pub struct SqsQueues {
    client: Client,
    queue_url: String,
    callback_queue_url: String,
    callback_dead_letter_url: String,
}

impl SqsQueues {
    pub fn new(client: Client, urls: QueueUrls) -> Self {
        Self {
            client,
            queue_url: urls.copy,
            callback_queue_url: urls.callback,
            callback_dead_letter_url: urls.callback_dead_letter,
        }
    }

    async fn send(
        &self,
        operation: &'static str,
        queue_url: &str,
        body: String,
    ) -> Result<(), StoreError> {
        self.client
            .send_message()
            .queue_url(queue_url)
            .message_body(body)
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
}

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
