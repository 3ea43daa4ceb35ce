//! What a prediction costs on Replicate, decided here and nowhere else (README, "Callers,
//! limits and cost"): the price an alias is configured with, the estimate reserved against
//! a tenant's budget at submit, what it was billed once it ended (`Billed`), and how a
//! tenant's month of usage is corrected by it (`Reservation`, `CostSettlement`). The store
//! only applies these numbers, with atomic adds (`ports::accounts`).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::limits::MAX_OUTPUTS;
use crate::domain::money::Micros;
use crate::domain::replicate::{Metrics, Prediction, PredictionStatus};
use crate::domain::tenancy::TenantId;
use crate::domain::time::Timestamp;

/// Longest run a prediction can be billed for: every create carries `Cancel-After: 30m`.
const MAX_BILLED_SECONDS: f64 = 30.0 * 60.0;

/// How Replicate bills a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "per", rename_all = "snake_case")]
pub enum Price {
    /// Official models: a fixed price per output image.
    Image { micros: Micros },
    /// Other models: per second of `predict_time` on the model's hardware. The estimate
    /// assumes `typical_seconds` per requested output at the typical size and step count,
    /// scaled by the request's `width × height` and `num_inference_steps` when the alias
    /// names its typical ones (run time grows with both), and capped at the 30 minutes a
    /// prediction can run: a large request reserves what it may really cost.
    Second {
        micros: Micros,
        typical_seconds: u32,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        typical_pixels: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        typical_steps: Option<u64>,
        /// Seconds per output reserved when the request has an input image: then the
        /// image (its size, unknown at submit) sets the run time, not the fields.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seconds_with_image: Option<u32>,
    },
}

/// The image inputs of the shipped models (README, "The API"): whose size no field states.
const IMAGE_INPUTS: [&str; 3] = ["image", "mask", "image_prompt"];

/// The number of images a validated input asks for.
pub fn requested_outputs(input: &Map<String, Value>) -> u64 {
    input
        .get("num_outputs")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .clamp(1, MAX_OUTPUTS as u64)
}

impl Price {
    /// What a run of `input` is expected to cost: reserved against the budget at submit.
    pub fn estimate(&self, input: &Map<String, Value>) -> Micros {
        let outputs = requested_outputs(input);
        match *self {
            Self::Image { micros } => micros.saturating_mul(outputs),
            Self::Second {
                micros,
                typical_seconds,
                typical_pixels,
                typical_steps,
                seconds_with_image,
            } => {
                let has_image = IMAGE_INPUTS.iter().any(|name| input.contains_key(*name));
                let seconds = match seconds_with_image {
                    Some(seconds) if has_image => f64::from(seconds) * outputs as f64,
                    _ => {
                        let number = |name: &str| input.get(name).and_then(Value::as_f64);
                        let ratio =
                            |asked: Option<f64>, typical: Option<u64>| match (asked, typical) {
                                (Some(asked), Some(typical)) if typical > 0 && asked > 0.0 => {
                                    asked / typical as f64
                                }
                                _ => 1.0,
                            };
                        let pixels = number("width").zip(number("height")).map(|(w, h)| w * h);
                        f64::from(typical_seconds)
                            * outputs as f64
                            * ratio(pixels, typical_pixels)
                            * ratio(number("num_inference_steps"), typical_steps)
                    }
                };
                (seconds.min(MAX_BILLED_SECONDS) * micros as f64).round() as Micros
            }
        }
    }

    /// What Replicate bills for a prediction that ended in `status` with `images` outputs
    /// and `metrics`: nothing when `aborted` (it never started); per output image for
    /// official models (only a success has them); per second it ran for the others,
    /// failures and cancellations included.
    pub fn billed(&self, status: &PredictionStatus, images: usize, metrics: &Metrics) -> Micros {
        if *status == PredictionStatus::Aborted {
            return 0;
        }
        match *self {
            Self::Image { micros } if *status == PredictionStatus::Succeeded => {
                micros.saturating_mul(images.min(MAX_OUTPUTS) as u64)
            }
            Self::Image { .. } => 0,
            Self::Second { micros, .. } => {
                let seconds = metrics
                    .predict_time
                    .filter(|t| t.is_finite() && *t > 0.0)
                    .unwrap_or(0.0)
                    .min(MAX_BILLED_SECONDS);
                (seconds * micros as f64).round() as Micros
            }
        }
    }
}

