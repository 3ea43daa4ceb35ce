//! Our Replicate schemas against Replicate's own OpenAPI spec (a copy in `fixtures/`), so a
//! status or request field Replicate adds or removes shows up as a failing test.

use std::collections::BTreeSet;

use imagegen_shared::domain::replicate::{CreatePredictionBody, PredictionStatus, WebhookEvent};
use serde_json::{Map, Value, json};

fn spec() -> Value {
    let text = include_str!("../../fixtures/replicate-openapi.json");
    serde_json::from_str(text).expect("spec parses")
}

fn schema<'a>(spec: &'a Value, name: &str) -> &'a Value {
    &spec["components"]["schemas"][name]
}

#[test]
fn every_status_in_the_spec_is_known_and_none_is_missing() {
    let spec = spec();
    let statuses: BTreeSet<String> =
        schema(&spec, "schemas_prediction_response")["properties"]["status"]["enum"]
            .as_array()
            .expect("status enum")
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect();
    for status in &statuses {
        assert!(
            !matches!(
                PredictionStatus::parse(status),
                PredictionStatus::Unknown(_)
            ),
            "{status}"
        );
    }
    let ours: BTreeSet<String> = [
        "starting",
        "processing",
        "succeeded",
        "failed",
        "canceled",
        "aborted",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(statuses, ours);
}

fn assert_conforms(body: &Value, request_schema: &Value) {
    let properties = request_schema["properties"].as_object().unwrap();
    assert_eq!(request_schema["additionalProperties"], json!(false));
    for key in body.as_object().unwrap().keys() {
        assert!(
            properties.contains_key(key),
            "`{key}` is not allowed by the spec"
        );
    }
    for required in request_schema["required"].as_array().unwrap() {
        assert!(
            body.get(required.as_str().unwrap()).is_some(),
            "missing required {required}"
        );
    }
    if let Some(events) = body.get("webhook_events_filter") {
        let allowed = &properties["webhook_events_filter"]["items"]["enum"];
        for event in events.as_array().unwrap() {
            assert!(allowed.as_array().unwrap().contains(event), "{event}");
        }
    }
}

#[test]
fn create_bodies_only_use_fields_the_spec_allows() {
    let spec = spec();
    let input = Map::from_iter([("prompt".to_owned(), json!("a cat"))]);
    let events = [
        WebhookEvent::Start,
        WebhookEvent::Output,
        WebhookEvent::Logs,
        WebhookEvent::Completed,
    ];
    let versioned = serde_json::to_value(CreatePredictionBody {
        version: Some("7762fd07cf82c948538e41f63f77d685e02b063e37e496e96eefd46c929f9bdc"),
        input: &input,
        webhook: Some("https://example.com/webhooks/replicate"),
        webhook_events_filter: Some(&events),
    })
    .unwrap();
    assert_conforms(
        &versioned,
        schema(&spec, "schemas_version_prediction_request"),
    );
    let official = serde_json::to_value(CreatePredictionBody {
        version: None,
        input: &input,
        webhook: Some("https://example.com/webhooks/replicate"),
        webhook_events_filter: Some(&events),
    })
    .unwrap();
    assert_conforms(&official, schema(&spec, "schemas_prediction_request"));
}
