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

use crate::ports::objects::{ObjectRead, ObjectStore, PresignedPut};

use crate::ports::StoreError;

#[derive(Debug)]
pub struct S3Objects {
    client: Client,
    bucket: String,
    /// What signs presigned URLs (the client's own provider is not reachable from it).
    credentials: Option<SharedCredentialsProvider>,
    /// What the signing credentials say of their lifetime, as last asked (and when).
    credentials_expiry: Mutex<Option<(Instant, Lifetime)>>,
}

/// How long a looked-up credential expiry is trusted before asking again.
const EXPIRY_RECHECK: Duration = Duration::from_secs(60);
/// A presigned URL is made to expire this long before its credentials do.
const EXPIRY_MARGIN: Duration = Duration::from_secs(60);
/// The longest a URL is signed for with temporary credentials that do not say when they
/// expire (a Lambda function's role credentials come as environment variables, without an
/// expiry): such a URL stops working when they do.
pub const UNKNOWN_TEMPORARY_LIFETIME: Duration = Duration::from_secs(3600);

/// What the signing credentials say of how long they live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// Long-lived keys (no session token, no expiry).
    Unlimited,
    /// Temporary, expiring then.
    Until(SystemTime),
    /// Temporary (a session token), expiry not told.
    Temporary,
}

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

    /// How long the credentials that sign URLs live: a URL signed with temporary
    /// credentials stops working when they expire, whatever it claims.
    async fn credentials_lifetime(&self) -> Lifetime {
        use aws_sdk_s3::config::ProvideCredentials as _;
        if let Some((at, lifetime)) = *self
            .credentials_expiry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            && at.elapsed() < EXPIRY_RECHECK
        {
            return lifetime;
        }
        let Some(provider) = self.credentials.as_ref() else {
            return Lifetime::Temporary;
        };
        let lifetime = match provider.provide_credentials().await {
            Ok(c) => match (c.expiry(), c.session_token()) {
                (Some(expiry), _) => Lifetime::Until(expiry),
                (None, Some(_)) => Lifetime::Temporary,
                (None, None) => Lifetime::Unlimited,
            },
            Err(_) => Lifetime::Temporary,
        };
        *self
            .credentials_expiry
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), lifetime));
        lifetime
    }
}

/// The lifetime to sign for: `wanted`, but never past the credentials' expiry.
pub fn presign_lifetime(wanted: Duration, credentials: Lifetime, now: SystemTime) -> Duration {
    match credentials {
        Lifetime::Unlimited => wanted,
        Lifetime::Temporary => wanted.min(UNKNOWN_TEMPORARY_LIFETIME),
        Lifetime::Until(expiry) => match expiry.duration_since(now) {
            Ok(left) => wanted.min(
                left.saturating_sub(EXPIRY_MARGIN)
                    .max(Duration::from_secs(1)),
            ),
            Err(_) => Duration::from_secs(1),
        },
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
        let lifetime = self.credentials_lifetime().await;
        let ttl = presign_lifetime(ttl, lifetime, SystemTime::now());
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

    async fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
        ttl: Duration,
    ) -> Result<PresignedPut, StoreError> {
        let lifetime = self.credentials_lifetime().await;
        let ttl = presign_lifetime(ttl, lifetime, SystemTime::now());
        let config = PresigningConfig::expires_in(ttl).map_err(|e| failed("presign", e))?;
        let request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .content_length(i64::try_from(size).unwrap_or(i64::MAX))
            .presigned(config)
            .await
            .map_err(|e| failed("presign", e))?;
        // The signed headers the PUT must repeat; `host` is the URL's own.
        let headers = request
            .headers()
            .filter(|(name, _)| !name.eq_ignore_ascii_case("host"))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.to_owned()))
            .collect();
        Ok(PresignedPut {
            url: request.uri().to_owned(),
            headers,
        })
    }

    async fn read_object(&self, key: &str, max_bytes: u64) -> Result<ObjectRead, StoreError> {
        let result = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await;
        let output = match result {
            Ok(output) => output,
            Err(err) => {
                return match err.into_service_error() {
                    aws_sdk_s3::operation::get_object::GetObjectError::NoSuchKey(_) => {
                        Ok(ObjectRead::Missing)
                    }
                    other => Err(failed("read object", other)),
                };
            }
        };
        let size = output
            .content_length()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0);
        if size > max_bytes {
            return Ok(ObjectRead::TooLarge { size });
        }
        let content_type = output.content_type().unwrap_or_default().to_owned();
        // Read at most one byte past the limit, whatever the length header said.
        let mut body = output.body;
        let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| StoreError::new("read object", e.to_string()))?
        {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > max_bytes {
                return Ok(ObjectRead::TooLarge {
                    size: bytes.len() as u64,
                });
            }
        }
        Ok(ObjectRead::Found {
            content_type,
            bytes: Bytes::from(bytes),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presigned_urls_never_outlive_their_credentials() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        let week = 168 * hour;
        assert_eq!(presign_lifetime(week, Lifetime::Unlimited, now), week);
        assert_eq!(presign_lifetime(week, Lifetime::Temporary, now), hour);
        assert_eq!(
            presign_lifetime(hour, Lifetime::Until(now + 10 * hour), now),
            hour
        );
        assert_eq!(
            presign_lifetime(hour, Lifetime::Until(now + Duration::from_secs(900)), now),
            Duration::from_secs(840)
        );
        assert_eq!(
            presign_lifetime(hour, Lifetime::Until(now - Duration::from_secs(5)), now),
            Duration::from_secs(1)
        );
    }
}
