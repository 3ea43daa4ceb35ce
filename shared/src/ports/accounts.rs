//! The account store: callers, their limits and usage, upload slots, callback secrets
//! (DynamoDB in production, the same table as the records).

use std::future::Future;

use crate::domain::cost::{CostSettlement, Reservation, Usage};
use crate::domain::tenancy::{
    KeyId, KeyRecord, LimitsUpdate, RateWindow, StoredKey, TenantId, TenantLimits,
};
use crate::domain::time::Timestamp;
use crate::domain::uploads::{UploadId, UploadRecord};
use crate::ports::StoreError;

/// API keys, each tenant's rate and usage counters, upload slots and callback signing
/// secrets: every check that must hold across all Lambda instances at once is one
/// conditional write here.
pub trait AccountStore: Send + Sync {
    /// Stores a new upload slot; fails if one with its id exists.
    fn put_upload(
        &self,
        upload: &UploadRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// An upload slot (strongly consistent), whoever's it is.
    fn get_upload(
        &self,
        id: &UploadId,
    ) -> impl Future<Output = Result<Option<UploadRecord>, StoreError>> + Send;

    /// The tenant's callback signing secret (`whsec_…`): the stored one, or `candidate`
    /// once stored. Two first callers at once agree on one (a conditional put; the loser
    /// reads the winner's).
    fn callback_secret(
        &self,
        tenant: &TenantId,
        candidate: &str,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;

    /// Stores a new key, carrying its tenant's limits as they are (and as they change while
    /// it is stored); fails if a key with its id exists.
    fn create_key(&self, key: &KeyRecord) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A key, with the limits it carries: one read.
    fn get_key(
        &self,
        id: &KeyId,
    ) -> impl Future<Output = Result<Option<StoredKey>, StoreError>> + Send;

    /// Changes a tenant's limits (all its keys share them) in one atomic update, then has
    /// every key it created carry them before answering; returns the limits now stored.
    /// Whatever order this and a `create_key` of the same tenant run in, the key ends up
    /// carrying the newest limits.
    fn update_tenant(
        &self,
        update: &LimitsUpdate,
    ) -> impl Future<Output = Result<TenantLimits, StoreError>> + Send;

    /// A tenant's limits, if any were stored.
    fn get_tenant(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Option<TenantLimits>, StoreError>> + Send;

    /// Marks a key revoked at `at` (keeping the first time); `false` if there is no such key.
    fn revoke_key(
        &self,
        id: &KeyId,
        at: Timestamp,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Counts one request in `window` if fewer than `limit` were counted there; `false`
    /// (nothing counted) when the window is full.
    fn count_request(
        &self,
        window: &RateWindow,
        limit: u32,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Adds the reservation's estimate to the month's committed spend, its images, and one
    /// prediction, only if the committed spend stays within its budget. `false`: refused,
    /// nothing changed.
    fn reserve_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        reservation: &Reservation,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Adds a settlement's corrections (`CostSettlement::deltas`), in one atomic update.
    fn settle_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        settlement: &CostSettlement,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// A tenant's usage in `month` (zero if nothing was recorded).
    fn usage(
        &self,
        tenant: &TenantId,
        month: &str,
    ) -> impl Future<Output = Result<Usage, StoreError>> + Send;
}
