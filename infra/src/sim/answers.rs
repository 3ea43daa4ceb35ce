//! The simulator's HTTP answers: JSON, Replicate's problem details, and the HTML error page
//! a proxy in front of the API sends when the API's answer is lost.

use bytes::Bytes;
use http::{StatusCode, header};
use serde_json::{Value, json};

use crate::http_server::HttpResponse;

pub(super) fn too_large() -> HttpResponse {
    problem(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
}

pub(super) fn json(status: StatusCode, body: &Value) -> HttpResponse {
    let mut response = http::Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// What a proxy in front of the API answers when the API's answer is lost: an HTML page,
/// 502 or 504.
pub(super) fn gateway_error() -> HttpResponse {
    let status = if fastrand::bool() {
        StatusCode::BAD_GATEWAY
    } else {
        StatusCode::GATEWAY_TIMEOUT
    };
    let reason = status.canonical_reason().unwrap_or_default();
    let page = format!(
        "<html><head><title>{} {reason}</title></head><body><h1>{reason}</h1></body></html>",
        status.as_u16()
    );
    let mut response = http::Response::new(Bytes::from(page));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/html"),
    );
    response
}

pub(super) fn problem(status: StatusCode, detail: &str) -> HttpResponse {
    json(
        status,
        &json!({"title": status.canonical_reason(), "detail": detail, "status": status.as_u16()}),
    )
}
