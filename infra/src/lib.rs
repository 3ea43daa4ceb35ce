//! The local stack (README, "Local stack"; ARCHITECTURE.md): the function binaries behind a
//! local API Gateway and Runtime API (or the same handlers in process), and a Replicate
//! simulator that speaks Replicate's HTTP API, renders real images and sends signed webhooks.

pub mod dev;
pub mod gateway;
pub mod http_server;
pub mod keys;
pub mod meter;
pub mod process_stats;
pub mod sim;
