//! The network adapters other than Replicate's client: output downloads, callback attempts,
//! name resolution, and the HTTP clients they build on first use.

pub mod callbacks;
pub mod dns;
pub mod downloads;
pub mod lazy_client;
