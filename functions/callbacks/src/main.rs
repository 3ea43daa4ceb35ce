//! Lambda `callbacks`, fed by the callback queue (SQS): delivers each queued event to the
//! caller's webhook, signed. A failed attempt hides its message until the next one is due
//! (doubling from `CALLBACK_RETRY_BASE_SECONDS`, at most an hour); after a day of failures
//! the event moves to the dead-letter queue, which is alarmed.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    imagegen_shared::bootstrap::run_redelivering_worker(
        imagegen_shared::bootstrap::RedeliveringQueue::Callbacks,
    )
    .await
}
