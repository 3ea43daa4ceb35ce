//! Where output files are downloaded from: HTTP in production, scripted in tests.

use std::future::Future;

use bytes::Bytes;
use url::Url;

use crate::domain::outputs::OutputError;

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
