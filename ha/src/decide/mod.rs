//! The HA decision: a pure function from one `Observation` to the `Action`s of this cycle.
//! No IO, no clock: `now` is part of the observation. Each branch cites the row of
//! `docs/ha-decision-table.md` it implements.

mod leader;
mod race;

use std::ops::Deref;
use std::time::Duration;

use patrol_dcs::{Cluster, Role};

use crate::*;
pub use leader::parse_schedule;
use leader::*;
use race::*;

/// An observation whose DCS answered: `o.cluster` is the cluster read this cycle, every other
/// field is the observation's.
pub(crate) struct Reach<'a> {
    o: &'a Observation,
    cluster: &'a Cluster,
}

impl Deref for Reach<'_> {
    type Target = Observation;

    fn deref(&self) -> &Observation {
        self.o
    }
}

/// The decision for one cycle.
pub fn decide(o: &Observation) -> Decision {
    // Row SC-4: in a standby cluster nobody writes, and a standby leader is no rewind source:
    // a data directory that was a primary (adopted into a new standby cluster, demoted by
    // `demote-cluster`) follows without waiting for a rewind that cannot come.
    let standby_cluster;
    let o = if o.mem.needs_rewind && o.dynamic.is_standby_cluster() {
        let mut c = o.clone();
        c.mem.needs_rewind = false;
        standby_cluster = c;
        &standby_cluster
    } else {
        o
    };
    let d = match &o.dcs {
        DcsView::Reachable(cluster) => {
            let d = match crate::failsafe::with_failsafe_leader(o, cluster) {
                Some(cluster) => decide_reachable(&Reach {
                    o,
                    cluster: &cluster,
                }),
                None => decide_reachable(&Reach { o, cluster }),
            };
            config_duty(cluster, d)
        }
        DcsView::Unreachable => offline(o),
    };
    watchdog_duties(o, d)
}

/// Rows W-2 and W-3: the watchdog is armed exactly while this node leads outside maintenance
/// mode, i.e. while the decision takes or keeps the leader key (or finishes a bootstrap, which
/// takes it) and gives up neither the key nor PostgreSQL. It is armed right after the key is
/// taken or refreshed and before a promotion (before the key is taken at the end of a
/// bootstrap), and disarmed after the steps that end the leadership (the demotion has stopped
/// PostgreSQL, the key is released), as Patroni disables it once PostgreSQL is stopped. A node
/// that exits disarms first. A planned switchover keeps it until the key is released. A failsafe
/// hold (row D-2F) leads without the DCS: the watchdog stays armed and is fed. The standby
/// leader of a standby cluster (row SC-1) runs no primary: no watchdog, as Patroni.
fn watchdog_duties(o: &Observation, mut d: Decision) -> Decision {
    let wd = o.watchdog;
    let has = |d: &Decision, f: fn(&Action) -> bool| d.actions.iter().any(f);
    let exits = has(&d, |a| {
        matches!(a, Action::Fatal { .. } | Action::AbortBootstrap { .. })
    });
    let leads = !o.dynamic.pause()
        && !o.dynamic.is_standby_cluster()
        && !exits
        && has(&d, |a| {
            matches!(
                a,
                Action::AcquireLeaderKey
                    | Action::RefreshLeaderKey
                    | Action::HoldAsFailsafe
                    | Action::FinishBootstrap { .. }
            )
        })
        && !has(&d, |a| {
            matches!(a, Action::ReleaseLeaderKey | Action::Demote { .. })
        });
    if leads && wd.enabled && !wd.armed && o.in_flight != Some(Task::Demote) {
        let at = d
            .actions
            .iter()
            .position(|a| matches!(a, Action::FinishBootstrap { .. }))
            .or_else(|| {
                d.actions
                    .iter()
                    .position(|a| {
                        matches!(
                            a,
                            Action::AcquireLeaderKey
                                | Action::RefreshLeaderKey
                                | Action::HoldAsFailsafe
                        )
                    })
                    .map(|i| i + 1)
            })
            .unwrap_or(0);
        d.actions.insert(at, Action::ArmWatchdog);
    } else if !leads && wd.armed {
        if exits {
            d.actions.insert(0, Action::DisarmWatchdog);
        } else {
            d.actions.push(Action::DisarmWatchdog);
        }
    }
    d
}

