//! `make dev`: the whole stack on 127.0.0.1 (README, "Try it").
//!
//! - AWS: `AWS_ENDPOINT_URL` if set; else a moto server it starts (and stops) itself.
//!   The table and bucket are created if missing.
//! - Replicate: `REPLICATE_API_BASE_URL` if set; else the real API if `REPLICATE_API_TOKEN`
//!   is set (without webhooks, which cannot reach a laptop: fetches sync instead); else the
//!   simulator, in this process.
//! - Callers: the keys in `DEV_API_KEYS`, or a new key for tenant `dev`, printed as
//!   `api key <key>`; both stored (hashed) before `ready`. `.dev-stack.json` tells
//!   `make key`, `make revoke` and `make demo` where the stack is, while it runs.
//! - Serves the API on `DEV_PORT` (3000) and prints `ready http://127.0.0.1:3000`.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imagegen_shared::adapters::aws::{AwsClients, ensure_bucket, ensure_table};
use imagegen_shared::bootstrap::{ProductionApp, build_app};
use imagegen_shared::config::DEFAULT_OUTPUT_HOST_ALLOWLIST;
use imagegen_shared::lambda::RedeliveringQueue;
use local_stack::http_server::bind_loopback;
use local_stack::ops::keys::{
    DEV_STATE_FILE, DevKeys, DevState, NewKey, apply_limits, limits_change, parse_dev_keys,
};
use local_stack::sim::{SimConfig, Simulator};
use local_stack::stack::gateway::{
    LambdaConfig, LocalQueue, TEMPLATE, function_environment, run_functions,
};
use local_stack::stack::{
    ensure_local_queues, serve_app, spawn_copy_worker, spawn_redelivering_worker,
};
use tokio::process::{Child, Command};

const DEFAULT_TABLE: &str = "imagegen-local";
const DEFAULT_BUCKET: &str = "imagegen-local";
const DEFAULT_QUEUE: &str = "imagegen-local-copy";

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts moto on 127.0.0.1 and waits until it answers.
async fn start_moto() -> Result<(Child, String), String> {
    let program = env("MOTO_SERVER").unwrap_or_else(|| "infra/scripts/moto-server".to_owned());
    let port = match env("MOTO_PORT") {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("MOTO_PORT `{p}` is not a port"))?,
        None => free_port().map_err(|e| e.to_string())?,
    };
    let child = Command::new(&program)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!("could not start `{program}` (run `make dev`, which installs it): {e}")
        })?;
    let url = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if reqwest::get(format!("{url}/moto-api/")).await.is_ok() {
            return Ok((child, url));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err("moto server did not start within 30 s".to_owned())
}

