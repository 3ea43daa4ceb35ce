//! `POST /v1/predictions` as a use case: validate, then answer from the result cache, join
//! an identical prediction in flight, or create one at Replicate with a webhook, and return
//! at once.
//!
//! The claim protocol (ARCHITECTURE.md, "Submit"): a cache claim names the one prediction
//! doing the work for an input; an Idempotency-Key claim names the prediction a key was
//! answered with (`claims`). A create whose outcome is unknown keeps both pointing at its
//! record, which lost-create recovery (`recover`) later ties to the Replicate prediction or
//! ends (`create`).

pub(crate) mod claims;
mod create;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::inputs::{InlineImage, extract_inline_images, with_file_references};
use super::{ApiError, App, PredictionView};
use crate::app::destination::check_destination;
use crate::domain::callbacks::{CallbackEvent, CallbackTarget};
use crate::domain::claims::IdempotencyKey;
use crate::domain::destination::parse_callback_url;
use crate::domain::ids::PredictionId;
use crate::domain::input_errors::InputErrors;
use crate::domain::record::PredictionRecord;
use crate::domain::registry::{CacheKey, ModelAlias};
use crate::domain::replicate::Deadline;
use crate::domain::tenancy::Caller;
use crate::ports::Ports;

/// A submit body that has the right shape (`http::body` reads it, bounded).
#[derive(Debug, Clone, PartialEq)]
pub struct SubmitBody {
    pub model: String,
    /// At most `MAX_INPUT_FIELDS` fields. Scalars as given; an array or object value is an
    /// empty placeholder of its kind (no model takes one, so validation still refuses it).
    pub input: Value,
    /// The callback URL as given in `webhook` (checked here: syntax, then where it
    /// resolves).
    pub callback_url: Option<String>,
    /// The events to call back for (`webhook_events_filter`), without repeats;
    /// `[completed]` unless given.
    pub callback_events: Vec<CallbackEvent>,
    /// SHA-256 (hex) of the canonical body: "same body" for Idempotency-Key purposes,
    /// whatever the formatting or key order.
    pub hash: String,
}

/// A submit that passed every check that needs no claim (model, input, callback, uploads):
/// `App::submit` starts it, or answers it from the cache, a join or a replay.
pub struct SubmitDraft<'a> {
    caller: &'a Caller,
    alias: &'a ModelAlias,
    /// The input as stored and shown: inline images replaced by their references.
    stored_input: Map<String, Value>,
    images: Vec<InlineImage>,
    /// `None` with `Cache-Control: no-cache`, a deadline of its own or a callback.
    cache_key: Option<CacheKey>,
    deadline: Deadline,
    /// Content hashes of the uploads the input names, by field.
    input_files: BTreeMap<String, String>,
    callback: Option<CallbackTarget>,
    /// What an Idempotency-Key stands for: the body, and the deadline if it has its own.
    request_hash: String,
}

/// What a submit asks for, once parsed and validated.
struct NewPrediction<'a> {
    /// The id this request's prediction gets if this request creates one. Claims name it
    /// before anything is created, so whoever finds a claim can find the record.
    id: PredictionId,
    alias: &'a ModelAlias,
    stored_input: Map<String, Value>,
    images: Vec<InlineImage>,
    cache_key: Option<CacheKey>,
    /// Where Replicate's webhooks go: the API's own base URL.
    webhook_base: String,
    caller: &'a Caller,
    /// `Cancel-After`: Replicate ends the prediction by then.
    deadline: Deadline,
    input_files: BTreeMap<String, String>,
    /// Where to call the caller back, if it asked.
    callback: Option<CallbackTarget>,
}

/// How a submit was answered: a new or joined prediction (202), or one from the result
/// cache (200); `replayed` when an Idempotency-Key's first answer was repeated.
#[derive(Debug, Clone, PartialEq)]
pub struct Submitted {
    pub view: PredictionView,
    pub cached: bool,
    pub replayed: bool,
}

/// How a submit was answered, before the view is built.
struct Started {
    record: PredictionRecord,
    cached: bool,
    replayed: bool,
}

impl Started {
    fn new(record: PredictionRecord) -> Self {
        Self {
            record,
            cached: false,
            replayed: false,
        }
    }
}

impl<P: Ports> App<P> {
    /// Everything a submit is checked for before any claim is taken: the model (404), the
    /// input (422), the callback's destination and the uploads the input names (422).
    pub async fn prepare_submit<'a>(
        &'a self,
        caller: &'a Caller,
        body: SubmitBody,
        deadline: Deadline,
        no_cache: bool,
    ) -> Result<SubmitDraft<'a>, ApiError> {
        let alias = self
            .registry
            .resolve(&body.model)
            .map_err(|e| ApiError::UnknownModel(e.reason))?;
        let input = alias
            .validate(&body.input)
            .map_err(ApiError::InvalidInput)?;
        let (stored_input, mut images) = extract_inline_images(alias, &input);
        let callback = self.callback_target(&body).await?;
        let uploads = self.verify_uploads(caller, alias, &stored_input).await?;
        images.extend(uploads.images);
        // A request with its own deadline neither joins nor is joined: whoever joined would
        // get (or impose) another deadline, and a cancel of one would stop the other. One
        // with a callback neither: a joiner's callback would never be called.
        let shareable = !no_cache && deadline == Deadline::MAX && callback.is_none();
        // Uploads are keyed by content: the same slot may hold other bytes later.
        let cache_key = shareable.then(|| {
            alias.cache_key_of(
                caller.tenant.as_str(),
                &with_file_references(&stored_input, &uploads.files),
            )
        });
        // The deadline is part of the request an Idempotency-Key stands for.
        let request_hash = match deadline {
            Deadline::MAX => body.hash,
            other => format!("{}|{other}", body.hash),
        };
        Ok(SubmitDraft {
            caller,
            alias,
            stored_input,
            images,
            cache_key,
            deadline,
            input_files: uploads.files,
            callback,
            request_hash,
        })
    }

    /// Starts a prepared submit whose webhooks go to `webhook_base`: under its
    /// Idempotency-Key if it has one, through the result cache unless it opted out.
    pub async fn submit(
        &self,
        draft: SubmitDraft<'_>,
        webhook_base: String,
        key: Option<IdempotencyKey>,
    ) -> Result<Submitted, ApiError> {
        let request_hash = draft.request_hash;
        let new = NewPrediction {
            id: PredictionId::generate(),
            alias: draft.alias,
            stored_input: draft.stored_input,
            images: draft.images,
            cache_key: draft.cache_key,
            webhook_base,
            caller: draft.caller,
            deadline: draft.deadline,
            input_files: draft.input_files,
            callback: draft.callback,
        };
        let started = match key {
            Some(key) => self.submit_idempotently(&key, &request_hash, &new).await?,
            None => self.start_or_join(&new).await?,
        };
        Ok(Submitted {
            view: self.view(&started.record, started.cached).await?,
            cached: started.cached,
            replayed: started.replayed,
        })
    }

    /// The submit's callback, if any: an https URL whose host resolves only to public
    /// addresses (422 for `webhook` otherwise, before anything is created).
    async fn callback_target(&self, body: &SubmitBody) -> Result<Option<CallbackTarget>, ApiError> {
        let Some(raw) = &body.callback_url else {
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
                events: body.callback_events.clone(),
            })),
            Err(reason) => {
                let mut errors = InputErrors::new();
                errors.push("webhook", reason);
                Err(ApiError::InvalidInput(errors))
            }
        }
    }
}
