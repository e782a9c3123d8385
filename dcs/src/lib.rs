//! The cluster model (Patroni-compatible keys and JSON, pure) and the DCS client: the `Dcs`
//! trait and its etcd v3 implementation. Without the `etcd` feature only the pure model is
//! built (what the HA core and the configuration reader depend on); `EtcdTls`, plain paths
//! the configuration fills in, is part of it.
#![forbid(unsafe_code)]

#[cfg(feature = "etcd")]
pub mod client;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod model;
pub mod status;
mod tls;

#[cfg(feature = "etcd")]
pub use client::Dcs;
#[cfg(feature = "etcd")]
pub use etcd::{DcsError, EtcdDcs, EtcdSettings, LeaseInfo};
pub use model::*;
pub use status::NodeStatus;
pub use tls::EtcdTls;

/// The Patroni version Patrol speaks as: in member keys, in REST API answers, and in
/// `patrolctl`'s User-Agent.
pub const PATRONI_VERSION: &str = "4.1.4";
