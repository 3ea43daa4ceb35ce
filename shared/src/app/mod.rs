//! The three request handlers (submit, webhook, fetch-result) and what they share. The
//! Lambda binaries and the local dev server both call these; they depend only on the ports,
//! so unit tests run them on in-memory fakes.

mod auth;
pub mod body;
mod callbacks;
mod cancel;
pub mod copy;
mod destination;
mod fetch;
pub mod inputs;
mod list;
pub mod problem;
mod queue;
mod reconcile;
mod resolve;
mod submit;
mod sync;
mod uploads;
mod usage;
mod view;
mod webhook;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::Method;
use lambda_http::{Body, Request, Response};
use tokio::sync::OnceCell;

use crate::config::Settings;
use crate::domain::ids::PredictionId;
use crate::domain::record::PredictionRecord;
use crate::domain::registry::ModelRegistry;
use crate::domain::replicate::ReplicateError;
use crate::domain::signing::WebhookVerifier;
use crate::domain::tenancy::{Caller, TenantId};
use crate::domain::time::Clock;
use crate::ports::StoreError;
use crate::ports::records::RecordStore;
use crate::ports::replicate::ReplicateApi;
use crate::ports::{PortSet, Ports};

pub use auth::KEY_CACHE_TTL;
pub use callbacks::CallbackDisposition;
pub use problem::ApiError;
pub use queue::CreateDisposition;
pub use reconcile::{OUTPUT_RETENTION, ReconcileReport};
pub use resolve::UNCONFIRMED_DEADLINE;
pub use sync::{SyncError, SyncOutcome};
pub use uploads::UploadSlot;
pub use view::{OutputView, PredictionView, QueueView};

/// The OpenAPI 3.1 document of this API (`shared/openapi.json`), served at
/// `GET /openapi.json` without a key.
pub const OPENAPI_DOCUMENT: &str = include_str!("../../openapi.json");

/// Lambda's own request payload limit; the local server enforces the same.
pub const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;

/// After the webhook secret could not be fetched, requests fail fast for this long instead
/// of each asking Replicate again (unauthenticated posts must not drive calls upstream).
const SECRET_FAILURE_BACKOFF: Duration = Duration::from_secs(10);

/// Everything a handler needs, built once per process.
pub struct App<P: Ports> {
    pub replicate: P::Replicate,
    pub records: P::Records,
    pub objects: P::Objects,
    pub downloads: P::Downloads,
    pub queue: P::Queue,
    pub callbacks: P::Callbacks,
    /// Resolves callback hosts at submit (the check before anything is created).
    pub resolver: P::Resolver,
    pub registry: ModelRegistry,
    pub settings: Settings,
    pub clock: Clock,
    keys: auth::KeyCache,
    /// Tenants' callback signing secrets: made once, never changed, so kept per process.
    callback_secrets: Mutex<std::collections::HashMap<TenantId, String>>,
    webhook_verifier: OnceCell<WebhookVerifier>,
    secret_failed_at: Mutex<Option<Instant>>,
}

impl<P: Ports> App<P> {
    /// A prediction as every route returns it: fresh download URLs, and where it stands in
    /// the create queue if it waits there.
    pub(crate) async fn view(
        &self,
        record: &PredictionRecord,
        cached: bool,
    ) -> Result<PredictionView, StoreError> {
        let queue = QueueView::of(record, &self.settings.create_pace, self.clock.now());
        PredictionView::build(
            record,
            cached,
            &self.objects,
            self.settings.output_url_ttl,
            queue,
        )
        .await
    }

    pub fn new(ports: PortSet<P>, registry: ModelRegistry, settings: Settings) -> Self {
        let webhook_verifier =
            OnceCell::new_with(settings.webhook_secret.clone().map(WebhookVerifier::new));
        Self {
            replicate: ports.replicate,
            records: ports.records,
            objects: ports.objects,
            downloads: ports.downloads,
            queue: ports.queue,
            callbacks: ports.callbacks,
            resolver: ports.resolver,
            registry,
            settings,
            clock: Clock::default(),
            keys: auth::KeyCache::default(),
            callback_secrets: Mutex::default(),
            webhook_verifier,
            secret_failed_at: Mutex::new(None),
        }
    }

