//! The network adapters other than Replicate's client: output downloads, callback attempts,
//! name resolution, and the HTTP clients they build on first use.

pub mod callbacks;
pub mod dns;
pub mod downloads;
pub mod lazy_client;

/// An error and its causes, in one line: what a log line may say of a transport failure
/// (take a `reqwest` error `without_url` first: a URL may carry a caller's secrets).
pub(crate) fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
