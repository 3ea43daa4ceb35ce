//! The service's settings (`app::Settings`), read from the environment (README,
//! "Configuration") here and nowhere else.

use std::time::Duration;

use url::Url;

use crate::adapters::replicate::DEFAULT_BASE_URL;
use crate::app::Settings;
use crate::domain::destination::CallbackAllowList;
use crate::domain::outputs::HostAllowlist;
use crate::domain::pacing::Pace;
use crate::domain::signing::{SignatureError, SigningSecret};

pub const DEFAULT_OUTPUT_HOST_ALLOWLIST: &str = "replicate.delivery,*.replicate.delivery";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{0} is required")]
    Missing(&'static str),
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let required = |name: &'static str| get(name).ok_or(ConfigError::Missing(name));
        let seconds = |name: &'static str, default: u64| -> Result<Duration, ConfigError> {
            match get(name) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => v
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .map(Duration::from_secs)
                    .ok_or(ConfigError::Invalid {
                        name,
                        reason: format!("`{v}` is not a positive whole number"),
                    }),
            }
        };

        let webhook_secret = get("REPLICATE_WEBHOOK_SECRET")
            .map(|s| SigningSecret::parse(&s))
            .transpose()
            .map_err(|e: SignatureError| ConfigError::Invalid {
                name: "REPLICATE_WEBHOOK_SECRET",
                reason: e.to_string(),
            })?;
        let public_base_url = get("PUBLIC_BASE_URL")
            .map(|raw| parse_public_base_url(&raw))
            .transpose()?;
        let output_hosts = HostAllowlist::parse(
            &get("OUTPUT_HOST_ALLOWLIST")
                .unwrap_or_else(|| DEFAULT_OUTPUT_HOST_ALLOWLIST.to_owned()),
        )
        .map_err(|reason| ConfigError::Invalid {
            name: "OUTPUT_HOST_ALLOWLIST",
            reason,
        })?;
        let output_url_ttl = seconds("OUTPUT_URL_TTL_SECONDS", 3600)?;
        // S3 refuses presigned URLs valid for more than seven days.
        if output_url_ttl > Duration::from_secs(7 * 24 * 3600) {
            return Err(ConfigError::Invalid {
                name: "OUTPUT_URL_TTL_SECONDS",
                reason: "must be at most 604800 (seven days)".to_owned(),
            });
        }
        Ok(Self {
            replicate_base_url: get("REPLICATE_API_BASE_URL")
                .unwrap_or_else(|| DEFAULT_BASE_URL.to_owned()),
            webhook_secret,
            table_name: required("TABLE_NAME")?,
            bucket_name: required("BUCKET_NAME")?,
            copy_queue_url: required("COPY_QUEUE_URL")?,
            callback_queue_url: required("CALLBACK_QUEUE_URL")?,
            callback_dead_letter_url: required("CALLBACK_DEAD_LETTER_QUEUE_URL")?,
            create_queue_url: required("CREATE_QUEUE_URL")?,
            create_pace: Pace::new(
                match seconds("REPLICATE_CREATES_PER_MINUTE", 500)?.as_secs() {
                    // The pacer counts in milliseconds: at most one create each.
                    n @ 1..=60_000 => n as u32,
                    n => {
                        return Err(ConfigError::Invalid {
                            name: "REPLICATE_CREATES_PER_MINUTE",
                            reason: format!("`{n}` is over 60000"),
                        });
                    }
                },
                seconds("MAX_QUEUE_SECONDS", 900)?,
            ),
            callback_allow: CallbackAllowList::parse(
                &get("CALLBACK_ALLOW_HOSTS").unwrap_or_default(),
            )
            .map_err(|reason| ConfigError::Invalid {
                name: "CALLBACK_ALLOW_HOSTS",
                reason,
            })?,
            callback_retry_base: seconds("CALLBACK_RETRY_BASE_SECONDS", 30)?,
            public_base_url,
            output_hosts,
            output_url_ttl,
            result_cache_ttl: seconds("RESULT_CACHE_TTL_SECONDS", 24 * 3600)?,
            fetch_sync_interval: seconds("FETCH_SYNC_INTERVAL_SECONDS", 5)?,
            record_ttl: seconds("RECORD_TTL_DAYS", 30)?.saturating_mul(24 * 3600),
            reconcile_after: seconds("RECONCILE_AFTER_SECONDS", 120)?,
            resolve_after: seconds("RESOLVE_AFTER_SECONDS", 300)?,
            send_webhooks: match get("SEND_WEBHOOKS").as_deref() {
                None | Some("true" | "1") => true,
                Some("false" | "0") => false,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        name: "SEND_WEBHOOKS",
                        reason: format!("`{other}` is not true or false"),
                    });
                }
            },
        })
    }
}

