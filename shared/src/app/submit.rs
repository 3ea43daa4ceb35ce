//! `POST /v1/predictions`: validate, then answer from the result cache, join an identical
//! prediction in flight, or create one at Replicate with a webhook, and return at once.
//!
//! The claim protocol (ARCHITECTURE.md, "Submit"): a cache claim names the one prediction
//! doing the work for an input; an Idempotency-Key claim names the prediction a key was
//! answered with. A create whose outcome is unknown keeps both pointing at its record,
//! which the resolver (`resolve.rs`) later ties to the Replicate prediction or ends.

use std::collections::BTreeMap;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::body::{SubmitBody, parse_submit_body};
use super::inputs::{InlineImage, extract_inline_images, materialize, with_file_references};
use super::problem::json_response;
use super::queue::Sent;
use super::{ApiError, App};
use crate::app::destination::check_destination;
use crate::domain::callbacks::{CallbackState, CallbackTarget};
use crate::domain::claims::{Claim, ClaimGuard};
use crate::domain::claims::{ClaimOutcome, Settlement};
use crate::domain::cost::Billed;
use crate::domain::cost::requested_outputs;
use crate::domain::cost::{Reservation, month_of, usage_expires_at};
use crate::domain::destination::parse_callback_url;
use crate::domain::digest::hex;
use crate::domain::ids::PredictionId;
use crate::domain::input_errors::InputErrors;
use crate::domain::money::{Micros, usd};
use crate::domain::pacing::CreateSlot;
use crate::domain::record::{PredictionRecord, QueueState, new_webhook_token};
use crate::domain::registry::{CacheKey, ModelAlias};
use crate::domain::replicate::{Deadline, InvalidDeadline, PredictionStatus, ReplicateError};
use crate::domain::tenancy::{Caller, TenantId};
use crate::domain::time::Timestamp;
use crate::ports::Ports;
use crate::ports::accounts::AccountStore;
use crate::ports::records::RecordStore;
use crate::telemetry::metrics::{self, Metric};

/// How long a submit may take to create its prediction before others may take over (the
/// Replicate client gives up on a create well within it).
const CREATE_LEASE: Duration = Duration::from_secs(30);
/// How long an Idempotency-Key is remembered.
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Rounds of claim contention before answering 503.
const MAX_CLAIM_ROUNDS: usize = 5;
const CLAIM_RETRY_WAIT: Duration = Duration::from_millis(100);
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// What a submit asks for, once parsed and validated.
struct NewPrediction<'a> {
    /// The id this request's prediction gets if this request creates one. Claims name it
    /// before anything is created, so whoever finds a claim can find the record.
    id: PredictionId,
    alias: &'a ModelAlias,
    /// The input as stored and shown: inline images replaced by their references.
    stored_input: Map<String, Value>,
    images: Vec<InlineImage>,
    /// `None` with `Cache-Control: no-cache`.
    cache_key: Option<CacheKey>,
    webhook_base: String,
    caller: &'a Caller,
    /// `Cancel-After`: Replicate ends the prediction by then.
    deadline: Deadline,
    /// Content hashes of the uploads the input names, by field.
    input_files: BTreeMap<String, String>,
    /// Where to call the caller back, if it asked.
    callback: Option<CallbackTarget>,
}

/// How a submit was answered.
struct Started {
    record: PredictionRecord,
    status: StatusCode,
    cached: bool,
    replayed: bool,
}

impl Started {
    fn new(record: PredictionRecord) -> Self {
        Self {
            record,
            status: StatusCode::ACCEPTED,
            cached: false,
            replayed: false,
        }
    }
}

/// What to do about an Idempotency-Key someone else holds.
enum KeyHolder {
    /// Answered (or being answered) with this prediction.
    Replay(Box<PredictionRecord>),
    /// Its request is still between claiming and recording a prediction.
    InProgress,
    /// Its request died before recording anything (nothing was created), or the window
    /// ended: the key is free to take.
    TakeOver,
}

/// Whether a record whose insert reported an error is there after all.
enum ReadBack {
    Stored,
    Absent,
    Unknown,
}

