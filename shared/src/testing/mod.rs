//! For tests only (feature `test-util`, so release builds of the functions never compile
//! it): in-memory fakes of every port, and the conformance suite that holds the fakes and
//! the real adapters to the same behaviour.
//!
//! Architecture invariant: the fakes import `domain` and `ports` only; they know nothing of
//! the use cases they serve.

pub mod conformance;
pub mod fakes;
