//! Metrics as CloudWatch Embedded Metric Format lines on stdout: CloudWatch Logs turns each
//! into metric data points, so recording one costs no API call and no latency (README,
//! "Operating it"). Namespace `ImageGen`; a metric carries at most one dimension (`Model`,
//! `Outcome` or `Status`), so the number of metric series stays bounded.

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

pub const NAMESPACE: &str = "ImageGen";

/// What a value counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Bytes,
    Milliseconds,
}

impl Unit {
    fn as_str(self) -> &'static str {
        match self {
            Self::Count => "Count",
            Self::Bytes => "Bytes",
            Self::Milliseconds => "Milliseconds",
        }
    }
}

/// One metric data point, with its dimension if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric<'a> {
    pub name: &'static str,
    pub value: f64,
    pub unit: Unit,
    pub dimension: Option<(&'static str, &'a str)>,
}

impl<'a> Metric<'a> {
    pub fn count(name: &'static str) -> Self {
        Self {
            name,
            value: 1.0,
            unit: Unit::Count,
            dimension: None,
        }
    }

    pub fn value(name: &'static str, value: f64, unit: Unit) -> Self {
        Self {
            name,
            value,
            unit,
            dimension: None,
        }
    }

    pub fn by(mut self, dimension: &'static str, value: &'a str) -> Self {
        self.dimension = Some((dimension, value));
        self
    }

    /// The EMF document of this data point at `timestamp_ms`.
    pub fn to_emf(&self, timestamp_ms: u128) -> Value {
        // With a dimension, the total is published too (`[]`): dashboards and alarms read
        // it without knowing every dimension value.
        let dimensions: Vec<Vec<&str>> = match self.dimension {
            Some((name, _)) => vec![vec![], vec![name]],
            None => vec![vec![]],
        };
        let mut document = Map::new();
        document.insert(
            "_aws".to_owned(),
            json!({
                "Timestamp": timestamp_ms as u64,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": dimensions,
                    "Metrics": [{"Name": self.name, "Unit": self.unit.as_str()}],
                }],
            }),
        );
        if let Some((name, value)) = self.dimension {
            // Bounded: a dimension value comes from our own names (aliases, statuses).
            let value: String = value.chars().take(64).collect();
            document.insert(name.to_owned(), Value::String(value));
        }
        document.insert(self.name.to_owned(), json!(self.value));
        Value::Object(document)
    }
}

/// Whether data points are written: in a Lambda function (local runs of the binaries
/// included), never in tests or the in-process dev server.
fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some())
}

/// Writes the data point as one EMF line on stdout (where Lambda's log capture reads it).
pub fn record(metric: Metric<'_>) {
    if !enabled() {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let line = metric.to_emf(now).to_string();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_point_is_an_emf_document_with_its_dimension() {
        let document = Metric::count("PredictionsCreated")
            .by("Model", "flux-schnell")
            .to_emf(1_700_000_000_000);
        assert_eq!(
            document,
            json!({
                "_aws": {
                    "Timestamp": 1_700_000_000_000u64,
                    "CloudWatchMetrics": [{
                        "Namespace": "ImageGen",
                        "Dimensions": [[], ["Model"]],
                        "Metrics": [{"Name": "PredictionsCreated", "Unit": "Count"}],
                    }],
                },
                "Model": "flux-schnell",
                "PredictionsCreated": 1.0,
            })
        );
        let bytes = Metric::value("BytesCopied", 2048.0, Unit::Bytes).to_emf(1);
        assert_eq!(
            bytes["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([[]])
        );
        assert_eq!(bytes["BytesCopied"], 2048.0);
    }
}
