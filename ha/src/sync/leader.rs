//! What the leader writes for synchronous replication each cycle, and before a promotion.

use patrol_dcs::{Cluster, ClusterConfig, SynchronousMode};

use super::{current_state, same_names, standby_names, sync_candidates, Readiness, Walsender};
use crate::Action;

/// The leader's synchronous-replication steps of one cycle, with what to log.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncPlan {
    pub actions: Vec<Action>,
    pub notes: Vec<String>,
}

impl SyncPlan {
    fn write(&mut self, leader: &str, voters: &[String], quorum: usize) {
        self.actions.push(Action::WriteSync {
            leader: leader.to_string(),
            voters: voters.to_vec(),
            quorum,
        });
    }

    fn set_names(&mut self, value: String, in_effect: &str, managed: bool) {
        if !managed || value != in_effect {
            self.actions.push(Action::SetSyncStandbyNames(Some(value)));
        }
    }
}

/// What the leader's primary says this cycle, for [`leader_sync_actions`].
pub struct PrimaryView<'a> {
    pub me: &'a str,
    pub cluster: &'a Cluster,
    pub dynamic: &'a ClusterConfig,
    pub walsenders: &'a [Walsender],
    /// `synchronous_standby_names` in effect.
    pub names_in_effect: &'a str,
    /// The agent set `synchronous_standby_names` (else it is the user's own value).
    pub managed: bool,
    pub flush: u64,
    pub readiness: &'a Readiness,
    /// Quorum mode only: the quorum may be changed this cycle (not within `loop_wait` of
    /// becoming leader, so that standbys can connect to the new primary first).
    pub quorum_may_change: bool,
}

impl PrimaryView<'_> {
    /// What PostgreSQL's replication says this cycle (Patroni's `current_state`).
    fn sync_now(&self) -> super::SyncNow {
        let candidates = sync_candidates(self.me, self.cluster, self.walsenders);
        current_state(
            &candidates,
            self.readiness,
            self.names_in_effect,
            self.dynamic,
            self.flush,
        )
    }
}

/// The leader's steps (Patroni's `process_sync_replication`).
pub fn leader_sync_actions(v: &PrimaryView) -> SyncPlan {
    let mut plan = SyncPlan::default();
    match v.dynamic.synchronous_mode() {
        SynchronousMode::Off => {
            // Sync mode turned off: the key goes, the user's own value comes back.
            if let Some(s) = &v.cluster.sync {
                if !s.value.is_empty() {
                    plan.actions.push(Action::DeleteSync);
                    plan.notes.push("Disabled synchronous replication".into());
                }
            }
            if v.managed {
                plan.actions.push(Action::SetSyncStandbyNames(None));
            }
        }
        SynchronousMode::On => multisync(v, &mut plan),
        SynchronousMode::Quorum => {
            if v.quorum_may_change {
                quorum(v, &mut plan)
            }
        }
    }
    plan
}

/// The key's voters as this cycle's writes leave them; `None` while the key has no leader.
fn key_voters(v: &PrimaryView) -> Option<(String, Vec<String>, usize)> {
    let s = v.cluster.sync.as_ref()?;
    let leader = s.value.leader.clone().filter(|l| !l.is_empty())?;
    Some((
        leader,
        s.value.sync_standby.clone(),
        s.value.quorum.max(0) as usize,
    ))
}

