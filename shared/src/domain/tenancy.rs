//! Callers: API keys, the tenants they belong to, per-tenant rate windows and usage months
//! (README, "Callers, limits and cost").
//!
//! A key is stored only as its SHA-256: keys are long random strings, so a fast hash is as
//! safe as a slow one and costs nothing per request. The item is found by the hash's first
//! 16 hex digits (the key's public id, what `make revoke` takes), and the whole hash is then
//! compared in constant time.

use std::fmt;
use std::time::Duration;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::money::Micros;
use crate::domain::time::Timestamp;

/// Longest key accepted in a header (generated keys are 68 characters).
pub const MAX_KEY_CHARS: usize = 256;
/// Submits per minute when a key is created without a rate.
pub const DEFAULT_RATE_PER_MINUTE: u32 = 60;
/// Highest rate a key may be given.
pub const MAX_RATE_PER_MINUTE: u32 = 1_000_000;
const GENERATED_KEY_PREFIX: &str = "igk_";

/// A tenant: lowercase letters, digits, `-`, `_` and `.`, 1 to 64 characters, starting with
/// a letter or digit. It is part of stored keys, so it can hold no `#`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenancyError {
    #[error(
        "a tenant is 1 to 64 lowercase letters, digits, `-`, `_` or `.`, starting with a letter or digit"
    )]
    InvalidTenant,
    #[error("an API key is 16 to 256 characters of A-Z a-z 0-9 - . _ ~ + /")]
    InvalidKey,
    #[error("a key id is 16 lowercase hex digits")]
    InvalidKeyId,
    #[error("rate_per_minute must be between 1 and {MAX_RATE_PER_MINUTE}")]
    InvalidRate,
    #[error("monthly_budget_usd must be a non-negative amount of dollars")]
    InvalidBudget,
}

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, TenancyError> {
        let bytes = s.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 64
            && bytes[0].is_ascii_alphanumeric()
            && bytes.iter().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            });
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(TenancyError::InvalidTenant)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A key's public id: the first 16 hex digits of its hash.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyId(String);

impl KeyId {
    pub fn parse(s: &str) -> Result<Self, TenancyError> {
        if s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(TenancyError::InvalidKeyId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An API key as a caller presents it. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

impl ApiKey {
    /// A new key: 244 random bits (two v4 UUIDs from the OS's random source) as hex.
    pub fn generate() -> Self {
        let a = uuid::Uuid::new_v4().simple().to_string();
        let b = uuid::Uuid::new_v4().simple().to_string();
        Self(format!("{GENERATED_KEY_PREFIX}{a}{b}"))
    }

    /// A key in RFC 6750's `b64token` alphabet, 16 to 256 characters (an operator may choose
    /// their own through `DEV_API_KEYS`).
    pub fn parse(s: &str) -> Result<Self, TenancyError> {
        let body = s.trim_end_matches('=');
        let valid = (16..=MAX_KEY_CHARS).contains(&s.len())
            && !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(TenancyError::InvalidKey)
        }
    }

    /// The key itself: shown once, when it is created.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// SHA-256 of the key, hex: the only form in which it is stored.
    pub fn hash(&self) -> KeyHash {
        KeyHash(crate::domain::digest::hex(&Sha256::digest(
            self.0.as_bytes(),
        )))
    }
}

/// The stored form of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHash(String);

impl KeyHash {
    pub fn from_stored(hex: String) -> Self {
        Self(hex)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id the key is stored and revoked under.
    pub fn key_id(&self) -> KeyId {
        KeyId(self.0.chars().take(16).collect())
    }

    /// Constant-time equality, so response timing tells nothing about a stored hash.
    pub fn matches(&self, other: &KeyHash) -> bool {
        self.0.len() == other.0.len() && bool::from(self.0.as_bytes().ct_eq(other.0.as_bytes()))
    }
}

/// A stored API key: whose it is. What the tenant may do is the tenant's (`TenantLimits`),
/// shared by all its keys, as its rate window and usage are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    pub id: KeyId,
    pub hash: KeyHash,
    pub tenant: TenantId,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl KeyRecord {
    /// A record for `key`, active from `now`.
    pub fn new(key: &ApiKey, tenant: TenantId, now: Timestamp) -> Self {
        let hash = key.hash();
        Self {
            id: hash.key_id(),
            hash,
            tenant,
            created_at: now,
            revoked_at: None,
        }
    }
}

/// What a stored key says of its tenant's limits. Keys carry them, so who a request comes
/// from and what it may do is one read (ARCHITECTURE.md, "Callers and money").
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CarriedLimits {
    /// The tenant's limits as they last changed (`None`: it has none stored, so the
    /// defaults apply).
    Carried(Option<TenantLimits>),
    /// A key stored before keys carried their tenant's limits: the tenant's item decides.
    NotCarried,
}

/// A key as the store holds it: the key, and its tenant's limits as the key carries them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub record: KeyRecord,
    pub limits: CarriedLimits,
}

/// A tenant's limits: submits per minute and an optional monthly budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantLimits {
    pub tenant: TenantId,
    pub rate_per_minute: u32,
    pub monthly_budget: Option<Micros>,
}

impl TenantLimits {
    pub fn new(
        tenant: TenantId,
        rate_per_minute: u32,
        monthly_budget: Option<Micros>,
    ) -> Result<Self, TenancyError> {
        check_rate(rate_per_minute)?;
        Ok(Self {
            tenant,
            rate_per_minute,
            monthly_budget,
        })
    }

