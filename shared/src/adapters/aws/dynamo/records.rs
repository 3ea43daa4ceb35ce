//! The record store (`ports::records::RecordStore`) on the table.

use super::*;

impl RecordStore for DynamoRecords {
    async fn try_claim(&self, claim: &Claim) -> Result<ClaimOutcome, StoreError> {
        match self
            .put_if(
                "claim",
                claim_to_item(claim),
                "attribute_not_exists(#pk)",
                None,
            )
            .await?
        {
            PutOutcome::Written => Ok(ClaimOutcome::Claimed),
            PutOutcome::Refused(held) => Ok(ClaimOutcome::HeldBy(claim_from_item(&held)?)),
        }
    }

    async fn replace_claim(&self, claim: &Claim, expected_token: &str) -> Result<bool, StoreError> {
        let values = Item::from([(":expected".to_owned(), s(expected_token))]);
        let outcome = self
            .put_if(
                "replace claim",
                claim_to_item(claim),
                "#token = :expected",
                Some(values),
            )
            .await?;
        Ok(matches!(outcome, PutOutcome::Written))
    }

    async fn settle_claim(
        &self,
        key: &str,
        guard: ClaimGuard<'_>,
        settlement: &Settlement<'_>,
    ) -> Result<bool, StoreError> {
        let (guard, guard_value) = guard_condition(guard);
        let condition = format!("{guard} AND #lease_until <= :lease");
        let values = Item::from([
            (":pid".to_owned(), s(settlement.prediction_id.as_str())),
            (":lease".to_owned(), time(settlement.lease_until)),
            (
                ":cached".to_owned(),
                AttributeValue::Bool(settlement.from_cache),
            ),
            (":guard".to_owned(), guard_value),
        ]);
        let update = "SET #prediction_id = :pid, #lease_until = :lease, #from_cache = :cached";
        self.update_if("settle claim", s(key), update, &condition, values)
            .await
    }

