use std::time::Duration;

use super::types::ApiProblem;

/// Why a Replicate call failed, once retries (if any were allowed) ran out.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error("Replicate throttled the request (HTTP 429) after {attempts} attempt(s)")]
    Throttled {
        retry_after: Option<Duration>,
        attempts: u32,
    },
    #[error("Replicate answered HTTP {status} after {attempts} attempt(s)")]
    Unavailable {
        status: u16,
        retry_after: Option<Duration>,
        attempts: u32,
    },
    /// `cause`: the transport's own account, without the URL (for logs).
    #[error("could not connect to Replicate after {attempts} attempt(s): {cause}")]
    Unreachable { attempts: u32, cause: String },
    #[error("Replicate did not answer in time after {attempts} attempt(s)")]
    TimedOut { attempts: u32 },
    /// The create request may have reached Replicate and started a (billed) prediction, so
    /// it was not repeated.
    #[error("creating the prediction may or may not have succeeded: {reason}")]
    CreateOutcomeUnknown { reason: String },
    /// A client error from Replicate (bad token, unknown version, invalid input, …).
    #[error("Replicate rejected the request (HTTP {status}): {}", problem.summary())]
    Rejected { status: u16, problem: ApiProblem },
    #[error("Replicate sent a response this client cannot read (HTTP {status}): {message}")]
    InvalidResponse { status: u16, message: String },
    #[error("the connection to Replicate failed: {cause}")]
    Transport { cause: String },
    /// This service cannot call Replicate as configured (a token no HTTP header can carry):
    /// nothing was sent, and retrying cannot help.
    #[error("the Replicate client is not configured: {reason}")]
    Unconfigured { reason: String },
}

/// A hint for the caller's own client: come back after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryLater {
    pub after: Duration,
}

/// When Replicate gave no `Retry-After`, how long a caller's client should wait.
const DEFAULT_RETRY_LATER: Duration = Duration::from_secs(5);

impl ReplicateError {
    /// Whether the failure is temporary, so the caller should answer its own client with
    /// 429/503 and `Retry-After` rather than a hard error.
    pub fn retry_later(&self) -> Option<RetryLater> {
        let after = match self {
            Self::Throttled { retry_after, .. } | Self::Unavailable { retry_after, .. } => {
                retry_after.unwrap_or(DEFAULT_RETRY_LATER)
            }
            Self::Unreachable { .. } | Self::TimedOut { .. } | Self::Transport { .. } => {
                DEFAULT_RETRY_LATER
            }
            Self::CreateOutcomeUnknown { .. }
            | Self::Rejected { .. }
            | Self::InvalidResponse { .. }
            | Self::Unconfigured { .. } => return None,
        };
        // Whole seconds, at least one: that is what a Retry-After header can say.
        Some(RetryLater {
            after: Duration::from_secs(after.as_secs_f64().ceil().max(1.0) as u64),
        })
    }

    /// Whether Replicate itself throttled us (as opposed to being down).
    pub fn is_throttled(&self) -> bool {
        matches!(self, Self::Throttled { .. })
    }

    /// Replicate says the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::Rejected { status: 404, .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_failures_carry_a_whole_second_retry_hint() {
        let throttled = ReplicateError::Throttled {
            retry_after: Some(Duration::from_millis(1500)),
            attempts: 4,
        };
        assert_eq!(
            throttled.retry_later().unwrap().after,
            Duration::from_secs(2)
        );
        let unavailable = ReplicateError::Unavailable {
            status: 503,
            retry_after: None,
            attempts: 4,
        };
        assert_eq!(
            unavailable.retry_later().unwrap().after,
            DEFAULT_RETRY_LATER
        );
        let zero = ReplicateError::Throttled {
            retry_after: Some(Duration::ZERO),
            attempts: 1,
        };
        assert_eq!(zero.retry_later().unwrap().after, Duration::from_secs(1));
        assert!(
            ReplicateError::TimedOut { attempts: 3 }
                .retry_later()
                .is_some()
        );
    }

    #[test]
    fn permanent_and_ambiguous_failures_are_not_retry_later() {
        let rejected = ReplicateError::Rejected {
            status: 422,
            problem: ApiProblem::default(),
        };
        assert!(rejected.retry_later().is_none());
        let unknown = ReplicateError::CreateOutcomeUnknown {
            reason: "HTTP 500".into(),
        };
        assert!(unknown.retry_later().is_none());
    }
}
