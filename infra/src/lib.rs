//! The local stack (README, "Try it"; ARCHITECTURE.md, "Local stack"):
//! the function binaries behind a local API Gateway and Runtime API (or the same routes in
//! process), a Replicate simulator that speaks Replicate's HTTP API, renders real images
//! and sends signed webhooks, the meter behind `make cost`, and the operator's tools.
//!
//! - `sam`: the template, as the gateway routes by it and the meter prices by it
//! - `stack`: the local API Gateway and Runtime API (`stack::gateway`), in-process serving
//!   and queue workers
//! - `sim`: the Replicate simulator
//! - `meter`: `make cost`'s counting proxy, invocation meter and report; process figures
//!   for `make bench`
//! - `ops`: API keys and tenants' limits
//! - `http_server`: the small HTTP server all of them serve with

pub mod http_server;
pub mod meter;
pub mod ops;
pub mod sam;
pub mod sim;
pub mod stack;
