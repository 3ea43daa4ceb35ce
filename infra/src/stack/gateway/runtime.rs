//! A local Lambda Runtime API (the `2018-06-01` interface a function's runtime polls):
//! `invoke` queues an event, any of the function's processes takes it with
//! `GET …/invocation/next`, and its `…/response` or `…/error` completes the call. Each
//! process handles one event at a time, as in Lambda; several processes of one function
//! take events from one queue, as Lambda's execution environments do. Each process polls
//! an endpoint of its own, so the event a process held when it died fails at once (as
//! Lambda reports `Runtime.ExitError`) instead of waiting out the timeout.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::sync::{mpsc, oneshot};

use crate::http_server::{HttpRequest, HttpResponse, Server, bind_loopback, serve};

const PREFIX: &str = "/2018-06-01/runtime";
/// Largest response a function may return (Lambda's synchronous payload limit).
const MAX_PAYLOAD: usize = 6 * 1024 * 1024;

/// How one invocation ended.
#[derive(Debug)]
pub enum InvokeError {
    /// The function reported an error (`…/error`), with its body.
    Function(String),
    /// No answer within the function's timeout.
    TimedOut,
    /// The function's processes are gone.
    Unavailable,
    /// The process handling it exited before answering.
    Exited,
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Function(body) => write!(f, "the function failed: {body}"),
            Self::TimedOut => f.write_str("the function timed out"),
            Self::Unavailable => f.write_str("the function is not running"),
            Self::Exited => f.write_str("the runtime exited before answering"),
        }
    }
}

struct Pending {
    id: String,
    event: Bytes,
    deadline_ms: u128,
    done: oneshot::Sender<Result<Bytes, InvokeError>>,
}

type Answer = oneshot::Sender<Result<Bytes, InvokeError>>;

struct State {
    function: String,
    queue: tokio::sync::Mutex<mpsc::Receiver<Pending>>,
    /// Events handed out and not answered yet: the endpoint that took each, and its caller.
    in_flight: Mutex<HashMap<String, (u64, Answer)>>,
    /// Endpoints whose process exited: an event they take is failed, not left waiting.
    exited: Mutex<HashSet<u64>>,
    /// Puts back an event a dead process's request took (weak: the queue still closes when
    /// the `RuntimeApi` goes).
    requeue: mpsc::WeakSender<Pending>,
    invocations: std::sync::atomic::AtomicU64,
    endpoints: std::sync::atomic::AtomicU64,
}

/// What one process polls: a server of its own on the function's queue.
pub struct Endpoint {
    server: Server,
    id: u64,
}

