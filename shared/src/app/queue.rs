//! Bursts (README, "Bursts"): a create over `REPLICATE_CREATES_PER_MINUTE` is given a later
//! slot by the pacer (`pacing`), its record says `queued`, and a create job waits on SQS,
//! invisible until the slot. The drainer (`drain_create`, fed by that queue) claims the
//! record with a conditional write, sends the create, and the prediction goes on like any
//! other. A throttled create goes back to waiting; a cancel ends a queued prediction
//! without calling Replicate; the reconciler re-queues one whose job was lost.

use std::time::Duration;

use serde_json::{Map, Value};

use super::App;
use super::inputs::{REFERENCE_SCHEME, input_key, with_file_references};
use super::sync::Copy;
use crate::domain::callbacks::CallbackEvent;
use crate::domain::cost::Billed;
use crate::domain::jobs::CreateJob;
use crate::domain::pacing::CreateSlot;
use crate::domain::record::{Advance, PredictionRecord, QueueState};
use crate::domain::replicate::{
    Deadline, ModelRef, PredictionStatus, ReplicateError, WebhookEvent, WebhookTarget,
};
use crate::domain::time::Timestamp;
use crate::ports::Ports;
use crate::ports::StoreError;
use crate::ports::jobs::JobQueue;
use crate::ports::objects::ObjectStore;
use crate::ports::records::RecordStore;
use crate::ports::replicate::ReplicateApi;
use crate::telemetry::metrics::{self, Metric};

/// A throttle that names no wait is retried after this.
const DEFAULT_THROTTLE_WAIT: Duration = Duration::from_secs(5);
/// A job that could not run (a store error) comes back after this.
const NOT_RUN_WAIT: Duration = Duration::from_secs(10);
/// A queued create Replicate keeps refusing for a reason that may pass is given up this long
/// after submit (Replicate keeps outputs for an hour).
const GIVE_UP_AFTER: Duration = Duration::from_secs(3600);
/// A job received this much before its slot is hidden again until then.
const EARLY_TOLERANCE: Duration = Duration::from_millis(500);

/// How sending one create went.
pub(crate) enum Sent {
    /// Replicate created it; the record (tied, if the tie was stored) as it is now.
    Created(PredictionRecord),
    /// It may or may not exist: the record stays unconfirmed, for lost-create recovery.
    Unknown(PredictionRecord),
    /// Replicate throttled past the retry budget: certainly nothing was created.
    Throttled(Duration),
    /// Replicate certainly created nothing, for another reason.
    Refused(ReplicateError),
}

/// What became of one create job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateDisposition {
    /// Done with (created, ended, or not this job's to send).
    Done,
    /// To be tried again after this long.
    RetryAfter(Duration),
}

impl<P: Ports> App<P> {
    /// Sends the record's create with a webhook to its record, and ties the record to what
    /// Replicate created.
    pub(crate) async fn send_create(
        &self,
        record: &PredictionRecord,
        sent_input: &Map<String, Value>,
        webhook_base: &str,
        deadline: Deadline,
    ) -> Sent {
        let model = match model_of(record) {
            Ok(model) => model,
            Err(reason) => {
                tracing::error!(prediction_id = %record.id, %reason, "stored model is not a model reference");
                return Sent::Refused(ReplicateError::InvalidResponse {
                    status: 0,
                    message: "the stored model is not a model reference".to_owned(),
                });
            }
        };
        let webhook = WebhookTarget {
            url: format!(
                "{webhook_base}/webhooks/replicate?id={}&token={}",
                record.id,
                record.webhook_token.as_deref().unwrap_or_default()
            ),
            // Only `completed`: a `start` delivery would cost an API request, an invocation
            // and a record write per prediction (`make cost`) and saves nothing; fetches
            // show `processing` by syncing, and only `completed` is retried by Replicate.
            events: vec![WebhookEvent::Completed],
        };
        let webhook = self.settings.send_webhooks.then_some(&webhook);
        match self
            .replicate
            .create_prediction(&model, sent_input, webhook, deadline)
            .await
        {
            Ok(remote) => Sent::Created(self.tie_created(record.clone(), &remote).await),
            Err(err @ ReplicateError::CreateOutcomeUnknown { .. }) => {
                // It may exist at Replicate: keep every claim pointing at the record until
                // recovery finds the prediction or gives up. Never create a second one.
                tracing::error!(prediction_id = %record.id, error = %err, "prediction create outcome unknown; recovery will find out");
                Sent::Unknown(record.clone())
            }
            Err(ReplicateError::Throttled { retry_after, .. }) => {
                metrics::record(Metric::count("UpstreamThrottled"));
                Sent::Throttled(retry_after.unwrap_or(DEFAULT_THROTTLE_WAIT))
            }
            Err(err) => Sent::Refused(err),
        }
    }

