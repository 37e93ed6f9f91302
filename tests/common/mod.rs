//! The shared harness lives in the library (`schakel::testkit`), because the
//! benchmark starts gateways the same way; `process` runs the real binary.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod process;
pub mod raw;

pub use schakel::testkit::*;