/// Row H-1.6: a leader that finds no `config` key (it adopted an existing data directory, or
/// the DCS was wiped) writes the dynamic configuration in effect, right after taking or
/// refreshing the key, as Patroni does. Not while the key holds something unreadable (that is
/// reported, not overwritten).
fn config_duty(cluster: &Cluster, mut d: Decision) -> Decision {
    if cluster.config.is_some() || cluster.config_unreadable.is_some() {
        return d;
    }
    let at = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::AcquireLeaderKey | Action::RefreshLeaderKey));
    let gives_up = d
        .actions
        .iter()
        .any(|a| matches!(a, Action::ReleaseLeaderKey | Action::Demote { .. }));
    if let (Some(at), false) = (at, gives_up) {
        d.actions.insert(at + 1, Action::WriteConfig);
    }
    d
}

/// Row D-2: the DCS is unreachable. A PostgreSQL that may be a writable primary cannot prove
/// its lease: it steps down at once, before the lease can expire (spec 5.4, Patroni's
/// `demote('offline')`), and restarts read-only following nobody; in maintenance mode nothing
/// is stopped; others wait.
///
/// Row D-2F, failsafe mode on: the primary stays primary while every member of the `failsafe`
/// key accepts its `POST /failsafe` ([`crate::failsafe`]); it demotes as above when one
/// refuses or does not answer, or when it is not in the key.
fn offline(o: &Observation) -> Decision {
    use crate::failsafe::FailsafeCheck;
    if !o.may_be_writable() {
        return decision("DCS is not accessible", vec![]);
    }
    if o.dynamic.pause() {
        return decision(
            "DCS is not accessible: continuing to run as primary in maintenance mode",
            vec![],
        );
    }
    let why = match &o.failsafe_check {
        Some(FailsafeCheck::Accepted) if o.dynamic.failsafe_mode() => {
            return decision(
                "continue to run as a leader because failsafe mode is enabled and all members are accessible",
                vec![Action::HoldAsFailsafe],
            );
        }
        Some(FailsafeCheck::Refused(names)) => {
            format!(" (failsafe mode: {} did not accept)", names.join(", "))
        }
        Some(FailsafeCheck::NotInKey) => " (failsafe mode: not in the failsafe key)".to_string(),
        _ => String::new(),
    };
    decision(
        format!("demoted self because DCS is not accessible and I was a leader{why}"),
        vec![Action::Demote { leader: None }],
    )
}

/// The answer to a [`Setback`] met while executing this cycle's actions.
/// - Row D-1/H-1.3: the leader-key transaction says the key is not ours: a PostgreSQL that may
///   be a writable primary stops at once (immediate, marked for a rewind; no restart until the
///   next cycle knows whom to follow), except in maintenance mode, as Patroni.
/// - Row D-2: etcd did not answer a call the leader needs: as [`decide`] with the DCS
///   unreachable.
/// - Row W-4: `watchdog.mode: required` and the watchdog could not be armed: the node does not
///   lead without it (Patroni's "watchdog could not be activated"): a bootstrap is aborted, a
///   PostgreSQL that may be a writable primary stops at once and the key is released, a
///   replica about to be promoted releases the key.
pub fn after_setback(o: &Observation, s: &Setback) -> Decision {
    let d = match s {
        Setback::WatchdogUnavailable if o.mem.bootstrapping => decision(
            "Cancelling bootstrap because watchdog activation failed",
            vec![Action::AbortBootstrap {
                reason: "watchdog activation failed".into(),
            }],
        ),
        Setback::WatchdogUnavailable if o.may_be_writable() => decision(
            "Demoting self because watchdog could not be activated",
            vec![Action::Demote { leader: None }, Action::ReleaseLeaderKey],
        ),
        Setback::WatchdogUnavailable => decision(
            "Not promoting self because watchdog could not be activated",
            vec![Action::ReleaseLeaderKey],
        ),
        Setback::DcsUnreachable => offline(o),
        Setback::KeyNotOurs if !o.may_be_writable() => decision("lost the leader key", vec![]),
        Setback::KeyNotOurs if o.dynamic.pause() => decision(
            "continue to run as primary after failing to update leader lock in DCS",
            vec![],
        ),
        Setback::KeyNotOurs => decision(
            "demoting self because failed to update leader lock in DCS",
            vec![Action::Demote {
                leader: o
                    .cluster()
                    .and_then(|c| c.leader_member())
                    .map(Upstream::of),
            }],
        ),
    };
    watchdog_duties(o, d)
}

