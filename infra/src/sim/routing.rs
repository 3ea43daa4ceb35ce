//! The HTTP entry: routing, the auth check, reading a create's body and `Cancel-After`,
//! the versions and models the simulator knows, and the JSON, problem and gateway answers.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, StatusCode, header};
use serde_json::{Map, Value, json};

use super::answers::{json, problem};
use super::faults::Faults;
use super::{State, lock};
use crate::http_server::{HttpRequest, HttpResponse};

pub(super) const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Versions the simulator knows, as Replicate would: version id → `owner/name`.
const KNOWN_VERSIONS: &[(&str, &str)] = &[
    (
        "7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc",
        "stability-ai/sdxl",
    ),
    (
        "95b7223104132402a9ae91cc677285bc5eb997834bd2349fa486f53910fd68b3",
        "stability-ai/stable-diffusion-inpainting",
    ),
    (
        "f121d640bd286e1fdc67f9799164c1d5be36ff74576ee11c803ae5b665dd46aa",
        "nightmareai/real-esrgan",
    ),
];

/// Models run through `/models/{owner}/{name}/predictions`.
pub(super) const OFFICIAL_MODELS: &[&str] = &[
    "black-forest-labs/flux-schnell",
    "black-forest-labs/flux-1.1-pro",
    "black-forest-labs/flux-dev",
];

pub(super) async fn handle(state: Arc<State>, request: HttpRequest) -> HttpResponse {
    let path = request.uri().path().to_owned();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = request.method().clone();
    match (&method, segments.as_slice()) {
        (&Method::GET, ["files", id, name]) => {
            return state.serve_file(&format!("{id}/{name}")).await;
        }
        (&Method::GET, ["_sim", "stats"]) => {
            return json(StatusCode::OK, &json!(*lock(&state.stats)));
        }
        (&Method::GET, ["_sim", "faults"]) => {
            return json(StatusCode::OK, &json!(*lock(&state.faults)));
        }
        (&Method::POST, ["_sim", "faults"]) => {
            return match serde_json::from_slice::<Faults>(request.body()) {
                Ok(faults) => {
                    *lock(&state.faults) = faults;
                    json(StatusCode::OK, &json!(*lock(&state.faults)))
                }
                Err(e) => problem(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
            };
        }
        _ => {}
    }
    if !authorised(&request) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "You did not pass a valid authentication token",
        );
    }
    if let Some(response) = state.api_fault(&method, &segments).await {
        return response;
    }
    match (&method, segments.as_slice()) {
        (&Method::POST, ["v1", "predictions"]) => {
            let created = match cancel_after(&request) {
                Ok(deadline) => state.create(request.body(), None, deadline).await,
                Err(detail) => problem(StatusCode::UNPROCESSABLE_ENTITY, detail),
            };
            state.answer_create(created).await
        }
        (&Method::POST, ["v1", "models", owner, name, "predictions"]) => {
            let created = match cancel_after(&request) {
                Ok(deadline) => {
                    state
                        .create(request.body(), Some(format!("{owner}/{name}")), deadline)
                        .await
                }
                Err(detail) => problem(StatusCode::UNPROCESSABLE_ENTITY, detail),
            };
            state.answer_create(created).await
        }
        (&Method::GET, ["v1", "predictions"]) => state.list(request.uri().query()),
        (&Method::GET, ["v1", "predictions", id]) => {
            lock(&state.stats).gets += 1;
            match lock(&state.predictions).get(*id) {
                Some(p) => json(StatusCode::OK, &state.to_json(p)),
                None => problem(StatusCode::NOT_FOUND, "Not found."),
            }
        }
        (&Method::POST, ["v1", "predictions", id, "cancel"]) => state.cancel(id).await,
        (&Method::GET, ["v1", "webhooks", "default", "secret"]) => {
            json(StatusCode::OK, &json!({"key": state.config.secret}))
        }
        (&Method::GET, ["v1", "models", owner, name]) => state.model(owner, name),
        _ => problem(StatusCode::NOT_FOUND, "Not found."),
    }
}

/// A create's `Cancel-After` (`90s`, `5m`, `1h30m`; at least 5 s), as Replicate reads it.
fn cancel_after(request: &HttpRequest) -> Result<Option<Duration>, &'static str> {
    let Some(value) = request.headers().get("cancel-after") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| humantime::parse_duration(text.trim()).ok())
        .filter(|d| *d >= Duration::from_secs(5))
        .map(Some)
        .ok_or("Cancel-After must be a duration of at least 5s")
}

fn authorised(request: &HttpRequest) -> bool {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|token| !token.trim().is_empty())
}

