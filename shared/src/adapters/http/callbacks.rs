//! Sending one callback attempt (README, "Callbacks"): a POST with a 10 s limit, no
//! redirects, no proxy, to an address checked at connect time. Names are resolved by
//! `GuardedResolver`, which refuses the whole name if any address is not public, so what
//! is checked is what is connected to (no window for DNS rebinding). Literal addresses,
//! which no resolver sees, are checked before sending.

use std::sync::Arc;

use crate::adapters::http::dns::GuardedResolver;
use crate::adapters::http::error_chain;
use crate::adapters::http::lazy_client::LazyClient;
use crate::domain::callbacks::ATTEMPT_TIMEOUT;
use crate::domain::destination::{CallbackAllowList, forbidden_address};
use crate::ports::callbacks::{CallbackOutcome, CallbackRequest, CallbackSender};

/// Time to connect (resolving included) before an attempt counts as failed.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Callback attempts over HTTP. The clients are built on first use: only the callbacks
/// function sends, and every other function's cold start would pay for their TLS setup.
pub struct HttpCallbacks {
    guarded: LazyClient,
    /// For `CALLBACK_ALLOW_HOSTS` only: resolves without the address check.
    exempt: LazyClient,
    allow: CallbackAllowList,
}

impl HttpCallbacks {
    pub fn new(allow: CallbackAllowList) -> Self {
        Self {
            guarded: LazyClient::new(|| builder().dns_resolver(Arc::new(GuardedResolver))),
            exempt: LazyClient::new(builder),
            allow,
        }
    }
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(ATTEMPT_TIMEOUT)
        // A blackholed endpoint holds a worker slot for 3 s, not the whole attempt.
        .connect_timeout(CONNECT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .user_agent(concat!("imagegen-callbacks/", env!("CARGO_PKG_VERSION")))
}

impl CallbackSender for HttpCallbacks {
    async fn post(&self, request: CallbackRequest) -> CallbackOutcome {
        let client = if self.allow.exempts(&request.url) {
            &self.exempt
        } else {
            let literal = match request.url.host() {
                Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
                _ => None,
            };
            if let Some(reason) = literal.and_then(forbidden_address) {
                return CallbackOutcome::Forbidden(format!("the destination is {reason}"));
            }
            if request.url.scheme() != "https" {
                return CallbackOutcome::Forbidden("the destination is not https".to_owned());
            }
            &self.guarded
        };
        let client = match client.get() {
            Ok(client) => client,
            Err(err) => {
                return CallbackOutcome::Unreachable(format!(
                    "could not build the callback client: {err}"
                ));
            }
        };
        let mut builder = client.post(request.url.clone()).body(request.body);
        for (name, value) in request.headers {
            builder = builder.header(name, value);
        }
        match builder.send().await {
            Ok(response) if response.status().is_success() => CallbackOutcome::Delivered {
                status: response.status().as_u16(),
            },
            Ok(response) => CallbackOutcome::Rejected {
                status: response.status().as_u16(),
            },
            Err(err) => {
                let text = error_chain(&err.without_url());
                if text.contains("resolves to") {
                    CallbackOutcome::Forbidden(text)
                } else {
                    CallbackOutcome::Unreachable(text)
                }
            }
        }
    }
}
