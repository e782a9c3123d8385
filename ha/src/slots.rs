//! Retention of the members' physical replication slots on the leader (Patroni 4's
//! `member_slots_ttl`, spec 5.12). Pure: the runner keeps a [`SlotRetention`] and asks it each
//! leader cycle which slots to keep and which to drop.
//!
//! A member's slot is kept while the member has a key, and for `member_slots_ttl` (default
//! 30 min; 0 = not at all) after it was last seen, so a replica that restarts or is rebuilt
//! finds its WAL still there; after that the slot is dropped, so a removed or long-dead member
//! no longer holds WAL until the leader's disk is full. The names kept are published in
//! `status.retain_slots`, as Patroni does, and a new leader starts their clock again from there.
//!
//! Only slots known as member slots (a member's, or listed in `retain_slots`) are ever dropped:
//! never a live member's, never one named in the dynamic `slots` (permanent slots), never any
//! other slot (a logical slot of a CDC tool, a slot made by hand). That is a deliberate
//! difference: Patroni drops every slot it does not know unless `ignore_slots` names it.

use std::collections::{BTreeMap, BTreeSet};

use patrol_dcs::{seconds_with_unit, slot_name_from_member_name, Cluster, ClusterConfig};
use serde_json::Value;

/// Patroni's default `member_slots_ttl`: 30 minutes.
pub const DEFAULT_MEMBER_SLOTS_TTL_MS: i64 = 30 * 60 * 1000;

/// `member_slots_ttl` in milliseconds: seconds, or a value with a unit (`30min`, `1h`) as
/// Patroni's validator reads it ([`seconds_with_unit`]). Garbage, a negative value or one too
/// large to be a time gives the default.
pub fn member_slots_ttl_ms(dynamic: &ClusterConfig) -> i64 {
    dynamic
        .data
        .get("member_slots_ttl")
        .filter(|v| !v.is_null())
        .and_then(seconds_with_unit)
        .filter(|s| *s >= 0)
        .and_then(|s| s.checked_mul(1000))
        .unwrap_or(DEFAULT_MEMBER_SLOTS_TTL_MS)
}

/// The permanent slot names of the dynamic config (`slots`), which are never dropped here.
pub fn permanent_slot_names(dynamic: &ClusterConfig) -> BTreeSet<String> {
    dynamic
        .data
        .get("slots")
        .and_then(Value::as_object)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// What the leader keeps and drops this cycle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retention {
    /// For `status.retain_slots`: the member slots kept (sorted).
    pub retain: Vec<String>,
    /// Slots whose member has been gone longer than `member_slots_ttl`: drop them if they
    /// exist and nothing streams from them.
    pub expired: Vec<String>,
}

/// When each member slot was last seen with a member behind it (epoch ms).
#[derive(Debug, Clone, Default)]
pub struct SlotRetention {
    last_seen: BTreeMap<String, i64>,
    /// `status.retain_slots` was read once: later reads are our own writes, one cycle old, and
    /// must not bring back names that just expired.
    seeded: bool,
}

impl SlotRetention {
    /// `members`: the slot names of the members with a key now (ours included); `published`:
    /// `status.retain_slots` as read from the DCS; `permanent`: never dropped.
    pub fn update(
        &mut self,
        members: &BTreeSet<String>,
        published: &[String],
        permanent: &BTreeSet<String>,
        now_ms: i64,
        ttl_ms: i64,
    ) -> Retention {
        if !self.seeded {
            // Written by an earlier leader: the clock of each name starts now.
            for name in published {
                self.last_seen.entry(name.clone()).or_insert(now_ms);
            }
            self.seeded = true;
        }
        for name in members {
            self.last_seen.insert(name.clone(), now_ms);
        }
        let mut expired = Vec::new();
        self.last_seen.retain(|name, seen| {
            let keep = members.contains(name)
                || permanent.contains(name)
                || seen.saturating_add(ttl_ms) > now_ms;
            if !keep {
                expired.push(name.clone());
            }
            keep
        });
        Retention {
            retain: self
                .last_seen
                .keys()
                .filter(|n| !permanent.contains(*n))
                .cloned()
                .collect(),
            expired,
        }
    }
}

