//! Test harness: starts real etcd, real PostgreSQL (through real `patrol` agents) and Patroni's
//! `patronictl` on free loopback ports in temp dirs, and kills all of it on drop; a TCP proxy
//! for network faults between a client and a server.
//!
//! Dangerous: when the tests run as root, agents run as an unprivileged user that this crate
//! creates with `useradd` if missing (`$PATROL_TEST_USER`, default `patrol`), because PostgreSQL
//! refuses to run as root. Cleanup kills every process whose command line or working directory
//! lies under a cluster's temp dir.

#![forbid(unsafe_code)]

mod bins;
mod cluster;
mod etcd;
mod health;
mod patroni;
mod ports;
mod process;
mod proxy;
mod router;
mod user;
mod util;
mod wait;

pub use bins::{bin, workspace_dir};
pub use cluster::{Cluster, NAMESPACE, PG_BIN_DIR};
pub use etcd::{Etcd, EtcdCluster, TestCerts};
pub use health::{
    index_of, is_streaming_replica, members, start_all, wait_healthy, HEALTHY_TIMEOUT,
};
pub use nix::sys::signal::Signal;
pub use patroni::patronictl;
pub use ports::free_port;
pub use process::Proc;
pub use proxy::TcpProxy;
pub use router::Router;
pub use user::{
    as_agent_user, chown_to_agent, ensure_user, make_agent_dir, root_or_skip, AgentUser,
};
pub use util::{metric, metric_sum, tail_lines};
pub use wait::{assert_holds_for, wait_until};