/// The calendar month (UTC) of a time, as `2026-11`: usage and budgets are per month.
pub fn month_of(t: Timestamp) -> String {
    t.rfc3339().chars().take(7).collect()
}

/// A tenant's usage in one month, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Predictions started (creates sent to Replicate; cached answers are free and not
    /// counted).
    pub predictions: u64,
    /// Output images: stored ones for ended predictions, requested ones for running ones.
    pub images: u64,
    /// The actual cost of ended predictions plus the estimate of running ones: what the
    /// budget is checked against.
    pub committed: Micros,
}

/// What a submit reserves in its tenant's month before it creates a prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    pub estimate: Micros,
    /// Images requested.
    pub images: u64,
    /// Refused if the month's committed spend would pass it (`None`: no budget).
    pub budget: Option<Micros>,
    /// DynamoDB TTL of the month's item (seconds).
    pub expires_at: u64,
}

/// What ending a prediction changes in its tenant's month: the reservation is replaced by
/// what really happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostSettlement {
    pub estimate: Micros,
    pub actual: Micros,
    pub requested_images: u64,
    pub stored_images: u64,
    /// `false` when it was never created at Replicate: it is not counted as a prediction.
    pub created: bool,
}

impl CostSettlement {
    /// The corrections to add: (committed spend, images, predictions).
    pub fn deltas(&self) -> (i128, i128, i128) {
        (
            i128::from(self.actual) - i128::from(self.estimate),
            i128::from(self.stored_images) - i128::from(self.requested_images),
            if self.created { 0 } else { -1 },
        )
    }

    /// Whether the reservation was exactly right (the usual case for per-image prices):
    /// then nothing needs writing.
    pub fn changes_nothing(&self) -> bool {
        self.deltas() == (0, 0, 0)
    }
}

/// The store key of a tenant's month of usage.
pub fn usage_key(tenant: &TenantId, month: &str) -> String {
    format!("usage#{tenant}#{month}")
}

/// Usage items are kept for 400 days after the start of their month.
pub fn usage_expires_at(now: Timestamp) -> u64 {
    now.plus(Duration::from_secs(400 * 24 * 3600))
        .unix_seconds()
}

/// What is known about what Replicate billed for a prediction that ends.
#[derive(Debug, Clone, Copy)]
pub enum Billed<'a> {
    /// Replicate said how it ended: its status, outputs and `predict_time` decide.
    Remote(&'a Prediction),
    /// It was certainly never created: nothing.
    NotCreated,
    /// It may have run, and how will never be known: the estimate stands.
    Unknown,
}

impl Billed<'_> {
    /// What a prediction priced at `price` (`None`: from before prices were kept) costs, given
    /// the `estimate` reserved for it at submit.
    pub fn cost(&self, price: Option<&Price>, estimate: Micros) -> Micros {
        match (self, price) {
            (Self::Remote(remote), Some(price)) => {
                // A cancel's answer may not carry `predict_time` yet: the time it ran.
                let mut metrics = remote.metrics.clone();
                if metrics.predict_time.is_none() {
                    metrics.predict_time = ran_seconds(remote);
                }
                price.billed(&remote.status, remote.output.len(), &metrics)
            }
            (Self::Remote(_), None) | (Self::NotCreated, _) => 0,
            (Self::Unknown, _) => estimate,
        }
    }
}

