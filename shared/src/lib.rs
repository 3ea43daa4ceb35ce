//! The code the Lambda functions share, in layers (ARCHITECTURE.md, "Layers"):
//!
//! ```text
//! bootstrap, config   the composition root: settings from the environment, real adapters
//!                     plugged into the use cases, one per process
//! lambda              the Lambda runtime loop: HTTP events, SQS batches, schedules
//! http                API Gateway requests to use-case calls, answers to responses
//! app                 the use cases, on `App<P: Ports>`
//! adapters            the ports for real: DynamoDB, S3, SQS, SSM, Replicate, HTTP
//! ports               one small trait per thing the use cases need from the world
//! domain              types and decisions that need no I/O
//! telemetry           structured logs and metrics (used by any layer, imports none)
//! testing             in-memory fakes and the conformance suite (feature `test-util`)
//! ```
//!
//! The import rule (ARCHITECTURE.md, "Layers", has the whole table): `domain` and
//! `telemetry` import nothing of the crate; `ports` only `domain`; `app` only `ports`,
//! `domain` and `telemetry`, and never names Lambda, HTTP headers or an SDK; `http` adds
//! `app`; `lambda` adds `http`; `adapters` import only `ports`, `domain` and `telemetry`;
//! `testing` only `ports` and `domain`; the composition root anything. A test (`tidy` in the
//! integration tests) fails on any import that breaks it, any import circle, and any source
//! file over 600 lines (tests apart).

pub mod adapters;
pub mod app;
pub mod bootstrap;
pub mod config;
pub mod domain;
pub mod http;
pub mod lambda;
pub mod ports;
pub mod telemetry;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