    /// Records what Replicate created. It exists (and is billed) now: whatever fails here,
    /// the answer is the record, never an error that would free the keys for a second create.
    async fn tie_created(
        &self,
        mut record: PredictionRecord,
        remote: &crate::domain::replicate::Prediction,
    ) -> PredictionRecord {
        match self
            .records
            .attach_replicate_id(&record.id, &remote.id, record.expires_at)
            .await
        {
            Ok(true) => record.replicate_id = Some(remote.id.clone()),
            Ok(false) => {
                tracing::warn!(prediction_id = %record.id, replicate_id = %remote.id, "record already names another Replicate prediction");
            }
            Err(err) => {
                tracing::error!(prediction_id = %record.id, replicate_id = %remote.id, error = %err, "could not record Replicate's id; its webhook or recovery will");
            }
        }
        tracing::info!(prediction_id = %record.id, replicate_id = %remote.id, model = %record.model, "prediction created");
        metrics::record(Metric::count("PredictionsCreated").by("Model", &record.alias));
        // A create answered with a later state is recorded now (a terminal answer is left to
        // the webhook or a sync, which queue the output copy).
        if remote.status == PredictionStatus::Processing {
            record = self.apply_created_state(record, remote).await;
        }
        self.queue_callback(&record, CallbackEvent::Start).await;
        record
    }

    /// A create answered with a later state: record it right away.
    async fn apply_created_state(
        &self,
        record: PredictionRecord,
        remote: &crate::domain::replicate::Prediction,
    ) -> PredictionRecord {
        if let Err(err) = self.apply_remote(&record, remote, Copy::Queue).await {
            tracing::warn!(prediction_id = %record.id, error = %err, "could not apply the create answer's state");
        }
        match self.reread(record.clone()).await {
            Ok(fresh) => fresh,
            Err(_) => record,
        }
    }

    /// Queues the record's create job, invisible until `slot_at`. A failed send is logged:
    /// the record says `queued`, and the reconciler queues it again.
    pub(crate) async fn send_to_create_queue(&self, record: &PredictionRecord, slot_at: Timestamp) {
        let job = CreateJob {
            prediction_id: record.id.clone(),
        };
        let delay = slot_at.since(self.clock.now());
        if let Err(err) = self.queue.send_create(&job, delay).await {
            tracing::warn!(prediction_id = %record.id, error = %err, "could not queue the create; the reconciler will");
        }
    }

