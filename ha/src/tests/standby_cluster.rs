//! Rows SC-1..SC-3 and SC-B: standby clusters (spec 5.9). The leader key's holder is the
//! *standby leader*: a standby of the remote source the dynamic `standby_cluster` names.

use patrol_dcs::{ClusterConfig, StandbySource};

use super::*;

const STANDBY: &str = r#"{"standby_cluster":{"host":"10.0.0.9","port":5433,"primary_slot_name":"pm_1","create_replica_methods":["restore","basebackup"]},"synchronous_mode":true}"#;

fn standby_obs(me: &str, cluster: Cluster, local: LocalPg) -> Observation {
    let mut o = obs(me, cluster, local);
    o.dynamic = ClusterConfig::parse(STANDBY).expect("valid");
    o
}

fn remote() -> Upstream {
    Upstream::remote(
        &ClusterConfig::parse(STANDBY)
            .expect("valid")
            .standby_cluster()
            .expect("a standby cluster"),
    )
}

fn standby_leader_pg0() -> Cluster {
    cluster(&[
        &format!("initialize={SYSID}"),
        "leader=pg0",
        "member=pg0:standby_leader",
        "member=pg1:replica",
    ])
}

#[test]
fn the_section_is_read_as_patroni_reads_it() {
    let sc = remote().remote.expect("remote");
    assert_eq!(sc.host.as_deref(), Some("10.0.0.9"));
    assert_eq!(sc.port, Some(5433));
    assert_eq!(
        sc.create_replica_methods,
        Some(vec!["restore".to_string(), "basebackup".to_string()])
    );
    // Only host, port or restore_command make a standby cluster.
    for (json, standby) in [
        (r#"{"standby_cluster":{"primary_slot_name":"x"}}"#, false),
        (r#"{"standby_cluster":{"host":""}}"#, false),
        (r#"{"standby_cluster":null}"#, false),
        (
            r#"{"standby_cluster":{"restore_command":"cp /a/%f %p"}}"#,
            true,
        ),
        (r#"{"standby_cluster":{"port":"5432"}}"#, true),
    ] {
        let c = ClusterConfig::parse(json).expect("valid");
        assert_eq!(c.is_standby_cluster(), standby, "{json}");
    }
    // A changed restore_command is a new upstream to follow.
    let mut other = StandbySource {
        restore_command: Some("cp".into()),
        ..remote().remote.expect("remote")
    };
    assert_ne!(Upstream::remote(&other).key(), remote().key());
    other.restore_command = None;
    assert_eq!(Upstream::remote(&other).key(), remote().key());
}

#[test]
fn sc_1_the_lock_holder_follows_the_remote_source_and_never_promotes() {
    let mut o = standby_obs("pg0", standby_leader_pg0(), running(true, 100));
    let d = check(
        &o,
        &[
            Action::RefreshLeaderKey,
            Action::Follow(remote()),
            Action::EnsureSlots {
                names: vec!["pg1".into()],
            },
        ],
    );
    assert!(d.reason.contains("standby leader"), "{}", d.reason);
    // Once it follows the remote source: refresh and slots only; no sync key although the
    // section says synchronous_mode (ignored in a standby cluster), no watchdog.
    o.mem.following = Some(remote().key());
    o.watchdog = WatchdogView {
        enabled: true,
        ..Default::default()
    };
    check(
        &o,
        &[
            Action::RefreshLeaderKey,
            Action::EnsureSlots {
                names: vec!["pg1".into()],
            },
        ],
    );
}

#[test]
fn sc_1_replicas_follow_the_standby_leader() {
    let o = standby_obs("pg1", standby_leader_pg0(), running(true, 100));
    check(&o, &[Action::Follow(up("pg0", 5433))]);
}

#[test]
fn sc_1_the_race_winner_becomes_standby_leader() {
    let mut o = standby_obs("pg1", no_leader(), running(true, 100));
    o.peers = vec![peer("pg2", 90)];
    check(&o, &[Action::AcquireLeaderKey, Action::Follow(remote())]);
}

#[test]
fn sc_1_a_switchover_in_a_standby_cluster_is_graceful() {
    let c = with_failover(standby_leader_pg0(), r#"{"leader":"pg0","member":"pg1"}"#);
    let mut o = standby_obs("pg0", c, running(true, 100));
    o.mem.following = Some(remote().key());
    check(&o, &[Action::RefreshLeaderKey, Action::GracefulDemote]);
}

#[test]
fn sc_2_a_primary_holding_the_key_is_demoted_to_standby_leader() {
    let o = standby_obs("pg0", leader_pg0(), running(false, 100));
    check(
        &o,
        &[Action::RefreshLeaderKey, Action::DemoteCluster(remote())],
    );
    // Not in maintenance mode.
    let mut paused = standby_obs("pg0", leader_pg0(), running(false, 100));
    paused.dynamic =
        ClusterConfig::parse(r#"{"standby_cluster":{"host":"10.0.0.9","port":5433},"pause":true}"#)
            .expect("valid");
    let mut c = leader_pg0();
    c.config = Some(patrol_dcs::Versioned {
        version: 1,
        value: paused.dynamic.clone(),
    });
    paused.dcs = DcsView::Reachable(c);
    check(&paused, &[Action::RefreshLeaderKey]);
}

#[test]
fn sc_2_removing_the_section_promotes_the_standby_leader() {
    let o = obs("pg0", standby_leader_pg0(), running(true, 100));
    check(&o, &[Action::RefreshLeaderKey, Action::Promote]);
}

#[test]
fn sc_3_the_standby_leader_restarts_as_a_standby_of_the_remote_source() {
    let o = standby_obs("pg0", standby_leader_pg0(), stopped(initialized()));
    check(
        &o,
        &[
            Action::RefreshLeaderKey,
            Action::Start {
                standby_of: Some(Some(remote())),
            },
        ],
    );
}

#[test]
fn sc_b_the_first_member_clones_the_remote_source() {
    let c = cluster(&[]);
    let o = standby_obs("pg0", c, stopped(DataState::Empty));
    check(
        &o,
        &[
            Action::RaceInitialize,
            Action::CreateReplica {
                from: Some(remote()),
                basebackup_only: false,
            },
        ],
    );
    // The clone runs as a standby of the remote source: the bootstrap is finished then.
    let mut o = standby_obs("pg0", cluster(&["initialize="]), running(true, 100));
    o.mem.bootstrapping = true;
    check(
        &o,
        &[Action::FinishBootstrap {
            sysid: SYSID.into(),
        }],
    );
    // A failed clone aborts the bootstrap (the initialize key is given back).
    let mut o = standby_obs("pg0", cluster(&["initialize="]), stopped(DataState::Empty));
    o.mem.bootstrapping = true;
    o.last_result = Some(TaskResult::Failed(Task::Clone, "no route".into()));
    check(
        &o,
        &[Action::AbortBootstrap {
            reason: "no route".into(),
        }],
    );
}

#[test]
fn sc_4_a_former_primary_follows_the_standby_leader_without_waiting_for_a_rewind() {
    let mut o = standby_obs("pg1", standby_leader_pg0(), running(true, 100));
    o.mem.needs_rewind = true;
    check(&o, &[Action::Follow(up("pg0", 5433))]);
    let mut o = standby_obs("pg1", standby_leader_pg0(), stopped(initialized()));
    o.mem.needs_rewind = true;
    check(
        &o,
        &[Action::Start {
            standby_of: Some(Some(up("pg0", 5433))),
        }],
    );
}
