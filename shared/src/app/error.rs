//! Every error a use case can end in, as one enum: what went wrong, in the caller's terms.
//! The HTTP layer maps each to a status and problem+json (`http::problem`), in one place;
//! internal detail is logged where it happens, never carried here.

use std::time::Duration;

use crate::domain::input_errors::InputErrors;
use crate::domain::replicate::ReplicateError;
use crate::ports::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    UnknownModel(String),
    #[error("{0}")]
    NotFound(String),
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    /// Per-field problems; at most `InputErrors::MAX_LISTED` are listed, all are counted.
    #[error("{}", .0.summary())]
    InvalidInput(InputErrors),
    #[error("this Idempotency-Key was already used with a different request")]
    IdempotencyKeyReused,
    #[error("a request with this Idempotency-Key is still being processed")]
    IdempotencyInProgress,
    #[error("Replicate is throttling requests; retry later")]
    Throttled { retry_after: Duration },
    #[error("Replicate is unavailable; retry later")]
    Unavailable { retry_after: Duration },
    #[error("the create queue holds more than its limit of work; retry later")]
    Backlogged { retry_after: Duration },
    #[error("Replicate answered with an error")]
    Upstream,
    #[error("{0}")]
    InvalidSignature(String),
    /// No, a malformed, an unknown or a revoked API key.
    #[error("{0}")]
    Unauthenticated(String),
    #[error("this API key may submit {limit} predictions a minute; retry later")]
    RateLimited { limit: u32, retry_after: Duration },
    #[error(
        "this prediction's estimated cost of ${estimate_usd:.4} would take this month's spend past the budget of ${budget_usd:.2}"
    )]
    BudgetExhausted { estimate_usd: f64, budget_usd: f64 },
    #[error("an internal error occurred")]
    Internal,
    /// Storing failed; for a webhook this asks Replicate to deliver it again.
    #[error("the result could not be stored; it will be retried")]
    StorageFailed,
}

impl From<InputErrors> for ApiError {
    fn from(errors: InputErrors) -> Self {
        Self::InvalidInput(errors)
    }
}

impl From<ReplicateError> for ApiError {
    fn from(err: ReplicateError) -> Self {
        if let ReplicateError::Unconfigured { .. } = err {
            tracing::error!(error = %err, "Replicate cannot be called as configured");
            return Self::Internal;
        }
        tracing::warn!(error = %err, "Replicate call failed");
        match err.retry_later() {
            Some(later) if err.is_throttled() => Self::Throttled {
                retry_after: later.after,
            },
            Some(later) => Self::Unavailable {
                retry_after: later.after,
            },
            None => Self::Upstream,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        tracing::error!(error = %err, "storage call failed");
        Self::Internal
    }
}
