//! The use cases, on `App<P: Ports>`: submit, cancel, fetch, list, usage, uploads, the
//! callback secret, a Replicate webhook, the output copy, the create queue's drain, callback
//! attempts, the reconciler; and the one state path they all move records through (`sync`).
//!
//! Architecture invariant: the use cases take typed commands and return typed answers or an
//! `ApiError`; they know nothing of Lambda, API Gateway or HTTP headers (ARCHITECTURE.md,
//! "Layers"). They depend only on the ports, so unit tests run them on in-memory fakes.

mod auth;
mod callbacks;
mod cancel;
mod copy;
mod destination;
mod error;
mod fetch;
pub mod inputs;
pub mod list;
pub mod outputs;
mod queue;
mod reconcile;
mod recover;
mod settings;
pub mod submit;
mod sync;
mod uploads;
mod usage;
mod view;
mod webhook;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use crate::domain::ids::PredictionId;
use crate::domain::record::PredictionRecord;
use crate::domain::registry::ModelRegistry;
use crate::domain::replicate::ReplicateError;
use crate::domain::signing::SignatureVerifier;
use crate::domain::tenancy::{Caller, TenantId};
use crate::domain::time::Clock;
use crate::ports::StoreError;
use crate::ports::records::RecordStore;
use crate::ports::replicate::ReplicateApi;
use crate::ports::{PortSet, Ports};

pub use auth::KEY_CACHE_TTL;
pub use callbacks::CallbackDisposition;
pub use callbacks::SecretView;
pub use error::ApiError;
pub use list::PredictionList;
pub use queue::CreateDisposition;
pub use reconcile::{OUTPUT_RETENTION, ReconcileReport};
pub use recover::UNCONFIRMED_DEADLINE;
pub use settings::Settings;
pub use submit::{SubmitBody, SubmitDraft, Submitted};
pub use sync::{SyncError, SyncOutcome};
pub use uploads::UploadSlot;
pub use usage::UsageView;
pub use view::{OutputView, PredictionView, QueueView};
pub use webhook::{Addressee, Receipt, UnverifiedWebhook};

/// After the webhook secret could not be fetched, requests fail fast for this long instead
/// of each asking Replicate again (unauthenticated posts must not drive calls upstream).
const SECRET_FAILURE_BACKOFF: Duration = Duration::from_secs(10);

/// Everything a handler needs, built once per process.
pub struct App<P: Ports> {
    pub replicate: P::Replicate,
    pub records: P::Records,
    pub objects: P::Objects,
    pub downloads: P::Downloads,
    pub queue: P::Queue,
    pub callbacks: P::Callbacks,
    /// Resolves callback hosts at submit (the check before anything is created).
    pub resolver: P::Resolver,
    pub registry: ModelRegistry,
    pub settings: Settings,
    pub clock: Clock,
    keys: auth::KeyCache,
    /// Tenants' callback signing secrets: made once, never changed, so kept per process.
    callback_secrets: Mutex<std::collections::HashMap<TenantId, String>>,
    webhook_verifier: OnceCell<SignatureVerifier>,
    secret_failed_at: Mutex<Option<Instant>>,
}

impl<P: Ports> App<P> {
    /// A prediction as every route returns it: fresh download URLs, and where it stands in
    /// the create queue if it waits there.
    pub(crate) async fn view(
        &self,
        record: &PredictionRecord,
        cached: bool,
    ) -> Result<PredictionView, StoreError> {
        let queue = QueueView::of(record, &self.settings.create_pace, self.clock.now());
        PredictionView::build(
            record,
            cached,
            &self.objects,
            self.settings.output_url_ttl,
            queue,
        )
        .await
    }

    pub fn new(ports: PortSet<P>, registry: ModelRegistry, settings: Settings) -> Self {
        let webhook_verifier =
            OnceCell::new_with(settings.webhook_secret.clone().map(SignatureVerifier::new));
        Self {
            replicate: ports.replicate,
            records: ports.records,
            objects: ports.objects,
            downloads: ports.downloads,
            queue: ports.queue,
            callbacks: ports.callbacks,
            resolver: ports.resolver,
            registry,
            settings,
            clock: Clock::default(),
            keys: auth::KeyCache::default(),
            callback_secrets: Mutex::default(),
            webhook_verifier,
            secret_failed_at: Mutex::new(None),
        }
    }

    /// The webhook verifier, with the configured secret or one fetched from Replicate once
    /// per process (on first use rather than at start-up, so cold starts do not wait for it).
    /// A failed fetch is remembered for a few seconds: `None` until then, without a call.
    pub async fn webhook_verifier(&self) -> Option<&SignatureVerifier> {
        if let Some(verifier) = self.webhook_verifier.get() {
            return Some(verifier);
        }
        let failed_at = *self
            .secret_failed_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if failed_at.is_some_and(|t| t.elapsed() < SECRET_FAILURE_BACKOFF) {
            return None;
        }
        let fetched: Result<&SignatureVerifier, ReplicateError> = self
            .webhook_verifier
            .get_or_try_init(|| async {
                self.replicate
                    .webhook_secret()
                    .await
                    .map(SignatureVerifier::new)
            })
            .await;
        match fetched {
            Ok(verifier) => Some(verifier),
            Err(err) => {
                tracing::error!(error = %err, "webhook signing secret unavailable");
                *self
                    .secret_failed_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                None
            }
        }
    }

    /// A prediction, unless its TTL has passed (DynamoDB deletes expired items only
    /// eventually; until then they must look deleted).
    pub async fn live_prediction(
        &self,
        id: &PredictionId,
    ) -> Result<Option<PredictionRecord>, StoreError> {
        let now = self.clock.now();
        Ok(self
            .records
            .get_prediction(id)
            .await?
            .filter(|r| !r.is_expired(now)))
    }

    /// The caller's prediction with the id `raw`: another tenant's is answered exactly like
    /// one that does not exist, as is an id that is not one of ours.
    pub async fn callers_prediction(
        &self,
        caller: &Caller,
        raw: Option<&str>,
    ) -> Result<PredictionRecord, ApiError> {
        let not_found = || ApiError::NotFound("no prediction with this id".to_owned());
        let id = raw
            .and_then(|raw| PredictionId::parse(raw).ok())
            .ok_or_else(not_found)?;
        tracing::Span::current().record("prediction_id", id.as_str());
        self.live_prediction(&id)
            .await?
            .filter(|r| r.belongs_to(&caller.tenant))
            .ok_or_else(not_found)
    }
}
