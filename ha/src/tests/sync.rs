//! Rows Y-1..Y-3: synchronous replication (spec 5.7).

use patrol_dcs::ClusterConfig;

use super::*;
use crate::sync::{current_state, sync_candidates, Readiness, Walsender};

fn ws(name: &str, state: &str, lsn: u64) -> Walsender {
    Walsender {
        pid: name.len() as i32 * 100 + lsn as i32 % 7,
        application_name: name.into(),
        sync_state: state.into(),
        lsn: Some(lsn),
    }
}

fn sync_cfg(json: &str) -> ClusterConfig {
    ClusterConfig::from_map(serde_json::from_str(json).unwrap())
}

/// The leader pg0, replicas pg1 and pg2, the sync key as given; the memory has observed the
/// replication as the runner does before deciding.
fn leader_obs(
    mode: &str,
    sync: Option<&str>,
    walsenders: Vec<Walsender>,
    names: &str,
) -> Observation {
    let mut specs = vec![
        format!("initialize={SYSID}"),
        "leader=pg0".to_string(),
        "member=pg0:primary".to_string(),
        "member=pg1:replica".to_string(),
        "member=pg2:replica".to_string(),
    ];
    if let Some(s) = sync {
        specs.push(format!("sync={s}"));
    }
    let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
    let mut o = obs("pg0", cluster(&specs), running(false, 100));
    o.dynamic = sync_cfg(mode);
    o.local.walsenders = walsenders;
    o.local.standby_names = Some(names.into());
    o.sync_names_managed = true;
    o.mem.leading_since = Some(NOW);
    let c = o.cluster().unwrap().clone();
    let local = o.local.clone();
    let dynamic = o.dynamic.clone();
    o.mem
        .observe_replication("pg0", Some(&c), &local, &dynamic, NOW);
    o
}

/// Puts a `sync` key into the cluster.
fn set_sync(c: &mut patrol_dcs::Cluster, json: &str) {
    c.sync = Some(patrol_dcs::Versioned {
        version: 3,
        value: patrol_dcs::SyncState::parse(json),
    });
}

fn sync_actions(d: &Decision) -> Vec<Action> {
    d.actions
        .iter()
        .filter(|a| {
            matches!(
                a,
                Action::WriteSync { .. }
                    | Action::DeleteSync
                    | Action::SetSyncStandbyNames(_)
                    | Action::RecheckSoon
            )
        })
        .cloned()
        .collect()
}

fn write(voters: &[&str]) -> Action {
    Action::WriteSync {
        leader: "pg0".into(),
        voters: voters.iter().map(|s| s.to_string()).collect(),
        quorum: 0,
    }
}

fn names(v: &str) -> Action {
    Action::SetSyncStandbyNames(Some(v.into()))
}

