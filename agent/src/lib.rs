//! The `patrol` agent: configuration, the HA loop, local PostgreSQL control and the REST API.
#![forbid(unsafe_code)]

pub mod api;
pub mod ctl;
pub mod ha;
pub mod logging;
pub mod peer;
pub mod postgres;
mod run;

/// The configuration reader lives in its own crate (the router and `patrolctl` read the same
/// files); `crate::config::*` keeps naming it here.
pub use patrol_config as config;

#[cfg(test)]
mod compatibility_doc;

pub use run::{run, ReloadSource};
