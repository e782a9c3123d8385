//! The cluster model (Patroni-compatible keys and JSON, pure) and the DCS client: the `Dcs`
//! trait and its etcd v3 implementation.
#![forbid(unsafe_code)]

pub mod client;
pub mod etcd;
pub mod model;
pub mod status;

pub use client::Dcs;
pub use etcd::{DcsError, EtcdDcs, EtcdSettings, EtcdTls, LeaseInfo};
pub use model::*;
pub use status::NodeStatus;