/// What to do about a cache key someone else holds.
enum Holder {
    Cached(PredictionRecord),
    InFlight(PredictionRecord),
    /// The holder is between claiming and recording its prediction.
    Wait,
    TakeOver,
}

pub(super) fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// The claim item of a result-cache key (which includes the tenant).
fn cache_claim_key(cache_key: &CacheKey) -> String {
    format!("cache#{}", cache_key.as_str())
}

/// The claim item of a tenant's Idempotency-Key (a tenant name holds no newline).
pub(super) fn idempotency_claim_key(tenant: &TenantId, key: &str) -> String {
    format!("idem#{}", sha256_hex(format!("{tenant}\n{key}").as_bytes()))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    // As the OpenAPI document states it: up to 255 visible ASCII characters and spaces, at
    // least one visible; the spaces around it are not part of the key.
    let raw = value.as_bytes();
    let key = value
        .to_str()
        .map(|k| k.trim_matches(' '))
        .unwrap_or_default();
    if key.is_empty() || raw.len() > 255 || !raw.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
    {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".to_owned(),
        ));
    }
    Ok(Some(key.to_owned()))
}

pub const CANCEL_AFTER_HEADER: &str = "cancel-after";

/// The client's `Cancel-After` (5 s to 30 min), or the 30 minutes every prediction gets.
fn cancel_after(headers: &HeaderMap) -> Result<Deadline, ApiError> {
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

fn wants_no_cache(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|directive| directive.trim().eq_ignore_ascii_case("no-cache"))
}

impl<P: Ports> App<P> {
    pub async fn submit(&self, request: Request) -> Response<Body> {
        match self.try_submit(&request).await {
            Ok(started) => {
                let view = match self.view(&started.record, started.cached).await {
                    Ok(view) => view,
                    Err(err) => return ApiError::from(err).into_response(),
                };
                let mut response = json_response(started.status, &view);
                if started.replayed {
                    response
                        .headers_mut()
                        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
                }
                response
            }
            Err(err) => err.into_response(),
        }
    }

    async fn try_submit(&self, request: &Request) -> Result<Started, ApiError> {
        let caller = self.authenticate(request).await?;
        self.admit_submit(&caller, self.clock.now()).await?;
        let body = parse_submit_body(request.body().as_ref())?;
        let deadline = cancel_after(request.headers())?;
        let alias = self
            .registry
            .resolve(&body.model)
            .map_err(|e| ApiError::UnknownModel(e.reason))?;
        let input = alias
            .validate(&body.input)
            .map_err(ApiError::InvalidInput)?;
        let (stored_input, mut images) = extract_inline_images(alias, &input);
        let callback = self.callback_target(&body).await?;
        let uploads = self.verify_uploads(&caller, alias, &stored_input).await?;
        images.extend(uploads.images);
        // A request with its own deadline neither joins nor is joined: whoever joined would
        // get (or impose) another deadline, and a cancel of one would stop the other. One
        // with a callback neither: a joiner's callback would never be called.
        let shareable =
            !wants_no_cache(request.headers()) && deadline == Deadline::MAX && callback.is_none();
        // Uploads are keyed by content: the same slot may hold other bytes later.
        let cache_key = shareable.then(|| {
            alias.cache_key_of(
                caller.tenant.as_str(),
                &with_file_references(&stored_input, &uploads.files),
            )
        });
        let new = NewPrediction {
            id: PredictionId::generate(),
            alias,
            stored_input,
            images,
            cache_key,
            webhook_base: self.webhook_base(request)?,
            caller: &caller,
            deadline,
            input_files: uploads.files,
            callback,
        };
        match idempotency_key(request.headers())? {
            Some(key) => {
                // The deadline is part of the request an Idempotency-Key stands for.
                let request_hash = match deadline {
                    Deadline::MAX => body.hash.clone(),
                    other => format!("{}|{other}", body.hash),
                };
                self.submit_idempotently(&key, &request_hash, &new).await
            }
            None => self.start_or_join(&new).await,
        }
    }

