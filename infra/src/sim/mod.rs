//! A Replicate simulator: the HTTP API this service uses (version and official-model create,
//! get, list, cancel, webhook secret, get model), predictions that move `starting →
//! processing → succeeded` on their own, real images served from its own loopback URL, and
//! webhooks signed like Replicate's for the requested `webhook_events_filter`.
//!
//! Markers in a prompt steer one prediction, for tests and demos:
//! `[sim:fail]` fails it, `[sim:abort]` aborts it before it runs, `[sim:slow]` makes it run
//! 20× longer, `[sim:no-webhook]` sends no webhook (a lost delivery), `[sim:duplicate]`
//! sends the completed webhook twice, `[sim:reorder]` sends the start webhook after the
//! completed one, `[sim:foreign-host]` serves its outputs from `localhost` instead of
//! `127.0.0.1` (a host outside a typical allowlist).

#[cfg(test)]
mod http_tests;
pub mod images;
mod list;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode, header};
use imagegen_shared::outputs::hex;
use imagegen_shared::webhook::{ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, WebhookSecret};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::http_server::{HttpRequest, HttpResponse, Server, bind_loopback, serve};

/// Versions the simulator knows, as Replicate would: version id → `owner/name`.
const KNOWN_VERSIONS: &[(&str, &str)] = &[
    (
        "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc",
        "stability-ai/sdxl",
    ),
    (
        "95b7223104132402a9ae91cc677285bc5eb997834bd2349fa486f53910fd68b3",
        "stability-ai/stable-diffusion-inpainting",
    ),
    (
        "f121d640bd286e1fdc67f9799164c1d5be36ff74576ee11c803ae5b665dd46aa",
        "nightmareai/real-esrgan",
    ),
];

/// Models run through `/models/{owner}/{name}/predictions`.
const OFFICIAL_MODELS: &[&str] = &[
    "black-forest-labs/flux-schnell",
    "black-forest-labs/flux-1.1-pro",
    "black-forest-labs/flux-dev",
];

/// Models whose output is one URL rather than a list.
const SINGLE_OUTPUT_MODELS: &[&str] =
    &["black-forest-labs/flux-1.1-pro", "nightmareai/real-esrgan"];

/// The input images one prediction fetched: field → (SHA-256 hex, size).
pub type InputFiles = BTreeMap<String, (String, usize)>;

/// The inputs that carry an image the model fetches.
const IMAGE_FIELDS: &[&str] = &["image", "mask", "image_prompt"];
const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// 0 picks a free port.
    pub port: u16,
    /// The `whsec_…` signing secret.
    pub secret: String,
    /// Time spent `starting`.
    pub start_delay: Duration,
    /// Time spent `processing`.
    pub run_time: Duration,
    /// Attempts to deliver a completed webhook (Replicate retries those; others are sent once).
    pub webhook_attempts: u32,
    pub webhook_retry_delay: Duration,
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        let key: [u8; 24] = std::array::from_fn(|_| fastrand::u8(..));
        Self {
            port: 0,
            secret: format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(key)
            ),
            start_delay: Duration::from_millis(50),
            run_time: Duration::from_millis(150),
            webhook_attempts: 4,
            webhook_retry_delay: Duration::from_millis(200),
            faults: Faults::default(),
        }
    }
}

/// Counts of what the simulator was asked and did, for tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub creates: u64,
    pub gets: u64,
    pub cancels: u64,
    pub webhooks_delivered: u64,
    pub webhooks_failed: u64,
    pub file_downloads: u64,
    pub lists: u64,
    pub throttled: u64,
    pub server_errors: u64,
    pub failed_downloads: u64,
    /// Creates that created and ran their prediction but were answered with a gateway error.
    pub lost_creates: u64,
    /// Creates that created and ran their prediction but answered after `create_slow_ms`.
    pub slow_creates: u64,
}

/// How one prediction behaves: from markers in its prompt, and from the random faults
/// rolled when it was created.
#[derive(Debug, Clone, Default)]
struct Markers {
    fail: bool,
    abort: bool,
    cancel: bool,
    slow: bool,
    /// Stays `starting` twenty times as long, as a model booting cold does.
    cold: bool,
    no_webhook: bool,
    duplicate: bool,
    reorder: bool,
    delay_webhooks: bool,
    foreign_host: bool,
}

