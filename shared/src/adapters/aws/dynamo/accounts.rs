//! The account store (`ports::accounts::AccountStore`) on the same table.

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};

use super::*;

/// Keys a change of limits is carried to at once.
const KEYS_AT_ONCE: usize = 16;
/// Reads of the tenant a key creation may take while its limits keep changing.
const CREATE_KEY_ROUNDS: usize = 5;

/// How the transaction that stores a key went.
enum KeyWrite {
    Written,
    /// A key with this id exists: nothing was written.
    Exists,
    /// The tenant's limits changed since they were read: nothing was written.
    LimitsMoved,
}

impl DynamoRecords {
    /// Puts `key` carrying `limits` at `version` and lists it with its tenant, in one
    /// transaction that holds only if the tenant's limits are still at `version`.
    async fn put_listed_key(
        &self,
        key: &KeyRecord,
        limits: Option<&TenantLimits>,
        version: u64,
    ) -> Result<KeyWrite, StoreError> {
        let mut item = key_to_item(key);
        item.extend(carried_limits(limits, version));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", "pk")
            .build()
            .map_err(|e| failed("create key", e))?;
        let listing = "SET #tenant = :tenant ADD #keys :key";
        let unchanged = if version == 0 {
            format!("attribute_not_exists(#{LIMITS_VERSION})")
        } else {
            format!("#{LIMITS_VERSION} = :version")
        };
        let mut values = Item::from([
            (":tenant".to_owned(), s(key.tenant.as_str())),
            (
                ":key".to_owned(),
                AttributeValue::Ss(vec![key.id.as_str().to_owned()]),
            ),
        ]);
        if version != 0 {
            values.insert(":version".to_owned(), n(version));
        }
        let update = Update::builder()
            .table_name(&self.table)
            .key("pk", tenant_pk(&key.tenant))
            .update_expression(listing)
            .condition_expression(&unchanged)
            .set_expression_attribute_names(Some(names_in(&[listing, &unchanged])))
            .set_expression_attribute_values(Some(values))
            .build()
            .map_err(|e| failed("create key", e))?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(put).build())
            .transact_items(TransactWriteItem::builder().update(update).build())
            .send()
            .await;
        match result.map_err(|e| e.into_service_error()) {
            Ok(_) => Ok(KeyWrite::Written),
            Err(TransactWriteItemsError::TransactionCanceledException(cancel)) => {
                let failed_at = |n: usize| {
                    cancel
                        .cancellation_reasons()
                        .get(n)
                        .and_then(|r| r.code())
                        .is_some_and(|code| code == "ConditionalCheckFailed")
                };
                if failed_at(0) {
                    Ok(KeyWrite::Exists)
                } else if failed_at(1) {
                    Ok(KeyWrite::LimitsMoved)
                } else {
                    Err(StoreError::new(
                        "create key",
                        format!("transaction canceled: {cancel}"),
                    ))
                }
            }
            Err(err) => Err(failed("create key", err)),
        }
    }

    /// Has key `id` carry `limits` at `version`, unless it carries a newer version already
    /// (or is gone): `false` then.
    async fn carry_limits(
        &self,
        id: &KeyId,
        limits: Option<&TenantLimits>,
        version: u64,
    ) -> Result<bool, StoreError> {
        let carried = carried_limits(limits, version);
        // A limit the tenant no longer has is removed from the key, not left stale.
        let remove: Vec<String> = ["rate_per_minute", "monthly_budget"]
            .into_iter()
            .filter(|name| !carried.contains_key(*name))
            .map(|name| format!("#{name}"))
            .collect();
        let set: Vec<String> = carried
            .keys()
            .map(|name| format!("#{name} = :{name}"))
            .collect();
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let values: Item = carried
            .into_iter()
            .map(|(name, value)| (format!(":{name}"), value))
            .collect();
        let condition = format!(
            "attribute_exists(#pk) AND (attribute_not_exists(#{LIMITS_VERSION}) OR #{LIMITS_VERSION} < :{LIMITS_VERSION})"
        );
        self.update_if("carry limits", key_pk(id), &expression, &condition, values)
            .await
    }
}