    /// What a tenant without a stored item may do: the default rate, no budget.
    pub fn default_for(tenant: TenantId) -> Self {
        Self {
            tenant,
            rate_per_minute: DEFAULT_RATE_PER_MINUTE,
            monthly_budget: None,
        }
    }
}

/// A rate a tenant may be given: 1 to `MAX_RATE_PER_MINUTE` submits a minute.
fn check_rate(rate_per_minute: u32) -> Result<u32, TenancyError> {
    if (1..=MAX_RATE_PER_MINUTE).contains(&rate_per_minute) {
        Ok(rate_per_minute)
    } else {
        Err(TenancyError::InvalidRate)
    }
}

/// A change to a tenant's limits: what is `None` stays as stored (a tenant without stored
/// limits gets the default rate and no budget). Applied in one update, so two changes at
/// once (one of the rate, one of the budget) both take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitsUpdate {
    pub tenant: TenantId,
    pub rate_per_minute: Option<u32>,
    /// `Some(None)` removes the budget.
    pub monthly_budget: Option<Option<Micros>>,
}

impl LimitsUpdate {
    pub fn new(
        tenant: TenantId,
        rate_per_minute: Option<u32>,
        monthly_budget: Option<Option<Micros>>,
    ) -> Result<Self, TenancyError> {
        rate_per_minute.map(check_rate).transpose()?;
        Ok(Self {
            tenant,
            rate_per_minute,
            monthly_budget,
        })
    }

    /// The limits after this change to `stored`.
    pub fn applied_to(&self, stored: Option<&TenantLimits>) -> TenantLimits {
        let current = stored
            .cloned()
            .unwrap_or_else(|| TenantLimits::default_for(self.tenant.clone()));
        TenantLimits {
            tenant: self.tenant.clone(),
            rate_per_minute: self.rate_per_minute.unwrap_or(current.rate_per_minute),
            monthly_budget: self.monthly_budget.unwrap_or(current.monthly_budget),
        }
    }
}

/// The caller a request with `key` acts as, if the key is still valid, with its tenant's
/// `limits` (the defaults when the tenant has none stored).
pub fn caller(key: &KeyRecord, limits: Option<&TenantLimits>) -> Option<Caller> {
    if key.revoked_at.is_some() {
        return None;
    }
    let limits = limits
        .filter(|l| l.tenant == key.tenant)
        .cloned()
        .unwrap_or_else(|| TenantLimits::default_for(key.tenant.clone()));
    Some(Caller {
        tenant: limits.tenant,
        key_id: key.id.clone(),
        rate_per_minute: limits.rate_per_minute,
        monthly_budget: limits.monthly_budget,
    })
}

/// Who a request comes from, once its key checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub tenant: TenantId,
    pub key_id: KeyId,
    pub rate_per_minute: u32,
    pub monthly_budget: Option<Micros>,
}

