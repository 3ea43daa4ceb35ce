//! `POST /webhooks/replicate?id=<prediction id>&token=<record token>`: check the cheap
//! things, verify the signature, then apply the delivered state to the one record the URL
//! names, only if the URL's token is that record's (a delivery signed for one prediction
//! cannot be replayed onto another) and the body's model and version are the record's.

use http::StatusCode;
use lambda_http::{Body, Request, Response};
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::problem::json_response;
use super::sync::{Copy, SyncOutcome};
use super::{ApiError, App};
use crate::domain::ids::PredictionId;
use crate::domain::record::PredictionRecord;
use crate::domain::replicate::Prediction;
use crate::domain::signing::{DEFAULT_TOLERANCE, SignatureHeaders};
use crate::ports::Ports;

#[derive(Serialize)]
struct Receipt {
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

fn receipt(result: &'static str, reason: Option<&'static str>) -> Response<Body> {
    crate::telemetry::metrics::record(
        crate::telemetry::metrics::Metric::count("WebhookDeliveries").by("Outcome", result),
    );
    json_response(StatusCode::OK, &Receipt { result, reason })
}

/// The webhook URL's query: our prediction id and the record's token.
struct Addressee {
    id: PredictionId,
    token: Option<String>,
}

fn addressee(request: &Request) -> Option<Addressee> {
    let query = request.uri().query()?;
    let mut id = None;
    let mut token = None;
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "id" => id = PredictionId::parse(&value).ok(),
            "token" if value.len() <= 64 => token = Some(value.into_owned()),
            _ => {}
        }
    }
    Some(Addressee { id: id?, token })
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
    pub async fn webhook(&self, request: Request) -> Response<Body> {
        match self.try_webhook(&request).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        }
    }

    async fn try_webhook(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        let body = request.body().as_ref();
        let headers = SignatureHeaders::from_header_map(request.headers())
            .map_err(|e| ApiError::InvalidSignature(e.to_string()))?;
        headers
            .fresh_timestamp(self.clock.system_time(), DEFAULT_TOLERANCE)
            .map_err(|e| ApiError::InvalidSignature(e.to_string()))?;
        let Some(to) = addressee(request) else {
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