/// A member's physical slot this node keeps (Patroni's `Cluster._get_members_slots`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemberSlot {
    /// Where to advance it: the position the leader publishes in `status.slots` or, for a
    /// member that streams from another standby (`replicatefrom`), the later of that and the
    /// member's own `xlog_location`.
    pub lsn: Option<u64>,
    /// `Some(true)`: the member streams from this node, so the slot is left to it. `Some(false)`:
    /// nothing streams from it here, so it is advanced to `lsn` and dropped when it gets an
    /// `xmin` (that xmin would never move and hold the horizon back). `None` (a name kept only
    /// from `status.retain_slots`): advanced when a position is known, never dropped for an xmin.
    pub expected_active: Option<bool>,
}

/// What [`member_slots`] works from.
#[derive(Debug, Clone, Copy)]
pub struct MemberSlotsInput<'a> {
    pub cluster: &'a Cluster,
    pub dynamic: &'a ClusterConfig,
    /// This member's name.
    pub me: &'a str,
    /// This member runs the primary with the leader key.
    pub leader: bool,
    /// This member's `nofailover`.
    pub nofailover: bool,
    /// `status.slots` ([`crate::permanent_slots::published_positions`]), or in failsafe mode
    /// what the leader sent.
    pub published: &'a BTreeMap<String, u64>,
}

