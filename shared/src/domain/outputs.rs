//! A prediction's output files as this service copies them: only from allowed hosts, at
//! most `MAX_OUTPUTS`, each bounded in size; the copy itself is `app::copy`.

use url::Url;

use crate::domain::limits::MAX_OUTPUTS;

/// Bytes buffered before they go to S3 as one part. S3 wants parts of at least 5 MiB (but
/// the last); this bounds the memory one download uses, whatever the file's size.
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Larger outputs are refused; no image model produces anything near it.
pub const MAX_OUTPUT_BYTES: u64 = 512 * 1024 * 1024;

/// Longest output URL accepted (Replicate's are a few hundred characters): a copy job must
/// fit in one queue message, whatever an upstream sends.
pub const MAX_OUTPUT_URL_LEN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The URL itself is never repeated: it may carry a signature, and errors reach clients.
    #[error("an output URL is not a valid http(s) URL")]
    InvalidUrl,
    #[error("the prediction has {0} outputs; at most {MAX_OUTPUTS} are stored")]
    TooMany(usize),
    #[error("copying the outputs ran out of time")]
    OutOfTime,
    #[error("output host `{0}` is not in OUTPUT_HOST_ALLOWLIST")]
    HostNotAllowed(String),
    #[error("output download answered HTTP {0}")]
    Http(u16),
    #[error("output download failed: {0}")]
    Transport(String),
    #[error("output is larger than {MAX_OUTPUT_BYTES} bytes")]
    TooLarge,
    #[error("output download ended after {received} of {expected} bytes")]
    Truncated { expected: u64, received: u64 },
    #[error("output is empty")]
    Empty,
    /// Storing failed (`ports::StoreError`, as text: the domain knows no port).
    #[error("{0}")]
    Store(String),
}

impl OutputError {
    /// Retrying cannot help: the prediction's outputs cannot be stored.
    pub fn is_permanent(&self) -> bool {
        match self {
            Self::InvalidUrl
            | Self::TooMany(_)
            | Self::HostNotAllowed(_)
            | Self::TooLarge
            | Self::Empty => true,
            // Gone: Replicate deletes outputs after an hour.
            Self::Http(status) => matches!(status, 403 | 404 | 410),
            Self::Transport(_) | Self::Truncated { .. } | Self::Store(_) | Self::OutOfTime => false,
        }
    }
}

/// Hosts outputs may be downloaded from: `host`, `*.domain` (subdomains only) or either
/// with `:port`. An entry without a port allows only the scheme's default port. Only https
/// is allowed, but for loopback hosts (the local stack's simulator).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAllowlist {
    entries: Vec<HostPattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    /// Lowercase host, or the suffix (with its leading dot) for a wildcard.
    host: String,
    wildcard: bool,
    port: Option<u16>,
}

impl HostAllowlist {
    pub fn parse(list: &str) -> Result<Self, String> {
        let entries = list
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(HostPattern::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if entries.is_empty() {
            return Err("lists no host".to_owned());
        }
        Ok(Self { entries })
    }

    pub fn allows(&self, url: &Url) -> bool {
        let Some(host) = url.host_str() else {
            return false;
        };
        let secure = match url.scheme() {
            "https" => true,
            "http" => is_loopback(url),
            _ => false,
        };
        if !secure {
            return false;
        }
        let host = host.to_ascii_lowercase();
        self.entries.iter().any(|p| p.matches(&host, url.port()))
    }
}

impl HostPattern {
    fn parse(entry: &str) -> Result<Self, String> {
        if entry.contains("://") || entry.contains('/') {
            return Err(format!("`{entry}`: give hosts, not URLs"));
        }
        let (wildcard, rest) = match entry.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, entry),
        };
        let (host, port) =
            split_host_port(rest).ok_or_else(|| format!("`{entry}` is not host or host:port"))?;
        if host.is_empty() || host.contains('*') {
            return Err(format!(
                "`{entry}`: only a leading `*.` wildcard is supported"
            ));
        }
        let host = host.to_ascii_lowercase();
        Ok(Self {
            host: if wildcard { format!(".{host}") } else { host },
            wildcard,
            port,
        })
    }

    fn matches(&self, host: &str, port: Option<u16>) -> bool {
        let host_ok = if self.wildcard {
            host.ends_with(&self.host) && host.len() > self.host.len()
        } else {
            host == self.host
        };
        host_ok && port == self.port
    }
}

/// Whether a URL's host is this machine: plain http is allowed only there.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        // `Url::host_str` keeps the brackets of an IPv6 host.
        return Some((&s[..inside.len() + 2], port));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Some((host, Some(port.parse().ok()?))),
        None => Some((s, None)),
    }
}

/// Refuses an output list no prediction of ours can have (too many, or absurd URLs) before
/// anything is queued or downloaded: a permanent failure, not a retry.
pub fn check_output_list(urls: &[String]) -> Result<(), OutputError> {
    if urls.len() > MAX_OUTPUTS {
        return Err(OutputError::TooMany(urls.len()));
    }
    if urls.iter().any(|u| u.len() > MAX_OUTPUT_URL_LEN) {
        return Err(OutputError::InvalidUrl);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(list: &str) -> HostAllowlist {
        HostAllowlist::parse(list).unwrap()
    }

    fn url(s: &str) -> Url {
        Url::parse(s).unwrap()
    }

    #[test]
    fn allowlist_matches_hosts_wildcards_and_ports() {
        let list = allow("replicate.delivery, *.replicate.delivery,127.0.0.1:9000,[::1]:8080");
        assert!(list.allows(&url("https://replicate.delivery/a.png")));
        assert!(list.allows(&url("https://pbxt.replicate.delivery/a.png")));
        assert!(list.allows(&url("https://A.B.Replicate.Delivery/a.png")));
        assert!(list.allows(&url("http://127.0.0.1:9000/files/x.png")));
        assert!(list.allows(&url("http://[::1]:8080/x.png")));
        for denied in [
            "https://evilreplicate.delivery/a.png",
            "https://replicate.delivery.evil.com/a.png",
            "https://replicate.delivery:8443/a.png",
            "http://127.0.0.1:9001/x.png",
            "http://127.0.0.1/x.png",
            "ftp://replicate.delivery/a.png",
            "https://example.com/a.png",
        ] {
            assert!(!list.allows(&url(denied)), "{denied}");
        }
        // A wildcard covers subdomains, not the bare domain.
        assert!(!allow("*.replicate.delivery").allows(&url("https://replicate.delivery/a.png")));
    }

    #[test]
    fn allowlist_rejects_urls_and_bad_entries() {
        for bad in [
            "",
            " , ",
            "https://replicate.delivery",
            "replicate.delivery/path",
            "a.*.com",
            "host:port",
            "*.",
        ] {
            assert!(HostAllowlist::parse(bad).is_err(), "{bad:?}");
        }
    }
}