/// Seconds between a prediction's start and end, as Replicate stamped them.
fn ran_seconds(remote: &Prediction) -> Option<f64> {
    let started = remote
        .started_at
        .as_deref()
        .and_then(Timestamp::parse_rfc3339)?;
    let completed = remote
        .completed_at
        .as_deref()
        .and_then(Timestamp::parse_rfc3339)?;
    Some(completed.since(started).as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn input(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    fn metrics(predict_time: Option<f64>) -> Metrics {
        Metrics {
            predict_time,
            ..Metrics::default()
        }
    }

    #[test]
    fn per_image_prices_bill_the_outputs_of_a_success_only() {
        let flux = Price::Image { micros: 3_000 };
        assert_eq!(flux.estimate(&input(json!({"num_outputs": 4}))), 12_000);
        assert_eq!(flux.estimate(&input(json!({"prompt": "x"}))), 3_000);
        let done = PredictionStatus::Succeeded;
        assert_eq!(flux.billed(&done, 3, &metrics(Some(2.0))), 9_000);
        assert_eq!(flux.billed(&done, 10_000, &metrics(None)), 48_000);
        for ended in [
            PredictionStatus::Failed,
            PredictionStatus::Canceled,
            PredictionStatus::Aborted,
        ] {
            assert_eq!(flux.billed(&ended, 0, &metrics(Some(2.0))), 0, "{ended}");
        }
    }

    #[test]
    fn per_second_prices_bill_the_time_run_even_when_it_failed() {
        let sdxl = Price::Second {
            micros: 975,
            typical_seconds: 6,
            typical_pixels: None,
            typical_steps: None,
            seconds_with_image: None,
        };
        assert_eq!(sdxl.estimate(&input(json!({"num_outputs": 2}))), 11_700);
        let failed = PredictionStatus::Failed;
        assert_eq!(sdxl.billed(&failed, 0, &metrics(Some(2.5))), 2_438);
        assert_eq!(
            sdxl.billed(&PredictionStatus::Canceled, 0, &metrics(Some(1.0))),
            975
        );
        assert_eq!(
            sdxl.billed(&PredictionStatus::Aborted, 0, &metrics(Some(9.0))),
            0
        );
        // A hostile or broken metric cannot bill more than the 30-minute deadline allows.
        let huge = sdxl.billed(&failed, 0, &metrics(Some(1e30)));
        assert_eq!(huge, 975 * 1800);
        assert_eq!(sdxl.billed(&failed, 0, &metrics(Some(f64::NAN))), 0);
        assert_eq!(sdxl.billed(&failed, 0, &metrics(Some(-3.0))), 0);
    }

    #[test]
    fn per_second_estimates_grow_with_size_and_steps_up_to_the_deadline() {
        let sdxl = Price::Second {
            micros: 975,
            typical_seconds: 6,
            typical_pixels: Some(1024 * 1024),
            typical_steps: Some(50),
            seconds_with_image: Some(30),
        };
        let typical = json!({"width": 1024, "height": 1024, "num_inference_steps": 50});
        assert_eq!(sdxl.estimate(&input(typical)), 5_850);
        let small = json!({"width": 512, "height": 512, "num_inference_steps": 25});
        assert_eq!(sdxl.estimate(&input(small)), 731);
        // The costliest request: 4 × 2048² at 500 steps is 960 s, reserved as such.
        let largest =
            json!({"width": 2048, "height": 2048, "num_inference_steps": 500, "num_outputs": 4});
        assert_eq!(sdxl.estimate(&input(largest)), 975 * 960);
        let absurd = json!({"width": 1e9, "height": 1e9, "num_inference_steps": 1e9});
        assert_eq!(
            sdxl.estimate(&input(absurd)),
            975 * 1800,
            "capped at 30 minutes"
        );
        let unscaled = Price::Second {
            micros: 975,
            typical_seconds: 6,
            typical_pixels: None,
            typical_steps: None,
            seconds_with_image: None,
        };
        assert_eq!(
            unscaled.estimate(&input(json!({"width": 2048, "height": 2048}))),
            5_850
        );
        // An input image sets the run time: its reservation, whatever the fields say.
        let img2img = json!({"image": "https://example.com/a.png", "width": 512, "height": 512, "num_outputs": 2});
        assert_eq!(sdxl.estimate(&input(img2img)), 975 * 60);
    }

    #[test]
    fn months_are_utc_calendar_months() {
        // 2026-11-30T23:59:59.999Z and one millisecond later.
        assert_eq!(
            month_of(Timestamp::from_millis(1_796_083_199_999)),
            "2026-11"
        );
        assert_eq!(
            month_of(Timestamp::from_millis(1_796_083_200_000)),
            "2026-12"
        );
    }
}
