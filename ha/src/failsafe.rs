//! Failsafe mode (Patroni 3.0's `failsafe_mode`, spec 5.14): a primary that cannot reach the
//! DCS stays primary while every member it last knew of agrees, so that an etcd outage does not
//! stop writes in a cluster whose nodes are all fine.
//!
//! - The leader keeps the `failsafe` key: every member's `api_url`, its own included
//!   ([`topology`], written with each leader-key refresh when it changed).
//! - DCS unreachable (row D-2F): a running primary in the key asks every other member of the
//!   key with `POST /failsafe` ([`wants_check`]; the runner does the asking and hands the
//!   answer to `decide` as a [`FailsafeCheck`]). All accepted: it stays primary and holds its
//!   leadership (the lease guard's deadline) until `ttl` after it asked. Anyone refused or did
//!   not answer, or it is not in the key: it demotes, as with failsafe mode off.
//! - A member that accepted follows that leader and does not race for `ttl` after the call,
//!   even once the DCS answers with no leader key (row D-2F', [`FailsafeLeader`]).
//! - The race (row U-2F): a member missing from a non-empty `failsafe` key does not take the
//!   key, and the members of the key are asked besides the cluster's.

use std::time::Duration;

use patrol_dcs::{Cluster, Leader, Member, MemberData, Role, Timing};
use serde_json::{Map, Value};

use crate::Observation;

/// The answer of the members of the `failsafe` key to our `POST /failsafe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailsafeCheck {
    /// We are not in the last `failsafe` key we read (or there is none): nobody was asked.
    NotInKey,
    /// Every other member accepted (or there is no other member).
    Accepted,
    /// These members refused (one running as a primary) or did not answer in time.
    Refused(Vec<String>),
}

/// A leader that called our `POST /failsafe` less than `ttl` ago.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailsafeLeader {
    pub name: String,
    pub conn_url: String,
    pub api_url: String,
    /// The positions of its slots (`slots` of the call): a standby advances its copies of the
    /// permanent slots to them while the DCS is away.
    pub slots: std::collections::BTreeMap<String, u64>,
}

/// Whether this cycle (DCS unreachable, or the leader's refresh failed) must ask the members
/// of the `failsafe` key before deciding: failsafe mode is on, not in maintenance mode, and the
/// local PostgreSQL may be a writable primary.
pub fn wants_check(o: &Observation) -> bool {
    o.dynamic.failsafe_mode() && !o.dynamic.pause() && o.may_be_writable()
}

/// Who to ask: the members of the last `failsafe` key read, other than `me`, with their
/// `api_url`. `None` when `me` is not in it (or there is no key): then nobody is asked and the
/// answer is [`FailsafeCheck::NotInKey`].
pub fn members_to_ask(
    failsafe: Option<&Map<String, Value>>,
    me: &str,
) -> Option<Vec<(String, String)>> {
    let f = failsafe?;
    if !f.contains_key(me) {
        return None;
    }
    Some(
        f.iter()
            .filter(|(name, _)| name.as_str() != me)
            .map(|(name, url)| (name.clone(), url.as_str().unwrap_or_default().to_string()))
            .collect(),
    )
}

/// The `failsafe` key the leader should write, or `None` when failsafe mode is off or the key
/// already says it: every member with an `api_url`, and ourselves (`my_api_url`) even before
/// our member key exists.
pub fn topology(cluster: &Cluster, me: &str, my_api_url: &str) -> Option<Map<String, Value>> {
    let on = cluster
        .config
        .as_ref()
        .is_some_and(|c| c.value.failsafe_mode());
    if !on {
        return None;
    }
    let mut want: Map<String, Value> = cluster
        .members
        .iter()
        .filter(|m| !m.data.api_url.is_empty())
        .map(|m| (m.name.clone(), Value::String(m.data.api_url.clone())))
        .collect();
    want.entry(me.to_string())
        .or_insert_with(|| Value::String(my_api_url.to_string()));
    (cluster.failsafe.as_ref() != Some(&want)).then_some(want)
}

/// How long the loop may wait between two cycles while a failsafe hold is in effect, so that
/// the next `POST /failsafe` round (a DCS read failing after up to `retry_timeout`, the calls
/// up to 2 s) renews the hold before the lease guard's margin (`retry_timeout`) is reached:
/// `loop_wait`, or less when `ttl` is short for it; at least 1 s.
pub fn hold_wait(t: Timing) -> Duration {
    let budget = t
        .ttl
        .saturating_sub(2 * t.retry_timeout)
        .saturating_sub(3)
        .max(1);
    Duration::from_secs(t.loop_wait.min(budget).max(1))
}

/// Row D-2F': the cluster as a member that a failsafe leader called less than `ttl` ago sees
/// it when the DCS has no leader key: with that leader in it, so that it keeps following and
/// does not race (Patroni's `Failsafe.update_cluster`). `None` when nothing changes.
pub(crate) fn with_failsafe_leader(o: &Observation, cluster: &Cluster) -> Option<Cluster> {
    let l = o.failsafe_leader.as_ref()?;
    if cluster.leader.is_some() || !o.dynamic.failsafe_mode() || l.name == o.me {
        return None;
    }
    let mut c = cluster.clone();
    c.leader = Some(Leader {
        name: l.name.clone(),
        version: 0,
        session: 0,
    });
    if c.member(&l.name).is_none() {
        let data = MemberData::new(
            l.conn_url.clone(),
            l.api_url.clone(),
            "running",
            Role::Primary,
            "",
        );
        c.members.push(Member {
            name: l.name.clone(),
            version: 0,
            session: 0,
            data,
        });
        c.members.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Some(c)
}

/// Row U-2F: failsafe mode on and a non-empty `failsafe` key that does not name us: we may
/// not take the leader key (the members that held the cluster through an outage know nothing
/// of us).
pub(crate) fn excluded_from_race(o: &Observation, cluster: &Cluster) -> bool {
    excluded(o, cluster, &o.me)
}

/// Row U-2F for any member: failsafe mode on and a non-empty `failsafe` key that does not name
/// `name` (such a member can take over from nobody).
pub(crate) fn excluded(o: &Observation, cluster: &Cluster, name: &str) -> bool {
    o.dynamic.failsafe_mode()
        && cluster
            .failsafe
            .as_ref()
            .is_some_and(|f| !f.is_empty() && !f.contains_key(name))
}
