//! The operating system's resolver, bounded in time, for the destination check at submit
//! and (guarded: no forbidden address) for the callback client's connections.

use std::net::{IpAddr, SocketAddr};

use crate::domain::destination::forbidden_address;
use crate::ports::dns::HostResolver;

/// Longest a name may take to resolve: a name server that never answers must not hold a
/// submit past API Gateway's 30 s.
pub const RESOLVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The operating system's resolver, bounded by `RESOLVE_TIMEOUT`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl HostResolver for SystemResolver {
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        let lookup = tokio::net::lookup_host((host, 0));
        Ok(tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??
            .map(|addr| addr.ip())
            .collect())
    }
}

/// Resolves with the system resolver and refuses any name with a forbidden address.
#[derive(Debug, Default)]
pub struct GuardedResolver;

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let lookup = tokio::net::lookup_host((host.as_str(), 0));
            let addresses: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
                .await
                .map_err(|_| format!("`{host}` did not resolve in time"))??
                .collect();
            if let Some(reason) = addresses.iter().find_map(|a| forbidden_address(a.ip())) {
                return Err(format!("`{host}` resolves to {reason}").into());
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}
