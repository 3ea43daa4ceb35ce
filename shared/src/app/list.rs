//! Listing (`GET /v1/predictions?limit=&cursor=`): the caller's predictions, newest first, a page at a
//! time, from the tenant index (a query, never a scan); each record is then read whole.

use futures_util::future::join_all;
use serde::Serialize;

use super::{ApiError, App, PredictionView};
use crate::domain::tenancy::Caller;
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

impl<P: Ports> App<P> {
    /// A page of up to `limit` of the caller's predictions, after `cursor`.
    pub async fn list(
        &self,
        caller: &Caller,
        limit: usize,
        cursor: Option<ListCursor>,
    ) -> Result<PredictionList, ApiError> {
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
