//! spkeeper: keeps SharePoint add-in users connected.
//!
//! Data flows one way: entry points (HTTP routers, the sweep, delivery) → services → the pure
//! [`core`] ← adapters ([`store`]). The core has no I/O and takes `now` as an argument.

pub mod core;

pub mod clients;
pub mod clock;
pub mod config;
pub mod context;
#[cfg(any(test, feature = "testkit"))]
pub mod fuzzing;
pub mod http;
pub mod logging;
pub mod ports;
pub mod secrets_cell;
pub mod service;
pub mod store;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod tls;

#[cfg(feature = "aws")]
pub mod aws;
