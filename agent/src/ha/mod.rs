//! The HA loop: the runner that observes and executes around the pure core (`patrol-ha`),
//! its ports (the local PostgreSQL, the peers), and the state it shares with the REST API.

pub mod callbacks;
pub mod port;
pub mod runner;
pub mod state;

pub use callbacks::Callbacks;
pub use port::{FailsafeAnswers, HttpPeers, Local, LocalPostgres, Peers, StopMode};
pub use runner::{Exit, Ha, PATRONI_VERSION};
pub use state::{NodeState, Request, RestartFilters, SharedState, Snapshot};
