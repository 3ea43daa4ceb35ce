//! Lambda `copier`, fed by the copy queue (SQS): stores a succeeded prediction's outputs in
//! the bucket within the invocation's time, then marks it `succeeded`. Failed jobs are
//! reported back (partial batch response), retried, and dead-lettered at the redrive limit.

use imagegen_shared::{bootstrap, lambda};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda::run_copier(bootstrap::init()).await
}