impl Endpoint {
    /// `host:port`, as `AWS_LAMBDA_RUNTIME_API` takes it.
    pub fn address(&self) -> String {
        self.server.addr.to_string()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One function's Runtime API.
pub struct RuntimeApi {
    state: Arc<State>,
    sender: mpsc::Sender<Pending>,
    timeout: Duration,
}

impl RuntimeApi {
    /// The Runtime API of `function`; invocations time out after `timeout` (the function's
    /// configured timeout). Its processes poll endpoints made with `endpoint`.
    pub fn new(function: &str, timeout: Duration) -> Self {
        let (sender, receiver) = mpsc::channel(1024);
        let state = Arc::new(State {
            function: function.to_owned(),
            queue: tokio::sync::Mutex::new(receiver),
            in_flight: Mutex::new(HashMap::new()),
            exited: Mutex::new(HashSet::new()),
            requeue: sender.downgrade(),
            invocations: std::sync::atomic::AtomicU64::new(0),
            endpoints: std::sync::atomic::AtomicU64::new(0),
        });
        Self {
            state,
            sender,
            timeout,
        }
    }

    /// A new endpoint on 127.0.0.1 for one process.
    pub async fn endpoint(&self) -> std::io::Result<Endpoint> {
        let id = self
            .state
            .endpoints
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let state = self.state.clone();
        let server = serve(
            bind_loopback(0).await?,
            MAX_PAYLOAD,
            || plain(StatusCode::PAYLOAD_TOO_LARGE, "payload too large"),
            move |request| {
                let state = state.clone();
                async move { handle(&state, id, request).await }
            },
        );
        Ok(Endpoint { server, id })
    }

    /// Every process was stopped: whatever they held fails now.
    pub fn fail_all_in_flight(&self) {
        let held: Vec<Answer> = lock(&self.state.in_flight)
            .drain()
            .map(|(_, (_, answer))| answer)
            .collect();
        for answer in held {
            let _ = answer.send(Err(InvokeError::Exited));
        }
    }

    /// The process polling `endpoint` exited: the event it held (if any) fails now.
    pub fn process_exited(&self, endpoint: &Endpoint) {
        let held: Vec<Answer> = {
            // Both under the in-flight lock, as `next` reads them: no event slips between.
            let mut in_flight = lock(&self.state.in_flight);
            lock(&self.state.exited).insert(endpoint.id);
            let ids: Vec<String> = in_flight
                .iter()
                .filter(|(_, (taken_by, _))| *taken_by == endpoint.id)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter()
                .filter_map(|id| in_flight.remove(id))
                .map(|(_, answer)| answer)
                .collect()
        };
        for answer in held {
            let _ = answer.send(Err(InvokeError::Exited));
        }
    }

    /// Invocations handed to the function so far.
    pub fn invocations(&self) -> u64 {
        self.state
            .invocations
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs one event through the function and returns its response payload.
    pub async fn invoke(&self, event: Bytes) -> Result<Bytes, InvokeError> {
        let (done, answer) = oneshot::channel();
        let deadline = SystemTime::now() + self.timeout;
        let id = uuid::Uuid::new_v4().to_string();
        let pending = Pending {
            id: id.clone(),
            event,
            deadline_ms: deadline
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
            done,
        };
        // The timeout covers waiting for a free process too (all of them may be gone).
        let outcome = tokio::time::timeout(self.timeout, async {
            self.sender
                .send(pending)
                .await
                .map_err(|_| InvokeError::Unavailable)?;
            answer.await.map_err(|_| InvokeError::Unavailable)?
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(_) => {
                // No answer will be taken for it any more.
                lock(&self.state.in_flight).remove(&id);
                Err(InvokeError::TimedOut)
            }
        }
    }
}

fn plain(status: StatusCode, text: &str) -> HttpResponse {
    let mut response = HttpResponse::new(Bytes::from(text.to_owned()));
    *response.status_mut() = status;
    response
}

async fn handle(state: &State, endpoint: u64, request: HttpRequest) -> HttpResponse {
    let path = request.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return plain(StatusCode::NOT_FOUND, "not a Runtime API path");
    };
    match (request.method(), rest) {
        (&Method::GET, "/invocation/next") => next(state, endpoint).await,
        (&Method::POST, "/init/error") => {
            tracing::error!(function = %state.function, error = %String::from_utf8_lossy(request.body()), "function init failed");
            plain(StatusCode::ACCEPTED, "")
        }
        (&Method::POST, rest) => {
            let Some((id, outcome)) = rest
                .strip_prefix("/invocation/")
                .and_then(|r| r.split_once('/'))
            else {
                return plain(StatusCode::NOT_FOUND, "unknown path");
            };
            let sender = lock(&state.in_flight).remove(id).map(|(_, answer)| answer);
            let Some(sender) = sender else {
                return plain(StatusCode::BAD_REQUEST, "unknown request id");
            };
            let result = match outcome {
                "response" => Ok(request.body().clone()),
                "error" => Err(InvokeError::Function(
                    String::from_utf8_lossy(request.body()).into_owned(),
                )),
                _ => return plain(StatusCode::NOT_FOUND, "unknown path"),
            };
            let _ = sender.send(result);
            plain(StatusCode::ACCEPTED, "")
        }
        _ => plain(StatusCode::NOT_FOUND, "unknown path"),
    }
}

/// Waits for the next event (as long as it takes: the runtime keeps this request open).
async fn next(state: &State, endpoint: u64) -> HttpResponse {
    let pending = loop {
        let pending = {
            let mut queue = state.queue.lock().await;
            queue.recv().await
        };
        let Some(pending) = pending else {
            return plain(StatusCode::GONE, "shutting down");
        };
        // Its caller gave up (timed out): it must not run after the caller was answered.
        if pending.done.is_closed() {
            continue;
        }
        let mut in_flight = lock(&state.in_flight);
        if lock(&state.exited).contains(&endpoint) {
            drop(in_flight);
            // A request of a process already gone took it: back in the queue, for a live one.
            if let Some(requeue) = state.requeue.upgrade() {
                let _ = requeue.try_send(pending);
            }
            return plain(StatusCode::GONE, "this process has exited");
        }
        in_flight.insert(pending.id.clone(), (endpoint, pending.done));
        break (pending.id, pending.event, pending.deadline_ms);
    };
    let (id, event, deadline_ms) = pending;
    state
        .invocations
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut response = HttpResponse::new(event);
    let headers = response.headers_mut();
    let values = [
        ("lambda-runtime-aws-request-id", id),
        ("lambda-runtime-deadline-ms", deadline_ms.to_string()),
        (
            "lambda-runtime-invoked-function-arn",
            format!(
                "arn:aws:lambda:us-east-1:000000000000:function:{}",
                state.function
            ),
        ),
        (
            "lambda-runtime-trace-id",
            "Root=1-00000000-000000000000000000000000;Sampled=0".to_owned(),
        ),
        ("content-type", "application/json".to_owned()),
    ];
    for (name, value) in values {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
    response
}