#[test]
fn y1_mode_on_enables_the_key_then_names_the_best_standby_then_confirms_it() {
    // Cycle 1: no key yet, pg1 streams asynchronously.
    let o = leader_obs(
        r#"{"synchronous_mode":true}"#,
        None,
        vec![ws("pg1", "async", 100)],
        "",
    );
    let d = decide(&o);
    assert_eq!(
        sync_actions(&d),
        [write(&[]), names("pg1"), Action::RecheckSoon]
    );
    assert!(d
        .notes
        .iter()
        .any(|n| n.contains("Enabled synchronous replication")));
    // Cycle 2: PostgreSQL counts pg1 as synchronous and it caught up: the key names it.
    let o = leader_obs(
        r#"{"synchronous_mode":true}"#,
        Some(r#"{"leader":"pg0","sync_standby":null}"#),
        vec![ws("pg1", "sync", 100)],
        "pg1",
    );
    assert_eq!(sync_actions(&decide(&o)), [write(&["pg1"])]);
}

#[test]
fn y1_steady_state_writes_nothing() {
    let o = leader_obs(
        r#"{"synchronous_mode":true}"#,
        Some(r#"{"leader":"pg0","sync_standby":"pg1"}"#),
        vec![ws("pg1", "sync", 100), ws("pg2", "async", 100)],
        "pg1",
    );
    assert_eq!(sync_actions(&decide(&o)), []);
}

#[test]
fn y1_a_gone_standby_leaves_the_key_before_postgresql() {
    // pg1 was synchronous and disconnected; pg2 streams.
    let o = leader_obs(
        r#"{"synchronous_mode":true}"#,
        Some(r#"{"leader":"pg0","sync_standby":"pg1"}"#),
        vec![ws("pg2", "async", 100)],
        "pg1",
    );
    assert_eq!(
        sync_actions(&decide(&o)),
        [write(&[]), names("pg2"), Action::RecheckSoon]
    );
}

#[test]
fn y1_strict_with_no_standby_waits_for_any() {
    let o = leader_obs(
        r#"{"synchronous_mode":true,"synchronous_mode_strict":true}"#,
        Some(r#"{"leader":"pg0","sync_standby":null}"#),
        vec![],
        "",
    );
    assert_eq!(sync_actions(&decide(&o)), [names("*")]);
    let lax = leader_obs(
        r#"{"synchronous_mode":true}"#,
        Some(r#"{"leader":"pg0","sync_standby":null}"#),
        vec![],
        "",
    );
    assert_eq!(sync_actions(&decide(&lax)), []);
}

#[test]
fn y1_two_standbys_when_synchronous_node_count_is_two() {
    let o = leader_obs(
        r#"{"synchronous_mode":true,"synchronous_node_count":2}"#,
        Some(r#"{"leader":"pg0","sync_standby":"pg1"}"#),
        vec![ws("pg1", "sync", 100), ws("pg2", "async", 100)],
        "pg1",
    );
    let d = decide(&o);
    assert_eq!(sync_actions(&d)[0], names("2 (pg1,pg2)"));
}

#[test]
fn y1_nosync_members_are_never_chosen_and_priority_is_honoured() {
    let mut o = leader_obs(
        r#"{"synchronous_mode":true}"#,
        Some(r#"{"leader":"pg0","sync_standby":null}"#),
        vec![ws("pg1", "async", 100), ws("pg2", "async", 90)],
        "",
    );
    let c = match &mut o.dcs {
        DcsView::Reachable(c) => c,
        DcsView::Unreachable => unreachable!(),
    };
    for m in c.members.iter_mut() {
        if m.name == "pg1" {
            m.data.tags.insert("nosync".into(), true.into());
        }
    }
    assert_eq!(sync_actions(&decide(&o))[0], names("pg2"));
    let c = o.cluster().unwrap().clone();
    let mut c2 = c.clone();
    for m in c2.members.iter_mut() {
        m.data.tags.remove("nosync");
        if m.name == "pg2" {
            m.data.tags.insert("sync_priority".into(), 5.into());
        }
    }
    let got = sync_candidates("pg0", &c2, &o.local.walsenders);
    assert_eq!(
        got[0].name, "pg2",
        "higher sync_priority first even when behind"
    );
}

#[test]
fn y1_maximum_lag_on_syncnode_drops_a_stuck_standby() {
    let o = leader_obs(
        r#"{"synchronous_mode":true,"maximum_lag_on_syncnode":1000}"#,
        Some(r#"{"leader":"pg0","sync_standby":"pg1"}"#),
        vec![ws("pg1", "sync", 10), ws("pg2", "async", 50_000)],
        "pg1",
    );
    let d = decide(&o);
    assert_eq!(sync_actions(&d)[..2], [write(&[]), names("pg2")]);
}

#[test]
fn y1_mode_off_deletes_the_key_and_gives_back_the_users_value() {
    let o = leader_obs(
        r#"{"synchronous_mode":false}"#,
        Some(r#"{"leader":"pg0","sync_standby":"pg1"}"#),
        vec![ws("pg1", "sync", 100)],
        "pg1",
    );
    assert_eq!(
        sync_actions(&decide(&o)),
        [Action::DeleteSync, Action::SetSyncStandbyNames(None)]
    );
}

#[test]
fn y2_a_promotion_in_sync_mode_first_names_only_itself() {
    let mut o = obs("pg1", no_leader(), running(true, 100));
    o.dynamic = sync_cfg(r#"{"synchronous_mode":true,"synchronous_mode_strict":true}"#);
    check(
        &o,
        &[
            Action::AcquireLeaderKey,
            Action::WriteSync {
                leader: "pg1".into(),
                voters: vec![],
                quorum: 0,
            },
            names("*"),
            Action::Promote,
        ],
    );
}

#[test]
fn y3_only_members_of_the_sync_key_race() {
    let mut c = no_leader();
    set_sync(&mut c, r#"{"leader":"pg0","sync_standby":"pg2"}"#);
    let mut o = obs("pg1", c.clone(), running(true, 100));
    o.dynamic = sync_cfg(r#"{"synchronous_mode":true}"#);
    check(&o, &[]);
    // pg2 is in the key: it races even though pg1 (not synchronous) is ahead.
    let mut o = obs("pg2", c, running(true, 90));
    o.dynamic = sync_cfg(r#"{"synchronous_mode":true}"#);
    o.peers = vec![peer("pg1", 100)];
    check(
        &o,
        &[
            Action::AcquireLeaderKey,
            Action::WriteSync {
                leader: "pg2".into(),
                voters: vec![],
                quorum: 0,
            },
            names(""),
            Action::Promote,
        ],
    );
}

#[test]
fn y3_the_former_leader_ahead_does_not_stop_a_synchronous_standby() {
    let mut c = no_leader();
    set_sync(&mut c, r#"{"leader":"pg0","sync_standby":"pg1"}"#);
    let mut o = obs("pg1", c, running(true, 90));
    o.dynamic = sync_cfg(r#"{"synchronous_mode":true}"#);
    o.peers = vec![peer("pg0", 100)];
    assert_eq!(decide(&o).actions[0], Action::AcquireLeaderKey);
}

#[test]
fn y3_quorum_needs_enough_votes() {
    let mut c = no_leader();
    set_sync(
        &mut c,
        r#"{"leader":"pg0","sync_standby":"pg1,pg2","quorum":1}"#,
    );
    let mut o = obs("pg1", c, running(true, 100));
    o.dynamic = sync_cfg(r#"{"synchronous_mode":"quorum"}"#);
    // pg2 unreachable: pg1 has its own vote only, the quorum wants one more.
    assert_eq!(decide(&o).actions, []);
    o.peers = vec![peer("pg2", 100)];
    assert_eq!(decide(&o).actions[0], Action::AcquireLeaderKey);
}

#[test]
fn y3_switchover_candidates_must_be_synchronous() {
    let mut c = healthy3();
    set_sync(&mut c, r#"{"leader":"pg0","sync_standby":"pg1"}"#);
    let c = with_failover(c, r#"{"leader":"pg0","member":"pg2"}"#);
    let mut o = obs("pg0", c, running(false, 100));
    o.dynamic = sync_cfg(r#"{"synchronous_mode":true}"#);
    let d = decide(&o);
    assert!(
        d.actions.contains(&Action::ClearFailover { version: 7 }),
        "{d:?}"
    );
}

#[test]
fn readiness_needs_the_position_of_the_change_and_postgresqls_word() {
    let c = healthy3();
    let w = vec![ws("pg1", "sync", 90)];
    let cands = sync_candidates("pg0", &c, &w);
    let mut r = Readiness::default();
    r.observe("pg1", 100, &cands, None, false);
    assert!(r.ready.is_empty(), "behind the position at the change");
    let w = vec![ws("pg1", "sync", 100)];
    let cands = sync_candidates("pg0", &c, &w);
    r.observe("pg1", 120, &cands, None, false);
    assert!(r.ready.contains_key("pg1"));
    let dynamic = sync_cfg(r#"{"synchronous_mode":true}"#);
    let now = current_state(&cands, &r, "pg1", &dynamic, 120);
    assert_eq!(now.active, ["pg1"]);
    assert_eq!(now.confirmed, ["pg1"]);
    assert_eq!(now.sync, ["pg1"]);
    assert_eq!(now.numsync, 1);
}

#[test]
fn y1q_prime_a_voter_is_dropped_only_once_the_kept_ones_caught_up() {
    let quorum = r#"{"synchronous_mode":"quorum"}"#;
    let key = r#"{"leader":"pg0","sync_standby":"pg1,pg2","quorum":1}"#;
    let both = crate::sync::standby_names(&["pg1".into(), "pg2".into()], Some(1), true);
    let only_pg1 = crate::sync::standby_names(&["pg1".into()], Some(1), true);
    let drops_pg2 = |d: &Decision| {
        d.actions.iter().any(
            |a| matches!(a, Action::WriteSync { voters, .. } if !voters.iter().any(|v| v == "pg2")),
        )
    };
    // pg2 is gone; pg1 lags behind commits pg2 alone acknowledged (the primary is at 100).
    let o = leader_obs(quorum, Some(key), vec![ws("pg1", "quorum", 90)], &both);
    let d = decide(&o);
    assert!(
        d.actions.contains(&names(&only_pg1)) && d.actions.contains(&Action::RecheckSoon),
        "the names drop pg2 first, then the plan stops: {d:?}"
    );
    assert!(!drops_pg2(&d), "the key keeps pg2 in the same cycle: {d:?}");
    // Next cycle: the names drop pg2; pg1 has not flushed 100 yet: the key waits.
    let o = leader_obs(quorum, Some(key), vec![ws("pg1", "quorum", 90)], &only_pg1);
    let d = decide(&o);
    assert!(!drops_pg2(&d), "not before pg1 flushed 100: {d:?}");
    // pg1 caught up: the key may drop pg2.
    let o = leader_obs(quorum, Some(key), vec![ws("pg1", "quorum", 100)], &only_pg1);
    let d = decide(&o);
    assert!(drops_pg2(&d), "{d:?}");
}
