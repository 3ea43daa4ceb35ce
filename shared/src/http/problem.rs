//! Every error a client can see (`app::ApiError`), mapped to HTTP status and problem+json
//! (RFC 9457) here and nowhere else. Internal detail is logged, never sent.

use std::time::Duration;

use http::{HeaderValue, StatusCode, header};
use lambda_http::{Body, Response};
use serde::Serialize;

use crate::app::ApiError;
use crate::domain::input_errors::FieldError;

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    errors: Option<&'a [FieldError]>,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use StatusCode as S;
        match self {
            Self::BadRequest(_) => (S::BAD_REQUEST, "malformed-request", "Malformed request"),
            Self::PayloadTooLarge { .. } => (
                S::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            ),
            Self::UnknownModel(_) => (S::NOT_FOUND, "unknown-model", "Unknown model"),
            Self::NotFound(_) => (S::NOT_FOUND, "not-found", "Not found"),
            Self::NoRoute { .. } => (S::NOT_FOUND, "no-route", "No such route"),
            Self::InvalidInput(_) => (S::UNPROCESSABLE_ENTITY, "invalid-input", "Invalid input"),
            Self::IdempotencyKeyReused => (
                S::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "Idempotency-Key reused",
            ),
            Self::IdempotencyInProgress => (
                S::CONFLICT,
                "idempotency-in-progress",
                "Request in progress",
            ),
            Self::Throttled { .. } => (
                S::TOO_MANY_REQUESTS,
                "upstream-throttled",
                "Upstream throttled",
            ),
            Self::Unavailable { .. } => (
                S::SERVICE_UNAVAILABLE,
                "upstream-unavailable",
                "Upstream unavailable",
            ),
            Self::Backlogged { .. } => (S::SERVICE_UNAVAILABLE, "queue-full", "Create queue full"),
            Self::Upstream => (S::BAD_GATEWAY, "upstream-error", "Upstream error"),
            Self::InvalidSignature(_) => (
                S::UNAUTHORIZED,
                "invalid-signature",
                "Invalid webhook signature",
            ),
            Self::Unauthenticated(_) => (S::UNAUTHORIZED, "unauthorized", "Unauthorized"),
            Self::RateLimited { .. } => {
                (S::TOO_MANY_REQUESTS, "rate-limited", "Rate limit exceeded")
            }
            Self::BudgetExhausted { .. } => (
                S::PAYMENT_REQUIRED,
                "budget-exhausted",
                "Monthly budget exhausted",
            ),
            Self::Internal => (S::INTERNAL_SERVER_ERROR, "internal-error", "Internal error"),
            Self::StorageFailed => (S::INTERNAL_SERVER_ERROR, "storage-failed", "Storage failed"),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Throttled { retry_after }
            | Self::Unavailable { retry_after }
            | Self::Backlogged { retry_after }
            | Self::RateLimited { retry_after, .. } => Some(*retry_after),
            Self::IdempotencyInProgress => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    pub fn into_response(self) -> Response<Body> {
        let (status, slug, title) = self.parts();
        let errors = match &self {
            Self::InvalidInput(errors) => Some(errors.listed()),
            _ => None,
        };
        let problem = Problem {
            kind: format!("/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail: self.to_string(),
            errors,
        };
        let mut response = json_response(status, &problem);
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if matches!(self, Self::Unauthenticated(_)) {
            // RFC 6750: a 401 names the scheme the route wants.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"api\""),
            );
        }
        if let Some(after) = self.retry_after() {
            let seconds = after.as_secs().max(1);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// 200 with `result`'s JSON, or its problem.
pub fn json_or_problem<T: Serialize>(result: Result<T, ApiError>) -> Response<Body> {
    match result {
        Ok(body) => json_response(StatusCode::OK, &body),
        Err(err) => err.into_response(),
    }
}

/// A JSON response. Serialising our own view types cannot fail.
pub fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Body> {
    let text = serde_json::to_string(body).unwrap_or_else(|_| "{}".to_owned());
    let mut response = Response::new(Body::Text(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::input_errors::InputErrors;
    use crate::domain::replicate::ReplicateError;
    use crate::ports::StoreError;
    use serde_json::{Value, json};

    fn body(response: &Response<Body>) -> Value {
        serde_json::from_slice(response.body().as_ref()).unwrap()
    }

    #[test]
    fn invalid_input_lists_fields() {
        let mut errors = InputErrors::new();
        errors.push("input.width", "must be a multiple of 8");
        let response = ApiError::InvalidInput(errors).into_response();
        assert_eq!(response.status(), 422);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(
            body(&response),
            json!({"type": "/problems/invalid-input", "title": "Invalid input", "status": 422,
                   "detail": "the request has 1 invalid field(s)",
                   "errors": [{"field": "input.width", "message": "must be a multiple of 8"}]})
        );
    }

    /// The contract: an error body is at most 64 KB whatever the request.
    #[test]
    fn invalid_input_is_small_however_many_fields_are_wrong() {
        let mut errors = InputErrors::new();
        // Worst case per listed error: 4-byte characters, quotes that JSON escapes.
        let name = "🦀\"".repeat(1000);
        let message = "🦀\\".repeat(1000);
        for _ in 0..500_000 {
            errors.push(format_args!("input.{name}"), message.as_str());
        }
        let response = ApiError::InvalidInput(errors).into_response();
        let size = response.body().as_ref().len();
        assert!(size < 64 * 1024, "{size} bytes");
        let problem = body(&response);
        assert_eq!(
            problem["detail"],
            "the request has 500000 invalid fields; the first 20 are listed"
        );
        assert_eq!(problem["errors"].as_array().unwrap().len(), 20);
    }

    #[test]
    fn throttling_carries_retry_after() {
        let response = ApiError::Throttled {
            retry_after: Duration::from_secs(7),
        }
        .into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        assert!(body(&response).get("errors").is_none());
    }

    #[test]
    fn replicate_errors_map_to_429_503_and_502_without_detail() {
        let throttled: ApiError = ReplicateError::Throttled {
            retry_after: None,
            attempts: 4,
        }
        .into();
        assert_eq!(throttled.status(), 429);
        let down: ApiError = ReplicateError::Unavailable {
            status: 503,
            retry_after: Some(Duration::from_secs(3)),
            attempts: 4,
        }
        .into();
        assert_eq!(down.status(), 503);
        assert_eq!(down.into_response().headers()[header::RETRY_AFTER], "3");
        let rejected: ApiError = ReplicateError::Rejected {
            status: 401,
            problem: crate::domain::replicate::ApiProblem {
                detail: Some("Invalid token r8_abc".into()),
                ..Default::default()
            },
        }
        .into();
        let response = rejected.into_response();
        assert_eq!(response.status(), 502);
        assert!(!String::from_utf8_lossy(response.body().as_ref()).contains("r8_abc"));
    }

    #[test]
    fn storage_errors_do_not_leak() {
        let err: ApiError = StoreError::new(
            "get prediction",
            "dispatch failure: connection refused to 10.0.0.1",
        )
        .into();
        let response = err.into_response();
        assert_eq!(response.status(), 500);
        assert!(!String::from_utf8_lossy(response.body().as_ref()).contains("10.0.0.1"));
    }
}