    async fn release_claim(&self, key: &str, guard: ClaimGuard<'_>) -> Result<bool, StoreError> {
        let (condition, guard_value) = guard_condition(guard);
        let result = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(key))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names_in(&[condition])))
            .expression_attribute_values(":guard", guard_value)
            .send()
            .await;
        conditional("release claim", result.map_err(|e| e.into_service_error()))
    }

    async fn insert_prediction(&self, record: &PredictionRecord) -> Result<(), StoreError> {
        match self
            .put_if(
                "insert prediction",
                prediction_to_item(record)?,
                "attribute_not_exists(#pk)",
                None,
            )
            .await?
        {
            PutOutcome::Written => Ok(()),
            PutOutcome::Refused(_) => Err(StoreError::new("insert prediction", "the id exists")),
        }
    }

    async fn get_prediction(
        &self,
        id: &PredictionId,
    ) -> Result<Option<PredictionRecord>, StoreError> {
        self.get_item("get prediction", prediction_pk(id))
            .await?
            .as_ref()
            .map(prediction_from_item)
            .transpose()
    }

    async fn attach_replicate_id(
        &self,
        id: &PredictionId,
        replicate_id: &str,
        expires_at: u64,
    ) -> Result<bool, StoreError> {
        // First the binding: it decides which record owns the Replicate prediction.
        let binding = Item::from([
            ("pk".to_owned(), binding_pk(replicate_id)),
            ("prediction_id".to_owned(), s(id.as_str())),
            (TTL_ATTRIBUTE.to_owned(), n(expires_at)),
        ]);
        let mine = Item::from([(":id".to_owned(), s(id.as_str()))]);
        let bound = self
            .put_if(
                "bind replicate id",
                binding,
                "attribute_not_exists(#pk) OR #prediction_id = :id",
                Some(mine.clone()),
            )
            .await?;
        if matches!(bound, PutOutcome::Refused(_)) {
            return Ok(false);
        }
        let update = "SET #replicate_id = :rid";
        let condition = "attribute_exists(#pk) AND (attribute_not_exists(#replicate_id) OR #replicate_id = :rid)";
        let values = Item::from([(":rid".to_owned(), s(replicate_id))]);
        if self
            .update_if(
                "attach replicate id",
                prediction_pk(id),
                update,
                condition,
                values,
            )
            .await?
        {
            return Ok(true);
        }
        // The record has another id (or is gone): give the binding back, so the Replicate
        // prediction can still go to the record it belongs to.
        let released = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", binding_pk(replicate_id))
            .condition_expression("#prediction_id = :id")
            .set_expression_attribute_names(Some(names_in(&["#prediction_id = :id"])))
            .set_expression_attribute_values(Some(mine))
            .send()
            .await;
        conditional(
            "unbind replicate id",
            released.map_err(|e| e.into_service_error()),
        )?;
        Ok(false)
    }

    async fn advance(&self, id: &PredictionId, advance: &Advance) -> Result<bool, StoreError> {
        if advance.status.progress_rank().is_none() {
            return Ok(false);
        }
        let (update, values) = advance_expression(advance)?;
        let mut condition = "attribute_exists(#pk) AND #rank < :rank".to_owned();
        condition.push_str(match advance.replicate_id {
            Some(_) => " AND #replicate_id = :rid",
            None => " AND attribute_not_exists(#replicate_id)",
        });
        self.update_if(
            "advance prediction",
            prediction_pk(id),
            &update,
            &condition,
            values,
        )
        .await
    }

    async fn claim_sync(
        &self,
        id: &PredictionId,
        mark: SyncMark,
        now: Timestamp,
        not_since: Timestamp,
    ) -> Result<bool, StoreError> {
        let (update, condition) = match mark {
            SyncMark::Fetched => (
                "SET #synced_at = :now",
                "attribute_exists(#pk) AND (attribute_not_exists(#synced_at) OR #synced_at < :since)",
            ),
            SyncMark::CopyQueued => (
                "SET #copy_queued_at = :now",
                "attribute_exists(#pk) AND (attribute_not_exists(#copy_queued_at) OR #copy_queued_at < :since)",
            ),
            SyncMark::CancelRequested => (
                "SET #cancel_requested_at = :now",
                "attribute_exists(#pk) AND (attribute_not_exists(#cancel_requested_at) OR #cancel_requested_at < :since)",
            ),
        };
        let values = Item::from([
            (":now".to_owned(), time(now)),
            (":since".to_owned(), time(not_since)),
        ]);
        self.update_if("claim sync", prediction_pk(id), update, condition, values)
            .await
    }

    async fn claim_create(&self, id: &PredictionId, now: Timestamp) -> Result<bool, StoreError> {
        let condition = "attribute_exists(#pk) AND attribute_exists(#queue_slot_at) \
            AND attribute_not_exists(#create_sent_at) AND attribute_not_exists(#replicate_id) \
            AND attribute_not_exists(#cancel_requested_at) AND #rank < :terminal";
        let values = Item::from([
            (":now".to_owned(), time(now)),
            (":terminal".to_owned(), n(terminal_rank())),
        ]);
        self.update_if(
            "claim create",
            prediction_pk(id),
            "SET #create_sent_at = :now",
            condition,
            values,
        )
        .await
    }

    async fn mark_queued(&self, id: &PredictionId, queue: &QueueState) -> Result<bool, StoreError> {
        let mut update = "SET #queue_slot_at = :slot, #queue_webhook_base = :base".to_owned();
        let mut values = Item::from([
            (":slot".to_owned(), time(queue.slot_at)),
            (":base".to_owned(), s(&queue.webhook_base)),
            (":terminal".to_owned(), n(terminal_rank())),
        ]);
        if queue.deadline != Deadline::MAX {
            update.push_str(", #queue_deadline = :deadline");
            values.insert(":deadline".to_owned(), s(queue.deadline.to_string()));
        }
        let condition = "attribute_exists(#pk) AND attribute_not_exists(#replicate_id) \
            AND attribute_not_exists(#queue_slot_at) AND #rank < :terminal";
        self.update_if(
            "queue create",
            prediction_pk(id),
            &update,
            condition,
            values,
        )
        .await
    }

    async fn release_create(
        &self,
        id: &PredictionId,
        sent_at: Timestamp,
        slot_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let values = Item::from([
            (":sent".to_owned(), time(sent_at)),
            (":slot".to_owned(), time(slot_at)),
        ]);
        self.update_if(
            "release create",
            prediction_pk(id),
            "SET #queue_slot_at = :slot REMOVE #create_sent_at",
            "#create_sent_at = :sent AND attribute_not_exists(#replicate_id)",
            values,
        )
        .await
    }

    async fn reserve_create_slot(
        &self,
        pace: &Pace,
        now: Timestamp,
    ) -> Result<CreateSlot, StoreError> {
        self.reserve_slot(pace, now).await
    }

    async fn callback_queued(
        &self,
        id: &PredictionId,
        event: CallbackEvent,
    ) -> Result<bool, StoreError> {
        // Events only move forward (`start`, then `completed`); an attempt that got in
        // before this note already set its event, and its status is kept.
        let (update, condition) = match event {
            CallbackEvent::Start => (
                "SET #callback_event = :event, #callback_status = :pending",
                "attribute_exists(#callback) AND attribute_not_exists(#callback_event)",
            ),
            CallbackEvent::Completed => (
                "SET #callback_event = :event, #callback_status = :pending REMOVE #open_shard",
                "attribute_exists(#callback) AND (attribute_not_exists(#callback_event) OR #callback_event <> :event)",
            ),
        };
        let values = Item::from([
            (":event".to_owned(), s(event.as_str())),
            (":pending".to_owned(), s(CallbackStatus::Pending.as_str())),
        ]);
        let noted = self
            .update_if(
                "note queued callback",
                prediction_pk(id),
                update,
                condition,
                values,
            )
            .await?;
        if !noted && event == CallbackEvent::Completed {
            // Noted already (by an earlier note or a quick attempt): it is queued, so the
            // record leaves the open index all the same.
            self.update_if(
                "note queued callback",
                prediction_pk(id),
                "REMOVE #open_shard",
                "attribute_exists(#open_shard)",
                Item::new(),
            )
            .await?;
        }
        Ok(noted)
    }

    async fn callback_attempted(
        &self,
        id: &PredictionId,
        event: CallbackEvent,
        status: CallbackStatus,
    ) -> Result<(), StoreError> {
        let values = Item::from([
            (":one".to_owned(), n(1)),
            (":event".to_owned(), s(event.as_str())),
            (":status".to_owned(), s(status.as_str())),
            (
                ":delivered".to_owned(),
                s(CallbackStatus::Delivered.as_str()),
            ),
        ]);
        // The attempt's event becomes the one shown unless a later one is (`completed` is
        // the last), and a delivered event never goes back (a duplicate job's failure).
        let condition = match event {
            CallbackEvent::Start => {
                "attribute_exists(#callback) AND (attribute_not_exists(#callback_event) OR #callback_event = :event) AND NOT (#callback_event = :event AND #callback_status = :delivered)"
            }
            CallbackEvent::Completed => {
                "attribute_exists(#callback) AND NOT (#callback_event = :event AND #callback_status = :delivered)"
            }
        };
        // A `completed` job exists, so the record is out of the open index whatever happened
        // to its queue note.
        let (update, count_only) = match event {
            CallbackEvent::Start => (
                "SET #callback_event = :event, #callback_status = :status ADD #callback_attempts :one",
                "ADD #callback_attempts :one",
            ),
            CallbackEvent::Completed => (
                "SET #callback_event = :event, #callback_status = :status ADD #callback_attempts :one REMOVE #open_shard",
                "ADD #callback_attempts :one REMOVE #open_shard",
            ),
        };
        let noted = self
            .update_if(
                "note callback attempt",
                prediction_pk(id),
                update,
                condition,
                values,
            )
            .await?;
        if noted {
            return Ok(());
        }
        // Another event is the one shown, or this one was delivered: only count the attempt.
        self.update_if(
            "note callback attempt",
            prediction_pk(id),
            count_only,
            "attribute_exists(#pk)",
            Item::from([(":one".to_owned(), n(1))]),
        )
        .await
        .map(|_| ())
    }

    async fn list_tenant(
        &self,
        tenant: &TenantId,
        cursor: Option<&ListCursor>,
        limit: usize,
    ) -> Result<TenantPage, StoreError> {
        let condition = "#owner = :owner";
        let start = cursor.map(|c| {
            Item::from([
                ("pk".to_owned(), prediction_pk(&c.id)),
                (TENANT_ATTRIBUTE.to_owned(), s(tenant.as_str())),
                ("created_at".to_owned(), time(c.created_at)),
            ])
        });
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(TENANT_INDEX)
            .key_condition_expression(condition)
            .set_expression_attribute_names(Some(names_in(&[condition])))
            .expression_attribute_values(":owner", s(tenant.as_str()))
            .scan_index_forward(false)
            .set_exclusive_start_key(start)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| failed("list predictions", e))?;
        let entries: Vec<OpenEntry> = output
            .items()
            .iter()
            .filter_map(|item| open_entry(item).ok())
            .collect();
        // DynamoDB may say there is more after a full last page; the page after it is then
        // empty. The cursor names the last entry read.
        let next = output
            .last_evaluated_key()
            .and(entries.last())
            .map(|last| ListCursor {
                created_at: last.created_at,
                id: last.id.clone(),
            });
        Ok(TenantPage { entries, next })
    }

    async fn list_open(
        &self,
        shard: &str,
        created_before: Timestamp,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<OpenPage, StoreError> {
        let condition = "#open_shard = :shard AND #created_at < :before";
        let start = cursor.map(|c| cursor_to_key(shard, c)).transpose()?;
        let output = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(OPEN_INDEX)
            .key_condition_expression(condition)
            .set_expression_attribute_names(Some(names_in(&[condition])))
            .expression_attribute_values(":shard", s(shard))
            .expression_attribute_values(":before", time(created_before))
            .set_exclusive_start_key(start)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| failed("list open predictions", e))?;
        // One unreadable item must not hide the rest from the reconciler.
        let entries = output
            .items()
            .iter()
            .filter_map(|item| match open_entry(item) {
                Ok(entry) => Some(entry),
                Err(err) => {
                    tracing::error!(error = %err, "unreadable entry in the open index");
                    None
                }
            })
            .collect();
        Ok(OpenPage {
            entries,
            next: output.last_evaluated_key().and_then(key_to_cursor),
        })
    }
}
