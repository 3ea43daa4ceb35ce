//! Lambda `reconciler`, on an EventBridge schedule: syncs predictions still running a while
//! after creation, so outputs are saved even when webhooks are lost and nobody fetches.

use imagegen_shared::{bootstrap, lambda};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda::run_reconciler(bootstrap::init()).await
}
