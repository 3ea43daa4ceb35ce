//! Code shared by the `submit`, `webhook` and `fetch-result` Lambda functions: the Replicate
//! client and schemas, the model registry with input validation, and webhook verification.

pub mod app;
pub mod aws;
pub mod bootstrap;
pub mod callbacks;
pub mod config;
/// The storage conformance suite: for tests only (`test-util`).
#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
pub mod cost;
pub mod delivery;
pub mod destination;
pub mod lazy_client;
/// The in-memory fakes of the ports: for tests only (`test-util`), so release builds of the
/// functions never compile them.
#[cfg(any(test, feature = "test-util"))]
pub mod memory;
pub mod metrics;
pub mod outputs;
pub mod pacing;
pub mod ports;
pub mod record;
pub mod registry;
pub mod replicate;
pub mod telemetry;
pub mod tenancy;
pub mod time;
pub mod uploads;
pub mod webhook;
