//! The request headers a submit reads: `Idempotency-Key`, `Cancel-After`, `Cache-Control`,
//! and where Replicate's webhooks should come back to (never a client header).

use ::http::{HeaderMap, header};
use lambda_http::{Request, RequestExt};

use crate::app::{ApiError, Settings};
use crate::domain::claims::IdempotencyKey;
use crate::domain::input_errors::InputErrors;
use crate::domain::replicate::{Deadline, InvalidDeadline};

pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
pub const CANCEL_AFTER_HEADER: &str = "cancel-after";

/// The route a submit arrives on; what precedes it in the path is a custom domain's base.
const SUBMIT_ROUTE: &str = "/v1/predictions";

/// The request's `Idempotency-Key`, checked on the raw value as the OpenAPI document states
/// it (400 otherwise).
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    IdempotencyKey::parse(value.as_bytes())
        .map(Some)
        .map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// The client's `Cancel-After` (5 s to 30 min), or the 30 minutes every prediction gets.
pub fn cancel_after(headers: &HeaderMap) -> Result<Deadline, ApiError> {
    let Some(value) = headers.get(CANCEL_AFTER_HEADER) else {
        return Ok(Deadline::MAX);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| Deadline::parse(text).ok())
        .ok_or_else(|| {
            let mut errors = InputErrors::new();
            errors.push("Cancel-After", InvalidDeadline.to_string());
            ApiError::InvalidInput(errors)
        })
}

/// `Cache-Control: no-cache`: neither answered from the result cache nor joined.
pub fn wants_no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|directive| directive.trim().eq_ignore_ascii_case("no-cache"))
}

/// Where Replicate should send webhooks: `PUBLIC_BASE_URL`, or the API's own domain as
/// API Gateway saw it (https, with any custom-domain base path), never a client header.
pub fn webhook_base(settings: &Settings, request: &Request) -> Result<String, ApiError> {
    if let Some(base) = &settings.public_base_url {
        return Ok(base.as_str().trim_end_matches('/').to_owned());
    }
    if let Some(lambda_http::request::RequestContext::ApiGatewayV2(context)) =
        request.request_context_ref()
        && let Some(domain) = context.domain_name.as_deref().filter(|d| valid_domain(d))
    {
        let path = context
            .http
            .path
            .clone()
            .unwrap_or_else(|| request.uri().path().to_owned());
        let base_path = path
            .trim_end_matches('/')
            .strip_suffix(SUBMIT_ROUTE)
            .unwrap_or_default();
        return Ok(format!("https://{domain}{base_path}"));
    }
    tracing::error!("PUBLIC_BASE_URL is unset and the request has no API Gateway domain");
    Err(ApiError::Internal)
}

fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::HeaderValue;

    #[test]
    fn cache_control_and_idempotency_headers() {
        let mut headers = HeaderMap::new();
        assert!(!wants_no_cache(&headers));
        headers.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=0, No-Cache"),
        );
        assert!(wants_no_cache(&headers));
        assert_eq!(idempotency_key(&headers).unwrap(), None);
        headers.insert(
            IDEMPOTENCY_KEY_HEADER,
            HeaderValue::from_static(" order-42 "),
        );
        assert_eq!(
            idempotency_key(&headers)
                .unwrap()
                .as_ref()
                .map(|k| k.as_str()),
            Some("order-42")
        );
        headers.insert(
            IDEMPOTENCY_KEY_HEADER,
            HeaderValue::from_str(&"k".repeat(256)).unwrap(),
        );
        assert!(idempotency_key(&headers).is_err());
        headers.insert(
            IDEMPOTENCY_KEY_HEADER,
            HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap(),
        );
        assert!(idempotency_key(&headers).is_err());
        // What the OpenAPI document rules out is refused even where trimming would hide it.
        for bad in ["order\t42", "   ", "order-42\t"] {
            headers.insert(IDEMPOTENCY_KEY_HEADER, HeaderValue::from_str(bad).unwrap());
            assert!(idempotency_key(&headers).is_err(), "{bad:?}");
        }
        let padded = format!("{} ", "k".repeat(255));
        headers.insert(
            IDEMPOTENCY_KEY_HEADER,
            HeaderValue::from_str(&padded).unwrap(),
        );
        assert!(
            idempotency_key(&headers).is_err(),
            "256 characters with the space"
        );
        headers.insert(IDEMPOTENCY_KEY_HEADER, HeaderValue::from_static("an order"));
        assert_eq!(
            idempotency_key(&headers)
                .unwrap()
                .as_ref()
                .map(|k| k.as_str()),
            Some("an order")
        );
    }
}