async fn run() -> Result<(), String> {
    imagegen_shared::telemetry::init_json_logs(env("RUST_LOG").as_deref());
    // Values the stack adds to the environment for the app (the process env is left alone).
    let mut extra: HashMap<String, String> = HashMap::new();
    extra.insert(
        "TABLE_NAME".into(),
        env("TABLE_NAME").unwrap_or_else(|| DEFAULT_TABLE.into()),
    );
    extra.insert(
        "BUCKET_NAME".into(),
        env("BUCKET_NAME").unwrap_or_else(|| DEFAULT_BUCKET.into()),
    );

    let mut moto = None;
    let aws_endpoint = match env("AWS_ENDPOINT_URL") {
        Some(endpoint) => endpoint,
        None => {
            let (child, url) = start_moto().await?;
            moto = Some(child);
            url
        }
    };
    let aws = AwsClients::local(&aws_endpoint).await;
    ensure_table(&aws.dynamodb, &extra["TABLE_NAME"])
        .await
        .map_err(|e| e.to_string())?;
    ensure_bucket(&aws.s3, &extra["BUCKET_NAME"])
        .await
        .map_err(|e| e.to_string())?;
    if env("COPY_QUEUE_URL").is_none()
        || env("CALLBACK_QUEUE_URL").is_none()
        || env("CREATE_QUEUE_URL").is_none()
    {
        let queues = ensure_local_queues(&aws.sqs, DEFAULT_QUEUE)
            .await
            .map_err(|e| e.to_string())?;
        for (name, url) in [
            ("COPY_QUEUE_URL", queues.copy),
            ("CALLBACK_QUEUE_URL", queues.callback),
            (
                "CALLBACK_DEAD_LETTER_QUEUE_URL",
                queues.callback_dead_letter,
            ),
            ("CREATE_QUEUE_URL", queues.create),
        ] {
            if env(name).is_none() {
                extra.insert(name.into(), url);
            }
        }
    }

    let mut sim = None;
    if env("REPLICATE_API_BASE_URL").is_some() {
        if env("REPLICATE_API_TOKEN").is_none() {
            extra.insert("REPLICATE_API_TOKEN".into(), "local-dev".into());
        }
    } else if env("REPLICATE_API_TOKEN").is_some() {
        if env("PUBLIC_BASE_URL").is_none() {
            extra.insert("SEND_WEBHOOKS".into(), "false".into());
        }
    } else {
        let port = env("SIM_PORT").and_then(|p| p.parse().ok()).unwrap_or(0);
        let faults = match env("SIM_FAULTS") {
            Some(json) => serde_json::from_str(&json).map_err(|e| format!("SIM_FAULTS: {e}"))?,
            None => Default::default(),
        };
        // Replicate's own create limit, to try bursts against (README, "Bursts").
        let creates_per_minute = match env("SIM_CREATES_PER_MINUTE") {
            Some(n) => Some(
                n.parse()
                    .map_err(|_| format!("SIM_CREATES_PER_MINUTE: `{n}` is not a number"))?,
            ),
            None => None,
        };
        let simulator = Simulator::start(SimConfig {
            port,
            faults,
            creates_per_minute,
            ..SimConfig::default()
        })
        .await
        .map_err(|e| e.to_string())?;
        let allow =
            env("OUTPUT_HOST_ALLOWLIST").unwrap_or_else(|| DEFAULT_OUTPUT_HOST_ALLOWLIST.into());
        extra.insert(
            "OUTPUT_HOST_ALLOWLIST".into(),
            format!("{allow},{}", simulator.output_host()),
        );
        extra.insert("REPLICATE_API_BASE_URL".into(), simulator.api_base());
        extra.insert("REPLICATE_API_TOKEN".into(), "local-dev".into());
        extra.insert(
            "REPLICATE_WEBHOOK_SECRET".into(),
            simulator.secret().to_owned(),
        );
        sim = Some(simulator);
    }

    let port = env("DEV_PORT").and_then(|p| p.parse().ok()).unwrap_or(3000);
    let listener = bind_loopback(port)
        .await
        .map_err(|e| format!("could not listen on 127.0.0.1:{port}: {e}"))?;
    // Webhooks come back to this server (the simulator is on this machine too); behind API
    // Gateway the functions take the API's own domain instead.
    if env("PUBLIC_BASE_URL").is_none()
        && let Ok(addr) = listener.local_addr()
    {
        extra.insert("PUBLIC_BASE_URL".into(), format!("http://{addr}"));
    }
    // `make demo CALLBACK=1` receives its callback on the next port: listed, so plain http
    // to loopback is allowed there (and only there).
    let callback_host = match env("CALLBACK_ALLOW_HOSTS") {
        Some(listed) => listed.split(',').next().map(|h| h.trim().to_owned()),
        None => {
            let bound = listener.local_addr().map_or(port, |a| a.port());
            let host = format!("127.0.0.1:{}", bound.wrapping_add(1));
            extra.insert("CALLBACK_ALLOW_HOSTS".into(), host.clone());
            Some(host)
        }
    };
    let sqs = aws.sqs.clone();
    let ssm = aws.ssm.clone();
    let lookup = |name: &str| extra.get(name).cloned().or_else(|| env(name));
    // An app in this process stores the callers' keys; requests go to the functions.
    let app = build_app(aws, lookup).await.map_err(|e| e.to_string())?;
    let api_key = store_api_keys(&app).await?;
    let table_name = app.settings.table_name.clone();
    let every = Duration::from_secs(
        env("RECONCILE_INTERVAL_SECONDS")
            .and_then(|s| s.parse().ok())
            .unwrap_or(60),
    );
    let serving = if env("DEV_FUNCTIONS").as_deref() == Some("in-process") {
        Serving::InProcess(serve_in_process(Arc::new(app), sqs, listener, every))
    } else {
        let functions_env = function_environment(lookup, &aws_endpoint, &ssm).await?;
        let binaries = std::env::current_exe()
            .map_err(|e| e.to_string())?
            .parent()
            .map(Path::to_path_buf)
            .ok_or("the dev server's directory is unknown")?;
        let queues = [
            LocalQueue {
                logical_id: "CopyQueue",
                url: app.settings.copy_queue_url.clone(),
            },
            LocalQueue {
                logical_id: "CallbackQueue",
                url: app.settings.callback_queue_url.clone(),
            },
            LocalQueue {
                logical_id: "CreateQueue",
                url: app.settings.create_queue_url.clone(),
            },
        ];
        let processes = env("DEV_FUNCTION_PROCESSES")
            .and_then(|n| n.parse().ok())
            .unwrap_or(2);
        let config = LambdaConfig {
            binaries: &binaries,
            env: &functions_env,
            processes,
            logs: None,
        };
        Serving::Functions(run_functions(listener, TEMPLATE, &config, &sqs, &queues, every).await?)
    };
    let addr = match &serving {
        Serving::InProcess(running) => running.server.addr,
        Serving::Functions(running) => running.server.addr,
    };
    let state = DevState {
        aws_endpoint,
        table_name,
        base_url: format!("http://{addr}"),
        api_key,
        callback_host,
    };
    // `DEV_STATE_PATH` elsewhere: a second stack (`make fuzz`) must not replace the file of
    // the `make dev` that `make key` and `make demo` act on.
    let state_path = env("DEV_STATE_PATH").unwrap_or_else(|| DEV_STATE_FILE.to_owned());
    let state_file = Path::new(&state_path);
    if let Err(err) = state.write(state_file) {
        eprintln!("dev-server: could not write {state_path} (make key/demo need it): {err}");
    }
    println!("ready http://{addr}");
    let _ = std::io::stdout().flush();

    wait_for_shutdown().await;
    let _ = std::fs::remove_file(state_file);
    drop(serving);
    drop(sim);
    if let Some(mut child) = moto {
        let _ = child.kill().await;
    }
    Ok(())
}

