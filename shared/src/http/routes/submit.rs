//! `POST /v1/predictions`: checked in the order a client can rely on (the key, the rate,
//! the body, `Cancel-After`, the model and input, the callback and uploads, then the
//! `Idempotency-Key`), then started; answered at once, never after the model runs.

use ::http::{HeaderValue, StatusCode};
use lambda_http::{Body, Request, Response};

use super::super::auth::caller;
use super::super::body::parse_submit_body;
use super::super::headers::{
    REPLAYED_HEADER, cancel_after, idempotency_key, wants_no_cache, webhook_base,
};
use super::super::problem::json_response;
use crate::app::{ApiError, App, Submitted};
use crate::ports::Ports;

pub async fn submit<P: Ports>(app: &App<P>, request: Request) -> Response<Body> {
    match try_submit(app, &request).await {
        Ok(submitted) => {
            let status = if submitted.cached {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            let mut response = json_response(status, &submitted.view);
            if submitted.replayed {
                response
                    .headers_mut()
                    .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
            }
            response
        }
        Err(err) => err.into_response(),
    }
}

async fn try_submit<P: Ports>(app: &App<P>, request: &Request) -> Result<Submitted, ApiError> {
    let caller = caller(app, request).await?;
    app.admit_submit(&caller).await?;
    let body = parse_submit_body(request.body().as_ref())?;
    let headers = request.headers();
    let deadline = cancel_after(headers)?;
    let draft = app
        .prepare_submit(&caller, body, deadline, wants_no_cache(headers))
        .await?;
    let webhook_base = webhook_base(&app.settings, request)?;
    let key = idempotency_key(headers)?;
    app.submit(draft, webhook_base, key).await
}
