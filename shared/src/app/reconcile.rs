//! The reconciler: on a schedule, syncs predictions that are still running some time after
//! they were created, so their outputs are saved well inside Replicate's one-hour retention
//! even when every webhook was lost and nobody fetches. It pages through every shard of the
//! open index, carries on past any one record's failure, runs a few syncs at a time, stops
//! starting new ones near its deadline, and ends records that outlived Replicate's
//! retention (their outputs are gone, so nothing can ever complete them).

use std::time::Duration;

use futures_util::future::join_all;
use serde::Serialize;
use tokio::time::Instant;

use super::App;
use super::recover::SearchBudget;
use super::sync::{Copy, SyncOutcome};
use crate::domain::callbacks::CallbackEvent;
use crate::domain::cost::Billed;
use crate::domain::record::PredictionRecord;
use crate::domain::replicate::PredictionStatus;
use crate::domain::time::Timestamp;
use crate::ports::Ports;
use crate::ports::StoreError;
use crate::ports::records::{LEGACY_OPEN_SHARD, OPEN_SHARDS, OpenEntry, RecordStore};
use crate::ports::replicate::ReplicateApi;

/// The schedule's period (template: `rate(5 minutes)`), for rotating the first shard.
/// A queued create still unsent this long after its slot lost its job: queued again.
const CREATE_OVERDUE: Duration = Duration::from_secs(120);
const RUN_EVERY: Duration = Duration::from_secs(5 * 60);
/// Records read per query of the open index.
const PAGE: usize = 100;
/// Syncs in flight at once: enough to cover a backlog, few enough not to trip Replicate's
/// rate limit or the function's memory.
const CONCURRENCY: usize = 8;
/// Replicate deletes an API prediction's outputs an hour after it is created; a record
/// still open this long after creation (with a margin for a last copy) can never succeed.
pub const OUTPUT_RETENTION: Duration = Duration::from_secs(70 * 60);

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Running predictions older than the threshold.
    pub examined: usize,
    /// Moved forward (to a later status, or terminal), or tied to their Replicate prediction.
    pub advanced: usize,
    /// Succeeded at Replicate; their output copy was queued.
    pub copies_queued: usize,
    /// Ended predictions whose `completed` callback had not been queued.
    pub callbacks_queued: usize,
    /// Queued predictions whose create job was overdue: queued again (README, "Bursts").
    pub creates_requeued: usize,
    /// Ended because they outlived Replicate's output retention.
    pub expired: usize,
    /// Could not be synced this time (Replicate or storage failed); retried next run.
    pub errors: usize,
    /// The run stopped at its deadline before reading every shard; the next run goes on.
    pub incomplete: bool,
}

/// What syncing one record did.
enum Step {
    Advanced,
    CopyQueued,
    Unchanged,
}

enum Outcome {
    Advanced,
    CreateRequeued,
    CallbackQueued,
    CopyQueued,
    Unchanged,
    Expired,
    Error,
}

