//! The files a prediction reads and writes: its input images, fetched the way a model would
//! (and recorded as `InputFiles`), the outputs it renders, and their downloads under `/files/`.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{StatusCode, header};
use imagegen_shared::domain::digest::hex;
use serde_json::{Value, json};

use super::answers::problem;
use super::faults::{Markers, roll};
use super::lifecycle::SimPrediction;
use super::{State, images, lock};
use crate::http_server::HttpResponse;

/// The input images one prediction fetched: field → (SHA-256 hex, size).
pub type InputFiles = BTreeMap<String, (String, usize)>;

/// The inputs that carry an image the model fetches.
const IMAGE_FIELDS: &[&str] = &["image", "mask", "image_prompt"];

/// Models whose output is one URL rather than a list.
const SINGLE_OUTPUT_MODELS: &[&str] =
    &["black-forest-labs/flux-1.1-pro", "nightmareai/real-esrgan"];

impl State {
    pub(super) async fn serve_file(&self, key: &str) -> HttpResponse {
        let faults = lock(&self.faults).clone();
        if roll(faults.download_stall) {
            tokio::time::sleep(Duration::from_millis(faults.download_stall_ms)).await;
        }
        if roll(faults.download_fail_once) && lock(&self.failed_once).insert(key.to_owned()) {
            lock(&self.stats).failed_downloads += 1;
            return problem(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error");
        }
        let Some((bytes, content_type)) = lock(&self.files).get(key).cloned() else {
            return problem(StatusCode::NOT_FOUND, "Not found.");
        };
        if roll(faults.download_truncate_once) && lock(&self.failed_once).insert(key.to_owned()) {
            lock(&self.stats).failed_downloads += 1;
            let mut response = http::Response::new(bytes.slice(..bytes.len() / 2));
            response
                .headers_mut()
                .insert(header::CONTENT_LENGTH, http::HeaderValue::from(bytes.len()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static(content_type),
            );
            response
                .extensions_mut()
                .insert(crate::http_server::UnsizedBody);
            return response;
        }
        lock(&self.stats).file_downloads += 1;
        let mut response = http::Response::new(bytes);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static(content_type),
        );
        response
    }

    /// Renders the outputs, stores them under `/files/...`, and returns `output` as the
    /// model returns it (a list, or one URL for single-output models).
    pub(super) async fn generate(
        &self,
        p: &SimPrediction,
        markers: &Markers,
    ) -> Result<Value, String> {
        // Every image input is fetched, as the model would; a fetch that fails fails it.
        let mut fetched = BTreeMap::new();
        let mut source = None;
        for field in IMAGE_FIELDS {
            let Some(image) = p.input.get(*field).and_then(Value::as_str) else {
                continue;
            };
            let bytes = self.fetch_input_image(image).await?;
            let digest = hex(&<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            fetched.insert((*field).to_owned(), (digest, bytes.len()));
            if *field == "image" && p.model == "nightmareai/real-esrgan" {
                source = Some(
                    images::decode_size(&bytes)
                        .map_err(|e| format!("input image could not be decoded: {e}"))?,
                );
            }
        }
        lock(&self.input_files).insert(p.id.clone(), fetched);
        let plan = images::plan(&p.model, &p.input, source);
        let prompt = p
            .input
            .get("prompt")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let seed = p.input.get("seed").and_then(Value::as_u64).unwrap_or(0);
        let rendered = tokio::task::spawn_blocking(move || {
            (0..plan.count)
                .map(|i| {
                    images::encode(
                        &images::render(plan.width, plan.height, &prompt, seed, i),
                        plan.format,
                        plan.quality,
                    )
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .await
        .map_err(|e| format!("rendering crashed: {e}"))?
        .map_err(|e| format!("encoding failed: {e}"))?;
        let origin = if markers.foreign_host {
            self.origin.replace("127.0.0.1", "localhost")
        } else {
            self.origin.clone()
        };
        let mut urls = Vec::new();
        for (i, bytes) in rendered.into_iter().enumerate() {
            let key = format!("{}/out-{i}.{}", p.id, plan.format.extension());
            lock(&self.files).insert(
                key.clone(),
                (Bytes::from(bytes), plan.format.content_type()),
            );
            urls.push(format!("{origin}/files/{key}"));
        }
        Ok(if SINGLE_OUTPUT_MODELS.contains(&p.model.as_str()) {
            Value::String(urls.remove(0))
        } else {
            json!(urls)
        })
    }

    async fn fetch_input_image(&self, image: &str) -> Result<Vec<u8>, String> {
        let bytes = if let Some(rest) = image.strip_prefix("data:") {
            let (_, payload) = rest
                .split_once(',')
                .ok_or("input image data URL has no data")?;
            base64::engine::general_purpose::STANDARD
                .decode(payload)
                .map_err(|_| "input image data URL is not base64".to_owned())?
        } else {
            let response = self
                .http
                .get(image)
                .send()
                .await
                .map_err(|e| format!("could not fetch input image: {e}"))?;
            if !response.status().is_success() {
                return Err(format!(
                    "could not fetch input image: HTTP {}",
                    response.status()
                ));
            }
            response
                .bytes()
                .await
                .map_err(|e| format!("could not fetch input image: {e}"))?
                .to_vec()
        };
        Ok(bytes)
    }
}