/// Mode `on` (Patroni's `_process_multisync_replication`).
fn multisync(v: &PrimaryView, plan: &mut SyncPlan) {
    let now = v.sync_now();
    let picked = now.active.clone();
    let allow_promote = now.confirmed.clone();
    let mut voters = match key_voters(v) {
        None => {
            // Enable explicitly: the key names us with no standby yet.
            plan.write(v.me, &[], 0);
            plan.notes.push("Enabled synchronous replication".into());
            Vec::new()
        }
        Some((leader, _, _)) if !leader.eq_ignore_ascii_case(v.me) => {
            plan.notes.push(format!(
                "Inconsistent state of /sync key detected, leader = {leader} doesn't match {}, updating synchronous replication key",
                v.me
            ));
            plan.write(v.me, &[], 0);
            Vec::new()
        }
        Some((_, voters, _)) => voters,
    };
    if same_names(&picked, &voters) && !same_names(&voters, &allow_promote) {
        plan.notes.push(format!(
            "Inconsistent state between synchronous_standby_names = {allow_promote:?} and /sync = {voters:?} key detected, updating synchronous replication key..."
        ));
        plan.write(v.me, &allow_promote, 0);
        voters = allow_promote.clone();
    }
    let strict = v.dynamic.synchronous_mode_strict();
    let star_wanted = picked.is_empty() && strict;
    if same_names(&picked, &voters)
        && same_names(&voters, &now.sync)
        && now.numsync == picked.len()
        && v.managed
        && (!star_wanted || v.names_in_effect.trim() == "*")
    {
        return;
    }
    // Narrow the key to the standbys both it and PostgreSQL count before PostgreSQL changes.
    let common: Vec<String> = voters
        .iter()
        .filter(|n| allow_promote.iter().any(|a| a.eq_ignore_ascii_case(n)))
        .cloned()
        .collect();
    if !same_names(&common, &voters) {
        plan.notes.push(format!(
            "Updating synchronous privilege temporarily from {voters:?} to {common:?}"
        ));
        plan.write(v.me, &common, 0);
    }
    let names = if star_wanted {
        plan.notes.push("No standbys available!".into());
        vec!["*".to_string()]
    } else {
        picked.clone()
    };
    let value = standby_names(&names, None, false);
    if value != v.names_in_effect || !v.managed {
        plan.notes
            .push(format!("Assigning synchronous standby status to {names:?}"));
    }
    plan.set_names(value, v.names_in_effect, v.managed);
    if !picked.is_empty() && !same_names(&allow_promote, &picked) {
        // PostgreSQL needs a moment to count the new names: look again soon (Patroni waits
        // two seconds in the cycle).
        plan.actions.push(Action::RecheckSoon);
        return;
    }
    if !allow_promote.is_empty() && !same_names(&allow_promote, &common) {
        plan.notes.push(format!(
            "Synchronous standby status assigned to {allow_promote:?}"
        ));
        plan.write(v.me, &allow_promote, 0);
    }
}

/// Quorum mode (Patroni's `_process_quorum_replication` over the quorum resolver).
fn quorum(v: &PrimaryView, plan: &mut SyncPlan) {
    let now = v.sync_now();
    let (leader, voters, quorum) = match key_voters(v) {
        Some(k) => k,
        None => {
            plan.write(v.me, &[], 0);
            plan.notes.push("Enabled synchronous replication".into());
            (v.me.to_string(), Vec::new(), 0)
        }
    };
    let min_sync = usize::from(v.dynamic.synchronous_mode_strict());
    let input = crate::quorum::QuorumInput {
        leader,
        quorum: quorum as i64,
        voters,
        numsync: now.numsync,
        sync: now.sync.clone(),
        numsync_confirmed: now.confirmed.len(),
        active: now.active.clone(),
        sync_wanted: v.dynamic.synchronous_node_count().max(min_sync) as i64,
        leader_wanted: v.me.to_string(),
    };
    let out = crate::quorum::resolve(&input);
    plan.notes.extend(out.warnings);
    let key_before = key_voters(v);
    for t in out.transitions {
        match t {
            crate::quorum::Transition::Quorum {
                leader,
                quorum,
                voters,
            } => {
                // Row Y-1q': a key that lets fewer standbys decide (a voter dropped, a lower
                // quorum) waits until every standby it keeps has flushed what the primary had
                // when `synchronous_standby_names` last changed: commits acknowledged by a
                // standby the names no longer list are then on them too.
                if let Some(behind) =
                    weakening_waits(v, key_before.as_ref(), &leader, &voters, quorum)
                {
                    plan.notes.push(format!(
                        "Not yet setting quorum to {quorum} of {} ({}): waiting for {behind} to flush what the dropped standbys acknowledged",
                        voters.len(),
                        sorted(&voters).join(", ")
                    ));
                    plan.actions.push(Action::RecheckSoon);
                    break;
                }
                plan.notes.push(format!(
                    "Setting leader to {leader}, quorum to {quorum} of {} ({})",
                    voters.len(),
                    sorted(&voters).join(", ")
                ));
                plan.write(&leader, &voters, quorum);
            }
            crate::quorum::Transition::Sync { numsync, names } => {
                plan.notes.push(format!(
                    "Setting synchronous replication to {numsync} of {} ({})",
                    names.len(),
                    sorted(&names).join(", ")
                ));
                let mut num = numsync;
                if num < min_sync {
                    plan.notes.push(format!(
                        "Replication factor {} requested, but {num} synchronous standbys available. Commits will be delayed.",
                        min_sync + 1
                    ));
                    num = min_sync;
                }
                let value = standby_names(&names, Some(num), true);
                plan.set_names(value, v.names_in_effect, v.managed);
                // Row Y-1q': the names drop a standby: what the remaining ones must have
                // flushed is the primary's position once this change is in effect, seen next
                // cycle; no later step of this plan may lean on them before that.
                let lower = |n: &String| n.to_lowercase();
                let kept: Vec<String> = names.iter().map(lower).collect();
                if now.sync.iter().any(|n| !kept.contains(&lower(n))) {
                    plan.actions.push(Action::RecheckSoon);
                    break;
                }
            }
            crate::quorum::Transition::Restart => {
                plan.actions.push(Action::RecheckSoon);
                break;
            }
        }
    }
    // Nothing to change: PostgreSQL still names what the key and the mode ask (after a restart
    // of the agent, or when strict mode was turned on with no standby: `ANY 1 (*)`).
    if plan.actions.is_empty() {
        let num = now.numsync.max(min_sync);
        plan.set_names(
            standby_names(&now.sync, Some(num), true),
            v.names_in_effect,
            v.managed,
        );
    }
}

