//! Storing a prediction's output files in the bucket: only from allowed hosts, streamed in
//! bounded parts (never the whole file in memory), with size and SHA-256, under keys that a
//! retry overwrites instead of duplicating.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use url::Url;

use crate::domain::digest::hex;
use crate::domain::ids::PredictionId;
use crate::domain::outputs::{
    HostAllowlist, MAX_OUTPUT_BYTES, OutputError, PART_SIZE, check_output_list,
};
use crate::domain::record::StoredOutput;
use crate::ports::downloads::{Download, OutputSource};
use crate::ports::objects::ObjectStore;

/// Attempts per output before a transient failure is reported (and the webhook retried).
const DOWNLOAD_ATTEMPTS: u32 = 3;

/// Downloads and stores every output of a prediction, one after another (so memory stays
/// at one part's worth), under `outputs/{id}/{index}.{ext}`: a retried webhook overwrites
/// the same objects instead of adding copies.
pub async fn store_outputs<S: OutputSource, O: ObjectStore>(
    source: &S,
    objects: &O,
    allowlist: &HostAllowlist,
    id: &PredictionId,
    urls: &[String],
) -> Result<Vec<StoredOutput>, OutputError> {
    check_output_list(urls)?;
    let mut parsed = Vec::with_capacity(urls.len());
    for raw in urls {
        let url = Url::parse(raw).map_err(|_| OutputError::InvalidUrl)?;
        if !allowlist.allows(&url) {
            let host = url.host_str().unwrap_or_default();
            let host = match url.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            };
            return Err(OutputError::HostNotAllowed(host));
        }
        parsed.push(url);
    }
    let mut stored = Vec::with_capacity(parsed.len());
    for (index, url) in parsed.iter().enumerate() {
        let key_stem = format!("outputs/{id}/{index}");
        stored.push(store_with_retries(source, objects, url, &key_stem).await?);
    }
    Ok(stored)
}

