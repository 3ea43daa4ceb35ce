//! The account store (`ports::accounts::AccountStore`) on the same table.

use super::*;

/// Keys a change of limits is carried to at once.
const KEYS_AT_ONCE: usize = 16;

impl DynamoRecords {
    /// Has key `id` carry `limits` at `version`, unless it carries a newer version already
    /// (or is gone): `false` then.
    async fn carry_limits(
        &self,
        id: &KeyId,
        limits: Option<&TenantLimits>,
        version: u64,
    ) -> Result<bool, StoreError> {
        let carried = carried_limits(limits, version);
        let mut set = Vec::new();
        let mut values = Item::new();
        for (name, value) in carried {
            set.push(format!("#{name} = :{name}"));
            values.insert(format!(":{name}"), value);
        }
        let mut expression = format!("SET {}", set.join(", "));
        for absent in ["rate_per_minute", "monthly_budget"] {
            if !values.contains_key(&format!(":{absent}")) {
                expression.push_str(if expression.contains(" REMOVE ") {
                    ", "
                } else {
                    " REMOVE "
                });
                expression.push_str(&format!("#{absent}"));
            }
        }
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
        if let Some(item) = self.get_item("get callback secret", pk.clone()).await? {
            return read_s(&item, "secret");
        }
        let item = Item::from([
            ("pk".to_owned(), pk),
            ("tenant".to_owned(), s(tenant.as_str())),
            ("secret".to_owned(), s(candidate)),
        ]);
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
        // The key carries its tenant's limits as they are now…
        let tenant = self.get_item("create key", tenant_pk(&key.tenant)).await?;
        let (limits, version) = tenant_snapshot(tenant.as_ref())?;
        let mut item = key_to_item(key);
        item.extend(carried_limits(limits.as_ref(), version));
        match self
            .put_if("create key", item, "attribute_not_exists(#pk)", None)
            .await?
        {
            PutOutcome::Written => {}
            PutOutcome::Refused(_) => return Err(StoreError::new("create key", "the key exists")),
        }
        // …and is listed with the tenant, so every change of them reaches it. A change that
        // came meanwhile (it may not have seen this key yet) is carried over here.
        let values = Item::from([
            (":tenant".to_owned(), s(key.tenant.as_str())),
            (
                ":key".to_owned(),
                AttributeValue::Ss(vec![key.id.as_str().to_owned()]),
            ),
        ]);
        let expression = "SET #tenant = :tenant ADD #keys :key";
        let output = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", tenant_pk(&key.tenant))
            .update_expression(expression)
            .set_expression_attribute_names(Some(names_in(&[expression])))
            .set_expression_attribute_values(Some(values))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| failed("create key", e))?;
        let (now, now_version) = tenant_snapshot(output.attributes.as_ref())?;
        if now_version > version {
            self.carry_limits(&key.id, now.as_ref(), now_version)
                .await?;
        }
        Ok(())
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
        // Every key the tenant made carries the change before the operator is answered.
        let keys = tenant_keys(&item);
        for batch in keys.chunks(KEYS_AT_ONCE) {
            let carried = batch
                .iter()
                .map(|id| self.carry_limits(id, Some(&limits), version));
            for result in futures_util::future::join_all(carried).await {
                result?;
            }
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
        let Some(item) = item else {
            return Ok(Usage::default());
        };
        // `ADD` of a negative delta can leave a count below zero only through a bug; clamp.
        let count = |name: &str| match item.get(name) {
            Some(AttributeValue::N(v)) => v.parse::<i128>().map_or(0, |v| v.max(0) as u64),
            _ => 0,
        };
        Ok(Usage {
            predictions: count("predictions"),
            images: count("images"),
            committed: count("committed"),
        })
    }
}
