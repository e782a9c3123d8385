//! Permanent replication slots (Patroni 4's dynamic `slots`, also read as `permanent_slots` or
//! `permanent_replication_slots`) and `ignore_slots`. Pure: the runner lists the local slots,
//! asks [`plan`] what to create, drop, advance or copy, and does it.
//!
//! - A permanent slot is physical (a null or empty value, or `type: physical`) or logical
//!   (`database` and `plugin`, `type: logical` optional). Names must be PostgreSQL slot names
//!   (`[a-z0-9_]{1,63}`); anything else is reported and skipped.
//! - The leader creates them all. Every member that may become leader (not `nofailover`, not
//!   `nostream`) keeps them too, so that a consumer goes on after a failover: a physical slot
//!   is created and advanced to the position the leader publishes in `status.slots`; a logical
//!   slot cannot be created on a PostgreSQL 15 standby, so its state file is copied from the
//!   leader (with the standby stopped, see [`SlotPlan::copy`]) once the leader published its
//!   `confirmed_flush_lsn`, then advanced with `pg_replication_slot_advance` to that position
//!   (never past what the standby replayed).
//! - A slot that has the name of a permanent slot but another type, database or plugin is
//!   dropped (and created again later); so is one whose WAL is lost (`wal_status = lost`).
//! - Slots that are neither permanent nor member slots are left alone on the leader (see
//!   [`crate::slots`]: a deliberate difference from Patroni, which drops them unless
//!   `ignore_slots` names them). A standby drops such *logical* slots unless `ignore_slots`
//!   names them, as Patroni does: before PostgreSQL 16 nothing can consume a logical slot on a
//!   standby, and a stale one (a demoted leader's, a slot removed from `slots`) only holds WAL
//!   there.
//! - In maintenance mode (`pause`) nothing is dropped except a slot whose definition changed.

use std::collections::{BTreeMap, BTreeSet};

use patrol_dcs::{lenient_i64, ClusterConfig};
use serde_json::{Map, Value};

use crate::slots::MemberSlot;

/// What a slot is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotKind {
    Physical,
    Logical { database: String, plugin: String },
}

/// A permanent slot of the dynamic configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermanentSlot {
    pub name: String,
    pub kind: SlotKind,
}

/// The permanent slots of the dynamic configuration, and what was wrong with the others.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PermanentSlots {
    pub slots: Vec<PermanentSlot>,
    /// One line per entry that was skipped, for the log.
    pub problems: Vec<String>,
}

impl PermanentSlots {
    pub fn has_logical(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s.kind, SlotKind::Logical { .. }))
    }
}

/// Whether `name` is a valid replication slot name (`^[a-z0-9_]{1,63}$`).
pub fn valid_slot_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn text(o: &Map<String, Value>, key: &str) -> Option<String> {
    match o.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

/// The permanent slots as Patroni reads them (`permanent_replication_slots`, else
/// `permanent_slots`, else `slots`; the first that is set). In a standby cluster only physical
/// slots; `cluster_type: standby` (or `primary`) limits a physical slot to that kind of cluster.
pub fn permanent_slots(dynamic: &ClusterConfig) -> PermanentSlots {
    let source = ["permanent_replication_slots", "permanent_slots", "slots"]
        .iter()
        .filter_map(|k| dynamic.data.get(*k))
        .find(|v| patrol_dcs::python_truthy(v));
    let Some(Value::Object(map)) = source else {
        return PermanentSlots::default();
    };
    let standby_cluster = dynamic.is_standby_cluster();
    let mut out = PermanentSlots::default();
    for (name, value) in map {
        if !valid_slot_name(name) {
            out.problems.push(format!(
                "invalid permanent replication slot name '{name}': only lower case letters, numbers and the underscore, at most 63"
            ));
            continue;
        }
        let obj = match value {
            Value::Object(o) => o.clone(),
            v if !patrol_dcs::python_truthy(v) => Map::new(),
            v => {
                out.problems
                    .push(format!("bad value for permanent slot '{name}': {v}"));
                continue;
            }
        };
        let (database, plugin) = (text(&obj, "database"), text(&obj, "plugin"));
        let kind = match obj.get("type").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None if database.is_some() && plugin.is_some() => "logical".into(),
            None => "physical".into(),
        };
        match (kind.as_str(), database, plugin) {
            ("physical", _, _) => {
                let wanted_here = match obj.get("cluster_type").and_then(Value::as_str) {
                    Some("standby") => standby_cluster,
                    Some("primary") => !standby_cluster,
                    _ => true,
                };
                if wanted_here {
                    out.slots.push(PermanentSlot {
                        name: name.clone(),
                        kind: SlotKind::Physical,
                    });
                }
            }
            ("logical", Some(database), Some(plugin)) if !standby_cluster => {
                out.slots.push(PermanentSlot {
                    name: name.clone(),
                    kind: SlotKind::Logical { database, plugin },
                })
            }
            ("logical", Some(_), Some(_)) => {}
            _ => out.problems.push(format!(
                "bad value for permanent slot '{name}': {}",
                Value::Object(obj)
            )),
        }
    }
    out
}

