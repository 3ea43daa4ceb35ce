//! The integration tests, through the HTTP routes against moto and the simulator, as one
//! binary: each test binary links the whole AWS SDK, so one binary builds (and links) once.
//! One module per concern; `tidy` holds the code's layout to ARCHITECTURE.md's rules.

mod bad_input;
mod binaries;
mod bursts;
mod callbacks;
mod conformance;
mod e2e;
mod jobs;
mod openapi;
mod openapi_document;
mod simulator_openapi;
mod template;
mod tenancy;
mod tidy;
mod uploads;