fn parse_public_base_url(raw: &str) -> Result<Url, ConfigError> {
    let invalid = |reason: &str| ConfigError::Invalid {
        name: "PUBLIC_BASE_URL",
        reason: reason.to_owned(),
    };
    let url = Url::parse(raw).map_err(|_| invalid("not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid("must be an http(s) URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("must not have a query or fragment"));
    }
    Ok(url)
}

/// The Replicate API token from `REPLICATE_API_TOKEN`.
pub fn replicate_token(lookup: impl Fn(&str) -> Option<String>) -> Result<String, ConfigError> {
    lookup("REPLICATE_API_TOKEN")
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .ok_or(ConfigError::Missing("REPLICATE_API_TOKEN"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    const BASE: [(&str, &str); 6] = [
        ("TABLE_NAME", "t"),
        ("BUCKET_NAME", "b"),
        ("COPY_QUEUE_URL", "http://127.0.0.1:1/q"),
        ("CALLBACK_QUEUE_URL", "http://127.0.0.1:1/c"),
        ("CALLBACK_DEAD_LETTER_QUEUE_URL", "http://127.0.0.1:1/d"),
        ("CREATE_QUEUE_URL", "http://127.0.0.1:1/n"),
    ];

    #[test]
    fn defaults_follow_the_contract() {
        let s = settings(&BASE).unwrap();
        assert_eq!(s.replicate_base_url, "https://api.replicate.com/v1");
        assert!(s.webhook_secret.is_none());
        assert!(s.public_base_url.is_none());
        assert_eq!(s.output_url_ttl, Duration::from_secs(3600));
        assert_eq!(s.create_pace, Pace::new(500, Duration::from_secs(900)));
        assert!(
            s.output_hosts
                .allows(&Url::parse("https://replicate.delivery/x.png").unwrap())
        );
        assert!(
            s.output_hosts
                .allows(&Url::parse("https://pbxt.replicate.delivery/x.png").unwrap())
        );
    }

    #[test]
    fn required_and_invalid_values_are_named() {
        let err = settings(&[("BUCKET_NAME", "b"), ("COPY_QUEUE_URL", "q")]).unwrap_err();
        assert_eq!(err.to_string(), "TABLE_NAME is required");
        for (name, value) in [
            ("OUTPUT_URL_TTL_SECONDS", "0"),
            ("OUTPUT_URL_TTL_SECONDS", "1h"),
            ("OUTPUT_URL_TTL_SECONDS", "604801"),
            ("PUBLIC_BASE_URL", "example.com"),
            ("PUBLIC_BASE_URL", "https://example.com/?x=1"),
            ("REPLICATE_WEBHOOK_SECRET", "whsec_***"),
            ("OUTPUT_HOST_ALLOWLIST", "https://replicate.delivery"),
        ] {
            let mut vars = BASE.to_vec();
            vars.push((name, value));
            let err = settings(&vars).unwrap_err();
            assert!(err.to_string().starts_with(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn overrides_are_read() {
        let mut vars = BASE.to_vec();
        vars.extend([
            ("REPLICATE_API_BASE_URL", "http://127.0.0.1:9000/v1"),
            ("PUBLIC_BASE_URL", "https://api.example.com/prod"),
            ("OUTPUT_HOST_ALLOWLIST", "127.0.0.1:9000"),
            ("OUTPUT_URL_TTL_SECONDS", "60"),
            (
                "REPLICATE_WEBHOOK_SECRET",
                "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            ),
        ]);
        let s = settings(&vars).unwrap();
        assert_eq!(s.replicate_base_url, "http://127.0.0.1:9000/v1");
        assert_eq!(
            s.public_base_url.unwrap().as_str(),
            "https://api.example.com/prod"
        );
        assert!(
            s.output_hosts
                .allows(&Url::parse("http://127.0.0.1:9000/files/a.png").unwrap())
        );
        assert!(
            !s.output_hosts
                .allows(&Url::parse("https://replicate.delivery/a.png").unwrap())
        );
        assert_eq!(s.output_url_ttl, Duration::from_secs(60));
        assert!(s.webhook_secret.is_some());
    }
}