impl AccountStore for DynamoRecords {
    async fn put_upload(&self, upload: &UploadRecord) -> Result<(), StoreError> {
        match self
            .put_if(
                "create upload",
                upload_to_item(upload),
                "attribute_not_exists(#pk)",
                None,
            )
            .await?
        {
            PutOutcome::Written => Ok(()),
            PutOutcome::Refused(_) => Err(StoreError::new("create upload", "the upload exists")),
        }
    }

    async fn get_upload(&self, id: &UploadId) -> Result<Option<UploadRecord>, StoreError> {
        self.get_item("get upload", upload_pk(id))
            .await?
            .as_ref()
            .map(|item| upload_from_item(id, item))
            .transpose()
    }

    async fn callback_secret(
        &self,
        tenant: &TenantId,
        candidate: &str,
    ) -> Result<String, StoreError> {
        let pk = callback_secret_pk(tenant);
        if let Some(item) = self.get_item("get callback secret", pk).await? {
            return read_s(&item, "secret");
        }
        let item = callback_secret_item(tenant, candidate);
        match self
            .put_if(
                "create callback secret",
                item,
                "attribute_not_exists(#pk)",
                None,
            )
            .await?
        {
            PutOutcome::Written => Ok(candidate.to_owned()),
            PutOutcome::Refused(winner) => read_s(&winner, "secret"),
        }
    }

    async fn create_key(&self, key: &KeyRecord) -> Result<(), StoreError> {
        // One transaction puts the key, carrying its tenant's limits as read, and lists it
        // with the tenant, only if those limits have not changed since: a key is never
        // stored unlisted (out of reach of later changes) nor with limits already old.
        for _ in 0..CREATE_KEY_ROUNDS {
            let tenant = self.get_item("create key", tenant_pk(&key.tenant)).await?;
            let (limits, version) = tenant_snapshot(tenant.as_ref())?;
            match self.put_listed_key(key, limits.as_ref(), version).await? {
                KeyWrite::Written => return Ok(()),
                KeyWrite::Exists => return Err(StoreError::new("create key", "the key exists")),
                KeyWrite::LimitsMoved => continue,
            }
        }
        Err(StoreError::new(
            "create key",
            "the tenant's limits kept changing; try again",
        ))
    }

    async fn get_key(&self, id: &KeyId) -> Result<Option<StoredKey>, StoreError> {
        self.get_item("get key", key_pk(id))
            .await?
            .as_ref()
            .map(key_from_item)
            .transpose()
    }

    async fn update_tenant(&self, update: &LimitsUpdate) -> Result<TenantLimits, StoreError> {
        let mut set = vec!["#tenant = :tenant"];
        let mut remove = Vec::new();
        let mut values = Item::from([(":tenant".to_owned(), s(update.tenant.as_str()))]);
        match update.rate_per_minute {
            Some(rate) => {
                set.push("#rate_per_minute = :rate");
                values.insert(":rate".to_owned(), n(u64::from(rate)));
            }
            None => {
                set.push("#rate_per_minute = if_not_exists(#rate_per_minute, :rate)");
                values.insert(":rate".to_owned(), n(u64::from(DEFAULT_RATE_PER_MINUTE)));
            }
        }
        match update.monthly_budget {
            Some(Some(budget)) => {
                set.push("#monthly_budget = :budget");
                values.insert(":budget".to_owned(), n(budget));
            }
            Some(None) => remove.push("#monthly_budget"),
            None => {}
        }
        values.insert(":one".to_owned(), n(1));
        let mut expression = format!("SET {} ADD #{LIMITS_VERSION} :one", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", tenant_pk(&update.tenant))
            .update_expression(&expression)
            .set_expression_attribute_names(Some(names_in(&[&expression])))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| failed("update tenant", e))?;
        let item = output
            .attributes
            .ok_or_else(|| StoreError::new("update tenant", "no attributes returned"))?;
        let limits = limits_from_item(&item)?;
        let version = read_opt_n(&item, LIMITS_VERSION).unwrap_or(0);
        // Every key the tenant made carries the change before the operator is answered. All
        // are tried; one that could not be written is named, and the same change made again
        // (a new version) carries it.
        let keys = tenant_keys(&item);
        let mut missed = Vec::new();
        for batch in keys.chunks(KEYS_AT_ONCE) {
            let carried = batch
                .iter()
                .map(|id| self.carry_limits(id, Some(&limits), version));
            for (id, result) in batch
                .iter()
                .zip(futures_util::future::join_all(carried).await)
            {
                if let Err(err) = result {
                    tracing::warn!(key_id = %id, error = %err, "a key does not carry its tenant's new limits yet");
                    missed.push(id.to_string());
                }
            }
        }
        if !missed.is_empty() {
            return Err(StoreError::new(
                "update tenant",
                format!(
                    "the limits are stored, but these keys still carry the old ones (make the change again): {}",
                    missed.join(", ")
                ),
            ));
        }
        Ok(limits)
    }

