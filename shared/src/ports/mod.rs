//! The ports: what the use cases (`app`) need from the world, one small trait per concern,
//! each implemented by a real adapter (`adapters`) and an in-memory fake (`testing::fakes`),
//! and held to the same behaviour by the conformance suite (`testing::conformance`).
//!
//! Ports import only `domain`. Static dispatch: `Ports` names one type per port, so no
//! handler pays for a `Box<dyn>`.

pub mod accounts;
pub mod callbacks;
pub mod dns;
pub mod downloads;
pub mod jobs;
pub mod objects;
pub mod records;
pub mod replicate;

/// A storage call failed. The message is for logs only; clients see a generic 5xx.
#[derive(Debug, thiserror::Error)]
#[error("{operation} failed: {message}")]
pub struct StoreError {
    pub operation: &'static str,
    pub message: String,
}

/// A copy whose storing failed is retried like any other transient output failure.
impl From<StoreError> for crate::domain::outputs::OutputError {
    fn from(err: StoreError) -> Self {
        Self::Store(err.to_string())
    }
}

impl StoreError {
    pub fn new(operation: &'static str, message: impl Into<String>) -> Self {
        Self {
            operation,
            message: message.into(),
        }
    }
}

/// The ports an `App` runs on. Production (`bootstrap::Production`) and the in-memory fakes
/// (`testing::fakes::InMemory`) each name theirs.
pub trait Ports: 'static {
    type Replicate: replicate::ReplicateApi;
    type Records: records::RecordStore + accounts::AccountStore;
    type Objects: objects::ObjectStore;
    type Downloads: downloads::OutputSource;
    type Queue: jobs::JobQueue;
    type Callbacks: callbacks::CallbackSender;
    type Resolver: dns::HostResolver;
}

/// The ports of an `App`, by name (so a constructor call cannot swap two of them).
pub struct PortSet<P: Ports> {
    pub replicate: P::Replicate,
    pub records: P::Records,
    pub objects: P::Objects,
    pub downloads: P::Downloads,
    pub queue: P::Queue,
    pub callbacks: P::Callbacks,
    pub resolver: P::Resolver,
}
