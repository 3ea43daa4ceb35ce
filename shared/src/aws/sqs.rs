//! The copy queue on SQS: webhooks and syncs send copy jobs; the copy worker (a Lambda fed
//! by the queue, or the local stack's poller) runs them. Failed jobs come back after the
//! visibility timeout and end in the dead-letter queue after the redrive limit.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::DisplayErrorContext;

use crate::ports::{CopyJob, CopyQueue, StoreError};

#[derive(Debug, Clone)]
pub struct SqsCopyQueue {
    client: Client,
    queue_url: String,
}

impl SqsCopyQueue {
    pub fn new(client: Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }
}

impl CopyQueue for SqsCopyQueue {
    async fn send_copy(&self, job: &CopyJob) -> Result<(), StoreError> {
        let body = serde_json::to_string(job)
            .map_err(|e| StoreError::new("send copy job", e.to_string()))?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StoreError::new("send copy job", DisplayErrorContext(e).to_string()))
    }
}
