//! The HTTP surface: an API Gateway HTTP API (v2) request in, a use-case call, a response
//! out. Each route has a file under `routes`; what they share is here (the routers of the
//! functions that serve several routes), in `auth` (the API key), `headers`, `body` (the
//! submit body, bounded) and `problem` (every error as problem+json).
//!
//! Architecture invariant: nothing here decides anything a use case decides; a route parses,
//! calls one use case, and renders its answer (ARCHITECTURE.md, "Layers").

pub mod auth;
pub mod body;
pub mod headers;
pub mod problem;
mod routes;
#[cfg(test)]
mod tests;

use ::http::{HeaderValue, Method, header};
use lambda_http::{Body, Request, RequestExt, Response};

use crate::app::{ApiError, App};
use crate::ports::Ports;

pub use routes::webhook::{signature_headers, webhook};

/// The OpenAPI 3.1 document of this API (`shared/openapi.json`), served at
/// `GET /openapi.json` without a key.
pub const OPENAPI_DOCUMENT: &str = include_str!("../../openapi.json");

/// Lambda's own request payload limit; the local server enforces the same.
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// Dispatches by method and path: the local server's router. In AWS, API Gateway routes
/// each path to its own function, which calls its router directly.
pub async fn route<P: Ports>(app: &App<P>, request: Request) -> Response<Body> {
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let method = request.method().clone();
    match (&method, path.as_str()) {
        (&Method::POST, "/webhooks/replicate") => webhook(app, request).await,
        (&Method::POST, _) => write(app, request).await,
        (&Method::GET, _) => read(app, request).await,
        _ => no_route(&method, &path),
    }
}

/// The write routes, which one function serves: submit, cancel, and upload slots.
pub async fn write<P: Ports>(app: &App<P>, request: Request) -> Response<Body> {
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let route_key = route_key(&request);
    let cancel = match route_key.as_deref() {
        Some(key) if key != "$default" => key == "POST /v1/predictions/{id}/cancel",
        _ => path.starts_with("/v1/predictions/") && path.ends_with("/cancel"),
    };
    let uploads = match route_key.as_deref() {
        Some(key) if key != "$default" => key == "POST /v1/uploads",
        _ => path == "/v1/uploads",
    };
    if cancel {
        routes::cancel::cancel(app, request).await
    } else if uploads {
        routes::uploads::create_upload(app, request).await
    } else if path == "/v1/predictions" || route_key.is_some() {
        routes::submit::submit(app, request).await
    } else {
        no_route(request.method(), &path)
    }
}

/// The read routes, which one function serves: a prediction, the caller's predictions,
/// the caller's usage, the caller's callback signing secret, or the OpenAPI document.
/// Behind API Gateway the route key says which (the path may carry a custom domain's
/// base path); locally the path does.
pub async fn read<P: Ports>(app: &App<P>, request: Request) -> Response<Body> {
    let path = request.uri().path().trim_end_matches('/').to_owned();
    let route_key = route_key(&request);
    let route = match route_key.as_deref() {
        Some(key) if key != "$default" => key.trim_start_matches("GET ").to_owned(),
        _ => path.clone(),
    };
    if route == "/openapi.json" {
        openapi_document()
    } else if route == "/v1/usage" {
        routes::usage::usage(app, request).await
    } else if route == "/v1/webhooks/secret" {
        routes::callback_secret::callback_secret(app, request).await
    } else if route == "/v1/predictions" {
        routes::list::list(app, request).await
    } else if path.starts_with("/v1/predictions/") || route_key.is_some() {
        routes::fetch::fetch(app, request).await
    } else {
        no_route(request.method(), &path)
    }
}

/// API Gateway's route key (`GET /v1/usage`): behind a custom domain's base path the path
/// alone does not say which route a request took. `None` locally.
fn route_key(request: &Request) -> Option<String> {
    match request.request_context_ref() {
        Some(lambda_http::request::RequestContext::ApiGatewayV2(context)) => {
            context.route_key.clone()
        }
        _ => None,
    }
}

/// The `{id}` of a `/v1/predictions/{id}{suffix}` request: API Gateway's path parameter,
/// or (locally) the path's.
fn path_id(request: &Request, suffix: &str) -> Option<String> {
    if let Some(id) = request.path_parameters_ref().and_then(|p| p.first("id")) {
        return Some(id.to_owned());
    }
    let path = request.uri().path().trim_end_matches('/');
    path.strip_suffix(suffix)
        .and_then(|p| p.rsplit_once("/v1/predictions/"))
        .map(|(_, id)| id.to_owned())
}

fn openapi_document() -> Response<Body> {
    let mut response = Response::new(Body::Text(OPENAPI_DOCUMENT.to_owned()));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn no_route(method: &Method, path: &str) -> Response<Body> {
    ApiError::NoRoute {
        method: method.to_string(),
        path: printable_path(path),
    }
    .into_response()
}

fn printable_path(path: &str) -> String {
    path.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// Request id for logs: Lambda's, API Gateway's, or the local server's `x-request-id`.
pub fn request_id(request: &Request) -> String {
    if let Some(context) = request.lambda_context_ref() {
        return context.request_id.clone();
    }
    if let Some(lambda_http::request::RequestContext::ApiGatewayV2(context)) =
        request.request_context_ref()
        && let Some(id) = &context.request_id
    {
        return id.clone();
    }
    request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}
