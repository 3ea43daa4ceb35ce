//! Copying a prediction's output files from Replicate into our bucket: only from allowed
//! hosts, streamed in bounded parts (never the whole file in memory), with size and SHA-256.

use std::future::Future;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use url::Url;

use crate::ports::{ObjectStore, StoreError};
use crate::record::{MAX_OUTPUTS, PredictionId, StoredOutput};

/// Bytes buffered before they go to S3 as one part. S3 wants parts of at least 5 MiB (but
/// the last); this bounds the memory one download uses, whatever the file's size.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Larger outputs are refused; no image model produces anything near it.
pub const MAX_OUTPUT_BYTES: u64 = 512 * 1024 * 1024;

/// Longest output URL accepted (Replicate's are a few hundred characters): a copy job must
/// fit in one queue message, whatever an upstream sends.
pub const MAX_OUTPUT_URL_LEN: usize = 4096;

/// Attempts per output before a transient failure is reported (and the webhook retried).
const DOWNLOAD_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The URL itself is never repeated: it may carry a signature, and errors reach clients.
    #[error("an output URL is not a valid http(s) URL")]
    InvalidUrl,
    #[error("the prediction has {0} outputs; at most {MAX_OUTPUTS} are stored")]
    TooMany(usize),
    #[error("copying the outputs ran out of time")]
    OutOfTime,
    #[error("output host `{0}` is not in OUTPUT_HOST_ALLOWLIST")]
    HostNotAllowed(String),
    #[error("output download answered HTTP {0}")]
    Http(u16),
    #[error("output download failed: {0}")]
    Transport(String),
    #[error("output is larger than {MAX_OUTPUT_BYTES} bytes")]
    TooLarge,
    #[error("output download ended after {received} of {expected} bytes")]
    Truncated { expected: u64, received: u64 },
    #[error("output is empty")]
    Empty,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl OutputError {
    /// Retrying cannot help: the prediction's outputs cannot be stored.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidUrl
            | Self::TooMany(_)
            | Self::HostNotAllowed(_)
            | Self::TooLarge
            | Self::Empty => true,
            // Gone: Replicate deletes outputs after an hour.
            Self::Http(status) => matches!(status, 403 | 404 | 410),
            Self::Transport(_) | Self::Truncated { .. } | Self::Store(_) | Self::OutOfTime => false,
        }
    }
}

/// Hosts outputs may be downloaded from: `host`, `*.domain` (subdomains only) or either
/// with `:port`. An entry without a port allows only the scheme's default port. Only https
/// is allowed, but for loopback hosts (the local stack's simulator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAllowlist {
    entries: Vec<HostPattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    /// Lowercase host, or the suffix (with its leading dot) for a wildcard.
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostAllowlist {
    pub fn parse(list: &str) -> Result<Self, String> {
        let entries = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(HostPattern::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if entries.is_empty() {
            return Err("lists no host".to_owned());
        }
        Ok(Self { entries })
    }

    pub fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let secure = match url.scheme() {
            "https" => true,
            "http" => is_loopback(url),
            _ => false,
        };
        if !secure {
            return false;
        }
        let host = host.to_ascii_lowercase();
        self.entries.iter().any(|p| p.matches(&host, url.port()))
    }
}

impl HostPattern {
    fn parse(entry: &str) -> Result<Self, String> {
        if entry.contains("://") || entry.contains('/') {
            return Err(format!("`{entry}`: give hosts, not URLs"));
        }
        let (wildcard, rest) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        let (host, port) =
            split_host_port(rest).ok_or_else(|| format!("`{entry}` is not host or host:port"))?;
        if host.is_empty() || host.contains('*') {
            return Err(format!(
                "`{entry}`: only a leading `*.` wildcard is supported"
            ));
        }
        let host = host.to_ascii_lowercase();
        Ok(Self {
            host: if wildcard { format!(".{host}") } else { host },
            wildcard,
            port,
        })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        let host_ok = if self.wildcard {
            host.ends_with(&self.host) && host.len() > self.host.len()
        } else {
            host == self.host
        };
        host_ok && port == self.port
    }
}

/// Whether a URL's host is this machine: plain http is allowed only there.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        // `Url::host_str` keeps the brackets of an IPv6 host.
        return Some((&s[..inside.len() + 2], port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((s, None)),
    }
}

