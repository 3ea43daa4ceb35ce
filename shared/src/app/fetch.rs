//! A prediction as it stands (`GET /v1/predictions/{id}`): the stored state, synced from Replicate first if it is still
//! running and has not been synced lately (so a lost webhook loses nothing).

use super::recover::SearchBudget;
use super::sync::Copy;
use super::{ApiError, App, PredictionView};
use crate::domain::record::PredictionRecord;
use crate::domain::tenancy::Caller;
use crate::domain::time::Timestamp;
use crate::ports::Ports;
use crate::ports::records::{RecordStore, SyncMark};
use crate::ports::replicate::ReplicateApi;

impl<P: Ports> App<P> {
    /// The caller's prediction `id` as it stands, synced first if it runs.
    pub async fn fetch(
        &self,
        caller: &Caller,
        id: Option<&str>,
    ) -> Result<PredictionView, ApiError> {
        let mut record = self.callers_prediction(caller, id).await?;
        if !record.status.is_terminal() {
            record = self.sync_running(record).await?;
        }
        Ok(self.view(&record, false).await?)
    }

    /// Asks Replicate about a running prediction, at most once per sync interval across all
    /// fetchers, and applies the answer exactly as a webhook would (a succeeded one's copy
    /// is queued: a fetch answers within API Gateway's 30 s whatever the outputs' size).
    async fn sync_running(&self, record: PredictionRecord) -> Result<PredictionRecord, ApiError> {
        // Waiting in the create queue: nothing at Replicate to ask about (and no write spent).
        if record.is_queued() {
            return Ok(record);
        }
        let now = self.clock.now();
        let interval = self.settings.fetch_sync_interval;
        // Checked on the record just read before spending a conditional write (a refused
        // one is billed too): not again within the interval, and, while webhooks are on,
        // not before the prediction is an interval old (its webhook normally comes first).
        let since_created = self.settings.send_webhooks.then_some(record.created_at);
        let last = record
            .synced_at
            .max(since_created)
            .unwrap_or(Timestamp::EPOCH);
        if now < last.plus(interval) {
            return Ok(record);
        }
        if !self
            .records
            .claim_sync(&record.id, SyncMark::Fetched, now, now.minus(interval))
            .await?
        {
            return Ok(record);
        }
        let Some(replicate_id) = record.replicate_id.clone() else {
            return Ok(self
                .recover_unconfirmed(record, SearchBudget::FETCH)
                .await?);
        };
        let remote = match self.replicate.get_prediction(&replicate_id).await {
            Ok(remote) => remote,
            Err(err) => {
                tracing::warn!(prediction_id = %record.id, error = %err, "sync from Replicate failed; answering the stored state");
                return Ok(record);
            }
        };
        if let Err(err) = self.apply_remote(&record, &remote, Copy::QueueOnce).await {
            tracing::warn!(prediction_id = %record.id, error = %err, "could not apply the synced state");
            return Ok(record);
        }
        Ok(self.reread(record).await?)
    }
}