/// A create request's fields.
#[derive(Debug)]
pub(super) struct CreateBody {
    pub(super) version: Option<String>,
    pub(super) input: Map<String, Value>,
    pub(super) webhook: Option<String>,
    pub(super) events: Vec<String>,
}

/// Checks a create body as Replicate's schema does (`additionalProperties: false`).
pub(super) fn parse_create(body: &[u8], official: bool) -> Result<CreateBody, String> {
    let Ok(Value::Object(mut fields)) = serde_json::from_slice::<Value>(body) else {
        return Err("request body must be a JSON object".to_owned());
    };
    let allowed: &[&str] = if official {
        &["input", "webhook", "webhook_events_filter", "stream"]
    } else {
        &[
            "version",
            "input",
            "webhook",
            "webhook_events_filter",
            "stream",
        ]
    };
    if let Some(extra) = fields.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("Additional property {extra} is not allowed"));
    }
    let Some(Value::Object(input)) = fields.remove("input") else {
        return Err("input is required and must be an object".to_owned());
    };
    let version = match fields.remove("version") {
        Some(Value::String(v)) => Some(v),
        Some(_) => return Err("version must be a string".to_owned()),
        None if official => None,
        None => return Err("version is required".to_owned()),
    };
    let webhook = match fields.remove("webhook") {
        Some(Value::String(url)) if url.starts_with("http://") || url.starts_with("https://") => {
            Some(url)
        }
        Some(_) => return Err("webhook must be an http(s) URL".to_owned()),
        None => None,
    };
    let events = match fields.remove("webhook_events_filter") {
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|e| match e.as_str() {
                Some(s @ ("start" | "output" | "logs" | "completed")) => Ok(s.to_owned()),
                _ => Err(format!(
                    "webhook_events_filter: {e} is not one of start, output, logs, completed"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => return Err("webhook_events_filter must be an array".to_owned()),
        None => Vec::new(),
    };
    Ok(CreateBody {
        version,
        input,
        webhook,
        events,
    })
}

/// `version` as sent to `POST /predictions`: a known 64-hex id or `owner/name:id`.
pub(super) fn resolve_version(version: &str) -> Option<(String, String)> {
    let (model, id) = match version.split_once(':') {
        Some((model, id)) => (Some(model.to_owned()), id),
        None => (None, version),
    };
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let known = KNOWN_VERSIONS
        .iter()
        .find(|(v, _)| *v == id)
        .map(|(_, m)| (*m).to_owned());
    Some((model.or(known)?, id.to_owned()))
}

impl State {
    fn model(&self, owner: &str, name: &str) -> HttpResponse {
        let path = format!("{owner}/{name}");
        let official = OFFICIAL_MODELS.contains(&path.as_str());
        let version = KNOWN_VERSIONS
            .iter()
            .find(|(_, m)| *m == path)
            .map(|(v, _)| *v);
        if !official && version.is_none() {
            return problem(StatusCode::NOT_FOUND, "Not found.");
        }
        json(
            StatusCode::OK,
            &json!({
                "owner": owner, "name": name, "url": format!("https://replicate.com/{path}"),
                "visibility": "public", "is_official": official, "run_count": 0,
                "latest_version": version.map(|v| json!({"id": v, "created_at": "2023-07-26T00:00:00Z"})),
            }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_resolve_by_id_or_by_model_and_id() {
        let sdxl = KNOWN_VERSIONS[0].0;
        assert_eq!(resolve_version(sdxl).unwrap().0, "stability-ai/sdxl");
        assert_eq!(
            resolve_version(&format!("me/custom:{}", "a".repeat(64)))
                .unwrap()
                .0,
            "me/custom"
        );
        assert!(
            resolve_version(&"b".repeat(64)).is_none(),
            "unknown bare version"
        );
        assert!(resolve_version("stability-ai/sdxl").is_none());
    }

    #[test]
    fn create_bodies_are_checked_like_replicates_schema() {
        assert!(
            parse_create(
                br#"{"input": {}, "webhook": "https://x/y", "webhook_events_filter": ["start"]}"#,
                true
            )
            .is_ok()
        );
        assert!(
            parse_create(br#"{"version": "v", "input": {}}"#, true)
                .unwrap_err()
                .contains("version")
        );
        assert!(
            parse_create(br#"{"input": {}}"#, false)
                .unwrap_err()
                .contains("version is required")
        );
        assert!(
            parse_create(
                br#"{"version": "v", "input": {}, "webhook_events_filter": ["done"]}"#,
                false
            )
            .is_err()
        );
        assert!(parse_create(br#"{"version": "v", "input": []}"#, false).is_err());
        assert!(
            parse_create(
                br#"{"version": "v", "input": {}, "webhook": "ftp://x"}"#,
                false
            )
            .is_err()
        );
    }
}
