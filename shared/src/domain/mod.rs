//! The domain: what a prediction, a tenant, a claim, a price and a callback are, and the
//! decisions about them that need no I/O (cost, pacing, bounds, signatures, the model
//! registry and its validation, Replicate's vocabulary).
//!
//! Architecture invariant: nothing here imports `ports`, `app`, `http`, `lambda`,
//! `adapters`, `telemetry` or the composition root; it does no I/O of its own (ARCHITECTURE.md,
//! "Layers").

pub mod callbacks;
pub mod claims;
pub mod cost;
pub mod destination;
pub mod digest;
pub mod ids;
pub mod input_errors;
pub mod jobs;
pub mod limits;
pub mod money;
pub mod numbers;
pub mod outputs;
pub mod pacing;
pub mod record;
pub mod registry;
pub mod replicate;
pub mod signing;
pub mod tenancy;
pub mod time;
pub mod uploads;