    /// The webhook verifier, with the configured secret or one fetched from Replicate once
    /// per process (on first use rather than at start-up, so cold starts do not wait for it).
    /// A failed fetch is remembered for a few seconds: `None` until then, without a call.
    pub async fn webhook_verifier(&self) -> Option<&WebhookVerifier> {
        if let Some(verifier) = self.webhook_verifier.get() {
            return Some(verifier);
        }
        let failed_at = *self
            .secret_failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if failed_at.is_some_and(|t| t.elapsed() < SECRET_FAILURE_BACKOFF) {
            return None;
        }
        let fetched: Result<&WebhookVerifier, ReplicateError> = self
            .webhook_verifier
            .get_or_try_init(|| async {
                self.replicate
                    .webhook_secret()
                    .await
                    .map(WebhookVerifier::new)
            })
            .await;
        match fetched {
            Ok(verifier) => Some(verifier),
            Err(err) => {
                tracing::error!(error = %err, "webhook signing secret unavailable");
                *self
                    .secret_failed_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                None
            }
        }
    }

    /// A prediction, unless its TTL has passed (DynamoDB deletes expired items only
    /// eventually; until then they must look deleted).
    pub async fn live_prediction(
        &self,
        id: &PredictionId,
    ) -> Result<Option<PredictionRecord>, StoreError> {
        let now = self.clock.now();
        Ok(self
            .records
            .get_prediction(id)
            .await?
            .filter(|r| !r.is_expired(now)))
    }

    /// The prediction a `/v1/predictions/{id}…` request names (`suffix` after the id), if it
    /// is the caller's: another tenant's is answered exactly like one that does not exist.
    pub(crate) async fn callers_prediction(
        &self,
        request: &Request,
        caller: &Caller,
        suffix: &str,
    ) -> Result<PredictionRecord, ApiError> {
        let not_found = || ApiError::NotFound("no prediction with this id".to_owned());
        let id = path_id(request, suffix)
            .and_then(|raw| PredictionId::parse(&raw).ok())
            .ok_or_else(not_found)?;
        tracing::Span::current().record("prediction_id", id.as_str());
        self.live_prediction(&id)
            .await?
            .filter(|r| r.belongs_to(&caller.tenant))
            .ok_or_else(not_found)
    }

    /// Dispatches by method and path: the local server's router. In AWS, API Gateway routes
    /// each path to its own function, which calls its handler directly.
    pub async fn route(&self, request: Request) -> Response<Body> {
        let path = request.uri().path().trim_end_matches('/').to_owned();
        let method = request.method().clone();
        match (&method, path.as_str()) {
            (&Method::POST, "/webhooks/replicate") => self.webhook(request).await,
            (&Method::POST, _) => self.write(request).await,
            (&Method::GET, _) => self.read(request).await,
            _ => no_route(&method, &path),
        }
    }

    /// The write routes, which one function serves: submit, cancel, and upload slots.
    pub async fn write(&self, request: Request) -> Response<Body> {
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
            self.cancel(request).await
        } else if uploads {
            self.create_upload(request).await
        } else if path == "/v1/predictions" || route_key.is_some() {
            self.submit(request).await
        } else {
            no_route(request.method(), &path)
        }
    }

    /// The read routes, which one function serves: a prediction, the caller's predictions,
    /// the caller's usage, the caller's callback signing secret, or the OpenAPI document.
    /// Behind API Gateway the route key says which (the path may carry a custom domain's
    /// base path); locally the path does.
    pub async fn read(&self, request: Request) -> Response<Body> {
        let path = request.uri().path().trim_end_matches('/').to_owned();
        let route_key = route_key(&request);
        let route = match route_key.as_deref() {
            Some(key) if key != "$default" => key.trim_start_matches("GET ").to_owned(),
            _ => path.clone(),
        };
        if route == "/openapi.json" {
            openapi_document()
        } else if route == "/v1/usage" {
            self.usage(request).await
        } else if route == "/v1/webhooks/secret" {
            self.webhook_secret_route(request).await
        } else if route == "/v1/predictions" {
            self.list(request).await
        } else if path.starts_with("/v1/predictions/") || route_key.is_some() {
            self.fetch(request).await
        } else {
            no_route(request.method(), &path)
        }
    }
}

/// API Gateway's route key (`GET /v1/usage`): behind a custom domain's base path the path
/// alone does not say which route a request took. `None` locally.
fn route_key(request: &Request) -> Option<String> {
    use lambda_http::RequestExt;
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
    use lambda_http::RequestExt;
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
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
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
    use lambda_http::RequestExt;
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

#[cfg(test)]
mod tests;
