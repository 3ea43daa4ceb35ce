//! A local Lambda Runtime API (the `2018-06-01` interface a function's runtime polls):
//! `invoke` queues an event, any of the function's processes takes it with
//! `GET …/invocation/next`, and its `…/response` or `…/error` completes the call. Each
//! process handles one event at a time, as in Lambda; several processes of one function
//! take events from one queue, as Lambda's execution environments do.

use std::collections::HashMap;
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
}

impl std::fmt::Display for InvokeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Function(body) => write!(f, "the function failed: {body}"),
            Self::TimedOut => f.write_str("the function timed out"),
            Self::Unavailable => f.write_str("the function is not running"),
        }
    }
}

struct Pending {
    id: String,
    event: Bytes,
    deadline_ms: u128,
    done: oneshot::Sender<Result<Bytes, InvokeError>>,
}

struct State {
    function: String,
    queue: tokio::sync::Mutex<mpsc::Receiver<Pending>>,
    in_flight: Mutex<HashMap<String, oneshot::Sender<Result<Bytes, InvokeError>>>>,
    invocations: std::sync::atomic::AtomicU64,
}

/// One function's Runtime API.
pub struct RuntimeApi {
    server: Server,
    state: Arc<State>,
    sender: mpsc::Sender<Pending>,
    timeout: Duration,
}

impl RuntimeApi {
    /// Serves the Runtime API of `function` on 127.0.0.1; invocations time out after
    /// `timeout` (the function's configured timeout).
    pub async fn start(function: &str, timeout: Duration) -> std::io::Result<Self> {
        let (sender, receiver) = mpsc::channel(1024);
        let state = Arc::new(State {
            function: function.to_owned(),
            queue: tokio::sync::Mutex::new(receiver),
            in_flight: Mutex::new(HashMap::new()),
            invocations: std::sync::atomic::AtomicU64::new(0),
        });
        let handler_state = state.clone();
        let server = serve(
            bind_loopback(0).await?,
            MAX_PAYLOAD,
            || plain(StatusCode::PAYLOAD_TOO_LARGE, "payload too large"),
            move |request| {
                let state = handler_state.clone();
                async move { handle(&state, request).await }
            },
        );
        Ok(Self {
            server,
            state,
            sender,
            timeout,
        })
    }

    /// `host:port`, as `AWS_LAMBDA_RUNTIME_API` takes it.
    pub fn address(&self) -> String {
        self.server.addr.to_string()
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
                self.state
                    .in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
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

async fn handle(state: &State, request: HttpRequest) -> HttpResponse {
    let path = request.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return plain(StatusCode::NOT_FOUND, "not a Runtime API path");
    };
    match (request.method(), rest) {
        (&Method::GET, "/invocation/next") => next(state).await,
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
            let sender = state
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(id);
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
async fn next(state: &State) -> HttpResponse {
    let pending = {
        let mut queue = state.queue.lock().await;
        queue.recv().await
    };
    let Some(pending) = pending else {
        return plain(StatusCode::GONE, "shutting down");
    };
    state
        .invocations
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    state
        .in_flight
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(pending.id.clone(), pending.done);
    let mut response = HttpResponse::new(pending.event);
    let headers = response.headers_mut();
    let values = [
        ("lambda-runtime-aws-request-id", pending.id),
        (
            "lambda-runtime-deadline-ms",
            pending.deadline_ms.to_string(),
        ),
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
