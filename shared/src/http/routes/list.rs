//! `GET /v1/predictions?limit=&cursor=`: a page of the caller's predictions, newest first.

use lambda_http::{Body, Request, Response};

use super::super::auth::caller;
use super::super::problem::json_or_problem;
use crate::app::list::{DEFAULT_PAGE, MAX_PAGE};
use crate::app::{ApiError, App, PredictionList};
use crate::domain::input_errors::InputErrors;
use crate::ports::Ports;
use crate::ports::records::ListCursor;

pub async fn list<P: Ports>(app: &App<P>, request: Request) -> Response<Body> {
    json_or_problem(try_list(app, &request).await)
}

async fn try_list<P: Ports>(app: &App<P>, request: &Request) -> Result<PredictionList, ApiError> {
    let caller = caller(app, request).await?;
    let (limit, cursor) = page_request(request.uri().query())?;
    app.list(&caller, limit, cursor).await
}

/// `limit` (1–100, default 20) and `cursor` from the query; every problem is a field error.
fn page_request(query: Option<&str>) -> Result<(usize, Option<ListCursor>), ApiError> {
    let mut errors = InputErrors::new();
    let (mut limit, mut cursor) = (DEFAULT_PAGE, None);
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match name.as_ref() {
            "limit" => match value.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => limit = n,
                _ => errors.push(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_PAGE}"),
                ),
            },
            "cursor" => match ListCursor::decode(&value) {
                Some(c) => cursor = Some(c),
                None => errors.push("cursor", "is not a cursor this API gave out"),
            },
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok((limit, cursor))
    } else {
        Err(ApiError::InvalidInput(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ids::PredictionId;
    use crate::domain::time::Timestamp;

    #[test]
    fn limits_and_cursors_are_checked() {
        assert_eq!(page_request(None).unwrap().0, DEFAULT_PAGE);
        assert_eq!(page_request(Some("limit=100")).unwrap().0, 100);
        let cursor = ListCursor {
            created_at: Timestamp::from_millis(1_700_000_000_000),
            id: PredictionId::generate(),
        };
        let query = format!("limit=3&cursor={}", cursor.encode());
        assert_eq!(page_request(Some(&query)).unwrap(), (3, Some(cursor)));
        for bad in [
            "limit=0",
            "limit=101",
            "limit=ten",
            "limit=-1",
            "cursor=abc",
            "cursor=",
        ] {
            assert!(
                matches!(page_request(Some(bad)), Err(ApiError::InvalidInput(_))),
                "{bad}"
            );
        }
    }
}
