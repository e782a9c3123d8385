//! The `patrol` agent: configuration, the HA loop, local PostgreSQL control and the REST API.
//! No unsafe code, except the watchdog device's `ioctl`s in `watchdog/linux.rs`.
#![deny(unsafe_code)]

pub mod api;
pub mod generate;
pub mod ha;
pub mod logging;
pub mod notify;
pub mod peer;
pub mod postgres;
mod run;
pub mod watchdog;

#[cfg(test)]
mod compatibility_doc;

/// The configuration reader lives in its own crate (the router and `patrolctl` read the same
/// files); `crate::config::*` keeps naming it here.
pub use patrol_config as config;
pub use run::{etcd_settings, run, ReloadSource};