fn decide_reachable(o: &Reach) -> Decision {
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

    // Row SC-B: the clone that was to make a standby cluster's first member failed.
    if let Some(TaskResult::Failed(Task::Clone, why)) = &o.last_result {
        if o.mem.bootstrapping {
            return decision(
                format!("bootstrap of the standby leader failed: {why}"),
                vec![Action::AbortBootstrap {
                    reason: why.clone(),
                }],
            );
        }
    }

    // Row PP-1: the pre-promote script failed, so PostgreSQL was not promoted: the lock holder
    // gives the key up and stays out of leader races for `ttl`, as Patroni ("Releasing the
    // leader key voluntarily because the pre-promote script failed"). A PostgreSQL that may be
    // writable anyway (promoted by hand meanwhile) keeps the key: releasing it would let a
    // second primary appear beside it.
    if let Some(TaskResult::PrePromoteFailed(why)) = &o.last_result {
        if i_am_leader && !o.may_be_writable() {
            return decision(
                format!("Promotion cancelled because the pre-promote script failed ({why})"),
                vec![
                    Action::SkipRacesUntil(o.now + Duration::from_secs(o.timing.ttl)),
                    Action::ReleaseLeaderKey,
                ],
            );
        }
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
                    leader: leader_member.map(Upstream::of),
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
                // Row B-2.1: the cluster has a leader: clone from a member (1.1) with the
                // replica creation methods (1.2).
                let src = clone_source(o, l);
                return decision(
                    format!("cloning from {}", src.name),
                    vec![Action::CreateReplica {
                        from: Some(Upstream::of(src)),
                        basebackup_only: o.mem.clone_from_leader,
                    }],
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
            let waiting = if o.dynamic.is_standby_cluster() {
                "waiting for standby_leader to bootstrap"
            } else {
                "waiting for leader to bootstrap"
            };
            match &o.cluster.initialize {
                // Row SC-B: the first member of a standby cluster clones the remote source
                // (with `standby_cluster.create_replica_methods`) and becomes its standby
                // leader.
                None if o.can_bootstrap && !o.nofailover && remote_source(o).is_some() => decision(
                    "trying to bootstrap a new standby leader",
                    vec![
                        Action::RaceInitialize,
                        Action::CreateReplica {
                            from: remote_source(o),
                            basebackup_only: false,
                        },
                    ],
                ),
                // Row B-2.2/1.4: nobody initialized the cluster: race for `initialize`.
                None if o.can_bootstrap && !o.nofailover => decision(
                    "trying to bootstrap a new cluster",
                    vec![Action::RaceInitialize, Action::Bootstrap],
                ),
                // Row B-2.2/1.3: a bootstrap is under way: wait for the leader key.
                Some(i) if i.is_empty() => decision(waiting, vec![]),
                // Row B-2.3: no leader, but a `no_leader` method can create the replica (from
                // a backup).
                _ if o.replica_without_leader => decision(
                    "bootstrap (without leader)",
                    vec![Action::CreateReplica {
                        from: None,
                        basebackup_only: false,
                    }],
                ),
                None => decision(
                    "waiting for leader to bootstrap (this node may not bootstrap)",
                    vec![],
                ),
                // Row B-2.2/1.3: the cluster was bootstrapped: wait for the leader key.
                Some(_) => decision(waiting, vec![]),
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

pub(super) fn decide_with_data(o: &Reach, sysid: &str) -> Decision {
    let leader = o.cluster.leader.as_ref();
    let i_am_leader = leader.is_some_and(|l| l.name == o.me);
    let leader_member = o.cluster.leader_member();

    // Row B-1.7/1.9: bootstrap finished in this process: publish it.
    if o.mem.bootstrapping {
        // Row SC-B: the standby leader's clone runs as a standby of the remote source.
        let ready = if o.dynamic.is_standby_cluster() {
            Some(true)
        } else {
            Some(false)
        };
        if o.local.running && o.local.in_recovery == ready {
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
        let wanted = if ready == Some(true) {
            "a standby of the remote source"
        } else {
            "primary"
        };
        return decision(
            format!("bootstrap finished but PostgreSQL is not running as {wanted}"),
            vec![Action::AbortBootstrap {
                reason: format!("PostgreSQL is not running as {wanted} after bootstrap"),
            }],
        );
    }

    // Row R-4: a rewind failed (it left PostgreSQL stopped); with
    // `remove_data_directory_on_rewind_failure` the data directory is removed and cloned
    // again, else the member stays down (`rewind_or_reclone`).
    if o.mem.rewind_failed
        && o.remove_data_directory_on_rewind_failure
        && !o.local.running
        && !i_am_leader
        && !o.cluster.is_paused()
    {
        return decision(
            "removing the data directory after the failed rewind; it will be cloned again",
            vec![Action::RemoveDataDirectory {
                reason: "pg_rewind failed".into(),
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
        if o.mem.rewind_failed && o.remove_data_directory_on_rewind_failure {
            return decision(
                "removing the data directory after the failed rewind; it will be cloned again",
                vec![Action::RemoveDataDirectory {
                    reason: "pg_rewind failed".into(),
                }],
            );
        }
        if o.mem.rewind_failed {
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
        .map(Upstream::of);

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
        // Row SC-3: the standby leader's PostgreSQL is started again as a standby of the
        // remote source, never as a primary.
        if let Some(remote) = remote_source(o).filter(|_| i_am_leader) {
            return decision(
                "starting as a standby leader because i had the session lock",
                vec![
                    Action::RefreshLeaderKey,
                    Action::Start {
                        standby_of: Some(Some(remote)),
                    },
                ],
            );
        }
        if i_am_leader {
            // Row C-1 (crash of the leader's PostgreSQL): restart in place, same timeline,
            // unless primary_start_timeout says to fail over (Row C-2).
            let timeout = o.dynamic.primary_start_timeout();
            let expired = o
                .primary_down_for()
                .is_some_and(|d| timeout == 0 || d >= Duration::from_secs(timeout));
            if expired && failover_possible(o) {
                return decision(
                    "removing the leader key: PostgreSQL did not come back within primary_start_timeout",
                    vec![Action::ReleaseLeaderKey],
                );
            }
            // Row C-1': the data directory was a standby when PostgreSQL stopped (its host was
            // lost while it promoted): starting it without recovery would write new WAL on the
            // old timeline, beside what others may have; it starts read-only and is promoted
            // next cycle onto a new timeline, as Patroni ("starting as readonly because i had
            // the session lock").
            let was_standby = matches!(
                &o.local.data,
                DataState::Initialized {
                    cluster_state: ControlState::ShutDownInRecovery
                        | ControlState::InArchiveRecovery,
                    ..
                }
            );
            if was_standby {
                return decision(
                    "starting as readonly because i had the session lock",
                    vec![
                        Action::RefreshLeaderKey,
                        Action::Start {
                            standby_of: Some(None),
                        },
                    ],
                );
            }
            return decision(
                "starting PostgreSQL as primary (I hold the leader key)",
                vec![Action::RefreshLeaderKey, Action::Start { standby_of: None }],
            );
        }
        // Row R-1': a stopped data directory whose WAL went past the end of its timeline in the
        // cluster's history (a demoted primary, or a standby that received from one) cannot
        // start as a standby of the new timeline: rewind it first.
        let past_fork = o
            .local
            .stopped_at
            .is_some_and(|(tl, pos)| went_past_its_fork(o, tl, pos));
        if o.mem.needs_rewind || past_fork {
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
        let up = upstream_of(o, leader_member);
        let reason = match &up {
            Some(u) => format!("starting PostgreSQL as a replica of {}", u.name),
            None if o.nostream => {
                "starting PostgreSQL as a replica without streaming (nostream)".to_string()
            }
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
            if let Some(remote) = remote_source(o) {
                return standby_leader(o, remote, in_recovery);
            }
            if in_recovery {
                if paused {
                    // Row P-2: the lock holder is no longer a primary in maintenance mode.
                    return decision(
                        "PAUSE: I hold the leader key but run as a replica: releasing it",
                        vec![Action::ReleaseLeaderKey],
                    );
                }
                actions.extend(promote(o));
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
            // Row Y-1: synchronous replication, the leader's side.
            let plan = leader_sync(o);
            actions.extend(plan.actions);
            let mut d = decision(
                format!("no action. I am ({}), the leader with the lock", o.me),
                actions,
            );
            d.notes = plan.notes;
            d
        }
        Some(l) => {
            // Row H-2.1/1.2: follow the leader.
            let up = upstream_of(o, leader_member);
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
                    vec![Action::Demote {
                        leader: leader_member.map(Upstream::of),
                    }],
                );
            }
            if (o.mem.needs_rewind || diverged_from_history(o)) && !paused {
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
                    // Row H-1.2: reconfigure only when the leader changed.
                    if o.mem.following.as_deref() == Some(u.name.as_str()) {
                        vec![]
                    } else {
                        vec![Action::Follow(u)]
                    },
                ),
                // Row H-1.2n: a `nostream` member replicates from the archive only.
                None if o.nostream => decision(
                    format!(
                        "no action. I am ({}), a secondary replicating from the archive only (nostream)",
                        o.me
                    ),
                    if o.mem.following.is_some() {
                        vec![Action::Unfollow]
                    } else {
                        vec![]
                    },
                ),
                None => decision(
                    format!("waiting for the member key of the leader ({})", l.name),
                    vec![],
                ),
            }
        }
        // Row PP-1: for `ttl` after giving the key up because the pre-promote script failed,
        // a standby does not race (Patroni's "backoff" in `is_healthiest_node`).
        None if in_recovery && o.mem.no_race_until.is_some_and(|until| o.now < until) => {
            decision(
                "no leader, not racing: backoff: skip leader race after pre_promote script failure and releasing the lock voluntarily",
                vec![],
            )
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
                        [
                            vec![
                                Action::AcquireLeaderKey,
                                Action::ClearFailover { version: f.version },
                            ],
                            take_over(o),
                        ]
                        .concat(),
                    );
                }
                return decision("PAUSE: no leader; not racing in maintenance mode", vec![]);
            }
            let manual = o
                .cluster
                .failover
                .as_ref()
                .filter(|f| !f.value.is_empty() && f.value.scheduled_at.is_none());
            let sync_key = sync_active(o);
            let eligible = match manual {
                // Row Y-3: in synchronous mode only the key's members (and its leader) take
                // part in a switchover.
                Some(f)
                    if f.value.leader.is_some()
                        && sync_key.is_some_and(|k| !k.matches_or_leader(&o.me)) =>
                {
                    Err("I am not a synchronous standby: not taking part in the switchover".into())
                }
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
                // Row Y-3: in mode `on` only the key's members (and its leader) race.
                None if sync_key.is_some_and(|k| {
                    o.dynamic.synchronous_mode() == patrol_dcs::SynchronousMode::On
                        && !k.matches_or_leader(&o.me)
                }) =>
                {
                    Err("I am not a synchronous standby (not in the sync key)".into())
                }
                // Row U-2F: failsafe mode excludes a member the `failsafe` key does not name.
                None if crate::failsafe::excluded_from_race(o, o.cluster) => {
                    Err("I am not in the failsafe key".into())
                }
                None => healthy_enough(o).and_then(|()| {
                    if o.mem.needs_rewind && failover_possible(o) {
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
                        actions.extend(take_over(o));
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

/// Row H-1.2c: the member a standby streams from (none with `nostream`): the one its `replicatefrom` tag names
/// (cascading replication) while that member has a key, else the leader, as Patroni's
/// `_get_node_to_follow`.
fn upstream_of(o: &Reach, leader: Option<&patrol_dcs::Member>) -> Option<Upstream> {
    // Row H-1.2n: `nostream`: no streaming at all.
    if o.nostream {
        return None;
    }
    let cascade = o
        .replicatefrom
        .as_deref()
        .filter(|name| *name != o.me)
        .and_then(|name| o.cluster.member(name));
    cascade.or(leader).map(Upstream::of)
}

/// Row SC-1: the remote source the leader of a standby cluster follows.
fn remote_source(o: &Observation) -> Option<Upstream> {
    o.dynamic.standby_cluster().map(|s| Upstream::remote(&s))
}

/// What a standby that takes the leader key does: promote, or in a standby cluster (row SC-1)
/// follow the remote source as the standby leader.
fn take_over(o: &Reach) -> Vec<Action> {
    match remote_source(o) {
        Some(remote) => vec![Action::Follow(remote)],
        None => promote(o),
    }
}

/// The lock holder of a standby cluster, PostgreSQL running.
/// - Row SC-1: a standby: it is the standby leader: it follows the remote source, keeps the
///   slots of the members that stream from it, carries out a planned switchover like a
///   primary; synchronous replication does not apply.
/// - Row SC-2: a primary (the section was just added: `demote-cluster`): it becomes the standby
///   leader, keeping the key; not in maintenance mode.
fn standby_leader(o: &Reach, remote: Upstream, in_recovery: bool) -> Decision {
    if !in_recovery {
        if o.cluster.is_paused() {
            return decision(
                "PAUSE: running as primary in a standby cluster: not demoting in maintenance mode",
                vec![Action::RefreshLeaderKey],
            );
        }
        return decision(
            format!("demoting to a standby cluster: following {}", remote.name),
            vec![Action::RefreshLeaderKey, Action::DemoteCluster(remote)],
        );
    }
    if let Some(d) = manual_failover_from_leader(o) {
        return d;
    }
    let mut actions = vec![Action::RefreshLeaderKey];
    if o.mem.following.as_deref() != Some(remote.key().as_str()) {
        actions.push(Action::Follow(remote.clone()));
    }
    actions.push(Action::EnsureSlots {
        names: wanted_slots(o),
    });
    decision(
        format!(
            "no action. I am ({}), the standby leader with the lock, following {}",
            o.me, remote.name
        ),
        actions,
    )
}

/// Row Y-2: a promotion, after the synchronous-replication steps that must precede it.
fn promote(o: &Reach) -> Vec<Action> {
    let mut a =
        crate::sync::prepromote_sync_actions(&o.me, o.cluster, &o.dynamic, o.sync_names_managed);
    a.push(Action::Promote);
    a
}

/// Row Y-1: the leader's synchronous-replication steps this cycle.
fn leader_sync(o: &Reach) -> crate::sync::SyncPlan {
    let (Some(names), Some(flush)) = (&o.local.standby_names, o.local.wal_position) else {
        return Default::default();
    };
    let since = o.mem.leading_since.unwrap_or(o.now);
    let led_for = o.now.saturating_sub(since);
    let view = crate::sync::PrimaryView {
        me: &o.me,
        cluster: o.cluster,
        dynamic: &o.dynamic,
        walsenders: &o.local.walsenders,
        names_in_effect: names,
        managed: o.sync_names_managed,
        flush,
        readiness: &o.mem.sync_ready,
        quorum_may_change: led_for.is_zero() || led_for > Duration::from_secs(o.timing.loop_wait),
    };
    crate::sync::leader_sync_actions(&view)
}

/// The `sync` key when synchronous replication is asked for and active (it names a leader):
/// then only its members may be promoted automatically (spec 5.5, 5.7).
pub(super) fn sync_active<'a>(o: &'a Reach) -> Option<&'a patrol_dcs::SyncState> {
    if o.dynamic.synchronous_mode() == patrol_dcs::SynchronousMode::Off {
        return None;
    }
    o.cluster
        .sync
        .as_ref()
        .map(|s| &s.value)
        .filter(|s| !s.is_empty())
}
