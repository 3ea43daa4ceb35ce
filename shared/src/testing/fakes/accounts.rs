//! The account store in memory: keys, tenants, counters, uploads, callback secrets.

use super::records::insert_new;
use super::*;

impl AccountStore for MemoryRecords {
    async fn put_upload(&self, upload: &UploadRecord) -> Result<(), StoreError> {
        insert_new(&self.uploads, upload.id.as_str(), upload, "create upload")
    }

    async fn get_upload(&self, id: &UploadId) -> Result<Option<UploadRecord>, StoreError> {
        Ok(lock(&self.uploads).get(id.as_str()).cloned())
    }

    async fn callback_secret(
        &self,
        tenant: &TenantId,
        candidate: &str,
    ) -> Result<String, StoreError> {
        Ok(lock(&self.callback_secrets)
            .entry(tenant.clone())
            .or_insert_with(|| candidate.to_owned())
            .clone())
    }

    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        let tenants = lock(&self.tenants);
        let stored = StoredKey {
            record: key.clone(),
            limits: CarriedLimits::Carried(tenants.get(&key.tenant).cloned()),
        };
        insert_new(&self.keys, key.id.as_str(), &stored, "create key")
    }

    async fn get_key(&self, id: &KeyId) -> Result<Option<StoredKey>, StoreError> {
        Ok(lock(&self.keys).get(id.as_str()).cloned())
    }

    async fn update_tenant(&self, update: &LimitsUpdate) -> Result<TenantLimits, StoreError> {
        let mut tenants = lock(&self.tenants);
        let limits = update.applied_to(tenants.get(&update.tenant));
        tenants.insert(update.tenant.clone(), limits.clone());
        self.carry(&limits);
        Ok(limits)
    }

    async fn get_tenant(&self, tenant: &TenantId) -> Result<Option<TenantLimits>, StoreError> {
        Ok(lock(&self.tenants).get(tenant).cloned())
    }

    async fn revoke_key(&self, id: &KeyId, at: Timestamp) -> Result<bool, StoreError> {
        Ok(lock(&self.keys)
            .get_mut(id.as_str())
            .map(|key| key.record.revoked_at = key.record.revoked_at.or(Some(at)))
            .is_some())
    }

    async fn count_request(&self, window: &RateWindow, limit: u32) -> Result<bool, StoreError> {
        let mut counters = lock(&self.counters);
        let count = counters
            .entry(window.key.clone())
            .or_default()
            .entry("count")
            .or_insert(0);
        if *count >= i128::from(limit) {
            return Ok(false);
        }
        *count += 1;
        Ok(true)
    }

    async fn reserve_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        reservation: &Reservation,
    ) -> Result<bool, StoreError> {
        let mut counters = lock(&self.counters);
        let usage = counters.entry(usage_key(tenant, month)).or_default();
        let committed = usage.get("committed").copied().unwrap_or(0);
        let estimate = i128::from(reservation.estimate);
        if reservation
            .budget
            .is_some_and(|b| committed + estimate > i128::from(b))
        {
            return Ok(false);
        }
        *usage.entry("committed").or_insert(0) += estimate;
        *usage.entry("images").or_insert(0) += i128::from(reservation.images);
        *usage.entry("predictions").or_insert(0) += 1;
        Ok(true)
    }

    async fn settle_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        settlement: &CostSettlement,
    ) -> Result<(), StoreError> {
        let (cost, images, predictions) = settlement.deltas();
        let mut counters = lock(&self.counters);
        let usage = counters.entry(usage_key(tenant, month)).or_default();
        *usage.entry("committed").or_insert(0) += cost;
        *usage.entry("images").or_insert(0) += images;
        *usage.entry("predictions").or_insert(0) += predictions;
        Ok(())
    }

    async fn usage(&self, tenant: &TenantId, month: &str) -> Result<Usage, StoreError> {
        let key = usage_key(tenant, month);
        let count = |name| self.counter(&key, name).max(0) as u64;
        Ok(Usage {
            predictions: count("predictions"),
            images: count("images"),
            committed: count("committed"),
        })
    }
}