impl<P: Ports> App<P> {
    /// One pass over every open prediction older than `RECONCILE_AFTER_SECONDS`, until
    /// `deadline` (a Lambda invocation's remaining time, less a margin).
    pub async fn reconcile(&self, deadline: Option<Instant>) -> ReconcileReport {
        let now = self.clock.now();
        let threshold = now.minus(self.settings.reconcile_after);
        let mut report = ReconcileReport::default();
        // Each run starts at another shard, so a run cut short never starves the same ones.
        let shards: Vec<&str> = OPEN_SHARDS
            .iter()
            .copied()
            .chain([LEGACY_OPEN_SHARD])
            .collect();
        let first = now.period(RUN_EVERY).0 as usize % shards.len();
        let order = shards[first..].iter().chain(&shards[..first]).copied();
        'shards: for shard in order {
            let mut cursor: Option<String> = None;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    report.incomplete = true;
                    break 'shards;
                }
                let page = match self
                    .records
                    .list_open(shard, threshold, cursor.as_deref(), PAGE)
                    .await
                {
                    Ok(page) => page,
                    Err(err) => {
                        tracing::error!(shard, error = %err, "could not list open predictions; next shard");
                        report.errors += 1;
                        continue 'shards;
                    }
                };
                if !self
                    .reconcile_page(page.entries, now, deadline, &mut report)
                    .await
                {
                    report.incomplete = true;
                    break 'shards;
                }
                match page.next {
                    Some(next) => cursor = Some(next),
                    None => break,
                }
            }
        }
        for (name, value) in [
            ("ReconcileExamined", report.examined),
            ("ReconcileAdvanced", report.advanced),
            ("ReconcileExpired", report.expired),
            ("ReconcileErrors", report.errors),
            ("ReconcileCallbacksQueued", report.callbacks_queued),
            ("ReconcileCreatesRequeued", report.creates_requeued),
        ] {
            crate::telemetry::metrics::record(crate::telemetry::metrics::Metric::value(
                name,
                value as f64,
                crate::telemetry::metrics::Unit::Count,
            ));
        }
        tracing::info!(
            examined = report.examined,
            advanced = report.advanced,
            expired = report.expired,
            errors = report.errors,
            incomplete = report.incomplete,
            "reconciled"
        );
        report
    }

    /// Reconciles a page, a few at a time; `false` if the deadline came first.
    async fn reconcile_page(
        &self,
        entries: Vec<OpenEntry>,
        now: Timestamp,
        deadline: Option<Instant>,
        report: &mut ReconcileReport,
    ) -> bool {
        for chunk in entries.chunks(CONCURRENCY) {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            report.examined += chunk.len();
            let bounded = |entry: OpenEntry| async move {
                match deadline {
                    Some(d) => tokio::time::timeout_at(d, self.reconcile_entry(entry, now))
                        .await
                        .unwrap_or(Outcome::Error),
                    None => self.reconcile_entry(entry, now).await,
                }
            };
            let outcomes = join_all(chunk.iter().cloned().map(bounded)).await;
            for outcome in outcomes {
                match outcome {
                    Outcome::Advanced => report.advanced += 1,
                    Outcome::CreateRequeued => report.creates_requeued += 1,
                    Outcome::CopyQueued => report.copies_queued += 1,
                    Outcome::CallbackQueued => report.callbacks_queued += 1,
                    Outcome::Expired => report.expired += 1,
                    Outcome::Error => report.errors += 1,
                    Outcome::Unchanged => {}
                }
            }
        }
        true
    }

    /// Reads a listed record (the index holds only keys) and reconciles it if it still runs.
    async fn reconcile_entry(&self, entry: OpenEntry, now: Timestamp) -> Outcome {
        match self.live_prediction(&entry.id).await {
            Ok(Some(record)) if !record.status.is_terminal() => {
                self.reconcile_one(record, now).await
            }
            // Ended, but its `completed` callback was never queued (whoever ended it failed
            // to): queue it now, which takes it out of the index.
            Ok(Some(record)) if record.owes_completed_callback() => {
                self.queue_callback(&record, CallbackEvent::Completed).await;
                Outcome::CallbackQueued
            }
            // Ended, owing nothing, still listed (a note that half failed): take it out.
            Ok(Some(record)) if record.status.is_terminal() => {
                match self
                    .records
                    .callback_queued(&record.id, CallbackEvent::Completed)
                    .await
                {
                    Ok(_) => Outcome::Unchanged,
                    Err(err) => {
                        tracing::warn!(prediction_id = %record.id, error = %err, "could not take an ended record out of the open index");
                        Outcome::Error
                    }
                }
            }
            // Ended or gone since it was listed.
            Ok(_) => Outcome::Unchanged,
            Err(err) => {
                tracing::warn!(prediction_id = %entry.id, error = %err, "reconcile could not read a listed record; next run retries");
                Outcome::Error
            }
        }
    }

    async fn reconcile_one(&self, record: PredictionRecord, now: Timestamp) -> Outcome {
        if record.is_queued() {
            return self.reconcile_queued(&record, now).await;
        }
        match self.sync_for_reconcile(record).await {
            Ok((_, Step::Advanced)) => Outcome::Advanced,
            // A queued copy does not end the record: if it never lands, the record must
            // still expire with Replicate's retention.
            Ok((record, Step::CopyQueued)) => {
                self.expire_if_too_old(&record, now, Outcome::CopyQueued)
                    .await
            }
            Ok((record, Step::Unchanged)) => {
                self.expire_if_too_old(&record, now, Outcome::Unchanged)
                    .await
            }
            Err((record, error)) => {
                tracing::warn!(prediction_id = %record.id, %error, "reconcile could not sync; next run retries");
                self.expire_if_too_old(&record, now, Outcome::Error).await
            }
        }
    }

    /// A queued prediction: ended if its cancel was asked for; queued again if its create
    /// job is overdue (its send failed, or the job was lost), which is harmless if it was
    /// not: only one drainer can claim the record.
    async fn reconcile_queued(&self, record: &PredictionRecord, now: Timestamp) -> Outcome {
        if record.cancel_requested_at.is_some() {
            return match self.end_queued_canceled(record).await {
                Ok(_) => Outcome::Advanced,
                Err(err) => {
                    tracing::warn!(prediction_id = %record.id, error = %err, "could not end a canceled queued prediction");
                    Outcome::Error
                }
            };
        }
        let overdue = record
            .queue
            .as_ref()
            .is_some_and(|q| now >= q.slot_at.plus(CREATE_OVERDUE));
        if !overdue {
            return Outcome::Unchanged;
        }
        self.send_to_create_queue(record, now).await;
        Outcome::CreateRequeued
    }

    /// Ends a record that outlived Replicate's output retention; otherwise `otherwise`.
    async fn expire_if_too_old(
        &self,
        record: &PredictionRecord,
        now: Timestamp,
        otherwise: Outcome,
    ) -> Outcome {
        if now < record.create_sent_at().plus(OUTPUT_RETENTION) {
            return otherwise;
        }
        let reason = "no result within Replicate's one-hour output retention; the outputs are no longer available";
        match self.end_record(record, reason, Billed::Unknown).await {
            Ok(_) => Outcome::Expired,
            Err(err) => {
                tracing::error!(prediction_id = %record.id, error = %err, "could not end an expired prediction");
                Outcome::Error
            }
        }
    }

    /// Syncs one record, saying what that did.
    async fn sync_for_reconcile(
        &self,
        record: PredictionRecord,
    ) -> Result<(PredictionRecord, Step), (PredictionRecord, String)> {
        let Some(replicate_id) = record.replicate_id.clone() else {
            return match self
                .recover_unconfirmed(record.clone(), SearchBudget::RECONCILE)
                .await
            {
                Ok(fresh) => {
                    let tied = fresh.replicate_id.is_some() || fresh.status != record.status;
                    Ok((
                        fresh,
                        if tied {
                            Step::Advanced
                        } else {
                            Step::Unchanged
                        },
                    ))
                }
                Err(err) => Err((record, err.to_string())),
            };
        };
        let outcome = match self.replicate.get_prediction(&replicate_id).await {
            Ok(remote) => self
                .apply_remote(&record, &remote, Copy::QueueOnce)
                .await
                .map_err(|e| e.to_string()),
            // Replicate no longer knows it (deleted, or another account's): it will never
            // finish, so record that rather than ask again every run.
            Err(err) if err.is_not_found() => self
                .end_record(
                    &record,
                    "Replicate no longer has this prediction",
                    Billed::Unknown,
                )
                .await
                .map(|ended| {
                    if ended {
                        SyncOutcome::Applied(PredictionStatus::Failed)
                    } else {
                        SyncOutcome::Ignored("already ended")
                    }
                })
                .map_err(|e: StoreError| e.to_string()),
            Err(err) => Err(err.to_string()),
        };
        match outcome {
            Ok(SyncOutcome::Ignored(_)) => Ok((record, Step::Unchanged)),
            Ok(SyncOutcome::CopyQueued) => Ok((record, Step::CopyQueued)),
            Ok(SyncOutcome::Applied(_)) => Ok((record, Step::Advanced)),
            Err(error) => Err((record, error)),
        }
    }
}
