//! The copy worker's handler: one queued job stores a succeeded prediction's outputs in the
//! bucket, within the deadline its invocation leaves, and only then marks it `succeeded`.
//! An error returns the job to the queue (retried, then dead-lettered).

use tokio::time::Instant;

use super::App;
use super::sync::{Copy, SyncError, SyncOutcome};
use crate::domain::jobs::CopyJob;
use crate::ports::Ports;

impl<P: Ports> App<P> {
    pub async fn copy_outputs(
        &self,
        job: &CopyJob,
        deadline: Instant,
    ) -> Result<SyncOutcome, SyncError> {
        tracing::Span::current().record("prediction_id", job.prediction_id.as_str());
        let Some(record) = self.live_prediction(&job.prediction_id).await? else {
            return Ok(SyncOutcome::Ignored("unknown prediction"));
        };
        if record.status.is_terminal() {
            return Ok(SyncOutcome::Ignored("already ended"));
        }
        self.apply_remote(&record, &job.remote, Copy::Inline { deadline })
            .await
    }
}
