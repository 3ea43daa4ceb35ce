//! A prediction's state and its life: created, moved `starting → processing →` an end on
//! its own, canceled or cut off at its `Cancel-After`, and shown as Replicate shows it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::StatusCode;
use serde_json::{Map, Value, json};

use super::answers::{json, problem};
use super::faults::Markers;
use super::routing::{CreateBody, OFFICIAL_MODELS, parse_create, resolve_version};
use super::{State, lock};
use crate::http_server::HttpResponse;

#[derive(Debug, Clone)]
pub(super) struct SimPrediction {
    pub(super) id: String,
    pub(super) model: String,
    pub(super) version: Option<String>,
    pub(super) input: Map<String, Value>,
    pub(super) output: Value,
    pub(super) error: Option<String>,
    pub(super) status: &'static str,
    pub(super) created_at: SystemTime,
    pub(super) started_at: Option<SystemTime>,
    pub(super) completed_at: Option<SystemTime>,
    pub(super) webhook: Option<String>,
    pub(super) events: Vec<String>,
    pub(super) behaviour: Markers,
}

impl SimPrediction {
    pub(super) fn is_terminal(&self) -> bool {
        matches!(self.status, "succeeded" | "failed" | "canceled" | "aborted")
    }

    pub(super) fn wants(&self, event: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|e| e == event)
    }
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// Replicate-style ids: 26 lowercase base32 characters.
pub(super) fn new_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";
    (0..26)
        .map(|_| ALPHABET[fastrand::usize(..32)] as char)
        .collect()
}

impl State {
    pub(super) fn to_json(&self, p: &SimPrediction) -> Value {
        let get = format!("{}/v1/predictions/{}", self.origin, p.id);
        let mut body = json!({
            "id": p.id,
            "model": p.model,
            "version": p.version.clone().unwrap_or_else(|| "hidden".to_owned()),
            "input": p.input,
            "output": p.output,
            "error": p.error,
            "logs": "",
            "status": p.status,
            "data_removed": false,
            "source": "api",
            "created_at": timestamp(p.created_at),
            "urls": {"get": get, "cancel": format!("{get}/cancel"), "web": format!("https://replicate.com/p/{}", p.id)},
        });
        let fields = body.as_object_mut().expect("built as an object");
        if let Some(t) = p.started_at {
            fields.insert("started_at".to_owned(), json!(timestamp(t)));
        }
        if let Some(t) = p.completed_at {
            fields.insert("completed_at".to_owned(), json!(timestamp(t)));
            let run = |from: SystemTime| t.duration_since(from).unwrap_or_default().as_secs_f64();
            fields.insert(
                "metrics".to_owned(),
                json!({"predict_time": p.started_at.map(run).unwrap_or(0.0), "total_time": run(p.created_at)}),
            );
        }
        body
    }

    pub(super) async fn create(
        self: &Arc<Self>,
        body: &[u8],
        official_model: Option<String>,
        deadline: Option<Duration>,
    ) -> HttpResponse {
        let CreateBody {
            version,
            input,
            webhook,
            events,
        } = match parse_create(body, official_model.is_some()) {
            Ok(parts) => parts,
            Err(detail) => return problem(StatusCode::UNPROCESSABLE_ENTITY, &detail),
        };
        let (model, version) = match (official_model, version) {
            (Some(model), _) if OFFICIAL_MODELS.contains(&model.as_str()) => (model, None),
            (Some(_), _) => {
                return problem(
                    StatusCode::NOT_FOUND,
                    "The requested model is not an official model.",
                );
            }
            (None, Some(v)) => match resolve_version(&v) {
                Some((model, id)) => (model, Some(id)),
                None => {
                    return problem(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "Invalid version or not permitted",
                    );
                }
            },
            (None, None) => {
                return problem(StatusCode::UNPROCESSABLE_ENTITY, "version is required");
            }
        };
        let mut behaviour = Markers::from_input(&input);
        lock(&self.faults).apply_to(&mut behaviour);
        let prediction = SimPrediction {
            id: new_id(),
            model,
            version,
            behaviour,
            input,
            output: Value::Null,
            error: None,
            status: "starting",
            created_at: SystemTime::now(),
            started_at: None,
            completed_at: None,
            webhook,
            events,
        };
        let body = self.to_json(&prediction);
        lock(&self.predictions).insert(prediction.id.clone(), prediction.clone());
        lock(&self.stats).creates += 1;
        if let Some(deadline) = deadline {
            tokio::spawn(self.clone().enforce(prediction.id.clone(), deadline));
        }
        tokio::spawn(self.clone().run(prediction.id));
        json(StatusCode::CREATED, &body)
    }

