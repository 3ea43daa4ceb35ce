//! Creating a submit's prediction: reserve its estimate against the budget, take a create
//! slot, store the record, store its input images, then create it at Replicate (or queue it
//! for its slot). Whatever fails, a record that was stored is ended and settled once, and
//! the cache key is freed only when nothing can have been created.

use super::{NewPrediction, Started};
use crate::app::inputs::materialize;
use crate::app::queue::Sent;
use crate::app::{ApiError, App};
use crate::domain::callbacks::CallbackState;
use crate::domain::claims::{Claim, ClaimGuard};
use crate::domain::cost::{Billed, Reservation, month_of, requested_outputs, usage_expires_at};
use crate::domain::money::{Micros, usd};
use crate::domain::pacing::CreateSlot;
use crate::domain::record::{PredictionRecord, QueueState, new_webhook_token};
use crate::domain::replicate::{PredictionStatus, ReplicateError};
use crate::domain::time::Timestamp;
use crate::ports::Ports;
use crate::ports::accounts::AccountStore;
use crate::ports::records::RecordStore;
use crate::ports::replicate::ReplicateApi;
use crate::telemetry::metrics::{self, Metric};

/// Whether a record whose insert reported an error is there after all.
enum ReadBack {
    Stored,
    Absent,
    Unknown,
}

impl<P: Ports> App<P> {
    pub(super) async fn create(
        &self,
        new: &NewPrediction<'_>,
        claim: Option<&Claim>,
    ) -> Result<Started, ApiError> {
        let now = self.clock.now();
        let id = claim
            .and_then(|c| c.prediction_id.clone())
            .unwrap_or_else(|| new.id.clone());
        // Replicate's client is set up (its token read) before anything is reserved or
        // stored: if it cannot be, the submit leaves nothing behind.
        if let Err(err) = self.replicate.ready().await {
            self.release_cache_claim(claim).await;
            return Err(err.into());
        }
        let estimate = match self.reserve_estimate(new, now).await {
            Ok(estimate) => estimate,
            Err(err) => {
                self.release_cache_claim(claim).await;
                return Err(err);
            }
        };
        let token = new_webhook_token();
        let record = PredictionRecord {
            id: id.clone(),
            replicate_id: None,
            alias: new.alias.alias.clone(),
            model: new.alias.model.path(),
            version: new.alias.model.version.as_ref().map(|v| v.to_string()),
            input: new.stored_input.clone(),
            status: PredictionStatus::Starting,
            outputs: Vec::new(),
            error: None,
            metrics: None,
            created_at: now,
            started_at: None,
            completed_at: None,
            synced_at: None,
            copy_queued_at: None,
            cancel_requested_at: None,
            expires_at: now.plus(self.settings.record_ttl).unix_seconds(),
            webhook_token: Some(token.clone()),
            tenant: Some(new.caller.tenant.clone()),
            price: Some(new.alias.price),
            cost_estimate: estimate,
            cost: None,
            input_files: new.input_files.clone(),
            callback: new.callback.clone().map(CallbackState::new),
            queue: None,
        };
        tracing::Span::current().record("prediction_id", id.as_str());
        // The create rate (README, "Bursts"): a slot now, a later one (queued), or none.
        // Taken after every check that can refuse the submit, so a refused one holds none.
        let slot = match self
            .records
            .reserve_create_slot(&self.settings.create_pace, now)
            .await
        {
            Ok(CreateSlot::Full { retry_after }) => {
                metrics::record(Metric::count("QueueFull"));
                self.give_back_estimate(&record).await;
                self.release_cache_claim(claim).await;
                return Err(ApiError::Backlogged { retry_after });
            }
            Ok(slot) => slot,
            Err(err) => {
                self.give_back_estimate(&record).await;
                self.release_cache_claim(claim).await;
                return Err(err.into());
            }
        };
        if let Err(err) = self.records.insert_prediction(&record).await {
            match self.read_back(&record).await {
                ReadBack::Stored => {}
                ReadBack::Absent => {
                    self.give_back_estimate(&record).await;
                    self.release_cache_claim(claim).await;
                    return Err(err.into());
                }
                // It may be stored: if so recovery ends it and settles its reservation
                // once; if not, the estimate stays counted (never given back twice).
                ReadBack::Unknown => {
                    self.release_cache_claim(claim).await;
                    return Err(err.into());
                }
            }
        }
        let sent_input = match materialize(&self.objects, &new.stored_input, &new.images).await {
            Ok(input) => input,
            Err(err) => {
                tracing::error!(prediction_id = %id, error = %err, "input images could not be stored");
                self.end_unstarted(&record, "the input images could not be stored")
                    .await;
                self.release_cache_claim(claim).await;
                return Err(ApiError::Internal);
            }
        };
        if let CreateSlot::At(slot_at) = slot {
            // Its slot is later: the drainer creates it then (README, "Bursts"). Marked
            // queued only now that its inputs are stored: a record that never got this far
            // is never created by anyone.
            let queue = QueueState {
                slot_at,
                webhook_base: new.webhook_base.clone(),
                deadline: new.deadline,
                sent_at: None,
            };
            if !matches!(self.records.mark_queued(&id, &queue).await, Ok(true)) {
                tracing::error!(prediction_id = %id, "could not mark the record queued");
                self.end_unstarted(&record, "the prediction could not be queued")
                    .await;
                self.release_cache_claim(claim).await;
                return Err(ApiError::Internal);
            }
            let record = PredictionRecord {
                queue: Some(queue),
                ..record
            };
            self.send_to_create_queue(&record, slot_at).await;
            metrics::record(Metric::count("PredictionsQueued").by("Model", &new.alias.alias));
            return Ok(Started::new(record));
        }
        match self
            .send_create(&record, &sent_input, &new.webhook_base, new.deadline)
            .await
        {
            Sent::Created(record) | Sent::Unknown(record) => Ok(Started::new(record)),
            Sent::Throttled(retry_after) => {
                // Replicate throttled past the retry budget: nothing was created, so it waits
                // in the create queue instead of failing.
                match self
                    .queue_throttled(&record, &new.webhook_base, new.deadline, retry_after)
                    .await
                {
                    Some(queued) => Ok(Started::new(queued)),
                    None => {
                        let err = ReplicateError::Throttled {
                            retry_after: Some(retry_after),
                            attempts: 1,
                        };
                        self.end_unstarted(&record, creation_refused(&err)).await;
                        self.release_cache_claim(claim).await;
                        Err(err.into())
                    }
                }
            }
            Sent::Refused(err) => {
                // Nothing was created: the record ends `failed` (anyone who joined it sees
                // why) and the cache key is free at once.
                self.end_unstarted(&record, creation_refused(&err)).await;
                self.release_cache_claim(claim).await;
                Err(err.into())
            }
        }
    }

