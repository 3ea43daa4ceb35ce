//! The jobs the durable queues carry: each holds only what identifies its work.

use serde::{Deserialize, Serialize};

use crate::domain::ids::PredictionId;
use crate::domain::replicate::Prediction;

/// Creating a queued prediction at Replicate (README, "Bursts"): everything else is in its
/// record, read when the job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateJob {
    pub prediction_id: PredictionId,
}

/// Copying a succeeded prediction's outputs into the bucket, as a job on a durable queue:
/// webhooks and syncs answer at once and a worker with its own deadline does the copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyJob {
    pub prediction_id: PredictionId,
    /// Replicate's state as delivered, without `input` and `logs` (they can be large and
    /// the copy does not need them).
    pub remote: Prediction,
}

impl CopyJob {
    pub fn new(prediction_id: PredictionId, remote: &Prediction) -> Self {
        let mut remote = remote.clone();
        remote.input.clear();
        remote.logs = None;
        Self {
            prediction_id,
            remote,
        }
    }
}
