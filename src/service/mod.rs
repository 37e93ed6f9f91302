//! The tonic services: thin adapters from the wire to `schema` and `store`.
//!
//! Requests flow service -> schema -> store. Identity enters only through the
//! [`auth::Authorize`] interceptor; domain errors become `tonic::Status` only in
//! `crate::error`.

pub mod admin;
pub mod auth;
pub mod intake;
pub mod limits;
pub mod operations;
pub mod registry;

use std::time::SystemTime;

/// RFC 3339 UTC with milliseconds, the wire format of every time.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}
