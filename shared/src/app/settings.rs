//! What the use cases need to know about this deployment. Read from the environment by the
//! composition root (`config`), in one place.

use std::time::Duration;

use url::Url;

use crate::domain::destination::CallbackAllowList;
use crate::domain::outputs::HostAllowlist;
use crate::domain::pacing::Pace;
use crate::domain::signing::SigningSecret;

/// Everything the handlers need to know about this deployment.
#[derive(Debug, Clone)]
pub struct Settings {
    pub replicate_base_url: String,
    /// `None` when the secret is to be fetched from Replicate on first use.
    pub webhook_secret: Option<SigningSecret>,
    pub table_name: String,
    pub bucket_name: String,
    /// SQS queue of output copy jobs (`COPY_QUEUE_URL`).
    pub copy_queue_url: String,
    /// SQS queue of callbacks to callers (`CALLBACK_QUEUE_URL`), and where events go whose
    /// retry window closed (`CALLBACK_DEAD_LETTER_QUEUE_URL`).
    pub callback_queue_url: String,
    pub callback_dead_letter_url: String,
    /// SQS queue of queued creates (`CREATE_QUEUE_URL`; README, "Bursts").
    pub create_queue_url: String,
    /// Creates at Replicate per minute across every instance (`REPLICATE_CREATES_PER_MINUTE`,
    /// 500), and the longest a queued create may wait (`MAX_QUEUE_SECONDS`, 900) before
    /// submits are refused.
    pub create_pace: Pace,
    /// `host:port`s callbacks may reach although private or plain http
    /// (`CALLBACK_ALLOW_HOSTS`; local testing only).
    pub callback_allow: CallbackAllowList,
    /// The first wait before a failed callback is retried (`CALLBACK_RETRY_BASE_SECONDS`).
    pub callback_retry_base: Duration,
    /// Base URL Replicate sends webhooks to; derived from each request when unset.
    pub public_base_url: Option<Url>,
    pub output_hosts: HostAllowlist,
    pub output_url_ttl: Duration,
    /// How long a succeeded prediction answers identical requests (`RESULT_CACHE_TTL_SECONDS`).
    pub result_cache_ttl: Duration,
    /// A fetch re-asks Replicate about a running prediction at most this often
    /// (`FETCH_SYNC_INTERVAL_SECONDS`).
    pub fetch_sync_interval: Duration,
    /// How long records are kept before DynamoDB's TTL removes them (`RECORD_TTL_DAYS`).
    pub record_ttl: Duration,
    /// The reconciler syncs predictions still running this long after creation
    /// (`RECONCILE_AFTER_SECONDS`).
    pub reconcile_after: Duration,
    /// A record whose create outcome is unknown is looked for in Replicate's list only this
    /// long after the attempt (`RESOLVE_AFTER_SECONDS`): by then a create that did happen is
    /// listed, and any identical create in flight has recorded its own id.
    pub resolve_after: Duration,
    /// Whether creates ask Replicate for webhooks (`SEND_WEBHOOKS`, default true). Off when
    /// nothing can reach this service, e.g. the real API from a laptop: fetches sync instead.
    pub send_webhooks: bool,
}
