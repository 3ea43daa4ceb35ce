//! The functions as they deploy, run locally without Docker: each Lambda binary of
//! `template.yaml` runs as its own processes under a local Runtime API (`runtime`), an
//! HTTP front turns requests into API Gateway HTTP API v2 events for the function the
//! template routes them to (`front`), SQS queues feed their consumers SQS batch events with
//! partial batch responses, and the schedule sends EventBridge scheduled events. A route
//! that is not in the template is not served.

pub mod events;
pub mod front;
pub mod runtime;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::process::{Child, Command};

use crate::sam::{Function, Template};
use runtime::{InvokeError, RuntimeApi};

/// One function of the template: its Runtime API and the processes polling it. A process
/// that exits is started again (as Lambda replaces a failed execution environment); the
/// event it was handling fails (`InvokeError::Exited`: a 500 at the front, as Lambda's
/// `Runtime.ExitError` is behind API Gateway).
pub struct LocalFunction {
    pub name: String,
    pub api: RuntimeApi,
    spec: ProcessSpec,
    processes: std::sync::Mutex<Vec<Process>>,
    stopping: std::sync::atomic::AtomicBool,
}

/// One running process and the Runtime API endpoint it polls.
struct Process {
    child: Child,
    endpoint: runtime::Endpoint,
}

/// How one of a function's processes is started.
struct ProcessSpec {
    name: String,
    binary: std::path::PathBuf,
    env: Vec<(String, String)>,
    logs: Option<std::path::PathBuf>,
}

impl ProcessSpec {
    /// Process `n`, polling `endpoint`.
    async fn start(&self, n: usize, api: &RuntimeApi) -> Result<Process, String> {
        let endpoint = api
            .endpoint()
            .await
            .map_err(|e| format!("{}: Runtime API: {e}", self.name))?;
        let child = self.spawn(n, &endpoint.address())?;
        Ok(Process { child, endpoint })
    }

    fn spawn(&self, n: usize, runtime_api: &str) -> Result<Child, String> {
        let (stdout, stderr) = match &self.logs {
            Some(dir) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("{}-{n}.log", self.name)))
                    .map_err(|e| format!("{}: log file: {e}", self.name))?;
                let copy = file
                    .try_clone()
                    .map_err(|e| format!("{}: log file: {e}", self.name))?;
                (
                    std::process::Stdio::from(file),
                    std::process::Stdio::from(copy),
                )
            }
            None => (
                std::process::Stdio::inherit(),
                std::process::Stdio::inherit(),
            ),
        };
        Command::new(&self.binary)
            .stdout(stdout)
            .stderr(stderr)
            // Exactly the function's environment, as in Lambda: nothing of this shell's.
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                format!(
                    "{}: could not start {}: {e}",
                    self.name,
                    self.binary.display()
                )
            })
    }
}

impl Drop for LocalFunction {
    fn drop(&mut self) {
        self.stop();
    }
}

impl LocalFunction {
    pub async fn invoke(&self, event: Bytes) -> Result<Bytes, InvokeError> {
        self.api.invoke(event).await
    }

    /// The OS process ids of its processes.
    pub fn pids(&self) -> Vec<u32> {
        lock(&self.processes)
            .iter()
            .filter_map(|p| p.child.id())
            .collect()
    }

    /// Kills its processes for good (before the Runtime API goes: a runtime whose API
    /// vanished under it only prints connection errors).
    pub fn stop(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        for process in lock(&self.processes).iter_mut() {
            let _ = process.child.start_kill();
        }
        self.api.fail_all_in_flight();
    }

