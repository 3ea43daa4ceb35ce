//! The two claims of a submit (ARCHITECTURE.md, "Submit"): `idem#…` names the prediction an
//! Idempotency-Key was answered with; `cache#…` the one prediction doing the work for an
//! input. One conditional put takes a claim; the holder's record decides what a held one
//! means.

use std::time::Duration;

use super::{NewPrediction, Started};
use crate::app::{ApiError, App};
use crate::domain::claims::{Claim, ClaimGuard, ClaimOutcome, IdempotencyKey, Settlement};
use crate::domain::digest::sha256_hex;
use crate::domain::ids::PredictionId;
use crate::domain::record::PredictionRecord;
use crate::domain::registry::CacheKey;
use crate::domain::replicate::PredictionStatus;
use crate::domain::tenancy::TenantId;
use crate::domain::time::Timestamp;
use crate::ports::Ports;
use crate::ports::records::RecordStore;
use crate::telemetry::metrics::{self, Metric};

/// How long a submit may take to create its prediction before others may take over (the
/// Replicate client gives up on a create well within it).
pub(super) const CREATE_LEASE: Duration = Duration::from_secs(30);
/// How long an Idempotency-Key is remembered.
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Rounds of claim contention before answering 503.
const MAX_CLAIM_ROUNDS: usize = 5;
const CLAIM_RETRY_WAIT: Duration = Duration::from_millis(100);

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

/// What to do about a cache key someone else holds.
enum Holder {
    Cached(PredictionRecord),
    InFlight(PredictionRecord),
    /// The holder is between claiming and recording its prediction.
    Wait,
    TakeOver,
}

/// The claim item of a result-cache key (which includes the tenant).
fn cache_claim_key(cache_key: &CacheKey) -> String {
    format!("cache#{}", cache_key.as_str())
}

/// The claim item of a tenant's Idempotency-Key (a tenant name holds no newline).
pub fn idempotency_claim_key(tenant: &TenantId, key: &IdempotencyKey) -> String {
    format!(
        "idem#{}",
        sha256_hex(format!("{tenant}\n{}", key.as_str()).as_bytes())
    )
}

impl<P: Ports> App<P> {
    /// Same key and same body: the same prediction, answered as the first time. Same key,
    /// other body: 422. Keys are the caller's tenant's own: two tenants' keys never meet.
    pub(super) async fn submit_idempotently(
        &self,
        key: &IdempotencyKey,
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
    pub(super) async fn start_or_join(&self, new: &NewPrediction<'_>) -> Result<Started, ApiError> {
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
}
