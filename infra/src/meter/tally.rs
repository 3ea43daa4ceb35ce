//! What the meter counts: requests by service and operation, DynamoDB capacity, SQS
//! messages and billed requests, S3 storage; and a phase's share (`Tally::since`).

use std::collections::BTreeMap;
use std::ops::Sub;

use super::classify::S3Op;

/// DynamoDB capacity billed for one kind of call.
/// `Sub` field by field, for the counters a phase's share is taken from (`Tally::since`).
macro_rules! fieldwise_sub {
    ($type:ident { $($field:ident),+ }) => {
        impl std::ops::Sub for $type {
            type Output = Self;
            fn sub(self, o: Self) -> Self {
                Self { $($field: self.$field - o.$field),+ }
            }
        }
    };
}
pub(crate) use fieldwise_sub;

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Capacity {
    pub calls: u64,
    /// Write request units on the table.
    pub write_units: u64,
    /// Write request units on global secondary indexes.
    pub index_write_units: u64,
    pub read_units: f64,
    /// Conditional writes refused (they are billed all the same).
    pub failed_conditions: u64,
}

fieldwise_sub!(Capacity {
    calls,
    write_units,
    index_write_units,
    read_units,
    failed_conditions
});

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqsCount {
    pub calls: u64,
    /// Billed requests: one per 64 KB of payload.
    pub billed: u64,
    /// Receives that returned nothing: pollers waiting, not work for an image.
    pub empty: u64,
    pub messages: u64,
}

fieldwise_sub!(SqsCount {
    calls,
    billed,
    empty,
    messages
});

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stored {
    pub objects: u64,
    pub bytes: u64,
}

impl Sub for Stored {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            objects: self.objects.saturating_sub(o.objects),
            bytes: self.bytes.saturating_sub(o.bytes),
        }
    }
}

/// What passed the proxy, cumulative; `since` gives one phase's share.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tally {
    /// Every request by service and operation, setup and control plane included.
    pub requests: BTreeMap<(String, String), u64>,
    /// DynamoDB capacity by operation and key group (`pred#`, `cache#`, `index:open-index`).
    pub dynamo: BTreeMap<(String, String), Capacity>,
    /// S3 requests by operation, object prefix and whether the URL was presigned.
    pub s3: BTreeMap<(S3Op, String, bool), u64>,
    /// Objects written, per key prefix (an overwrite counts its size change).
    pub stored: BTreeMap<String, Stored>,
    /// Bytes served to presigned downloads: data transfer out, in AWS.
    pub downloaded_bytes: u64,
    pub sqs: BTreeMap<String, SqsCount>,
    /// Operations the cost model does not price, with how often they were seen.
    pub unmetered: BTreeMap<String, u64>,
    /// Requests forwarded and their total round trip to the emulator, in microseconds:
    /// the emulator's latency is part of every handler time measured.
    pub forwarded: u64,
    pub upstream_micros: u64,
}

pub(crate) fn minus<K: Ord + Clone, V: Copy + Default + PartialEq + Sub<Output = V>>(
    now: &BTreeMap<K, V>,
    before: &BTreeMap<K, V>,
) -> BTreeMap<K, V> {
    now.iter()
        .map(|(k, v)| (k.clone(), *v - before.get(k).copied().unwrap_or_default()))
        .filter(|(_, v)| *v != V::default())
        .collect()
}

impl Tally {
    pub fn since(&self, before: &Tally) -> Tally {
        Tally {
            requests: minus(&self.requests, &before.requests),
            dynamo: minus(&self.dynamo, &before.dynamo),
            s3: minus(&self.s3, &before.s3),
            stored: minus(&self.stored, &before.stored),
            downloaded_bytes: self.downloaded_bytes - before.downloaded_bytes,
            sqs: minus(&self.sqs, &before.sqs),
            unmetered: minus(&self.unmetered, &before.unmetered),
            forwarded: self.forwarded - before.forwarded,
            upstream_micros: self.upstream_micros - before.upstream_micros,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_subtract() {
        let mut before = Tally::default();
        before.sqs.insert(
            "SendMessage".into(),
            SqsCount {
                calls: 2,
                billed: 2,
                empty: 0,
                messages: 2,
            },
        );
        let mut after = before.clone();
        after.sqs.get_mut("SendMessage").unwrap().calls += 3;
        after.downloaded_bytes = 10;
        let delta = after.since(&before);
        assert_eq!(delta.sqs["SendMessage"].calls, 3);
        assert_eq!(delta.downloaded_bytes, 10);
    }
}
