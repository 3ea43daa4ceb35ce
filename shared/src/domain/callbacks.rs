//! Callbacks to the caller (README, "Callbacks"): what a submit asks for, what a record keeps
//! of it, the job the callback queue carries, and the retry schedule.
//!
//! Each event of a prediction is one job with one `webhook-id`, derived from the prediction
//! and the event, so every attempt of it (also a job queued twice) carries the same id and
//! receivers can drop repeats. The queue's visibility timeout is the backoff: a failed
//! attempt hides its message until the next one is due.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::domain::ids::PredictionId;
use crate::domain::time::Timestamp;

/// Longest callback URL accepted.
pub const MAX_CALLBACK_URL_LEN: usize = 2048;
/// Time one delivery attempt may take.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait between attempts.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// Attempts go on at least this long after the first before the event is dead-lettered.
pub const RETRY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The events a caller can be called back for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackEvent {
    /// The prediction was created at Replicate.
    Start,
    /// It ended (any terminal status), with its outputs stored if it succeeded.
    Completed,
}

impl CallbackEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Start => "start",
            Self::Completed => "completed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "start" => Some(Self::Start),
            "completed" => Some(Self::Completed),
            _ => None,
        }
    }
}

/// Where a prediction's callbacks go and for which events (fixed at submit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackTarget {
    pub url: String,
    pub events: Vec<CallbackEvent>,
}

impl CallbackTarget {
    pub fn wants(&self, event: CallbackEvent) -> bool {
        self.events.contains(&event)
    }
}

/// How the latest queued event's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallbackStatus {
    Pending,
    Delivered,
    Failed,
}

impl CallbackStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

/// What a record keeps of its callbacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackState {
    pub target: CallbackTarget,
    /// The latest queued event, and how its delivery stands (`None` before any is queued).
    pub event: Option<CallbackEvent>,
    pub status: Option<CallbackStatus>,
    /// Delivery attempts so far, of every event.
    pub attempts: u32,
}

impl CallbackState {
    pub fn new(target: CallbackTarget) -> Self {
        Self {
            target,
            event: None,
            status: None,
            attempts: 0,
        }
    }
}

/// One event to deliver, as the callback queue carries it. The prediction is read afresh at
/// each attempt (its download URLs must be fresh), so the job holds only what identifies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackJob {
    pub prediction_id: PredictionId,
    pub event: CallbackEvent,
    /// When the event was first queued: attempts go on until `RETRY_WINDOW` after it.
    pub queued_at: Timestamp,
}

impl CallbackJob {
    /// The `webhook-id` of every attempt of this event.
    pub fn message_id(&self) -> String {
        format!("msg_{}_{}", self.prediction_id, self.event.as_str())
    }

    /// Whether the retry window has closed at `now`: the event goes to the dead-letter queue.
    pub fn window_closed(&self, now: Timestamp) -> bool {
        now >= self.queued_at.plus(RETRY_WINDOW)
    }
}

/// The wait before attempt `attempt + 1` after attempt `attempt` (from 1) failed: `base`,
/// doubling each time, at most an hour.
pub fn retry_delay(base: Duration, attempt: u32) -> Duration {
    let doublings = attempt.saturating_sub(1).min(31);
    base.saturating_mul(1u32 << doublings).min(MAX_RETRY_DELAY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_the_base_up_to_an_hour() {
        let base = Duration::from_secs(30);
        let delays: Vec<u64> = (1..=10).map(|n| retry_delay(base, n).as_secs()).collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(retry_delay(base, 1000), MAX_RETRY_DELAY);
        assert_eq!(
            retry_delay(Duration::from_secs(1), 2),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn the_schedule_keeps_trying_for_a_day() {
        // Attempts from the default base until the window closes: how many, and when.
        let base = Duration::from_secs(30);
        let (mut elapsed, mut attempt) = (Duration::ZERO, 1);
        while elapsed < RETRY_WINDOW {
            elapsed += retry_delay(base, attempt);
            attempt += 1;
        }
        assert_eq!(
            attempt, 31,
            "the default schedule makes 31 attempts in a day"
        );
        let job = CallbackJob {
            prediction_id: PredictionId::generate(),
            event: CallbackEvent::Completed,
            queued_at: Timestamp::from_millis(1_000),
        };
        assert!(!job.window_closed(Timestamp::from_millis(1_000 + 86_399_999)));
        assert!(job.window_closed(Timestamp::from_millis(1_000 + 86_400_000)));
        assert!(job.message_id().starts_with("msg_") && job.message_id().ends_with("_completed"));
    }
}
