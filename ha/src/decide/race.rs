//! The leader race (flow ④): who may take a free leader key.

use patrol_dcs::Role;

use super::Reach;

/// Whether this node may take the leader key when the cluster has none (flow ④ row 2.1):
/// running, not `nofailover`, and not lagging more than `maximum_lag_on_failover` behind the
/// last known leader position, on the cluster's timeline when `check_timeline`.
pub(super) fn healthy_enough(o: &Reach) -> Result<(), String> {
    if o.nofailover {
        return Err("I am not allowed to promote (nofailover)".into());
    }
    if !o.local.running {
        return Err("PostgreSQL is not running".into());
    }
    // Row W-1: with `watchdog.mode: required` a node whose watchdog cannot work does not race.
    if o.watchdog.failed {
        return Err("Watchdog device is not usable".into());
    }
    // Row U-3 (Patroni's guard against a stale primary, its PR #2787): a running primary, or a
    // former primary that still needs a rewind, whose timeline is behind the cluster's history
    // missed a promotion while it was away (frozen, partitioned). Taking the key would serve
    // writes on the abandoned timeline and throw away the new leader's; it must rewind and
    // follow instead. Unconditional, unlike the replicas' `check_timeline`.
    if o.local.in_recovery == Some(false) || o.mem.needs_rewind {
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
///
/// Row Y-3, synchronous replication active: only the `sync` key's members and its leader are
/// compared; the former leader being ahead or of a higher priority does not disqualify us. In
/// quorum mode a voter that is not ahead is a vote (a `nofailover` voter too), and we need
/// `quorum` votes (counting ourselves when we are a voter), unless nobody is ahead and we are
/// the key's leader.
pub(super) fn healthiest(o: &Reach) -> Result<(), String> {
    let my_pos = o.local.effective_position().unwrap_or(0);
    let my_replay = o.local.replay_position.unwrap_or(my_pos);
    let key = super::sync_active(o);
    let quorum =
        key.filter(|_| o.dynamic.synchronous_mode() == patrol_dcs::SynchronousMode::Quorum);
    let voter = |name: &str| quorum.is_some_and(|k| k.matches(name));
    let former_leader = |name: &str| {
        key.and_then(|k| k.leader.as_deref())
            .is_some_and(|l| l.eq_ignore_ascii_case(name))
    };
    let mut votes: i64 = if voter(&o.me) { 0 } else { -1 };
    let mut ahead = 0;
    for p in o.peers.iter().filter(|p| p.name != o.me) {
        if key.is_some_and(|k| !k.matches_or_leader(&p.name)) {
            continue;
        }
        if p.primary {
            return Err(format!("Primary ({}) is still alive", p.name));
        }
        if (p.nofailover && !voter(&p.name)) || p.watchdog_failed {
            continue;
        }
        // Row U-3: a peer whose WAL went on past the end of its timeline in the cluster's
        // history holds writes the cluster abandoned (a stale primary, demoted). It can never
        // lead, and its position is no measure of what the cluster kept.
        if went_past_its_fork(o, p.timeline, p.effective_position()) {
            continue;
        }
        // Row U-tl: across timelines positions do not compare. A peer on a newer timeline holds
        // WAL of a promotion we never saw (commits its standbys may have acknowledged): it is
        // ahead whatever its position; one on an older timeline is not, its WAL past our fork
        // being abandoned.
        let my_tl = o.local.timeline.unwrap_or(0);
        let newer = my_tl > 0 && p.timeline > my_tl;
        let older = p.timeline > 0 && my_tl > p.timeline;
        let pos = p.effective_position();
        if newer || (pos > my_pos && !older) {
            ahead += 1;
            if key.is_some() && former_leader(&p.name) {
                continue; // the former leader may still be reachable and ahead of us
            }
            return Err(if newer {
                format!(
                    "Timeline {} of {} is ahead of my timeline {my_tl}",
                    p.timeline, p.name
                )
            } else {
                format!("Wal position of {} is ahead of my wal position", p.name)
            });
        }
        if pos == 0 {
            continue; // only a running PostgreSQL votes
        }
        let counts = quorum.is_none() || voter(&p.name);
        if pos == my_pos && p.replay_position > my_replay && counts && !p.nofailover {
            return Err(format!("{} has replayed more of the same WAL", p.name));
        }
        if pos == my_pos
            && p.replay_position == my_replay
            && p.failover_priority > o.failover_priority
            && !former_leader(&p.name)
            && counts
            && !p.nofailover
        {
            return Err(format!(
                "{} has equally tolerable WAL position and priority {}, while this node has priority {}",
                p.name, p.failover_priority, o.failover_priority
            ));
        }
        if voter(&p.name) {
            votes += 1;
        }
    }
    if let Some(k) = quorum {
        let needed = k.quorum;
        let former = k
            .leader
            .as_deref()
            .is_some_and(|l| l.eq_ignore_ascii_case(&o.me));
        if votes < needed && !(ahead == 0 && former) {
            return Err(format!(
                "Quorum requirement {needed} can not be reached: {votes} votes"
            ));
        }
    }
    Ok(())
}

/// Whether WAL at `pos` on timeline `tl` lies past the point where the cluster's history
/// says `tl` ended (a branch the cluster abandoned).
pub(super) fn went_past_its_fork(o: &Reach, tl: u64, pos: u64) -> bool {
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
pub(super) fn diverged_from_history(o: &Reach) -> bool {
    let (Some(tl), Some(pos), Some(h)) =
        (o.local.timeline, o.local.wal_position, &o.cluster.history)
    else {
        return false;
    };
    if o.local.in_recovery != Some(true) {
        return false;
    }
    // Row R-2': our own history forked from the cluster's at another point (we followed a
    // primary whose timeline the cluster abandoned, and a later leader reused its number).
    let forked = o.local.switches.iter().any(|&(stl, slsn)| {
        h.lines
            .iter()
            .find(|l| l.timeline == stl)
            .is_some_and(|l| l.lsn != slsn && pos > l.lsn.min(slsn))
    });
    forked
        || h.lines
            .iter()
            .find(|l| l.timeline == tl)
            .is_some_and(|l| pos > l.lsn)
}

/// Another member could take over (Patroni's `is_failover_possible`, from member keys).
pub(super) fn failover_possible(o: &Reach) -> bool {
    switchover_target_exists(o, None)
}

/// A member that can take over (Patroni's `is_failover_possible` from member keys): a running
/// replica that may fail over, within `maximum_lag_on_failover`, not on a timeline the
/// cluster's history has left behind (Row U-3 would keep it from racing), and the named
/// candidate if there is one.
///
/// Row U-2F: a member missing from a non-empty `failsafe` key (failsafe mode) does not count.
///
/// Row Y-3: with synchronous replication active only the `sync` key's members count, except for
/// a failover (a `failover` key without a leader); in quorum mode, unless a candidate is named,
/// `quorum + 1` of them must be possible.
pub(super) fn switchover_target_exists(o: &Reach, candidate: Option<&str>) -> bool {
    let max = o.dynamic.maximum_lag_on_failover();
    let cluster_tl = o.cluster.timeline();
    let key = super::sync_active(o);
    let plain_failover = o
        .cluster
        .failover
        .as_ref()
        .is_some_and(|f| !f.value.is_empty() && f.value.leader.is_none());
    let possible = o.cluster.members.iter().filter(|m| {
        (key.is_none() || plain_failover || key.is_some_and(|k| k.matches(&m.name)))
            && m.name != o.me
            && !crate::failsafe::excluded(o, o.cluster, &m.name)
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
    });
    let n = possible.count();
    match key.filter(|_| o.dynamic.synchronous_mode() == patrol_dcs::SynchronousMode::Quorum) {
        Some(k) if candidate.is_none() => n as i64 > k.quorum,
        _ => n > 0,
    }
}
