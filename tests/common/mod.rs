//! The shared harness lives in the library (`schakel::testkit`), because the
//! benchmark starts gateways the same way.
#![allow(dead_code)] // each test binary uses a different part of the harness

pub use schakel::testkit::*;
