//! Code shared by the `submit`, `webhook` and `fetch-result` Lambda functions: the Replicate
//! client and schemas, the model registry with input validation, and webhook verification.

pub mod registry;
pub mod replicate;
pub mod webhook;
