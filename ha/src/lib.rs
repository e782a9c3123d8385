//! The HA core of Patrol: every rule that decides what a node does, as pure functions over
//! plain data. No IO and no clock: the crate depends on the cluster model (`patrol-dcs`
//! without its etcd client), serde_json and chrono's parsing only, so the compiler keeps it
//! pure (the end-to-end suite's `crate_graph` checks the crate graph).
//!
//! - [`Observation`]: what one cycle saw (the DCS view, the local PostgreSQL, peers, the
//!   [`Memory`] of earlier cycles, `now`).
//! - [`decide`]: the [`Decision`] of the cycle, a list of [`Action`]s with a reason; every
//!   branch cites its row of `docs/ha-decision-table.md`.
//! - [`after_setback`]: the answer to a [`Setback`] met while executing (rows D-1, D-2).
//! - [`Memory::observe`] / [`Memory::record`]: the decision memory, updated from the local
//!   observation and from typed [`Outcome`]s of the actions.
//! - [`lease_guard`]: the lease guard's rule (row D-3); [`slots`]: member slot retention;
//!   [`failsafe`]: failsafe mode (rows D-2F, D-2F', U-2F);
//!   [`permanent_slots`]: permanent slots and `ignore_slots`.
#![forbid(unsafe_code)]

mod action;
mod decide;
pub mod failsafe;
mod lease;
mod memory;
mod observation;
pub mod permanent_slots;
pub mod quorum;
pub mod slots;
pub mod sync;

pub(crate) use action::decision;
pub use action::{Action, Decision, Setback};
pub use decide::{after_setback, decide, parse_schedule};
pub use lease::{lease_guard, Guard};
pub use memory::{Memory, Outcome};
pub use observation::{
    ControlState, DataState, DcsView, LocalPg, Observation, PeerStatus, Task, TaskResult, Upstream,
    WatchdogView,
};

#[cfg(test)]
mod props;
#[cfg(test)]
mod tests;
