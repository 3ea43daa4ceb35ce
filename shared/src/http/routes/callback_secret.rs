//! `GET /v1/webhooks/secret`: the key the caller's callbacks are signed with (the public
//! path says "webhooks", as the contract has it; inside, they are callbacks).

use lambda_http::{Body, Request, Response};

use super::super::auth::caller;
use super::super::problem::json_or_problem;
use crate::app::{ApiError, App, SecretView};
use crate::ports::Ports;

pub async fn callback_secret<P: Ports>(app: &App<P>, request: Request) -> Response<Body> {
    json_or_problem(try_callback_secret(app, &request).await)
}

async fn try_callback_secret<P: Ports>(
    app: &App<P>,
    request: &Request,
) -> Result<SecretView, ApiError> {
    let caller = caller(app, request).await?;
    app.callback_secret(&caller).await
}