    async fn get_tenant(&self, tenant: &TenantId) -> Result<Option<TenantLimits>, StoreError> {
        match self.get_item("get tenant", tenant_pk(tenant)).await? {
            Some(item) => opt_limits_from_item(&item),
            None => Ok(None),
        }
    }

    async fn revoke_key(&self, id: &KeyId, at: Timestamp) -> Result<bool, StoreError> {
        let values = Item::from([(":at".to_owned(), time(at))]);
        self.update_if(
            "revoke key",
            key_pk(id),
            "SET #revoked_at = if_not_exists(#revoked_at, :at)",
            "attribute_exists(#pk)",
            values,
        )
        .await
    }

    async fn count_request(&self, window: &RateWindow, limit: u32) -> Result<bool, StoreError> {
        let values = Item::from([
            (":one".to_owned(), n(1)),
            (":limit".to_owned(), n(u64::from(limit))),
            (":ttl".to_owned(), n(window.expires_at)),
        ]);
        self.update_if(
            "count request",
            s(&window.key),
            "SET #expires_at = :ttl ADD #count :one",
            "attribute_not_exists(#count) OR #count < :limit",
            values,
        )
        .await
    }

    async fn reserve_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        reservation: &Reservation,
    ) -> Result<bool, StoreError> {
        let mut values = Item::from([
            (":estimate".to_owned(), n(reservation.estimate)),
            (":images".to_owned(), n(reservation.images)),
            (":one".to_owned(), n(1)),
            (":ttl".to_owned(), n(reservation.expires_at)),
        ]);
        let update = "SET #expires_at = if_not_exists(#expires_at, :ttl) \
                      ADD #committed :estimate, #images :images, #predictions :one";
        let pk = s(usage_key(tenant, month));
        let Some(budget) = reservation.budget else {
            self.update("reserve cost", pk, update, values).await?;
            return Ok(true);
        };
        // DynamoDB conditions cannot add, so the room left for this estimate is computed here.
        let Some(room) = budget.checked_sub(reservation.estimate) else {
            return Ok(false);
        };
        values.insert(":room".to_owned(), n(room));
        let condition = "attribute_not_exists(#committed) OR #committed <= :room";
        self.update_if("reserve cost", pk, update, condition, values)
            .await
    }

    async fn settle_cost(
        &self,
        tenant: &TenantId,
        month: &str,
        settlement: &CostSettlement,
    ) -> Result<(), StoreError> {
        let (cost, images, predictions) = settlement.deltas();
        let values = Item::from([
            (":cost".to_owned(), signed(cost)),
            (":images".to_owned(), signed(images)),
            (":predictions".to_owned(), signed(predictions)),
        ]);
        let update = "ADD #committed :cost, #images :images, #predictions :predictions";
        self.update("settle cost", s(usage_key(tenant, month)), update, values)
            .await
    }

    async fn usage(&self, tenant: &TenantId, month: &str) -> Result<Usage, StoreError> {
        let item = self
            .get_item("get usage", s(usage_key(tenant, month)))
            .await?;
        Ok(item.as_ref().map(usage_from_item).unwrap_or_default())
    }
}
