//! A whole stack per test: the real handlers behind the dev server's HTTP routes, DynamoDB
//! and S3 on moto (`AWS_ENDPOINT_URL`, started by `make test`) with a table and bucket of
//! the test's own, and a Replicate simulator of its own.

mod calls;
pub mod contract;
pub mod heap;
mod images;
pub mod verify;

pub use images::{hex_sha256, noise_png, noise_png_data_url, noise_png_sized, png_data_url};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imagegen_shared::adapters::aws::{AwsClients, ensure_bucket, ensure_table};
use imagegen_shared::bootstrap::{ProductionApp, build_app};
use imagegen_shared::domain::tenancy::{ApiKey, KeyRecord, LimitsUpdate, TenantId};
use imagegen_shared::lambda::RedeliveringQueue;
use imagegen_shared::ports::accounts::AccountStore;
use local_stack::http_server::{Server, bind_loopback};
use local_stack::meter::Invocations;
use local_stack::sim::{SimConfig, Simulator};
use local_stack::stack::gateway::{
    LambdaConfig, LocalQueue, RunningFunctions, TEMPLATE, function_environment, run_functions,
};
use local_stack::stack::{
    ensure_local_queues, serve_app_metered, spawn_copy_worker_metered, spawn_redelivering_worker,
};
use serde_json::Value;

pub struct Stack {
    pub base: String,
    pub sim: Simulator,
    pub app: Arc<ProductionApp>,
    pub aws: AwsClients,
    pub bucket: String,
    /// A client sending this stack's API key (of tenant `TENANT`) with every request.
    pub http: reqwest::Client,
    /// A client sending no key (downloads, and requests that must be refused).
    pub plain: reqwest::Client,
    pub api_key: String,
    /// The variables the stack's handlers were configured from (as `template.yaml` gives
    /// the functions theirs; `function_environment` turns them into a function's).
    pub vars: HashMap<String, String>,
    serving: Serving,
}

/// What answers a stack's requests.
enum Serving {
    /// The handlers in this process (`app`), with local queue workers: fast, and the clock
    /// of `app` is the one the handlers see.
    InProcess {
        _server: Server,
        _copier: AbortOnDrop,
        _callbacks: AbortOnDrop,
        _creates: AbortOnDrop,
    },
    /// The function binaries behind the local API Gateway, as `make dev` serves them; `app`
    /// only shares their table and bucket.
    Binaries {
        running: RunningFunctions,
        logs: std::path::PathBuf,
    },
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Serving::Binaries { running, logs } = &self.serving {
            running.lambdas.stop();
            // A failing test keeps the functions' output (their only stderr).
            if std::thread::panicking() {
                eprintln!("the functions' output is kept in {}", logs.display());
            } else {
                let _ = std::fs::remove_dir_all(logs);
            }
        }
    }
}

/// The function binaries, built first (a no-op when they are fresh; `cargo test` alone
/// builds no other package's binaries): `target/debug` for a debug-built harness (the
/// tests), `target/release` (as they deploy) for an optimised one (`make load`'s).
///
/// The debug build selects what `make test` builds before it runs the tests, so that the
/// features cargo unifies are the same and nothing is compiled again here.
pub fn function_binaries() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            let mut command = std::process::Command::new(cargo);
            command.args(["build", "-q", "--locked"]);
            let profile = if cfg!(debug_assertions) {
                command.args(["--workspace", "--exclude", "harness", "--tests"]);
                for function in FUNCTIONS {
                    command.args(["--bin", function]);
                }
                "debug"
            } else {
                command.arg("--release");
                for function in FUNCTIONS {
                    command.args(["-p", function]);
                }
                "release"
            };
            let status = command.status().expect("cargo runs");
            assert!(status.success(), "the function binaries build");
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target")
                .join(profile)
        })
        .clone()
}

/// The function crates, as `template.yaml` names their binaries.
pub const FUNCTIONS: [&str; 7] = [
    "submit",
    "webhook",
    "fetch-result",
    "reconciler",
    "copier",
    "callbacks",
    "drainer",
];

/// Stops the stack's copy worker with the stack.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A whole-number setting of a bench or load run from the environment (`default` when unset
/// or not a number).
pub fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The tenant of a stack's own API key.
pub const TENANT: &str = "it";

/// Sets `tenant`'s limits and stores a new API key for it (as `make key` does); returns the
/// key.
pub async fn create_key(
    app: &ProductionApp,
    tenant: &str,
    rate_per_minute: u32,
    budget: Option<u64>,
) -> String {
    let key = ApiKey::generate();
    let tenant = TenantId::parse(tenant).expect("a tenant name");
    let limits = LimitsUpdate::new(tenant.clone(), Some(rate_per_minute), Some(budget))
        .expect("valid limits");
    app.records
        .update_tenant(&limits)
        .await
        .expect("limits stored");
    let record = KeyRecord::new(&key, tenant, app.clock.now());
    app.records.create_key(&record).await.expect("key stored");
    key.expose().to_owned()
}

