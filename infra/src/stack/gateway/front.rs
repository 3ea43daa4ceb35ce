//! The local API Gateway: each request goes to the function `template.yaml` routes it to,
//! as an HTTP API v2 event through the function's Runtime API; a request no route of the
//! template matches gets API Gateway's 404, whatever the handlers would make of it.

use std::sync::Arc;

use bytes::Bytes;
use http::StatusCode;
use imagegen_shared::app::ApiError;
use imagegen_shared::http::MAX_BODY_BYTES;
use tokio::net::TcpListener;

use super::LocalLambdas;
use super::events;
use crate::http_server::{HttpResponse, Server, serve};
use crate::stack::from_lambda;

fn gateway_message(status: StatusCode, message: &str) -> HttpResponse {
    let mut response = HttpResponse::new(Bytes::from(
        serde_json::json!({ "message": message }).to_string(),
    ));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn too_large() -> HttpResponse {
    from_lambda(
        ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        }
        .into_response(),
    )
}

/// Serves the template's HTTP routes on `listener`.
pub fn serve_gateway(listener: TcpListener, lambdas: Arc<LocalLambdas>) -> Server {
    serve(listener, MAX_BODY_BYTES, too_large, move |request| {
        let lambdas = lambdas.clone();
        async move {
            let method = request.method().as_str().to_owned();
            let path = request.uri().path().to_owned();
            let Some((function, route)) = lambdas.template.route_of(&method, &path) else {
                return gateway_message(StatusCode::NOT_FOUND, "Not Found");
            };
            let (name, route) = (function.name.clone(), route.to_owned());
            let Some(function) = lambdas.function(&name) else {
                return gateway_message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
            };
            let event = events::http_api_v2(&request, &method, &route, "127.0.0.1");
            // Lambda's limit is on the whole event (a base64 body grows by a third).
            if event.len() > MAX_BODY_BYTES {
                return too_large();
            }
            match function.invoke(event).await {
                Ok(payload) => events::http_response(&payload).unwrap_or_else(|| {
                    gateway_message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
                }),
                Err(super::runtime::InvokeError::TimedOut) => {
                    gateway_message(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
                }
                Err(err) => {
                    tracing::warn!(function = %name, error = %err, "invocation failed");
                    gateway_message(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error")
                }
            }
        }
    })
}
