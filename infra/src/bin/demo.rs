//! `make demo`: submits a prompt to the running local stack, waits for the prediction, and
//! saves the first image. `demo [--model M] [--out FILE] [--base-url URL] [--image FILE]
//! [--callback] PROMPT…`, with the API key in `API_KEY`, or the one the running `make dev`
//! wrote to `.dev-stack.json`.
//!
//! `--image FILE` uploads the file (`POST /v1/uploads`, then a PUT to S3) and runs
//! img2img on it (`sdxl-img2img` unless `--model` says otherwise). `--callback` also asks
//! for a callback, receives it on the loopback port `make dev` allows, and checks its
//! signature with the tenant's secret (`GET /v1/webhooks/secret`).

use std::time::{Duration, Instant};

use local_stack::ops::keys::{DEV_STATE_FILE, DevState};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

struct Args {
    model: Option<String>,
    out: Option<String>,
    base: String,
    prompt: String,
    api_key: String,
    image: Option<String>,
    /// Where to receive a callback (`make dev`'s allowed loopback `host:port`).
    callback: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let dev = DevState::read(std::path::Path::new(DEV_STATE_FILE));
    let base = std::env::var("DEMO_BASE_URL")
        .ok()
        .or_else(|| dev.as_ref().map(|d| d.base_url.clone()))
        .unwrap_or_else(|| "http://127.0.0.1:3000".into());
    let callback_host = dev.as_ref().and_then(|d| d.callback_host.clone());
    let api_key = std::env::var("API_KEY")
        .ok()
        .or_else(|| dev.map(|d| d.api_key))
        .ok_or("no API key: set API_KEY, or run `make dev` (it writes .dev-stack.json)")?;
    let mut args = Args {
        model: None,
        out: None,
        base,
        prompt: String::new(),
        api_key,
        image: None,
        callback: None,
    };
    let mut words = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--model" => args.model = Some(it.next().ok_or("--model needs a value")?),
            "--image" => args.image = Some(it.next().ok_or("--image needs a file")?),
            "--callback" => {
                args.callback = Some(callback_host.clone().ok_or(
                    "--callback needs the running `make dev` (it allows one loopback port)",
                )?);
            }
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

/// Uploads `file` through a slot; returns its `upload://` reference.
async fn upload(http: &reqwest::Client, args: &Args, file: &str) -> Result<String, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("could not read {file}: {e}"))?;
    let content_type = match imagesize::image_type(&bytes) {
        Ok(imagesize::ImageType::Jpeg) => "image/jpeg",
        Ok(imagesize::ImageType::Webp) => "image/webp",
        _ => "image/png",
    };
    let slot = send_json(
        http.post(format!("{}/v1/uploads", args.base))
            .bearer_auth(&args.api_key)
            .json(&json!({"content_type": content_type, "size": bytes.len()})),
    )
    .await?;
    let url = slot["upload_url"]
        .as_str()
        .ok_or_else(|| format!("upload slot refused: {slot}"))?;
    let mut put = http.put(url).body(bytes);
    if let Some(headers) = slot["headers"].as_object() {
        for (name, value) in headers {
            if name != "content-length" {
                put = put.header(name, value.as_str().unwrap_or_default());
            }
        }
    }
    let status = put.send().await.map_err(|e| e.to_string())?.status();
    if !status.is_success() {
        return Err(format!("the upload PUT answered {status}"));
    }
    let reference = slot["ref"].as_str().ok_or("no ref in the slot")?.to_owned();
    println!("uploaded {file} as {reference}");
    Ok(reference)
}

