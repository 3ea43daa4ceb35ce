//! The object store on S3.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::SharedCredentialsProvider;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use crate::ports::{ObjectStore, StoreError};

#[derive(Debug)]
pub struct S3Objects {
    client: Client,
    bucket: String,
    /// What signs presigned URLs (the client's own provider is not reachable from it).
    credentials: Option<SharedCredentialsProvider>,
    /// When the signing credentials expire, as last asked (and when it was asked).
    credentials_expiry: Mutex<Option<(Instant, Option<SystemTime>)>>,
}

/// How long a looked-up credential expiry is trusted before asking again.
const EXPIRY_RECHECK: Duration = Duration::from_secs(60);
/// A presigned URL is made to expire this long before its credentials do.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);

impl S3Objects {
    pub fn new(
        client: Client,
        bucket: impl Into<String>,
        credentials: Option<SharedCredentialsProvider>,
    ) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            credentials,
            credentials_expiry: Mutex::new(None),
        }
    }

    /// When the credentials that sign URLs expire, if they say (temporary credentials from
    /// a role do; a URL signed with them stops working then, whatever it claims).
    async fn credentials_expiry(&self) -> Option<SystemTime> {
        use aws_sdk_s3::config::ProvideCredentials as _;
        if let Some((at, expiry)) = *self
            .credentials_expiry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < EXPIRY_RECHECK
        {
            return expiry;
        }
        let provider = self.credentials.as_ref()?;
        let expiry = provider
            .provide_credentials()
            .await
            .ok()
            .and_then(|c| c.expiry());
        *self
            .credentials_expiry
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), expiry));
        expiry
    }
}

/// The lifetime to sign for: `wanted`, but never past the credentials' expiry.
pub fn presign_lifetime(wanted: Duration, expiry: Option<SystemTime>, now: SystemTime) -> Duration {
    match expiry.and_then(|e| e.duration_since(now).ok()) {
        Some(left) => wanted.min(
            left.saturating_sub(EXPIRY_MARGIN)
                .max(Duration::from_secs(1)),
        ),
        None if expiry.is_some() => Duration::from_secs(1),
        None => wanted,
    }
}

fn failed<E: std::error::Error>(operation: &'static str, err: E) -> StoreError {
    StoreError::new(operation, DisplayErrorContext(err).to_string())
}

impl ObjectStore for S3Objects {
    async fn put_object(
        &self,
        key: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| failed("put object", e))
    }

    async fn create_multipart(&self, key: &str, content_type: &str) -> Result<String, StoreError> {
        let output = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .send()
            .await
            .map_err(|e| failed("create multipart upload", e))?;
        output
            .upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::new("create multipart upload", "no upload id in the answer"))
    }

    async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> Result<String, StoreError> {
        let output = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .part_number(part_number)
            .body(ByteStream::from(body))
            .send()
            .await
            .map_err(|e| failed("upload part", e))?;
        output
            .e_tag()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::new("upload part", "no ETag in the answer"))
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StoreError> {
        let completed = CompletedMultipartUpload::builder()
            .set_parts(Some(
                parts
                    .iter()
                    .map(|(number, etag)| {
                        CompletedPart::builder()
                            .part_number(*number)
                            .e_tag(etag)
                            .build()
                    })
                    .collect(),
            ))
            .build();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(completed)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| failed("complete multipart upload", e))
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| failed("abort multipart upload", e))
    }

    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
        let expiry = self.credentials_expiry().await;
        let ttl = presign_lifetime(ttl, expiry, SystemTime::now());
        let config = PresigningConfig::expires_in(ttl).map_err(|e| failed("presign", e))?;
        let request = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| failed("presign", e))?;
        Ok(request.uri().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_urls_never_outlive_their_credentials() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        assert_eq!(presign_lifetime(hour, None, now), hour);
        assert_eq!(presign_lifetime(hour, Some(now + 10 * hour), now), hour);
        assert_eq!(
            presign_lifetime(hour, Some(now + Duration::from_secs(900)), now),
            Duration::from_secs(840)
        );
        assert_eq!(
            presign_lifetime(hour, Some(now - Duration::from_secs(5)), now),
            Duration::from_secs(1)
        );
    }
}
