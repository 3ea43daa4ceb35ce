//! The durable queues (SQS in production): output copies, callbacks, queued creates, and
//! the hiding of a received message until its retry is due.

use std::future::Future;
use std::time::Duration;

use crate::domain::callbacks::CallbackJob;
use crate::domain::jobs::{CopyJob, CreateJob};
use crate::ports::StoreError;

/// The durable queues: output copies, and callbacks to callers.
pub trait JobQueue: Send + Sync {
    /// Queues the job durably; an error means it was not queued.
    fn send_copy(&self, job: &CopyJob) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Queues a callback event durably; an error means it was not queued.
    fn send_callback(
        &self,
        job: &CallbackJob,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Queues a prediction's create for the drainer, invisible for `delay` (SQS allows at
    /// most 15 minutes; a drainer that gets it early hides it again).
    fn send_create(
        &self,
        job: &CreateJob,
        delay: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Moves an event whose retry window closed to the dead-letter queue (where operators
    /// see it, alarmed).
    fn dead_letter_callback(
        &self,
        job: &CallbackJob,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Hides a received message for a while: the callback worker's backoff (the queue then
/// delivers it again, as the next attempt).
pub trait Redelivery: Send + Sync {
    fn hide_for(
        &self,
        receipt_handle: &str,
        wait: Duration,
    ) -> impl Future<Output = Result<(), crate::ports::StoreError>> + Send;
}
