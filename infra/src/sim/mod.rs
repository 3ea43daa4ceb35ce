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

mod answers;
mod faults;
mod files;
#[cfg(test)]
mod http_tests;
pub mod images;
mod lifecycle;
mod list;
mod routing;
mod webhooks;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use imagegen_shared::domain::signing::SigningSecret;
use serde::Serialize;
use serde_json::Value;

use self::answers::too_large;
pub use self::faults::Faults;
pub use self::files::InputFiles;
use self::lifecycle::SimPrediction;
use self::routing::{MAX_REQUEST_BYTES, handle};
use crate::http_server::{Server, bind_loopback, serve};

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
    /// Replicate's create limit: creates a minute, with bursts of two seconds' worth; a
    /// create over it is answered 429 with `Retry-After`. `None`: unlimited.
    pub creates_per_minute: Option<u32>,
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
            creates_per_minute: None,
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
    /// Creates refused by `creates_per_minute` (counted in `throttled` too).
    pub rate_limited: u64,
    pub server_errors: u64,
    pub failed_downloads: u64,
    /// Creates that created and ran their prediction but were answered with a gateway error.
    pub lost_creates: u64,
    /// Creates that created and ran their prediction but answered after `create_slow_ms`.
    pub slow_creates: u64,
}

struct State {
    config: SimConfig,
    /// `http://127.0.0.1:{port}`
    origin: String,
    secret: SigningSecret,
    predictions: Mutex<HashMap<String, SimPrediction>>,
    files: Mutex<HashMap<String, (Bytes, &'static str)>>,
    stats: Mutex<Stats>,
    faults: Mutex<Faults>,
    /// Files whose first download already failed (on purpose).
    failed_once: Mutex<std::collections::HashSet<String>>,
    /// The input images each prediction fetched: field → (SHA-256 hex, size).
    input_files: Mutex<HashMap<String, InputFiles>>,
    /// The create limit's token bucket: tokens left, and when it was last filled.
    create_tokens: Mutex<(f64, std::time::Instant)>,
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
        let secret = SigningSecret::parse(&config.secret).map_err(|_| SimError::Secret)?;
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
            create_tokens: Mutex::new((
                config.creates_per_minute.map_or(0.0, faults::create_burst),
                std::time::Instant::now(),
            )),
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
