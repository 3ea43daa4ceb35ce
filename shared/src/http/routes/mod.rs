//! One file per route (or, for the prediction routes, per method), each: parse the request,
//! call one use case, render its answer.

pub mod callback_secret;
pub mod cancel;
pub mod fetch;
pub mod list;
pub mod submit;
pub mod uploads;
pub mod usage;
pub mod webhook;