/// An output file being downloaded.
pub trait Download: Send {
    fn content_type(&self) -> Option<String>;
    fn content_length(&self) -> Option<u64>;
    /// The next piece of the body; `None` at its end.
    fn next_chunk(&mut self) -> impl Future<Output = Result<Option<Bytes>, OutputError>> + Send;
}

/// Where output files are downloaded from.
pub trait OutputSource: Send + Sync {
    type Download: Download;
    fn open(&self, url: &Url) -> impl Future<Output = Result<Self::Download, OutputError>> + Send;
}

/// Downloads over HTTP with timeouts; redirects are followed only to allowed hosts.
#[derive(Debug, Clone)]
pub struct HttpDownloads {
    /// Built on first use: only the copier downloads.
    http: crate::lazy_client::LazyClient,
}

impl HttpDownloads {
    pub fn new(allowlist: HostAllowlist) -> Self {
        let http = crate::lazy_client::LazyClient::new(move || {
            let allowlist = allowlist.clone();
            let redirects = reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= 5 || !allowlist.allows(attempt.url()) {
                    attempt.stop()
                } else {
                    attempt.follow()
                }
            });
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .read_timeout(Duration::from_secs(30))
                .timeout(Duration::from_secs(600))
                .redirect(redirects)
        });
        Self { http }
    }
}

pub struct HttpDownload(reqwest::Response);

impl Download for HttpDownload {
    fn content_type(&self) -> Option<String> {
        self.0
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    }

    fn content_length(&self) -> Option<u64> {
        self.0.content_length()
    }

    async fn next_chunk(&mut self) -> Result<Option<Bytes>, OutputError> {
        self.0
            .chunk()
            .await
            .map_err(|e| OutputError::Transport(e.without_url().to_string()))
    }
}

impl OutputSource for HttpDownloads {
    type Download = HttpDownload;

    async fn open(&self, url: &Url) -> Result<HttpDownload, OutputError> {
        let response = self
            .http
            .get()
            .map_err(|e| OutputError::Transport(e.to_string()))?
            .get(url.clone())
            .send()
            .await
            .map_err(|e| OutputError::Transport(e.without_url().to_string()))?;
        if !response.status().is_success() {
            return Err(OutputError::Http(response.status().as_u16()));
        }
        Ok(HttpDownload(response))
    }
}

/// Refuses an output list no prediction of ours can have (too many, or absurd URLs) before
/// anything is queued or downloaded: a permanent failure, not a retry.
pub fn check_output_list(urls: &[String]) -> Result<(), OutputError> {
    if urls.len() > MAX_OUTPUTS {
        return Err(OutputError::TooMany(urls.len()));
    }
    if urls.iter().any(|u| u.len() > MAX_OUTPUT_URL_LEN) {
        return Err(OutputError::InvalidUrl);
    }
    Ok(())
}

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

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::{MemoryObjects, ScriptedDownload};

    fn allow(list: &str) -> HostAllowlist {
        HostAllowlist::parse(list).unwrap()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn allowlist_matches_hosts_wildcards_and_ports() {
        let list = allow("replicate.delivery, *.replicate.delivery,127.0.0.1:9000,[::1]:8080");
        assert!(list.allows(&url("https://replicate.delivery/a.png")));
        assert!(list.allows(&url("https://pbxt.replicate.delivery/a.png")));
        assert!(list.allows(&url("https://A.B.Replicate.Delivery/a.png")));
        assert!(list.allows(&url("http://127.0.0.1:9000/files/x.png")));
        assert!(list.allows(&url("http://[::1]:8080/x.png")));
        for denied in [
            "https://evilreplicate.delivery/a.png",
            "https://replicate.delivery.evil.com/a.png",
            "https://replicate.delivery:8443/a.png",
            "http://127.0.0.1:9001/x.png",
            "http://127.0.0.1/x.png",
            "ftp://replicate.delivery/a.png",
            "https://example.com/a.png",
        ] {
            assert!(!list.allows(&url(denied)), "{denied}");
        }
        // A wildcard covers subdomains, not the bare domain.
        assert!(!allow("*.replicate.delivery").allows(&url("https://replicate.delivery/a.png")));
    }

    #[test]
    fn allowlist_rejects_urls_and_bad_entries() {
        for bad in [
            "",
            " , ",
            "https://replicate.delivery",
            "replicate.delivery/path",
            "a.*.com",
            "host:port",
            "*.",
        ] {
            assert!(HostAllowlist::parse(bad).is_err(), "{bad:?}");
        }
    }

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
