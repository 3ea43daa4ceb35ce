//! Replicate's prediction schema as this service reads and writes it.
//!
//! Deserialisation is deliberately forgiving where Replicate may evolve (unknown statuses,
//! extra fields, either output shape) and strict where a wrong reading would lose data.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A prediction's lifecycle state.
///
/// `Unknown` keeps a status Replicate may add in future instead of failing the whole
/// document: a webhook we cannot parse would be retried forever and then dropped.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PredictionStatus {
    Starting,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    /// Ended before it ran (e.g. its deadline passed). Terminal; both official clients miss it.
    Aborted,
    Unknown(String),
}

impl PredictionStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "starting" => Self::Starting,
            "processing" => Self::Processing,
            "succeeded" => Self::Succeeded,
            "failed" => Self::Failed,
            "canceled" => Self::Canceled,
            "aborted" => Self::Aborted,
            other => Self::Unknown(other.to_owned()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Starting => "starting",
            Self::Processing => "processing",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Aborted => "aborted",
            Self::Unknown(s) => s,
        }
    }

    /// No further change will happen at Replicate.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Aborted
        )
    }

    /// Position in the forward-only lifecycle `starting → processing → terminal`.
    /// `None` for a status we do not know, which must never overwrite a known one.
    pub fn progress_rank(&self) -> Option<u8> {
        match self {
            Self::Starting => Some(0),
            Self::Processing => Some(1),
            Self::Succeeded | Self::Failed | Self::Canceled | Self::Aborted => Some(2),
            Self::Unknown(_) => None,
        }
    }

    /// Whether moving from `self` to `next` goes forward. Terminal states are final, so a
    /// second terminal status (a duplicate or contradictory webhook) is not a move forward.
    pub fn can_advance_to(&self, next: &PredictionStatus) -> bool {
        match (self.progress_rank(), next.progress_rank()) {
            (Some(current), Some(next_rank)) => !self.is_terminal() && next_rank > current,
            _ => false,
        }
    }
}

impl fmt::Display for PredictionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for PredictionStatus {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for PredictionStatus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        Ok(Self::parse(&s))
    }
}

/// Timing figures Replicate reports; other keys it may add are kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predict_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_time: Option<f64>,
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PredictionUrls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
}

/// A prediction as Replicate returns it from create/get/cancel and posts it to webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    pub id: String,
    #[serde(default)]
    pub model: String,
    /// The version id; `None` for official models, which Replicate reports as `"hidden"`.
    #[serde(default, deserialize_with = "version_or_hidden")]
    pub version: Option<String>,
    #[serde(default)]
    pub input: Map<String, Value>,
    /// Output file URLs, normalised: models return either one URL or a list of them.
    #[serde(default, deserialize_with = "output_urls")]
    pub output: Vec<String>,
    #[serde(default, deserialize_with = "error_text")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<String>,
    pub status: PredictionStatus,
    /// Replicate deletes API predictions' inputs and outputs after an hour.
    #[serde(default)]
    pub data_removed: bool,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub completed_at: Option<String>,
    #[serde(default)]
    pub urls: PredictionUrls,
    #[serde(default)]
    pub metrics: Metrics,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
}

fn version_or_hidden<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let version = Option::<String>::deserialize(d)?;
    Ok(version.filter(|v| !v.is_empty() && v != "hidden"))
}

/// Accepts `null`, a single URL string, or a list of URL strings (nulls in the list are
/// skipped: a model may emit a placeholder before a file is ready).
fn output_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Shape {
        One(String),
        Many(Vec<Option<String>>),
    }
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(value) => match Shape::deserialize(value) {
            Ok(Shape::One(url)) => Ok(vec![url]),
            Ok(Shape::Many(urls)) => Ok(urls.into_iter().flatten().collect()),
            Err(_) => Err(serde::de::Error::custom(
                "prediction output must be a URL string or a list of URL strings",
            )),
        },
    }
}

/// Replicate documents `error` as a string; some models put an object there. Keep its text
/// rather than reject the whole prediction.
fn error_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    })
}

/// One page of `GET /predictions`: newest first; `next` is the absolute URL of the following
/// page, `None` on the last one. (`previous` is not read.)
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PredictionPage {
    /// Required: a page without results must not read as "no predictions", which could
    /// start a second, billed one.
    #[serde(deserialize_with = "listed_predictions")]
    pub results: Vec<Prediction>,
    #[serde(default)]
    pub next: Option<String>,
}

