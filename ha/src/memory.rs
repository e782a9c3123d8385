//! The decision memory: what earlier cycles of this process learned that the DCS and
//! PostgreSQL no longer show. Pure data, changed only here, from the local observation
//! (`observe`) and from typed outcomes of the actions (`record`); `decide` reads it.

use std::time::Duration;

use crate::{DataState, LocalPg, Task, TaskResult};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memory {
    /// We won the `initialize` race in this process and have not finished bootstrapping.
    pub bootstrapping: bool,
    /// This data directory was a primary that another leader replaced: it must be rewound (or
    /// re-cloned) before it can follow (rows ).
    pub needs_rewind: bool,
    /// The last rewind failed (row R-4).
    pub rewind_failed: bool,
    /// Since when (monotonic) we hold the key while our PostgreSQL is down (rows C-1, C-2).
    pub primary_down_since: Option<Duration>,
    /// `POST /reinitialize` with `from_leader`: the next clone comes from the leader, not a
    /// `clonefrom` member.
    pub clone_from_leader: bool,
    /// The member PostgreSQL was last configured to stream from (`None`: nobody, or primary).
    pub following: Option<String>,
    /// What the last status query that answered said: `Some(true)` a primary. `None` until one
    /// answered.
    pub last_seen_primary: Option<bool>,
    /// As leader with a primary: which standbys caught up since `synchronous_standby_names`
    /// last changed.
    pub sync_ready: crate::sync::Readiness,
    /// Since when (monotonic) we lead with a primary (quorum mode waits `loop_wait` after the
    /// first cycle before changing the quorum).
    pub leading_since: Option<Duration>,
    /// Row PP-1: no leader race before this (monotonic) time: the pre-promote script failed and
    /// the key was given up (Patroni's `_released_leader_key_timestamp` + `ttl`).
    pub no_race_until: Option<Duration>,
}

/// What an executed action changed that the memory keeps. Actions that change nothing it keeps
/// report `Done`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Done,
    /// The leader key is held (`true`) or not (`false`) after this action.
    LeaderKey(bool),
    /// We won the `initialize` race: bootstrapping.
    WonInitialize,
    /// `initialize`, `config` and the leader key are written: the cluster exists.
    Bootstrapped,
    /// PostgreSQL is (being) configured to stream from this member (`None`: from nobody, or
    /// as a primary).
    Streaming(Option<String>),
    /// A replica creation from this member (`None`: without a leader) started.
    Cloning(Option<String>),
    /// PostgreSQL was stopped at once as a primary: the data directory may have diverged.
    Demoted,
    /// The data directory was removed: the next cycle clones it again.
    DataDirectoryRemoved,
    /// `POST /reinitialize` removed the data directory.
    Reinitialized {
        from_leader: bool,
    },
    /// A long operation ended.
    TaskFinished(TaskResult),
    /// Row PP-1: no leader race before this (monotonic) time.
    SkipRacesUntil(Duration),
}

impl Memory {
    /// Learns from this cycle's local observation (`i_lead`: whether the DCS says we hold the
    /// key, `None` when it could not be read; `busy`: a long operation is running). Returns a
    /// line worth logging when it learned something new.
    pub fn observe(
        &mut self,
        i_lead: Option<bool>,
        local: &LocalPg,
        busy: bool,
        now: Duration,
    ) -> Option<String> {
        let mut note = None;
        if let Some(r) = local.in_recovery {
            self.last_seen_primary = Some(!r);
        }
        // Without the DCS nothing else can be learned: who leads is unknown.
        let i_lead = i_lead?;
        // Row R-1: a data directory that was a primary, stopped while another node leads,
        // has (or may have) diverged from the new leader.
        if let DataState::Initialized { cluster_state, .. } = &local.data {
            if cluster_state.was_primary() && !local.running && !i_lead && !busy {
                if !self.needs_rewind {
                    note = Some(format!(
                        "the data directory was a primary ({cluster_state}); it will be rewound before following"
                    ));
                }
                self.needs_rewind = true;
            }
        }
        if i_lead && local.is_primary() {
            self.needs_rewind = false;
            self.rewind_failed = false;
        }
        // Rows C-1/C-2: how long the leader's PostgreSQL has been down.
        if i_lead && !local.running {
            self.primary_down_since.get_or_insert(now);
        } else if local.running {
            self.primary_down_since = None;
        }
        note
    }

    /// Learns from the local primary's replication (leader only): which standbys are ready to
    /// be named synchronous, and since when we lead.
    pub fn observe_replication(
        &mut self,
        me: &str,
        cluster: Option<&patrol_dcs::Cluster>,
        local: &LocalPg,
        dynamic: &patrol_dcs::ClusterConfig,
        now: Duration,
    ) {
        let (Some(cluster), Some(names), Some(flush)) =
            (cluster, &local.standby_names, local.wal_position)
        else {
            return;
        };
        let leading = cluster.leader_name() == Some(me) && local.is_primary();
        let mode = dynamic.synchronous_mode();
        if !leading || mode == patrol_dcs::SynchronousMode::Off {
            self.sync_ready = Default::default();
            self.leading_since = None;
            return;
        }
        let first = self.leading_since.is_none();
        self.leading_since.get_or_insert(now);
        if first {
            self.sync_ready = Default::default();
        }
        let candidates = crate::sync::sync_candidates(me, cluster, &local.walsenders);
        let quorum = mode == patrol_dcs::SynchronousMode::Quorum;
        self.sync_ready.observe(
            names,
            flush,
            &candidates,
            cluster.sync.as_ref().map(|s| &s.value),
            quorum,
        );
    }

    /// Learns from what an action did.
    pub fn record(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Done | Outcome::LeaderKey(_) => {}
            Outcome::WonInitialize => self.bootstrapping = true,
            Outcome::Bootstrapped => self.bootstrapping = false,
            Outcome::Streaming(from) => self.following = from.clone(),
            Outcome::Cloning(from) => {
                self.following = from.clone();
                self.clone_from_leader = false;
            }
            Outcome::Demoted => {
                self.needs_rewind = true;
                self.following = None;
                self.last_seen_primary = Some(false);
            }
            Outcome::DataDirectoryRemoved => {
                self.needs_rewind = false;
                self.rewind_failed = false;
                self.following = None;
            }
            Outcome::Reinitialized { from_leader } => {
                self.needs_rewind = false;
                self.rewind_failed = false;
                self.following = None;
                self.clone_from_leader = *from_leader;
            }
            Outcome::TaskFinished(TaskResult::Succeeded(Task::Rewind)) => {
                self.needs_rewind = false;
                self.rewind_failed = false;
            }
            Outcome::TaskFinished(TaskResult::Failed(Task::Rewind, _)) => {
                self.rewind_failed = true;
            }
            Outcome::TaskFinished(_) => {}
            Outcome::SkipRacesUntil(until) => self.no_race_until = Some(*until),
        }
    }
}
