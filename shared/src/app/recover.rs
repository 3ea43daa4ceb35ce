//! Lost-create recovery: finding out what an unconfirmed create did. A create whose answer was lost (timeout,
//! 5xx) may have started a billed prediction; it is never repeated. Instead the record is
//! tied to the Replicate prediction by, whichever comes first: a webhook addressed to it
//! (its URL carries the record's token), or Replicate's prediction list searched around the
//! attempt for the same model, version and input. If the list, read in full once Replicate
//! has had time to show it, has no such prediction (nor one that might be it), nothing was
//! created and the record ends `failed` (nothing billed). Past the give-up deadline (longer
//! than any prediction runs) it ends `failed` either way.

use std::time::Duration;

use crate::ports::records::RecordStore;

use crate::domain::record::{Advance, PredictionRecord};
use crate::domain::replicate::{Prediction, PredictionStatus, ReplicateError};
use crate::domain::time::Timestamp;
use crate::ports::StoreError;
use crate::ports::replicate::ReplicateApi;

use super::App;
use super::inputs::{InputMatch, input_match, with_file_references};
use super::sync::{Copy, SyncOutcome};
use crate::domain::cost::Billed;
use crate::ports::Ports;

/// An unconfirmed record is given up on after this long: Replicate stops any prediction at
/// 30 minutes, so by then its `completed` webhook (or the list) has had every chance.
pub const UNCONFIRMED_DEADLINE: Duration = Duration::from_secs(35 * 60);
/// The search window around a record's creation: the create was sent after the record was
/// stored and the client gives up on it within about 25 s; plus clock skew, and a margin
/// for a Replicate that stores a create late.
const WINDOW_BEFORE: Duration = Duration::from_secs(30);
const WINDOW_AFTER: Duration = Duration::from_secs(180);

/// How much of Replicate's list one search may read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SearchBudget {
    pub pages: usize,
    pub time: Duration,
}

impl SearchBudget {
    /// A fetch answers within API Gateway's 30 s and is repeated by polling clients: a
    /// short look; the reconciler goes deeper.
    pub const FETCH: Self = Self {
        pages: 2,
        time: Duration::from_secs(6),
    };
    /// 20 pages of 100 cover the window at Replicate's full create rate (600 a minute).
    pub const RECONCILE: Self = Self {
        pages: 20,
        time: Duration::from_secs(30),
    };
}

/// What a search of Replicate's list found.
enum Search {
    /// Predictions of the same request, the closest in time to the record first.
    Found(Vec<Prediction>),
    /// Nothing that is certainly it. `conclusive` when every page of the window was read
    /// and nothing could even possibly be it (an input Replicate rewrote, say).
    NotFound { conclusive: bool },
}

impl<P: Ports> App<P> {
    /// Ties an unconfirmed record to its Replicate prediction, or ends it; returns the
    /// record as it is afterwards.
    pub(crate) async fn recover_unconfirmed(
        &self,
        record: PredictionRecord,
        budget: SearchBudget,
    ) -> Result<PredictionRecord, StoreError> {
        if !record.is_unconfirmed() {
            return Ok(record);
        }
        let now = self.clock.now();
        // Not before `RESOLVE_AFTER_SECONDS`: until then the list may not show a late
        // create, and an identical request's create may be listed before it records its id
        // (adopting it would leave that one's own prediction orphaned).
        let sent_at = record.create_sent_at();
        if now < sent_at.plus(self.settings.resolve_after) {
            return Ok(record);
        }
        let search = tokio::time::timeout(budget.time, self.search_created(&record, now, budget))
            .await
            .unwrap_or(Ok(Search::NotFound { conclusive: false }));
        let tied = match search {
            Ok(Search::Found(candidates)) => self.adopt_first(&record, &candidates).await?,
            Ok(Search::NotFound { conclusive }) => {
                if conclusive && record.queue.is_some() && record.cancel_requested_at.is_none() {
                    // A queued create that never reached Replicate (a drainer died after
                    // claiming it): back in the queue, not failed.
                    tracing::warn!(prediction_id = %record.id, "a claimed queued create was never made; queued again");
                    if self
                        .records
                        .release_create(&record.id, sent_at, now)
                        .await?
                    {
                        self.send_to_create_queue(&record, now).await;
                    }
                } else if conclusive {
                    tracing::warn!(prediction_id = %record.id, "Replicate has no prediction for an unconfirmed create; ending it");
                    if record.cancel_requested_at.is_some() {
                        // Its cancel was asked for: it ends canceled, as one never created.
                        let advance = Advance {
                            status: PredictionStatus::Canceled,
                            error: None,
                            ..Advance::failed("", self.clock.now())
                        };
                        self.finish(&record, advance, Billed::NotCreated).await?;
                    } else {
                        self.end_record(
                            &record,
                            "the prediction was not created at Replicate (nothing was billed); submit it again",
                            Billed::NotCreated,
                        )
                        .await?;
                    }
                }
                false
            }
            Err(err) => {
                tracing::warn!(prediction_id = %record.id, error = %err, "could not search Replicate's predictions");
                false
            }
        };
        let fresh = self.reread(record).await?;
        if !tied
            && fresh.is_unconfirmed()
            && now >= fresh.create_sent_at().plus(UNCONFIRMED_DEADLINE)
        {
            self.end_record(
                &fresh,
                "the prediction could not be confirmed as created at Replicate",
                Billed::Unknown,
            )
            .await?;
            return self.reread(fresh).await;
        }
        Ok(fresh)
    }

