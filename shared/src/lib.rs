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
//! The import rule: a layer imports only the layers listed below it, except that `adapters`
//! import only `ports` and `domain` (and `telemetry`), `app` never names `lambda_http`, and
//! `testing` only `ports` and `domain`. A test (`tidy` in the integration tests) fails the
//! build on any import that breaks it, any import circle, and any source file over 600 lines.

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
