//! Lambda `drainer`, fed by the create queue (SQS): creates each queued prediction at
//! Replicate when its slot comes (README, "Bursts"). The pacer spaced the slots at
//! `REPLICATE_CREATES_PER_MINUTE` across every instance; a job received early, or throttled
//! by Replicate, hides its message until it is due.

use imagegen_shared::lambda::RedeliveringQueue;
use imagegen_shared::{bootstrap, lambda};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda::run_redelivering_worker(RedeliveringQueue::Creates, bootstrap::init_worker).await
}
