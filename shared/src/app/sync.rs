//! Applying Replicate's view of a prediction to our record: the one path for webhooks and
//! for fetch-time syncing, so both behave exactly alike.

use crate::outputs::{OutputError, store_outputs};
use crate::ports::{RecordStore, StoreError};
use crate::record::{Advance, ClaimGuard, PredictionRecord, parse_rfc3339};
use crate::replicate::{Prediction, PredictionStatus};

use super::App;
use super::Ports;

/// What applying a remote state did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    Applied(PredictionStatus),
    Ignored(&'static str),
}

/// A failure worth retrying (the webhook answers 5xx so Replicate delivers it again).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storing outputs failed: {0}")]
    Output(#[from] OutputError),
}

pub(crate) fn cache_claim_key(cache_key: &str) -> String {
    format!("cache#{cache_key}")
}

impl<P: Ports> App<P> {
    /// Moves `record` forward to `remote`'s state. Outputs of a succeeded prediction are
    /// stored before the record says `succeeded`; duplicates, stale and out-of-order states
    /// change nothing.
    pub async fn apply_remote(
        &self,
        record: &PredictionRecord,
        remote: &Prediction,
    ) -> Result<SyncOutcome, SyncError> {
        if record
            .replicate_id
            .as_deref()
            .is_some_and(|id| id != remote.id)
        {
            return Ok(SyncOutcome::Ignored("a different Replicate prediction"));
        }
        if !record.status.can_advance_to(&remote.status) {
            return Ok(SyncOutcome::Ignored("not a move forward"));
        }
        let now = self.clock.millis();
        let mut advance = Advance {
            status: remote.status.clone(),
            replicate_id: Some(remote.id.clone()),
            outputs: Vec::new(),
            error: remote.error.clone(),
            metrics: Some(remote.metrics.clone()),
            started_at: remote.started_at.as_deref().and_then(parse_rfc3339),
            completed_at: None,
        };
        if remote.status.is_terminal() {
            advance.completed_at = Some(
                remote
                    .completed_at
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .unwrap_or(now),
            );
        }
        if remote.status == PredictionStatus::Succeeded {
            self.store_succeeded_outputs(record, remote, &mut advance)
                .await?;
        }
        if !self.records.advance(&record.id, &advance).await? {
            return Ok(SyncOutcome::Ignored("already as far along"));
        }
        tracing::info!(prediction_id = %record.id, status = %advance.status, "prediction advanced");
        if advance.status.is_terminal() {
            self.settle_cache_claim(record, &advance).await;
        }
        Ok(SyncOutcome::Applied(advance.status))
    }

    async fn store_succeeded_outputs(
        &self,
        record: &PredictionRecord,
        remote: &Prediction,
        advance: &mut Advance,
    ) -> Result<(), SyncError> {
        let unusable = |reason: String, advance: &mut Advance| {
            advance.status = PredictionStatus::Failed;
            advance.error = Some(reason);
        };
        if remote.output.is_empty() {
            let reason = if remote.data_removed {
                "Replicate deleted the outputs before they could be stored"
            } else {
                "the prediction succeeded without any output"
            };
            unusable(reason.to_owned(), advance);
            return Ok(());
        }
        match store_outputs(
            &self.downloads,
            &self.objects,
            &self.settings.output_hosts,
            &record.id,
            &remote.output,
        )
        .await
        {
            Ok(outputs) => advance.outputs = outputs,
            Err(err) if err.is_permanent() => {
                tracing::warn!(prediction_id = %record.id, error = %err, "outputs cannot be stored");
                unusable(format!("outputs could not be stored: {err}"), advance);
            }
            Err(err) => return Err(err.into()),
        }
        Ok(())
    }

    /// A succeeded prediction answers identical requests for the cache window; any other
    /// ending frees the cache key at once. Best effort: submit re-checks the state anyway.
    async fn settle_cache_claim(&self, record: &PredictionRecord, advance: &Advance) {
        let Some(cache_key) = &record.cache_key else {
            return;
        };
        let key = cache_claim_key(cache_key);
        let guard = ClaimGuard::Prediction(&record.id);
        let result = if advance.status == PredictionStatus::Succeeded {
            let completed = advance.completed_at.unwrap_or_else(|| self.clock.millis());
            let until = completed.saturating_add(self.settings.result_cache_ttl.as_millis() as u64);
            self.records
                .settle_claim(&key, guard, &record.id, until)
                .await
        } else {
            self.records.release_claim(&key, guard).await
        };
        if let Err(err) = result {
            tracing::warn!(prediction_id = %record.id, error = %err, "could not update the cache claim");
        }
    }
}
