//! The object store on S3.

use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

use crate::ports::{ObjectStore, StoreError};

#[derive(Debug, Clone)]
pub struct S3Objects {
    client: Client,
    bucket: String,
}

impl S3Objects {
    pub fn new(client: Client, bucket: impl Into<String>) -> Self {
        Self {
            client,
            bucket: bucket.into(),
        }
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