    /// The submit's callback, if any: an https URL whose host resolves only to public
    /// addresses (422 for `webhook` otherwise, before anything is created).
    async fn callback_target(&self, body: &SubmitBody) -> Result<Option<CallbackTarget>, ApiError> {
        let Some(raw) = &body.webhook else {
            return Ok(None);
        };
        let allow = &self.settings.callback_allow;
        let checked = match parse_callback_url(raw, allow) {
            Ok(url) => check_destination(&url, allow, &self.resolver)
                .await
                .map(|_| url),
            Err(reason) => Err(reason),
        };
        match checked {
            Ok(url) => Ok(Some(CallbackTarget {
                url: url.to_string(),
                events: body.events.clone(),
            })),
            Err(reason) => {
                let mut errors = InputErrors::new();
                errors.push("webhook", reason);
                Err(ApiError::InvalidInput(errors))
            }
        }
    }

    /// Where Replicate should send webhooks: `PUBLIC_BASE_URL`, or the API's own domain as
    /// API Gateway saw it (https, with any custom-domain base path), never a client header.
    fn webhook_base(&self, request: &Request) -> Result<String, ApiError> {
        if let Some(base) = &self.settings.public_base_url {
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

    /// Same key and same body: the same prediction, answered as the first time. Same key,
    /// other body: 422. Keys are the caller's tenant's own: two tenants' keys never meet.
    async fn submit_idempotently(
        &self,
        key: &str,
        body_hash: &str,
        new: &NewPrediction<'_>,
    ) -> Result<Started, ApiError> {
        let key = idempotency_claim_key(&new.caller.tenant, key);
        for _ in 0..MAX_CLAIM_ROUNDS {
            let now = self.clock.now();
            let claim = Claim {
                key: key.clone(),
                token: PredictionId::generate().to_string(),
                prediction_id: Some(new.id.clone()),
                request_hash: Some(body_hash.to_owned()),
                lease_until: now.plus(CREATE_LEASE),
                expires_at: now.plus(IDEMPOTENCY_WINDOW).unix_seconds(),
                from_cache: false,
            };
            let won = match self.records.try_claim(&claim).await? {
                ClaimOutcome::Claimed => true,
                ClaimOutcome::HeldBy(held) => {
                    if held.request_hash.as_deref() != Some(body_hash) && !held.past_ttl(now) {
                        return Err(ApiError::IdempotencyKeyReused);
                    }
                    match self.judge_key_holder(&held, now).await? {
                        KeyHolder::Replay(record) => {
                            return Ok(Started {
                                status: if held.from_cache {
                                    StatusCode::OK
                                } else {
                                    StatusCode::ACCEPTED
                                },
                                cached: held.from_cache,
                                replayed: true,
                                ..Started::new(*record)
                            });
                        }
                        KeyHolder::InProgress => return Err(ApiError::IdempotencyInProgress),
                        KeyHolder::TakeOver => {
                            self.records.replace_claim(&claim, &held.token).await?
                        }
                    }
                }
            };
            if won {
                return self.answer_for_key(&claim, new, now).await;
            }
        }
        Err(ApiError::IdempotencyInProgress)
    }

    async fn judge_key_holder(&self, held: &Claim, now: Timestamp) -> Result<KeyHolder, ApiError> {
        if held.past_ttl(now) {
            return Ok(KeyHolder::TakeOver);
        }
        let record = match &held.prediction_id {
            Some(id) => self.live_prediction(id).await?,
            None => None,
        };
        Ok(match record {
            Some(record) => KeyHolder::Replay(Box::new(record)),
            // A record is always stored before its create is sent: none after the lease
            // means the holder died before creating anything.
            None if held.is_expired(now) => KeyHolder::TakeOver,
            None => KeyHolder::InProgress,
        })
    }

    /// Runs the request under the key it holds, then points the key at the answer. A
    /// failed request frees the key: errors are only returned when nothing was created.
    async fn answer_for_key(
        &self,
        claim: &Claim,
        new: &NewPrediction<'_>,
        now: Timestamp,
    ) -> Result<Started, ApiError> {
        let guard = ClaimGuard::Token(&claim.token);
        let result = self.start_or_join(new).await;
        let settled = match &result {
            Ok(started) => {
                let settlement = Settlement {
                    prediction_id: &started.record.id,
                    lease_until: now.plus(IDEMPOTENCY_WINDOW),
                    from_cache: started.cached,
                };
                self.records
                    .settle_claim(&claim.key, guard, &settlement)
                    .await
            }
            Err(_) => self.records.release_claim(&claim.key, guard).await,
        };
        if let Err(err) = settled {
            tracing::warn!(error = %err, "could not settle the idempotency claim");
        }
        result
    }

    /// The result cache: one claim per (alias, model version, stored input). Whoever takes
    /// it creates the prediction; everyone else gets that prediction.
    async fn start_or_join(&self, new: &NewPrediction<'_>) -> Result<Started, ApiError> {
        let Some(cache_key) = &new.cache_key else {
            return self.create(new, None).await;
        };
        let key = cache_claim_key(cache_key);
        for _ in 0..MAX_CLAIM_ROUNDS {
            let now = self.clock.now();
            let claim = self.cache_claim(&key, &new.id, now);
            let won = match self.records.try_claim(&claim).await? {
                ClaimOutcome::Claimed => true,
                ClaimOutcome::HeldBy(held) => {
                    let existing = match &held.prediction_id {
                        Some(id) => self.live_prediction(id).await?,
                        None => None,
                    };
                    match self.judge_holder(existing, &held, now) {
                        Holder::Cached(record) => {
                            metrics::record(Metric::count("CacheHits").by("Model", &record.alias));
                            return Ok(Started {
                                status: StatusCode::OK,
                                cached: true,
                                ..Started::new(record)
                            });
                        }
                        Holder::InFlight(record) => return Ok(Started::new(record)),
                        Holder::Wait => {
                            tokio::time::sleep(CLAIM_RETRY_WAIT).await;
                            false
                        }
                        Holder::TakeOver => self.records.replace_claim(&claim, &held.token).await?,
                    }
                }
            };
            if won {
                return self.create(new, Some(&claim)).await;
            }
        }
        Err(ApiError::Unavailable {
            retry_after: Duration::from_secs(1),
        })
    }

    fn cache_claim(&self, key: &str, id: &PredictionId, now: Timestamp) -> Claim {
        Claim {
            key: key.to_owned(),
            token: PredictionId::generate().to_string(),
            prediction_id: Some(id.clone()),
            request_hash: None,
            lease_until: now.plus(CREATE_LEASE),
            expires_at: now.plus(self.settings.record_ttl).unix_seconds(),
            from_cache: false,
        }
    }

    /// What a cache claim's holder means for this request. A running prediction is joined
    /// whatever the claim's lease, also while its creation is unconfirmed: it ends one way or
    /// the other (resolved, or failed at the give-up), and only then may anyone create again.
    /// The lease only lets a holder that died before storing its record be taken over.
    fn judge_holder(
        &self,
        existing: Option<PredictionRecord>,
        held: &Claim,
        now: Timestamp,
    ) -> Holder {
        if held.past_ttl(now) && existing.as_ref().is_none_or(|r| r.status.is_terminal()) {
            return Holder::TakeOver;
        }
        match existing {
            None if held.is_expired(now) => Holder::TakeOver,
            None => Holder::Wait,
            Some(record) if record.status == PredictionStatus::Succeeded => {
                let fresh_until = record
                    .completed_at
                    .unwrap_or(Timestamp::EPOCH)
                    .plus(self.settings.result_cache_ttl);
                if fresh_until > now {
                    Holder::Cached(record)
                } else {
                    Holder::TakeOver
                }
            }
            // Failed, canceled and aborted predictions are never served from the cache.
            Some(record) if record.status.is_terminal() => Holder::TakeOver,
            Some(record) => Holder::InFlight(record),
        }
    }

    async fn create(
        &self,
        new: &NewPrediction<'_>,
        claim: Option<&Claim>,
    ) -> Result<Started, ApiError> {
        let now = self.clock.now();
        let id = claim
            .and_then(|c| c.prediction_id.clone())
            .unwrap_or_else(|| new.id.clone());
        let estimate = match self.reserve_estimate(new, now).await {
            Ok(estimate) => estimate,
            Err(err) => {
                self.release_cache_claim(claim).await;
                return Err(err);
            }
        };
        let token = new_webhook_token();
        let record = PredictionRecord {
            id: id.clone(),
            replicate_id: None,
            alias: new.alias.alias.clone(),
            model: new.alias.model.path(),
            version: new.alias.model.version.as_ref().map(|v| v.to_string()),
            input: new.stored_input.clone(),
            status: PredictionStatus::Starting,
            outputs: Vec::new(),
            error: None,
            metrics: None,
            created_at: now,
            started_at: None,
            completed_at: None,
            synced_at: None,
            copy_queued_at: None,
            cancel_requested_at: None,
            expires_at: now.plus(self.settings.record_ttl).unix_seconds(),
            webhook_token: Some(token.clone()),
            tenant: Some(new.caller.tenant.clone()),
            price: Some(new.alias.price),
            cost_estimate: estimate,
            cost: None,
            input_files: new.input_files.clone(),
            callback: new.callback.clone().map(CallbackState::new),
            queue: None,
        };
        tracing::Span::current().record("prediction_id", id.as_str());
        // The create rate (README, "Bursts"): a slot now, a later one (queued), or none.
        // Taken after every check that can refuse the submit, so a refused one holds none.
        let slot = match self
            .records
            .reserve_create_slot(&self.settings.create_pace, now)
            .await
        {
            Ok(CreateSlot::Full { retry_after }) => {
                metrics::record(Metric::count("QueueFull"));
                self.give_back_estimate(&record).await;
                self.release_cache_claim(claim).await;
                return Err(ApiError::Backlogged { retry_after });
            }
            Ok(slot) => slot,
            Err(err) => {
                self.give_back_estimate(&record).await;
                self.release_cache_claim(claim).await;
                return Err(err.into());
            }
        };
        if let Err(err) = self.records.insert_prediction(&record).await {
            match self.read_back(&record).await {
                ReadBack::Stored => {}
                ReadBack::Absent => {
                    self.give_back_estimate(&record).await;
                    self.release_cache_claim(claim).await;
                    return Err(err.into());
                }
                // It may be stored: if so the resolver ends it and settles its reservation
                // once; if not, the estimate stays counted (never given back twice).
                ReadBack::Unknown => {
                    self.release_cache_claim(claim).await;
                    return Err(err.into());
                }
            }
        }
        let sent_input = match materialize(&self.objects, &new.stored_input, &new.images).await {
            Ok(input) => input,
            Err(err) => {
                tracing::error!(prediction_id = %id, error = %err, "input images could not be stored");
                self.end_unstarted(&record, "the input images could not be stored")
                    .await;
                self.release_cache_claim(claim).await;
                return Err(ApiError::Internal);
            }
        };
        if let CreateSlot::At(slot_at) = slot {
            // Its slot is later: the drainer creates it then (README, "Bursts"). Marked
            // queued only now that its inputs are stored: a record that never got this far
            // is never created by anyone.
            let queue = QueueState {
                slot_at,
                webhook_base: new.webhook_base.clone(),
                deadline: new.deadline,
                sent_at: None,
            };
            if !matches!(self.records.mark_queued(&id, &queue).await, Ok(true)) {
                tracing::error!(prediction_id = %id, "could not mark the record queued");
                self.end_unstarted(&record, "the prediction could not be queued")
                    .await;
                self.release_cache_claim(claim).await;
                return Err(ApiError::Internal);
            }
            let record = PredictionRecord {
                queue: Some(queue),
                ..record
            };
            self.send_to_create_queue(&record, slot_at).await;
            metrics::record(Metric::count("PredictionsQueued").by("Model", &new.alias.alias));
            return Ok(Started::new(record));
        }
        match self
            .send_create(&record, &sent_input, &new.webhook_base, new.deadline)
            .await
        {
            Sent::Created(record) | Sent::Unknown(record) => Ok(Started::new(record)),
            Sent::Throttled(retry_after) => {
                // Replicate throttled past the retry budget: nothing was created, so it waits
                // in the create queue instead of failing.
                match self
                    .queue_throttled(&record, &new.webhook_base, new.deadline, retry_after)
                    .await
                {
                    Some(queued) => Ok(Started::new(queued)),
                    None => {
                        let err = ReplicateError::Throttled {
                            retry_after: Some(retry_after),
                            attempts: 1,
                        };
                        self.end_unstarted(&record, creation_refused(&err)).await;
                        self.release_cache_claim(claim).await;
                        Err(err.into())
                    }
                }
            }
            Sent::Refused(err) => {
                // Nothing was created: the record ends `failed` (anyone who joined it sees
                // why) and the cache key is free at once.
                self.end_unstarted(&record, creation_refused(&err)).await;
                self.release_cache_claim(claim).await;
                Err(err.into())
            }
        }
    }

    /// Reserves the run's estimated cost against the caller's monthly budget, atomically
    /// with every other submit of the tenant: 402 when it would not fit.
    async fn reserve_estimate(
        &self,
        new: &NewPrediction<'_>,
        now: Timestamp,
    ) -> Result<Micros, ApiError> {
        let caller = new.caller;
        let estimate = new.alias.price.estimate(&new.stored_input);
        let reservation = Reservation {
            estimate,
            images: requested_outputs(&new.stored_input),
            budget: caller.monthly_budget,
            expires_at: usage_expires_at(now),
        };
        let reserved = self
            .records
            .reserve_cost(&caller.tenant, &month_of(now), &reservation)
            .await?;
        if reserved {
            return Ok(estimate);
        }
        Err(ApiError::BudgetExhausted {
            estimate_usd: usd(estimate),
            budget_usd: caller.monthly_budget.map_or(0.0, usd),
        })
    }

    /// Whether a record whose insert reported an error was stored all the same (a lost
    /// answer, or an SDK retry of a write that had landed): then it goes on as stored, and
    /// its reservation is settled once, when it ends.
    async fn read_back(&self, record: &PredictionRecord) -> ReadBack {
        match self.records.get_prediction(&record.id).await {
            Ok(Some(stored)) if stored.webhook_token == record.webhook_token => ReadBack::Stored,
            Ok(_) => ReadBack::Absent,
            Err(_) => ReadBack::Unknown,
        }
    }

    /// Undoes a reservation whose record could not even be stored.
    async fn give_back_estimate(&self, record: &PredictionRecord) {
        self.settle_usage(record, 0, 0, false).await;
    }

    /// Ends a record whose prediction was certainly never created at Replicate (its
    /// estimate is given back).
    /// The caller gets an error instead of this record, so its callback is not called.
    async fn end_unstarted(&self, record: &PredictionRecord, reason: &str) {
        let unseen = PredictionRecord {
            callback: None,
            ..record.clone()
        };
        if let Err(err) = self.end_record(&unseen, reason, Billed::NotCreated).await {
            tracing::warn!(prediction_id = %record.id, error = %err, "could not end the unstarted record");
        }
    }

    async fn release_cache_claim(&self, claim: Option<&Claim>) {
        if let Some(claim) = claim
            && let Err(err) = self
                .records
                .release_claim(&claim.key, ClaimGuard::Token(&claim.token))
                .await
        {
            tracing::warn!(error = %err, "could not release the cache claim");
        }
    }
}

/// The route a submit arrives on; what precedes it in the path is a custom domain's base.
const SUBMIT_ROUTE: &str = "/v1/predictions";

fn valid_domain(domain: &str) -> bool {
    !domain.is_empty()
        && domain.len() <= 253
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
}

/// Why a create Replicate certainly refused ended the record; shown to clients, so no
/// upstream text (it may echo the token or the input).
fn creation_refused(err: &ReplicateError) -> &'static str {
    match err {
        ReplicateError::Throttled { .. } => {
            "Replicate was throttling requests; the prediction was not created"
        }
        ReplicateError::Unavailable { .. }
        | ReplicateError::Unreachable { .. }
        | ReplicateError::TimedOut { .. }
        | ReplicateError::Transport { .. } => {
            "Replicate could not be reached; the prediction was not created"
        }
        _ => "Replicate refused to create the prediction",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            idempotency_key(&headers).unwrap().as_deref(),
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
            idempotency_key(&headers).unwrap().as_deref(),
            Some("an order")
        );
    }
}
