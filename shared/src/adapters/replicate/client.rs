//! The HTTP client for Replicate's API, with timeouts and the retry rules of `retry`.

use std::fmt;
use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode, Url, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use super::retry::{
    AttemptFailure, CallKind, RetryPolicy, is_retryable, parse_retry_after, retry_hint_from_detail,
};
use crate::adapters::http::error_chain;
use crate::domain::replicate::{
    ApiProblem, CreatePredictionBody, Deadline, Model, ModelRef, Prediction, PredictionPage,
    ReplicateError, WebhookSecretBody, WebhookTarget,
};
use crate::domain::signing::SigningSecret;
use crate::ports::replicate::ReplicateApi;

pub const DEFAULT_BASE_URL: &str = "https://api.replicate.com/v1";

const CANCEL_AFTER_HEADER: &str = "cancel-after";

/// The API token. Never printed.
#[derive(Clone)]
pub struct ApiToken(String);

impl ApiToken {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub base_url: String,
    pub token: ApiToken,
    /// Time to establish a connection.
    pub connect_timeout: Duration,
    /// Time for one whole attempt, response body included.
    pub request_timeout: Duration,
    pub retry: RetryPolicy,
}

impl ClientConfig {
    pub fn new(base_url: impl Into<String>, token: ApiToken) -> Self {
        Self {
            base_url: base_url.into(),
            token,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("REPLICATE_API_BASE_URL `{0}` is not an http(s) URL")]
    BaseUrl(String),
    #[error("the API token contains characters not allowed in an HTTP header")]
    Token,
    #[error("could not build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

#[derive(Debug, Clone)]
pub struct ReplicateClient {
    /// Built on first use: a cold start need not pay for its TLS setup up front.
    http: crate::adapters::http::lazy_client::LazyClient,
    base: Url,
    retry: RetryPolicy,
}

impl ReplicateClient {
    pub fn new(config: ClientConfig) -> Result<Self, ClientBuildError> {
        let base = parse_base_url(&config.base_url)?;
        let mut auth = header::HeaderValue::try_from(format!("Bearer {}", config.token.0))
            .map_err(|_| ClientBuildError::Token)?;
        auth.set_sensitive(true);
        let headers = header::HeaderMap::from_iter([
            (header::AUTHORIZATION, auth),
            (
                header::ACCEPT,
                header::HeaderValue::from_static("application/json"),
            ),
        ]);
        let (connect_timeout, request_timeout) = (config.connect_timeout, config.request_timeout);
        let http = crate::adapters::http::lazy_client::LazyClient::new(move || {
            reqwest::Client::builder()
                .default_headers(headers.clone())
                .user_agent(concat!(
                    "replicate-image-backend/",
                    env!("CARGO_PKG_VERSION")
                ))
                .connect_timeout(connect_timeout)
                .timeout(request_timeout)
                // Replicate never redirects its API; following one would resend the token.
                .redirect(reqwest::redirect::Policy::none())
        });
        Ok(Self {
            http,
            base,
            retry: config.retry,
        })
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("base URL was checked to be hierarchical")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// The first page of the list, filtered to the window. The query carries milliseconds, so
    /// `created_before` is rounded up to the next one: the window may only grow, never miss.
    fn list_url(&self, created_after: SystemTime, created_before: SystemTime) -> Url {
        let mut url = self.url(&["predictions"]);
        url.query_pairs_mut()
            .append_pair("created_after", &rfc3339(created_after))
            .append_pair("created_before", &rfc3339(ceil_millis(created_before)));
        url
    }

    /// A `next` link from a list page. It comes from the network and the request carries
    /// the token, so it is followed only to this client's own list endpoint.
    fn next_page_url(&self, next: &str) -> Result<Url, ReplicateError> {
        let refuse = |why: &str| ReplicateError::InvalidResponse {
            status: 200,
            message: format!("refusing to follow the list's next link: {why}"),
        };
        let url = Url::parse(next).map_err(|_| refuse("not an absolute URL"))?;
        let own = self.url(&["predictions"]);
        let same_origin = url.scheme() == own.scheme()
            && url.host() == own.host()
            && url.port_or_known_default() == own.port_or_known_default();
        if !same_origin {
            return Err(refuse("it points to another host"));
        }
        if url.path() != own.path() {
            return Err(refuse("it points outside the predictions list"));
        }
        // Credentials in the link would replace our Authorization header.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(refuse("it carries credentials"));
        }
        Ok(url)
    }

    /// Sends a request, retrying as `kind` allows, and decodes a 2xx JSON body.
    async fn call<T: DeserializeOwned>(
        &self,
        kind: CallKind,
        method: Method,
        url: Url,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<T, ReplicateError> {
        self.call_with(kind, method, url, body, None).await
    }

    /// `call`, with a `Cancel-After` deadline on a create.
    async fn call_with<T: DeserializeOwned>(
        &self,
        kind: CallKind,
        method: Method,
        url: Url,
        body: Option<&(impl Serialize + Sync)>,
        deadline: Option<Deadline>,
    ) -> Result<T, ReplicateError> {
        let started = std::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = self
                .http
                .get()
                .map_err(|source| ReplicateError::Transport {
                    cause: error_chain(&source),
                })?;
            let mut request = client.request(method.clone(), url.clone());
            if let Some(body) = body {
                request = request.json(body);
            }
            if let Some(deadline) = deadline {
                request = request.header(CANCEL_AFTER_HEADER, deadline.to_string());
            }
            let failure = match self.attempt(kind, request).await {
                Ok(Success(bytes)) => return decode(kind, &bytes),
                Err(failure) => failure,
            };
            let retryable = is_retryable(kind, failure.kind);
            let delay = self.retry.delay_for(attempt - 1, failure.retry_after);
            let server_wait_too_long = failure
                .retry_after
                .is_some_and(|after| after > self.retry.max_retry_after);
            let out_of_budget = attempt >= self.retry.max_attempts
                || started.elapsed() + delay > self.retry.max_total_time;
            if !retryable || server_wait_too_long || out_of_budget {
                return Err(failure.into_error(kind, attempt));
            }
            tracing::warn!(
                path = url.path(),
                attempt,
                failure = ?failure.kind,
                delay_ms = delay.as_millis() as u64,
                "retrying Replicate call"
            );
            crate::telemetry::metrics::record(crate::telemetry::metrics::Metric::count(
                "UpstreamRetries",
            ));
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &self,
        kind: CallKind,
        request: reqwest::RequestBuilder,
    ) -> Result<Success, Failure> {
        let response = request.send().await.map_err(Failure::from_transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = response.bytes().await;
        if status.is_success() {
            return match body {
                Ok(bytes) => Ok(Success(bytes)),
                // For a create this is the worst case: it succeeded but we lost the answer.
                Err(err) if kind == CallKind::Create => {
                    Err(Failure::lost_create_answer(status, err))
                }
                Err(err) => Err(Failure::from_transport(err)),
            };
        }
        let problem = body.map(|b| ApiProblem::from_body(&b)).unwrap_or_default();
        let retry_after = retry_after.or_else(|| {
            (status == StatusCode::TOO_MANY_REQUESTS)
                .then(|| problem.detail.as_deref().and_then(retry_hint_from_detail))
                .flatten()
        });
        Err(Failure {
            kind: AttemptFailure::Status(status.as_u16()),
            retry_after,
            problem: Some(problem),
            source: None,
        })
    }
}

struct Success(bytes::Bytes);

/// One failed attempt, with what is needed to decide on a retry or build the final error.
struct Failure {
    kind: AttemptFailure,
    retry_after: Option<Duration>,
    problem: Option<ApiProblem>,
    source: Option<reqwest::Error>,
}

impl Failure {
    fn from_transport(err: reqwest::Error) -> Self {
        let kind = if err.is_connect() {
            AttemptFailure::Connect
        } else if err.is_timeout() {
            AttemptFailure::Timeout
        } else {
            AttemptFailure::Transport
        };
        Self {
            kind,
            retry_after: None,
            problem: None,
            source: Some(err.without_url()),
        }
    }

    fn lost_create_answer(status: StatusCode, err: reqwest::Error) -> Self {
        Self {
            kind: AttemptFailure::Transport,
            retry_after: None,
            problem: Some(ApiProblem {
                detail: Some(format!("HTTP {status} but the body could not be read")),
                ..ApiProblem::default()
            }),
            source: Some(err.without_url()),
        }
    }

    fn into_error(self, kind: CallKind, attempts: u32) -> ReplicateError {
        match (self.kind, kind) {
            (AttemptFailure::Status(429), _) => ReplicateError::Throttled {
                retry_after: self.retry_after,
                attempts,
            },
            (AttemptFailure::Connect, _) => match self.source {
                Some(source) => ReplicateError::Unreachable {
                    attempts,
                    cause: error_chain(&source),
                },
                None => ReplicateError::TimedOut { attempts },
            },
            (AttemptFailure::Status(status), CallKind::Create) if status >= 500 => {
                ReplicateError::CreateOutcomeUnknown {
                    reason: format!("Replicate answered HTTP {status}"),
                }
            }
            (AttemptFailure::Timeout | AttemptFailure::Transport, CallKind::Create) => {
                ReplicateError::CreateOutcomeUnknown {
                    reason: match (&self.problem, &self.source) {
                        (Some(problem), _) => problem.summary(),
                        (None, Some(source)) if source.is_timeout() => {
                            "no answer in time".to_owned()
                        }
                        _ => "the connection failed after the request was sent".to_owned(),
                    },
                }
            }
            (AttemptFailure::Status(status), CallKind::Idempotent) if status >= 500 => {
                ReplicateError::Unavailable {
                    status,
                    retry_after: self.retry_after,
                    attempts,
                }
            }
            (AttemptFailure::Status(status), _) => ReplicateError::Rejected {
                status,
                problem: self.problem.unwrap_or_default(),
            },
            (AttemptFailure::Timeout, CallKind::Idempotent) => {
                ReplicateError::TimedOut { attempts }
            }
            (AttemptFailure::Transport, CallKind::Idempotent) => match self.source {
                Some(source) => ReplicateError::Transport {
                    cause: error_chain(&source),
                },
                None => ReplicateError::TimedOut { attempts },
            },
        }
    }
}

/// Reads a 2xx body. For a create, an unreadable one still means Replicate created the
/// prediction: the outcome is unknown, never a refusal (which would free the request for a
/// second, billed create).
fn decode<T: DeserializeOwned>(kind: CallKind, bytes: &[u8]) -> Result<T, ReplicateError> {
    serde_json::from_slice(bytes).map_err(|err| match kind {
        CallKind::Create => ReplicateError::CreateOutcomeUnknown {
            reason: format!("the create answer could not be read: {err}"),
        },
        CallKind::Idempotent => ReplicateError::InvalidResponse {
            status: 200,
            message: err.to_string(),
        },
    })
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `t` rounded up to a whole millisecond.
fn ceil_millis(t: SystemTime) -> SystemTime {
    let sub_milli = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() % 1_000_000);
    match sub_milli {
        0 => t,
        nanos => t + Duration::from_nanos(u64::from(1_000_000 - nanos)),
    }
}

/// Whether `raw` can be the client's base URL: checked at start-up, though the client is
/// set up on first use.
pub fn check_base_url(raw: &str) -> Result<(), ClientBuildError> {
    parse_base_url(raw).map(|_| ())
}

fn parse_base_url(raw: &str) -> Result<Url, ClientBuildError> {
    let url = Url::parse(raw.trim()).map_err(|_| ClientBuildError::BaseUrl(raw.to_owned()))?;
    if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() || url.host().is_none() {
        return Err(ClientBuildError::BaseUrl(raw.to_owned()));
    }
    Ok(url)
}

/// Bodies with no fields to send (GET, cancel).
const NO_BODY: Option<&()> = None;

impl ReplicateApi for ReplicateClient {
    async fn create_prediction(
        &self,
        model: &ModelRef,
        input: &Map<String, Value>,
        webhook: Option<&WebhookTarget>,
        deadline: Deadline,
    ) -> Result<Prediction, ReplicateError> {
        let body = CreatePredictionBody {
            version: model.version.as_ref().map(|v| v.as_str()),
            input,
            webhook: webhook.map(|w| w.url.as_str()),
            webhook_events_filter: webhook.map(|w| w.events.as_slice()),
        };
        let url = match &model.version {
            Some(_) => self.url(&["predictions"]),
            None => self.url(&["models", &model.owner, &model.name, "predictions"]),
        };
        self.call_with(
            CallKind::Create,
            Method::POST,
            url,
            Some(&body),
            Some(deadline),
        )
        .await
    }

    async fn get_prediction(&self, id: &str) -> Result<Prediction, ReplicateError> {
        let url = self.url(&["predictions", id]);
        self.call(CallKind::Idempotent, Method::GET, url, NO_BODY)
            .await
    }

    async fn cancel_prediction(&self, id: &str) -> Result<Prediction, ReplicateError> {
        let url = self.url(&["predictions", id, "cancel"]);
        self.call(CallKind::Idempotent, Method::POST, url, NO_BODY)
            .await
    }

    async fn list_predictions(
        &self,
        created_after: SystemTime,
        created_before: SystemTime,
        page: Option<&str>,
    ) -> Result<PredictionPage, ReplicateError> {
        let url = match page {
            None => self.list_url(created_after, created_before),
            Some(next) => self.next_page_url(next)?,
        };
        self.call(CallKind::Idempotent, Method::GET, url, NO_BODY)
            .await
    }

    async fn webhook_secret(&self) -> Result<SigningSecret, ReplicateError> {
        let url = self.url(&["webhooks", "default", "secret"]);
        let body: WebhookSecretBody = self
            .call(CallKind::Idempotent, Method::GET, url, NO_BODY)
            .await?;
        SigningSecret::parse(&body.key).map_err(|err| ReplicateError::InvalidResponse {
            status: 200,
            message: err.to_string(),
        })
    }

    async fn get_model(&self, owner: &str, name: &str) -> Result<Model, ReplicateError> {
        let url = self.url(&["models", owner, name]);
        self.call(CallKind::Idempotent, Method::GET, url, NO_BODY)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(base: &str) -> ReplicateClient {
        ReplicateClient::new(ClientConfig::new(base, ApiToken::new("r8_test"))).unwrap()
    }

    #[test]
    fn urls_join_and_encode_segments() {
        let c = client("https://api.replicate.com/v1");
        assert_eq!(
            c.url(&["predictions"]).as_str(),
            "https://api.replicate.com/v1/predictions"
        );
        let c = client("http://127.0.0.1:9000/v1/");
        assert_eq!(
            c.url(&["models", "black-forest-labs", "flux-schnell", "predictions"])
                .as_str(),
            "http://127.0.0.1:9000/v1/models/black-forest-labs/flux-schnell/predictions"
        );
        assert_eq!(
            c.url(&["predictions", "a/../b?x"]).as_str(),
            "http://127.0.0.1:9000/v1/predictions/a%2F..%2Fb%3Fx"
        );
    }

    #[test]
    fn base_url_must_be_http() {
        for bad in [
            "",
            "api.replicate.com",
            "ftp://x/v1",
            "mailto:a@b",
            "http://",
        ] {
            assert!(
                matches!(
                    ReplicateClient::new(ClientConfig::new(bad, ApiToken::new("t"))),
                    Err(ClientBuildError::BaseUrl(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            ReplicateClient::new(ClientConfig::new(
                "https://x/v1",
                ApiToken::new("bad\ntoken")
            )),
            Err(ClientBuildError::Token)
        ));
    }

    #[test]
    fn list_url_carries_the_window_in_utc_milliseconds() {
        let c = client("https://api.replicate.com/v1/");
        let after = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_600);
        let before = after + Duration::from_micros(60_000_500);
        assert_eq!(
            c.list_url(after, before).as_str(),
            "https://api.replicate.com/v1/predictions?created_after=2025-01-01T00%3A00%3A00.000Z\
             &created_before=2025-01-01T00%3A01%3A00.001Z"
        );
    }

    #[test]
    fn next_links_are_followed_only_to_our_own_list() {
        let c = client("https://api.replicate.com/v1");
        let ok = "https://api.replicate.com/v1/predictions?cursor=cD0yMDI1";
        assert_eq!(c.next_page_url(ok).unwrap().as_str(), ok);
        assert!(
            c.next_page_url("https://API.replicate.com:443/v1/predictions?cursor=x")
                .is_ok()
        );
        for foreign in [
            "https://evil.example/v1/predictions?cursor=x",
            "http://api.replicate.com/v1/predictions?cursor=x",
            "https://api.replicate.com:8443/v1/predictions?cursor=x",
            "https://api.replicate.com.evil.example/v1/predictions",
            "https://api.replicate.com/v1/predictions/abc",
            "https://api.replicate.com/v1/models",
            "https://api.replicate.com/v2/predictions",
            "https://user:pw@api.replicate.com/v1/predictions",
            "/v1/predictions?cursor=x",
            "not a url",
        ] {
            assert!(
                matches!(
                    c.next_page_url(foreign),
                    Err(ReplicateError::InvalidResponse { .. })
                ),
                "{foreign}"
            );
        }
    }

    #[test]
    fn token_is_never_printed() {
        let config = ClientConfig::new("https://x/v1", ApiToken::new("r8_secretvalue"));
        assert!(!format!("{config:?}").contains("secretvalue"));
    }
}
