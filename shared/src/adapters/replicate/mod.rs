//! Replicate's HTTP API (`ports::replicate::ReplicateApi`), with timeouts and the retry rules
//! of `retry`.

mod client;
pub mod retry;

pub use client::{ApiToken, ClientBuildError, ClientConfig, DEFAULT_BASE_URL, ReplicateClient};
pub use retry::RetryPolicy;

#[cfg(test)]
mod tests;