/// How requests are served: by the functions' binaries behind the local API Gateway (the
/// default), or by the handlers in this process (`DEV_FUNCTIONS=in-process`: no binaries to
/// build, one process to debug).
enum Serving {
    Functions(local_stack::stack::gateway::RunningFunctions),
    InProcess(InProcess),
}

/// The in-process stack: the router, the queue workers and the reconciler's timer.
struct InProcess {
    server: local_stack::http_server::Server,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for InProcess {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn serve_in_process(
    app: Arc<ProductionApp>,
    sqs: aws_sdk_sqs::Client,
    listener: tokio::net::TcpListener,
    every: Duration,
) -> InProcess {
    let copier = spawn_copy_worker(
        app.clone(),
        sqs.clone(),
        app.settings.copy_queue_url.clone(),
    );
    let callbacks =
        spawn_redelivering_worker(app.clone(), sqs.clone(), RedeliveringQueue::Callbacks);
    let creates = spawn_redelivering_worker(app.clone(), sqs, RedeliveringQueue::Creates);
    let server = serve_app(listener, app.clone());
    let reconciler = tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            app.reconcile(None).await;
        }
    });
    InProcess {
        server,
        tasks: vec![copier, callbacks, creates, reconciler],
    }
}

/// Stores the callers' keys before `ready`: `DEV_API_KEYS` if set, else a new key for tenant
/// `dev`, printed once as `api key <key>`. Returns the key `make demo` uses.
async fn store_api_keys(app: &ProductionApp) -> Result<String, String> {
    let given = env("DEV_API_KEYS");
    let DevKeys { limits, keys } = match &given {
        Some(json) => parse_dev_keys(json)?,
        None => {
            let change = limits_change("dev", None, None)?;
            let key = NewKey::new(None, &change.tenant)?;
            DevKeys {
                limits: vec![change],
                keys: vec![key],
            }
        }
    };
    for change in &limits {
        apply_limits(&app.records, change).await?;
    }
    for key in &keys {
        key.store(&app.records).await?;
    }
    let first = keys.first().ok_or("DEV_API_KEYS is an empty list")?;
    if given.is_none() {
        println!("api key {}", first.key.expose());
    }
    Ok(first.key.expose().to_owned())
}

async fn wait_for_shutdown() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("dev-server: {err}");
            ExitCode::FAILURE
        }
    }
}
