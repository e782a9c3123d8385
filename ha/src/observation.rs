//! What `decide` looks at: one `Observation` per cycle.

use std::time::Duration;

use patrol_dcs::{Cluster, ClusterConfig, History, Member, NodeStatus, Timing};

use crate::Memory;

/// The local PostgreSQL as observed this cycle.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalPg {
    pub data: DataState,
    pub running: bool,
    /// `Some` when running and the monitoring query answered.
    pub in_recovery: Option<bool>,
    /// WAL position: flush LSN on a primary, max(receive, replay) on a standby.
    pub wal_position: Option<u64>,
    pub timeline: Option<u64>,
    /// Standby: replayed position and whether replay is paused.
    pub replay_position: Option<u64>,
    pub replay_paused: bool,
    /// Primary on a timeline > 1: its timeline history (from `pg_wal/<tl>.history`), the last
    /// line stamped with the history file's time and our name.
    pub history: Option<History>,
    /// Primary: its walsenders (`pg_stat_replication`).
    pub walsenders: Vec<crate::sync::Walsender>,
    /// `synchronous_standby_names` in effect, when the status query answered.
    pub standby_names: Option<String>,
    /// A stopped data directory's end of WAL from pg_control, as (timeline, LSN): a standby's
    /// minimum recovery point, else the latest checkpoint. `None` while running.
    pub stopped_at: Option<(u64, u64)>,
    /// A standby's own timeline history (its `<timeline>.history` file) as (timeline, the LSN
    /// where it ended), read while the cluster has a history to compare it with.
    pub switches: Vec<(u64, u64)>,
}

impl LocalPg {
    /// A running PostgreSQL whose status query said it is not in recovery.
    pub fn is_primary(&self) -> bool {
        self.running && self.in_recovery == Some(false)
    }

    /// The position a promotion would keep: a paused standby has only what it replayed.
    pub fn effective_position(&self) -> Option<u64> {
        if self.replay_paused {
            self.replay_position
        } else {
            self.wal_position
        }
    }
}

/// What a peer's `GET /patroni` said during the leader race (spec 2.4).
#[derive(Debug, Clone, PartialEq)]
pub struct PeerStatus {
    pub name: String,
    /// Not running in recovery: a live primary.
    pub primary: bool,
    pub wal_position: u64,
    pub replay_position: u64,
    pub paused: bool,
    pub nofailover: bool,
    pub failover_priority: i64,
    pub watchdog_failed: bool,
    /// The timeline it reports (0: unknown).
    pub timeline: u64,
}

impl PeerStatus {
    /// Reads a peer's `GET /patroni` answer as Patroni's leader race does (spec 2.4): in
    /// recovery unless `xlog.location` is set or the role is primary; position = max(received,
    /// replayed).
    pub fn from_status(name: &str, body: &serde_json::Value) -> PeerStatus {
        let s = NodeStatus::from_json(body);
        PeerStatus {
            name: name.to_string(),
            primary: s.primary,
            wal_position: s.wal_position,
            replay_position: s.replayed,
            paused: s.paused,
            nofailover: patrol_dcs::tags_nofailover(&s.tags),
            failover_priority: patrol_dcs::tags_failover_priority(&s.tags),
            watchdog_failed: s.watchdog_failed,
            timeline: s.timeline,
        }
    }

