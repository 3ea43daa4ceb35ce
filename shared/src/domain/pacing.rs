//! The create pacer (README, "Bursts"): creates at Replicate are spaced at
//! `REPLICATE_CREATES_PER_MINUTE` across every function instance, as a generic cell rate
//! algorithm over one stored time, the theoretical arrival time (TAT) of the next slot.
//! A submit that finds no backlog creates at once; one that finds a backlog is given the
//! next slot and queued; one that would wait longer than `MAX_QUEUE_SECONDS` is refused with
//! the honest time until the backlog is short enough again.

use std::time::Duration;

use crate::domain::time::Timestamp;

/// Creates within this much of now go at once: Replicate allows short bursts, and a slot a
/// few milliseconds away is not worth a trip through the queue.
pub const BURST: Duration = Duration::from_secs(1);

/// What a create was granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateSlot {
    /// Send it now.
    Now,
    /// Its slot: queue it, to be created then.
    At(Timestamp),
    /// The backlog is over the limit: nothing reserved; try again after this.
    Full { retry_after: Duration },
}

/// The rate and the longest wait a queued create may be given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pace {
    pub interval: Duration,
    pub max_backlog: Duration,
}

impl Pace {
    pub fn new(creates_per_minute: u32, max_backlog: Duration) -> Self {
        Self {
            interval: Duration::from_secs(60) / creates_per_minute.max(1),
            max_backlog,
        }
    }

    /// One step of the algorithm: what a create at `now` gets when the stored TAT is `tat`,
    /// and the TAT to store (`None`: nothing was reserved).
    pub fn grant(&self, tat: Option<Timestamp>, now: Timestamp) -> (CreateSlot, Option<Timestamp>) {
        let start = tat.map_or(now, |t| t.max(now));
        let backlog = start.since(now);
        if backlog > self.max_backlog {
            let wait = backlog - self.max_backlog;
            // Whole seconds, rounded up: a client that waits this long is not refused again.
            let seconds = u64::try_from(wait.as_millis().div_ceil(1000)).unwrap_or(u64::MAX);
            let retry_after = Duration::from_secs(seconds.max(1));
            return (CreateSlot::Full { retry_after }, None);
        }
        let next = start.plus(self.interval);
        let slot = if backlog <= BURST {
            CreateSlot::Now
        } else {
            CreateSlot::At(start)
        };
        (slot, Some(next))
    }

    /// How many create slots come before `slot_at` from `now`, counting a part-used one (a
    /// queued prediction's position).
    pub fn position(&self, slot_at: Timestamp, now: Timestamp) -> u64 {
        let ahead = slot_at.since(now).as_millis();
        let interval = self.interval.as_millis().max(1);
        u64::try_from(ahead.div_ceil(interval)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn creates_under_the_rate_go_at_once() {
        let pace = Pace::new(600, Duration::from_secs(900));
        assert_eq!(pace.interval, Duration::from_millis(100));
        let (slot, tat) = pace.grant(None, at(10_000));
        assert_eq!((slot, tat), (CreateSlot::Now, Some(at(10_100))));
        // An old TAT is no backlog.
        let (slot, tat) = pace.grant(Some(at(1_000)), at(10_000));
        assert_eq!((slot, tat), (CreateSlot::Now, Some(at(10_100))));
    }

    #[test]
    fn a_burst_gets_slots_one_interval_apart_after_its_first_second() {
        let pace = Pace::new(600, Duration::from_secs(900));
        let now = at(50_000);
        let mut tat = None;
        let mut slots = Vec::new();
        for _ in 0..15 {
            let (slot, next) = pace.grant(tat, now);
            tat = next;
            slots.push(slot);
        }
        // Eleven within the burst second (backlog 0 … 1000 ms), then queued, 100 ms apart.
        assert!(
            slots[..11].iter().all(|s| *s == CreateSlot::Now),
            "{slots:?}"
        );
        assert_eq!(slots[11], CreateSlot::At(at(51_100)));
        assert_eq!(slots[14], CreateSlot::At(at(51_400)));
        assert_eq!(pace.position(at(51_400), now), 14);
    }

    #[test]
    fn a_backlog_over_the_limit_is_refused_with_the_time_until_it_is_not() {
        let pace = Pace::new(60, Duration::from_secs(10));
        let now = at(100_000);
        // 12.5 s of backlog against a 10 s limit: 2.5 s too many, so come back in 3 s.
        let (slot, tat) = pace.grant(Some(at(112_500)), now);
        assert_eq!(
            slot,
            CreateSlot::Full {
                retry_after: Duration::from_secs(3)
            }
        );
        assert_eq!(tat, None, "a refused create reserves nothing");
        let (slot, _) = pace.grant(Some(at(110_000)), now);
        assert_eq!(
            slot,
            CreateSlot::At(at(110_000)),
            "exactly at the limit is queued"
        );
    }
}
