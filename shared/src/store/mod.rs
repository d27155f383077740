//! Store adapters.

pub mod sqlite;

#[cfg(any(test, feature = "testkit"))]
pub mod conformance;
