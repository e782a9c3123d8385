//! Flow ① start-up.

use super::*;

#[test]
fn s_2_5_empty_data_dir_no_cluster_races_for_initialize() {
    // Rows S-2.5 -> B-2.2/1.4.
    let o = obs("pg0", cluster(&[]), stopped(DataState::Empty));
    check(&o, &[Action::RaceInitialize, Action::Bootstrap]);
}

#[test]
fn s_2_2_long_operation_in_progress_waits() {
    // Row S-2.2: a node that does not hold the key just waits.
    let mut o = obs(
        "pg1",
        cluster(&["leader=pg0", "member=pg0:primary"]),
        stopped(DataState::Empty),
    );
    o.in_flight = Some(Task::Clone);
    check(&o, &[]);
}

#[test]
fn s_2_3_long_operation_on_the_leader_keeps_the_key() {
    // Row S-2.3/1.3: the lock holder refreshes while its operation runs.
    let mut o = obs(
        "pg0",
        cluster(&["leader=pg0", "member=pg0:primary"]),
        running(false, 1),
    );
    o.in_flight = Some(Task::Start);
    check(&o, &[Action::RefreshLeaderKey]);
}

#[test]
fn s_2_7_foreign_data_directory_is_fatal() {
    // Row S-2.7/1.7.
    let o = obs(
        "pg0",
        cluster(&[
            "initialize=1111111111111111111",
            "leader=pg1",
            "member=pg1:primary",
        ]),
        running(true, 1),
    );
    let d = decide(&o);
    assert!(
        matches!(&d.actions[..], [Action::Fatal { reason }] if reason.contains("belongs to another cluster")),
        "{d:?}"
    );
}

#[test]
fn s_2_8_existing_data_without_initialize_is_adopted() {
    // Row S-2.8 (spec 5.2 step 10): no initialize key, no leader: adopt our sysid.
    let o = obs("pg0", cluster(&[]), running(false, 1));
    check(
        &o,
        &[Action::WriteInitialize {
            sysid: SYSID.into(),
        }],
    );
}

#[test]
fn s_2_8_running_replica_without_initialize_is_fatal() {
    let o = obs("pg0", cluster(&[]), running(true, 1));
    let d = decide(&o);
    assert!(matches!(&d.actions[..], [Action::Fatal { .. }]), "{d:?}");
}

#[test]
fn s_2_9_stopped_replica_starts_following_the_leader() {
    // Row S-2.9/1.9 with a leader.
    let o = obs(
        "pg1",
        cluster(&[
            &format!("initialize={SYSID}"),
            "leader=pg0",
            "member=pg0:primary",
        ]),
        stopped(initialized()),
    );
    check(
        &o,
        &[Action::Start {
            standby_of: Some(Some(up("pg0", 5433))),
        }],
    );
}

#[test]
fn s_2_9_stopped_node_without_leader_starts_read_only() {
    // Row S-2.9/1.9 without a leader: read-only with the recovery flag, following nobody.
    let o = obs(
        "pg1",
        cluster(&[&format!("initialize={SYSID}")]),
        stopped(initialized()),
    );
    check(
        &o,
        &[Action::Start {
            standby_of: Some(None),
        }],
    );
}

#[test]
fn s_2_9_stopped_leader_starts_as_primary() {
    let o = obs(
        "pg0",
        cluster(&[
            &format!("initialize={SYSID}"),
            "leader=pg0",
            "member=pg0:primary",
        ]),
        stopped(initialized()),
    );
    check(
        &o,
        &[Action::RefreshLeaderKey, Action::Start { standby_of: None }],
    );
}

#[test]
fn s_2_10_healthy_node_with_leader_runs_flow_3() {
    // Row S-2.10 -> H: a streaming replica follows.
    let o = obs(
        "pg1",
        cluster(&[
            &format!("initialize={SYSID}"),
            "leader=pg0",
            "member=pg0:primary",
            "member=pg1:replica",
        ]),
        running(true, 100),
    );
    check(&o, &[Action::Follow(up("pg0", 5433))]);
}

#[test]
fn s_invalid_data_dir_waits() {
    let o = obs(
        "pg1",
        cluster(&[]),
        stopped(DataState::Invalid("no pg_control".into())),
    );
    check(&o, &[]);
}
