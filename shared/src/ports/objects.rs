//! The object store (S3 in production): outputs, input images, upload slots.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;

use crate::ports::StoreError;

/// Where output files are kept.
pub trait ObjectStore: Send + Sync {
    fn put_object(
        &self,
        key: &str,
        content_type: &str,
        body: Bytes,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Starts a multipart upload and returns its id.
    fn create_multipart(
        &self,
        key: &str,
        content_type: &str,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Uploads one part (numbered from 1) and returns its ETag.
    fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        part_number: i32,
        body: Bytes,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn abort_multipart(
        &self,
        key: &str,
        upload_id: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A time-limited download URL for `key`.
    fn presign_get(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// A time-limited URL to PUT exactly `size` bytes of `content_type` at `key`, and the
    /// headers the PUT must carry (both are signed, so S3 refuses any other).
    fn presign_put(
        &self,
        key: &str,
        content_type: &str,
        size: u64,
        ttl: Duration,
    ) -> impl Future<Output = Result<PresignedPut, StoreError>> + Send;

    /// Reads an object back, unless it is larger than `max_bytes` (then only its size is
    /// told, and no byte is read).
    fn read_object(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> impl Future<Output = Result<ObjectRead, StoreError>> + Send;
}

/// A presigned PUT: where to send it, and the headers it must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignedPut {
    pub url: String,
    pub headers: Vec<(String, String)>,
}

/// An object as `read_object` found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObjectRead {
    Missing,
    TooLarge { size: u64 },
    Found { content_type: String, bytes: Bytes },
}
