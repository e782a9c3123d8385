//! Synchronous replication's pure rules (spec 5.7): which members may be synchronous standbys
//! and in what order, which of them PostgreSQL confirms, and what the leader writes to the
//! `sync` key and to `synchronous_standby_names`, in the order that keeps every standby the key
//! names synchronous in PostgreSQL (widen PostgreSQL's set before the key, narrow the key
//! before PostgreSQL).

mod leader;
mod names;

use std::collections::BTreeMap;

use patrol_dcs::{Cluster, ClusterConfig, SyncState, SynchronousMode};

pub use leader::{leader_sync_actions, prepromote_sync_actions, PrimaryView, SyncPlan};
pub use names::{parse_standby_names, quote_standby_name, standby_names, ParsedNames};

/// One walsender of the local primary (`pg_stat_replication`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Walsender {
    pub pid: i32,
    pub application_name: String,
    /// `async`, `potential`, `sync` or `quorum`.
    pub sync_state: String,
    /// The position the standby confirmed as `synchronous_commit` counts it (write, flush or
    /// replay); `None` while it is not streaming.
    pub lsn: Option<u64>,
}

/// A member as the leader sees it when choosing synchronous standbys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncCandidate {
    pub name: String,
    pub pid: i32,
    /// `sync_priority` (> 0: `nosync` members are never candidates).
    pub sync_priority: i64,
    pub nofailover: bool,
    /// `sync_state` of its walsender.
    pub sync_state: String,
    /// The position it confirmed (write, flush or replay as `synchronous_commit` asks).
    pub lsn: u64,
}

fn state_rank(s: &str) -> u8 {
    match s {
        "sync" => 3,
        "quorum" => 2,
        "potential" => 1,
        _ => 0,
    }
}

fn lower(s: &str) -> String {
    s.to_lowercase()
}

/// The members that may be synchronous standbys, best first: running members (their key says
/// so) other than `me`, not `nosync`, that stream from us now (a walsender with a position,
/// matched by `application_name` case-insensitively) and are not meant to cascade from another
/// standby (`replicatefrom`). Ordered by `sync_priority`, then those PostgreSQL already counts
/// as synchronous (no churn), then the most advanced, then by name; `nofailover` members last.
pub fn sync_candidates(
    me: &str,
    cluster: &Cluster,
    walsenders: &[Walsender],
) -> Vec<SyncCandidate> {
    let eligible: BTreeMap<String, &patrol_dcs::Member> = cluster
        .members
        .iter()
        .filter(|m| {
            m.data.state == "running" && !m.data.nosync() && !m.name.eq_ignore_ascii_case(me)
        })
        .map(|m| (lower(&m.name), m))
        .collect();
    let streaming: BTreeMap<String, &Walsender> = walsenders
        .iter()
        .filter(|w| w.lsn.is_some() && eligible.contains_key(&lower(&w.application_name)))
        .map(|w| (lower(&w.application_name), w))
        .collect();
    let mut out: Vec<SyncCandidate> = streaming
        .iter()
        .filter_map(|(key, w)| {
            let m = eligible.get(key)?;
            if cascades(&eligible, &streaming, m, 0) {
                return None;
            }
            Some(SyncCandidate {
                name: m.name.clone(),
                pid: w.pid,
                sync_priority: m.data.sync_priority(),
                nofailover: m.data.nofailover(),
                sync_state: w.sync_state.clone(),
                lsn: w.lsn.unwrap_or(0),
            })
        })
        .collect();
    out.sort_by(|a, b| {
        a.nofailover
            .cmp(&b.nofailover)
            .then(b.sync_priority.cmp(&a.sync_priority))
            .then(state_rank(&b.sync_state).cmp(&state_rank(&a.sync_state)))
            .then(b.lsn.cmp(&a.lsn))
            .then(a.name.cmp(&b.name))
    });
    out
}

/// Whether `m` is meant to stream from another standby (its `replicatefrom` names an eligible
/// member at the head of a chain that streams from us), as Patroni's `_should_cascade`.
fn cascades(
    eligible: &BTreeMap<String, &patrol_dcs::Member>,
    streaming: &BTreeMap<String, &Walsender>,
    m: &patrol_dcs::Member,
    depth: usize,
) -> bool {
    let Some(upstream) = m.data.replicatefrom() else {
        return false;
    };
    let Some(up) = eligible.get(&lower(&upstream)) else {
        return false;
    };
    if depth > eligible.len() {
        return false; // a loop of replicatefrom tags
    }
    match up.data.replicatefrom() {
        None => streaming.contains_key(&lower(&up.name)),
        Some(_) => cascades(eligible, streaming, up, depth + 1),
    }
}

