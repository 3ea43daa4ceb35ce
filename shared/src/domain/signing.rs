//! Verifying Replicate's webhook signatures (the Standard Webhooks scheme).
//!
//! Signed content is `{webhook-id}.{webhook-timestamp}.{raw body}`, HMAC-SHA256 with the
//! base64-decoded part of the secret after `whsec_`. `webhook-signature` holds one or more
//! space-separated `v1,<base64>` entries; any match is enough, other versions are ignored.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const ID_HEADER: &str = "webhook-id";
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// How far a webhook's timestamp may be from our clock, either way.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Entries in one signature header beyond this are ignored: a legitimate sender has one per
/// active secret, and an attacker should not make us compare thousands.
const MAX_SIGNATURE_ENTRIES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("missing `{0}` header")]
    MissingHeader(&'static str),
    #[error("`{0}` header is not valid text")]
    InvalidHeader(&'static str),
    #[error("`webhook-timestamp` is not a Unix time in seconds")]
    BadTimestamp,
    #[error("webhook timestamp is {skew_seconds} s away from now (allowed: {tolerance_seconds} s)")]
    Stale {
        skew_seconds: i64,
        tolerance_seconds: u64,
    },
    #[error("no `v1` signature matches")]
    NoMatchingSignature,
    #[error("webhook signing secret is malformed (expected `whsec_` followed by base64)")]
    MalformedSecret,
}

/// The signing key. Its `Debug` output never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret {
    key: Vec<u8>,
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

impl SigningSecret {
    /// Parses `whsec_<base64>`. The prefix is optional, as in the Standard Webhooks
    /// libraries; the key is the *decoded* bytes (not the text, a known pitfall).
    pub fn parse(secret: &str) -> Result<Self, SignatureError> {
        let encoded = secret.trim();
        let encoded = encoded.strip_prefix("whsec_").unwrap_or(encoded);
        let key = BASE64
            .decode(encoded)
            .map_err(|_| SignatureError::MalformedSecret)?;
        if key.is_empty() {
            return Err(SignatureError::MalformedSecret);
        }
        Ok(Self { key })
    }

    /// A new random secret (two v4 UUIDs' bytes: 244 random bits from the OS).
    pub fn generate() -> Self {
        let mut key = uuid::Uuid::new_v4().into_bytes().to_vec();
        key.extend(uuid::Uuid::new_v4().into_bytes());
        Self { key }
    }

    /// `whsec_<base64>`, as `parse` reads it back. It is the secret: never log it.
    pub fn to_text(&self) -> String {
        format!("whsec_{}", BASE64.encode(&self.key))
    }

    fn tag(&self, id: &str, timestamp: &str, body: &[u8]) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC accepts keys of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.as_bytes());
        mac.update(b".");
        mac.update(body);
        mac.finalize().into_bytes().into()
    }

    /// The `webhook-signature` value for this content: what a sender (our simulator, tests)
    /// puts in the header.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.tag(id, &timestamp.to_string(), body);
        format!("v1,{}", BASE64.encode(tag))
    }
}

/// The three signing headers, as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignatureHeaders<'a> {
    pub id: &'a str,
    pub timestamp: &'a str,
    pub signature: &'a str,
}

impl<'a> SignatureHeaders<'a> {
    /// The three headers, each read by `header` (its raw bytes, `None` when absent): each
    /// must be present, visible ASCII, and not blank.
    pub fn from_headers(
        header: impl Fn(&'static str) -> Option<&'a [u8]>,
    ) -> Result<Self, SignatureError> {
        let get = |name: &'static str| -> Result<&'a str, SignatureError> {
            let value = header(name).ok_or(SignatureError::MissingHeader(name))?;
            let text = std::str::from_utf8(value)
                .ok()
                .filter(|t| t.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b)))
                .ok_or(SignatureError::InvalidHeader(name))?
                .trim();
            if text.is_empty() {
                return Err(SignatureError::MissingHeader(name));
            }
            Ok(text)
        };
        Ok(Self {
            id: get(ID_HEADER)?,
            timestamp: get(TIMESTAMP_HEADER)?,
            signature: get(SIGNATURE_HEADER)?,
        })
    }
}

