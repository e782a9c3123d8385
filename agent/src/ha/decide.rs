//! The HA decision: a pure function from one `Observation` to the `Action`s of this cycle.
//! No IO, no clock: `now` is part of the observation. Each branch cites the row of
//! `docs/ha-decision-table.md` it implements.

use std::time::Duration;

use patrol_dcs::{Cluster, ClusterConfig, History, Member, Role};

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
    /// Member name the standby is configured to follow (as last written by us).
    pub following: Option<String>,
    /// Primary on a timeline > 1: its timeline history (from `pg_wal/<tl>.history`), the last
    /// line stamped with the history file's time and our name.
    pub history: Option<History>,
}

impl LocalPg {
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
    fn effective_position(&self) -> u64 {
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
        cluster_state: String,
    },
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
}

/// Everything `decide` may look at.
#[derive(Debug, Clone)]
pub struct Observation {
    pub me: String,
    pub cluster: Cluster,
    pub local: LocalPg,
    /// Dynamic config in effect (`config` key, or `bootstrap.dcs` before it exists).
    pub dynamic: ClusterConfig,
    /// A long operation still running.
    pub in_flight: Option<Task>,
    pub last_result: Option<TaskResult>,
    /// We won the `initialize` race in this process and have not finished bootstrapping.
    pub bootstrapping: bool,
    /// Local config has a `bootstrap` section.
    pub can_bootstrap: bool,
    /// Our own tags say `nofailover` (or `failover_priority: 0`).
    pub nofailover: bool,
    /// Our `failover_priority` (default 1).
    pub failover_priority: i64,
    /// Answers of the other members' REST APIs, probed when the cluster has no leader.
    /// Unreachable members are absent.
    pub peers: Vec<PeerStatus>,
    /// We hold the leader key and PostgreSQL has been down this long.
    pub primary_down_for: Option<Duration>,
    /// This data directory was a primary that another leader replaced: it must be rewound (or
    /// re-cloned) before it can follow.
    pub needs_rewind: bool,
    /// The last rewind failed (and nothing may remove the data directory).
    pub rewind_failed: bool,
    /// `use_pg_rewind` from local or dynamic config.
    pub use_pg_rewind: bool,
    pub remove_data_directory_on_rewind_failure: bool,
    pub remove_data_directory_on_diverged_timelines: bool,
    /// Wall-clock time in ms since the epoch, only for scheduled switchovers.
    pub now_epoch_ms: i64,
    /// `POST /reinitialize` with `from_leader`: clone from the leader, not a `clonefrom` member.
    pub clone_from_leader: bool,
}

/// Where a standby should stream from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub name: String,
    pub conn_url: String,
}

/// Imperative steps, executed in order; the first failure ends the cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Race for `initialize` (create `""` if absent); losing is a failure that ends the cycle.
    RaceInitialize,
    /// initdb, configure, start as primary, create roles (long operation).
    Bootstrap,
    /// Bootstrap finished: store the sysid in `initialize`, `config` = bootstrap.dcs, take the
    /// leader key.
    FinishBootstrap {
        sysid: String,
    },
    /// Bootstrap failed: release what we hold, remove `initialize` and the data directory, exit.
    AbortBootstrap {
        reason: String,
    },
    /// pg_basebackup from this member (long operation).
    CloneFrom(Upstream),
    /// Adopt an existing data directory as the cluster's (no `initialize` key yet).
    WriteInitialize {
        sysid: String,
    },
    /// Start PostgreSQL: as primary (`None`) or as standby following `Some(upstream)` or nobody
    /// (`Some(None)`: read-only, waiting for a leader).
    Start {
        standby_of: Option<Option<Upstream>>,
    },
    AcquireLeaderKey,
    RefreshLeaderKey,
    ReleaseLeaderKey,
    Promote,
    /// Stop PostgreSQL at once (immediate); the data directory then needs a rewind before it
    /// can follow. With `leader: None` (no usable DCS) it restarts read-only following nobody.
    Demote {
        leader: Option<Upstream>,
    },
    /// Stop (if running), finish crash recovery, `pg_rewind` from the leader, start as its
    /// standby (long operation).
    Rewind(Upstream),
    /// Remove the data directory so the next cycle clones it again.
    RemoveDataDirectory {
        reason: String,
    },
    /// Publish the timeline history after a promotion.
    WriteHistory(History),
    /// Planned switchover on the leader: CHECKPOINT, fast stop, release the key once stopped
    /// (replicas have the shutdown checkpoint), restart as a standby (long operation).
    GracefulDemote,
    /// Reset the `failover` key to `{}` (compare-and-swap on the revision observed).
    ClearFailover {
        version: i64,
    },
    /// Point the standby at this upstream (rewrite config and reload) if it is not already.
    Follow(Upstream),
    /// Leader only: make sure every other member has its physical slot.
    EnsureSlots {
        names: Vec<String>,
    },
    /// Unrecoverable: log and exit non-zero.
    Fatal {
        reason: String,
    },
}

