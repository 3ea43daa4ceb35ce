//! Checking a callback's destination where its host resolves (README, "Callbacks"): every
//! address must be public, unless its `host:port` is listed.

use std::net::{IpAddr, SocketAddr};

use url::{Host, Url};

use crate::domain::destination::{CallbackAllowList, forbidden_address};
use crate::ports::dns::HostResolver;

/// The addresses `url` may be called at: every one its host resolves to must be public
/// (one private answer is enough to refuse: a client may connect to any of them), unless
/// its `host:port` is listed.
pub async fn check_destination<R: HostResolver>(
    url: &Url,
    allow: &CallbackAllowList,
    resolver: &R,
) -> Result<Vec<SocketAddr>, String> {
    let port = url
        .port_or_known_default()
        .ok_or("has no port".to_owned())?;
    let addresses = match url.host() {
        Some(Host::Ipv4(ip)) => vec![IpAddr::V4(ip)],
        Some(Host::Ipv6(ip)) => vec![IpAddr::V6(ip)],
        Some(Host::Domain(name)) => resolver
            .resolve(name)
            .await
            .map_err(|_| format!("host `{name}` does not resolve"))?,
        None => return Err("has no host".to_owned()),
    };
    if addresses.is_empty() {
        return Err("host does not resolve".to_owned());
    }
    if !allow.exempts(url)
        && let Some(reason) = addresses.iter().find_map(|ip| forbidden_address(*ip))
    {
        return Err(format!("must not point at {reason}"));
    }
    Ok(addresses
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::destination::parse_callback_url;

    /// Answers every name with fixed addresses; never asks DNS.
    struct Stub(Vec<IpAddr>);

    impl HostResolver for Stub {
        async fn resolve(&self, _host: &str) -> std::io::Result<Vec<IpAddr>> {
            Ok(self.0.clone())
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn a_name_is_refused_if_any_of_its_addresses_is_private() {
        let allow = CallbackAllowList::default();
        let url = Url::parse("https://hooks.example.com/in").unwrap();
        let public = Stub(vec![ip("93.184.216.34")]);
        let checked = check_destination(&url, &allow, &public).await.unwrap();
        assert_eq!(checked, [SocketAddr::new(ip("93.184.216.34"), 443)]);
        let mixed = Stub(vec![ip("93.184.216.34"), ip("169.254.169.254")]);
        let err = check_destination(&url, &allow, &mixed).await.unwrap_err();
        assert!(err.contains("metadata"), "{err}");
        let none = Stub(vec![]);
        assert!(check_destination(&url, &allow, &none).await.is_err());
        let literal = Url::parse("https://[::1]:8443/").unwrap();
        assert!(check_destination(&literal, &allow, &public).await.is_err());
    }

    #[tokio::test]
    async fn listed_host_ports_are_exempt_and_only_they() {
        let allow = CallbackAllowList::parse("127.0.0.1:9000, localhost:9001,[::1]:9002").unwrap();
        let loopback = Stub(vec![ip("127.0.0.1")]);
        for listed in [
            "http://127.0.0.1:9000/hook",
            "http://LOCALHOST:9001/",
            "http://[::1]:9002/",
        ] {
            let url = parse_callback_url(listed, &allow).unwrap();
            assert!(
                check_destination(&url, &allow, &loopback).await.is_ok(),
                "{listed}"
            );
        }
        for unlisted in ["http://127.0.0.1:9001/", "http://127.0.0.2:9000/"] {
            assert!(parse_callback_url(unlisted, &allow).is_err(), "{unlisted}");
        }
        let other_port = parse_callback_url("https://127.0.0.1:9443/", &allow).unwrap();
        assert!(
            check_destination(&other_port, &allow, &loopback)
                .await
                .is_err()
        );
        assert!(CallbackAllowList::parse("no-port").is_err());
        assert!(CallbackAllowList::parse("[::1]").is_err());
        let port_80 = CallbackAllowList::parse("hooks.internal:80").unwrap();
        assert!(port_80.exempts(&Url::parse("http://hooks.internal/x").unwrap()));
        assert!(CallbackAllowList::parse("host:1/path").is_err());
    }
}