/// Random faults, each a probability per prediction or per request (0 = never). Set in
/// `SimConfig`, from `SIM_FAULTS` (JSON) for the binary, or at run time with
/// `POST /_sim/faults`.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// No webhook at all for the prediction (a lost delivery, retries included).
    pub webhook_drop: f64,
    /// The completed webhook is delivered twice.
    pub webhook_duplicate: f64,
    /// The start webhook arrives after the completed one.
    pub webhook_reorder: f64,
    /// Webhooks wait `webhook_delay_ms` before being sent.
    pub webhook_delay: f64,
    pub webhook_delay_ms: u64,
    /// A create is answered 429 (and creates nothing).
    pub create_throttle: f64,
    /// Share of those 429s that carry `Retry-After: 1`.
    pub throttle_retry_after: f64,
    /// A create creates and runs its prediction (webhooks included), but the answer is a
    /// gateway error (502 or 504): the caller cannot know the prediction exists.
    pub create_lost: f64,
    /// A create creates and runs its prediction, but answers only after `create_slow_ms`
    /// (default 11000, past the service's 10 s request timeout, so the caller gives up).
    pub create_slow: f64,
    pub create_slow_ms: u64,
    /// A get, list or cancel is answered 503.
    pub server_error: f64,
    /// An API call answers only after `slow_ms`.
    pub slow: f64,
    pub slow_ms: u64,
    /// The prediction ends failed, canceled or aborted.
    pub fail: f64,
    pub cancel: f64,
    pub abort: f64,
    /// The first download of an output file is answered 500.
    pub download_fail_once: f64,
    /// The first download of an output file stops halfway (its Content-Length promises
    /// the whole file).
    pub download_truncate_once: f64,
    /// A download answers only after `download_stall_ms`.
    pub download_stall: f64,
    pub download_stall_ms: u64,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            webhook_drop: 0.0,
            webhook_duplicate: 0.0,
            webhook_reorder: 0.0,
            webhook_delay: 0.0,
            webhook_delay_ms: 0,
            create_throttle: 0.0,
            throttle_retry_after: 0.0,
            create_lost: 0.0,
            create_slow: 0.0,
            create_slow_ms: 11_000,
            server_error: 0.0,
            slow: 0.0,
            slow_ms: 0,
            fail: 0.0,
            cancel: 0.0,
            abort: 0.0,
            download_fail_once: 0.0,
            download_truncate_once: 0.0,
            download_stall: 0.0,
            download_stall_ms: 0,
        }
    }
}

fn roll(probability: f64) -> bool {
    probability > 0.0 && fastrand::f64() < probability
}

impl Faults {
    /// Rolls this prediction's share of the faults into its behaviour.
    fn apply_to(&self, m: &mut Markers) {
        m.no_webhook |= roll(self.webhook_drop);
        m.duplicate |= roll(self.webhook_duplicate);
        m.reorder |= roll(self.webhook_reorder);
        m.delay_webhooks |= roll(self.webhook_delay);
        m.fail |= roll(self.fail);
        m.cancel |= roll(self.cancel);
        m.abort |= roll(self.abort);
    }
}

impl Markers {
    fn from_input(input: &Map<String, Value>) -> Self {
        let prompt = input
            .get("prompt")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Self {
            fail: prompt.contains("[sim:fail]"),
            abort: prompt.contains("[sim:abort]"),
            cancel: prompt.contains("[sim:cancel]"),
            delay_webhooks: false,
            slow: prompt.contains("[sim:slow]"),
            cold: prompt.contains("[sim:cold]"),
            no_webhook: prompt.contains("[sim:no-webhook]"),
            duplicate: prompt.contains("[sim:duplicate]"),
            reorder: prompt.contains("[sim:reorder]"),
            foreign_host: prompt.contains("[sim:foreign-host]"),
        }
    }
}

#[derive(Debug, Clone)]
struct SimPrediction {
    id: String,
    model: String,
    version: Option<String>,
    input: Map<String, Value>,
    output: Value,
    error: Option<String>,
    status: &'static str,
    created_at: SystemTime,
    started_at: Option<SystemTime>,
    completed_at: Option<SystemTime>,
    webhook: Option<String>,
    events: Vec<String>,
    behaviour: Markers,
}

impl SimPrediction {
    fn is_terminal(&self) -> bool {
        matches!(self.status, "succeeded" | "failed" | "canceled" | "aborted")
    }

    fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

struct State {
    config: SimConfig,
    /// `http://127.0.0.1:{port}`
    origin: String,
    secret: WebhookSecret,
    predictions: Mutex<HashMap<String, SimPrediction>>,
    files: Mutex<HashMap<String, (Bytes, &'static str)>>,
    stats: Mutex<Stats>,
    faults: Mutex<Faults>,
    /// Files whose first download already failed (on purpose).
    failed_once: Mutex<std::collections::HashSet<String>>,
    /// The input images each prediction fetched: field → (SHA-256 hex, size).
    input_files: Mutex<HashMap<String, InputFiles>>,
    http: reqwest::Client,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Simulator {
    server: Server,
    state: Arc<State>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("could not bind: {0}")]
    Bind(#[from] std::io::Error),
    #[error("the signing secret is malformed")]
    Secret,
    #[error("could not build the webhook client: {0}")]
    Client(#[from] reqwest::Error),
}

impl Simulator {
    pub async fn start(config: SimConfig) -> Result<Self, SimError> {
        let secret = WebhookSecret::parse(&config.secret).map_err(|_| SimError::Secret)?;
        let listener = bind_loopback(config.port).await?;
        let origin = format!("http://{}", listener.local_addr()?);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let state = Arc::new(State {
            config: config.clone(),
            origin,
            secret,
            predictions: Mutex::new(HashMap::new()),
            files: Mutex::new(HashMap::new()),
            stats: Mutex::new(Stats::default()),
            faults: Mutex::new(config.faults.clone()),
            failed_once: Mutex::new(std::collections::HashSet::new()),
            input_files: Mutex::new(HashMap::new()),
            http,
        });
        let handler_state = state.clone();
        let server = serve(listener, MAX_REQUEST_BYTES, too_large, move |request| {
            let state = handler_state.clone();
            async move { handle(state, request).await }
        });
        Ok(Self { server, state })
    }

    /// The API base, as `REPLICATE_API_BASE_URL` takes it.
    pub fn api_base(&self) -> String {
        format!("{}/v1", self.state.origin)
    }

    /// `127.0.0.1:{port}`: the host outputs are served from, for `OUTPUT_HOST_ALLOWLIST`.
    pub fn output_host(&self) -> String {
        self.server.addr.to_string()
    }

    pub fn secret(&self) -> &str {
        &self.state.config.secret
    }

    pub fn stats(&self) -> Stats {
        lock(&self.state.stats).clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.state.faults) = faults;
    }

    /// Every prediction created, as `GET /predictions/{id}` shows it.
    pub fn predictions(&self) -> Vec<Value> {
        lock(&self.state.predictions)
            .values()
            .map(|p| self.state.to_json(p))
            .collect()
    }

    /// The bytes served for an output URL of this simulator.
    pub fn file(&self, url: &str) -> Option<Bytes> {
        let key = url.split("/files/").nth(1)?;
        lock(&self.state.files)
            .get(key)
            .map(|(bytes, _)| bytes.clone())
    }

    /// The input images a prediction fetched, as field → (SHA-256 hex, size): what the
    /// model really received.
    pub fn input_files(&self, id: &str) -> InputFiles {
        lock(&self.state.input_files)
            .get(id)
            .cloned()
            .unwrap_or_default()
    }

    /// A prediction as `GET /predictions/{id}` would show it.
    pub fn prediction(&self, id: &str) -> Option<Value> {
        lock(&self.state.predictions)
            .get(id)
            .map(|p| self.state.to_json(p))
    }
}

fn too_large() -> HttpResponse {
    problem(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large")
}

fn json(status: StatusCode, body: &Value) -> HttpResponse {
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
fn gateway_error() -> HttpResponse {
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

fn problem(status: StatusCode, detail: &str) -> HttpResponse {
    json(
        status,
        &json!({"title": status.canonical_reason(), "detail": detail, "status": status.as_u16()}),
    )
}

async fn handle(state: Arc<State>, request: HttpRequest) -> HttpResponse {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["files", id, name]) => {
            return state.serve_file(&format!("{id}/{name}")).await;
        }
        (&Method::GET, ["_sim", "stats"]) => {
            return json(StatusCode::OK, &json!(*lock(&state.stats)));
        }
        (&Method::GET, ["_sim", "faults"]) => {
            return json(StatusCode::OK, &json!(*lock(&state.faults)));
        }
        (&Method::POST, ["_sim", "faults"]) => {
            return match serde_json::from_slice::<Faults>(request.body()) {
                Ok(faults) => {
                    *lock(&state.faults) = faults;
                    json(StatusCode::OK, &json!(*lock(&state.faults)))
                }
                Err(e) => problem(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
            };
        }
        _ => {}
    }
    if !authorised(&request) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "You did not pass a valid authentication token",
        );
    }
    if let Some(response) = state.api_fault(&method, &segments).await {
        return response;
    }
    match (&method, segments.as_slice()) {
        (&Method::POST, ["v1", "predictions"]) => {
            let created = match cancel_after(&request) {
                Ok(deadline) => state.create(request.body(), None, deadline).await,
                Err(detail) => problem(StatusCode::UNPROCESSABLE_ENTITY, detail),
            };
            state.answer_create(created).await
        }
        (&Method::POST, ["v1", "models", owner, name, "predictions"]) => {
            let created = match cancel_after(&request) {
                Ok(deadline) => {
                    state
                        .create(request.body(), Some(format!("{owner}/{name}")), deadline)
                        .await
                }
                Err(detail) => problem(StatusCode::UNPROCESSABLE_ENTITY, detail),
            };
            state.answer_create(created).await
        }
        (&Method::GET, ["v1", "predictions"]) => state.list(request.uri().query()),
        (&Method::GET, ["v1", "predictions", id]) => {
            lock(&state.stats).gets += 1;
            match lock(&state.predictions).get(*id) {
                Some(p) => json(StatusCode::OK, &state.to_json(p)),
                None => problem(StatusCode::NOT_FOUND, "Not found."),
            }
        }
        (&Method::POST, ["v1", "predictions", id, "cancel"]) => state.cancel(id).await,
        (&Method::GET, ["v1", "webhooks", "default", "secret"]) => {
            json(StatusCode::OK, &json!({"key": state.config.secret}))
        }
        (&Method::GET, ["v1", "models", owner, name]) => state.model(owner, name),
        _ => problem(StatusCode::NOT_FOUND, "Not found."),
    }
}

/// A create's `Cancel-After` (`90s`, `5m`, `1h30m`; at least 5 s), as Replicate reads it.
fn cancel_after(request: &HttpRequest) -> Result<Option<Duration>, &'static str> {
    let Some(value) = request.headers().get("cancel-after") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| humantime::parse_duration(text.trim()).ok())
        .filter(|d| *d >= Duration::from_secs(5))
        .map(Some)
        .ok_or("Cancel-After must be a duration of at least 5s")
}

fn authorised(request: &HttpRequest) -> bool {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| !token.trim().is_empty())
}

