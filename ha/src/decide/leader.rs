//! The leader's rows: where replicas clone from, the slots it keeps, the history it publishes,
//! and the planned switchovers it carries out (flow ③).

use patrol_dcs::{History, Member};

use super::race::switchover_target_exists;
use super::Reach;
use crate::{decision, Action, Decision};

/// Chooses the member to clone from: a running member tagged `clonefrom` other than the leader
/// (the first by name, deterministic), else the leader (flow ② row 2.1/1.1).
pub(super) fn clone_source<'a>(o: &'a Reach<'a>, leader: &'a Member) -> &'a Member {
    if o.mem.clone_from_leader {
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

/// Slots the leader keeps (spec 5.12, [`crate::slots::member_slots`]): one per other member
/// that streams (with `member_slots_ttl: 0` only those that stream from the leader).
pub(super) fn wanted_slots(o: &Reach) -> Vec<String> {
    crate::slots::member_slots(&crate::slots::MemberSlotsInput {
        cluster: o.cluster,
        dynamic: &o.dynamic,
        me: &o.me,
        leader: true,
        nofailover: false,
        published: &Default::default(),
    })
    .into_keys()
    .collect()
}

/// The history to publish when ours is newer than the DCS's, keeping the timestamps and
/// leader names already stored for older timelines. Never goes backwards.
pub(super) fn history_to_write(o: &Reach) -> Option<History> {
    let local = o.local.history.as_ref()?;
    let last_local = local.lines.last()?;
    let stored_tl = o.cluster.timeline();
    if stored_tl > last_local.timeline {
        return None;
    }
    let mut lines = local.lines.clone();
    // Trimmed first, so that a history stored trimmed compares equal (else it would be
    // written again every cycle).
    let keep = o.dynamic.max_timelines_history();
    if keep > 0 && lines.len() > keep {
        lines.drain(..lines.len() - keep);
    }
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

/// The leader's handling of a `failover` key (Patroni's `process_manual_failover_from_leader`).
/// `None` = nothing to do this cycle.
pub(super) fn manual_failover_from_leader(o: &Reach) -> Option<Decision> {
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
        let loop_ms = o.timing.loop_wait as i64 * 1000;
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
