//! `POST /v1/predictions/{id}/cancel`.

use lambda_http::{Body, Request, Response};

use super::super::auth::caller;
use super::super::path_id;
use super::super::problem::json_or_problem;
use crate::app::{ApiError, App, PredictionView};
use crate::ports::Ports;

pub async fn cancel<P: Ports>(app: &App<P>, request: Request) -> Response<Body> {
    json_or_problem(try_cancel(app, &request).await)
}

async fn try_cancel<P: Ports>(app: &App<P>, request: &Request) -> Result<PredictionView, ApiError> {
    let caller = caller(app, request).await?;
    app.cancel(&caller, path_id(request, "/cancel").as_deref())
        .await
}