/// What PostgreSQL's replication says this cycle, as Patroni's `current_state`: `active` the
/// standbys wanted as synchronous (up to `synchronous_node_count` in mode `on`; every eligible
/// one in quorum mode, `nofailover` ones only to fill the count), `confirmed` those of them
/// PostgreSQL counts as synchronous and that caught up since they were named, and the set and
/// number `synchronous_standby_names` names now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncNow {
    pub active: Vec<String>,
    pub confirmed: Vec<String>,
    pub numsync: usize,
    pub sync: Vec<String>,
}

/// Which standbys caught up with the primary's position at the time
/// `synchronous_standby_names` last changed (Patroni's `_ready_replicas`): only then may the
/// `sync` key name them, so a standby named in the key never misses an acknowledged commit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Readiness {
    /// The value in effect when last seen.
    pub names: Option<String>,
    /// The primary's flush position when it changed.
    pub flush_at_change: u64,
    /// Ready standbys (lower-case name) and the walsender pid that proved it.
    pub ready: BTreeMap<String, i32>,
}

impl Readiness {
    /// Learns from this cycle's replication state: a changed value resets the reference
    /// position; a standby named in it becomes ready once its position reaches that reference
    /// and PostgreSQL counts it (`sync`, or `quorum` in quorum mode), or at once when the
    /// `sync` key already names it (mode `on`). A reconnected standby (new walsender) must
    /// prove it again.
    pub fn observe(
        &mut self,
        names_in_effect: &str,
        flush: u64,
        candidates: &[SyncCandidate],
        key: Option<&SyncState>,
        quorum: bool,
    ) {
        let listed = listed(names_in_effect);
        if self.names.as_deref() != Some(names_in_effect) {
            self.names = Some(names_in_effect.to_string());
            self.flush_at_change = flush;
            self.ready.retain(|k, _| listed.contains(k));
        }
        self.ready.retain(|k, pid| {
            candidates
                .iter()
                .any(|c| &lower(&c.name) == k && c.pid == *pid)
        });
        for c in candidates {
            let key_name = lower(&c.name);
            if self.ready.contains_key(&key_name) || !listed.contains(&key_name) {
                continue;
            }
            let ok = if quorum {
                c.lsn >= self.flush_at_change && c.sync_state == "quorum"
            } else {
                key.is_some_and(|k| k.matches(&c.name))
                    || (c.sync_state == "sync" && c.lsn >= self.flush_at_change)
            };
            if ok {
                self.ready.insert(key_name, c.pid);
            }
        }
    }
}

fn listed(names: &str) -> Vec<String> {
    parse_standby_names(names)
        .map(|p| p.members.iter().map(|m| lower(m)).collect())
        .unwrap_or_default()
}

/// Patroni's `current_state`: see [`SyncNow`]. `max_lsn` for `maximum_lag_on_syncnode` is the
/// most advanced candidate's position when there are several, else the primary's `flush`.
pub fn current_state(
    candidates: &[SyncCandidate],
    readiness: &Readiness,
    names_in_effect: &str,
    dynamic: &ClusterConfig,
    flush: u64,
) -> SyncNow {
    let quorum = dynamic.synchronous_mode() == SynchronousMode::Quorum;
    let count = dynamic.synchronous_node_count();
    let max_lag = dynamic.maximum_lag_on_syncnode();
    let max_lsn = if candidates.len() > 1 {
        candidates.iter().map(|c| c.lsn).max().unwrap_or(0)
    } else {
        flush
    };
    let mut now = SyncNow::default();
    for c in candidates {
        if max_lag > 0 && max_lsn.saturating_sub(c.lsn) > max_lag as u64 {
            continue;
        }
        let ready = readiness.ready.contains_key(&lower(&c.name));
        if quorum {
            if !c.nofailover || now.active.len() < count {
                if ready {
                    now.confirmed.push(c.name.clone());
                }
                now.active.push(c.name.clone());
            }
        } else {
            now.active.push(c.name.clone());
            if c.sync_state == "sync" && ready {
                now.confirmed.push(c.name.clone());
            }
            if now.active.len() >= count {
                break;
            }
        }
    }
    let parsed = parse_standby_names(names_in_effect).unwrap_or_default();
    if parsed.has_star() {
        // `*` names no standby in particular (Patroni counts it as none).
        now.numsync = 0;
    } else {
        now.numsync = parsed.num.min(parsed.members.len());
        now.sync = parsed.members;
    }
    now
}

/// Case-insensitive set equality of two name lists.
pub fn same_names(a: &[String], b: &[String]) -> bool {
    let sa: std::collections::BTreeSet<String> = a.iter().map(|s| lower(s)).collect();
    let sb: std::collections::BTreeSet<String> = b.iter().map(|s| lower(s)).collect();
    sa == sb
}
