//! Lambda `reconciler`, on an EventBridge schedule: syncs predictions still running a while
//! after creation, so outputs are saved even when webhooks are lost and nobody fetches.

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), lambda_http::Error> {
    imagegen_shared::bootstrap::run_reconciler().await
}
