//! The adapters: each port implemented for the real world (DynamoDB, S3, SQS, SSM; Replicate
//! over HTTP; downloads, callbacks and name resolution over the network).
//!
//! Architecture invariant: adapters import `domain` and `ports` only, never `app`, `http` or
//! `lambda`; nothing above the composition root names one.

pub mod aws;
pub mod http;
pub mod replicate;
