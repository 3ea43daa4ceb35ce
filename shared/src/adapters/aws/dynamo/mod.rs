//! The record store on DynamoDB: one table, string partition key `pk`, TTL on `expires_at`.
//! Every item is converted to and from Rust types here and nowhere else.

use std::collections::HashMap;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};

use crate::domain::callbacks::{CallbackEvent, CallbackState, CallbackStatus, CallbackTarget};
use crate::domain::claims::{Claim, ClaimGuard};
use crate::domain::claims::{ClaimOutcome, Settlement};
use crate::domain::cost::{CostSettlement, Reservation, Usage, usage_key};
use crate::domain::ids::PredictionId;
use crate::domain::pacing::{CreateSlot, Pace};
use crate::domain::record::{Advance, PredictionRecord, QueueState};
use crate::domain::replicate::{Deadline, PredictionStatus};
use crate::domain::tenancy::{
    CarriedLimits, DEFAULT_RATE_PER_MINUTE, KeyHash, KeyId, KeyRecord, LimitsUpdate, RateWindow,
    StoredKey, TenantId, TenantLimits,
};
use crate::domain::time::Timestamp;
use crate::domain::uploads::{ImageKind, UploadId, UploadRecord};
use crate::ports::StoreError;
use crate::ports::accounts::AccountStore;
use crate::ports::records::{
    ListCursor, OpenEntry, OpenPage, RecordStore, SyncMark, TenantPage, open_shard,
};

mod accounts;
mod codec;
mod pacer;
mod records;
#[cfg(test)]
mod tests;

use codec::*;

type Item = HashMap<String, AttributeValue>;

pub const TTL_ATTRIBUTE: &str = "expires_at";

/// A sparse index of the predictions still running: only they carry `open_shard` (one of
/// `ports::OPEN_SHARDS`), which a terminal update removes. Only its keys are read, so it
/// may project keys only. The reconciler queries it.
pub const OPEN_INDEX: &str = "open-index";
pub const OPEN_SHARD_ATTRIBUTE: &str = "open_shard";

/// A tenant's predictions, newest first, for `GET /v1/predictions`: keyed on the record's
/// `owner` (only prediction items carry it) and creation time; keys only, so it is written
/// once, when the record is stored.
pub const TENANT_INDEX: &str = "tenant-index";
pub const TENANT_ATTRIBUTE: &str = "owner";

#[derive(Debug, Clone)]
pub struct DynamoRecords {
    client: Client,
    table: String,
}

impl DynamoRecords {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }
}

/// What a conditional put found.
pub(super) enum PutOutcome {
    Written,
    /// The condition failed; this is the item that is there.
    Refused(Item),
}

impl DynamoRecords {
    /// A `PutItem` that applies only if `condition` holds; when it does not, the item in the
    /// way comes back in the same round trip (`ReturnValuesOnConditionCheckFailure=ALL_OLD`).
    pub(super) async fn put_if(
        &self,
        operation: &'static str,
        item: Item,
        condition: &str,
        values: Option<Item>,
    ) -> Result<PutOutcome, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names_in(&[condition])))
            .set_expression_attribute_values(values)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result.map_err(|e| e.into_service_error()) {
            Ok(_) => Ok(PutOutcome::Written),
            Err(aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(e)) => Ok(
                PutOutcome::Refused(e.item().cloned().unwrap_or_default()),
            ),
            Err(other) => Err(failed(operation, other)),
        }
    }

    /// An unconditional `UpdateItem` on `pk` (counters: `ADD` is atomic by itself).
    pub(super) async fn update(
        &self,
        operation: &'static str,
        pk: AttributeValue,
        update: &str,
        values: Item,
    ) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk)
            .update_expression(update)
            .set_expression_attribute_names(Some(names_in(&[update])))
            .set_expression_attribute_values(Some(values))
            .send()
            .await
            .map_err(|e| failed(operation, e))?;
        Ok(())
    }

    /// A strongly consistent `GetItem` of `pk`: every caller needs the latest write (a
    /// record's state, a key created a moment ago, the month's spend).
    pub(super) async fn get_item(
        &self,
        operation: &'static str,
        pk: AttributeValue,
    ) -> Result<Option<Item>, StoreError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", pk)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failed(operation, e))?;
        Ok(output.item)
    }

    /// An `UpdateItem` on `pk` that applies only if `condition` holds; `Ok(false)` if not.
    pub(super) async fn update_if(
        &self,
        operation: &'static str,
        pk: AttributeValue,
        update: &str,
        condition: &str,
        values: Item,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", pk)
            .update_expression(update)
            .condition_expression(condition)
            .set_expression_attribute_names(Some(names_in(&[update, condition])))
            // DynamoDB refuses an empty map (an expression without values).
            .set_expression_attribute_values((!values.is_empty()).then_some(values))
            .send()
            .await;
        conditional(operation, result.map_err(|e| e.into_service_error()))
    }
}

/// `Ok(false)` for a failed condition, which is an answer rather than an error.
pub(super) fn conditional<T, E>(
    operation: &'static str,
    result: Result<T, E>,
) -> Result<bool, StoreError>
where
    E: ProvideErrorMetadata + std::error::Error,
{
    match result {
        Ok(_) => Ok(true),
        Err(err) if err.code() == Some("ConditionalCheckFailedException") => Ok(false),
        Err(err) => Err(failed(operation, err)),
    }
}
