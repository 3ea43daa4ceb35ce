//! Webhooks: signed like Replicate's, sent to the prediction's webhook URL for the events it
//! asked for, completed ones retried, and lost, duplicated, reordered or delayed by its faults.

use std::sync::Arc;
use std::time::Duration;

use http::header;
use imagegen_shared::domain::signing::{ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use imagegen_shared::domain::time::Timestamp;

use super::faults::Markers;
use super::lifecycle::{SimPrediction, new_id};
use super::{State, lock};

impl State {
    /// The start webhook, unless it is lost or filtered out. It goes when the prediction
    /// starts (`after_completed` false) or, when `reorder` holds it back, after the
    /// completed one (`after_completed` true).
    pub(super) async fn deliver_start(
        self: &Arc<Self>,
        started: &SimPrediction,
        markers: &Markers,
        after_completed: bool,
    ) {
        if !markers.no_webhook && markers.reorder == after_completed && started.wants("start") {
            self.clone().deliver(started.clone(), false).await;
        }
    }

    /// The completed webhook, unless it is lost or filtered out; twice when `duplicate`.
    pub(super) async fn deliver_completed(
        self: &Arc<Self>,
        done: SimPrediction,
        markers: &Markers,
    ) {
        if markers.no_webhook || !done.wants("completed") {
            return;
        }
        self.clone().deliver(done.clone(), true).await;
        if markers.duplicate {
            self.clone().deliver(done, true).await;
        }
    }

    /// Posts a signed webhook. Completed events are retried on failure, like Replicate's.
    pub(super) async fn deliver(self: Arc<Self>, p: SimPrediction, completed: bool) {
        let Some(url) = p.webhook.clone() else { return };
        if p.behaviour.delay_webhooks {
            let delay = lock(&self.faults).webhook_delay_ms;
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let body = self.to_json(&p).to_string();
        let message_id = format!("msg_{}", new_id());
        let attempts = if completed {
            self.config.webhook_attempts.max(1)
        } else {
            1
        };
        for attempt in 0..attempts {
            let timestamp = i64::try_from(Timestamp::now().unix_seconds()).unwrap_or(i64::MAX);
            let result = self
                .http
                .post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .header(ID_HEADER, &message_id)
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(
                    SIGNATURE_HEADER,
                    self.secret.sign(&message_id, timestamp, body.as_bytes()),
                )
                .body(body.clone())
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {
                    lock(&self.stats).webhooks_delivered += 1;
                    return;
                }
                Ok(response) => {
                    tracing::debug!(status = %response.status(), attempt, "webhook refused")
                }
                Err(err) => tracing::debug!(error = %err, attempt, "webhook not delivered"),
            }
            lock(&self.stats).webhooks_failed += 1;
            tokio::time::sleep(self.config.webhook_retry_delay * 2u32.pow(attempt)).await;
        }
    }
}
