//! `POST /v1/uploads`: a slot for one input image, and where to PUT it.

use ::http::StatusCode;
use lambda_http::{Body, Request, Response};

use super::super::auth::caller;
use super::super::problem::json_response;
use crate::app::{ApiError, App, UploadSlot};
use crate::domain::uploads::{UploadRequest, UploadRequestError};
use crate::ports::Ports;

pub async fn create_upload<P: Ports>(app: &App<P>, request: Request) -> Response<Body> {
    match try_create_upload(app, &request).await {
        Ok(slot) => json_response(StatusCode::CREATED, &slot),
        Err(err) => err.into_response(),
    }
}

async fn try_create_upload<P: Ports>(
    app: &App<P>,
    request: &Request,
) -> Result<UploadSlot, ApiError> {
    let caller = caller(app, request).await?;
    // Slots cost a write each: limited at the caller's rate, counted apart from submits.
    app.admit_upload(&caller).await?;
    let wanted = UploadRequest::parse(request.body().as_ref()).map_err(|e| match e {
        UploadRequestError::Malformed(reason) => ApiError::BadRequest(reason),
        UploadRequestError::Invalid(errors) => ApiError::InvalidInput(errors),
    })?;
    app.create_upload(&caller, wanted).await
}
