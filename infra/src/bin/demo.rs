//! `make demo`: submits a prompt to the running local stack, waits for the prediction, and
//! saves the first image. `demo [--model M] [--out FILE] [--base-url URL] PROMPT…`, with the
//! API key in `API_KEY`, or the one the running `make dev` wrote to `.dev-stack.json`.

use std::time::{Duration, Instant};

use local_stack::keys::{DEV_STATE_FILE, DevState};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

struct Args {
    model: String,
    out: Option<String>,
    base: String,
    prompt: String,
    api_key: String,
}

fn parse_args() -> Result<Args, String> {
    let dev = DevState::read(std::path::Path::new(DEV_STATE_FILE));
    let base = std::env::var("DEMO_BASE_URL")
        .ok()
        .or_else(|| dev.as_ref().map(|d| d.base_url.clone()))
        .unwrap_or_else(|| "http://127.0.0.1:3000".into());
    let api_key = std::env::var("API_KEY")
        .ok()
        .or_else(|| dev.map(|d| d.api_key))
        .ok_or("no API key: set API_KEY, or run `make dev` (it writes .dev-stack.json)")?;
    let mut args = Args {
        model: "flux-schnell".into(),
        out: None,
        base,
        prompt: String::new(),
        api_key,
    };
    let mut words = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--model" => args.model = it.next().ok_or("--model needs a value")?,
            "--out" => args.out = Some(it.next().ok_or("--out needs a value")?),
            "--base-url" => args.base = it.next().ok_or("--base-url needs a value")?,
            _ => words.push(arg),
        }
    }
    args.prompt = words.join(" ");
    if args.prompt.trim().is_empty() {
        args.prompt = "a lighthouse on a cliff at sunset".into();
    }
    Ok(args)
}

async fn run() -> Result<(), String> {
    let args = parse_args()?;
    let http = reqwest::Client::new();
    let submitted: Value = http
        .post(format!("{}/v1/predictions", args.base))
        .bearer_auth(&args.api_key)
        .json(&json!({"model": args.model, "input": {"prompt": args.prompt}}))
        .send()
        .await
        .map_err(|e| format!("is `make dev` running? {e}"))?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let id = submitted["id"]
        .as_str()
        .ok_or_else(|| format!("submit failed: {submitted}"))?
        .to_owned();
    println!("submitted {id} ({})", submitted["status"]);
    let started = Instant::now();
    let done = loop {
        let current: Value = http
            .get(format!("{}/v1/predictions/{id}", args.base))
            .bearer_auth(&args.api_key)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        match current["status"].as_str() {
            Some("succeeded") => break current,
            Some(s @ ("failed" | "canceled" | "aborted")) => {
                return Err(format!("prediction {s}: {}", current["error"]));
            }
            _ if started.elapsed() > Duration::from_secs(300) => {
                return Err("gave up after 5 minutes".into());
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let output = &done["output"][0];
    let url = output["url"].as_str().ok_or("no output")?;
    let bytes = http
        .get(url)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if Some(digest.as_str()) != output["sha256"].as_str() {
        return Err("downloaded image does not match its recorded SHA-256".into());
    }
    let ext = match output["content_type"].as_str() {
        Some("image/webp") => "webp",
        Some("image/jpeg") => "jpg",
        _ => "png",
    };
    let out = args.out.unwrap_or_else(|| format!("demo-{id}.{ext}"));
    std::fs::write(&out, &bytes).map_err(|e| format!("could not write {out}: {e}"))?;
    println!(
        "saved {out} ({} bytes, sha256 {digest}) in {:.1}s",
        bytes.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
