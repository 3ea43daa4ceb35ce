//! Runs the Replicate simulator on its own: `SIM_PORT` (default 9000) on 127.0.0.1.

use local_stack::sim::{SimConfig, Simulator};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    imagegen_shared::telemetry::init_json_logs(std::env::var("RUST_LOG").ok().as_deref());
    let port = std::env::var("SIM_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(9000);
    let mut config = SimConfig {
        port,
        ..SimConfig::default()
    };
    if let Ok(secret) = std::env::var("REPLICATE_WEBHOOK_SECRET") {
        config.secret = secret;
    }
    if let Ok(faults) = std::env::var("SIM_FAULTS") {
        config.faults = serde_json::from_str(&faults).map_err(|e| format!("SIM_FAULTS: {e}"))?;
    }
    let sim = Simulator::start(config).await?;
    println!("ready {}", sim.api_base());
    println!("webhook secret {}", sim.secret());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
