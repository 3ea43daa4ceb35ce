//! Who a request comes from: its API key, checked in the function itself (README, "Callers,
//! limits and cost", says why not a Lambda authorizer), and the per-tenant submit rate.
//!
//! A key's record and its tenant's limits are cached per process for `KEY_CACHE_TTL`, so a
//! warm function reads the table about once per key per half minute, and a revoked key (or
//! a changed limit) takes effect within that time everywhere. Unknown keys are cached briefly too, so a flood of one bad key does not
//! become a flood of reads.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{ApiError, App};
use crate::ports::Ports;
use crate::ports::accounts::AccountStore;

use crate::domain::tenancy::{
    ApiKey, Caller, CarriedLimits, KeyHash, KeyRecord, RateWindow, StoredKey, TenantLimits, caller,
};

use crate::domain::time::Timestamp;

/// How long a key's record is trusted: revocation takes effect within this, inside the 60 s
/// the README promises ("Callers, limits and cost").
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// How long "no such key" is remembered.
const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(5);
/// Keys remembered per process; beyond it the cache starts over (a flood of random keys
/// must not grow memory).
const KEY_CACHE_ENTRIES: usize = 10_000;

/// What a key's id was found to stand for: the key and its tenant's limits (`None`: no such
/// key).
type Found = Option<(KeyRecord, Option<TenantLimits>)>;

/// Keys by key id, with when (app clock) they were read.
#[derive(Default)]
pub struct KeyCache {
    entries: Mutex<HashMap<String, (Timestamp, Found)>>,
}

impl KeyCache {
    fn get(&self, id: &str, now: Timestamp) -> Option<Found> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (read_at, found) = entries.get(id)?;
        let ttl = if found.is_some() {
            KEY_CACHE_TTL
        } else {
            UNKNOWN_KEY_TTL
        };
        (now >= *read_at && now < read_at.plus(ttl)).then(|| found.clone())
    }

    fn put(&self, id: &str, found: Found, now: Timestamp) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= KEY_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(id.to_owned(), (now, found));
    }
}

impl<P: Ports> App<P> {
    /// The caller a request with `key` acts as, or 401 (unknown or revoked).
    pub async fn authenticate(&self, key: &ApiKey) -> Result<Caller, ApiError> {
        let hash = key.hash();
        let invalid = || ApiError::Unauthenticated("the API key is not valid".to_owned());
        let (record, limits) = self
            .find_key(&hash)
            .await?
            .filter(|(record, _)| record.hash.matches(&hash))
            .ok_or_else(invalid)?;
        let caller = caller(&record, limits.as_ref())
            .ok_or_else(|| ApiError::Unauthenticated("the API key has been revoked".to_owned()))?;
        tracing::Span::current().record("tenant", caller.tenant.as_str());
        Ok(caller)
    }

    /// The key with this hash's id and its tenant's limits: from the cache, or one read (two
    /// for a key stored before keys carried their tenant's limits).
    async fn find_key(&self, hash: &KeyHash) -> Result<Found, ApiError> {
        let id = hash.key_id();
        let now = self.clock.now();
        if let Some(cached) = self.keys.get(id.as_str(), now) {
            return Ok(cached);
        }
        let found = match self.records.get_key(&id).await? {
            Some(StoredKey {
                record,
                limits: CarriedLimits::Carried(limits),
            }) => Some((record, limits)),
            Some(StoredKey {
                record,
                limits: CarriedLimits::NotCarried,
            }) => {
                let limits = self.records.get_tenant(&record.tenant).await?;
                Some((record, limits))
            }
            None => None,
        };
        self.keys.put(id.as_str(), found.clone(), now);
        Ok(found)
    }

    /// Counts a submit against the caller's rate; 429 with the time to the next window when
    /// the window is full. Shared by every instance: the counter lives in the table.
    pub async fn admit_submit(&self, caller: &Caller) -> Result<(), ApiError> {
        let now = self.clock.now();
        self.admit(caller, RateWindow::at(&caller.tenant, now), now)
            .await
    }

    /// Counts an upload slot in the tenant's upload window (the same per-minute limit).
    pub async fn admit_upload(&self, caller: &Caller) -> Result<(), ApiError> {
        let now = self.clock.now();
        self.admit(caller, RateWindow::uploads_at(&caller.tenant, now), now)
            .await
    }

    async fn admit(
        &self,
        caller: &Caller,
        window: RateWindow,
        now: Timestamp,
    ) -> Result<(), ApiError> {
        if self
            .records
            .count_request(&window, caller.rate_per_minute)
            .await?
        {
            return Ok(());
        }
        // Whole seconds, rounded up: a client that waits exactly this long gets in.
        let wait = window.ends_at.since(now);
        Err(ApiError::RateLimited {
            limit: caller.rate_per_minute,
            retry_after: Duration::from_secs(wait.as_millis().div_ceil(1000).max(1) as u64),
        })
    }
}