/// One entry of `ignore_slots`: every attribute set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IgnoreRule {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub database: Option<String>,
    pub plugin: Option<String>,
}

/// `ignore_slots`: a list of `{name, type, database, plugin}` (entries that are not objects are
/// left out).
pub fn ignore_rules(dynamic: &ClusterConfig) -> Vec<IgnoreRule> {
    let Some(Value::Array(list)) = dynamic.data.get("ignore_slots") else {
        return Vec::new();
    };
    list.iter()
        .filter_map(Value::as_object)
        .map(|o| IgnoreRule {
            name: text(o, "name"),
            kind: text(o, "type"),
            database: text(o, "database"),
            plugin: text(o, "plugin"),
        })
        .collect()
}

/// A replication slot that exists on the local server.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExistingSlot {
    pub name: String,
    /// `None` for a physical slot.
    pub logical: Option<(String, String)>,
    pub active: bool,
    /// `xmin` is set (hot standby feedback reached this slot).
    pub has_xmin: bool,
    pub restart_lsn: Option<u64>,
    pub confirmed_flush_lsn: Option<u64>,
    /// `wal_status = 'lost'`: the WAL it needs is gone.
    pub lost: bool,
}

impl ExistingSlot {
    fn kind(&self) -> SlotKind {
        match &self.logical {
            None => SlotKind::Physical,
            Some((database, plugin)) => SlotKind::Logical {
                database: database.clone(),
                plugin: plugin.clone(),
            },
        }
    }

    /// The position the leader publishes for it in `status.slots`.
    pub fn position(&self) -> Option<u64> {
        match self.logical {
            None => self.restart_lsn,
            Some(_) => self.confirmed_flush_lsn,
        }
    }
}

/// Whether `ignore_slots` names this slot.
pub fn ignored(rules: &[IgnoreRule], slot: &ExistingSlot) -> bool {
    let (kind, database, plugin) = match &slot.logical {
        None => ("physical", None, None),
        Some((d, p)) => ("logical", Some(d.as_str()), Some(p.as_str())),
    };
    rules.iter().any(|r| {
        r.name.as_deref().is_none_or(|n| n == slot.name)
            && r.kind.as_deref().is_none_or(|k| k == kind)
            && r.database.as_deref().is_none_or(|d| Some(d) == database)
            && r.plugin.as_deref().is_none_or(|p| Some(p) == plugin)
    })
}

/// `status.slots`: slot name -> position, leniently (values that are not numbers are left out).
pub fn published_positions(slots: &Map<String, Value>) -> BTreeMap<String, u64> {
    slots
        .iter()
        .filter_map(|(k, v)| {
            lenient_i64(Some(v))
                .and_then(|n| u64::try_from(n).ok())
                .filter(|n| *n > 0)
                .map(|n| (k.clone(), n))
        })
        .collect()
}

