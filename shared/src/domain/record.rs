//! What this service stores about a prediction, and the claims that make submits idempotent.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::callbacks::{CallbackEvent, CallbackState};
use crate::domain::cost::Price;
use crate::domain::ids::PredictionId;
use crate::domain::limits::bounded_error;
use crate::domain::money::Micros;
use crate::domain::replicate::{Deadline, Metrics, PredictionStatus};
use crate::domain::tenancy::TenantId;
use crate::domain::time::Timestamp;

/// One output file, stored in our bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredOutput {
    pub key: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
}

/// A prediction as this service knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PredictionRecord {
    pub id: PredictionId,
    /// Replicate's id, once the prediction exists there.
    pub replicate_id: Option<String>,
    /// The alias the client asked for (what `model` shows).
    pub alias: String,
    /// `owner/name` on Replicate.
    pub model: String,
    pub version: Option<String>,
    /// The input as sent to Replicate (defaults applied).
    pub input: Map<String, Value>,
    pub status: PredictionStatus,
    pub outputs: Vec<StoredOutput>,
    pub error: Option<String>,
    pub metrics: Option<Metrics>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    /// Last time a fetch asked Replicate for this prediction's state.
    pub synced_at: Option<Timestamp>,
    /// Last time a fetch or the reconciler queued the copy of its outputs.
    pub copy_queued_at: Option<Timestamp>,
    /// Last time a client asked to cancel it: a prediction not yet tied to Replicate's is
    /// cancelled as soon as it is (or ends `canceled` if it was never created).
    pub cancel_requested_at: Option<Timestamp>,
    /// DynamoDB TTL (seconds since the epoch).
    pub expires_at: u64,
    /// A secret in this record's webhook URL: only Replicate, which we told the URL, can
    /// address a delivery to this record (a delivery signed for another prediction cannot).
    pub webhook_token: Option<String>,
    /// Whose prediction it is; only this tenant can see it. `None` on records from before
    /// tenants existed: nobody's.
    pub tenant: Option<TenantId>,
    /// The alias's price when it was submitted (what the actual cost is computed with).
    pub price: Option<Price>,
    /// Reserved against the tenant's budget at submit.
    pub cost_estimate: Micros,
    /// What Replicate billed, once the prediction ended.
    pub cost: Option<Micros>,
    /// The SHA-256 of each uploaded image the input names (`upload://` field → content),
    /// as submit verified and sent it.
    pub input_files: BTreeMap<String, String>,
    /// The caller's callback, if it asked for one.
    pub callback: Option<CallbackState>,
    /// Set when it was accepted over the create rate: the drainer creates it later.
    pub queue: Option<QueueState>,
}

/// A prediction accepted while creates were over `REPLICATE_CREATES_PER_MINUTE` (README,
/// "Bursts"): the create queue's drainer sends its create at `slot_at` or just after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueState {
    /// The create slot it was given (its expected start).
    pub slot_at: Timestamp,
    /// Where Replicate's webhooks for it go: the API's base URL as submit saw it.
    pub webhook_base: String,
    /// The caller's `Cancel-After`, passed on with the create.
    pub deadline: Deadline,
    /// When a drainer claimed it to send the create. From then on it is as unconfirmed as a
    /// submit's own create: never sent again, only found (or ended) by lost-create recovery.
    pub sent_at: Option<Timestamp>,
}

impl PredictionRecord {
    /// Whether a create was (or may have been) sent but never confirmed at Replicate.
    pub fn is_unconfirmed(&self) -> bool {
        self.replicate_id.is_none()
            && !self.status.is_terminal()
            && self.queue.as_ref().is_none_or(|q| q.sent_at.is_some())
    }

    /// Whether it waits in the create queue: accepted, no create sent yet.
    pub fn is_queued(&self) -> bool {
        self.replicate_id.is_none()
            && !self.status.is_terminal()
            && self.queue.as_ref().is_some_and(|q| q.sent_at.is_none())
    }

    /// When its create was sent (or may have been): what a lost create is looked for around.
    pub fn create_sent_at(&self) -> Timestamp {
        self.queue
            .as_ref()
            .and_then(|q| q.sent_at)
            .unwrap_or(self.created_at)
    }

    /// Whether DynamoDB's TTL has passed: such a record is treated as gone.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        ttl_passed(self.expires_at, now)
    }

    /// Whether its `completed` callback is still to be queued: then the record stays in the
    /// open index after it ends, so the reconciler queues it if whoever ended it could not.
    pub fn owes_completed_callback(&self) -> bool {
        self.callback.as_ref().is_some_and(|c| {
            c.target.wants(CallbackEvent::Completed) && c.event != Some(CallbackEvent::Completed)
        })
    }

    /// Whether `tenant` may see this prediction.
    pub fn belongs_to(&self, tenant: &TenantId) -> bool {
        self.tenant.as_ref() == Some(tenant)
    }
}

/// Whether a TTL attribute (seconds) is before `now`. DynamoDB deletes expired items
/// lazily, up to days later; until then they must count as gone.
pub fn ttl_passed(expires_at: u64, now: Timestamp) -> bool {
    Timestamp::from_unix_seconds(expires_at) < now
}

/// A new random token for a record's webhook URL (128 bits, hex).
pub fn new_webhook_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// A forward move of a prediction's state, applied only if it is a move forward.
#[derive(Debug, Clone, PartialEq)]
pub struct Advance {
    pub status: PredictionStatus,
    /// The Replicate prediction this state is about: the advance applies only if the record
    /// is tied to exactly this one (`None`: only if it is tied to none, so ending an
    /// unconfirmed record can never end one a webhook tied meanwhile). Never written.
    pub replicate_id: Option<String>,
    pub outputs: Vec<StoredOutput>,
    pub error: Option<String>,
    pub metrics: Option<Metrics>,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    /// What Replicate billed: set with a terminal status (`App::finish` computes it).
    pub cost: Option<Micros>,
    /// A terminal advance leaves the record in the open index (a callback is still to be
    /// queued; `RecordStore::callback_queued` takes it out).
    pub keep_open: bool,
}

impl Advance {
    /// Ends a prediction as `failed`, for a reason of ours (shown to clients).
    pub fn failed(reason: &str, now: Timestamp) -> Self {
        Self {
            status: PredictionStatus::Failed,
            replicate_id: None,
            outputs: Vec::new(),
            error: Some(bounded_error(reason)),
            metrics: None,
            started_at: None,
            completed_at: Some(now),
            cost: None,
            keep_open: false,
        }
    }
}