/// The members' physical slots this node keeps, by slot name (rows H-1.5, H-1.2m, H-1.2c):
///
/// - Never one for itself, nor for a member tagged `nostream` (it does not stream).
/// - With member slot retention (`member_slots_ttl` > 0, Patroni 4's default): one for every
///   other member, on the leader and on every member that may become leader, so that after a
///   failover the new leader already holds the WAL each member needs. A `nofailover` replica
///   keeps only the slots of the members that stream from it (`replicatefrom` names it). On a
///   replica (and, on the leader, for a member that streams from another standby) nothing
///   streams from the slot: it is advanced to the published position.
/// - Without it (`member_slots_ttl: 0`): the leader keeps the slots of the members that stream
///   from it (no `replicatefrom`, or naming itself or a member that is gone), a replica those of
///   the members whose `replicatefrom` names it (cascading replication).
/// - With retention, a replica that may become leader also keeps the names of `status.retain_slots` (the slots
///   of members gone less than `member_slots_ttl` ago); on the leader, [`SlotRetention`] does.
///
/// One difference from Patroni: its `nofailover` rule applies on the leader too (a leader
/// tagged `nofailover` would drop its replicas' slots); here the leader keeps them.
pub fn member_slots(i: &MemberSlotsInput) -> BTreeMap<String, MemberSlot> {
    let mut out = BTreeMap::new();
    if !i.dynamic.use_slots() {
        return out;
    }
    let c = i.cluster;
    let leader_name = c.leader_name();
    let upstream = |m: &patrol_dcs::Member| m.data.replicatefrom();
    let streams_here = |m: &patrol_dcs::Member| match upstream(m) {
        _ if !i.leader => {
            upstream(m).as_deref() == Some(i.me) && Some(m.name.as_str()) != leader_name
        }
        None => true,
        Some(up) => up == i.me || c.member(&up).is_none(),
    };
    let retention = member_slots_ttl_ms(i.dynamic) > 0;
    for m in c
        .members
        .iter()
        .filter(|m| m.name != i.me && !m.data.nostream())
    {
        let active = streams_here(m);
        let wanted = if retention {
            i.leader || !i.nofailover || upstream(m).as_deref() == Some(i.me)
        } else {
            active
        };
        if !wanted {
            continue;
        }
        let name = slot_name_from_member_name(&m.name);
        let mut lsn = i.published.get(&name).copied().unwrap_or(0);
        if upstream(m).is_some() {
            lsn = lsn.max(m.data.xlog_location.unwrap_or(0));
        }
        out.insert(
            name,
            MemberSlot {
                lsn: (lsn > 0).then_some(lsn),
                expected_active: Some(active),
            },
        );
    }
    if retention && !i.leader && !i.nofailover {
        let mine = slot_name_from_member_name(i.me);
        for name in &c.status.retain_slots {
            if *name != mine && !out.contains_key(name) {
                out.insert(
                    name.clone(),
                    MemberSlot {
                        lsn: i.published.get(name).copied(),
                        expected_active: None,
                    },
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const MIN: i64 = 60_000;

    /// A cluster led by pg0: `members` are (name, tags JSON, xlog_location); `status` the
    /// status key's JSON.
    fn cluster(members: &[(&str, &str, u64)], status: &str) -> Cluster {
        let kv = |key: String, value: String| patrol_dcs::Kv {
            key,
            value,
            mod_revision: 1,
            lease: 0,
        };
        let mut kvs = vec![
            kv("leader".into(), "pg0".into()),
            kv("status".into(), status.into()),
        ];
        for (name, tags, lsn) in members {
            kvs.push(kv(
                format!("members/{name}"),
                format!(
                    r#"{{"conn_url":"postgres://h/postgres","api_url":"http://h/patroni","state":"running","role":"replica","xlog_location":{lsn},"tags":{tags}}}"#
                ),
            ));
        }
        Cluster::from_kvs(10, &kvs)
    }

    fn wanted(
        c: &Cluster,
        dynamic: &serde_json::Value,
        me: &str,
        leader: bool,
        nofailover: bool,
    ) -> Vec<(String, Option<u64>, Option<bool>)> {
        let dynamic = ClusterConfig::from_map(dynamic.as_object().expect("object").clone());
        let published = crate::permanent_slots::published_positions(&c.status.slots);
        member_slots(&MemberSlotsInput {
            cluster: c,
            dynamic: &dynamic,
            me,
            leader,
            nofailover,
            published: &published,
        })
        .into_iter()
        .map(|(n, m)| (n, m.lsn, m.expected_active))
        .collect()
    }

    fn w(
        name: &str,
        lsn: Option<u64>,
        active: Option<bool>,
    ) -> (String, Option<u64>, Option<bool>) {
        (name.to_string(), lsn, active)
    }

    /// Rows H-1.5, H-1.2m, H-1.2c: which members' slots each node keeps.
    #[test]
    fn member_slots_follow_patroni_s_rules() {
        // pg3 streams from pg2; pg4 does not stream.
        let c = cluster(
            &[
                ("pg0", "{}", 900),
                ("pg1", "{}", 800),
                ("pg2", "{}", 800),
                ("pg3", r#"{"replicatefrom":"pg2"}"#, 600),
                ("pg4", r#"{"nostream":true}"#, 0),
            ],
            r#"{"optime":900,"slots":{"pg0":900,"pg1":700,"pg2":700,"pg3":500,"gone":300},"retain_slots":["pg0","pg1","pg2","pg3","gone"]}"#,
        );
        let retain = serde_json::json!({});
        // The leader: every member; pg3 streams from pg2, so its slot is advanced to pg3's own
        // position.
        assert_eq!(
            wanted(&c, &retain, "pg0", true, false),
            vec![
                w("pg1", Some(700), Some(true)),
                w("pg2", Some(700), Some(true)),
                w("pg3", Some(600), Some(false)),
            ]
        );
        // A replica that may become leader: every other member (the leader's at its WAL
        // position), and the retained names; nothing streams from them but pg3 from pg2.
        assert_eq!(
            wanted(&c, &retain, "pg1", false, false),
            vec![
                w("gone", Some(300), None),
                w("pg0", Some(900), Some(false)),
                w("pg2", Some(700), Some(false)),
                w("pg3", Some(600), Some(false)),
            ]
        );
        assert_eq!(
            wanted(&c, &retain, "pg2", false, false),
            vec![
                w("gone", Some(300), None),
                w("pg0", Some(900), Some(false)),
                w("pg1", Some(700), Some(false)),
                w("pg3", Some(600), Some(true)),
            ]
        );
        // nofailover: only the members that stream from it.
        assert_eq!(
            wanted(&c, &retain, "pg2", false, true),
            vec![w("pg3", Some(600), Some(true))]
        );
        assert!(wanted(&c, &retain, "pg1", false, true).is_empty());
        // member_slots_ttl: 0: the leader's for those that stream from it, a replica's for
        // those that cascade from it.
        let no_retain = serde_json::json!({"member_slots_ttl": 0});
        assert_eq!(
            wanted(&c, &no_retain, "pg0", true, false),
            vec![
                w("pg1", Some(700), Some(true)),
                w("pg2", Some(700), Some(true))
            ]
        );
        assert!(wanted(&c, &no_retain, "pg1", false, false).is_empty());
        assert_eq!(
            wanted(&c, &no_retain, "pg2", false, false),
            vec![w("pg3", Some(600), Some(true))]
        );
        // use_slots off: none.
        let off = serde_json::json!({"postgresql": {"use_slots": false}});
        assert!(wanted(&c, &off, "pg0", true, false).is_empty());
        assert!(wanted(&c, &off, "pg2", false, false).is_empty());
    }

    #[test]
    fn a_cascading_member_whose_upstream_is_gone_streams_from_the_leader() {
        let c = cluster(
            &[
                ("pg0", "{}", 900),
                ("pg1", r#"{"replicatefrom":"pgx"}"#, 100),
            ],
            r#"{"optime":900}"#,
        );
        let no_retain = serde_json::json!({"member_slots_ttl": 0});
        assert_eq!(
            wanted(&c, &no_retain, "pg0", true, false),
            vec![w("pg1", Some(100), Some(true))]
        );
        // A member naming the leader does not cascade from a replica's point of view.
        let c = cluster(
            &[
                ("pg0", "{}", 900),
                ("pg1", r#"{"replicatefrom":"pg0"}"#, 100),
            ],
            r#"{"optime":900}"#,
        );
        assert_eq!(
            wanted(&c, &no_retain, "pg0", true, false),
            vec![w("pg1", Some(100), Some(true))]
        );
    }

    #[test]
    fn a_gone_member_s_slot_is_kept_for_the_ttl_then_dropped() {
        let mut r = SlotRetention::default();
        let all = set(&["pg0", "pg1", "pg2"]);
        let none = BTreeSet::new();
        let out = r.update(&all, &[], &none, 0, 30 * MIN);
        assert_eq!(out.retain, vec!["pg0", "pg1", "pg2"]);
        assert!(out.expired.is_empty());
        // pg2 leaves: kept for 30 minutes.
        let two = set(&["pg0", "pg1"]);
        let out = r.update(&two, &[], &none, MIN, 30 * MIN);
        assert_eq!(out.retain, vec!["pg0", "pg1", "pg2"]);
        assert!(out.expired.is_empty());
        let out = r.update(&two, &[], &none, 30 * MIN - 1, 30 * MIN);
        assert!(
            out.expired.is_empty(),
            "just under 30 minutes after it was last seen"
        );
        let out = r.update(&two, &[], &none, 30 * MIN, 30 * MIN);
        assert_eq!(out.expired, vec!["pg2"]);
        assert_eq!(out.retain, vec!["pg0", "pg1"]);
        // Dropped once: not reported again.
        let out = r.update(&two, &[], &none, 32 * MIN, 30 * MIN);
        assert!(out.expired.is_empty());
    }

    #[test]
    fn an_expired_name_does_not_come_back_from_the_last_published_list() {
        // The status read in the cycle after a name expired still lists it (it was written
        // the cycle before): it must stay expired.
        let mut r = SlotRetention::default();
        let none = BTreeSet::new();
        let out = r.update(&set(&["pg0", "pg1"]), &[], &none, 0, MIN);
        let published = out.retain.clone();
        let out = r.update(&set(&["pg0"]), &published, &none, MIN, MIN);
        assert_eq!(out.expired, vec!["pg1"]);
        let out = r.update(&set(&["pg0"]), &published, &none, MIN + 1, MIN);
        assert_eq!(out.retain, vec!["pg0"]);
        assert!(out.expired.is_empty());
    }

    #[test]
    fn ttl_zero_drops_at_once_but_never_a_live_member_s() {
        let mut r = SlotRetention::default();
        let none = BTreeSet::new();
        r.update(&set(&["pg0", "pg1"]), &[], &none, 0, 0);
        let out = r.update(&set(&["pg0"]), &[], &none, 1, 0);
        assert_eq!(out.expired, vec!["pg1"]);
        let out = r.update(&set(&["pg0"]), &[], &none, 1_000_000, 0);
        assert!(out.expired.is_empty());
        assert_eq!(out.retain, vec!["pg0"]);
    }

    #[test]
    fn a_new_leader_restarts_the_clock_of_the_published_names() {
        let mut r = SlotRetention::default();
        let none = BTreeSet::new();
        let out = r.update(
            &set(&["pg1"]),
            &["pg0".into(), "pg2".into()],
            &none,
            100 * MIN,
            30 * MIN,
        );
        assert_eq!(out.retain, vec!["pg0", "pg1", "pg2"]);
        let out = r.update(
            &set(&["pg1"]),
            &["pg0".into(), "pg2".into()],
            &none,
            131 * MIN,
            30 * MIN,
        );
        assert_eq!(out.expired, vec!["pg0", "pg2"]);
    }

    #[test]
    fn permanent_slots_are_never_dropped_nor_published() {
        let mut r = SlotRetention::default();
        let perm = set(&["archiver"]);
        let out = r.update(&set(&["pg0"]), &["archiver".into()], &perm, 0, 0);
        assert_eq!(out.retain, vec!["pg0"]);
        let out = r.update(&set(&["pg0"]), &[], &perm, 10 * MIN, 0);
        assert!(out.expired.is_empty());
    }

    #[test]
    fn member_slots_ttl_values() {
        let cfg = |v: serde_json::Value| {
            ClusterConfig::from_map(
                serde_json::json!({ "member_slots_ttl": v })
                    .as_object()
                    .expect("object")
                    .clone(),
            )
        };
        assert_eq!(member_slots_ttl_ms(&ClusterConfig::default()), 30 * MIN);
        assert_eq!(member_slots_ttl_ms(&cfg(serde_json::json!(0))), 0);
        assert_eq!(member_slots_ttl_ms(&cfg(serde_json::json!(90))), 90_000);
        assert_eq!(member_slots_ttl_ms(&cfg(serde_json::json!("90"))), 90_000);
        assert_eq!(
            member_slots_ttl_ms(&cfg(serde_json::json!("30min"))),
            30 * MIN
        );
        assert_eq!(
            member_slots_ttl_ms(&cfg(serde_json::json!("2h"))),
            120 * MIN
        );
        assert_eq!(
            member_slots_ttl_ms(&cfg(serde_json::json!("soon"))),
            30 * MIN
        );
        assert_eq!(member_slots_ttl_ms(&cfg(serde_json::json!(-5))), 30 * MIN);
        assert_eq!(
            member_slots_ttl_ms(&cfg(serde_json::json!(i64::MAX))),
            30 * MIN,
            "an overflowing value is garbage, not a panic"
        );
    }
}
