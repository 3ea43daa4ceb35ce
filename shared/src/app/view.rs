//! A prediction as every route returns it (README, "The API"; the OpenAPI document).

use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::callbacks::{CallbackEvent, CallbackStatus};
use crate::domain::money::usd;
use crate::domain::pacing::Pace;
use crate::domain::record::PredictionRecord;
use crate::domain::replicate::{Metrics, PredictionStatus};
use crate::domain::time::Timestamp;
use crate::ports::StoreError;
use crate::ports::objects::ObjectStore;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PredictionView {
    pub id: String,
    pub status: String,
    pub model: String,
    pub version: Option<String>,
    pub input: Map<String, Value>,
    pub output: Vec<OutputView>,
    pub error: Option<String>,
    pub metrics: Metrics,
    pub cost: CostView,
    /// The caller's callback and how its delivery stands; `null` without one.
    pub webhook: Option<CallbackView>,
    pub cached: bool,
    pub created_at: String,
    pub started_at: Option<String>,
    pub completed_at: Option<String>,
    /// Where a `queued` prediction stands in the create queue; `null` otherwise.
    pub queue: Option<QueueView>,
    pub urls: Urls,
}

/// A queued prediction's place (README, "Bursts"): the creates due before it at the
/// configured rate, and when its own is due.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueView {
    pub position: u64,
    pub expected_start: String,
}

impl QueueView {
    pub fn of(record: &PredictionRecord, pace: &Pace, now: Timestamp) -> Option<Self> {
        let queue = record.queue.as_ref().filter(|_| record.is_queued())?;
        Some(Self {
            position: pace.position(queue.slot_at, now),
            expected_start: queue.slot_at.max(now).rfc3339(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputView {
    pub url: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
}

/// What the prediction costs on Replicate: the estimate made at submit, and the actual cost
/// once it ended (`null` before). An answer from the result cache costs nothing.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostView {
    pub estimated_usd: f64,
    pub usd: Option<f64>,
}

impl CostView {
    fn of(record: &PredictionRecord, cached: bool) -> Self {
        if cached {
            return Self {
                estimated_usd: 0.0,
                usd: Some(0.0),
            };
        }
        Self {
            estimated_usd: usd(record.cost_estimate),
            usd: record.cost.filter(|_| record.status.is_terminal()).map(usd),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallbackView {
    pub url: String,
    pub events: Vec<CallbackEvent>,
    /// `pending` until the latest queued event is delivered (or given up on: `failed`).
    pub status: CallbackStatus,
    pub attempts: u32,
}

impl CallbackView {
    fn of(record: &PredictionRecord) -> Option<Self> {
        record.callback.as_ref().map(|c| Self {
            url: c.target.url.clone(),
            events: c.target.events.clone(),
            status: c.status.unwrap_or(CallbackStatus::Pending),
            attempts: c.attempts,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Urls {
    pub get: String,
    pub cancel: String,
}

impl PredictionView {
    /// Builds the view, with fresh download URLs for a succeeded prediction's outputs.
    pub async fn build<O: ObjectStore>(
        record: &PredictionRecord,
        cached: bool,
        objects: &O,
        url_ttl: std::time::Duration,
        queue: Option<QueueView>,
    ) -> Result<Self, StoreError> {
        let mut output = Vec::new();
        if record.status == PredictionStatus::Succeeded {
            for stored in &record.outputs {
                output.push(OutputView {
                    url: objects.presign_get(&stored.key, url_ttl).await?,
                    content_type: stored.content_type.clone(),
                    size: stored.size,
                    sha256: stored.sha256.clone(),
                });
            }
        }
        // A status we do not know is reported as still running rather than invented.
        let status = match &record.status {
            _ if queue.is_some() => "queued".to_owned(),
            PredictionStatus::Unknown(_) => PredictionStatus::Processing.to_string(),
            known => known.to_string(),
        };
        Ok(Self {
            id: record.id.to_string(),
            status,
            model: record.alias.clone(),
            version: record.version.clone(),
            input: record.input.clone(),
            output,
            error: record.error.clone(),
            metrics: record.metrics.clone().unwrap_or_default(),
            cost: CostView::of(record, cached),
            webhook: CallbackView::of(record),
            cached,
            created_at: record.created_at.rfc3339(),
            started_at: record.started_at.map(Timestamp::rfc3339),
            completed_at: record.completed_at.map(Timestamp::rfc3339),
            queue,
            urls: Urls {
                get: format!("/v1/predictions/{}", record.id),
                cancel: format!("/v1/predictions/{}/cancel", record.id),
            },
        })
    }
}
