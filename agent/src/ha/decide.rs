//! The HA decision: a pure function from one `Observation` to the `Action`s of this cycle.
//! No IO, no clock: `now` is part of the observation. Each branch cites the row of
//! `docs/ha-decision-table.md` it implements.

use std::time::Duration;

use patrol_dcs::{Cluster, ClusterConfig, Member};

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
    /// Member name the standby is configured to follow (as last written by us).
    pub following: Option<String>,
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
    Start,
    Promote,
    Demote,
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
    /// Time until our lease deadline (None: no acknowledged lease).
    pub lease_left: Option<Duration>,
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
    /// Stop PostgreSQL (immediate) and restart it as a standby of `leader`.
    Demote {
        leader: Option<Upstream>,
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
/// last known leader position.
fn healthy_enough(o: &Observation) -> Result<(), String> {
    if o.nofailover {
        return Err("I am not allowed to promote (nofailover)".into());
    }
    if !o.local.running {
        return Err("PostgreSQL is not running".into());
    }
    if o.local.in_recovery == Some(true) {
        if let (Some(optime), Some(pos)) = (o.cluster.status.optime, o.local.wal_position) {
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

    // Row S-2.9/1.9: PostgreSQL not running: start it in the right role.
    if !o.local.running {
        if i_am_leader {
            return decision(
                "starting PostgreSQL as primary (I hold the leader key)",
                vec![Action::RefreshLeaderKey, Action::Start { standby_of: None }],
            );
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
                actions.push(Action::Promote);
                return decision("promoting: I hold the leader key", actions);
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
            if !in_recovery {
                // A running primary without the key must stop accepting writes at once.
                return decision(
                    format!("demoting: {} holds the leader key", l.name),
                    vec![Action::Demote { leader: up }],
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
            if o.cluster.is_paused() {
                return decision("PAUSE: no leader; not racing in maintenance mode", vec![]);
            }
            match healthy_enough(o) {
                // Row U-2.1/1.1: try to take the key; 2.2: promote if needed (1.4) or persist (1.3).
                Ok(()) => {
                    let mut actions = vec![Action::AcquireLeaderKey];
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