    pub(crate) fn effective_position(&self) -> u64 {
        if self.paused {
            self.replay_position
        } else {
            self.wal_position
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataState {
    Empty,
    Invalid(String),
    /// Initialized, with its system identifier and pg_control state.
    Initialized {
        sysid: String,
        cluster_state: ControlState,
    },
}

/// `Database cluster state` of `pg_controldata`, typed where a rule depends on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlState {
    /// `in production`: a primary, running or crashed.
    InProduction,
    /// `shut down`: a primary stopped cleanly.
    ShutDown,
    /// `shut down in recovery`: a standby stopped cleanly.
    ShutDownInRecovery,
    /// `in archive recovery`: a standby, running or crashed.
    InArchiveRecovery,
    /// Any other state (`in crash recovery`, `starting up`, `shutting down`, ...), as written.
    Other(String),
}

impl ControlState {
    /// Reads pg_controldata's text.
    pub fn parse(s: &str) -> ControlState {
        match s.trim() {
            "in production" => ControlState::InProduction,
            "shut down" => ControlState::ShutDown,
            "shut down in recovery" => ControlState::ShutDownInRecovery,
            "in archive recovery" => ControlState::InArchiveRecovery,
            other => ControlState::Other(other.to_string()),
        }
    }

    /// The data directory was a primary when PostgreSQL last ran (crashed or stopped).
    pub fn was_primary(&self) -> bool {
        matches!(self, ControlState::InProduction | ControlState::ShutDown)
    }

    /// Stopped cleanly: `pg_rewind` may run without crash recovery first.
    pub fn is_clean_shutdown(&self) -> bool {
        matches!(
            self,
            ControlState::ShutDown | ControlState::ShutDownInRecovery
        )
    }
}

impl From<&str> for ControlState {
    fn from(s: &str) -> Self {
        ControlState::parse(s)
    }
}

impl std::fmt::Display for ControlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ControlState::InProduction => "in production",
            ControlState::ShutDown => "shut down",
            ControlState::ShutDownInRecovery => "shut down in recovery",
            ControlState::InArchiveRecovery => "in archive recovery",
            ControlState::Other(s) => s,
        })
    }
}

/// What this cycle knows of the DCS. (One per cycle: the size difference does not matter.)
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum DcsView {
    /// One linearizable read of the cluster succeeded.
    Reachable(Cluster),
    /// The read (or a call this cycle needed) failed within `retry_timeout`.
    Unreachable,
}

/// A long operation tracked by the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Bootstrap,
    Clone,
    /// Starting as a standby.
    Start,
    /// Starting as primary (the leader restarting its crashed PostgreSQL).
    StartPrimary,
    Promote,
    Demote,
    Rewind,
    /// `POST /restart` (or a scheduled one) of a replica.
    Restart,
    /// `POST /restart` of the leader: stop, then start as primary only while holding the key.
    RestartPrimary,
}

/// Result of the last long operation, reported once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskResult {
    Succeeded(Task),
    Failed(Task, String),
    /// Row PP-1: the promotion was not attempted because `postgresql.pre_promote` failed (its
    /// exit status, or why it could not run): PostgreSQL is still a standby.
    PrePromoteFailed(String),
}

/// The watchdog as the runner holds it (Patroni's `watchdog`; rows W-1..W-4). The default is
/// no watchdog at all (`watchdog.mode: off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WatchdogView {
    /// There is a watchdog to arm: the mode is not `off`, and in `automatic` mode the device
    /// has not failed to activate since the configuration last changed (Patroni retries only
    /// then).
    pub enabled: bool,
    /// `watchdog.mode: required`: never take or keep the leader key without it armed.
    pub required: bool,
    /// Open with its timeout set: it resets the host unless fed before the timeout.
    pub armed: bool,
    /// Required, but it cannot work: the device is missing or not writable, or `ttl` minus the
    /// safety margin is shorter than `loop_wait` (Patroni's `watchdog_failed`).
    pub failed: bool,
}

