//! Talking to Replicate: the HTTP client, its retry rules, and the prediction schema.

mod client;
mod deadline;
mod error;
mod model_ref;
pub mod retry;
mod types;

pub use client::{
    ApiToken, ClientBuildError, ClientConfig, DEFAULT_BASE_URL, ReplicateApi, ReplicateClient,
};
pub use deadline::{Deadline, InvalidDeadline};
pub use error::{ReplicateError, RetryLater};
pub use model_ref::{ModelRef, ModelRefError, VersionId};
pub use retry::RetryPolicy;
pub use types::{
    ApiProblem, CreatePredictionBody, InvalidField, Metrics, Model, ModelVersion, Prediction,
    PredictionPage, PredictionStatus, PredictionUrls, WebhookEvent, WebhookTarget,
};
