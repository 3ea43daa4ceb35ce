//! `GET /v1/predictions/{id}`.

use lambda_http::{Body, Request, Response};

use super::super::auth::caller;
use super::super::path_id;
use super::super::problem::json_or_problem;
use crate::app::{ApiError, App, PredictionView};
use crate::ports::Ports;

pub async fn fetch<P: Ports>(app: &App<P>, request: Request) -> Response<Body> {
    json_or_problem(try_fetch(app, &request).await)
}

async fn try_fetch<P: Ports>(app: &App<P>, request: &Request) -> Result<PredictionView, ApiError> {
    let caller = caller(app, request).await?;
    app.fetch(&caller, path_id(request, "").as_deref()).await
}
