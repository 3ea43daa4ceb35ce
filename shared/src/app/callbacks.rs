//! Callbacks to callers (README, "Callbacks"): queueing an event, delivering one attempt of
//! it, and the callback signing secret (`GET /v1/webhooks/secret`).
//!
//! A `completed` event is queued by whoever ended the prediction (`App::finish`). Until it
//! is queued the ended record stays in the open index, so a crash between the two is
//! repaired by the reconciler, which queues it again (receivers see the same `webhook-id`).

use std::time::Duration;

use serde::Serialize;

use super::{ApiError, App};
use crate::domain::callbacks::{CallbackEvent, CallbackJob, CallbackStatus, retry_delay};
use crate::domain::record::PredictionRecord;
use crate::domain::signing::{ID_HEADER, SIGNATURE_HEADER, SigningSecret, TIMESTAMP_HEADER};
use crate::domain::tenancy::{Caller, TenantId};
use crate::ports::Ports;
use crate::ports::StoreError;
use crate::ports::accounts::AccountStore;
use crate::ports::callbacks::{CallbackOutcome, CallbackRequest, CallbackSender};
use crate::ports::jobs::JobQueue;
use crate::ports::records::RecordStore;

/// What became of one delivery attempt's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackDisposition {
    /// Delivered, or nothing (any more) to deliver: the job is done.
    Done,
    /// Try again after this long (the message stays hidden until then).
    RetryAfter(Duration),
    /// Given up on and moved to the dead-letter queue: the job is done here.
    DeadLettered,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretView {
    pub key: String,
}

impl<P: Ports> App<P> {
    /// The caller's tenant's callback signing secret (`GET /v1/webhooks/secret`), made on
    /// first use.
    pub async fn callback_secret(&self, caller: &Caller) -> Result<SecretView, ApiError> {
        let key = self.tenant_secret_text(&caller.tenant).await?;
        Ok(SecretView { key })
    }

