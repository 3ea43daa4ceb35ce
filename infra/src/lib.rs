//! The local stack (CONTRACT §4): an HTTP server that serves the three routes through the
//! same handler code as the Lambda functions, and a Replicate simulator that speaks
//! Replicate's HTTP API, renders real images and sends signed webhooks.

pub mod dev;
pub mod gateway;
pub mod http_server;
pub mod keys;
pub mod meter;
pub mod sim;