/// The permanent slots this member keeps: none without `use_slots` or with `nofailover`;
/// physical ones only with `nostream` (a member that does not stream gives the leader no
/// feedback, so a logical copy would not be safe); never a physical one named after this
/// member (its own slot on the leader); never a logical one that has a member slot's name.
pub fn for_member(
    all: &PermanentSlots,
    dynamic: &ClusterConfig,
    nofailover: bool,
    nostream: bool,
    my_slot: &str,
    member_slots: &BTreeSet<String>,
) -> Vec<PermanentSlot> {
    if !dynamic.use_slots() || nofailover {
        return Vec::new();
    }
    all.slots
        .iter()
        .filter(|s| match s.kind {
            SlotKind::Physical => s.name != my_slot,
            SlotKind::Logical { .. } => !nostream && !member_slots.contains(&s.name),
        })
        .cloned()
        .collect()
}

/// What [`plan`] works from.
#[derive(Debug, Clone)]
pub struct SlotInput<'a> {
    /// This member runs the primary (and holds the leader key).
    pub primary: bool,
    /// [`for_member`]'s answer.
    pub permanent: &'a [PermanentSlot],
    /// The members' slot names the leader keeps (its own rules, `crate::slots`); on the leader a
    /// permanent physical slot of that name is left to them.
    pub member_slots: &'a BTreeSet<String>,
    pub existing: &'a [ExistingSlot],
    /// `status.slots` ([`published_positions`]), or what the leader sent in failsafe mode.
    pub published: &'a BTreeMap<String, u64>,
    /// Standby: how far it replayed (a slot is never advanced past it).
    pub replay_lsn: Option<u64>,
    pub ignore: &'a [IgnoreRule],
    pub paused: bool,
    /// Standby: drop logical slots that are neither permanent nor ignored (PostgreSQL < 16).
    pub drop_stray_logical: bool,
    /// The standby leader of a standby cluster (row SC-1): a leader whose PostgreSQL is a
    /// standby, so stray logical slots are dropped as on any standby.
    pub standby_leader: bool,
    /// A leader exists and it is not us (a standby's slot that got an `xmin` is then dropped).
    pub leader_elsewhere: bool,
    /// The members' slots this node keeps ([`crate::slots::member_slots`]). On the leader the
    /// missing ones are created by `EnsureSlots` (row H-1.5), not here.
    pub members: &'a BTreeMap<String, MemberSlot>,
    /// Slot names known as member slots (members' names, `status.retain_slots`, names seen
    /// before): one of them that is not in `members`, not permanent and not in use is dropped.
    pub member_names: &'a BTreeSet<String>,
}

/// What to do with the local slots this cycle, in this order: drop, create, advance, copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotPlan {
    /// Slot name and why.
    pub drop: Vec<(String, String)>,
    pub create_physical: Vec<String>,
    /// Name, database, plugin.
    pub create_logical: Vec<(String, String, String)>,
    /// Name, position.
    pub advance_physical: Vec<(String, u64)>,
    /// Database, name, position.
    pub advance_logical: Vec<(String, String, u64)>,
    /// Logical slots to copy from the leader (a standby only, with PostgreSQL stopped).
    pub copy: Vec<String>,
}

