//! The create pacer (README, "Bursts") on one item, `pace#creates`: the theoretical
//! arrival time of the next create slot, moved on by conditional writes shared by every
//! instance.

use super::*;

/// The create pacer's one item: the theoretical arrival time of the next create slot.
const PACER_PK: &str = "pace#creates";
/// Conditional writes one reservation may try before giving up (each refused one means
/// another instance got a slot meanwhile).
const PACER_ROUNDS: usize = 32;

impl DynamoRecords {
    /// One step of the pacer: the slot `pace` grants now, written unless another instance
    /// moved the item meanwhile (then its value comes back, for the next round).
    pub(super) async fn reserve_slot(
        &self,
        pace: &Pace,
        now: Timestamp,
    ) -> Result<CreateSlot, StoreError> {
        // Optimistic: read the slot time, write the next one if nobody moved it meanwhile; a
        // refused write returns the winner's value, for the next round.
        let mut stored = self
            .get_item("read create pace", s(PACER_PK))
            .await?
            .and_then(|item| read_opt_time(&item, "tat"));
        for _ in 0..PACER_ROUNDS {
            let (slot, next) = pace.grant(stored, now);
            let Some(next) = next else {
                return Ok(slot);
            };
            let item = Item::from([
                ("pk".to_owned(), s(PACER_PK)),
                ("tat".to_owned(), time(next)),
            ]);
            let (condition, values) = match stored {
                None => ("attribute_not_exists(#pk)", None),
                Some(old) => (
                    "#tat = :old",
                    Some(Item::from([(":old".to_owned(), time(old))])),
                ),
            };
            match self
                .put_if("reserve create slot", item, condition, values)
                .await?
            {
                PutOutcome::Written => return Ok(slot),
                PutOutcome::Refused(winner) => stored = read_opt_time(&winner, "tat"),
            }
        }
        Err(StoreError::new(
            "reserve create slot",
            "too many concurrent writers of the create pace",
        ))
    }
}
