//! The item codec, tested without a table (the conformance suite runs the store on moto).

use super::*;
use crate::domain::record::StoredOutput;
use serde_json::json;

fn record() -> PredictionRecord {
    PredictionRecord {
        id: PredictionId::generate(),
        replicate_id: Some("rep1".into()),
        alias: "sdxl".into(),
        model: "stability-ai/sdxl".into(),
        version: Some("v".repeat(64)),
        input: json!({"prompt": "a cat", "seed": 3})
            .as_object()
            .unwrap()
            .clone(),
        status: PredictionStatus::Succeeded,
        outputs: vec![StoredOutput {
            key: "outputs/x/0.png".into(),
            content_type: "image/png".into(),
            size: 10,
            sha256: "ab".into(),
        }],
        error: None,
        metrics: Some(Default::default()),
        created_at: Timestamp::from_millis(1),
        started_at: Some(Timestamp::from_millis(2)),
        completed_at: Some(Timestamp::from_millis(3)),
        synced_at: None,
        copy_queued_at: Some(Timestamp::from_millis(5)),
        cancel_requested_at: Some(Timestamp::from_millis(6)),
        expires_at: 4,
        webhook_token: Some("t".repeat(32)),
        tenant: Some(TenantId::parse("acme").unwrap()),
        price: Some(crate::domain::cost::Price::Image { micros: 3_000 }),
        input_files: Default::default(),
        callback: None,
        queue: None,
        cost_estimate: 3_000,
        cost: Some(3_000),
    }
}

/// DynamoDB's size of an item: attribute names plus values (numbers count as their
/// digits, an upper bound of their stored size).
fn item_bytes(item: &Item) -> usize {
    item.iter()
        .map(|(name, value)| {
            name.len()
                + match value {
                    AttributeValue::S(s) | AttributeValue::N(s) => s.len(),
                    _ => 1,
                }
        })
        .sum()
}

/// Whatever a client sends and Replicate answers, a record stays far under DynamoDB's
/// 400 KB item limit: every part of it is bounded where it is made.
#[test]
fn the_largest_possible_record_is_far_under_the_item_limit() {
    use crate::domain::limits::{MAX_ERROR_CHARS, MAX_OUTPUTS, bounded_error, bounded_metrics};
    let registry = crate::domain::registry::ModelRegistry::shipped().unwrap();
    let widest = registry.aliases().max_by_key(|a| a.inputs.len()).unwrap();
    let mut input = serde_json::Map::new();
    for (name, spec) in &widest.inputs {
        let value = match spec {
            crate::domain::registry::FieldSpec::String { max_length, .. } => {
                json!("\u{1D11E}".repeat(*max_length))
            }
            crate::domain::registry::FieldSpec::Image { .. } => {
                json!(format!("inline://{}", "f".repeat(64)))
            }
            _ => json!(-1.234_567_890_123_456_7e300),
        };
        input.insert(name.clone(), value);
    }
    let mut metrics = crate::domain::replicate::Metrics::default();
    for i in 0..1000 {
        metrics
            .other
            .insert(format!("{i}{}", "k".repeat(60)), json!(1.0e300));
    }
    let mut r = record();
    r.input = input;
    r.outputs = (0..MAX_OUTPUTS)
        .map(|i| StoredOutput {
            key: format!("outputs/{}/{i}.webp", r.id),
            content_type: "application/octet-stream".into(),
            size: u64::MAX,
            sha256: "f".repeat(64),
        })
        .collect();
    r.error = Some(bounded_error(&"\u{1D11E}".repeat(MAX_ERROR_CHARS * 10)));
    r.metrics = Some(bounded_metrics(&metrics));
    let bytes = item_bytes(&prediction_to_item(&r).unwrap());
    println!("largest prediction item: {bytes} bytes");
    assert!(bytes < 64 * 1024, "{bytes} bytes");
}

#[test]
fn prediction_items_round_trip() {
    let r = record();
    let item = prediction_to_item(&r).unwrap();
    assert_eq!(item["rank"], n(2));
    assert_eq!(prediction_from_item(&item).unwrap(), r);
}

#[test]
fn claim_items_round_trip() {
    let c = Claim {
        key: "cache#abc".into(),
        token: "t".into(),
        prediction_id: Some(PredictionId::generate()),
        request_hash: Some("h".into()),
        lease_until: Timestamp::from_millis(5),
        expires_at: 6,
        from_cache: true,
    };
    assert_eq!(claim_from_item(&claim_to_item(&c)).unwrap(), c);
}

#[test]
fn advance_expression_sets_and_removes() {
    let advance = Advance {
        status: PredictionStatus::Processing,
        replicate_id: None,
        outputs: vec![],
        error: None,
        metrics: None,
        started_at: Some(Timestamp::from_millis(7)),
        completed_at: None,
        cost: None,
        keep_open: false,
    };
    let (expression, values) = advance_expression(&advance).unwrap();
    assert_eq!(
        expression,
        "SET #status = :status, #rank = :rank, #outputs = :outputs, #started_at = if_not_exists(#started_at, :started) REMOVE #error"
    );
    assert_eq!(values[":rank"], n(1));
    let names = names_in(&[&expression, "attribute_exists(#pk) AND #rank < :rank"]);
    let mut found: Vec<&str> = names.values().map(String::as_str).collect();
    found.sort_unstable();
    assert_eq!(
        found,
        ["error", "outputs", "pk", "rank", "started_at", "status"]
    );
}