impl SignatureHeaders<'_> {
    /// The timestamp, if it is within `tolerance` of `now`: checked before anything costly
    /// (a stale or malformed delivery is refused without a secret or a signature check).
    pub fn fresh_timestamp(
        &self,
        now: SystemTime,
        tolerance: Duration,
    ) -> Result<i64, SignatureError> {
        let timestamp: i64 = self
            .timestamp
            .parse()
            .map_err(|_| SignatureError::BadTimestamp)?;
        let skew = timestamp.saturating_sub(unix_seconds(now));
        let tolerance_seconds = tolerance.as_secs();
        if skew.unsigned_abs() > tolerance_seconds {
            return Err(SignatureError::Stale {
                skew_seconds: skew,
                tolerance_seconds,
            });
        }
        Ok(timestamp)
    }
}

/// What a verified delivery tells us beyond its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedMessage {
    /// Same on every retry of one event, so usable to recognise duplicates.
    pub id: String,
    pub timestamp: i64,
}

#[derive(Debug, Clone)]
pub struct SignatureVerifier {
    secret: SigningSecret,
    tolerance: Duration,
}

impl SignatureVerifier {
    pub fn new(secret: SigningSecret) -> Self {
        Self {
            secret,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Checks the timestamp first (cheap, and a stale replay is refused even with a valid
    /// signature), then each `v1` signature in constant time.
    pub fn verify(
        &self,
        headers: SignatureHeaders<'_>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<VerifiedMessage, SignatureError> {
        let timestamp = headers.fresh_timestamp(now, self.tolerance)?;

        let expected = self.secret.tag(headers.id, headers.timestamp, body);
        let matched = headers
            .signature
            .split_ascii_whitespace()
            .take(MAX_SIGNATURE_ENTRIES)
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|encoded| BASE64.decode(encoded).ok())
            .fold(false, |any, candidate| {
                // Keep comparing after a match so timing does not reveal which entry matched.
                any | bool::from(candidate.as_slice().ct_eq(&expected))
            });
        if !matched {
            return Err(SignatureError::NoMatchingSignature);
        }
        Ok(VerifiedMessage {
            id: headers.id.to_owned(),
            timestamp,
        })
    }
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The public Standard Webhooks test vector, also used by both official Replicate clients.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: &str = "1614265330";
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn at(seconds: i64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds as u64)
    }

    fn vector_time() -> SystemTime {
        at(1_614_265_330)
    }

    fn verifier() -> SignatureVerifier {
        SignatureVerifier::new(SigningSecret::parse(SECRET).unwrap())
    }

    fn headers(signature: &str) -> SignatureHeaders<'_> {
        SignatureHeaders {
            id: ID,
            timestamp: TIMESTAMP,
            signature,
        }
    }

    #[test]
    fn public_test_vector_verifies() {
        let delivery = verifier()
            .verify(headers(SIGNATURE), BODY, vector_time())
            .unwrap();
        assert_eq!(delivery.id, ID);
        assert_eq!(delivery.timestamp, 1_614_265_330);
    }

    #[test]
    fn signing_reproduces_the_vector() {
        let secret = SigningSecret::parse(SECRET).unwrap();
        assert_eq!(secret.sign(ID, 1_614_265_330, BODY), SIGNATURE);
    }

    #[test]
    fn secret_text_bytes_are_not_the_key() {
        // The pitfall in one of Replicate's doc examples: using the secret's UTF-8 bytes.
        let wrong = SigningSecret {
            key: SECRET.as_bytes().to_vec(),
        };
        assert_ne!(wrong.sign(ID, 1_614_265_330, BODY), SIGNATURE);
    }

