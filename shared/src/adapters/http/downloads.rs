//! Output downloads over HTTP, with timeouts; redirects only to allowed hosts.

use std::time::Duration;

use bytes::Bytes;
use url::Url;

use crate::domain::outputs::{HostAllowlist, OutputError};
use crate::ports::downloads::{Download, OutputSource};

/// Downloads over HTTP with timeouts; redirects are followed only to allowed hosts.
#[derive(Debug, Clone)]
pub struct HttpDownloads {
    /// Built on first use: only the copier downloads.
    http: crate::adapters::http::lazy_client::LazyClient,
}

impl HttpDownloads {
    pub fn new(allowlist: HostAllowlist) -> Self {
        let http = crate::adapters::http::lazy_client::LazyClient::new(move || {
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