    /// Fails the event each exited process held and starts another in its place, until the
    /// function is stopped.
    async fn restart_exited(&self) {
        let exited: Vec<usize> = {
            let mut processes = lock(&self.processes);
            let mut exited = Vec::new();
            for (n, process) in processes.iter_mut().enumerate() {
                if let Ok(Some(status)) = process.child.try_wait() {
                    tracing::warn!(function = %self.name, %status, "function process exited; starting another");
                    self.api.process_exited(&process.endpoint);
                    exited.push(n);
                }
            }
            exited
        };
        for n in exited {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            match self.spec.start(n, &self.api).await {
                Ok(mut replacement) => {
                    // `stop` may have run meanwhile: then this one goes too.
                    if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                        let _ = replacement.child.start_kill();
                    }
                    lock(&self.processes)[n] = replacement;
                }
                Err(err) => {
                    tracing::error!(function = %self.name, error = %err, "could not restart")
                }
            }
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Watches `function`'s processes every half second while it exists.
async fn supervise(function: std::sync::Weak<LocalFunction>) {
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some(function) = function.upgrade() else {
            return;
        };
        if function.stopping.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        function.restart_exited().await;
    }
}

/// Every function of the template, running.
pub struct LocalLambdas {
    pub template: Template,
    functions: HashMap<String, Arc<LocalFunction>>,
}

/// What the functions are started with.
pub struct LambdaConfig<'a> {
    /// Where the built binaries are (`target/debug`).
    pub binaries: &'a Path,
    /// The functions' environment: the template's variables, resolved for this stack.
    pub env: &'a HashMap<String, String>,
    /// Processes per function: how many events each handles at once.
    pub processes: usize,
    /// Where each process's stdout (its logs and metric lines) goes, as
    /// `<dir>/<function>-<n>.log`; `None`: this process's stdout, as Lambda's log stream.
    pub logs: Option<&'a Path>,
}

impl LocalLambdas {
    /// Starts every function of `template` that names a binary.
    pub async fn start(template: Template, config: &LambdaConfig<'_>) -> Result<Self, String> {
        let mut functions = HashMap::new();
        for function in &template.functions {
            let Some(binary) = &function.binary else {
                continue;
            };
            let path = config.binaries.join(binary);
            if !path.exists() {
                return Err(format!(
                    "{} is not built: cargo build -p {binary}",
                    path.display()
                ));
            }
            let local = Arc::new(start_function(function, &path, config).await?);
            tokio::spawn(supervise(Arc::downgrade(&local)));
            functions.insert(function.name.clone(), local);
        }
        Ok(Self {
            template,
            functions,
        })
    }

    pub fn function(&self, name: &str) -> Option<Arc<LocalFunction>> {
        self.functions.get(name).cloned()
    }

    /// The function fed by the queue `queue` (its logical id, e.g. `CopyQueue`).
    pub fn queue_consumer(&self, queue: &str) -> Option<Arc<LocalFunction>> {
        self.function(&self.template.queue_consumer(queue)?.name)
    }

    /// The functions run on a schedule.
    pub fn scheduled(&self) -> Vec<Arc<LocalFunction>> {
        self.template
            .functions
            .iter()
            .filter(|f| f.schedule.is_some())
            .filter_map(|f| self.function(&f.name))
            .collect()
    }

    /// Every process of every function.
    pub fn pids(&self) -> Vec<u32> {
        self.functions.values().flat_map(|f| f.pids()).collect()
    }

    pub fn stop(&self) {
        self.functions.values().for_each(|f| f.stop());
    }
}

async fn start_function(
    function: &Function,
    binary: &Path,
    config: &LambdaConfig<'_>,
) -> Result<LocalFunction, String> {
    LocalFunction::start(
        &FunctionProcess {
            name: &function.name,
            binary,
            memory_mb: function.memory_mb,
            timeout: Duration::from_secs(u64::from(function.timeout_s.max(1))),
        },
        config.env,
        config.processes,
        config.logs,
    )
    .await
}

/// One function's binary and the Lambda settings its processes are started with.
pub struct FunctionProcess<'a> {
    pub name: &'a str,
    pub binary: &'a Path,
    pub memory_mb: u32,
    pub timeout: Duration,
}