    #[test]
    fn any_v1_entry_may_match_and_other_versions_are_ignored() {
        let multi = format!("v1a,{} v2,abc v1,AAAA {SIGNATURE}", &SIGNATURE[3..]);
        assert!(
            verifier()
                .verify(headers(&multi), BODY, vector_time())
                .is_ok()
        );
        let only_other_versions = format!("v2,{} v1a,{}", &SIGNATURE[3..], &SIGNATURE[3..]);
        assert_eq!(
            verifier().verify(headers(&only_other_versions), BODY, vector_time()),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn tampering_with_body_id_or_timestamp_fails() {
        let v = verifier();
        assert_eq!(
            v.verify(
                headers(SIGNATURE),
                br#"{"test": 2432232315}"#,
                vector_time()
            ),
            Err(SignatureError::NoMatchingSignature)
        );
        let other_id = SignatureHeaders {
            id: "msg_other",
            ..headers(SIGNATURE)
        };
        assert_eq!(
            v.verify(other_id, BODY, vector_time()),
            Err(SignatureError::NoMatchingSignature)
        );
        let other_ts = SignatureHeaders {
            timestamp: "1614265331",
            ..headers(SIGNATURE)
        };
        assert_eq!(
            v.verify(other_ts, BODY, vector_time()),
            Err(SignatureError::NoMatchingSignature)
        );
        let wrong_secret = SignatureVerifier::new(SigningSecret::parse("whsec_c2VjcmV0").unwrap());
        assert_eq!(
            wrong_secret.verify(headers(SIGNATURE), BODY, vector_time()),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn timestamp_tolerance_is_five_minutes_both_ways() {
        let v = verifier();
        let sent = 1_614_265_330;
        for now in [sent - 300, sent + 300] {
            assert!(v.verify(headers(SIGNATURE), BODY, at(now)).is_ok(), "{now}");
        }
        assert_eq!(
            v.verify(headers(SIGNATURE), BODY, at(sent + 301)),
            Err(SignatureError::Stale {
                skew_seconds: -301,
                tolerance_seconds: 300
            })
        );
        assert_eq!(
            v.verify(headers(SIGNATURE), BODY, at(sent - 301)),
            Err(SignatureError::Stale {
                skew_seconds: 301,
                tolerance_seconds: 300
            })
        );
    }

    #[test]
    fn junk_signatures_and_timestamps_are_refused() {
        let v = verifier();
        for junk in [
            "",
            "v1,",
            "v1,!!!notbase64",
            "v1,AAAA",
            "g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ] {
            assert_eq!(
                v.verify(headers(junk), BODY, vector_time()),
                Err(SignatureError::NoMatchingSignature),
                "{junk:?}"
            );
        }
        for ts in ["", "abc", "1614265330.5", "99999999999999999999999"] {
            let h = SignatureHeaders {
                timestamp: ts,
                ..headers(SIGNATURE)
            };
            assert_eq!(
                v.verify(h, BODY, vector_time()),
                Err(SignatureError::BadTimestamp),
                "{ts:?}"
            );
        }
    }

    #[test]
    fn a_match_beyond_the_entry_limit_is_not_considered() {
        let padded = format!("{}{SIGNATURE}", "v1,AAAA ".repeat(MAX_SIGNATURE_ENTRIES));
        assert_eq!(
            verifier().verify(headers(&padded), BODY, vector_time()),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn headers_are_read_as_an_http_layer_passes_them() {
        let mut map = http::HeaderMap::new();
        assert_eq!(
            SignatureHeaders::from_headers(|name| map.get(name).map(|v| v.as_bytes())),
            Err(SignatureError::MissingHeader(ID_HEADER))
        );
        map.insert(ID_HEADER, ID.parse().unwrap());
        map.insert(TIMESTAMP_HEADER, TIMESTAMP.parse().unwrap());
        assert_eq!(
            SignatureHeaders::from_headers(|name| map.get(name).map(|v| v.as_bytes())),
            Err(SignatureError::MissingHeader(SIGNATURE_HEADER))
        );
        map.insert(
            SIGNATURE_HEADER,
            http::HeaderValue::from_bytes(b"v1,\xff").unwrap(),
        );
        assert_eq!(
            SignatureHeaders::from_headers(|name| map.get(name).map(|v| v.as_bytes())),
            Err(SignatureError::InvalidHeader(SIGNATURE_HEADER))
        );
        map.insert(SIGNATURE_HEADER, SIGNATURE.parse().unwrap());
        let parsed =
            SignatureHeaders::from_headers(|name| map.get(name).map(|v| v.as_bytes())).unwrap();
        assert!(verifier().verify(parsed, BODY, vector_time()).is_ok());
    }

    #[test]
    fn malformed_secrets_are_refused_and_never_printed() {
        for bad in ["", "whsec_", "whsec_!!!", "whsec_ not base64"] {
            assert_eq!(
                SigningSecret::parse(bad),
                Err(SignatureError::MalformedSecret),
                "{bad:?}"
            );
        }
        let secret = SigningSecret::parse(SECRET).unwrap();
        assert!(!format!("{secret:?}").contains("MfKQ"));
        // The prefix is optional.
        assert_eq!(SigningSecret::parse(&SECRET[6..]).unwrap(), secret);
    }
}
