//! Name resolution, as the callback checks at submit need it.

use std::future::Future;
use std::net::IpAddr;

/// Resolves a host name (`SystemResolver`, or a stub in unit tests).
pub trait HostResolver: Send + Sync {
    fn resolve(&self, host: &str) -> impl Future<Output = std::io::Result<Vec<IpAddr>>> + Send;
}