    /// Reserves the run's estimated cost against the caller's monthly budget, atomically
    /// with every other submit of the tenant: 402 when it would not fit.
    async fn reserve_estimate(
        &self,
        new: &NewPrediction<'_>,
        now: Timestamp,
    ) -> Result<Micros, ApiError> {
        let caller = new.caller;
        let estimate = new.alias.price.estimate(&new.stored_input);
        let reservation = Reservation {
            estimate,
            images: requested_outputs(&new.stored_input),
            budget: caller.monthly_budget,
            expires_at: usage_expires_at(now),
        };
        let reserved = self
            .records
            .reserve_cost(&caller.tenant, &month_of(now), &reservation)
            .await?;
        if reserved {
            return Ok(estimate);
        }
        Err(ApiError::BudgetExhausted {
            estimate_usd: usd(estimate),
            budget_usd: caller.monthly_budget.map_or(0.0, usd),
        })
    }

    /// Whether a record whose insert reported an error was stored all the same (a lost
    /// answer, or an SDK retry of a write that had landed): then it goes on as stored, and
    /// its reservation is settled once, when it ends.
    async fn read_back(&self, record: &PredictionRecord) -> ReadBack {
        match self.records.get_prediction(&record.id).await {
            Ok(Some(stored)) if stored.webhook_token == record.webhook_token => ReadBack::Stored,
            Ok(_) => ReadBack::Absent,
            Err(_) => ReadBack::Unknown,
        }
    }

    /// Undoes a reservation whose record could not even be stored.
    async fn give_back_estimate(&self, record: &PredictionRecord) {
        self.settle_usage(record, 0, 0, false).await;
    }

    /// Ends a record whose prediction was certainly never created at Replicate (its
    /// estimate is given back).
    /// The caller gets an error instead of this record, so its callback is not called.
    async fn end_unstarted(&self, record: &PredictionRecord, reason: &str) {
        let unseen = PredictionRecord {
            callback: None,
            ..record.clone()
        };
        if let Err(err) = self.end_record(&unseen, reason, Billed::NotCreated).await {
            tracing::warn!(prediction_id = %record.id, error = %err, "could not end the unstarted record");
        }
    }

    async fn release_cache_claim(&self, claim: Option<&Claim>) {
        if let Some(claim) = claim
            && let Err(err) = self
                .records
                .release_claim(&claim.key, ClaimGuard::Token(&claim.token))
                .await
        {
            tracing::warn!(error = %err, "could not release the cache claim");
        }
    }
}

/// Why a create Replicate certainly refused ended the record; shown to clients, so no
/// upstream text (it may echo the token or the input).
fn creation_refused(err: &ReplicateError) -> &'static str {
    match err {
        ReplicateError::Throttled { .. } => {
            "Replicate was throttling requests; the prediction was not created"
        }
        ReplicateError::Unavailable { .. }
        | ReplicateError::Unreachable { .. }
        | ReplicateError::TimedOut { .. }
        | ReplicateError::Transport { .. } => {
            "Replicate could not be reached; the prediction was not created"
        }
        _ => "Replicate refused to create the prediction",
    }
}
