//! Calling a caller back: one signed POST attempt, and how it went. HTTP in production
//! (`adapters::http::callbacks`), a scripted fake in tests.

use std::future::Future;

use bytes::Bytes;
use url::Url;

/// One attempt to make.
#[derive(Debug, Clone)]
pub struct CallbackRequest {
    pub url: Url,
    pub headers: Vec<(&'static str, String)>,
    pub body: Bytes,
}

/// How an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallbackOutcome {
    /// A 2xx answer.
    Delivered { status: u16 },
    /// Any other answer (redirects included: they are not followed).
    Rejected { status: u16 },
    /// No answer: refused connection, timeout, TLS failure.
    Unreachable(String),
    /// The destination is (now) not allowed: it resolves to a forbidden address.
    Forbidden(String),
}

impl CallbackOutcome {
    pub fn delivered(&self) -> bool {
        matches!(self, Self::Delivered { .. })
    }
}

/// Sends callback attempts: HTTP (`HttpCallbacks`), or a scripted fake in unit tests.
pub trait CallbackSender: Send + Sync {
    fn post(&self, request: CallbackRequest) -> impl Future<Output = CallbackOutcome> + Send;
}
