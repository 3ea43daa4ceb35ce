//! Finding out what an unconfirmed create did. A create whose answer was lost (timeout,
//! 5xx) may have started a billed prediction; it is never repeated. Instead the record is
//! tied to the Replicate prediction by, whichever comes first: a webhook addressed to it
//! (its URL carries the record's token), or Replicate's prediction list searched around the
//! attempt for the same model, version and input. If the list, read once Replicate has had
//! time to show it, has no such prediction, nothing was created and the record ends
//! `failed` (nothing billed); at the give-up deadline it ends `failed` either way.

use std::time::{Duration, SystemTime};

use crate::ports::{RecordStore, StoreError};
use crate::record::{Advance, Millis, PredictionRecord, after, before, from_millis};
use crate::replicate::{Prediction, ReplicateApi, ReplicateError};

use super::inputs::input_matches;
use super::sync::{Copy, SyncOutcome};
use super::{App, Ports};

/// An unconfirmed record is given up on after this long.
pub const UNCONFIRMED_DEADLINE: Duration = Duration::from_secs(10 * 60);
/// Once this long has passed since the attempt, a list without the prediction is taken to
/// mean it was not created.
const LIST_SETTLE: Duration = Duration::from_secs(60);
/// The search window around a record's creation: the create call started after it, and
/// ended (answered or timed out) within the client's time budget.
const WINDOW_BEFORE: Duration = Duration::from_secs(60);
const WINDOW_AFTER: Duration = Duration::from_secs(120);
/// Pages of 100 read at most per search; a busier window is searched again next time.
const MAX_LIST_PAGES: usize = 10;

/// What a search of Replicate's list found.
enum Search {
    /// Matching predictions, the closest in time to the record first.
    Found(Vec<Prediction>),
    /// Nothing matched; `complete` when every page of the window was read.
    NotFound { complete: bool },
}

impl<P: Ports> App<P> {
    /// Ties an unconfirmed record to its Replicate prediction, or ends it; returns the
    /// record as it is afterwards.
    pub(crate) async fn resolve_unconfirmed(
        &self,
        record: PredictionRecord,
    ) -> Result<PredictionRecord, StoreError> {
        if !record.is_unconfirmed() {
            return Ok(record);
        }
        let now = self.clock.millis();
        let outcome = match self.search_created(&record, now).await {
            Ok(Search::Found(candidates)) => self.adopt_first(&record, &candidates).await?,
            Ok(Search::NotFound { complete }) => {
                if complete && now >= after(record.created_at, LIST_SETTLE) {
                    tracing::warn!(prediction_id = %record.id, "Replicate has no prediction for an unconfirmed create; ending it");
                    self.end_record(
                        &record,
                        "the prediction was not created at Replicate (nothing was billed); submit it again",
                    )
                    .await?;
                }
                false
            }
            Err(err) => {
                tracing::warn!(prediction_id = %record.id, error = %err, "could not search Replicate's predictions");
                false
            }
        };
        let fresh = self.reread(record).await?;
        if !outcome
            && fresh.is_unconfirmed()
            && now >= after(fresh.created_at, UNCONFIRMED_DEADLINE)
        {
            self.end_record(
                &fresh,
                "the prediction could not be confirmed as created at Replicate",
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
        now: Millis,
    ) -> Result<Search, ReplicateError> {
        let created_after = from_millis(before(record.created_at, WINDOW_BEFORE));
        let created_before: SystemTime =
            from_millis(after(record.created_at, WINDOW_AFTER).min(now.saturating_add(1000)));
        let mut found = Vec::new();
        let mut page: Option<String> = None;
        for _ in 0..MAX_LIST_PAGES {
            let listed = self
                .replicate
                .list_predictions(created_after, created_before, page.as_deref())
                .await?;
            found.extend(
                listed
                    .results
                    .into_iter()
                    .filter(|p| is_same_request(record, p)),
            );
            match listed.next {
                Some(next) => page = Some(next),
                None if found.is_empty() => return Ok(Search::NotFound { complete: true }),
                None => break,
            }
        }
        if found.is_empty() {
            return Ok(Search::NotFound { complete: false });
        }
        let distance = |p: &Prediction| {
            p.created_at
                .as_deref()
                .and_then(crate::record::parse_rfc3339)
                .map_or(u64::MAX, |t| t.abs_diff(record.created_at))
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
            match self.apply_remote(record, candidate, Copy::Queue).await {
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

    /// Ends a record as `failed` for a reason of ours.
    pub(crate) async fn end_record(
        &self,
        record: &PredictionRecord,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut advance = Advance::failed(reason, self.clock.millis());
        advance.replicate_id = record.replicate_id.clone();
        self.records.advance(&record.id, &advance).await
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

fn is_same_request(record: &PredictionRecord, remote: &Prediction) -> bool {
    remote.model == record.model
        && remote.version == record.version
        && input_matches(&record.input, &remote.input)
}
