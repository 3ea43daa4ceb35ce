//! `make reconcile`: one reconcile pass against the stack the environment names (the same
//! variables as the functions: TABLE_NAME, BUCKET_NAME, REPLICATE_*, AWS_ENDPOINT_URL…).

use imagegen_shared::adapters::aws::AwsClients;
use imagegen_shared::bootstrap::build_app;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    imagegen_shared::telemetry::init_json_logs(std::env::var("RUST_LOG").ok().as_deref());
    let aws = match std::env::var("AWS_ENDPOINT_URL") {
        Ok(endpoint) => AwsClients::local(&endpoint).await,
        Err(_) => AwsClients::from_env().await,
    };
    let app = build_app(aws, |name| std::env::var(name).ok()).await?;
    let report = app.reconcile(None).await;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
