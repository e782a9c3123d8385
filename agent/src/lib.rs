//! The `patrol` agent: configuration, the HA loop, local PostgreSQL control and the REST API.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod ctl;
pub mod ha;
pub mod logging;
pub mod peer;
pub mod postgres;
mod run;

#[cfg(test)]
mod compatibility_doc;

pub use run::{run, ReloadSource};
