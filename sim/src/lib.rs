//! The agent's ports over a simulated world: PostgreSQL servers (`pg`: data directory,
//! pg_control state, WAL as branches of history plus a position, timelines, `standby.signal`),
//! an in-memory etcd with etcd's semantics (`etcd`), and peers answering `GET /patroni` through
//! the agent's own rendering of its shared state. The agent's real HA loop runs behind them.
//!
//! Two users, neither shipped: the simulation test (`tests/simulation.rs`, the in-memory etcd,
//! paused time, injected faults, invariants checked by `world`) and the fleet benchmark
//! (`fleet`: hundreds of clusters of real agents' loops and real etcd clients against one real
//! etcd, each member's PostgreSQL simulated).

pub mod driver;
pub mod etcd;
pub mod fleet;
pub mod pg;
pub mod world;

/// The simulated nodes' PostgreSQL ports start here (node `i` listens on `PG_PORT + i`).
pub const PG_PORT: u16 = 5432;