/// Waits for one callback on `host` (loopback), answers 204, and returns its headers and body.
async fn receive_callback(
    listener: tokio::net::TcpListener,
) -> Result<(http::HeaderMap, bytes::Bytes), String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    let server = local_stack::http_server::serve(
        listener,
        1024 * 1024,
        || {
            http::Response::builder()
                .status(413)
                .body(bytes::Bytes::new())
                .unwrap_or_default()
        },
        move |request| {
            let tx = tx.clone();
            async move {
                let (parts, body) = request.into_parts();
                let _ = tx.send((parts.headers, body)).await;
                http::Response::builder()
                    .status(204)
                    .body(bytes::Bytes::new())
                    .unwrap_or_default()
            }
        },
    );
    let received = tokio::time::timeout(Duration::from_secs(300), rx.recv())
        .await
        .map_err(|_| "no callback within 5 minutes".to_owned())?
        .ok_or("the receiver stopped")?;
    drop(server);
    Ok(received)
}

/// `GET {base}{path}` with the caller's key, as JSON.
async fn get_json(http: &reqwest::Client, args: &Args, path: &str) -> Result<Value, String> {
    send_json(
        http.get(format!("{}{path}", args.base))
            .bearer_auth(&args.api_key),
    )
    .await
}

/// Sends `request` and reads the answer as JSON.
async fn send_json(request: reqwest::RequestBuilder) -> Result<Value, String> {
    request
        .send()
        .await
        .map_err(|e| format!("is `make dev` running? {e}"))?
        .json()
        .await
        .map_err(|e| e.to_string())
}

async fn check_callback(
    http: &reqwest::Client,
    args: &Args,
    headers: &http::HeaderMap,
    body: &[u8],
) -> Result<(), String> {
    use imagegen_shared::domain::signing::{SignatureVerifier, SigningSecret};
    let secret = get_json(http, args, "/v1/webhooks/secret").await?;
    let secret = SigningSecret::parse(secret["key"].as_str().unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let signature = imagegen_shared::http::signature_headers(headers).map_err(|e| e.to_string())?;
    let verified = SignatureVerifier::new(secret)
        .verify(signature, body, std::time::SystemTime::now())
        .map_err(|e| format!("the callback's signature does not verify: {e}"))?;
    let event: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    println!(
        "callback {} verified: prediction {} is {}",
        verified.id, event["id"], event["status"]
    );
    Ok(())
}

async fn run() -> Result<(), String> {
    let args = parse_args()?;
    let http = reqwest::Client::new();
    let mut input = json!({"prompt": args.prompt});
    if let Some(file) = &args.image {
        input["image"] = Value::String(upload(&http, &args, file).await?);
    }
    let model = args.model.clone().unwrap_or_else(|| {
        if args.image.is_some() {
            "sdxl-img2img"
        } else {
            "flux-schnell"
        }
        .to_owned()
    });
    let mut body = json!({"model": model, "input": input});
    let mut receiver = None;
    if let Some(host) = &args.callback {
        let listener = tokio::net::TcpListener::bind(host)
            .await
            .map_err(|e| format!("could not listen on {host} for the callback: {e}"))?;
        body["webhook"] = Value::String(format!("http://{host}/callback"));
        receiver = Some(tokio::spawn(receive_callback(listener)));
    }
    let submitted = send_json(
        http.post(format!("{}/v1/predictions", args.base))
            .bearer_auth(&args.api_key)
            .json(&body),
    )
    .await?;
    let id = submitted["id"]
        .as_str()
        .ok_or_else(|| format!("submit failed: {submitted}"))?
        .to_owned();
    println!("submitted {id} ({})", submitted["status"]);
    let started = Instant::now();
    let done = loop {
        let current = get_json(&http, &args, &format!("/v1/predictions/{id}")).await?;
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
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| format!("demo-{id}.{ext}"));
    std::fs::write(&out, &bytes).map_err(|e| format!("could not write {out}: {e}"))?;
    println!(
        "saved {out} ({} bytes, sha256 {digest}) in {:.1}s",
        bytes.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(receiver) = receiver {
        let (headers, body) = receiver.await.map_err(|e| e.to_string())??;
        check_callback(&http, &args, &headers, &body).await?;
    }
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
