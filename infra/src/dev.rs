//! The dev server: plain HTTP requests in, `lambda_http` requests to the shared handlers,
//! responses back out. The routes behave as they do behind API Gateway.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, header};
use imagegen_shared::app::{ApiError, App, MAX_BODY_BYTES, Ports, request_id};
use lambda_http::Body;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::http_server::{HttpRequest, HttpResponse, Server, serve};

fn too_large() -> HttpResponse {
    from_lambda(
        ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        }
        .into_response(),
    )
}

/// The request as `lambda_http` would build it from an API Gateway event: same method, path,
/// query, headers and body; `x-forwarded-proto` as API Gateway sets it; a request id.
pub fn to_lambda(request: HttpRequest) -> lambda_http::Request {
    let (mut parts, body) = request.into_parts();
    parts
        .headers
        .entry("x-forwarded-proto")
        .or_insert(HeaderValue::from_static("http"));
    if !parts.headers.contains_key("x-request-id")
        && let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
    {
        parts.headers.insert("x-request-id", id);
    }
    let body = if body.is_empty() {
        Body::Empty
    } else {
        Body::Binary(body.to_vec())
    };
    http::Request::from_parts(parts, body)
}

pub fn from_lambda(response: http::Response<Body>) -> HttpResponse {
    let (parts, body) = response.into_parts();
    let bytes = match body {
        Body::Empty => Bytes::new(),
        Body::Text(text) => Bytes::from(text),
        Body::Binary(data) => Bytes::from(data),
        _ => Bytes::new(),
    };
    let mut response = http::Response::from_parts(parts, bytes);
    response.headers_mut().remove(header::CONTENT_LENGTH);
    response
}

/// Serves the three routes of `app` on `listener`.
pub fn serve_app<P: Ports>(listener: TcpListener, app: Arc<App<P>>) -> Server {
    serve(listener, MAX_BODY_BYTES, too_large, move |request| {
        let app = app.clone();
        async move {
            let request = to_lambda(request);
            let span = tracing::info_span!(
                "request",
                request_id = %request_id(&request),
                method = %request.method(),
                path = %request.uri().path(),
                prediction_id = tracing::field::Empty
            );
            let response = app.route(request).instrument(span).await;
            from_lambda(response)
        }
    })
}