/// The list holds every prediction of the account, other models' included, and some of
/// those have an `output` (an object, say) this schema does not read. Such a prediction is
/// kept with its output left out rather than failing the whole page: a caller looks for
/// its id, status, input and `created_at`. Anything that is not a prediction still fails.
fn listed_predictions<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Prediction>, D::Error> {
    Vec::<Value>::deserialize(d)?
        .into_iter()
        .map(|item| match Prediction::deserialize(&item) {
            Ok(prediction) => Ok(prediction),
            Err(first) => without_output(item)
                .and_then(|item| Prediction::deserialize(item).ok())
                .ok_or_else(|| serde::de::Error::custom(first)),
        })
        .collect()
}

fn without_output(item: Value) -> Option<Value> {
    let Value::Object(mut fields) = item else {
        return None;
    };
    fields.remove("output")?;
    Some(Value::Object(fields))
}

/// Which events Replicate should send to the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookEvent {
    Start,
    Output,
    Logs,
    Completed,
}

/// Where to send a prediction's webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    pub url: String,
    pub events: Vec<WebhookEvent>,
}

/// The body of `POST /predictions` (`version` set) or `POST /models/{owner}/{name}/predictions`
/// (`version` absent). Replicate rejects unknown fields, so only these are ever sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CreatePredictionBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<&'a str>,
    pub input: &'a Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_events_filter: Option<&'a [WebhookEvent]>,
}

/// A model as `GET /models/{owner}/{name}` describes it (the parts we use).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Model {
    pub owner: String,
    pub name: String,
    #[serde(default)]
    pub is_official: bool,
    #[serde(default)]
    pub visibility: Option<String>,
    #[serde(default)]
    pub latest_version: Option<ModelVersion>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelVersion {
    pub id: String,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// `GET /webhooks/default/secret`.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSecretBody {
    pub key: String,
}