/// The actions of one cycle with the human reason (logged when it changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub reason: String,
    pub actions: Vec<Action>,
}

fn decision(reason: impl Into<String>, actions: Vec<Action>) -> Decision {
    Decision {
        reason: reason.into(),
        actions,
    }
}

fn upstream(m: &Member) -> Upstream {
    Upstream {
        name: m.name.clone(),
        conn_url: m.data.conn_url.clone(),
    }
}

/// Chooses the member to clone from: a running member tagged `clonefrom` other than the leader
/// (the first by name, deterministic), else the leader (flow ② row 2.1/1.1).
fn clone_source<'a>(o: &'a Observation, leader: &'a Member) -> &'a Member {
    if o.clone_from_leader {
        return leader;
    }
    o.cluster
        .members
        .iter()
        .find(|m| {
            m.name != o.me
                && m.name != leader.name
                && m.data.clonefrom()
                && m.data.state == "running"
                && m.data.host_port().is_some()
        })
        .unwrap_or(leader)
}

/// Slots the leader keeps: one per other member (spec 5.12).
fn wanted_slots(o: &Observation) -> Vec<String> {
    if !o.dynamic.use_slots() {
        return Vec::new();
    }
    let mut names: Vec<String> = o
        .cluster
        .members
        .iter()
        .filter(|m| m.name != o.me)
        .filter(|m| !patrol_dcs::lenient_bool(m.data.tags.get("nostream")).unwrap_or(false))
        .map(|m| patrol_dcs::slot_name_from_member_name(&m.name))
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether this node may take the leader key when the cluster has none (flow ④ row 2.1):
/// running, not `nofailover`, and not lagging more than `maximum_lag_on_failover` behind the
/// last known leader position, on the cluster's timeline when `check_timeline`.
fn healthy_enough(o: &Observation) -> Result<(), String> {
    if o.nofailover {
        return Err("I am not allowed to promote (nofailover)".into());
    }
    if !o.local.running {
        return Err("PostgreSQL is not running".into());
    }
    // Row U-3 (Patroni's guard against a stale primary, its PR #2787): a running primary, or a
    // former primary that still needs a rewind, whose timeline is behind the cluster's history
    // missed a promotion while it was away (frozen, partitioned). Taking the key would serve
    // writes on the abandoned timeline and throw away the new leader's; it must rewind and
    // follow instead. Unconditional, unlike the replicas' `check_timeline`.
    if o.local.in_recovery == Some(false) || o.needs_rewind {
        let tl = o.cluster.timeline();
        if let Some(my_tl) = o.local.timeline {
            if tl > 0 && my_tl < tl {
                return Err(format!(
                    "my timeline {my_tl} is behind last known cluster timeline {tl} (if every node of timeline {tl} is gone for good, `patrolctl failover --candidate {}` makes this node the leader on purpose, losing what was written on the newer timeline)",
                    o.me
                ));
            }
        }
    }
    // Row U-3 for replicas: one that received WAL past the end of its timeline in the
    // cluster's history (from a stale primary, before it was cut off) holds writes the
    // cluster abandoned; promoting it would throw away the new timeline's.
    if o.local.in_recovery == Some(true) {
        if let (Some(tl), Some(pos)) = (o.local.timeline, o.local.effective_position()) {
            if went_past_its_fork(o, tl, pos) {
                return Err(format!(
                    "my WAL went past the end of timeline {tl} in the cluster's history: it must be rewound"
                ));
            }
        }
    }
    if o.local.in_recovery == Some(true) {
        if let (Some(optime), Some(pos)) = (o.cluster.status.optime, o.local.effective_position()) {
            let lag = optime.saturating_sub(pos);
            let max = o.dynamic.maximum_lag_on_failover();
            if max >= 0 && lag > max as u64 {
                return Err(format!(
                    "my lag of {lag} bytes exceeds maximum_lag_on_failover ({max})"
                ));
            }
        }
        if o.dynamic.check_timeline() {
            let tl = o.cluster.timeline();
            if let Some(my_tl) = o.local.timeline {
                if tl > 0 && my_tl < tl {
                    return Err(format!("my timeline {my_tl} is behind the cluster's {tl}"));
                }
            }
        }
    }
    Ok(())
}

/// Patroni's `_is_healthiest_node`: no reachable peer is a live primary, has a higher WAL
/// position, or (at an equal position) a higher failover priority. Patrol compares the position
/// a promotion would keep (a paused standby only has what it replayed) and breaks position ties
/// by replayed position before priority, so the node that can promote at once wins.
fn healthiest(o: &Observation) -> Result<(), String> {
    let my_pos = o.local.effective_position().unwrap_or(0);
    let my_replay = o.local.replay_position.unwrap_or(my_pos);
    for p in o.peers.iter().filter(|p| p.name != o.me) {
        if p.primary {
            return Err(format!("Primary ({}) is still alive", p.name));
        }
        if p.nofailover || p.watchdog_failed {
            continue;
        }
        // Row U-3: a peer whose WAL went on past the end of its timeline in the cluster's
        // history holds writes the cluster abandoned (a stale primary, demoted). It can never
        // lead, and its position is no measure of what the cluster kept.
        if went_past_its_fork(o, p.timeline, p.effective_position()) {
            continue;
        }
        let pos = p.effective_position();
        if pos > my_pos {
            return Err(format!(
                "Wal position of {} is ahead of my wal position",
                p.name
            ));
        }
        if pos == my_pos && p.replay_position > my_replay {
            return Err(format!("{} has replayed more of the same WAL", p.name));
        }
        if pos == my_pos
            && p.replay_position == my_replay
            && p.failover_priority > o.failover_priority
        {
            return Err(format!(
                "{} has equally tolerable WAL position and priority {}, while this node has priority {}",
                p.name, p.failover_priority, o.failover_priority
            ));
        }
    }
    Ok(())
}

/// Whether WAL at `pos` on timeline `tl` lies past the point where the cluster's history
/// says `tl` ended (a branch the cluster abandoned).
fn went_past_its_fork(o: &Observation, tl: u64, pos: u64) -> bool {
    o.cluster.history.as_ref().is_some_and(|h| {
        h.lines
            .iter()
            .find(|l| l.timeline == tl)
            .is_some_and(|l| pos > l.lsn)
    })
}

/// A standby still on a timeline that the cluster's history says ended before the position it
/// has reached: it kept receiving from an old primary past the fork, and only a rewind (or a
/// re-clone) lets it follow the new timeline.
fn diverged_from_history(o: &Observation) -> bool {
    let (Some(tl), Some(pos), Some(h)) =
        (o.local.timeline, o.local.wal_position, &o.cluster.history)
    else {
        return false;
    };
    if o.local.in_recovery != Some(true) {
        return false;
    }
    h.lines
        .iter()
        .find(|l| l.timeline == tl)
        .is_some_and(|l| pos > l.lsn)
}

/// Another member could take over (Patroni's `is_failover_possible`, from member keys).
fn failover_possible(o: &Observation) -> bool {
    switchover_target_exists(o, None)
}

/// The history to publish when ours is newer than the DCS's, keeping the timestamps and
/// leader names already stored for older timelines. Never goes backwards.
fn history_to_write(o: &Observation) -> Option<History> {
    let local = o.local.history.as_ref()?;
    let last_local = local.lines.last()?;
    let stored_tl = o.cluster.timeline();
    if stored_tl > last_local.timeline {
        return None;
    }
    let mut lines = local.lines.clone();
    if let Some(stored) = &o.cluster.history {
        for l in lines.iter_mut() {
            if let Some(old) = stored.lines.iter().find(|s| s.timeline == l.timeline) {
                if old.timestamp.is_some() {
                    l.timestamp = old.timestamp.clone();
                    l.new_leader = old.new_leader.clone();
                }
            }
        }
        if stored.lines == lines {
            return None;
        }
    }
    let keep = o.dynamic.max_timelines_history();
    if keep > 0 && lines.len() > keep {
        lines.drain(..lines.len() - keep);
    }
    Some(History { lines })
}

/// Parses an ISO 8601 timestamp with a zone into epoch milliseconds.
pub fn parse_schedule(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .or_else(|_| chrono::DateTime::parse_from_str(s.trim(), "%Y-%m-%dT%H:%M:%S%.f%z"))
        .or_else(|_| chrono::DateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f%:z"))
        .ok()
        .map(|d| d.timestamp_millis())
}

/// A member that can take over (Patroni's `is_failover_possible` from member keys): a running
/// replica that may fail over, within `maximum_lag_on_failover`, not on a timeline the
/// cluster's history has left behind (Row U-3 would keep it from racing), and the named
/// candidate if there is one.
fn switchover_target_exists(o: &Observation, candidate: Option<&str>) -> bool {
    let max = o.dynamic.maximum_lag_on_failover();
    let cluster_tl = o.cluster.timeline();
    o.cluster.members.iter().any(|m| {
        m.name != o.me
            && candidate.is_none_or(|c| c == m.name)
            && m.data.state == "running"
            && m.data.role == Role::Replica
            && !m.data.nofailover()
            && !m
                .data
                .timeline
                .is_some_and(|tl| cluster_tl > 0 && tl < cluster_tl)
            && match (o.cluster.status.optime, m.data.xlog_location) {
                (Some(opt), Some(pos)) => max < 0 || opt.saturating_sub(pos) <= max as u64,
                _ => true,
            }
    })
}

/// The leader's handling of a `failover` key (Patroni's `process_manual_failover_from_leader`).
/// `None` = nothing to do this cycle.
fn manual_failover_from_leader(o: &Observation) -> Option<Decision> {
    let f = o.cluster.failover.as_ref()?;
    if f.value.is_empty() {
        return None;
    }
    let clear = |why: String| {
        Some(decision(
            why,
            vec![
                Action::RefreshLeaderKey,
                Action::ClearFailover { version: f.version },
            ],
        ))
    };
    if let Some(at) = &f.value.scheduled_at {
        let loop_ms = o.dynamic.timing().loop_wait as i64 * 1000;
        match parse_schedule(at) {
            None => {
                return clear(format!(
                    "discarding the scheduled switchover: bad time {at:?}"
                ))
            }
            Some(due) if due - o.now_epoch_ms > 0 => {
                let _ = loop_ms;
                return None; // not due yet: keep leading, the loop wakes us
            }
            Some(due) if o.now_epoch_ms - due > loop_ms * 3 / 2 => {
                return clear(format!(
                    "discarding the scheduled switchover planned for {at}: too late"
                ));
            }
            Some(_) => {}
        }
    }
    if let Some(l) = &f.value.leader {
        if l != &o.me {
            return clear(format!(
                "discarding the switchover: leader {l} is not me ({})",
                o.me
            ));
        }
    }
    let candidate = f.value.member.as_deref();
    if candidate == Some(o.me.as_str()) {
        return clear("discarding the switchover: I am already the leader".into());
    }
    if o.cluster.is_paused() && candidate.is_none() {
        return clear(
            "discarding the switchover: a candidate is required in maintenance mode".into(),
        );
    }
    if switchover_target_exists(o, candidate) {
        return Some(decision(
            match candidate {
                Some(c) => format!("manual switchover: demoting myself in favour of {c}"),
                None => "manual switchover: demoting myself".into(),
            },
            vec![Action::RefreshLeaderKey, Action::GracefulDemote],
        ));
    }
    clear(match candidate {
        Some(c) => format!("switchover to {c} is not possible: no healthy candidate"),
        None => "switchover is not possible: no healthy candidate".into(),
    })
}

/// The decision for one cycle.
pub fn decide(o: &Observation) -> Decision {
    let leader = o.cluster.leader.as_ref();
    let i_am_leader = leader.is_some_and(|l| l.name == o.me);
    let leader_member = o.cluster.leader_member();

    // Row B-F: a failed bootstrap is cleaned up and ends the process (flow ② 2.4/1.8).
    if let Some(TaskResult::Failed(Task::Bootstrap, why)) = &o.last_result {
        return decision(
            format!("bootstrap failed: {why}"),
            vec![Action::AbortBootstrap {
                reason: why.clone(),
            }],
        );
    }

    // Row S-2.2: a long operation is running; the lock holder keeps its key alive.
    if let Some(task) = o.in_flight {
        // Row S-2.2': a promotion (or a start as primary) must not finish once we lost the
        // key (we were frozen, or our lease expired): stop it and PostgreSQL at once.
        if !i_am_leader
            && matches!(
                task,
                Task::Promote | Task::StartPrimary | Task::RestartPrimary
            )
        {
            return decision(
                format!("lost leader before {task:?} finished: demoting"),
                vec![Action::Demote {
                    leader: leader_member.map(upstream),
                }],
            );
        }
        let mut actions = Vec::new();
        if i_am_leader {
            actions.push(Action::RefreshLeaderKey);
        }
        return decision(format!("{task:?} in progress"), actions);
    }

    match &o.local.data {
        // Row S-2.5: empty data directory -> bootstrap flow ②.
        DataState::Empty => {
            if let Some(l) = leader_member.filter(|_| !i_am_leader) {
                // Row B-2.1: the cluster has a leader: clone from a member (1.1) with
                // pg_basebackup (1.2).
                let src = clone_source(o, l);
                return decision(
                    format!("cloning from {}", src.name),
                    vec![Action::CloneFrom(upstream(src))],
                );
            }
            if i_am_leader {
                // We hold the key without data (crashed mid-way): give it up.
                return decision(
                    "data directory is empty while I hold the leader key",
                    vec![Action::ReleaseLeaderKey],
                );
            }
            if leader.is_some() {
                return decision("waiting for the leader's member key", vec![]);
            }
            match &o.cluster.initialize {
                // Row B-2.2/1.4: nobody initialized the cluster: race for `initialize`.
                None if o.can_bootstrap && !o.nofailover => decision(
                    "trying to bootstrap a new cluster",
                    vec![Action::RaceInitialize, Action::Bootstrap],
                ),
                None => decision(
                    "waiting for leader to bootstrap (this node may not bootstrap)",
                    vec![],
                ),
                // Row B-2.2/1.3: someone is bootstrapping or did: wait for the leader key.
                Some(_) => decision("waiting for leader to bootstrap", vec![]),
            }
        }
        DataState::Invalid(why) => decision(
            format!("data directory is not usable ({why}); waiting"),
            if i_am_leader {
                vec![Action::ReleaseLeaderKey]
            } else {
                vec![]
            },
        ),
        DataState::Initialized { sysid, .. } => decide_with_data(o, sysid),
    }
}

fn decide_with_data(o: &Observation, sysid: &str) -> Decision {
    let leader = o.cluster.leader.as_ref();
    let i_am_leader = leader.is_some_and(|l| l.name == o.me);
    let leader_member = o.cluster.leader_member();

    // Row B-1.7/1.9: bootstrap finished in this process: publish it.
    if o.bootstrapping {
        if o.local.running && o.local.in_recovery == Some(false) {
            return decision(
                "bootstrap finished: initializing the cluster in the DCS",
                vec![Action::FinishBootstrap {
                    sysid: sysid.to_string(),
                }],
            );
        }
        if o.local.running && o.local.in_recovery.is_none() {
            return decision(
                "bootstrap finished: waiting for PostgreSQL to answer",
                vec![],
            );
        }
        return decision(
            "bootstrap finished but PostgreSQL is not running as primary",
            vec![Action::AbortBootstrap {
                reason: "PostgreSQL is not running as primary after bootstrap".into(),
            }],
        );
    }

    // Row S-2.7/1.7: the data directory must belong to this cluster.
    if let Some(cluster_sysid) = o.cluster.initialized_sysid() {
        if cluster_sysid != sysid {
            return decision(
                "system identifier mismatch",
                vec![Action::Fatal {
                    reason: format!(
                        "the data directory belongs to another cluster: its system identifier is {sysid}, the cluster's (initialize key) is {cluster_sysid}"
                    ),
                }],
            );
        }
    } else if o.cluster.initialize.is_none() && leader.is_none() && !o.cluster.is_paused() {
        // Spec 5.2 step 10: adopt an existing data directory, unless it is a running replica.
        if o.local.running && o.local.in_recovery == Some(true) {
            return decision(
                "no initialize key",
                vec![Action::Fatal {
                    reason: "No initialize key in DCS and PostgreSQL is running as replica, aborting start".into(),
                }],
            );
        }
        return decision(
            "adopting the existing data directory as the cluster",
            vec![Action::WriteInitialize {
                sysid: sysid.to_string(),
            }],
        );
    }

    let rewind_or_reclone = |leader: Upstream| -> Decision {
        if o.rewind_failed {
            return decision(
                "pg_rewind failed earlier; not starting PostgreSQL (reinitialize this member)",
                vec![],
            );
        }
        if o.use_pg_rewind {
            decision(
                format!("rewinding to follow the new leader ({})", leader.name),
                vec![Action::Rewind(leader)],
            )
        } else if o.remove_data_directory_on_diverged_timelines {
            decision(
                "the data directory has diverged and pg_rewind is off: re-cloning",
                vec![Action::RemoveDataDirectory {
                    reason: "diverged from the new leader and use_pg_rewind is off".into(),
                }],
            )
        } else {
            decision(
                format!(
                    "starting as a replica of {} without rewind (use_pg_rewind is off)",
                    leader.name
                ),
                vec![Action::Start {
                    standby_of: Some(Some(leader)),
                }],
            )
        }
    };
    // A rewind needs the new leader to be a primary that finished its promotion.
    let rewind_source = leader_member
        .filter(|m| m.name != o.me && m.data.role == Role::Primary && m.data.state == "running")
        .filter(|m| m.data.checkpoint_after_promote != Some(false))
        .map(upstream);

    let paused = o.cluster.is_paused();
    // Row P-1: in maintenance mode the agent never starts PostgreSQL on its own.
    if !o.local.running && paused {
        if i_am_leader {
            return decision(
                "PAUSE: PostgreSQL is not running: releasing the leader key",
                vec![Action::ReleaseLeaderKey],
            );
        }
        return decision("PAUSE: PostgreSQL is not running", vec![]);
    }

    // Row S-2.9/1.9: PostgreSQL not running: start it in the right role.
    if !o.local.running {
        if i_am_leader {
            // Row C-1 (crash of the leader's PostgreSQL): restart in place, same timeline,
            // unless primary_start_timeout says to fail over (Row C-2).
            let timeout = o.dynamic.primary_start_timeout();
            let expired = o
                .primary_down_for
                .is_some_and(|d| timeout == 0 || d >= Duration::from_secs(timeout));
            if expired && failover_possible(o) {
                return decision(
                    "removing the leader key: PostgreSQL did not come back within primary_start_timeout",
                    vec![Action::ReleaseLeaderKey],
                );
            }
            return decision(
                "starting PostgreSQL as primary (I hold the leader key)",
                vec![Action::RefreshLeaderKey, Action::Start { standby_of: None }],
            );
        }
        if o.needs_rewind {
            // Row R-1: a former primary rejoins through pg_rewind (or a re-clone).
            match (&rewind_source, leader) {
                (Some(src), _) => return rewind_or_reclone(src.clone()),
                (None, Some(l)) => {
                    return decision(
                        format!(
                            "waiting for the leader ({}) to finish promotion before rewinding",
                            l.name
                        ),
                        vec![],
                    )
                }
                (None, None) => {}
            }
        }
        let up = leader_member.map(upstream);
        let reason = match &up {
            Some(u) => format!("starting PostgreSQL as a replica of {}", u.name),
            None => "starting PostgreSQL read-only (no leader yet)".to_string(),
        };
        return decision(
            reason,
            vec![Action::Start {
                standby_of: Some(up),
            }],
        );
    }

    // Running but the monitoring query failed: nothing safe to decide except keeping our key.
    let Some(in_recovery) = o.local.in_recovery else {
        let actions = if i_am_leader {
            vec![Action::RefreshLeaderKey]
        } else {
            vec![]
        };
        return decision("PostgreSQL is not answering the status query", actions);
    };

    match leader {
        // Flow ③ healthy cluster.
        Some(_) if i_am_leader => {
            // Row H-2.1/1.1: refresh; 1.4 promote if we run as replica; 1.5 persist state.
            let mut actions = vec![Action::RefreshLeaderKey];
            if in_recovery {
                if paused {
                    // Row P-2: the lock holder is no longer a primary in maintenance mode.
                    return decision(
                        "PAUSE: I hold the leader key but run as a replica: releasing it",
                        vec![Action::ReleaseLeaderKey],
                    );
                }
                actions.push(Action::Promote);
                return decision("promoting: I hold the leader key", actions);
            }
            // Row M-1: a planned switchover or failover requested through the `failover` key.
            if let Some(d) = manual_failover_from_leader(o) {
                return d;
            }
            // Row U-h: publish the timeline history after a promotion.
            if let Some(h) = history_to_write(o) {
                actions.push(Action::WriteHistory(h));
            }
            actions.push(Action::EnsureSlots {
                names: wanted_slots(o),
            });
            decision(
                format!("no action. I am ({}), the leader with the lock", o.me),
                actions,
            )
        }
        Some(l) => {
            // Row H-2.1/1.2: follow the leader.
            let up = leader_member.map(upstream);
            if !in_recovery && paused {
                // Row P-3: no demotion on our own in maintenance mode.
                return decision(
                    format!(
                        "PAUSE: running as primary while {} holds the leader key",
                        l.name
                    ),
                    vec![],
                );
            }
            if !in_recovery {
                // A running primary without the key must stop accepting writes at once.
                return decision(
                    format!("demoting: {} holds the leader key", l.name),
                    vec![Action::Demote { leader: up }],
                );
            }
            if (o.needs_rewind || diverged_from_history(o)) && !paused {
                // Row R-2: demoted earlier (e.g. while etcd was away), now a leader exists.
                if let Some(src) = rewind_source {
                    return rewind_or_reclone(src);
                }
                return decision(
                    format!(
                        "waiting for the leader ({}) to finish promotion before rewinding",
                        l.name
                    ),
                    vec![],
                );
            }
            match up {
                Some(u) => decision(
                    format!(
                        "no action. I am ({}), a secondary, and following a leader ({})",
                        o.me, u.name
                    ),
                    vec![Action::Follow(u)],
                ),
                None => decision(
                    format!("waiting for the member key of the leader ({})", l.name),
                    vec![],
                ),
            }
        }
        // Flow ④ unhealthy cluster: no leader.
        None => {
            if paused {
                // Row P-4: a running primary takes the free key; replicas race only when they
                // are the named candidate of a manual failover.
                if !in_recovery {
                    return decision(
                        "PAUSE: no leader: taking the key as the running primary",
                        vec![Action::AcquireLeaderKey],
                    );
                }
                if let Some(f) =
                    o.cluster.failover.as_ref().filter(|f| {
                        f.value.member.as_deref() == Some(o.me.as_str()) && !o.nofailover
                    })
                {
                    return decision(
                        "PAUSE: manual failover to me",
                        vec![
                            Action::AcquireLeaderKey,
                            Action::ClearFailover { version: f.version },
                            Action::Promote,
                        ],
                    );
                }
                return decision("PAUSE: no leader; not racing in maintenance mode", vec![]);
            }
            let manual = o
                .cluster
                .failover
                .as_ref()
                .filter(|f| !f.value.is_empty() && f.value.scheduled_at.is_none());
            let eligible = match manual {
                // Row M-2: the named candidate takes the key without lag or peer checks.
                Some(f) if f.value.member.as_deref() == Some(o.me.as_str()) => {
                    if o.nofailover {
                        Err("I am not allowed to promote (nofailover)".to_string())
                    } else {
                        Ok(())
                    }
                }
                // Row M-3: another member is the candidate: defer to it while it is reachable
                // and may promote; otherwise race normally, the former leader last.
                Some(f) => {
                    let cand = f.value.member.as_deref();
                    let cand_ok = cand.is_some_and(|c| {
                        o.peers
                            .iter()
                            .any(|p| p.name == c && !p.nofailover && !p.watchdog_failed)
                    });
                    if cand_ok {
                        Err(format!(
                            "manual failover to {}: following a different leader",
                            cand.unwrap_or("?")
                        ))
                    } else if f.value.leader.as_deref() == Some(o.me.as_str())
                        && failover_possible(o)
                    {
                        Err("I was the leader in the requested switchover".into())
                    } else {
                        healthy_enough(o).and_then(|()| healthiest(o))
                    }
                }
                None => healthy_enough(o).and_then(|()| {
                    if o.needs_rewind && failover_possible(o) {
                        // A former primary that crashed or was demoted yields to a healthy replica.
                        return Err(
                            "I was demoted or crashed as primary; a replica takes over".into()
                        );
                    }
                    healthiest(o)
                }),
            };
            match eligible {
                // Row U-2.1/1.1: try to take the key; 2.2: promote if needed (1.4) or persist (1.3).
                Ok(()) => {
                    let mut actions = vec![Action::AcquireLeaderKey];
                    if let Some(f) = manual {
                        actions.push(Action::ClearFailover { version: f.version });
                    }
                    if in_recovery {
                        actions.push(Action::Promote);
                    }
                    decision("no leader: trying to acquire the leader key", actions)
                }
                // Row U-2.1/1.2: not healthy enough: stay a follower of nobody.
                Err(why) => {
                    let actions = if in_recovery {
                        vec![]
                    } else {
                        vec![Action::Demote { leader: None }]
                    };
                    decision(format!("no leader, not racing: {why}"), actions)
                }
            }
        }
    }
}
