//! A minimal HTTP/1.1 server on hyper: bodies are collected (up to a limit) and handed to
//! an async function. Both local servers use it.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub type HttpRequest = http::Request<Bytes>;
pub type HttpResponse = http::Response<Bytes>;

/// A response extension: send the body without telling hyper its size, so a
/// `Content-Length` header of the handler's choosing stands (the simulator uses it to cut a
/// download short, as a dropped connection does).
#[derive(Debug, Clone, Copy)]
pub struct UnsizedBody;

/// A body that does not announce its length. After its data it pauses briefly, so what was
/// sent is flushed to the client before the body ends.
struct Unsized {
    data: Option<Bytes>,
    pause: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Unsized {
    fn new(data: Bytes) -> Self {
        Self {
            data: Some(data),
            pause: Box::pin(tokio::time::sleep(std::time::Duration::from_millis(50))),
        }
    }
}

impl hyper::body::Body for Unsized {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        if let Some(data) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(data))));
        }
        self.pause.as_mut().poll(cx).map(|()| None)
    }
}

/// A running server; dropping it stops accepting connections.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `handler` on `listener`. A body over `max_body` bytes is answered with
/// `too_large()` without calling the handler.
pub fn serve<H, F>(
    listener: TcpListener,
    max_body: usize,
    too_large: fn() -> HttpResponse,
    handler: H,
) -> Server
where
    H: Fn(HttpRequest) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = HttpResponse> + Send + 'static,
{
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let response = match Limited::new(body, max_body).collect().await {
                            Ok(collected) => {
                                handler(http::Request::from_parts(parts, collected.to_bytes()))
                                    .await
                            }
                            Err(_) => too_large(),
                        };
                        let unsized_body = response.extensions().get::<UnsizedBody>().is_some();
                        Ok::<_, Infallible>(response.map(|body| {
                            if unsized_body {
                                Either::Right(Unsized::new(body))
                            } else {
                                Either::Left(Full::new(body))
                            }
                        }))
                    }
                });
                if let Err(err) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
            });
        }
    });
    Server { addr, task }
}

/// Binds 127.0.0.1 only: local servers never listen on other interfaces.
pub async fn bind_loopback(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(("127.0.0.1", port)).await
}
