//! `POST /webhooks/replicate?id=<prediction id>&token=<record token>`: Replicate's webhook.
//! No API key: the signature is what authenticates it (checked by the use case).

use ::http::{HeaderMap, StatusCode};
use lambda_http::{Body, Request, Response};

use super::super::problem::json_response;
use crate::app::{Addressee, ApiError, App, UnverifiedWebhook};
use crate::domain::ids::PredictionId;
use crate::domain::signing::{SignatureError, SignatureHeaders};
use crate::ports::Ports;

pub async fn webhook<P: Ports>(app: &App<P>, request: Request) -> Response<Body> {
    let delivery = match signature_headers(request.headers()) {
        Ok(signature) => UnverifiedWebhook {
            signature,
            to: addressee(&request),
            body: request.body().as_ref(),
        },
        Err(err) => return ApiError::InvalidSignature(err.to_string()).into_response(),
    };
    match app.receive_webhook(delivery).await {
        Ok(receipt) => json_response(StatusCode::OK, &receipt),
        Err(err) => err.into_response(),
    }
}

/// The Standard Webhooks headers of a request (or a callback, for whoever receives one).
pub fn signature_headers(headers: &HeaderMap) -> Result<SignatureHeaders<'_>, SignatureError> {
    SignatureHeaders::from_headers(|name| headers.get(name).map(|v| v.as_bytes()))
}

/// The webhook URL's query: our prediction id and the record's token.
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
