//! An HTTP client built on first use. Building a `reqwest::Client` sets up TLS (its root
//! certificates): paid at every cold start for a client the invocation may never use (only
//! the copier downloads outputs, only the callbacks function calls back). A failed build is
//! tried again on the next use.

use std::sync::{Arc, OnceLock};

type Builder = dyn Fn() -> reqwest::ClientBuilder + Send + Sync;

#[derive(Clone)]
pub struct LazyClient {
    client: Arc<OnceLock<reqwest::Client>>,
    builder: Arc<Builder>,
}

impl LazyClient {
    pub fn new(builder: impl Fn() -> reqwest::ClientBuilder + Send + Sync + 'static) -> Self {
        Self {
            client: Arc::new(OnceLock::new()),
            builder: Arc::new(builder),
        }
    }

    /// The client, built now if it was not yet.
    pub fn get(&self) -> Result<&reqwest::Client, reqwest::Error> {
        if let Some(client) = self.client.get() {
            return Ok(client);
        }
        let built = (self.builder)().build()?;
        Ok(self.client.get_or_init(|| built))
    }
}

impl std::fmt::Debug for LazyClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyClient")
            .field("built", &self.client.get().is_some())
            .finish()
    }
}
