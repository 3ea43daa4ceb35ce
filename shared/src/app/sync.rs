//! Applying Replicate's view of a prediction to our record: the one path for webhooks,
//! fetch-time syncing, the resolver, the reconciler and the copy worker, so all behave
//! exactly alike.

use tokio::time::Instant;

use crate::outputs::{OutputError, check_output_list, store_outputs};
use crate::ports::{CopyJob, CopyQueue, RecordStore, Settlement, StoreError, SyncMark};
use crate::record::{
    Advance, ClaimGuard, PredictionRecord, after, bounded_error, bounded_metrics, parse_rfc3339,
};
use crate::replicate::{Prediction, PredictionStatus};

use super::App;
use super::Ports;

/// What applying a remote state did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncOutcome {
    Applied(PredictionStatus),
    /// Succeeded at Replicate; the copy of its outputs is queued (the record says
    /// `succeeded` once the copy worker has stored them).
    CopyQueued,
    Ignored(&'static str),
}

/// A failure worth retrying (the webhook answers 5xx so Replicate delivers it again; a copy
/// job returns to its queue).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("storing outputs failed: {0}")]
    Output(#[from] OutputError),
}

/// Where a succeeded prediction's outputs are copied.
#[derive(Debug, Clone, Copy)]
pub enum Copy {
    /// Here and now, within the deadline: the copy worker.
    Inline { deadline: Instant },
    /// By the copy worker, through the queue: everything that must answer quickly.
    Queue,
    /// The same, but at most once per `COPY_REQUEUE_AFTER` per prediction: for fetches and
    /// the reconciler, which see the same success again and again while its copy runs.
    QueueOnce,
}

/// A copy queued by a poll is not queued again for this long: the queue's visibility
/// timeout in the template, after which a failed job is retried anyway.
pub const COPY_REQUEUE_AFTER: std::time::Duration = std::time::Duration::from_secs(6 * 60);

pub(crate) fn cache_claim_key(cache_key: &str) -> String {
    format!("cache#{cache_key}")
}

impl<P: Ports> App<P> {
    /// Moves `record` forward to `remote`'s state. A record not yet tied to a Replicate
    /// prediction is tied to this one first (if no other record of ours has it). Outputs of
    /// a succeeded prediction are stored before the record says `succeeded`; duplicates,
    /// stale and out-of-order states change nothing.
    pub async fn apply_remote(
        &self,
        record: &PredictionRecord,
        remote: &Prediction,
        copy: Copy,
    ) -> Result<SyncOutcome, SyncError> {
        match record.replicate_id.as_deref() {
            Some(id) if id != remote.id => {
                return Ok(SyncOutcome::Ignored("a different Replicate prediction"));
            }
            Some(_) => {}
            None => {
                if !self
                    .records
                    .attach_replicate_id(&record.id, &remote.id, record.expires_at)
                    .await?
                {
                    return Ok(SyncOutcome::Ignored(
                        "the record or the Replicate prediction is already tied to another",
                    ));
                }
                tracing::info!(prediction_id = %record.id, replicate_id = %remote.id, "Replicate prediction recorded");
            }
        }
        if !record.status.can_advance_to(&remote.status) {
            return Ok(SyncOutcome::Ignored("not a move forward"));
        }
        let mut advance = self.advance_to(remote);
        if remote.status == PredictionStatus::Succeeded {
            // An output list that can never be stored fails here and now: it would not fit
            // a queue message, and no retry could help.
            let copy = match (copy, check_output_list(&remote.output)) {
                (Copy::Queue | Copy::QueueOnce, Err(_)) => Copy::Inline {
                    deadline: Instant::now() + std::time::Duration::from_secs(1),
                },
                (copy, _) => copy,
            };
            match copy {
                Copy::QueueOnce if !self.claim_copy(record).await? => {
                    return Ok(SyncOutcome::CopyQueued);
                }
                Copy::Queue | Copy::QueueOnce => {
                    self.queue
                        .send_copy(&CopyJob::new(record.id.clone(), remote))
                        .await?;
                    tracing::info!(prediction_id = %record.id, "output copy queued");
                    return Ok(SyncOutcome::CopyQueued);
                }
                Copy::Inline { deadline } => {
                    self.store_succeeded_outputs(record, remote, &mut advance, deadline)
                        .await?;
                }
            }
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

    /// Whether this poll may queue the record's copy (none queued by a poll lately).
    async fn claim_copy(&self, record: &PredictionRecord) -> Result<bool, StoreError> {
        let now = self.clock.millis();
        let since = now.saturating_sub(COPY_REQUEUE_AFTER.as_millis() as u64);
        self.records
            .claim_sync(&record.id, SyncMark::CopyQueued, now, since)
            .await
    }

    /// The record's next state from Replicate's, bounded in size whatever Replicate sends.
    fn advance_to(&self, remote: &Prediction) -> Advance {
        let completed_at = remote.status.is_terminal().then(|| {
            remote
                .completed_at
                .as_deref()
                .and_then(parse_rfc3339)
                .unwrap_or_else(|| self.clock.millis())
        });
        Advance {
            status: remote.status.clone(),
            replicate_id: Some(remote.id.clone()),
            outputs: Vec::new(),
            error: remote.error.as_deref().map(bounded_error),
            metrics: Some(bounded_metrics(&remote.metrics)),
            started_at: remote.started_at.as_deref().and_then(parse_rfc3339),
            completed_at,
        }
    }

    async fn store_succeeded_outputs(
        &self,
        record: &PredictionRecord,
        remote: &Prediction,
        advance: &mut Advance,
        deadline: Instant,
    ) -> Result<(), SyncError> {
        let unusable = |reason: String, advance: &mut Advance| {
            advance.status = PredictionStatus::Failed;
            advance.error = Some(bounded_error(&reason));
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
        if Instant::now() >= deadline {
            return Err(OutputError::OutOfTime.into());
        }
        let stored = tokio::time::timeout_at(
            deadline,
            store_outputs(
                &self.downloads,
                &self.objects,
                &self.settings.output_hosts,
                &record.id,
                &remote.output,
            ),
        )
        .await
        .unwrap_or(Err(OutputError::OutOfTime));
        match stored {
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
            let settlement = Settlement {
                prediction_id: &record.id,
                lease_until: after(completed, self.settings.result_cache_ttl),
                from_cache: false,
            };
            self.records.settle_claim(&key, guard, &settlement).await
        } else {
            self.records.release_claim(&key, guard).await
        };
        if let Err(err) = result {
            tracing::warn!(prediction_id = %record.id, error = %err, "could not update the cache claim");
        }
    }
}
