//! In-memory implementations of the ports, for unit tests of the use cases and routes. They
//! follow the same conditional-write rules as the DynamoDB and S3 adapters; the conformance
//! suite (`testing::conformance`) holds both to them.

mod accounts;
mod downloads;
mod objects;
mod queue;
mod recorded;
mod records;
mod replicate;

pub use downloads::{MemorySource, ScriptedDownload};
pub use objects::MemoryObjects;
pub use queue::MemoryQueue;
pub use recorded::{Recorded, RecordedCall};
pub use records::MemoryRecords;
pub use replicate::{CreatedCall, FakeReplicate};

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use sha2::Digest as _;
use url::Url;

use crate::domain::callbacks::{CallbackEvent, CallbackJob, CallbackStatus};
use crate::domain::claims::{Claim, ClaimGuard};
use crate::domain::claims::{ClaimOutcome, Settlement};
use crate::domain::cost::{CostSettlement, Reservation, Usage, usage_key};
use crate::domain::ids::PredictionId;
use crate::domain::jobs::{CopyJob, CreateJob};
use crate::domain::outputs::OutputError;
use crate::domain::pacing::{CreateSlot, Pace};
use crate::domain::record::{Advance, PredictionRecord, QueueState};
use crate::domain::replicate::{
    Deadline, Model, ModelRef, Prediction, PredictionStatus, ReplicateError, WebhookTarget,
};
use crate::domain::signing::SigningSecret;
use crate::domain::tenancy::{
    CarriedLimits, KeyId, KeyRecord, LimitsUpdate, RateWindow, StoredKey, TenantId, TenantLimits,
};
use crate::domain::time::Timestamp;
use crate::domain::uploads::{UploadId, UploadRecord};
use crate::ports::StoreError;
use crate::ports::accounts::AccountStore;
use crate::ports::callbacks::{CallbackOutcome, CallbackRequest, CallbackSender};
use crate::ports::dns::HostResolver;
use crate::ports::downloads::{Download, OutputSource};
use crate::ports::jobs::JobQueue;
use crate::ports::objects::{ObjectRead, ObjectStore, PresignedPut};
use crate::ports::records::{
    ListCursor, OpenEntry, OpenPage, RecordStore, SyncMark, TenantPage, open_shard,
};
use crate::ports::replicate::ReplicateApi;

/// The in-memory ports, for handler tests.
pub struct InMemory;

impl crate::ports::Ports for InMemory {
    type Replicate = FakeReplicate;
    type Records = MemoryRecords;
    type Objects = MemoryObjects;
    type Downloads = MemorySource;
    type Queue = MemoryQueue;
    type Callbacks = MemoryCallbacks;
    type Resolver = MemoryResolver;
}

/// Names and their addresses, as a test sets them; any other name does not resolve.
#[derive(Default)]
pub struct MemoryResolver {
    names: Mutex<HashMap<String, Vec<std::net::IpAddr>>>,
}

impl MemoryResolver {
    pub fn set(&self, name: &str, addresses: Vec<std::net::IpAddr>) {
        lock(&self.names).insert(name.to_ascii_lowercase(), addresses);
    }
}

impl HostResolver for MemoryResolver {
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<std::net::IpAddr>> {
        lock(&self.names)
            .get(&host.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
    }
}

/// Callback attempts, written down and answered as scripted (2xx unless told otherwise).
#[derive(Default)]
pub struct MemoryCallbacks {
    sent: Mutex<Vec<CallbackRequest>>,
    answers: Mutex<VecDeque<CallbackOutcome>>,
}

impl MemoryCallbacks {
    /// The next attempts get these answers, in order.
    pub fn answer_next(&self, outcomes: impl IntoIterator<Item = CallbackOutcome>) {
        lock(&self.answers).extend(outcomes);
    }

    /// Every attempt so far.
    pub fn sent(&self) -> Vec<CallbackRequest> {
        lock(&self.sent).clone()
    }
}

impl CallbackSender for MemoryCallbacks {
    async fn post(&self, request: CallbackRequest) -> CallbackOutcome {
        lock(&self.sent).push(request);
        lock(&self.answers)
            .pop_front()
            .unwrap_or(CallbackOutcome::Delivered { status: 204 })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