/// Replicate-style ids: 26 lowercase base32 characters.
fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    (0..26)
        .map(|_| ALPHABET[fastrand::usize(..32)] as char)
        .collect()
}

/// A create request's fields.
#[derive(Debug)]
struct CreateBody {
    version: Option<String>,
    input: Map<String, Value>,
    webhook: Option<String>,
    events: Vec<String>,
}

/// Checks a create body as Replicate's schema does (`additionalProperties: false`).
fn parse_create(body: &[u8], official: bool) -> Result<CreateBody, String> {
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
        return Err("request body must be a JSON object".to_owned());
    };
    let allowed: &[&str] = if official {
        &["input", "webhook", "webhook_events_filter", "stream"]
    } else {
        &[
            "version",
            "input",
            "webhook",
            "webhook_events_filter",
            "stream",
        ]
    };
    if let Some(extra) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("Additional property {extra} is not allowed"));
    }
    let Some(Value::Object(input)) = fields.remove("input") else {
        return Err("input is required and must be an object".to_owned());
    };
    let version = match fields.remove("version") {
        Some(Value::String(v)) => Some(v),
        Some(_) => return Err("version must be a string".to_owned()),
        None if official => None,
        None => return Err("version is required".to_owned()),
    };
    let webhook = match fields.remove("webhook") {
        Some(Value::String(url)) if url.starts_with("http://") || url.starts_with("https://") => {
            Some(url)
        }
        Some(_) => return Err("webhook must be an http(s) URL".to_owned()),
        None => None,
    };
    let events = match fields.remove("webhook_events_filter") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|e| match e.as_str() {
                Some(s @ ("start" | "output" | "logs" | "completed")) => Ok(s.to_owned()),
                _ => Err(format!(
                    "webhook_events_filter: {e} is not one of start, output, logs, completed"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("webhook_events_filter must be an array".to_owned()),
        None => Vec::new(),
    };
    Ok(CreateBody {
        version,
        input,
        webhook,
        events,
    })
}

/// `version` as sent to `POST /predictions`: a known 64-hex id or `owner/name:id`.
fn resolve_version(version: &str) -> Option<(String, String)> {
    let (model, id) = match version.split_once(':') {
        Some((model, id)) => (Some(model.to_owned()), id),
        None => (None, version),
    };
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let known = KNOWN_VERSIONS
        .iter()
        .find(|(v, _)| *v == id)
        .map(|(_, m)| (*m).to_owned());
    Some((model.or(known)?, id.to_owned()))
}

impl State {
    fn to_json(&self, p: &SimPrediction) -> Value {
        let get = format!("{}/v1/predictions/{}", self.origin, p.id);
        let mut body = json!({
            "id": p.id,
            "model": p.model,
            "version": p.version.clone().unwrap_or_else(|| "hidden".to_owned()),
            "input": p.input,
            "output": p.output,
            "error": p.error,
            "logs": "",
            "status": p.status,
            "data_removed": false,
            "source": "api",
            "created_at": timestamp(p.created_at),
            "urls": {"get": get, "cancel": format!("{get}/cancel"), "web": format!("https://replicate.com/p/{}", p.id)},
        });
        let fields = body.as_object_mut().expect("built as an object");
        if let Some(t) = p.started_at {
            fields.insert("started_at".to_owned(), json!(timestamp(t)));
        }
        if let Some(t) = p.completed_at {
            fields.insert("completed_at".to_owned(), json!(timestamp(t)));
            let run = |from: SystemTime| t.duration_since(from).unwrap_or_default().as_secs_f64();
            fields.insert(
                "metrics".to_owned(),
                json!({"predict_time": p.started_at.map(run).unwrap_or(0.0), "total_time": run(p.created_at)}),
            );
        }
        body
    }

    async fn create(
        self: &Arc<Self>,
        body: &[u8],
        official_model: Option<String>,
        deadline: Option<Duration>,
    ) -> HttpResponse {
        let CreateBody {
            version,
            input,
            webhook,
            events,
        } = match parse_create(body, official_model.is_some()) {
            Ok(parts) => parts,
            Err(detail) => return problem(StatusCode::UNPROCESSABLE_ENTITY, &detail),
        };
        let (model, version) = match (official_model, version) {
            (Some(model), _) if OFFICIAL_MODELS.contains(&model.as_str()) => (model, None),
            (Some(_), _) => {
                return problem(
                    StatusCode::NOT_FOUND,
                    "The requested model is not an official model.",
                );
            }
            (None, Some(v)) => match resolve_version(&v) {
                Some((model, id)) => (model, Some(id)),
                None => {
                    return problem(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid version or not permitted",
                    );
                }
            },
            (None, None) => {
                return problem(StatusCode::UNPROCESSABLE_ENTITY, "version is required");
            }
        };
        let mut behaviour = Markers::from_input(&input);
        lock(&self.faults).apply_to(&mut behaviour);
        let prediction = SimPrediction {
            id: new_id(),
            model,
            version,
            behaviour,
            input,
            output: Value::Null,
            error: None,
            status: "starting",
            created_at: SystemTime::now(),
            started_at: None,
            completed_at: None,
            webhook,
            events,
        };
        let body = self.to_json(&prediction);
        lock(&self.predictions).insert(prediction.id.clone(), prediction.clone());
        lock(&self.stats).creates += 1;
        if let Some(deadline) = deadline {
            tokio::spawn(self.clone().enforce(prediction.id.clone(), deadline));
        }
        tokio::spawn(self.clone().run(prediction.id));
        json(StatusCode::CREATED, &body)
    }

    fn model(&self, owner: &str, name: &str) -> HttpResponse {
        let path = format!("{owner}/{name}");
        let official = OFFICIAL_MODELS.contains(&path.as_str());
        let version = KNOWN_VERSIONS
            .iter()
            .find(|(_, m)| *m == path)
            .map(|(v, _)| *v);
        if !official && version.is_none() {
            return problem(StatusCode::NOT_FOUND, "Not found.");
        }
        json(
            StatusCode::OK,
            &json!({
                "owner": owner, "name": name, "url": format!("https://replicate.com/{path}"),
                "visibility": "public", "is_official": official, "run_count": 0,
                "latest_version": version.map(|v| json!({"id": v, "created_at": "2023-07-26T00:00:00Z"})),
            }),
        )
    }

    /// What the caller of a create hears. The faults here strike only a create that
    /// succeeded: its prediction exists and runs (webhooks included) whatever the answer.
    async fn answer_create(&self, created: HttpResponse) -> HttpResponse {
        if created.status() != StatusCode::CREATED {
            return created;
        }
        let faults = lock(&self.faults).clone();
        if roll(faults.create_slow) {
            lock(&self.stats).slow_creates += 1;
            tokio::time::sleep(Duration::from_millis(faults.create_slow_ms)).await;
        }
        if roll(faults.create_lost) {
            lock(&self.stats).lost_creates += 1;
            return gateway_error();
        }
        created
    }

    /// The injected answer for an API call, if a fault strikes it.
    async fn api_fault(&self, method: &Method, segments: &[&str]) -> Option<HttpResponse> {
        let faults = lock(&self.faults).clone();
        if roll(faults.slow) {
            tokio::time::sleep(Duration::from_millis(faults.slow_ms)).await;
        }
        let is_create = method == Method::POST && segments.last() == Some(&"predictions");
        if is_create && roll(faults.create_throttle) {
            lock(&self.stats).throttled += 1;
            let mut response = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "Request was throttled. Expected available in 1 second.",
            );
            if roll(faults.throttle_retry_after) {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, http::HeaderValue::from_static("1"));
            }
            return Some(response);
        }
        if !is_create && segments.get(1) == Some(&"predictions") && roll(faults.server_error) {
            lock(&self.stats).server_errors += 1;
            return Some(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service temporarily unavailable.",
            ));
        }
        None
    }

    async fn serve_file(&self, key: &str) -> HttpResponse {
        let faults = lock(&self.faults).clone();
        if roll(faults.download_stall) {
            tokio::time::sleep(Duration::from_millis(faults.download_stall_ms)).await;
        }
        if roll(faults.download_fail_once) && lock(&self.failed_once).insert(key.to_owned()) {
            lock(&self.stats).failed_downloads += 1;
            return problem(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        }
        let Some((bytes, content_type)) = lock(&self.files).get(key).cloned() else {
            return problem(StatusCode::NOT_FOUND, "Not found.");
        };
        if roll(faults.download_truncate_once) && lock(&self.failed_once).insert(key.to_owned()) {
            lock(&self.stats).failed_downloads += 1;
            let mut response = http::Response::new(bytes.slice(..bytes.len() / 2));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, http::HeaderValue::from(bytes.len()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            response
                .extensions_mut()
                .insert(crate::http_server::UnsizedBody);
            return response;
        }
        lock(&self.stats).file_downloads += 1;
        let mut response = http::Response::new(bytes);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        response
    }

    async fn cancel(self: &Arc<Self>, id: &str) -> HttpResponse {
        lock(&self.stats).cancels += 1;
        let snapshot = {
            let mut predictions = lock(&self.predictions);
            let Some(p) = predictions.get_mut(id) else {
                return problem(StatusCode::NOT_FOUND, "Not found.");
            };
            if p.is_terminal() {
                return json(StatusCode::OK, &self.to_json(p));
            }
            p.status = "canceled";
            p.completed_at = Some(SystemTime::now());
            p.clone()
        };
        let body = self.to_json(&snapshot);
        if !snapshot.behaviour.no_webhook && snapshot.wants("completed") {
            tokio::spawn(self.clone().deliver(snapshot, true));
        }
        json(StatusCode::OK, &body)
    }

    /// Replicate's `Cancel-After`: at the deadline a prediction that has not started is
    /// aborted (not billed), one still running is canceled.
    async fn enforce(self: Arc<Self>, id: String, deadline: Duration) {
        tokio::time::sleep(deadline).await;
        let Some(markers) = lock(&self.predictions)
            .get(&id)
            .map(|p| p.behaviour.clone())
        else {
            return;
        };
        self.finish(&id, &markers, |p| {
            if p.status == "starting" {
                p.status = "aborted";
                p.error = Some("The prediction did not start before its deadline.".to_owned());
            } else {
                p.status = "canceled";
            }
        })
        .await;
    }

    /// Moves a prediction through its life, sending webhooks as Replicate would.
    async fn run(self: Arc<Self>, id: String) {
        let Some(first) = lock(&self.predictions).get(&id).cloned() else {
            return;
        };
        let markers = first.behaviour.clone();
        let boot = if markers.cold {
            self.config.start_delay * 20
        } else {
            self.config.start_delay
        };
        tokio::time::sleep(boot).await;
        if markers.abort {
            self.finish(&id, &markers, |p| {
                p.status = "aborted";
                p.error =
                    Some("The prediction was aborted before it started (simulated).".to_owned());
            })
            .await;
            return;
        }
        let Some(started) = self.update(&id, |p| {
            p.status = "processing";
            p.started_at = Some(SystemTime::now());
        }) else {
            return;
        };
        if !markers.no_webhook && !markers.reorder && started.wants("start") {
            self.clone().deliver(started.clone(), false).await;
        }
        let run_time = if markers.slow {
            self.config.run_time * 20
        } else {
            self.config.run_time
        };
        tokio::time::sleep(run_time).await;
        if markers.cancel {
            self.finish(&id, &markers, |p| p.status = "canceled").await;
        } else if markers.fail {
            self.finish(&id, &markers, |p| {
                p.status = "failed";
                p.error = Some("Simulated failure: the prompt asked for [sim:fail].".to_owned());
            })
            .await;
        } else {
            let outcome = self.generate(&started, &markers).await;
            self.finish(&id, &markers, |p| match outcome {
                Ok(output) => {
                    p.status = "succeeded";
                    p.output = output;
                }
                Err(error) => {
                    p.status = "failed";
                    p.error = Some(error);
                }
            })
            .await;
        }
        if markers.reorder && !markers.no_webhook && started.wants("start") {
            self.clone().deliver(started, false).await;
        }
    }

    /// Applies `change` unless the prediction already ended (e.g. it was canceled).
    fn update(&self, id: &str, change: impl FnOnce(&mut SimPrediction)) -> Option<SimPrediction> {
        let mut predictions = lock(&self.predictions);
        let p = predictions.get_mut(id).filter(|p| !p.is_terminal())?;
        change(p);
        Some(p.clone())
    }

    async fn finish(
        self: &Arc<Self>,
        id: &str,
        markers: &Markers,
        change: impl FnOnce(&mut SimPrediction),
    ) {
        let Some(done) = self.update(id, |p| {
            change(p);
            p.completed_at = Some(SystemTime::now());
        }) else {
            return;
        };
        if markers.no_webhook || !done.wants("completed") {
            return;
        }
        self.clone().deliver(done.clone(), true).await;
        if markers.duplicate {
            self.clone().deliver(done, true).await;
        }
    }

    /// Renders the outputs, stores them under `/files/...`, and returns `output` as the
    /// model returns it (a list, or one URL for single-output models).
    async fn generate(&self, p: &SimPrediction, markers: &Markers) -> Result<Value, String> {
        // Every image input is fetched, as the model would; a fetch that fails fails it.
        let mut fetched = BTreeMap::new();
        let mut source = None;
        for field in IMAGE_FIELDS {
            let Some(image) = p.input.get(*field).and_then(Value::as_str) else {
                continue;
            };
            let bytes = self.fetch_input_image(image).await?;
            let digest = hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            fetched.insert((*field).to_owned(), (digest, bytes.len()));
            if *field == "image" && p.model == "nightmareai/real-esrgan" {
                source = Some(
                    images::decode_size(&bytes)
                        .map_err(|e| format!("input image could not be decoded: {e}"))?,
                );
            }
        }
        lock(&self.input_files).insert(p.id.clone(), fetched);
        let plan = images::plan(&p.model, &p.input, source);
        let prompt = p
            .input
            .get("prompt")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let seed = p.input.get("seed").and_then(Value::as_u64).unwrap_or(0);
        let rendered = tokio::task::spawn_blocking(move || {
            (0..plan.count)
                .map(|i| {
                    images::encode(
                        &images::render(plan.width, plan.height, &prompt, seed, i),
                        plan.format,
                        plan.quality,
                    )
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| format!("rendering crashed: {e}"))?
        .map_err(|e| format!("encoding failed: {e}"))?;
        let origin = if markers.foreign_host {
            self.origin.replace("127.0.0.1", "localhost")
        } else {
            self.origin.clone()
        };
        let mut urls = Vec::new();
        for (i, bytes) in rendered.into_iter().enumerate() {
            let key = format!("{}/out-{i}.{}", p.id, plan.format.extension());
            lock(&self.files).insert(
                key.clone(),
                (Bytes::from(bytes), plan.format.content_type()),
            );
            urls.push(format!("{origin}/files/{key}"));
        }
        Ok(if SINGLE_OUTPUT_MODELS.contains(&p.model.as_str()) {
            Value::String(urls.remove(0))
        } else {
            json!(urls)
        })
    }

    async fn fetch_input_image(&self, image: &str) -> Result<Vec<u8>, String> {
        let bytes = if let Some(rest) = image.strip_prefix("data:") {
            let (_, payload) = rest
                .split_once(',')
                .ok_or("input image data URL has no data")?;
            base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|_| "input image data URL is not base64".to_owned())?
        } else {
            let response = self
                .http
                .get(image)
                .send()
                .await
                .map_err(|e| format!("could not fetch input image: {e}"))?;
            if !response.status().is_success() {
                return Err(format!(
                    "could not fetch input image: HTTP {}",
                    response.status()
                ));
            }
            response
                .bytes()
                .await
                .map_err(|e| format!("could not fetch input image: {e}"))?
                .to_vec()
        };
        Ok(bytes)
    }

    /// Posts a signed webhook. Completed events are retried on failure, like Replicate's.
    async fn deliver(self: Arc<Self>, p: SimPrediction, completed: bool) {
        let Some(url) = p.webhook.clone() else { return };
        if p.behaviour.delay_webhooks {
            let delay = lock(&self.faults).webhook_delay_ms;
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        let body = self.to_json(&p).to_string();
        let message_id = format!("msg_{}", new_id());
        let attempts = if completed {
            self.config.webhook_attempts.max(1)
        } else {
            1
        };
        for attempt in 0..attempts {
            let timestamp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let result = self
                .http
                .post(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .header(ID_HEADER, &message_id)
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(
                    SIGNATURE_HEADER,
                    self.secret.sign(&message_id, timestamp, body.as_bytes()),
                )
                .body(body.clone())
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {
                    lock(&self.stats).webhooks_delivered += 1;
                    return;
                }
                Ok(response) => {
                    tracing::debug!(status = %response.status(), attempt, "webhook refused")
                }
                Err(err) => tracing::debug!(error = %err, attempt, "webhook not delivered"),
            }
            lock(&self.stats).webhooks_failed += 1;
            tokio::time::sleep(self.config.webhook_retry_delay * 2u32.pow(attempt)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_resolve_by_id_or_by_model_and_id() {
        let sdxl = KNOWN_VERSIONS[0].0;
        assert_eq!(resolve_version(sdxl).unwrap().0, "stability-ai/sdxl");
        assert_eq!(
            resolve_version(&format!("me/custom:{}", "a".repeat(64)))
                .unwrap()
                .0,
            "me/custom"
        );
        assert!(
            resolve_version(&"b".repeat(64)).is_none(),
            "unknown bare version"
        );
        assert!(resolve_version("stability-ai/sdxl").is_none());
    }

    #[test]
    fn create_bodies_are_checked_like_replicates_schema() {
        assert!(
            parse_create(
                br#"{"input": {}, "webhook": "https://x/y", "webhook_events_filter": ["start"]}"#,
                true
            )
            .is_ok()
        );
        assert!(
            parse_create(br#"{"version": "v", "input": {}}"#, true)
                .unwrap_err()
                .contains("version")
        );
        assert!(
            parse_create(br#"{"input": {}}"#, false)
                .unwrap_err()
                .contains("version is required")
        );
        assert!(
            parse_create(
                br#"{"version": "v", "input": {}, "webhook_events_filter": ["done"]}"#,
                false
            )
            .is_err()
        );
        assert!(parse_create(br#"{"version": "v", "input": []}"#, false).is_err());
        assert!(
            parse_create(
                br#"{"version": "v", "input": {}, "webhook": "ftp://x"}"#,
                false
            )
            .is_err()
        );
    }
}