/// Everything `decide` may look at.
#[derive(Debug, Clone)]
pub struct Observation {
    pub me: String,
    pub dcs: DcsView,
    pub local: LocalPg,
    /// Dynamic config in effect (`config` key, or `bootstrap.dcs` before it exists).
    pub dynamic: ClusterConfig,
    /// The timing of `dynamic`, adjusted once when it was taken (never re-read from the map).
    pub timing: Timing,
    /// A long operation still running.
    pub in_flight: Option<Task>,
    pub last_result: Option<TaskResult>,
    /// What earlier cycles of this process learned (see [`Memory`]).
    pub mem: Memory,
    /// Monotonic time (any fixed origin: the runner's start), for the clocks in `mem`.
    pub now: Duration,
    /// Local config has a `bootstrap` section.
    pub can_bootstrap: bool,
    /// A replica creation method marked `no_leader` can make our data directory while the
    /// cluster has no leader (row B-2.3).
    pub replica_without_leader: bool,
    /// Our own tags say `nofailover` (or `failover_priority: 0`).
    pub nofailover: bool,
    /// Our `failover_priority` (default 1).
    pub failover_priority: i64,
    /// Our `replicatefrom` tag: the member to stream from instead of the leader (row H-1.2c).
    pub replicatefrom: Option<String>,
    /// Our `nostream` tag: no streaming, recovery from the archive only (row H-1.2n).
    pub nostream: bool,
    /// Answers of the other members' REST APIs, probed when the cluster has no leader.
    /// Unreachable members are absent.
    pub peers: Vec<PeerStatus>,
    /// `use_pg_rewind` from local or dynamic config.
    pub use_pg_rewind: bool,
    pub remove_data_directory_on_rewind_failure: bool,
    pub remove_data_directory_on_diverged_timelines: bool,
    /// Wall-clock time in ms since the epoch, only for scheduled switchovers.
    pub now_epoch_ms: i64,
    /// The agent set `synchronous_standby_names` (else PostgreSQL has the user's own value).
    pub sync_names_managed: bool,
    /// Row D-2F: what the members of the `failsafe` key answered this cycle (asked only when
    /// [`crate::failsafe::wants_check`] says so and the DCS did not answer).
    pub failsafe_check: Option<crate::failsafe::FailsafeCheck>,
    /// Row D-2F': a leader that called our `POST /failsafe` less than `ttl` ago.
    pub failsafe_leader: Option<crate::failsafe::FailsafeLeader>,
    /// The watchdog (default: none).
    pub watchdog: WatchdogView,
}

impl Observation {
    /// The cluster as read this cycle, when the DCS answered.
    pub fn cluster(&self) -> Option<&Cluster> {
        match &self.dcs {
            DcsView::Reachable(c) => Some(c),
            DcsView::Unreachable => None,
        }
    }

    /// We hold the leader key and PostgreSQL has been down this long.
    pub fn primary_down_for(&self) -> Option<Duration> {
        self.mem
            .primary_down_since
            .map(|since| self.now.saturating_sub(since))
    }

    /// Whether the local PostgreSQL may accept writes: running and not in recovery, or running
    /// with no answer to the status query and a primary when it last answered (or never
    /// answered: unknown counts as primary, the safe side when deciding whether to stop it).
    pub fn may_be_writable(&self) -> bool {
        self.local.running
            && match self.local.in_recovery {
                Some(r) => !r,
                None => self.mem.last_seen_primary.unwrap_or(true),
            }
    }
}

/// Where a standby should stream from: a member, or (the leader of a standby cluster) the
/// remote source of the `standby_cluster` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub conn_url: String,
    /// Row SC-1: the standby cluster's remote source (its `name` describes it).
    pub remote: Option<patrol_dcs::StandbySource>,
}

impl Upstream {
    pub fn of(m: &Member) -> Upstream {
        Upstream {
            name: m.name.clone(),
            conn_url: m.data.conn_url.clone(),
            remote: None,
        }
    }

    /// The remote source of a standby cluster.
    pub fn remote(source: &patrol_dcs::StandbySource) -> Upstream {
        Upstream {
            name: source.describe(),
            conn_url: String::new(),
            remote: Some(source.clone()),
        }
    }

    /// What [`crate::Memory::following`] holds for it: the member's name, or every setting of
    /// the remote source (a changed `restore_command` is a new upstream to follow).
    pub fn key(&self) -> String {
        match &self.remote {
            Some(r) => format!("standby_cluster {r:?}"),
            None => self.name.clone(),
        }
    }
}
