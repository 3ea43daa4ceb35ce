//! What this service stores about a prediction, and the claims that make submits idempotent.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::callbacks::{CallbackEvent, CallbackState};
use crate::cost::{Micros, Price};
use crate::replicate::{Deadline, Metrics, PredictionStatus};
use crate::tenancy::TenantId;
use crate::time::Timestamp;

/// This service's id for a prediction: 128 random bits as 32 lowercase hex characters.
/// Knowing it is what lets a client read the prediction, so it must not be guessable.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PredictionId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a prediction id")]
pub struct InvalidPredictionId;

impl PredictionId {
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn parse(s: &str) -> Result<Self, InvalidPredictionId> {
        if s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidPredictionId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for PredictionId {
    type Error = InvalidPredictionId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<PredictionId> for String {
    fn from(id: PredictionId) -> String {
        id.0
    }
}

impl fmt::Display for PredictionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Most outputs one prediction may store: the image models make at most 4; an upstream
/// that sends thousands must not grow the record past DynamoDB's 400 KB item limit.
pub const MAX_OUTPUTS: usize = 16;
/// Longest error text kept from Replicate (or written by us).
pub const MAX_ERROR_CHARS: usize = 1000;
/// Metrics beyond `predict_time` and `total_time` that are kept, and the longest key.
const MAX_EXTRA_METRICS: usize = 8;
const MAX_METRIC_KEY_CHARS: usize = 64;

/// An error text cut to `MAX_ERROR_CHARS` (on a character boundary), without control
/// characters: it is stored and shown to clients, so its size must not depend on upstream.
pub fn bounded_error(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control() || *c == '\n')
        .take(MAX_ERROR_CHARS)
        .collect();
    if text.chars().count() > MAX_ERROR_CHARS {
        out.push('…');
    }
    out
}

/// Metrics as stored: the two documented timings plus at most a few other numbers.
pub fn bounded_metrics(metrics: &Metrics) -> Metrics {
    let other = metrics
        .other
        .iter()
        .filter(|(k, v)| v.is_number() && k.chars().count() <= MAX_METRIC_KEY_CHARS)
        .take(MAX_EXTRA_METRICS)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    Metrics {
        predict_time: metrics.predict_time.filter(|t| t.is_finite()),
        total_time: metrics.total_time.filter(|t| t.is_finite()),
        other,
    }
}

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
    /// submit's own create: never sent again, only found (or ended) by the resolver.
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

/// A claim on work (creating a prediction for a cache key or an idempotency key), held until
/// its lease ends. Conditional writes on it make concurrent submits agree on one winner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The item's key, e.g. `cache#<hash>` or `idem#<hash>`.
    pub key: String,
    /// Identifies the holder, so only it can settle or release the claim.
    pub token: String,
    /// The prediction that does (or will do) the work.
    pub prediction_id: Option<PredictionId>,
    /// Hash of the request that made the claim (idempotency keys: same key, same body).
    pub request_hash: Option<String>,
    /// Until then nobody else may take the claim.
    pub lease_until: Timestamp,
    /// DynamoDB TTL (seconds since the epoch).
    pub expires_at: u64,
    /// The first answer was served from the result cache (200), not a new prediction (202):
    /// an Idempotency-Key replay answers as the original did.
    pub from_cache: bool,
}

impl Claim {
    /// Whether the holder's lease ended before `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.lease_until < now
    }

    /// Whether the claim's TTL passed: it no longer counts, whatever it says.
    pub fn past_ttl(&self, now: Timestamp) -> bool {
        ttl_passed(self.expires_at, now)
    }
}

/// Which holder an update of a claim must come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimGuard<'a> {
    Token(&'a str),
    Prediction(&'a PredictionId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_hex_and_parse_back() {
        let a = PredictionId::generate();
        let b = PredictionId::generate();
        assert_ne!(a, b);
        assert_eq!(PredictionId::parse(a.as_str()), Ok(a.clone()));
        for bad in [
            "",
            "ABCDEF0123456789abcdef0123456789",
            "../etc/passwd",
            &"a".repeat(33),
            "g".repeat(32).as_str(),
        ] {
            assert_eq!(PredictionId::parse(bad), Err(InvalidPredictionId), "{bad}");
        }
    }
}