impl LocalFunction {
    /// Starts `processes` processes of `function` under a Runtime API of their own, with
    /// `env` plus the variables Lambda itself sets. Not supervised: `LocalLambdas` restarts
    /// the processes of the functions it starts.
    pub async fn start(
        function: &FunctionProcess<'_>,
        env: &HashMap<String, String>,
        processes: usize,
        logs: Option<&Path>,
    ) -> Result<Self, String> {
        let name = function.name;
        let api = RuntimeApi::new(name, function.timeout);
        let mut env: Vec<(String, String)> =
            env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.extend(
            [
                ("AWS_LAMBDA_FUNCTION_NAME", name.to_owned()),
                (
                    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                    function.memory_mb.to_string(),
                ),
                ("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST".to_owned()),
                ("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}")),
                ("AWS_LAMBDA_LOG_STREAM_NAME", "local".to_owned()),
            ]
            .map(|(k, v)| (k.to_owned(), v)),
        );
        let spec = ProcessSpec {
            name: name.to_owned(),
            binary: function.binary.to_path_buf(),
            env,
            logs: logs.map(Path::to_path_buf),
        };
        let mut started = Vec::new();
        for n in 0..processes.max(1) {
            started.push(spec.start(n, &api).await?);
        }
        Ok(Self {
            name: name.to_owned(),
            api,
            spec,
            processes: std::sync::Mutex::new(started),
            stopping: std::sync::atomic::AtomicBool::new(false),
        })
    }
}

/// Feeds `function` from the SQS queue at `queue_url` as Lambda's event source mapping does:
/// batches of up to `batch_size` as SQS events, deleting what the partial batch response does
/// not report as failed (a failed or crashed invocation leaves the whole batch to come back).
pub fn spawn_queue_source(
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
    queue_arn: String,
    batch_size: u32,
    function: Arc<LocalFunction>,
) -> tokio::task::JoinHandle<()> {
    crate::stack::spawn_poller(
        sqs,
        queue_url,
        "event source",
        batch_size,
        move |messages| {
            let function = function.clone();
            let event = events::sqs_batch(&messages, &queue_arn);
            async move {
                let all = || {
                    messages
                        .iter()
                        .filter_map(|m| m.message_id.clone())
                        .collect()
                };
                match function.invoke(event).await {
                    Ok(response) => match events::batch_failures(&response) {
                        Some(failed) => failed.into_iter().collect(),
                        None => {
                            tracing::warn!(function = %function.name, "not a partial batch response; the batch comes back");
                            all()
                        }
                    },
                    Err(err) => {
                        tracing::warn!(function = %function.name, error = %err, "queue batch failed; it comes back");
                        all()
                    }
                }
            }
        },
    )
}

