//! The HA loop: `decide` (pure) and the runner that observes and executes.

pub mod decide;
pub mod runner;
pub mod slots;
pub mod state;

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;

pub use runner::{Exit, Ha, PATRONI_VERSION};
pub use state::{NodeState, Request, RestartFilters, SharedState, Snapshot};
