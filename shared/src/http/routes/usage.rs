//! `GET /v1/usage`.

use lambda_http::{Body, Request, Response};

use super::super::auth::caller;
use super::super::problem::json_or_problem;
use crate::app::{ApiError, App, UsageView};
use crate::ports::Ports;

pub async fn usage<P: Ports>(app: &App<P>, request: Request) -> Response<Body> {
    json_or_problem(try_usage(app, &request).await)
}

async fn try_usage<P: Ports>(app: &App<P>, request: &Request) -> Result<UsageView, ApiError> {
    let caller = caller(app, request).await?;
    app.usage(&caller).await
}
