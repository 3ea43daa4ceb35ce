//! Where callbacks may go (README, "Callbacks"): https URLs whose host resolves only to
//! public addresses. Checked at submit and again at every delivery, by the resolver the
//! delivery connects through, so a name that re-resolves to a private address after the
//! check (DNS rebinding) still reaches nothing inside. `CALLBACK_ALLOW_HOSTS` exempts listed
//! `host:port`s (local testing: a receiver on loopback over plain http).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::{Host, Url};

use crate::domain::callbacks::MAX_CALLBACK_URL_LEN;

/// `host:port`s callbacks may reach although private, loopback or plain http.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallbackAllowList {
    entries: Vec<(String, u16)>,
}

impl CallbackAllowList {
    /// A comma-separated list of `host:port` (`[::1]:8080` for IPv6).
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut entries = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let has_port = entry.rsplit_once(':').is_some_and(|(_, port)| {
                !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
            });
            if !has_port {
                return Err(format!("`{entry}` is not host:port"));
            }
            let url = Url::parse(&format!("http://{entry}"))
                .ok()
                .filter(|u| u.path() == "/" && u.query().is_none() && u.username().is_empty());
            // `host:80` reads back without its port (http's default): take the default.
            let parsed = url.and_then(|u| Some((host_key(u.host()?), u.port_or_known_default()?)));
            match parsed {
                Some(pair) => entries.push(pair),
                None => return Err(format!("`{entry}` is not host:port")),
            }
        }
        Ok(Self { entries })
    }

    /// Whether `url`'s host and port are listed.
    pub fn exempts(&self, url: &Url) -> bool {
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return false;
        };
        let host = host_key(host);
        self.entries.iter().any(|(h, p)| *h == host && *p == port)
    }
}

fn host_key(host: Host<&str>) -> String {
    match host {
        Host::Domain(d) => d.trim_end_matches('.').to_ascii_lowercase(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    }
}

/// Why an address may not be called back: loopback, private, link-local, metadata, and
/// everything else that is not a public unicast address.
pub fn forbidden_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip == Ipv4Addr::new(169, 254, 169, 254) || ip == Ipv4Addr::new(169, 254, 170, 2) {
        Some("a cloud metadata address")
    } else if ip.is_link_local() {
        Some("a link-local address")
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        Some("a private address")
    } else if ip.is_unspecified()
        || a == 0
        || ip.is_broadcast()
        || ip.is_multicast()
        || a >= 240
        || (a == 192 && b == 0 && c == 0)
        || (a == 198 && (b == 18 || b == 19))
        || ip.is_documentation()
    {
        Some("not a public address")
    } else {
        None
    }
}

fn forbidden_v6(ip: Ipv6Addr) -> Option<&'static str> {
    // Addresses that carry an IPv4 address are judged by it.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let segments = ip.segments();
    let embedded = |high: u16, low: u16| {
        Ipv4Addr::new((high >> 8) as u8, high as u8, (low >> 8) as u8, low as u8)
    };
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return forbidden_v4(embedded(segments[6], segments[7]));
    }
    if segments[0] == 0x2002 {
        return forbidden_v4(embedded(segments[1], segments[2]));
    }
    if ip.is_loopback() {
        Some("a loopback address")
    } else if segments[..4] == [0xfd00, 0x0ec2, 0, 0] {
        Some("a cloud metadata address")
    } else if (segments[0] & 0xffc0) == 0xfe80 {
        Some("a link-local address")
    } else if (segments[0] & 0xfe00) == 0xfc00 || (segments[0] & 0xffc0) == 0xfec0 {
        Some("a private address")
    } else if (segments[0] & 0xe000) != 0x2000
        // Outside global unicast (2000::/3) nothing is public: IPv4-translated, local NAT64,
        // discard and the rest fail closed. Inside it: documentation and Teredo (which
        // hides an IPv4 address).
        || segments[0] == 0x2001 && segments[1] == 0x0db8
        || segments[0] == 0x2001 && segments[1] == 0
    {
        Some("not a public address")
    } else {
        None
    }
}

/// A callback URL as given at submit: syntax first (https, a host, no credentials, bounded
/// length), plain http only for listed `host:port`s.
pub fn parse_callback_url(raw: &str, allow: &CallbackAllowList) -> Result<Url, String> {
    if raw.len() > MAX_CALLBACK_URL_LEN {
        return Err(format!("must be at most {MAX_CALLBACK_URL_LEN} characters"));
    }
    let url = Url::parse(raw).map_err(|_| "must be an https URL".to_owned())?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err("must be an https URL with a host".to_owned());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials".to_owned());
    }
    match url.scheme() {
        "https" => Ok(url),
        "http" if allow.exempts(&url) => Ok(url),
        _ => Err("must be an https URL".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_public_unicast_addresses_are_allowed() {
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "1.1.1.1",
        ] {
            assert_eq!(forbidden_address(ip(public)), None, "{public}");
        }
        for (address, reason) in [
            ("127.0.0.1", "loopback"),
            ("127.0.0.2", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("64:ff9b::7f00:1", "loopback"),
            ("2002:7f00:1::", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "private"),
            ("fd12::1", "private"),
            ("::ffff:10.0.0.1", "private"),
            ("169.254.169.254", "metadata"),
            ("fd00:ec2::254", "metadata"),
            ("169.254.1.1", "link-local"),
            ("fe80::1", "link-local"),
            ("0.0.0.0", "public"),
            ("::", "public"),
            ("255.255.255.255", "public"),
            ("224.0.0.1", "public"),
            ("ff02::1", "public"),
            ("240.0.0.1", "public"),
            ("::7f00:1", "public"),
            ("::ffff:0:7f00:1", "public"),
            ("64:ff9b:1::1", "public"),
            ("2001:0:4136:e378::1", "public"),
            ("2001:db8::1", "public"),
        ] {
            let found = forbidden_address(ip(address));
            assert!(
                found.is_some_and(|r| r.contains(reason)),
                "{address}: {found:?}"
            );
        }
    }

    #[test]
    fn callback_urls_are_https_with_a_host_and_no_credentials() {
        let allow = CallbackAllowList::default();
        assert!(parse_callback_url("https://hooks.example.com/in?x=1", &allow).is_ok());
        for bad in [
            "http://hooks.example.com/in",
            "ftp://hooks.example.com/",
            "https://user:pw@hooks.example.com/",
            "not a url",
            &format!("https://example.com/{}", "a".repeat(2048)),
        ] {
            assert!(parse_callback_url(bad, &allow).is_err(), "{bad}");
        }
    }
}