/// A client that sends `Authorization: Bearer <key>` with every request.
pub fn client_with_key(key: &str) -> reqwest::Client {
    let mut headers = http::HeaderMap::new();
    let value = http::HeaderValue::from_str(&format!("Bearer {key}")).expect("a header value");
    headers.insert(http::header::AUTHORIZATION, value);
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("a client")
}

/// The local AWS emulator: `AWS_ENDPOINT_URL` (one moto for the whole run, as `make test`
/// provides it), else a moto server of this test process's own, started on first use and
/// stopped when the process ends, so that `cargo test` works by itself.
pub fn aws_endpoint() -> String {
    if let Ok(url) = std::env::var("AWS_ENDPOINT_URL") {
        return url;
    }
    static OWN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    OWN.get_or_init(start_own_moto).clone()
}

/// Starts `MOTO_SERVER` (default: the project's `infra/scripts/moto-server`) on 127.0.0.1 under
/// a watchdog shell that stops it (by its PID) once this process is gone.
fn start_own_moto() -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let program = std::env::var("MOTO_SERVER")
        .unwrap_or_else(|_| format!("{root}/infra/scripts/moto-server"));
    assert!(
        std::path::Path::new(&program).exists()
            && (std::env::var_os("MOTO_SERVER").is_some()
                || std::path::Path::new(&format!("{root}/.venv/bin/moto_server")).exists()),
        "no AWS_ENDPOINT_URL and no moto at {program}: run `make venv` once, or `make test`"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    // What moto says if it cannot start (an out-of-date `.venv`, say) is kept until the
    // watchdog ends, and shown if it never answers.
    let log = std::env::temp_dir().join(format!("imagegen-moto-{port}.log"));
    let watchdog = format!(
        "\"$0\" -H 127.0.0.1 -p {port} >/dev/null 2>\"$1\" & moto=$!; \
         while kill -0 {parent} 2>/dev/null; do sleep 0.5; done; kill $moto; rm -f \"$1\"",
        parent = std::process::id()
    );
    let mut watchdog = std::process::Command::new("sh")
        .arg("-c")
        .arg(watchdog)
        .arg(&program)
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("moto starts");
    // Reaped if it ends first (it normally outlives this process).
    std::thread::spawn(move || watchdog.wait());
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(
            Instant::now() < deadline
                && !said.contains("Traceback")
                && !said.contains("moto-server:"),
            "moto did not start: {said}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    format!("http://127.0.0.1:{port}")
}

impl Stack {
    /// A stack served by the function binaries (the contract as it deploys).
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// `start`; `adjust` may change the functions' environment before they start.
    pub async fn start_with(adjust: impl FnOnce(&mut HashMap<String, String>)) -> Self {
        Self::start_binaries_with(adjust).await
    }

    /// A stack whose handlers run in this process: for tests that move `app`'s clock (the
    /// function processes keep their own time).
    pub async fn start_in_process() -> Self {
        Self::start_on(&aws_endpoint(), SimConfig::default(), None, |_| {}).await
    }

    /// `start_with` on another AWS endpoint (`make cost`'s metering proxy), with this
    /// simulator configuration; `invocations`, if given, meters the handlers as Lambda calls.
    /// A stack served by the function binaries behind the local API Gateway (the contract
    /// as it deploys), with this environment adjustment.
    pub async fn start_binaries_with(adjust: impl FnOnce(&mut HashMap<String, String>)) -> Self {
        Self::start_serving(&aws_endpoint(), SimConfig::default(), None, adjust, true).await
    }

    /// `start_binaries_with`, with this simulator configuration (`make load`: Replicate's
    /// create limit).
    pub async fn start_binaries_with_sim(
        sim: SimConfig,
        adjust: impl FnOnce(&mut HashMap<String, String>),
    ) -> Self {
        Self::start_serving(&aws_endpoint(), sim, None, adjust, true).await
    }

    pub async fn start_on(
        aws_endpoint: &str,
        sim: SimConfig,
        invocations: Option<Arc<Invocations>>,
        adjust: impl FnOnce(&mut HashMap<String, String>),
    ) -> Self {
        Self::start_serving(aws_endpoint, sim, invocations, adjust, false).await
    }

    async fn start_serving(
        aws_endpoint: &str,
        sim: SimConfig,
        invocations: Option<Arc<Invocations>>,
        adjust: impl FnOnce(&mut HashMap<String, String>),
        binaries: bool,
    ) -> Self {
        let sim = Simulator::start(sim).await.expect("simulator starts");
        let aws = AwsClients::local(aws_endpoint).await;
        let name = format!("it-{}", uuid::Uuid::new_v4().simple());
        ensure_table(&aws.dynamodb, &name).await.expect("table");
        ensure_bucket(&aws.s3, &name).await.expect("bucket");
        let queues = ensure_local_queues(&aws.sqs, &name).await.expect("queues");
        let queue = queues.copy.clone();
        let listener = bind_loopback(0).await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let mut vars: HashMap<String, String> = [
            ("TABLE_NAME", name.clone()),
            ("BUCKET_NAME", name.clone()),
            ("COPY_QUEUE_URL", queue.clone()),
            ("CALLBACK_QUEUE_URL", queues.callback.clone()),
            (
                "CALLBACK_DEAD_LETTER_QUEUE_URL",
                queues.callback_dead_letter.clone(),
            ),
            ("CREATE_QUEUE_URL", queues.create.clone()),
            // Callback retries after 1 s, 2 s, … instead of 30 s.
            ("CALLBACK_RETRY_BASE_SECONDS", "1".to_owned()),
            ("PUBLIC_BASE_URL", format!("http://{addr}")),
            ("REPLICATE_API_BASE_URL", sim.api_base()),
            ("REPLICATE_API_TOKEN", "r8_integration".to_owned()),
            ("OUTPUT_HOST_ALLOWLIST", sim.output_host()),
            ("FETCH_SYNC_INTERVAL_SECONDS", "1".to_owned()),
            // Unconfirmed creates are looked for in the simulator's list after 2 s, not 5 min.
            ("RESOLVE_AFTER_SECONDS", "2".to_owned()),
            // Bursts are queued only in the tests that ask for a rate (README, "Bursts").
            ("REPLICATE_CREATES_PER_MINUTE", "60000".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        adjust(&mut vars);
        let app = Arc::new(
            build_app(aws.clone(), |n| vars.get(n).cloned())
                .await
                .expect("app builds"),
        );
        let serving = if binaries {
            let lookup = |n: &str| vars.get(n).cloned();
            let env = function_environment(lookup, aws_endpoint, &aws.ssm)
                .await
                .expect("the functions' environment");
            let logs = std::env::temp_dir().join(format!("imagegen-{name}"));
            std::fs::create_dir_all(&logs).expect("log directory");
            let directory = function_binaries();
            let config = LambdaConfig {
                binaries: &directory,
                env: &env,
                // As `make dev`: `DEV_FUNCTION_PROCESSES` (2) per function.
                processes: std::env::var("DEV_FUNCTION_PROCESSES")
                    .ok()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(2),
                logs: Some(&logs),
            };
            let sources = [
                LocalQueue {
                    logical_id: "CopyQueue",
                    url: queue,
                },
                LocalQueue {
                    logical_id: "CallbackQueue",
                    url: queues.callback.clone(),
                },
                LocalQueue {
                    logical_id: "CreateQueue",
                    url: queues.create.clone(),
                },
            ];
            let running = run_functions(
                listener,
                TEMPLATE,
                &config,
                &aws.sqs,
                &sources,
                Duration::from_secs(3600),
            )
            .await
            .expect("the functions start");
            Serving::Binaries { running, logs }
        } else {
            let copier =
                spawn_copy_worker_metered(app.clone(), aws.sqs.clone(), queue, invocations.clone());
            let callbacks = spawn_redelivering_worker(
                app.clone(),
                aws.sqs.clone(),
                RedeliveringQueue::Callbacks,
            );
            let creates =
                spawn_redelivering_worker(app.clone(), aws.sqs.clone(), RedeliveringQueue::Creates);
            Serving::InProcess {
                _server: serve_app_metered(listener, app.clone(), invocations),
                _copier: AbortOnDrop(copier),
                _callbacks: AbortOnDrop(callbacks),
                _creates: AbortOnDrop(creates),
            }
        };
        let api_key = create_key(&app, TENANT, 100_000, None).await;
        Self {
            base: format!("http://{addr}"),
            sim,
            app,
            aws,
            bucket: name,
            http: client_with_key(&api_key),
            plain: reqwest::Client::new(),
            api_key,
            vars,
            serving,
        }
    }

    /// The functions serving this stack, when it runs the binaries.
    pub fn functions(&self) -> Option<&RunningFunctions> {
        match &self.serving {
            Serving::Binaries { running, .. } => Some(running),
            Serving::InProcess { .. } => None,
        }
    }

    /// The EMF metric lines `function`'s processes wrote (a binaries stack only).
    pub fn metric_lines(&self, function: &str) -> Vec<Value> {
        let Serving::Binaries { logs, .. } = &self.serving else {
            return Vec::new();
        };
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(logs).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&format!("{function}-")) {
                continue;
            }
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            lines.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .filter(|v| v.get("_aws").is_some()),
            );
        }
        lines
    }
}

/// The record's webhook token: what Replicate's deliveries carry in their URL.
pub async fn webhook_query(stack: &Stack, id: &str) -> String {
    let token = stack
        .record(id)
        .await
        .and_then(|r| r.webhook_token)
        .unwrap_or_default();
    format!("id={id}&token={token}")
}
