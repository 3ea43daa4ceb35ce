//! `POST /v1/predictions`: validate, then answer from the result cache, join an identical
//! prediction in flight, or create one at Replicate with a webhook, and return at once.

use std::time::Duration;

use http::{HeaderMap, HeaderValue, StatusCode, header};
use lambda_http::{Body, Request, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Ports;
use super::problem::json_response;
use super::sync::cache_claim_key;
use super::{ApiError, App, MAX_BODY_BYTES, PredictionView};
use crate::outputs::hex;
use crate::ports::{ClaimOutcome, RecordStore};
use crate::record::{Claim, ClaimGuard, Millis, PredictionId, PredictionRecord};
use crate::registry::{FieldError, ModelAlias, ValidatedInput, canonical_json};
use crate::replicate::{
    PredictionStatus, ReplicateApi, ReplicateError, WebhookEvent, WebhookTarget,
};

/// How long a submit may take to create its prediction before others may take over.
const CREATE_LEASE: Duration = Duration::from_secs(30);
/// How long identical requests join a running prediction (Replicate stops one at 30 min).
const RUN_LEASE: Duration = Duration::from_secs(3600);
/// How long an Idempotency-Key is remembered.
const IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// Rounds of claim contention before answering 503.
const MAX_CLAIM_ROUNDS: usize = 5;
const CLAIM_RETRY_WAIT: Duration = Duration::from_millis(100);
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A submit body that has the right shape.
struct SubmitBody {
    model: String,
    input: Value,
    /// SHA-256 of the canonical body: "same body" for Idempotency-Key purposes.
    hash: String,
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

/// What to do about a cache key someone else holds.
enum Holder {
    Cached(PredictionRecord),
    InFlight(PredictionRecord),
    /// The holder is between claiming and recording its prediction.
    Wait,
    TakeOver,
}

fn add_ms(t: Millis, d: Duration) -> Millis {
    t.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// DynamoDB TTL attributes are in seconds.
fn ttl_seconds(t: Millis) -> u64 {
    t / 1000
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn parse_body(bytes: &[u8]) -> Result<SubmitBody, ApiError> {
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge {
            limit: MAX_BODY_BYTES,
        });
    }
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("request body is not valid JSON: {e}")))?;
    let hash = sha256_hex(canonical_json(&value).as_bytes());
    let Value::Object(mut fields) = value else {
        return Err(ApiError::BadRequest(
            "request body must be a JSON object".to_owned(),
        ));
    };
    let mut errors = Vec::new();
    let mut error = |field: &str, message: &str| {
        errors.push(FieldError {
            field: field.to_owned(),
            message: message.to_owned(),
        })
    };
    let model = match fields.remove("model") {
        Some(Value::String(m)) if !m.trim().is_empty() => Some(m),
        Some(_) => {
            error("model", "must be a non-empty string naming a model");
            None
        }
        None => {
            error("model", "is required");
            None
        }
    };
    let input = match fields.remove("input") {
        Some(input @ Value::Object(_)) => Some(input),
        Some(_) => {
            error("input", "must be a JSON object");
            None
        }
        None => {
            error("input", "is required");
            None
        }
    };
    for unknown in fields.keys() {
        error(
            unknown,
            "is not a field of this request (expected `model` and `input`)",
        );
    }
    match (model, input) {
        (Some(model), Some(input)) if errors.is_empty() => Ok(SubmitBody { model, input, hash }),
        _ => Err(ApiError::InvalidInput(errors)),
    }
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
        return Ok(None);
    };
    let key = value.to_str().map(str::trim).unwrap_or_default();
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    {
        return Err(ApiError::BadRequest(
            "Idempotency-Key must be 1 to 255 visible ASCII characters".to_owned(),
        ));
    }
    Ok(Some(key.to_owned()))
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
                let view = match PredictionView::build(
                    &started.record,
                    started.cached,
                    &self.objects,
                    self.settings.output_url_ttl,
                )
                .await
                {
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
        let body = parse_body(request.body().as_ref())?;
        let alias = self
            .registry
            .resolve(&body.model)
            .map_err(|e| ApiError::UnknownModel(e.reason))?;
        let input = alias
            .validate(&body.input)
            .map_err(|e| ApiError::InvalidInput(e.0))?;
        let use_cache = !wants_no_cache(request.headers());
        let webhook_base = self.webhook_base(request)?;
        match idempotency_key(request.headers())? {
            Some(key) => {
                self.submit_idempotently(&key, &body.hash, alias, input, use_cache, &webhook_base)
                    .await
            }
            None => {
                self.start_or_join(alias, input, use_cache, &webhook_base)
                    .await
            }
        }
    }

    /// Where Replicate should send webhooks: `PUBLIC_BASE_URL`, or this request's own origin.
    fn webhook_base(&self, request: &Request) -> Result<String, ApiError> {
        if let Some(base) = &self.settings.public_base_url {
            return Ok(base.as_str().trim_end_matches('/').to_owned());
        }
        let headers = request.headers();
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
            })
            .ok_or_else(|| {
                ApiError::BadRequest("the request has no valid Host header".to_owned())
            })?;
        let scheme = headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .filter(|s| matches!(*s, "http" | "https"))
            .or_else(|| request.uri().scheme_str())
            .unwrap_or("https");
        Ok(format!("{scheme}://{host}"))
    }

    /// Same key and same body: the same prediction. Same key, other body: 422.
    async fn submit_idempotently(
        &self,
        key: &str,
        body_hash: &str,
        alias: &ModelAlias,
        input: ValidatedInput,
        use_cache: bool,
        webhook_base: &str,
    ) -> Result<Started, ApiError> {
        let now = self.clock.millis();
        let claim = Claim {
            key: format!("idem#{}", sha256_hex(key.as_bytes())),
            token: PredictionId::generate().to_string(),
            prediction_id: None,
            request_hash: Some(body_hash.to_owned()),
            lease_until: add_ms(now, CREATE_LEASE),
            expires_at: ttl_seconds(add_ms(now, IDEMPOTENCY_WINDOW)),
        };
        if let ClaimOutcome::HeldBy(held) = self.records.try_claim(&claim, now).await? {
            if held.request_hash.as_deref() != Some(body_hash) {
                return Err(ApiError::IdempotencyKeyReused);
            }
            let Some(id) = held.prediction_id else {
                return Err(ApiError::IdempotencyInProgress);
            };
            let record = self
                .records
                .get_prediction(&id)
                .await?
                .ok_or(ApiError::IdempotencyInProgress)?;
            return Ok(Started {
                status: StatusCode::OK,
                replayed: true,
                ..Started::new(record)
            });
        }
        let guard = ClaimGuard::Token(&claim.token);
        let result = self
            .start_or_join(alias, input, use_cache, webhook_base)
            .await;
        let settled = match &result {
            Ok(started) => {
                let until = add_ms(now, IDEMPOTENCY_WINDOW);
                self.records
                    .settle_claim(&claim.key, guard, &started.record.id, until)
                    .await
            }
            // Nothing was started, so the same key may be used again at once.
            Err(_) => self.records.release_claim(&claim.key, guard).await,
        };
        if let Err(err) = settled {
            tracing::warn!(error = %err, "could not settle the idempotency claim");
        }
        result
    }

    /// The result cache: one claim per (model version, canonical input). Whoever takes it
    /// creates the prediction; everyone else gets that prediction.
    async fn start_or_join(
        &self,
        alias: &ModelAlias,
        input: ValidatedInput,
        use_cache: bool,
        webhook_base: &str,
    ) -> Result<Started, ApiError> {
        if !use_cache {
            return self.create(alias, &input, None, webhook_base).await;
        }
        let cache_key = alias.cache_key(&input);
        let key = cache_claim_key(cache_key.as_str());
        for _ in 0..MAX_CLAIM_ROUNDS {
            let now = self.clock.millis();
            let claim = self.cache_claim(&key, now);
            let won = match self.records.try_claim(&claim, now).await? {
                ClaimOutcome::Claimed => true,
                ClaimOutcome::HeldBy(held) => {
                    let existing = match &held.prediction_id {
                        Some(id) => self.records.get_prediction(id).await?,
                        None => None,
                    };
                    match self.judge_holder(existing, &held, now) {
                        Holder::Cached(record) => {
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
                let claim = Some((cache_key.as_str(), &claim));
                return self.create(alias, &input, claim, webhook_base).await;
            }
        }
        Err(ApiError::Unavailable {
            retry_after: Duration::from_secs(1),
        })
    }

    fn cache_claim(&self, key: &str, now: Millis) -> Claim {
        Claim {
            key: key.to_owned(),
            token: PredictionId::generate().to_string(),
            prediction_id: Some(PredictionId::generate()),
            request_hash: None,
            lease_until: add_ms(now, CREATE_LEASE),
            expires_at: ttl_seconds(add_ms(now, self.settings.record_ttl)),
        }
    }

    fn judge_holder(
        &self,
        existing: Option<PredictionRecord>,
        held: &Claim,
        now: Millis,
    ) -> Holder {
        match existing {
            None if held.is_expired(now) => Holder::TakeOver,
            None => Holder::Wait,
            Some(record) if record.status == PredictionStatus::Succeeded => {
                let fresh_until = add_ms(
                    record.completed_at.unwrap_or(0),
                    self.settings.result_cache_ttl,
                );
                if fresh_until > now {
                    Holder::Cached(record)
                } else {
                    Holder::TakeOver
                }
            }
            // Failed, canceled and aborted predictions are never served from the cache.
            Some(record) if record.status.is_terminal() => Holder::TakeOver,
            Some(record)
                if record.is_unconfirmed() && add_ms(record.created_at, CREATE_LEASE) < now =>
            {
                Holder::TakeOver
            }
            Some(record) => Holder::InFlight(record),
        }
    }

    async fn create(
        &self,
        alias: &ModelAlias,
        input: &ValidatedInput,
        claim: Option<(&str, &Claim)>,
        webhook_base: &str,
    ) -> Result<Started, ApiError> {
        let now = self.clock.millis();
        let id = claim
            .and_then(|(_, c)| c.prediction_id.clone())
            .unwrap_or_else(PredictionId::generate);
        let mut record = PredictionRecord {
            id: id.clone(),
            replicate_id: None,
            alias: alias.alias.clone(),
            model: alias.model.path(),
            version: alias.model.version.as_ref().map(|v| v.to_string()),
            input: input.as_map().clone(),
            cache_key: claim.map(|(cache_key, _)| cache_key.to_owned()),
            status: PredictionStatus::Starting,
            outputs: Vec::new(),
            error: None,
            metrics: None,
            created_at: now,
            started_at: None,
            completed_at: None,
            synced_at: None,
            expires_at: ttl_seconds(add_ms(now, self.settings.record_ttl)),
        };
        tracing::Span::current().record("prediction_id", id.as_str());
        if let Err(err) = self.records.insert_prediction(&record).await {
            self.release_cache_claim(claim).await;
            return Err(err.into());
        }
        let webhook = WebhookTarget {
            url: format!("{webhook_base}/webhooks/replicate?id={id}"),
            events: vec![WebhookEvent::Start, WebhookEvent::Completed],
        };
        let webhook = self.settings.send_webhooks.then_some(&webhook);
        match self
            .replicate
            .create_prediction(&alias.model, input.as_map(), webhook)
            .await
        {
            Ok(remote) => {
                if !self.records.attach_replicate_id(&id, &remote.id).await? {
                    tracing::warn!(prediction_id = %id, replicate_id = %remote.id, "record already names another Replicate prediction");
                }
                record.replicate_id = Some(remote.id.clone());
                tracing::info!(prediction_id = %id, replicate_id = %remote.id, model = %alias.model, "prediction created");
                if let Some((_, claim)) = claim {
                    let until = add_ms(now, RUN_LEASE);
                    if let Err(err) = self
                        .records
                        .settle_claim(&claim.key, ClaimGuard::Token(&claim.token), &id, until)
                        .await
                    {
                        tracing::warn!(prediction_id = %id, error = %err, "could not extend the cache claim");
                    }
                }
                // A create answered `processing` is recorded now; anything terminal is left to
                // the webhook or a fetch, which store outputs (so submit never writes to S3).
                if remote.status == PredictionStatus::Processing {
                    record = self.apply_created_state(record, &remote).await;
                }
                Ok(Started::new(record))
            }
            Err(err @ ReplicateError::CreateOutcomeUnknown { .. }) => {
                // It may exist at Replicate: keep the record (its webhook adopts it) and let
                // the claim's lease run out rather than risk a second, billed prediction.
                tracing::error!(prediction_id = %id, error = %err, "prediction create outcome unknown");
                Err(ApiError::Upstream)
            }
            Err(err) => {
                if let Err(store_err) = self.records.delete_prediction(&id).await {
                    tracing::warn!(prediction_id = %id, error = %store_err, "could not delete the unused record");
                }
                self.release_cache_claim(claim).await;
                Err(err.into())
            }
        }
    }

    /// A create answered with a later state: record it right away.
    async fn apply_created_state(
        &self,
        record: PredictionRecord,
        remote: &crate::replicate::Prediction,
    ) -> PredictionRecord {
        if let Err(err) = self.apply_remote(&record, remote).await {
            tracing::warn!(prediction_id = %record.id, error = %err, "could not apply the create answer's state");
        }
        match self.records.get_prediction(&record.id).await {
            Ok(Some(fresh)) => fresh,
            _ => record,
        }
    }

    async fn release_cache_claim(&self, claim: Option<(&str, &Claim)>) {
        if let Some((_, claim)) = claim
            && let Err(err) = self
                .records
                .release_claim(&claim.key, ClaimGuard::Token(&claim.token))
                .await
        {
            tracing::warn!(error = %err, "could not release the cache claim");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_shape_errors_are_per_field() {
        let Err(ApiError::InvalidInput(errors)) = parse_body(br#"{"model": 3, "inputs": {}}"#)
        else {
            panic!()
        };
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["model", "input", "inputs"]);
        assert!(matches!(
            parse_body(b"{\"model\": "),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(parse_body(b"[1,2]"), Err(ApiError::BadRequest(_))));
        assert!(matches!(parse_body(b""), Err(ApiError::BadRequest(_))));
        assert!(matches!(
            parse_body(&vec![b' '; MAX_BODY_BYTES + 1]),
            Err(ApiError::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn the_same_body_hashes_the_same_whatever_its_formatting() {
        let a = parse_body(br#"{"model":"sdxl","input":{"prompt":"x","seed":1}}"#)
            .ok()
            .unwrap();
        let b =
            parse_body(b"{ \"input\": {\"seed\": 1, \"prompt\": \"x\"},\n \"model\": \"sdxl\" }")
                .ok()
                .unwrap();
        let c = parse_body(br#"{"model":"sdxl","input":{"prompt":"y","seed":1}}"#)
            .ok()
            .unwrap();
        assert_eq!(a.hash, b.hash);
        assert_ne!(a.hash, c.hash);
    }

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
    }
}