async fn store_with_retries<S: OutputSource, O: ObjectStore>(
    source: &S,
    objects: &O,
    url: &Url,
    key_stem: &str,
) -> Result<StoredOutput, OutputError> {
    let mut attempt = 1;
    loop {
        let result = match source.open(url).await {
            Ok(download) => store_one(objects, key_stem, download).await,
            Err(err) => Err(err),
        };
        match result {
            Err(err) if !err.is_permanent() && attempt < DOWNLOAD_ATTEMPTS => {
                tracing::warn!(key = key_stem, attempt, error = %err, "output download failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Streams one download into the bucket: a single PUT if it fits in one part, else a
/// multipart upload, aborted if anything fails midway.
pub async fn store_one<O: ObjectStore, D: Download>(
    objects: &O,
    key_stem: &str,
    mut download: D,
) -> Result<StoredOutput, OutputError> {
    let declared_type = download.content_type();
    let expected = download.content_length();
    if expected.is_some_and(|n| n > MAX_OUTPUT_BYTES) {
        return Err(OutputError::TooLarge);
    }
    let mut upload = MultipartUpload::default();
    let result = async {
        let mut buffer = BytesMut::new();
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = download.next_chunk().await? {
            size += chunk.len() as u64;
            if size > MAX_OUTPUT_BYTES {
                return Err(OutputError::TooLarge);
            }
            hasher.update(&chunk);
            buffer.extend_from_slice(&chunk);
            while buffer.len() >= PART_SIZE {
                let part = buffer.split_to(PART_SIZE).freeze();
                upload
                    .send_part(objects, key_stem, declared_type.as_deref(), part)
                    .await?;
            }
        }
        if let Some(expected) = expected.filter(|e| *e != size) {
            return Err(OutputError::Truncated {
                expected,
                received: size,
            });
        }
        if size == 0 {
            return Err(OutputError::Empty);
        }
        let rest = buffer.freeze();
        let (key, content_type) = match upload.started() {
            Some(_) => {
                if !rest.is_empty() {
                    upload
                        .send_part(objects, key_stem, declared_type.as_deref(), rest)
                        .await?;
                }
                upload.complete(objects).await?
            }
            None => {
                let (key, content_type) = object_key(key_stem, &rest, declared_type.as_deref());
                objects.put_object(&key, &content_type, rest).await?;
                (key, content_type)
            }
        };
        Ok(StoredOutput {
            key,
            content_type,
            size,
            sha256: hex(&hasher.finalize()),
        })
    }
    .await;
    if result.is_err() {
        upload.abort(objects).await;
    }
    result
}

#[derive(Default)]
struct MultipartUpload {
    key: String,
    content_type: String,
    upload_id: Option<String>,
    parts: Vec<(i32, String)>,
}

impl MultipartUpload {
    fn started(&self) -> Option<&str> {
        self.upload_id.as_deref()
    }

    async fn send_part<O: ObjectStore>(
        &mut self,
        objects: &O,
        key_stem: &str,
        declared_type: Option<&str>,
        part: Bytes,
    ) -> Result<(), OutputError> {
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                // The first part decides the type (and so the key's extension).
                let (key, content_type) = object_key(key_stem, &part, declared_type);
                let id = objects.create_multipart(&key, &content_type).await?;
                (self.key, self.content_type, self.upload_id) =
                    (key, content_type, Some(id.clone()));
                id
            }
        };
        let number = i32::try_from(self.parts.len() + 1).unwrap_or(i32::MAX);
        let etag = objects
            .upload_part(&self.key, &upload_id, number, part)
            .await?;
        self.parts.push((number, etag));
        Ok(())
    }

    async fn complete<O: ObjectStore>(&self, objects: &O) -> Result<(String, String), OutputError> {
        let upload_id = self.upload_id.as_deref().unwrap_or_default();
        objects
            .complete_multipart(&self.key, upload_id, &self.parts)
            .await?;
        Ok((self.key.clone(), self.content_type.clone()))
    }

    async fn abort<O: ObjectStore>(&self, objects: &O) {
        if let Some(upload_id) = &self.upload_id
            && let Err(err) = objects.abort_multipart(&self.key, upload_id).await
        {
            tracing::warn!(key = %self.key, error = %err, "could not abort multipart upload");
        }
    }
}

/// The object key and content type for an output whose first bytes are `head`. The bytes
/// are trusted over the declared type: a server can say anything.
fn object_key(key_stem: &str, head: &[u8], declared: Option<&str>) -> (String, String) {
    let (content_type, ext) = sniff_image(head)
        .or_else(|| declared.and_then(image_type_from_header))
        .unwrap_or(("application/octet-stream", "bin"));
    (format!("{key_stem}.{ext}"), content_type.to_owned())
}

fn sniff_image(head: &[u8]) -> Option<(&'static str, &'static str)> {
    match head {
        [0x89, b'P', b'N', b'G', ..] => Some(("image/png", "png")),
        [0xFF, 0xD8, 0xFF, ..] => Some(("image/jpeg", "jpg")),
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => Some(("image/webp", "webp")),
        [b'G', b'I', b'F', b'8', ..] => Some(("image/gif", "gif")),
        _ => None,
    }
}

fn image_type_from_header(value: &str) -> Option<(&'static str, &'static str)> {
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "image/png" => Some(("image/png", "png")),
        "image/jpeg" | "image/jpg" => Some(("image/jpeg", "jpg")),
        "image/webp" => Some(("image/webp", "webp")),
        "image/gif" => Some(("image/gif", "gif")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::fakes::{MemoryObjects, ScriptedDownload};
    fn png_bytes(len: usize) -> Vec<u8> {
        let mut v = vec![0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
        v.resize(len, 7);
        v
    }

    #[tokio::test]
    async fn small_output_is_one_put_with_size_hash_and_sniffed_type() {
        let objects = MemoryObjects::default();
        let body = png_bytes(1000);
        let download = ScriptedDownload::new(
            vec![body[..300].to_vec(), body[300..].to_vec()],
            Some("application/octet-stream"),
        );
        let out = store_one(&objects, "outputs/p/0", download).await.unwrap();
        assert_eq!(out.key, "outputs/p/0.png");
        assert_eq!(out.content_type, "image/png");
        assert_eq!(out.size, 1000);
        assert_eq!(out.sha256, hex(&Sha256::digest(&body)));
        assert_eq!(objects.get("outputs/p/0.png").unwrap().0, body);
        assert_eq!(objects.multipart_uploads_started(), 0);
    }

    #[tokio::test]
    async fn large_output_goes_up_in_bounded_parts() {
        let objects = MemoryObjects::default();
        let body = png_bytes(PART_SIZE * 2 + 12345);
        let chunks: Vec<Vec<u8>> = body.chunks(1 << 20).map(<[u8]>::to_vec).collect();
        let out = store_one(&objects, "outputs/p/1", ScriptedDownload::new(chunks, None))
            .await
            .unwrap();
        assert_eq!(out.size, body.len() as u64);
        assert_eq!(objects.get("outputs/p/1.png").unwrap().0, body);
        assert_eq!(
            objects.part_sizes("outputs/p/1.png"),
            vec![PART_SIZE, PART_SIZE, 12345]
        );
    }

    #[tokio::test]
    async fn truncated_download_is_refused_and_the_upload_aborted() {
        let objects = MemoryObjects::default();
        let body = png_bytes(PART_SIZE + 10);
        let download =
            ScriptedDownload::new(vec![body.clone()], None).with_length(body.len() as u64 + 5);
        let err = store_one(&objects, "outputs/p/2", download)
            .await
            .unwrap_err();
        assert!(
            matches!(err, OutputError::Truncated { received, .. } if received == body.len() as u64),
            "{err}"
        );
        assert!(!err.is_permanent());
        assert!(objects.get("outputs/p/2.png").is_none());
        assert_eq!(objects.open_multipart_uploads(), 0, "aborted");
    }

    #[tokio::test]
    async fn declared_type_is_used_when_bytes_say_nothing_and_empty_is_refused() {
        let objects = MemoryObjects::default();
        let out = store_one(
            &objects,
            "o/3",
            ScriptedDownload::new(vec![b"abc".to_vec()], Some("image/jpeg; q=1")),
        )
        .await
        .unwrap();
        assert_eq!(
            (out.key.as_str(), out.content_type.as_str()),
            ("o/3.jpg", "image/jpeg")
        );
        let out = store_one(
            &objects,
            "o/4",
            ScriptedDownload::new(vec![b"abc".to_vec()], Some("text/html")),
        )
        .await
        .unwrap();
        assert_eq!(
            (out.key.as_str(), out.content_type.as_str()),
            ("o/4.bin", "application/octet-stream")
        );
        let err = store_one(&objects, "o/5", ScriptedDownload::new(vec![], None))
            .await
            .unwrap_err();
        assert!(matches!(err, OutputError::Empty));
    }

    #[tokio::test]
    async fn declared_oversize_is_refused_before_reading() {
        let objects = MemoryObjects::default();
        let download = ScriptedDownload::new(vec![], None).with_length(MAX_OUTPUT_BYTES + 1);
        assert!(matches!(
            store_one(&objects, "o/6", download).await,
            Err(OutputError::TooLarge)
        ));
    }

    #[test]
    fn sniffing_knows_the_usual_image_formats() {
        assert_eq!(
            sniff_image(b"\xFF\xD8\xFF\xE0rest"),
            Some(("image/jpeg", "jpg"))
        );
        assert_eq!(
            sniff_image(b"RIFF\x10\0\0\0WEBPVP8 "),
            Some(("image/webp", "webp"))
        );
        assert_eq!(sniff_image(b"GIF89a"), Some(("image/gif", "gif")));
        assert_eq!(sniff_image(b"<html>"), None);
    }
}
