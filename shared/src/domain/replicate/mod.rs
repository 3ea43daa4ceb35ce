//! Replicate's vocabulary as this service speaks it: predictions and their statuses, model
//! references, `Cancel-After` deadlines, and what a call to Replicate can end in. The HTTP
//! client is an adapter (`adapters::replicate`).

mod deadline;
mod error;
mod model_ref;
mod types;

pub use deadline::{Deadline, InvalidDeadline};
pub use error::{ReplicateError, RetryLater};
pub use model_ref::{ModelRef, ModelRefError, VersionId};
pub use types::{
    ApiProblem, CreatePredictionBody, InvalidField, Metrics, Model, ModelVersion, Prediction,
    PredictionPage, PredictionStatus, PredictionUrls, WebhookEvent, WebhookSecretBody,
    WebhookTarget,
};