    pub(super) async fn cancel(self: &Arc<Self>, id: &str) -> HttpResponse {
        lock(&self.stats).cancels += 1;
        let snapshot = {
            let mut predictions = lock(&self.predictions);
            let Some(p) = predictions.get_mut(id) else {
                return problem(StatusCode::NOT_FOUND, "Not found.");
            };
            if p.is_terminal() {
                return json(StatusCode::OK, &self.to_json(p));
            }
            p.status = "canceled";
            p.completed_at = Some(SystemTime::now());
            p.clone()
        };
        let body = self.to_json(&snapshot);
        if !snapshot.behaviour.no_webhook && snapshot.wants("completed") {
            tokio::spawn(self.clone().deliver(snapshot, true));
        }
        json(StatusCode::OK, &body)
    }

    /// Replicate's `Cancel-After`: at the deadline a prediction that has not started is
    /// aborted (not billed), one still running is canceled.
    async fn enforce(self: Arc<Self>, id: String, deadline: Duration) {
        tokio::time::sleep(deadline).await;
        let Some(markers) = lock(&self.predictions)
            .get(&id)
            .map(|p| p.behaviour.clone())
        else {
            return;
        };
        self.finish(&id, &markers, |p| {
            if p.status == "starting" {
                p.status = "aborted";
                p.error = Some("The prediction did not start before its deadline.".to_owned());
            } else {
                p.status = "canceled";
            }
        })
        .await;
    }

    /// Moves a prediction through its life, sending webhooks as Replicate would.
    async fn run(self: Arc<Self>, id: String) {
        let Some(first) = lock(&self.predictions).get(&id).cloned() else {
            return;
        };
        let markers = first.behaviour.clone();
        let boot = if markers.cold {
            self.config.start_delay * 20
        } else {
            self.config.start_delay
        };
        tokio::time::sleep(boot).await;
        if markers.abort {
            self.finish(&id, &markers, |p| {
                p.status = "aborted";
                p.error =
                    Some("The prediction was aborted before it started (simulated).".to_owned());
            })
            .await;
            return;
        }
        let Some(started) = self.update(&id, |p| {
            p.status = "processing";
            p.started_at = Some(SystemTime::now());
        }) else {
            return;
        };
        self.deliver_start(&started, &markers, false).await;
        let run_time = if markers.slow {
            self.config.run_time * 20
        } else {
            self.config.run_time
        };
        tokio::time::sleep(run_time).await;
        if markers.cancel {
            self.finish(&id, &markers, |p| p.status = "canceled").await;
        } else if markers.fail {
            self.finish(&id, &markers, |p| {
                p.status = "failed";
                p.error = Some("Simulated failure: the prompt asked for [sim:fail].".to_owned());
            })
            .await;
        } else {
            let outcome = self.generate(&started, &markers).await;
            self.finish(&id, &markers, |p| match outcome {
                Ok(output) => {
                    p.status = "succeeded";
                    p.output = output;
                }
                Err(error) => {
                    p.status = "failed";
                    p.error = Some(error);
                }
            })
            .await;
        }
        self.deliver_start(&started, &markers, true).await;
    }

    /// Applies `change` unless the prediction already ended (e.g. it was canceled).
    fn update(&self, id: &str, change: impl FnOnce(&mut SimPrediction)) -> Option<SimPrediction> {
        let mut predictions = lock(&self.predictions);
        let p = predictions.get_mut(id).filter(|p| !p.is_terminal())?;
        change(p);
        Some(p.clone())
    }

    async fn finish(
        self: &Arc<Self>,
        id: &str,
        markers: &Markers,
        change: impl FnOnce(&mut SimPrediction),
    ) {
        let Some(done) = self.update(id, |p| {
            change(p);
            p.completed_at = Some(SystemTime::now());
        }) else {
            return;
        };
        self.deliver_completed(done, markers).await;
    }
}