/// One tenant's minute of submits: a fixed window, counted atomically in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateWindow {
    /// Store key, e.g. `rate#acme#29613424`.
    pub key: String,
    /// When the window ends (and a refused caller may try again).
    pub ends_at: Timestamp,
    /// DynamoDB TTL (seconds): shortly after the window ends.
    pub expires_at: u64,
}

impl RateWindow {
    pub fn at(tenant: &TenantId, now: Timestamp) -> Self {
        Self::named(format!("rate#{tenant}"), now)
    }

    /// The window of a tenant's upload slots: the same limit, counted apart from submits
    /// (a tenant name holds no `#`, so the keys never meet).
    pub fn uploads_at(tenant: &TenantId, now: Timestamp) -> Self {
        Self::named(format!("rate#{tenant}#uploads"), now)
    }

    fn named(prefix: String, now: Timestamp) -> Self {
        let (minute, ends_at) = now.period(Duration::from_secs(60));
        Self {
            key: format!("{prefix}#{minute}"),
            ends_at,
            expires_at: ends_at.plus(Duration::from_secs(120)).unix_seconds(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_are_plain_names() {
        assert!(TenantId::parse("acme").is_ok());
        assert!(TenantId::parse("a.b-c_9").is_ok());
        for bad in ["", "Acme", "-x", "a#b", "a b", &"a".repeat(65), "é"] {
            assert_eq!(
                TenantId::parse(bad),
                Err(TenancyError::InvalidTenant),
                "{bad}"
            );
        }
    }

    #[test]
    fn generated_keys_are_long_random_and_stored_only_as_a_hash() {
        let a = ApiKey::generate();
        let b = ApiKey::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 68);
        assert!(ApiKey::parse(a.expose()).is_ok());
        assert_eq!(format!("{a:?}"), "ApiKey(<redacted>)");
        let hash = a.hash();
        assert_eq!(hash.as_str().len(), 64);
        assert!(!hash.as_str().contains(&a.expose()[4..]));
        assert_eq!(hash.key_id().as_str(), &hash.as_str()[..16]);
        assert!(hash.matches(&a.hash()));
        assert!(!hash.matches(&b.hash()));
        assert!(!hash.matches(&KeyHash::from_stored(String::new())));
    }

    #[test]
    fn callers_take_their_tenants_limits_and_revoked_keys_have_none() {
        let key = ApiKey::generate();
        let tenant = TenantId::parse("acme").unwrap();
        assert_eq!(
            TenantLimits::new(tenant.clone(), 0, None),
            Err(TenancyError::InvalidRate)
        );
        let limits = TenantLimits::new(tenant.clone(), 7, Some(5)).unwrap();
        let mut record = KeyRecord::new(&key, tenant.clone(), Timestamp::from_millis(1));
        let with = caller(&record, Some(&limits)).unwrap();
        assert_eq!((with.rate_per_minute, with.monthly_budget), (7, Some(5)));
        let without = caller(&record, None).unwrap();
        assert_eq!(
            (without.rate_per_minute, without.monthly_budget),
            (DEFAULT_RATE_PER_MINUTE, None)
        );
        let others = TenantLimits::new(TenantId::parse("beta").unwrap(), 9, None).unwrap();
        assert_eq!(
            caller(&record, Some(&others)).unwrap().tenant,
            tenant,
            "another tenant's limits never apply"
        );
        record.revoked_at = Some(Timestamp::from_millis(2));
        assert_eq!(caller(&record, Some(&limits)), None);
    }

    #[test]
    fn rate_windows_are_whole_minutes_per_tenant() {
        let tenant = TenantId::parse("acme").unwrap();
        let a = RateWindow::at(&tenant, Timestamp::from_millis(120_000));
        let b = RateWindow::at(&tenant, Timestamp::from_millis(179_999));
        let c = RateWindow::at(&tenant, Timestamp::from_millis(180_000));
        assert_eq!(a, b);
        assert_ne!(a.key, c.key);
        assert_eq!(a.key, "rate#acme#2");
        assert_eq!(a.ends_at, Timestamp::from_millis(180_000));
        let other = RateWindow::at(
            &TenantId::parse("beta").unwrap(),
            Timestamp::from_millis(120_000),
        );
        assert_ne!(a.key, other.key);
    }
}
