//! A webhook from Replicate (`POST /webhooks/replicate?id=<prediction id>&token=<record
//! token>`): check the cheap things, verify the signature, then apply the delivered state to
//! the one record the URL names, only if the URL's token is that record's (a delivery signed
//! for one prediction cannot be replayed onto another) and the body's model and version are
//! the record's.

use serde::Serialize;
use subtle::ConstantTimeEq;

use super::sync::{Copy, SyncOutcome};
use super::{ApiError, App};
use crate::domain::ids::PredictionId;
use crate::domain::record::PredictionRecord;
use crate::domain::replicate::Prediction;
use crate::domain::signing::{DEFAULT_TOLERANCE, SignatureHeaders};
use crate::ports::Ports;

/// What a webhook delivery was answered with (always 200, so Replicate stops retrying it,
/// unless it could not be stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    pub result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

fn receipt(result: &'static str, reason: Option<&'static str>) -> Receipt {
    crate::telemetry::metrics::record(
        crate::telemetry::metrics::Metric::count("WebhookDeliveries").by("Outcome", result),
    );
    Receipt { result, reason }
}

/// Whom a webhook URL addresses: our prediction id and the record's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addressee {
    pub id: PredictionId,
    pub token: Option<String>,
}

/// A webhook delivery as it arrived: its signature headers (present, not yet checked), whom
/// its URL addresses (`None`: no prediction id), and its body.
pub struct UnverifiedWebhook<'a> {
    pub signature: SignatureHeaders<'a>,
    pub to: Option<Addressee>,
    pub body: &'a [u8],
}

/// Whether a verified delivery belongs to `record`: the URL's token is the record's (in
/// constant time), or, for a record without one, the delivery is of its known prediction.
fn belongs_to(record: &PredictionRecord, token: Option<&str>, remote: &Prediction) -> bool {
    let addressed = match (&record.webhook_token, token) {
        (Some(ours), Some(given)) => bool::from(ours.as_bytes().ct_eq(given.as_bytes())),
        (Some(_), None) => false,
        (None, _) => record.replicate_id.as_deref() == Some(remote.id.as_str()),
    };
    // Replicate's schema does not promise `model` in every body; the token is the binding,
    // the model and version only a check when present.
    let same_model = remote.model.is_empty() || remote.model == record.model;
    addressed && same_model && remote.version == record.version
}

impl<P: Ports> App<P> {
    /// Checks a webhook delivery (timestamp, then the signature) and applies it to the one
    /// record it addresses: cheap checks first, so an unsigned flood costs nothing upstream.
    pub async fn receive_webhook(
        &self,
        delivery: UnverifiedWebhook<'_>,
    ) -> Result<Receipt, ApiError> {
        let UnverifiedWebhook {
            signature: headers,
            to,
            body,
        } = delivery;
        headers
            .fresh_timestamp(self.clock.system_time(), DEFAULT_TOLERANCE)
            .map_err(|e| ApiError::InvalidSignature(e.to_string()))?;
        let Some(to) = to else {
            tracing::warn!("webhook without a prediction id; ignored");
            return Ok(receipt(
                "ignored",
                Some("no prediction id in the webhook URL"),
            ));
        };
        let verifier = self
            .webhook_verifier()
            .await
            .ok_or(ApiError::StorageFailed)?;
        let delivery = verifier
            .verify(headers, body, self.clock.system_time())
            .map_err(|e| {
                tracing::warn!(error = %e, "webhook refused");
                ApiError::InvalidSignature(e.to_string())
            })?;
        let remote: Prediction = serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("webhook body is not a prediction: {e}")))?;
        tracing::Span::current().record("prediction_id", to.id.as_str());
        let Some(record) = self.live_prediction(&to.id).await? else {
            tracing::warn!(prediction_id = %to.id, "webhook for an unknown prediction; ignored");
            return Ok(receipt("ignored", Some("unknown prediction")));
        };
        if !belongs_to(&record, to.token.as_deref(), &remote) {
            tracing::warn!(prediction_id = %to.id, replicate_id = %remote.id, webhook_id = %delivery.id, "signed webhook not addressed to this record; ignored");
            return Ok(receipt(
                "ignored",
                Some("not a delivery for this prediction"),
            ));
        }
        tracing::info!(prediction_id = %to.id, replicate_id = %remote.id, status = %remote.status, webhook_id = %delivery.id, "webhook received");
        match self.apply_remote(&record, &remote, Copy::Queue).await {
            Ok(SyncOutcome::Applied(_)) => Ok(receipt("applied", None)),
            Ok(SyncOutcome::CopyQueued) => Ok(receipt("queued", None)),
            Ok(SyncOutcome::Ignored(reason)) => Ok(receipt("ignored", Some(reason))),
            Err(err) => {
                tracing::error!(prediction_id = %to.id, error = %err, "webhook could not be persisted; Replicate will retry");
                Err(ApiError::StorageFailed)
            }
        }
    }
}
