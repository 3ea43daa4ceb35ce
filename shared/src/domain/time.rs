//! The one time type of stored state: a moment to the millisecond since the Unix epoch.
//!
//! Records, claims, leases, windows and deadlines all hold a [`Timestamp`]; a deadline is
//! always `t.plus(d)` (saturating), and the conversions to what the outside speaks
//! (`SystemTime`, RFC 3339, DynamoDB's TTL seconds) are here and nowhere else.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    pub const EPOCH: Self = Self(0);

    /// The wall clock now. Handlers read time through `Clock`, which tests can move.
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    pub const fn from_millis(ms: u64) -> Self {
        Self(ms)
    }

    /// The start of a whole second since the epoch (a DynamoDB TTL attribute, for one).
    pub const fn from_unix_seconds(seconds: u64) -> Self {
        Self(seconds.saturating_mul(1000))
    }

    /// Milliseconds since the epoch: the stored (DynamoDB number) form.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// Saturates at the epoch for times before it and at `u64::MAX` ms after it.
    pub fn from_system(t: SystemTime) -> Self {
        Self(
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    pub fn to_system(self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.0)
    }

    /// `self` plus `d`, saturating: the one way a deadline is computed.
    pub fn plus(self, d: Duration) -> Self {
        Self(self.0.saturating_add(millis_of(d)))
    }

    /// `self` minus `d`, saturating at the epoch.
    pub fn minus(self, d: Duration) -> Self {
        Self(self.0.saturating_sub(millis_of(d)))
    }

    /// How far apart two times are, whichever is first.
    pub fn distance(self, other: Self) -> Duration {
        Duration::from_millis(self.0.abs_diff(other.0))
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub fn since(self, earlier: Self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }

    /// Whole seconds since the epoch (truncated): DynamoDB TTL attributes and webhook
    /// signature timestamps are in these.
    pub const fn unix_seconds(self) -> u64 {
        self.0 / 1000
    }

    /// Which whole `period` since the epoch this falls in, and when the next one starts.
    pub fn period(self, period: Duration) -> (u64, Self) {
        let length = millis_of(period).max(1);
        let index = self.0 / length;
        (index, Self(index.saturating_add(1).saturating_mul(length)))
    }

    /// RFC 3339 with milliseconds, UTC: how every time is shown to clients.
    pub fn rfc3339(self) -> String {
        humantime::format_rfc3339_millis(self.to_system()).to_string()
    }

    /// Reads a timestamp as Replicate writes it (RFC 3339, `Z` or `+00:00`, up to
    /// nanoseconds; truncated to the millisecond).
    pub fn parse_rfc3339(s: &str) -> Option<Self> {
        humantime::parse_rfc3339_weak(s.trim_end_matches('Z').trim_end_matches("+00:00"))
            .ok()
            .map(Self::from_system)
    }
}

fn millis_of(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Wall-clock time, shiftable in tests to exercise leases and expiry.
#[derive(Debug, Default)]
pub struct Clock {
    offset_ms: AtomicI64,
}

impl Clock {
    pub fn now(&self) -> Timestamp {
        Timestamp::from_system(self.system_time())
    }

    /// The same moment as `now`, for APIs that speak `SystemTime` (webhook signatures).
    pub fn system_time(&self) -> SystemTime {
        let offset = self.offset_ms.load(Ordering::Relaxed);
        let now = SystemTime::now();
        if offset >= 0 {
            now + Duration::from_millis(offset.unsigned_abs())
        } else {
            now - Duration::from_millis(offset.unsigned_abs())
        }
    }

    pub fn advance(&self, by: Duration) {
        self.offset_ms.fetch_add(
            i64::try_from(by.as_millis()).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_rfc3339() {
        let t = Timestamp::from_millis(1_700_000_000_123);
        assert_eq!(t.rfc3339(), "2023-11-14T22:13:20.123Z");
        assert_eq!(
            Timestamp::parse_rfc3339("2023-11-14T22:13:20.123Z"),
            Some(t)
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2023-09-08T16:19:34.791859Z"),
            Some(Timestamp::from_millis(1_694_189_974_791))
        );
        assert_eq!(
            Timestamp::parse_rfc3339("2023-09-08T16:19:34+00:00"),
            Some(Timestamp::from_millis(1_694_189_974_000))
        );
        assert_eq!(Timestamp::parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn arithmetic_saturates_instead_of_wrapping() {
        let t = Timestamp::from_millis(5_000);
        assert_eq!(
            t.plus(Duration::from_secs(2)),
            Timestamp::from_millis(7_000)
        );
        assert_eq!(t.minus(Duration::from_secs(9)), Timestamp::EPOCH);
        assert_eq!(
            Timestamp::from_millis(u64::MAX - 1).plus(Duration::MAX),
            Timestamp::from_millis(u64::MAX)
        );
        assert_eq!(t.since(Timestamp::from_millis(7_000)), Duration::ZERO);
        assert_eq!(
            t.since(Timestamp::from_millis(1_500)),
            Duration::from_millis(3_500)
        );
    }

    #[test]
    fn system_time_before_the_epoch_is_the_epoch() {
        let before = UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(Timestamp::from_system(before), Timestamp::EPOCH);
        let t = Timestamp::from_millis(1_234);
        assert_eq!(Timestamp::from_system(t.to_system()), t);
    }

    #[test]
    fn periods_and_seconds() {
        let t = Timestamp::from_millis(125_999);
        assert_eq!(
            t.period(Duration::from_secs(60)),
            (2, Timestamp::from_millis(180_000))
        );
        assert_eq!(t.unix_seconds(), 125);
        assert_eq!(
            Timestamp::from_unix_seconds(125),
            Timestamp::from_millis(125_000)
        );
        assert_eq!(
            t.distance(Timestamp::from_millis(126_000)),
            Duration::from_millis(1)
        );
    }
}