/// Row Y-1q': for a key write that weakens the key in effect (same leader, and a voter dropped
/// or the quorum lowered), the first voter kept whose walsender has not flushed the primary's
/// position at the last change of `synchronous_standby_names`; `None` when it may be written.
fn weakening_waits(
    v: &PrimaryView,
    before: Option<&(String, Vec<String>, usize)>,
    leader: &str,
    voters: &[String],
    quorum: usize,
) -> Option<String> {
    let (old_leader, old_voters, old_quorum) = before?;
    let same = |a: &String, b: &String| a.eq_ignore_ascii_case(b);
    let dropped = old_voters
        .iter()
        .any(|o| !voters.iter().any(|n| same(o, n)));
    if !old_leader.eq_ignore_ascii_case(leader) || (!dropped && quorum >= *old_quorum) {
        return None;
    }
    let reference = v.readiness.flush_at_change;
    voters
        .iter()
        .find(|n| {
            !v.walsenders.iter().any(|w| {
                w.application_name.eq_ignore_ascii_case(n) && w.lsn.is_some_and(|l| l >= reference)
            })
        })
        .cloned()
}

fn sorted(names: &[String]) -> Vec<String> {
    let mut v = names.to_vec();
    v.sort();
    v
}

/// The steps before promoting (Patroni's `process_sync_replication_prepromote`): outside sync
/// mode the user's own `synchronous_standby_names` comes back; in quorum mode with an active
/// key the new primary keeps waiting for enough of the former voters; otherwise the key names
/// only us and PostgreSQL waits for `*` in strict mode (no commit is acknowledged before a
/// standby has it), for nobody else.
pub fn prepromote_sync_actions(
    me: &str,
    cluster: &Cluster,
    dynamic: &ClusterConfig,
    managed: bool,
) -> Vec<Action> {
    let mode = dynamic.synchronous_mode();
    let min_sync = usize::from(dynamic.synchronous_mode_strict());
    let key = cluster
        .sync
        .as_ref()
        .map(|s| &s.value)
        .filter(|s| !s.is_empty());
    match (mode, key) {
        (SynchronousMode::Off, _) => {
            let mut a = Vec::new();
            if key.is_some() {
                a.push(Action::DeleteSync);
            }
            if managed {
                a.push(Action::SetSyncStandbyNames(None));
            }
            a
        }
        (SynchronousMode::Quorum, Some(k)) => {
            let mut members: Vec<String> = k.leader.iter().cloned().collect();
            members.extend(k.sync_standby.iter().cloned());
            let q = k.quorum.max(0) as usize;
            let mut numsync = members.len().saturating_sub(q + 1);
            if members.iter().any(|m| m.eq_ignore_ascii_case(me)) {
                members.retain(|m| !m.eq_ignore_ascii_case(me));
            } else {
                numsync += 1;
            }
            vec![Action::SetSyncStandbyNames(Some(standby_names(
                &members,
                Some(numsync),
                true,
            )))]
        }
        (mode, _) => vec![
            Action::WriteSync {
                leader: me.to_string(),
                voters: Vec::new(),
                quorum: 0,
            },
            Action::SetSyncStandbyNames(Some(standby_names(
                &[],
                Some(min_sync),
                mode == SynchronousMode::Quorum,
            ))),
        ],
    }
}