/// The functions serving a local stack: the HTTP front, the queue sources, the schedule.
/// Dropping it stops them all (and the processes with them).
pub struct RunningFunctions {
    pub server: crate::http_server::Server,
    pub lambdas: Arc<LocalLambdas>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for RunningFunctions {
    fn drop(&mut self) {
        self.lambdas.stop();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Where the local stack's queues are, by the template's logical id.
pub struct LocalQueue {
    pub logical_id: &'static str,
    pub url: String,
}

/// Starts every function of the template (`template_text`) and serves them: HTTP routes on
/// `listener`, each queue to its consumer, scheduled functions every `schedule_every`.
pub async fn run_functions(
    listener: tokio::net::TcpListener,
    template_text: &str,
    config: &LambdaConfig<'_>,
    sqs: &aws_sdk_sqs::Client,
    queues: &[LocalQueue],
    schedule_every: Duration,
) -> Result<RunningFunctions, String> {
    let template = Template::parse(template_text)?;
    let lambdas = Arc::new(LocalLambdas::start(template, config).await?);
    let mut tasks = Vec::new();
    for queue in queues {
        let consumer = lambdas
            .template
            .queue_consumer(queue.logical_id)
            .ok_or_else(|| format!("no function reads {} in the template", queue.logical_id))?;
        let batch = consumer.queue_batch_size.unwrap_or(10);
        let function = lambdas
            .function(&consumer.name)
            .ok_or_else(|| format!("{} is not running", consumer.name))?;
        let arn = queue_arn(sqs, &queue.url).await?;
        tasks.push(spawn_queue_source(
            sqs.clone(),
            queue.url.clone(),
            arn,
            batch,
            function,
        ));
    }
    for function in lambdas.scheduled() {
        tasks.push(spawn_schedule(function, schedule_every));
    }
    let server = front::serve_gateway(listener, lambdas.clone());
    Ok(RunningFunctions {
        server,
        lambdas,
        tasks,
    })
}

async fn queue_arn(sqs: &aws_sdk_sqs::Client, url: &str) -> Result<String, String> {
    use aws_sdk_sqs::types::QueueAttributeName;
    sqs.get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(e).to_string())?
        .attributes
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .ok_or_else(|| format!("{url} has no ARN"))
}

/// The template, as the local front routes by it.
pub const TEMPLATE: &str = include_str!("../../../../template.yaml");

/// Where the SSM parameter holding the token lives locally (moto's SSM).
const LOCAL_TOKEN_PARAMETER: &str = "/imagegen-local/replicate-api-token";

/// The functions' environment for a local stack: every variable the functions read (asked
/// of `lookup`), with the Replicate token moved into moto's SSM as a SecureString and
/// named by `REPLICATE_API_TOKEN_PARAMETER`, as the SAM stack does; plus the AWS SDK's
/// endpoint, region and (placeholder) credentials.
pub async fn function_environment(
    lookup: impl Fn(&str) -> Option<String>,
    aws_endpoint: &str,
    ssm: &aws_sdk_ssm::Client,
) -> Result<HashMap<String, String>, String> {
    let read = std::sync::Mutex::new(Vec::new());
    imagegen_shared::bootstrap::boot_config(|name| {
        read.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_owned());
        lookup(name)
    })
    .map_err(|e| e.to_string())?;
    let mut env: HashMap<String, String> = read
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .filter_map(|name| lookup(&name).map(|value| (name, value)))
        .collect();
    if let Some(token) = env.remove("REPLICATE_API_TOKEN") {
        ssm.put_parameter()
            .name(LOCAL_TOKEN_PARAMETER)
            .value(token)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .overwrite(true)
            .send()
            .await
            .map_err(|e| {
                format!(
                    "could not store the token in SSM: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(e)
                )
            })?;
        env.insert(
            imagegen_shared::bootstrap::TOKEN_PARAMETER_ENV.to_owned(),
            LOCAL_TOKEN_PARAMETER.to_owned(),
        );
    }
    let aws_default =
        |name: &str, default: &str| lookup(name).unwrap_or_else(|| default.to_owned());
    env.insert("AWS_ENDPOINT_URL".into(), aws_endpoint.to_owned());
    // The region the stack's resources were made in (as `AwsClients::local` picks it).
    let region = lookup("AWS_REGION")
        .or_else(|| lookup("AWS_DEFAULT_REGION"))
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".to_owned());
    env.insert("AWS_REGION".into(), region);
    env.insert(
        "AWS_ACCESS_KEY_ID".into(),
        aws_default("AWS_ACCESS_KEY_ID", "local"),
    );
    env.insert(
        "AWS_SECRET_ACCESS_KEY".into(),
        aws_default("AWS_SECRET_ACCESS_KEY", "local"),
    );
    Ok(env)
}

/// Invokes `function` with an EventBridge scheduled event every `every`.
pub fn spawn_schedule(
    function: Arc<LocalFunction>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            if let Err(err) = function.invoke(events::scheduled(&function.name)).await {
                tracing::warn!(function = %function.name, error = %err, "scheduled run failed");
            }
        }
    })
}
