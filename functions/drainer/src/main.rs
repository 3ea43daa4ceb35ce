//! Lambda `drainer`, fed by the create queue (SQS): creates each queued prediction at
//! Replicate when its slot comes (README, "Bursts"). The pacer spaced the slots at
//! `REPLICATE_CREATES_PER_MINUTE` across every instance; a job received early, or throttled
//! by Replicate, hides its message until it is due.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    imagegen_shared::bootstrap::run_redelivering_worker(
        imagegen_shared::bootstrap::RedeliveringQueue::Creates,
    )
    .await
}