/// Replicate's error body (problem+json-like; every field optional in practice).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ApiProblem {
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    #[serde(default)]
    pub invalid_fields: Vec<InvalidField>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct InvalidField {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub field: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

impl ApiProblem {
    /// Parses an error body; a non-JSON body (a proxy's HTML page, say) becomes its first
    /// few hundred characters as `detail`.
    pub fn from_body(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_else(|_| {
            let text = String::from_utf8_lossy(body);
            let detail: String = text.trim().chars().take(300).collect();
            ApiProblem {
                detail: (!detail.is_empty()).then_some(detail),
                ..ApiProblem::default()
            }
        })
    }

    /// The best one-line description available.
    pub fn summary(&self) -> String {
        self.detail
            .clone()
            .or_else(|| self.title.clone())
            .unwrap_or_else(|| "no error detail".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn prediction(extra: Value) -> Value {
        let mut base = json!({
            "id": "p1", "model": "black-forest-labs/flux-schnell", "version": "hidden",
            "input": {"prompt": "a cat"}, "output": null, "error": null,
            "status": "starting", "data_removed": false,
            "created_at": "2024-01-01T00:00:00.000Z",
            "urls": {"get": "https://api.replicate.com/v1/predictions/p1",
                     "cancel": "https://api.replicate.com/v1/predictions/p1/cancel",
                     "web": "https://replicate.com/p/p1"}
        });
        if let (Value::Object(base), Value::Object(extra)) = (&mut base, extra) {
            base.extend(extra);
        }
        base
    }

    fn parse(v: Value) -> Prediction {
        serde_json::from_value(v).expect("prediction parses")
    }

    #[test]
    fn every_documented_status_parses_and_aborted_is_terminal() {
        for (text, terminal) in [
            ("starting", false),
            ("processing", false),
            ("succeeded", true),
            ("failed", true),
            ("canceled", true),
            ("aborted", true),
        ] {
            let p = parse(prediction(json!({ "status": text })));
            assert_eq!(p.status.as_str(), text);
            assert_eq!(p.status.is_terminal(), terminal, "{text}");
            assert!(!matches!(p.status, PredictionStatus::Unknown(_)));
        }
    }

    #[test]
    fn unknown_status_is_kept_not_rejected() {
        let p = parse(prediction(json!({ "status": "queued_for_gpu" })));
        assert_eq!(p.status, PredictionStatus::Unknown("queued_for_gpu".into()));
        assert!(!p.status.is_terminal());
        assert_eq!(
            serde_json::to_value(&p.status).unwrap(),
            json!("queued_for_gpu")
        );
    }

    #[test]
    fn output_list_single_and_null_normalise_to_a_list() {
        let list = parse(prediction(
            json!({"output": ["https://a/1.webp", "https://a/2.webp"]}),
        ));
        assert_eq!(list.output, vec!["https://a/1.webp", "https://a/2.webp"]);
        let one = parse(prediction(json!({"output": "https://a/out.png"})));
        assert_eq!(one.output, vec!["https://a/out.png"]);
        let none = parse(prediction(json!({"output": null})));
        assert!(none.output.is_empty());
        let missing: Prediction =
            serde_json::from_value(json!({"id": "x", "status": "starting"})).unwrap();
        assert!(missing.output.is_empty());
    }

    #[test]
    fn output_of_another_shape_is_a_clear_error() {
        let err = serde_json::from_value::<Prediction>(prediction(json!({"output": {"a": 1}})))
            .unwrap_err();
        assert!(err.to_string().contains("URL string or a list"), "{err}");
    }

    #[test]
    fn hidden_version_means_official_model() {
        assert_eq!(parse(prediction(json!({}))).version, None);
        let pinned = parse(prediction(json!({"version": "abc123"})));
        assert_eq!(pinned.version.as_deref(), Some("abc123"));
    }

    #[test]
    fn metrics_and_error_objects_are_read() {
        let p = parse(prediction(json!({
            "status": "failed", "error": {"message": "CUDA OOM"},
            "metrics": {"predict_time": 0.71, "total_time": 1.5, "image_count": 2}
        })));
        assert_eq!(p.metrics.predict_time, Some(0.71));
        assert_eq!(p.metrics.total_time, Some(1.5));
        assert_eq!(p.metrics.other.get("image_count"), Some(&json!(2)));
        assert_eq!(p.error.as_deref(), Some(r#"{"message":"CUDA OOM"}"#));
    }

    #[test]
    fn status_only_moves_forward() {
        use PredictionStatus::*;
        assert!(Starting.can_advance_to(&Processing));
        assert!(Starting.can_advance_to(&Succeeded));
        assert!(Processing.can_advance_to(&Aborted));
        assert!(!Processing.can_advance_to(&Starting));
        assert!(!Processing.can_advance_to(&Processing));
        assert!(!Succeeded.can_advance_to(&Failed));
        assert!(!Aborted.can_advance_to(&Succeeded));
        assert!(!Starting.can_advance_to(&Unknown("x".into())));
    }

    #[test]
    fn problem_bodies_parse_json_and_fall_back_to_text() {
        let p = ApiProblem::from_body(
            br#"{"title":"Input validation failed","detail":"- input.width: must be <= 1440","status":422,
                "invalid_fields":[{"type":"maximum","field":"input.width","description":"must be <= 1440"}]}"#,
        );
        assert_eq!(p.status, Some(422));
        assert_eq!(p.invalid_fields[0].field.as_deref(), Some("input.width"));
        assert_eq!(p.summary(), "- input.width: must be <= 1440");
        let html = ApiProblem::from_body(b"<html>502 Bad Gateway</html>");
        assert_eq!(html.detail.as_deref(), Some("<html>502 Bad Gateway</html>"));
        assert_eq!(ApiProblem::from_body(b"").summary(), "no error detail");
    }

    #[test]
    fn create_body_omits_absent_fields() {
        let input = Map::from_iter([("prompt".to_owned(), json!("a cat"))]);
        let official = CreatePredictionBody {
            version: None,
            input: &input,
            webhook: None,
            webhook_events_filter: None,
        };
        assert_eq!(
            serde_json::to_value(&official).unwrap(),
            json!({"input": {"prompt": "a cat"}})
        );
        let events = [WebhookEvent::Start, WebhookEvent::Completed];
        let versioned = CreatePredictionBody {
            version: Some("abc"),
            input: &input,
            webhook: Some("https://x/webhooks/replicate"),
            webhook_events_filter: Some(&events),
        };
        assert_eq!(
            serde_json::to_value(&versioned).unwrap(),
            json!({"version": "abc", "input": {"prompt": "a cat"},
                   "webhook": "https://x/webhooks/replicate",
                   "webhook_events_filter": ["start", "completed"]})
        );
    }

    #[test]
    fn a_page_keeps_other_models_predictions_and_needs_results() {
        let page: PredictionPage = serde_json::from_value(json!({
            "next": "https://api.replicate.com/v1/predictions?cursor=abc", "previous": null,
            "results": [prediction(json!({})),
                        prediction(json!({"id": "p2", "status": "succeeded", "output": {"json": 1}}))]
        }))
        .unwrap();
        assert_eq!(
            page.next.as_deref(),
            Some("https://api.replicate.com/v1/predictions?cursor=abc")
        );
        assert_eq!(page.results.len(), 2);
        assert_eq!(page.results[1].id, "p2");
        assert!(page.results[1].output.is_empty());
        let last: PredictionPage = serde_json::from_value(json!({"results": []})).unwrap();
        assert_eq!(last.next, None);
        assert!(serde_json::from_value::<PredictionPage>(json!({"next": null})).is_err());
        assert!(
            serde_json::from_value::<PredictionPage>(json!({"results": [{"id": "x"}]})).is_err(),
            "an item without a status is not a prediction"
        );
    }
}