    /// Searches Replicate's list around the record's creation for predictions of the same
    /// model, version and input.
    async fn search_created(
        &self,
        record: &PredictionRecord,
        now: Timestamp,
        budget: SearchBudget,
    ) -> Result<Search, ReplicateError> {
        // Around when the create was sent: at submit, or when a drainer sent a queued one.
        let sent_at = record.create_sent_at();
        let window = (
            sent_at.minus(WINDOW_BEFORE),
            sent_at
                .plus(WINDOW_AFTER)
                .min(now.plus(Duration::from_secs(1))),
        );
        let mut found = Vec::new();
        let mut possible = false;
        let mut page: Option<String> = None;
        let mut complete = false;
        for _ in 0..budget.pages {
            let listed = self
                .replicate
                .list_predictions(window.0.to_system(), window.1.to_system(), page.as_deref())
                .await?;
            for candidate in listed.results {
                match same_request(record, &candidate, window) {
                    InputMatch::Same => found.push(candidate),
                    InputMatch::Possible => possible = true,
                    InputMatch::Different => {}
                }
            }
            match listed.next {
                Some(next) => page = Some(next),
                None => {
                    complete = true;
                    break;
                }
            }
        }
        if found.is_empty() {
            return Ok(Search::NotFound {
                conclusive: complete && !possible,
            });
        }
        let distance = |p: &Prediction| {
            p.created_at
                .as_deref()
                .and_then(Timestamp::parse_rfc3339)
                .map_or(Duration::MAX, |t| t.distance(sent_at))
        };
        found.sort_by_key(distance);
        Ok(Search::Found(found))
    }

    /// Ties the record to the first candidate no other record of ours has; `true` once the
    /// record is tied (by this or by a concurrent webhook).
    async fn adopt_first(
        &self,
        record: &PredictionRecord,
        candidates: &[Prediction],
    ) -> Result<bool, StoreError> {
        for candidate in candidates {
            match self.apply_remote(record, candidate, Copy::QueueOnce).await {
                Ok(SyncOutcome::Ignored(reason)) => {
                    tracing::info!(prediction_id = %record.id, replicate_id = %candidate.id, reason, "candidate not adopted");
                    if self.reread(record.clone()).await?.replicate_id.is_some() {
                        return Ok(true);
                    }
                }
                Ok(_) => {
                    tracing::info!(prediction_id = %record.id, replicate_id = %candidate.id, "unconfirmed create found at Replicate");
                    return Ok(true);
                }
                Err(err) => {
                    tracing::warn!(prediction_id = %record.id, error = %err, "could not apply the found prediction");
                    return Ok(self.reread(record.clone()).await?.replicate_id.is_some());
                }
            }
        }
        Ok(false)
    }

    /// Ends a record as `failed` for a reason of ours, only if it is still tied to what
    /// `record` says (an unconfirmed one only while still unconfirmed).
    pub(crate) async fn end_record(
        &self,
        record: &PredictionRecord,
        reason: &str,
        billed: Billed<'_>,
    ) -> Result<bool, StoreError> {
        let mut advance = Advance::failed(reason, self.clock.now());
        advance.replicate_id = record.replicate_id.clone();
        self.finish(record, advance, billed).await
    }

    pub(crate) async fn reread(
        &self,
        record: PredictionRecord,
    ) -> Result<PredictionRecord, StoreError> {
        Ok(self
            .records
            .get_prediction(&record.id)
            .await?
            .unwrap_or(record))
    }
}

/// Whether a listed prediction is the record's: same model and version, created inside the
/// window (checked here too, not only trusted to the filter), and the same input.
fn same_request(
    record: &PredictionRecord,
    remote: &Prediction,
    window: (Timestamp, Timestamp),
) -> InputMatch {
    let created = remote
        .created_at
        .as_deref()
        .and_then(Timestamp::parse_rfc3339);
    let in_window = created.is_some_and(|t| t >= window.0 && t < window.1);
    if remote.model != record.model || remote.version != record.version || !in_window {
        return InputMatch::Different;
    }
    input_match(
        &with_file_references(&record.input, &record.input_files),
        &remote.input,
    )
}
