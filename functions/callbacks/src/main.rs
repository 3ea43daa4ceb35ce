//! Lambda `callbacks`, fed by the callback queue (SQS): delivers each queued event to the
//! caller's webhook, signed. A failed attempt hides its message until the next one is due
//! (doubling from `CALLBACK_RETRY_BASE_SECONDS`, at most an hour); after a day of failures
//! the event moves to the dead-letter queue, which is alarmed.

use imagegen_shared::lambda::RedeliveringQueue;
use imagegen_shared::{bootstrap, lambda};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda::run_redelivering_worker(RedeliveringQueue::Callbacks, bootstrap::init_worker).await
}