    async fn tenant_secret_text(&self, tenant: &TenantId) -> Result<String, StoreError> {
        /// Most secrets one process keeps (a few KB).
        const MAX_CACHED: usize = 10_000;
        let cached = self
            .callback_secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tenant)
            .cloned();
        if let Some(secret) = cached {
            return Ok(secret);
        }
        let secret = self
            .records
            .callback_secret(tenant, &SigningSecret::generate().to_text())
            .await?;
        let mut cache = self
            .callback_secrets
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(tenant.clone(), secret.clone());
        Ok(secret)
    }

    /// Queues `event`'s callback for a record that asked for it, and notes it on the record.
    /// Failures are logged: a `completed` one is queued again by the reconciler.
    pub(crate) async fn queue_callback(&self, record: &PredictionRecord, event: CallbackEvent) {
        if !record
            .callback
            .as_ref()
            .is_some_and(|c| c.target.wants(event))
        {
            return;
        }
        let job = CallbackJob {
            prediction_id: record.id.clone(),
            event,
            queued_at: self.clock.now(),
        };
        if let Err(err) = self.queue.send_callback(&job).await {
            tracing::error!(prediction_id = %record.id, event = event.as_str(), error = %err, "could not queue the callback");
            return;
        }
        if let Err(err) = self.records.callback_queued(&record.id, event).await {
            tracing::warn!(prediction_id = %record.id, error = %err, "callback queued but not noted; it may be queued again");
        }
    }

    /// One delivery attempt (`attempt` counts from 1) of a queued event: the prediction as
    /// `GET` shows it now, signed under its tenant's secret.
    pub async fn deliver_callback(
        &self,
        job: &CallbackJob,
        attempt: u32,
    ) -> Result<CallbackDisposition, StoreError> {
        tracing::Span::current().record("prediction_id", job.prediction_id.as_str());
        let Some(record) = self.live_prediction(&job.prediction_id).await? else {
            tracing::warn!("callback for a prediction that is gone; dropped");
            return Ok(CallbackDisposition::Done);
        };
        let (Some(callback), Some(tenant)) = (&record.callback, &record.tenant) else {
            return Ok(CallbackDisposition::Done);
        };
        let Ok(url) = url::Url::parse(&callback.target.url) else {
            return self.give_up(job, "the callback URL is unreadable").await;
        };
        let view = self.view(&record, false).await?;
        let body = serde_json::to_vec(&view).unwrap_or_default();
        let secret = SigningSecret::parse(&self.tenant_secret_text(tenant).await?)
            .map_err(|e| StoreError::new("read callback secret", e.to_string()))?;
        let id = job.message_id();
        let timestamp = i64::try_from(self.clock.now().unix_seconds()).unwrap_or(i64::MAX);
        let signature = secret.sign(&id, timestamp, &body);
        let request = CallbackRequest {
            url,
            headers: vec![
                ("content-type", "application/json".to_owned()),
                (ID_HEADER, id),
                (TIMESTAMP_HEADER, timestamp.to_string()),
                (SIGNATURE_HEADER, signature),
            ],
            body: body.into(),
        };
        let outcome = self.callbacks.post(request).await;
        self.settle_attempt(job, attempt, outcome).await
    }

    async fn settle_attempt(
        &self,
        job: &CallbackJob,
        attempt: u32,
        outcome: CallbackOutcome,
    ) -> Result<CallbackDisposition, StoreError> {
        let why = match outcome {
            CallbackOutcome::Delivered { status } => {
                tracing::info!(
                    event = job.event.as_str(),
                    attempt,
                    status,
                    "callback delivered"
                );
                self.records
                    .callback_attempted(&job.prediction_id, job.event, CallbackStatus::Delivered)
                    .await?;
                return Ok(CallbackDisposition::Done);
            }
            // A destination that now resolves inside is not tried again.
            CallbackOutcome::Forbidden(reason) => return self.give_up(job, &reason).await,
            CallbackOutcome::Rejected { status } => format!("answered HTTP {status}"),
            CallbackOutcome::Unreachable(reason) => reason,
        };
        tracing::warn!(event = job.event.as_str(), attempt, reason = %why, "callback attempt failed");
        if job.window_closed(self.clock.now()) {
            return self.give_up(job, &why).await;
        }
        self.records
            .callback_attempted(&job.prediction_id, job.event, CallbackStatus::Pending)
            .await?;
        Ok(CallbackDisposition::RetryAfter(retry_delay(
            self.settings.callback_retry_base,
            attempt,
        )))
    }

    /// What to do with a job whose attempt could not even run (a storage error): try again
    /// after the backoff, until its day is over.
    pub async fn callback_not_run(&self, job: &CallbackJob, attempt: u32) -> CallbackDisposition {
        if !job.window_closed(self.clock.now()) {
            return CallbackDisposition::RetryAfter(retry_delay(
                self.settings.callback_retry_base,
                attempt,
            ));
        }
        match self.give_up(job, "attempts could not run for a day").await {
            Ok(disposition) => disposition,
            Err(_) => CallbackDisposition::RetryAfter(retry_delay(
                self.settings.callback_retry_base,
                attempt,
            )),
        }
    }

    /// Ends the event: dead-lettered (where the alarm sees it) and shown `failed`.
    async fn give_up(
        &self,
        job: &CallbackJob,
        reason: &str,
    ) -> Result<CallbackDisposition, StoreError> {
        self.queue.dead_letter_callback(job).await?;
        if let Err(err) = self
            .records
            .callback_attempted(&job.prediction_id, job.event, CallbackStatus::Failed)
            .await
        {
            tracing::warn!(error = %err, "dead-lettered callback not marked failed");
        }
        tracing::error!(
            event = job.event.as_str(),
            reason,
            "callback given up on; moved to the dead-letter queue"
        );
        Ok(CallbackDisposition::DeadLettered)
    }
}
