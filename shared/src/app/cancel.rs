//! Cancelling (`POST /v1/predictions/{id}/cancel`): asks Replicate to cancel a running prediction and
//! applies its answer like any other (the state only moves forward); a prediction that
//! ended is answered unchanged. Idempotent: a second cancel finds it ended, or (within the
//! sync interval) finds it asked already.

use super::recover::SearchBudget;
use super::sync::Copy;
use super::{ApiError, App, PredictionView};
use crate::domain::cost::Billed;
use crate::domain::record::PredictionRecord;
use crate::domain::tenancy::Caller;
use crate::ports::Ports;
use crate::ports::records::{RecordStore, SyncMark};
use crate::ports::replicate::ReplicateApi;

impl<P: Ports> App<P> {
    /// Cancels the caller's prediction `id`, as far as it can still be.
    pub async fn cancel(
        &self,
        caller: &Caller,
        id: Option<&str>,
    ) -> Result<PredictionView, ApiError> {
        let record = self.callers_prediction(caller, id).await?;
        let record = if record.status.is_terminal() {
            record
        } else {
            self.cancel_running(record).await?
        };
        Ok(self.view(&record, false).await?)
    }

    /// Records the request and cancels at Replicate, applying its answer. At most one
    /// request a sync interval reaches Replicate for a record (repeats answer the state as
    /// it is). A record not yet tied to a Replicate prediction keeps the request: it is
    /// cancelled when it is tied, and ends `canceled` if it was never created.
    async fn cancel_running(&self, record: PredictionRecord) -> Result<PredictionRecord, ApiError> {
        let now = self.clock.now();
        let interval = self.settings.fetch_sync_interval;
        if !self
            .records
            .claim_sync(
                &record.id,
                SyncMark::CancelRequested,
                now,
                now.minus(interval),
            )
            .await?
        {
            return Ok(record);
        }
        let record = PredictionRecord {
            cancel_requested_at: Some(now),
            ..record
        };
        if record.is_queued() {
            // Read again: no drainer can claim it from the request on, but one may have just
            // before. Still unsent, it was never created: it ends `canceled`, Replicate
            // untouched.
            let fresh = self.reread(record).await?;
            if fresh.is_queued() {
                self.end_queued_canceled(&fresh).await?;
                return Ok(self.reread(fresh).await?);
            }
            return Ok(fresh);
        }
        let Some(replicate_id) = record.replicate_id.clone() else {
            // Recovery (from `RESOLVE_AFTER_SECONDS` on) ties it and cancels it, or
            // ends it `canceled` when nothing was created.
            return Ok(self
                .recover_unconfirmed(record, SearchBudget::FETCH)
                .await?);
        };
        let remote = match self.replicate.cancel_prediction(&replicate_id).await {
            Ok(remote) => remote,
            Err(err) if err.is_not_found() => {
                self.end_record(
                    &record,
                    "Replicate no longer has this prediction",
                    Billed::Unknown,
                )
                .await?;
                return Ok(self.reread(record).await?);
            }
            Err(err) => return Err(err.into()),
        };
        tracing::info!(prediction_id = %record.id, status = %remote.status, "cancel answered");
        if let Err(err) = self.apply_remote(&record, &remote, Copy::QueueOnce).await {
            tracing::warn!(prediction_id = %record.id, error = %err, "could not apply the cancel answer");
        }
        Ok(self.reread(record).await?)
    }
}
