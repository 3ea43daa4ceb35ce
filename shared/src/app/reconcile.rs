//! The reconciler: on a schedule, syncs predictions that are still running some time after
//! they were created, so their outputs are saved well inside Replicate's one-hour retention
//! even when every webhook was lost and nobody fetches.

use serde::Serialize;

use super::App;
use super::Ports;
use crate::ports::RecordStore;
use crate::record::Advance;
use crate::replicate::{PredictionStatus, ReplicateApi};

use super::sync::SyncOutcome;

/// Predictions looked at per run; the next run takes the rest.
pub const RECONCILE_BATCH: usize = 200;

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Running predictions older than the threshold.
    pub examined: usize,
    /// Moved forward (to a later status, or terminal).
    pub advanced: usize,
    /// Could not be synced this time (Replicate or storage failed); retried next run.
    pub errors: usize,
}

fn gone(replicate_id: &str, now: crate::record::Millis) -> Advance {
    Advance {
        status: PredictionStatus::Failed,
        replicate_id: Some(replicate_id.to_owned()),
        outputs: Vec::new(),
        error: Some("Replicate no longer has this prediction".to_owned()),
        metrics: None,
        started_at: None,
        completed_at: Some(now),
    }
}

impl<P: Ports> App<P> {
    pub async fn reconcile(&self) -> Result<ReconcileReport, crate::ports::StoreError> {
        let now = self.clock.millis();
        let threshold = now.saturating_sub(self.settings.reconcile_after.as_millis() as u64);
        let open = self.records.list_open(threshold, RECONCILE_BATCH).await?;
        let mut report = ReconcileReport {
            examined: open.len(),
            ..ReconcileReport::default()
        };
        for record in open {
            let before = record.status.clone();
            let Some(replicate_id) = record.replicate_id.clone() else {
                let after = self.give_up_if_never_created(record, now).await?;
                report.advanced += usize::from(after.status != before);
                continue;
            };
            let outcome = match self.replicate.get_prediction(&replicate_id).await {
                Ok(remote) => self
                    .apply_remote(&record, &remote)
                    .await
                    .map_err(|e| e.to_string()),
                // Replicate no longer knows it (deleted, or another account's): it will never
                // finish, so record that rather than ask again every run.
                Err(err) if err.is_not_found() => {
                    match self
                        .records
                        .advance(&record.id, &gone(&replicate_id, now))
                        .await
                    {
                        Ok(true) => Ok(SyncOutcome::Applied(PredictionStatus::Failed)),
                        Ok(false) => Ok(SyncOutcome::Ignored("already ended")),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(err) => Err(err.to_string()),
            };
            match outcome {
                Ok(SyncOutcome::Applied(_)) => report.advanced += 1,
                Ok(SyncOutcome::Ignored(_)) => {}
                Err(error) => {
                    tracing::warn!(prediction_id = %record.id, %error, "reconcile could not sync; next run retries");
                    report.errors += 1;
                }
            }
        }
        tracing::info!(
            examined = report.examined,
            advanced = report.advanced,
            errors = report.errors,
            "reconciled"
        );
        Ok(report)
    }
}
