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

use patrol_dcs::{seconds_with_unit, ClusterConfig};
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

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const MIN: i64 = 60_000;

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
