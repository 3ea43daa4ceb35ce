//! The API key on every `/v1/*` route: `Authorization: Bearer <key>`, parsed strictly, then
//! the use cases' key check.

use lambda_http::Request;

use crate::app::{ApiError, App};
use crate::domain::tenancy::{ApiKey, Caller};
use crate::ports::Ports;

/// The caller of a `/v1/*` request, or 401.
pub async fn caller<P: Ports>(app: &App<P>, request: &Request) -> Result<Caller, ApiError> {
    let key = bearer_key(request.headers().get(::http::header::AUTHORIZATION))
        .map_err(|reason| ApiError::Unauthenticated(reason.to_owned()))?;
    app.authenticate(&key).await
}

/// The key of an `Authorization: Bearer <key>` header; `Err` says what is wrong with it.
pub fn bearer_key(header: Option<&::http::HeaderValue>) -> Result<ApiKey, &'static str> {
    let header = header.ok_or("this route needs an API key: `Authorization: Bearer <key>`")?;
    let text = header
        .to_str()
        .map_err(|_| "the Authorization header is not a bearer API key")?;
    let (scheme, key) = text
        .trim()
        .split_once(' ')
        .ok_or("the Authorization header is not a bearer API key")?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err("the Authorization header is not a bearer API key");
    }
    ApiKey::parse(key.trim()).map_err(|_| "the API key is malformed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::http::HeaderValue;

    #[test]
    fn bearer_headers_are_parsed_strictly() {
        let key = ApiKey::generate();
        let header = |v: &str| HeaderValue::from_str(v).unwrap();
        let good = format!("Bearer {}", key.expose());
        assert_eq!(bearer_key(Some(&header(&good))), Ok(key.clone()));
        let lower = format!("bearer  {} ", key.expose());
        assert_eq!(bearer_key(Some(&header(&lower))), Ok(key.clone()));
        assert!(bearer_key(None).is_err());
        for bad in [
            "Basic dXNlcjpwYXNz".to_owned(),
            key.expose().to_owned(),
            "Bearer short".to_owned(),
            "Bearer ".to_owned(),
            format!("Bearer {}", "k".repeat(300)),
            format!("Bearer {}\"", key.expose()),
        ] {
            assert!(bearer_key(Some(&header(&bad))).is_err(), "{bad}");
        }
        let binary = HeaderValue::from_bytes(b"Bearer \xff\xfe0123456789abcdef").unwrap();
        assert!(bearer_key(Some(&binary)).is_err());
    }
}