/// The plan of one cycle (see the module's documentation).
pub fn plan(i: &SlotInput) -> SlotPlan {
    let mut p = SlotPlan::default();
    let existing: BTreeMap<&str, &ExistingSlot> =
        i.existing.iter().map(|e| (e.name.as_str(), e)).collect();
    let permanent: BTreeSet<&str> = i.permanent.iter().map(|s| s.name.as_str()).collect();
    for s in i.permanent {
        if s.kind == SlotKind::Physical
            && (i.members.contains_key(&s.name) || i.primary && i.member_slots.contains(&s.name))
        {
            continue;
        }
        let published = i.published.get(&s.name).copied();
        let Some(e) = existing.get(s.name.as_str()) else {
            match &s.kind {
                SlotKind::Physical => p.create_physical.push(s.name.clone()),
                SlotKind::Logical { database, plugin } if i.primary => {
                    p.create_logical
                        .push((s.name.clone(), database.clone(), plugin.clone()))
                }
                // Copied only once the leader has published where it is.
                SlotKind::Logical { .. } if published.is_some() => p.copy.push(s.name.clone()),
                SlotKind::Logical { .. } => {}
            }
            continue;
        };
        if e.kind() != s.kind {
            p.drop.push((
                s.name.clone(),
                "its type, database or plugin differs from the permanent slot's".into(),
            ));
            continue;
        }
        if e.lost && !i.paused {
            p.drop.push((
                s.name.clone(),
                "the WAL it needs is lost (wal_status=lost)".into(),
            ));
            continue;
        }
        if i.primary {
            continue;
        }
        match &s.kind {
            SlotKind::Physical => {
                keep_physical(&mut p, e, published, Some(false), i.leader_elsewhere)
            }
            SlotKind::Logical { database, .. } => {
                let (Some(lsn), Some(replay)) = (published, i.replay_lsn) else {
                    continue;
                };
                let target = lsn.min(replay);
                if e.confirmed_flush_lsn.is_some_and(|c| c < target) {
                    p.advance_logical
                        .push((database.clone(), s.name.clone(), target));
                }
            }
        }
    }
    for (name, m) in i.members {
        match existing.get(name.as_str()) {
            // On the leader `EnsureSlots` creates them.
            None if !i.primary => p.create_physical.push(name.clone()),
            None => {}
            Some(e) if e.logical.is_some() => p.drop.push((
                name.clone(),
                "a member's slot must be physical, this one is logical".into(),
            )),
            Some(e) => keep_physical(
                &mut p,
                e,
                m.lsn,
                m.expected_active,
                i.primary || i.leader_elsewhere,
            ),
        }
    }
    if !i.paused {
        for e in i.existing {
            if e.logical.is_none()
                && !e.active
                && i.member_names.contains(&e.name)
                && !i.members.contains_key(&e.name)
                && !permanent.contains(e.name.as_str())
            {
                p.drop.push((
                    e.name.clone(),
                    "it is a member's slot this node does not keep".into(),
                ));
            }
        }
    }
    if (!i.primary || i.standby_leader) && i.drop_stray_logical && !i.paused {
        for e in i.existing {
            if e.logical.is_some()
                && !permanent.contains(e.name.as_str())
                && !e.active
                && !ignored(i.ignore, e)
            {
                p.drop.push((
                    e.name.clone(),
                    "a logical slot on a standby that is neither in slots nor in ignore_slots"
                        .into(),
                ));
            }
        }
    }
    p
}

/// An existing physical slot this node keeps, as Patroni's `_ensure_physical_slots`: one in
/// use is left alone; one nothing is expected to stream from (`expected_active` false) that got
/// an `xmin` is dropped when `clean_xmin` (its xmin would never move); one that may be advanced
/// (not expected active, no xmin) is dropped without a `restart_lsn` (it cannot be advanced) or
/// advanced to `lsn` when that is ahead.
fn keep_physical(
    p: &mut SlotPlan,
    e: &ExistingSlot,
    lsn: Option<u64>,
    expected_active: Option<bool>,
    clean_xmin: bool,
) {
    if e.active {
        return;
    }
    if e.has_xmin && clean_xmin && expected_active == Some(false) {
        p.drop
            .push((e.name.clone(), "it is inactive and holds an xmin".into()));
        return;
    }
    if expected_active == Some(true) || e.has_xmin {
        return;
    }
    let Some(restart) = e.restart_lsn else {
        p.drop.push((
            e.name.clone(),
            "it has no restart_lsn (it was not created reserving WAL), so it cannot be advanced"
                .into(),
        ));
        return;
    };
    if let Some(lsn) = lsn.filter(|l| *l > restart) {
        p.advance_physical.push((e.name.clone(), lsn));
    }
}

