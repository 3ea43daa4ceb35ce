//! Replicate's HTTP API (`ports::replicate::ReplicateApi`), with timeouts and the retry rules
//! of `retry`.

mod client;
mod on_first_use;
pub mod retry;

pub use client::{
    ApiToken, ClientBuildError, ClientConfig, DEFAULT_BASE_URL, ReplicateClient, check_base_url,
};
pub use on_first_use::{OnFirstUse, Setup, SetupError};
pub use retry::RetryPolicy;

#[cfg(test)]
mod tests;
