//! Flow ④ unhealthy cluster and the leader race.

use super::*;

#[test]
fn u_1_1_healthy_replica_races_and_promotes() {
    // Rows U-2.1/1.1, U-2.2/1.4.
    let o = obs(
        "pg1",
        cluster(&[
            &format!("initialize={SYSID}"),
            "member=pg1:replica",
            "optime=100",
        ]),
        running(true, 100),
    );
    check(&o, &[Action::AcquireLeaderKey, Action::Promote]);
}

#[test]
fn u_1_3_primary_without_leader_takes_the_key_only() {
    // Row U-2.2/1.3.
    let o = obs(
        "pg0",
        cluster(&[&format!("initialize={SYSID}")]),
        running(false, 100),
    );
    check(&o, &[Action::AcquireLeaderKey]);
}

#[test]
fn u_1_2_lagging_replica_does_not_race() {
    // Row U-2.1/1.2: too far behind the last known leader position.
    let o = obs(
        "pg1",
        cluster(&[&format!("initialize={SYSID}"), "optime=10000000"]),
        running(true, 100),
    );
    let d = check(&o, &[]);
    assert!(d.reason.contains("maximum_lag_on_failover"), "{}", d.reason);
}

#[test]
fn u_1_2_nofailover_replica_does_not_race() {
    let mut o = obs(
        "pg1",
        cluster(&[&format!("initialize={SYSID}")]),
        running(true, 100),
    );
    o.nofailover = true;
    check(&o, &[]);
}

#[test]
fn u_paused_cluster_does_not_race() {
    let o = obs(
        "pg1",
        cluster(&[&format!("initialize={SYSID}"), r#"config={"pause":true}"#]),
        running(true, 100),
    );
    check(&o, &[]);
}

#[test]
fn u_status_query_failure_decides_nothing_unsafe() {
    let mut local = running(true, 100);
    local.in_recovery = None;
    let o = obs("pg1", cluster(&[&format!("initialize={SYSID}")]), local);
    check(&o, &[]);
}

// ---- Flow ④ continued: the race among replicas (P2) --------------------------------------------

#[test]
fn u_2_1_peer_ahead_wins_the_race() {
    // Row U-2.1/1.1 (peers): a reachable peer with more WAL is healthier: do not race.
    let mut o = obs("pg1", no_leader(), running(true, 90));
    o.peers = vec![peer("pg2", 100)];
    let d = check(&o, &[]);
    assert!(
        d.reason.contains("Wal position of pg2 is ahead"),
        "{}",
        d.reason
    );
}

#[test]
fn u_2_1_equal_position_higher_priority_wins() {
    let mut o = obs("pg1", no_leader(), running(true, 100));
    let mut p = peer("pg2", 100);
    p.failover_priority = 2;
    o.peers = vec![p];
    let d = check(&o, &[]);
    assert!(
        d.reason.contains(
            "has equally tolerable WAL position and priority 2, while this node has priority 1"
        ),
        "{}",
        d.reason
    );
}

#[test]
fn u_2_1_healthiest_node_races() {
    let mut o = obs("pg1", no_leader(), running(true, 100));
    let mut behind = peer("pg2", 50);
    behind.failover_priority = 9;
    o.peers = vec![behind];
    check(&o, &[Action::AcquireLeaderKey, Action::Promote]);
}

#[test]
fn u_2_1_nofailover_peer_ahead_is_ignored() {
    let mut o = obs("pg1", no_leader(), running(true, 90));
    let mut p = peer("pg2", 100);
    p.nofailover = true;
    o.peers = vec![p];
    check(&o, &[Action::AcquireLeaderKey, Action::Promote]);
}

#[test]
fn u_2_1_live_primary_peer_stops_the_race() {
    let mut o = obs("pg1", no_leader(), running(true, 100));
    let mut p = peer("pg2", 10);
    p.primary = true;
    o.peers = vec![p];
    let d = check(&o, &[]);
    assert!(
        d.reason.contains("Primary (pg2) is still alive"),
        "{}",
        d.reason
    );
}

#[test]
fn u_2_1_paused_replica_yields_to_one_that_replayed_more() {
    // Row U-lag: replay paused: received WAL counts only once replayed.
    let mut local = running(true, 100);
    local.replay_position = Some(40);
    local.replay_paused = true;
    let mut o = obs("pg1", no_leader(), local);
    o.peers = vec![peer("pg2", 100)];
    check(&o, &[]);
    // ... and a paused replica beyond maximum_lag_on_failover does not race even alone.
    let mut local = running(true, 100);
    local.replay_position = Some(10);
    local.replay_paused = true;
    let mut o = obs(
        "pg1",
        cluster(&[&format!("initialize={SYSID}"), "optime=5000000"]),
        local,
    );
    o.peers = vec![];
    let d = check(&o, &[]);
    assert!(d.reason.contains("maximum_lag_on_failover"), "{}", d.reason);
}

#[test]
fn u_former_primary_yields_to_a_healthy_replica() {
    // Row C-2 follow-up: a crashed or demoted primary does not race against a healthy replica.
    let mut o = obs("pg1", no_leader(), running(true, 200));
    o.mem.needs_rewind = true;
    let d = check(&o, &[]);
    assert!(d.reason.contains("a replica takes over"), "{}", d.reason);
}
