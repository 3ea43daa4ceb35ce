//! Claims on work: what makes concurrent submits agree on one prediction (ARCHITECTURE.md,
//! "Submit"). One conditional write takes a claim; the holder comes back in the same trip.

use crate::domain::ids::PredictionId;
use crate::domain::record::ttl_passed;
use crate::domain::time::Timestamp;

/// A claim on work (creating a prediction for a cache key or an idempotency key), held until
/// its lease ends. Conditional writes on it make concurrent submits agree on one winner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The item's key, e.g. `cache#<hash>` or `idem#<hash>`.
    pub key: String,
    /// Identifies the holder, so only it can settle or release the claim.
    pub token: String,
    /// The prediction that does (or will do) the work.
    pub prediction_id: Option<PredictionId>,
    /// Hash of the request that made the claim (idempotency keys: same key, same body).
    pub request_hash: Option<String>,
    /// Until then nobody else may take the claim.
    pub lease_until: Timestamp,
    /// DynamoDB TTL (seconds since the epoch).
    pub expires_at: u64,
    /// The first answer was served from the result cache (200), not a new prediction (202):
    /// an Idempotency-Key replay answers as the original did.
    pub from_cache: bool,
}

impl Claim {
    /// Whether the holder's lease ended before `now`.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.lease_until < now
    }

    /// Whether the claim's TTL passed: it no longer counts, whatever it says.
    pub fn past_ttl(&self, now: Timestamp) -> bool {
        ttl_passed(self.expires_at, now)
    }
}

/// Which holder an update of a claim must come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimGuard<'a> {
    Token(&'a str),
    Prediction(&'a PredictionId),
}

/// How a claim is settled: who does the work, until when nobody else may take it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement<'a> {
    pub prediction_id: &'a PredictionId,
    /// Never shortens a lease already longer (completion may have set the cache window).
    pub lease_until: Timestamp,
    pub from_cache: bool,
}

/// The outcome of trying to take a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Claimed,
    /// Someone else holds it; this is their claim, as stored.
    HeldBy(Claim),
}

/// A caller's `Idempotency-Key`, as the OpenAPI document states it: up to 255 visible ASCII
/// characters and spaces, at least one visible; the spaces around it are not part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Idempotency-Key must be 1 to 255 visible ASCII characters")]
pub struct InvalidIdempotencyKey;

impl IdempotencyKey {
    /// Checks the raw value (its length counts the spaces around it).
    pub fn parse(raw: &[u8]) -> Result<Self, InvalidIdempotencyKey> {
        let key = std::str::from_utf8(raw)
            .map(|k| k.trim_matches(' '))
            .unwrap_or_default();
        if key.is_empty()
            || raw.len() > 255
            || !raw.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
        {
            return Err(InvalidIdempotencyKey);
        }
        Ok(Self(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}
