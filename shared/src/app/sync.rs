//! Applying Replicate's view of a prediction to our record: the one path for webhooks,
//! fetch-time syncing, lost-create recovery, the reconciler and the copy worker, so all behave
//! exactly alike.

use tokio::time::Instant;

use crate::app::outputs::store_outputs;
use crate::domain::callbacks::CallbackEvent;
use crate::domain::cost::requested_outputs;
use crate::domain::cost::{Billed, CostSettlement, month_of};
use crate::domain::jobs::CopyJob;
use crate::domain::limits::{bounded_error, bounded_metrics};
use crate::domain::money::Micros;
use crate::domain::outputs::{OutputError, check_output_list};
use crate::domain::record::{Advance, PredictionRecord};
use crate::domain::replicate::{Prediction, PredictionStatus};
use crate::domain::time::Timestamp;
use crate::ports::StoreError;
use crate::ports::accounts::AccountStore;
use crate::ports::jobs::JobQueue;
use crate::ports::records::{RecordStore, SyncMark};
use crate::ports::replicate::ReplicateApi;
use crate::telemetry::metrics::{self, Metric, Unit};

use super::App;
use crate::ports::Ports;

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
                // A create whose answer was lost: it started all the same.
                self.queue_callback(record, CallbackEvent::Start).await;
                if record.cancel_requested_at.is_some() && !remote.status.is_terminal() {
                    return self.cancel_now_tied(record, remote, copy).await;
                }
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
        let status = advance.status.clone();
        if !self.finish(record, advance, Billed::Remote(remote)).await? {
            return Ok(SyncOutcome::Ignored("already as far along"));
        }
        tracing::info!(prediction_id = %record.id, status = %status, "prediction advanced");
        Ok(SyncOutcome::Applied(status))
    }

    /// A record whose cancel was asked for before it was tied to its Replicate prediction:
    /// cancelled now that it is, and Replicate's answer applied.
    async fn cancel_now_tied(
        &self,
        record: &PredictionRecord,
        remote: &Prediction,
        copy: Copy,
    ) -> Result<SyncOutcome, SyncError> {
        let tied = PredictionRecord {
            replicate_id: Some(remote.id.clone()),
            ..record.clone()
        };
        match self.replicate.cancel_prediction(&remote.id).await {
            Ok(canceled) => Box::pin(self.apply_remote(&tied, &canceled, copy)).await,
            Err(err) => {
                tracing::warn!(prediction_id = %record.id, error = %err, "could not cancel as asked; applying the state as delivered");
                Box::pin(self.apply_remote(&tied, remote, copy)).await
            }
        }
    }

    /// Writes `advance` (only if it moves the record forward). One that ends the prediction
    /// carries what Replicate billed, and then settles the tenant's month: only the one
    /// writer whose terminal update applied does, so it happens once. (Cache claims need no
    /// update: submit judges a claim by its prediction's record.)
    pub(crate) async fn finish(
        &self,
        record: &PredictionRecord,
        mut advance: Advance,
        billed: Billed<'_>,
    ) -> Result<bool, StoreError> {
        let ends = advance.status.is_terminal();
        if ends {
            advance.cost = Some(billed.cost(record.price.as_ref(), record.cost_estimate));
            advance.keep_open = record.owes_completed_callback();
        }
        if !self.records.advance(&record.id, &advance).await? {
            return Ok(false);
        }
        if ends {
            let name = match advance.status {
                PredictionStatus::Succeeded => "PredictionsSucceeded",
                PredictionStatus::Canceled => "PredictionsCanceled",
                PredictionStatus::Aborted => "PredictionsAborted",
                _ => "PredictionsFailed",
            };
            metrics::record(Metric::count(name).by("Model", &record.alias));
        }
        if advance.keep_open {
            self.queue_callback(record, CallbackEvent::Completed).await;
        }
        if ends {
            let stored = if advance.status == PredictionStatus::Succeeded {
                advance.outputs.len() as u64
            } else {
                0
            };
            let created = !matches!(billed, Billed::NotCreated);
            self.settle_usage(record, advance.cost.unwrap_or(0), stored, created)
                .await;
        }
        Ok(true)
    }

    /// Replaces what submit reserved in the tenant's month of the record by what happened:
    /// `actual` cost, `stored` images, whether it was `created` at all. Nothing is written
    /// when the reservation was exact (the usual case for per-image prices). Best effort: if
    /// it fails the estimate stays counted, so a budget is never under-counted.
    pub(crate) async fn settle_usage(
        &self,
        record: &PredictionRecord,
        actual: Micros,
        stored: u64,
        created: bool,
    ) {
        let Some(tenant) = &record.tenant else {
            return;
        };
        let settlement = CostSettlement {
            estimate: record.cost_estimate,
            actual,
            requested_images: requested_outputs(&record.input),
            stored_images: stored,
            created,
        };
        if settlement.changes_nothing() {
            return;
        }
        if let Err(err) = self
            .records
            .settle_cost(tenant, &month_of(record.created_at), &settlement)
            .await
        {
            tracing::error!(prediction_id = %record.id, error = %err, "could not settle the prediction's cost; its estimate stays counted");
        }
    }

    /// Whether this poll may queue the record's copy (none queued by a poll lately).
    async fn claim_copy(&self, record: &PredictionRecord) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let since = now.minus(COPY_REQUEUE_AFTER);
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
                .and_then(Timestamp::parse_rfc3339)
                .unwrap_or_else(|| self.clock.now())
        });
        Advance {
            status: remote.status.clone(),
            replicate_id: Some(remote.id.clone()),
            outputs: Vec::new(),
            error: remote.error.as_deref().map(bounded_error),
            metrics: Some(bounded_metrics(&remote.metrics)),
            started_at: remote
                .started_at
                .as_deref()
                .and_then(Timestamp::parse_rfc3339),
            completed_at,
            cost: None,
            keep_open: false,
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
            Ok(outputs) => {
                let bytes: u64 = outputs.iter().map(|o| o.size).sum();
                metrics::record(Metric::value("BytesCopied", bytes as f64, Unit::Bytes));
                advance.outputs = outputs;
            }
            Err(err) if err.is_permanent() => {
                tracing::warn!(prediction_id = %record.id, error = %err, "outputs cannot be stored");
                unusable(format!("outputs could not be stored: {err}"), advance);
            }
            Err(err) => return Err(err.into()),
        }
        Ok(())
    }
}
