//! Flow ② bootstrap.

use super::*;

#[test]
fn b_2_1_cluster_with_leader_clones_from_leader() {
    // Rows B-2.1/1.1, 1.2.
    let o = obs(
        "pg2",
        cluster(&[
            &format!("initialize={SYSID}"),
            "leader=pg0",
            "member=pg0:primary",
            "member=pg1:replica",
        ]),
        stopped(DataState::Empty),
    );
    check(
        &o,
        &[Action::CreateReplica {
            from: Some(up("pg0", 5433)),
            basebackup_only: false,
        }],
    );
}

#[test]
fn b_2_1_clonefrom_member_is_preferred() {
    // Row B-2.1/1.1: a running member tagged clonefrom is the source.
    let o = obs(
        "pg2",
        cluster(&[
            &format!("initialize={SYSID}"),
            "leader=pg0",
            "member=pg0:primary",
            "member=pg1:replica:clonefrom",
        ]),
        stopped(DataState::Empty),
    );
    check(
        &o,
        &[Action::CreateReplica {
            from: Some(up("pg1", 5434)),
            basebackup_only: false,
        }],
    );
}

#[test]
fn b_2_2_initialize_taken_waits_for_leader() {
    // Row B-2.2/1.3 (and 1.6: losers wait).
    let o = obs("pg1", cluster(&["initialize="]), stopped(DataState::Empty));
    check(&o, &[]);
    let o = obs(
        "pg1",
        cluster(&[&format!("initialize={SYSID}")]),
        stopped(DataState::Empty),
    );
    check(&o, &[]);
}

#[test]
fn b_2_3_no_leader_method_creates_a_replica_without_a_leader() {
    let without_leader = [Action::CreateReplica {
        from: None,
        basebackup_only: false,
    }];
    // The cluster was bootstrapped and has no leader now.
    let mut o = obs(
        "pg1",
        cluster(&[&format!("initialize={SYSID}"), "member=pg0:replica"]),
        stopped(DataState::Empty),
    );
    o.replica_without_leader = true;
    check(&o, &without_leader);
    // No `initialize` key and this member may not bootstrap.
    let mut o = obs("pg1", cluster(&[]), stopped(DataState::Empty));
    o.replica_without_leader = true;
    o.nofailover = true;
    check(&o, &without_leader);
}

#[test]
fn b_2_3_no_replica_without_a_leader_while_bootstrapping_or_racing() {
    // A bootstrap is under way (`initialize` is ""): wait for its leader.
    let mut o = obs("pg1", cluster(&["initialize="]), stopped(DataState::Empty));
    o.replica_without_leader = true;
    check(&o, &[]);
    // Nobody bootstrapped and this member may: it races instead.
    let mut o = obs("pg1", cluster(&[]), stopped(DataState::Empty));
    o.replica_without_leader = true;
    check(&o, &[Action::RaceInitialize, Action::Bootstrap]);
    // Without a `no_leader` method: wait.
    let o = obs(
        "pg1",
        cluster(&[&format!("initialize={SYSID}")]),
        stopped(DataState::Empty),
    );
    check(&o, &[]);
    // A leader exists: clone from it, whatever the methods.
    let mut o = obs(
        "pg1",
        cluster(&[
            &format!("initialize={SYSID}"),
            "leader=pg0",
            "member=pg0:primary",
        ]),
        stopped(DataState::Empty),
    );
    o.replica_without_leader = true;
    check(
        &o,
        &[Action::CreateReplica {
            from: Some(up("pg0", 5433)),
            basebackup_only: false,
        }],
    );
}

#[test]
fn b_2_2_node_without_bootstrap_section_or_nofailover_does_not_race() {
    let mut o = obs("pg1", cluster(&[]), stopped(DataState::Empty));
    o.can_bootstrap = false;
    check(&o, &[]);
    let mut o = obs("pg1", cluster(&[]), stopped(DataState::Empty));
    o.nofailover = true;
    check(&o, &[]);
}

#[test]
fn b_1_7_successful_bootstrap_takes_the_key() {
    // Row B-2.4/1.7: store initialize = sysid, config, leader key.
    let mut o = obs("pg0", cluster(&["initialize="]), running(false, 1));
    o.mem.bootstrapping = true;
    check(
        &o,
        &[Action::FinishBootstrap {
            sysid: SYSID.into(),
        }],
    );
}

#[test]
fn b_1_7_bootstrap_waits_for_status_before_finishing() {
    let mut local = running(false, 1);
    local.in_recovery = None;
    let mut o = obs("pg0", cluster(&["initialize="]), local);
    o.mem.bootstrapping = true;
    check(&o, &[]);
}

#[test]
fn b_1_8_failed_bootstrap_is_aborted() {
    // Row B-2.4/1.8: remove initialize and the data directory, exit.
    let mut o = obs("pg0", cluster(&["initialize="]), stopped(DataState::Empty));
    o.last_result = Some(TaskResult::Failed(Task::Bootstrap, "initdb failed".into()));
    check(
        &o,
        &[Action::AbortBootstrap {
            reason: "initdb failed".into(),
        }],
    );
}

#[test]
fn b_leader_without_data_releases_the_key() {
    let o = obs(
        "pg0",
        cluster(&["leader=pg0", "member=pg0:primary"]),
        stopped(DataState::Empty),
    );
    check(&o, &[Action::ReleaseLeaderKey]);
}
