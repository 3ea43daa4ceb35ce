//! What an operator runs against a stack: API keys and their tenants' limits (`make key`,
//! `make revoke`).

pub mod keys;