/// What the leader publishes in `status.slots`: the position of each permanent slot it has
/// (`restart_lsn` of a physical one, `confirmed_flush_lsn` of a logical one); with member slot
/// retention on (`member_slots_ttl` > 0) also the members' slots and its own name at its WAL
/// position, as Patroni does, so that every member can advance its copies.
pub fn to_publish(
    existing: &[ExistingSlot],
    permanent: &[PermanentSlot],
    member_slots: &BTreeSet<String>,
    my_slot: &str,
    wal_position: Option<u64>,
    retain_members: bool,
) -> Map<String, Value> {
    let permanent: BTreeMap<&str, &SlotKind> = permanent
        .iter()
        .map(|s| (s.name.as_str(), &s.kind))
        .collect();
    let mut out = Map::new();
    for e in existing {
        let wanted = match permanent.get(e.name.as_str()) {
            Some(kind) => **kind == e.kind(),
            None => retain_members && e.logical.is_none() && member_slots.contains(&e.name),
        };
        if let (true, Some(lsn)) = (wanted, e.position()) {
            out.insert(e.name.clone(), lsn.into());
        }
    }
    let own_permanent = permanent.get(my_slot) == Some(&&SlotKind::Physical);
    if let (true, Some(lsn)) = (retain_members || own_permanent, wal_position) {
        out.insert(my_slot.to_string(), lsn.into());
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cfg(v: Value) -> ClusterConfig {
        ClusterConfig::from_map(v.as_object().expect("object").clone())
    }

    fn physical(name: &str) -> PermanentSlot {
        PermanentSlot {
            name: name.into(),
            kind: SlotKind::Physical,
        }
    }

    fn logical(name: &str) -> PermanentSlot {
        PermanentSlot {
            name: name.into(),
            kind: SlotKind::Logical {
                database: "postgres".into(),
                plugin: "test_decoding".into(),
            },
        }
    }

    fn phys_slot(name: &str, restart: u64) -> ExistingSlot {
        ExistingSlot {
            name: name.into(),
            restart_lsn: Some(restart),
            ..Default::default()
        }
    }

    fn log_slot(name: &str, confirmed: u64) -> ExistingSlot {
        ExistingSlot {
            name: name.into(),
            logical: Some(("postgres".into(), "test_decoding".into())),
            restart_lsn: Some(confirmed),
            confirmed_flush_lsn: Some(confirmed),
            ..Default::default()
        }
    }

    struct Case {
        primary: bool,
        permanent: Vec<PermanentSlot>,
        existing: Vec<ExistingSlot>,
        published: Vec<(&'static str, u64)>,
        replay: Option<u64>,
        paused: bool,
        members: Vec<(&'static str, Option<u64>, Option<bool>)>,
        member_names: Vec<&'static str>,
    }

    impl Default for Case {
        fn default() -> Self {
            Case {
                primary: false,
                permanent: vec![physical("arch"), logical("cdc")],
                existing: vec![],
                published: vec![],
                replay: Some(1000),
                paused: false,
                members: vec![],
                member_names: vec![],
            }
        }
    }

    fn run(c: &Case) -> SlotPlan {
        let published = c
            .published
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let members: BTreeSet<String> = ["pg0", "pg1"].iter().map(|s| s.to_string()).collect();
        let ignore = vec![IgnoreRule {
            name: Some("kept".into()),
            ..Default::default()
        }];
        plan(&SlotInput {
            primary: c.primary,
            permanent: &c.permanent,
            member_slots: &members,
            existing: &c.existing,
            published: &published,
            replay_lsn: c.replay,
            ignore: &ignore,
            paused: c.paused,
            drop_stray_logical: true,
            standby_leader: false,
            leader_elsewhere: true,
            members: &c
                .members
                .iter()
                .map(|(n, lsn, expected_active)| {
                    (
                        n.to_string(),
                        MemberSlot {
                            lsn: *lsn,
                            expected_active: *expected_active,
                        },
                    )
                })
                .collect(),
            member_names: &c.member_names.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn the_leader_creates_what_is_missing_and_leaves_the_rest() {
        let p = run(&Case {
            primary: true,
            permanent: vec![physical("arch"), logical("cdc"), physical("pg1")],
            existing: vec![log_slot("other", 5)],
            ..Default::default()
        });
        assert_eq!(
            p,
            SlotPlan {
                create_physical: vec!["arch".into()],
                create_logical: vec![("cdc".into(), "postgres".into(), "test_decoding".into())],
                ..Default::default()
            },
            "pg1 is a member slot (kept by its own rule); 'other' is not ours to drop on the leader"
        );
        let p = run(&Case {
            primary: true,
            existing: vec![phys_slot("arch", 10), log_slot("cdc", 10)],
            published: vec![("arch", 99), ("cdc", 99)],
            ..Default::default()
        });
        assert_eq!(p, SlotPlan::default(), "the leader never advances its own");
    }

    #[test]
    fn member_slots_are_created_advanced_and_dropped_like_patroni_s() {
        let mut with_xmin = phys_slot("pg2", 100);
        with_xmin.has_xmin = true;
        let mut active = phys_slot("pg3", 100);
        active.active = true;
        let case = Case {
            permanent: vec![physical("pg1")],
            existing: vec![
                phys_slot("pg1", 100),
                with_xmin.clone(),
                active.clone(),
                phys_slot("pg4", 100),
                phys_slot("handmade", 1),
            ],
            members: vec![
                ("pg0", Some(500), Some(false)),
                ("pg1", Some(700), Some(false)),
                ("pg2", Some(500), Some(false)),
                ("pg3", Some(500), Some(true)),
            ],
            member_names: vec!["pg0", "pg1", "pg2", "pg3", "pg4", "pg5"],
            ..Default::default()
        };
        let p = run(&case);
        assert_eq!(p.create_physical, vec!["pg0"], "{p:?}");
        assert_eq!(
            p.advance_physical,
            vec![("pg1".into(), 700)],
            "a member slot with a permanent slot's name is advanced once, to the member's position"
        );
        assert_eq!(
            p.drop.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            vec!["pg2", "pg4"],
            "pg2 holds an xmin; pg4 is a member slot not kept here; never one in use (pg3) or one that is not a member slot"
        );
        // The leader: creation is EnsureSlots'; only a slot nothing streams from is advanced.
        let p = run(&Case {
            primary: true,
            permanent: vec![],
            ..case
        });
        assert!(p.create_physical.is_empty(), "{p:?}");
        assert_eq!(p.advance_physical, vec![("pg1".into(), 700)]);
        assert_eq!(
            p.drop.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            vec!["pg2", "pg4"]
        );
        // A retained name (expected_active unknown) with an xmin is left alone; paused, nothing
        // is dropped.
        let p = run(&Case {
            existing: vec![with_xmin, phys_slot("pg4", 100)],
            members: vec![("pg2", Some(500), None)],
            member_names: vec!["pg4"],
            paused: true,
            ..Default::default()
        });
        assert!(p.drop.is_empty() && p.advance_physical.is_empty(), "{p:?}");
    }

    #[test]
    fn a_standby_copies_a_logical_slot_only_once_the_leader_published_it() {
        let p = run(&Case::default());
        assert_eq!(p.create_physical, vec!["arch"]);
        assert!(p.copy.is_empty());
        let p = run(&Case {
            published: vec![("cdc", 500)],
            ..Default::default()
        });
        assert_eq!(p.copy, vec!["cdc"]);
        assert!(p.create_logical.is_empty(), "a standby cannot create one");
    }

    #[test]
    fn a_standby_advances_to_the_published_position_never_past_its_replay() {
        for (confirmed, published, replay, want) in [
            (100, 500, Some(1000), Some(500)),
            (100, 500, Some(300), Some(300)),
            (500, 500, Some(1000), None),
            (600, 500, Some(1000), None),
            (100, 500, None, None),
            (300, 500, Some(300), None),
        ] {
            let p = run(&Case {
                existing: vec![phys_slot("arch", 1), log_slot("cdc", confirmed)],
                published: vec![("cdc", published)],
                replay,
                ..Default::default()
            });
            let got = p.advance_logical.first().map(|(_, _, l)| *l);
            assert_eq!(got, want, "{confirmed} {published} {replay:?}");
            if let Some(l) = want {
                assert_eq!(
                    p.advance_logical,
                    vec![("postgres".into(), "cdc".into(), l)]
                );
            }
        }
        let p = run(&Case {
            existing: vec![phys_slot("arch", 100), log_slot("cdc", 1)],
            published: vec![("arch", 700)],
            ..Default::default()
        });
        assert_eq!(p.advance_physical, vec![("arch".into(), 700)]);
        let p = run(&Case {
            existing: vec![phys_slot("arch", 800)],
            published: vec![("arch", 700)],
            ..Default::default()
        });
        assert!(p.advance_physical.is_empty(), "never backwards");
    }

    #[test]
    fn wrong_definitions_and_lost_or_unadvanceable_slots_are_dropped() {
        let mut wrong_plugin = log_slot("cdc", 1);
        wrong_plugin.logical = Some(("postgres".into(), "pgoutput".into()));
        let mut lost = phys_slot("arch", 1);
        lost.lost = true;
        let p = run(&Case {
            existing: vec![lost.clone(), wrong_plugin],
            ..Default::default()
        });
        assert_eq!(
            p.drop.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            vec!["arch", "cdc"]
        );
        let p = run(&Case {
            existing: vec![lost, log_slot("cdc", 1)],
            paused: true,
            ..Default::default()
        });
        assert!(p.drop.is_empty(), "paused: {p:?}");
        let mut with_xmin = phys_slot("arch", 1);
        with_xmin.has_xmin = true;
        let no_restart = ExistingSlot {
            name: "arch".into(),
            ..Default::default()
        };
        for e in [with_xmin, no_restart] {
            let p = run(&Case {
                existing: vec![e.clone()],
                published: vec![("arch", 700)],
                ..Default::default()
            });
            assert_eq!(p.drop.len(), 1, "{e:?}");
            assert!(p.advance_physical.is_empty());
        }
    }

    #[test]
    fn a_standby_drops_stray_logical_slots_unless_ignored_or_in_use() {
        let mut active = log_slot("busy", 1);
        active.active = true;
        let p = run(&Case {
            permanent: vec![],
            existing: vec![
                log_slot("stale", 1),
                log_slot("kept", 1),
                active,
                phys_slot("handmade", 1),
            ],
            ..Default::default()
        });
        assert_eq!(
            p.drop.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            vec!["stale"]
        );
        let p = run(&Case {
            primary: true,
            permanent: vec![],
            existing: vec![log_slot("stale", 1)],
            ..Default::default()
        });
        assert!(p.drop.is_empty(), "the leader keeps slots it does not know");
    }

    #[test]
    fn parsing_follows_patroni() {
        let all = permanent_slots(&cfg(json!({"slots": {
            "a": null, "b": 0, "c": {}, "d": {"type": "physical"},
            "e": {"database": "db", "plugin": "pgoutput"},
            "f": {"type": "logical", "database": "db", "plugin": "test_decoding"},
            "g": {"type": "logical", "database": "db"},
            "Bad-Name": null, "h": "text", "i": {"type": "physical", "cluster_type": "standby"},
        }})));
        let names: Vec<(&str, bool)> = all
            .slots
            .iter()
            .map(|s| (s.name.as_str(), s.kind == SlotKind::Physical))
            .collect();
        assert_eq!(
            names,
            vec![
                ("a", true),
                ("b", true),
                ("c", true),
                ("d", true),
                ("e", false),
                ("f", false)
            ]
        );
        assert_eq!(all.problems.len(), 3, "{:?}", all.problems);
        // The aliases: the first one set wins.
        let alias = permanent_slots(&cfg(
            json!({"permanent_slots": {"x": null}, "slots": {"y": null}}),
        ));
        assert_eq!(alias.slots, vec![physical("x")]);
        let empty_first =
            permanent_slots(&cfg(json!({"permanent_slots": {}, "slots": {"y": null}})));
        assert_eq!(empty_first.slots, vec![physical("y")]);
        // A standby cluster keeps physical slots only.
        let sc = permanent_slots(&cfg(json!({
            "standby_cluster": {"host": "10.0.0.1"},
            "slots": {"p": null, "l": {"database": "d", "plugin": "p"}, "s": {"cluster_type": "standby"}},
        })));
        assert_eq!(sc.slots, vec![physical("p"), physical("s")]);
    }

    #[test]
    fn which_members_keep_which_slots() {
        let all = PermanentSlots {
            slots: vec![
                physical("arch"),
                physical("pg1"),
                logical("cdc"),
                logical("pg0"),
            ],
            problems: vec![],
        };
        let members: BTreeSet<String> = ["pg0", "pg1"].iter().map(|s| s.to_string()).collect();
        let on = ClusterConfig::default();
        let names = |v: Vec<PermanentSlot>| v.into_iter().map(|s| s.name).collect::<Vec<_>>();
        assert_eq!(
            names(for_member(&all, &on, false, false, "pg1", &members)),
            vec!["arch", "cdc"],
            "not its own name; not a logical slot with a member's name"
        );
        assert!(for_member(&all, &on, true, false, "pg1", &members).is_empty());
        assert_eq!(
            names(for_member(&all, &on, false, true, "pg2", &members)),
            vec!["arch", "pg1"]
        );
        let off = cfg(json!({"postgresql": {"use_slots": false}}));
        assert!(for_member(&all, &off, false, false, "pg1", &members).is_empty());
    }

    #[test]
    fn ignore_rules_match_every_attribute_given() {
        let rules = ignore_rules(&cfg(json!({"ignore_slots": [
            {"name": "a"}, {"type": "logical", "plugin": "wal2json"}, "junk",
        ]})));
        assert_eq!(rules.len(), 2);
        let mut wal2json = log_slot("x", 1);
        wal2json.logical = Some(("db".into(), "wal2json".into()));
        assert!(ignored(&rules, &phys_slot("a", 1)));
        assert!(ignored(&rules, &log_slot("a", 1)));
        assert!(ignored(&rules, &wal2json));
        assert!(!ignored(&rules, &log_slot("x", 1)));
        assert!(!ignored(&rules, &phys_slot("x", 1)));
    }

    #[test]
    fn what_the_leader_publishes() {
        let existing = vec![
            phys_slot("arch", 100),
            log_slot("cdc", 200),
            phys_slot("pg1", 300),
            log_slot("other", 400),
        ];
        let perm = vec![physical("arch"), logical("cdc")];
        let members: BTreeSet<String> = ["pg0", "pg1"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            Value::Object(to_publish(
                &existing,
                &perm,
                &members,
                "pg0",
                Some(900),
                true
            )),
            json!({"arch": 100, "cdc": 200, "pg1": 300, "pg0": 900})
        );
        assert_eq!(
            Value::Object(to_publish(
                &existing,
                &perm,
                &members,
                "pg0",
                Some(900),
                false
            )),
            json!({"arch": 100, "cdc": 200})
        );
        assert_eq!(
            published_positions(
                json!({"a": 5, "b": "7", "c": "x", "d": -1})
                    .as_object()
                    .expect("object")
            ),
            [("a".to_string(), 5), ("b".to_string(), 7)]
                .into_iter()
                .collect()
        );
    }
}
