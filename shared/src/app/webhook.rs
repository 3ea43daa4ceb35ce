//! `POST /webhooks/replicate?id=<prediction id>`: verify, then apply the delivered state.

use http::StatusCode;
use lambda_http::{Body, Request, Response};
use serde::Serialize;

use super::Ports;
use super::problem::json_response;
use super::sync::SyncOutcome;
use super::{ApiError, App};
use crate::ports::RecordStore;
use crate::record::PredictionId;
use crate::replicate::Prediction;
use crate::webhook::SignatureHeaders;

#[derive(Serialize)]
struct Receipt {
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
}

fn receipt(result: &'static str, reason: Option<&'static str>) -> Response<Body> {
    json_response(StatusCode::OK, &Receipt { result, reason })
}

/// Our prediction id, from the webhook URL's `id` query parameter.
fn prediction_id_param(request: &Request) -> Option<PredictionId> {
    let query = request.uri().query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "id")
        .and_then(|(_, value)| PredictionId::parse(&value).ok())
}

impl<P: Ports> App<P> {
    pub async fn webhook(&self, request: Request) -> Response<Body> {
        match self.try_webhook(&request).await {
            Ok(response) => response,
            Err(err) => err.into_response(),
        }
    }

    async fn try_webhook(&self, request: &Request) -> Result<Response<Body>, ApiError> {
        let verifier = self.webhook_verifier().await.map_err(|err| {
            tracing::error!(error = %err, "webhook signing secret unavailable");
            ApiError::StorageFailed
        })?;
        let body = request.body().as_ref();
        let headers = SignatureHeaders::from_header_map(request.headers())
            .map_err(|e| ApiError::Unauthorized(e.to_string()))?;
        let delivery = verifier
            .verify(headers, body, self.clock.now())
            .map_err(|e| {
                tracing::warn!(error = %e, "webhook refused");
                ApiError::Unauthorized(e.to_string())
            })?;
        let remote: Prediction = serde_json::from_slice(body)
            .map_err(|e| ApiError::BadRequest(format!("webhook body is not a prediction: {e}")))?;
        let Some(id) = prediction_id_param(request) else {
            tracing::warn!(replicate_id = %remote.id, webhook_id = %delivery.id, "webhook without a prediction id; ignored");
            return Ok(receipt(
                "ignored",
                Some("no prediction id in the webhook URL"),
            ));
        };
        tracing::Span::current().record("prediction_id", id.as_str());
        let Some(record) = self.records.get_prediction(&id).await? else {
            tracing::warn!(prediction_id = %id, "webhook for an unknown prediction; ignored");
            return Ok(receipt("ignored", Some("unknown prediction")));
        };
        tracing::info!(prediction_id = %id, replicate_id = %remote.id, status = %remote.status, webhook_id = %delivery.id, "webhook received");
        match self.apply_remote(&record, &remote).await {
            Ok(SyncOutcome::Applied(_)) => Ok(receipt("applied", None)),
            Ok(SyncOutcome::Ignored(reason)) => Ok(receipt("ignored", Some(reason))),
            Err(err) => {
                tracing::error!(prediction_id = %id, error = %err, "webhook could not be persisted; Replicate will retry");
                Err(ApiError::StorageFailed)
            }
        }
    }
}