    /// A submit's create Replicate throttled past the retry budget: the record waits in
    /// the create queue for `retry_after`. `None` if it could not be queued.
    pub(crate) async fn queue_throttled(
        &self,
        record: &PredictionRecord,
        webhook_base: &str,
        deadline: Deadline,
        retry_after: Duration,
    ) -> Option<PredictionRecord> {
        let slot_at = self.next_slot(retry_after).await?;
        let queue = QueueState {
            slot_at,
            webhook_base: webhook_base.to_owned(),
            deadline,
            sent_at: None,
        };
        match self.records.mark_queued(&record.id, &queue).await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(err) => {
                tracing::warn!(prediction_id = %record.id, error = %err, "could not queue a throttled create");
                return None;
            }
        }
        let queued = PredictionRecord {
            queue: Some(queue),
            ..record.clone()
        };
        self.send_to_create_queue(&queued, slot_at).await;
        metrics::record(Metric::count("PredictionsQueued").by("Model", &record.alias));
        Some(queued)
    }

    /// Runs one create job: the drainer's work.
    pub async fn drain_create(&self, job: &CreateJob) -> Result<CreateDisposition, StoreError> {
        let now = self.clock.now();
        let Some(record) = self.records.get_prediction(&job.prediction_id).await? else {
            return Ok(CreateDisposition::Done);
        };
        // Ended (canceled, say), created, or already sent by another drainer.
        if record.is_expired(now) || !record.is_queued() {
            return Ok(CreateDisposition::Done);
        }
        let Some(queue) = record.queue.clone() else {
            return Ok(CreateDisposition::Done);
        };
        if record.cancel_requested_at.is_some() {
            self.end_queued_canceled(&record).await?;
            return Ok(CreateDisposition::Done);
        }
        if queue.slot_at > now.plus(EARLY_TOLERANCE) {
            return Ok(CreateDisposition::RetryAfter(queue.slot_at.since(now)));
        }
        if !self.records.claim_create(&record.id, now).await? {
            // Canceled or sent meanwhile: whoever did that owns it now.
            return Ok(CreateDisposition::Done);
        }
        let waited = now.since(record.created_at);
        metrics::record(
            Metric::value(
                "QueueWait",
                waited.as_secs_f64() * 1000.0,
                metrics::Unit::Milliseconds,
            )
            .by("Queue", "create"),
        );
        let sent_input = match self.sendable_input(&record).await {
            Ok(input) => input,
            Err(err) => {
                tracing::warn!(prediction_id = %record.id, error = %err, "could not presign a queued create's inputs; retried");
                let slot_at = now.plus(NOT_RUN_WAIT);
                self.records
                    .release_create(&record.id, now, slot_at)
                    .await?;
                return Ok(CreateDisposition::RetryAfter(NOT_RUN_WAIT));
            }
        };
        let claimed = PredictionRecord {
            queue: Some(QueueState {
                sent_at: Some(now),
                ..queue.clone()
            }),
            ..record
        };
        match self
            .send_create(&claimed, &sent_input, &queue.webhook_base, queue.deadline)
            .await
        {
            Sent::Created(created) => {
                self.cancel_if_asked_meanwhile(created).await;
                Ok(CreateDisposition::Done)
            }
            Sent::Unknown(_) => Ok(CreateDisposition::Done),
            Sent::Throttled(wait) => self.retry_later(&claimed, now, wait).await,
            // Certainly nothing created, and likely to pass: it waits like a throttled one,
            // for as long as its outputs could still be kept.
            Sent::Refused(err)
                if err.retry_later().is_some() && now < claimed.created_at.plus(GIVE_UP_AFTER) =>
            {
                tracing::warn!(prediction_id = %claimed.id, error = %err, "a queued create could not be made; retried");
                self.retry_later(&claimed, now, DEFAULT_THROTTLE_WAIT).await
            }
            Sent::Refused(err) => {
                tracing::warn!(prediction_id = %claimed.id, error = %err, "Replicate refused a queued create");
                self.end_record(
                    &claimed,
                    "Replicate refused to create the prediction",
                    Billed::NotCreated,
                )
                .await?;
                Ok(CreateDisposition::Done)
            }
        }
    }

    /// Gives a create Replicate certainly did not make back to the queue, with a new slot
    /// from the pacer no sooner than `wait` (so retries never add to the paced rate).
    async fn retry_later(
        &self,
        claimed: &PredictionRecord,
        sent_at: Timestamp,
        wait: Duration,
    ) -> Result<CreateDisposition, StoreError> {
        let slot_at = self
            .next_slot(wait)
            .await
            .unwrap_or(self.clock.now().plus(wait));
        self.records
            .release_create(&claimed.id, sent_at, slot_at)
            .await?;
        Ok(CreateDisposition::RetryAfter(
            slot_at.since(self.clock.now()),
        ))
    }

    /// A slot from the pacer no sooner than `wait` from now; `None` when the queue is full.
    async fn next_slot(&self, wait: Duration) -> Option<Timestamp> {
        let now = self.clock.now();
        let earliest = now.plus(wait);
        match self
            .records
            .reserve_create_slot(&self.settings.create_pace, now)
            .await
        {
            Ok(CreateSlot::Now) => Some(earliest),
            Ok(CreateSlot::At(slot_at)) => Some(slot_at.max(earliest)),
            Ok(CreateSlot::Full { .. }) => None,
            Err(err) => {
                tracing::warn!(error = %err, "could not take a create slot; waiting Replicate's time");
                Some(earliest)
            }
        }
    }

    /// A cancel recorded between the claim and the tie found nothing to cancel at
    /// Replicate yet: cancelled now.
    async fn cancel_if_asked_meanwhile(&self, created: PredictionRecord) {
        let Ok(fresh) = self.reread(created).await else {
            return;
        };
        if fresh.cancel_requested_at.is_none() || fresh.status.is_terminal() {
            return;
        }
        let Some(replicate_id) = fresh.replicate_id.clone() else {
            return;
        };
        match self.replicate.cancel_prediction(&replicate_id).await {
            Ok(remote) => {
                if let Err(err) = self.apply_remote(&fresh, &remote, Copy::QueueOnce).await {
                    tracing::warn!(prediction_id = %fresh.id, error = %err, "could not apply the cancel answer");
                }
            }
            Err(err) => {
                tracing::warn!(prediction_id = %fresh.id, error = %err, "could not cancel as asked; the reconciler syncs it");
            }
        }
    }

    /// Ends a queued prediction whose cancel was asked for: it was never created, so it
    /// ends `canceled` at no cost, without calling Replicate.
    pub(crate) async fn end_queued_canceled(
        &self,
        record: &PredictionRecord,
    ) -> Result<bool, StoreError> {
        let advance = Advance {
            status: PredictionStatus::Canceled,
            error: None,
            ..Advance::failed("", self.clock.now())
        };
        self.finish(record, advance, Billed::NotCreated).await
    }

    /// The input to send for a record: each stored image (`inline://`, or an upload by its
    /// content) as a fresh presigned URL of its object.
    async fn sendable_input(
        &self,
        record: &PredictionRecord,
    ) -> Result<Map<String, Value>, StoreError> {
        let mut sent = record.input.clone();
        let referenced = with_file_references(&record.input, &record.input_files);
        for (field, value) in referenced {
            let Some(sha256) = value
                .as_str()
                .and_then(|v| v.strip_prefix(REFERENCE_SCHEME))
            else {
                continue;
            };
            let url = self
                .objects
                .presign_get(&input_key(sha256), super::inputs::INPUT_URL_TTL)
                .await?;
            sent.insert(field, Value::String(url));
        }
        Ok(sent)
    }
}

fn model_of(record: &PredictionRecord) -> Result<ModelRef, String> {
    let text = match &record.version {
        Some(version) => format!("{}:{version}", record.model),
        None => record.model.clone(),
    };
    ModelRef::parse(&text).map_err(|e| e.to_string())
}
