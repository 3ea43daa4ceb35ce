//! `GET /v1/predictions?limit=&cursor=`: the caller's predictions, newest first, a page at a
//! time, from the tenant index (a query, never a scan); each record is then read whole.

use futures_util::future::join_all;
use lambda_http::{Body, Request, Response};
use serde::Serialize;

use super::problem::json_or_problem;
use super::{ApiError, App, PredictionView};
use crate::domain::input_errors::InputErrors;
use crate::ports::Ports;
use crate::ports::records::{ListCursor, RecordStore};

pub const DEFAULT_PAGE: usize = 20;
pub const MAX_PAGE: usize = 100;
/// Records read at once for a page.
const READS_AT_ONCE: usize = 16;

#[derive(Debug, Serialize)]
pub struct PredictionList {
    pub items: Vec<PredictionView>,
    pub next_cursor: Option<String>,
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

impl<P: Ports> App<P> {
    pub async fn list(&self, request: Request) -> Response<Body> {
        json_or_problem(self.try_list(&request).await)
    }

    async fn try_list(&self, request: &Request) -> Result<PredictionList, ApiError> {
        let caller = self.authenticate(request).await?;
        let (limit, cursor) = page_request(request.uri().query())?;
        let page = self
            .records
            .list_tenant(&caller.tenant, cursor.as_ref(), limit)
            .await?;
        let mut records = Vec::with_capacity(page.entries.len());
        for chunk in page.entries.chunks(READS_AT_ONCE) {
            let reads = chunk.iter().map(|entry| self.live_prediction(&entry.id));
            records.extend(join_all(reads).await);
        }
        let mut items = Vec::with_capacity(records.len());
        for record in records {
            // Expired (or deleted) since it was listed: left out, as a fetch would 404.
            let Some(record) = record?.filter(|r| r.belongs_to(&caller.tenant)) else {
                continue;
            };
            items.push(self.view(&record, false).await?);
        }
        Ok(PredictionList {
            items,
            next_cursor: page.next.map(|c| c.encode()),
        })
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
