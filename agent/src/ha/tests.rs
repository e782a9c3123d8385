//! Decision-table tests: each case cites its row in docs/ha-decision-table.md (`S-` start-up
//! flow ①, `B-` bootstrap flow ②, `H-` healthy flow ③, `U-` unhealthy flow ④).

use patrol_dcs::{Cluster, ClusterConfig, History, Kv};

use super::decide::*;

const SYSID: &str = "7277694203142172922";

fn member_json(role: &str, port: u16, tags: &str) -> String {
    format!(
        r#"{{"conn_url":"postgres://127.0.0.1:{port}/postgres","api_url":"http://127.0.0.1:{}/patroni","state":"running","role":"{role}","version":"4.1.4"{tags}}}"#,
        port + 1000
    )
}

/// A cluster from compact key specs: `leader=pg0`, `initialize=<sysid>`, `member=pg1:replica`,
/// `member=pg2:replica:clonefrom`, `optime=<n>`, `config=<json>`.
fn cluster(specs: &[&str]) -> Cluster {
    let mut kvs = Vec::new();
    let mut port = 5432;
    for s in specs {
        let (k, v) = s.split_once('=').expect("spec is key=value");
        let kv = |key: &str, value: String| Kv {
            key: key.to_string(),
            value,
            mod_revision: 1,
            lease: 0,
        };
        match k {
            "leader" => kvs.push(kv("leader", v.into())),
            "initialize" => kvs.push(kv("initialize", v.into())),
            "optime" => kvs.push(kv("status", format!(r#"{{"optime":{v}}}"#))),
            "config" => kvs.push(kv("config", v.into())),
            "member" => {
                let mut parts = v.split(':');
                let name = parts.next().expect("member name");
                let role = parts.next().unwrap_or("replica");
                let tags = match parts.next() {
                    Some(t) => format!(r#","tags":{{"{t}":true}}"#),
                    None => String::new(),
                };
                port += 1;
                kvs.push(kv(
                    &format!("members/{name}"),
                    member_json(role, port, &tags),
                ));
            }
            other => panic!("unknown spec {other}"),
        }
    }
    Cluster::from_kvs(10, &kvs)
}

fn initialized() -> DataState {
    DataState::Initialized {
        sysid: SYSID.into(),
        cluster_state: "in production".into(),
    }
}

fn running(in_recovery: bool, pos: u64) -> LocalPg {
    LocalPg {
        data: initialized(),
        running: true,
        in_recovery: Some(in_recovery),
        wal_position: Some(pos),
        timeline: Some(1),
        replay_position: in_recovery.then_some(pos),
        replay_paused: false,
        following: None,
        history: None,
    }
}

fn stopped(data: DataState) -> LocalPg {
    LocalPg {
        data,
        running: false,
        in_recovery: None,
        wal_position: None,
        timeline: None,
        replay_position: None,
        replay_paused: false,
        following: None,
        history: None,
    }
}

fn obs(me: &str, cluster: Cluster, local: LocalPg) -> Observation {
    Observation {
        me: me.into(),
        cluster,
        local,
        dynamic: ClusterConfig::default(),
        in_flight: None,
        last_result: None,
        bootstrapping: false,
        can_bootstrap: true,
        nofailover: false,
        failover_priority: 1,
        peers: Vec::new(),
        primary_down_for: None,
        needs_rewind: false,
        rewind_failed: false,
        use_pg_rewind: true,
        remove_data_directory_on_rewind_failure: false,
        remove_data_directory_on_diverged_timelines: false,
        now_epoch_ms: 1_700_000_000_000,
        clone_from_leader: false,
    }
}

fn up(name: &str, port: u16) -> Upstream {
    Upstream {
        name: name.into(),
        conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
    }
}

/// The one helper every case uses: the decision's actions must equal `expected`.
fn check(o: &Observation, expected: &[Action]) -> Decision {
    let d = decide(o);
    assert_eq!(d.actions, expected, "reason: {}", d.reason);
    assert!(!d.reason.is_empty());
    d
}

// ---- Flow ① start-up -------------------------------------------------------------------------

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

// ---- Flow ② bootstrap --------------------------------------------------------------------------

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
    check(&o, &[Action::CloneFrom(up("pg0", 5433))]);
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
    check(&o, &[Action::CloneFrom(up("pg1", 5434))]);
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
    o.bootstrapping = true;
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
    o.bootstrapping = true;
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

// ---- Flow ③ healthy cluster --------------------------------------------------------------------

#[test]
fn h_1_1_leader_running_as_primary_refreshes_and_keeps_slots() {
    // Rows H-2.1/1.1, 1.5.
    let o = obs(
        "pg0",
        cluster(&[
            &format!("initialize={SYSID}"),
            "leader=pg0",
            "member=pg0:primary",
            "member=pg1:replica",
            "member=pg-2:replica",
        ]),
        running(false, 100),
    );
    check(
        &o,
        &[
            Action::RefreshLeaderKey,
            Action::EnsureSlots {
                names: vec!["pg1".into(), "pg_2".into()],
            },
        ],
    );
}

#[test]
fn h_1_1_no_slots_without_use_slots() {
    let mut o = obs(
        "pg0",
        cluster(&[
            &format!("initialize={SYSID}"),
            "leader=pg0",
            "member=pg0:primary",
            "member=pg1:replica",
        ]),
        running(false, 100),
    );
    o.dynamic = ClusterConfig::parse(r#"{"postgresql":{"use_slots":false}}"#).expect("valid");
    check(
        &o,
        &[
            Action::RefreshLeaderKey,
            Action::EnsureSlots { names: vec![] },
        ],
    );
}

#[test]
fn h_1_4_leader_running_as_replica_promotes() {
    // Row H-2.1/1.4.
    let o = obs(
        "pg0",
        cluster(&[
            &format!("initialize={SYSID}"),
            "leader=pg0",
            "member=pg0:replica",
        ]),
        running(true, 100),
    );
    check(&o, &[Action::RefreshLeaderKey, Action::Promote]);
}

#[test]
fn h_1_2_primary_without_the_key_is_demoted() {
    // Row H-2.1/1.2 (a running primary that does not hold the key stops accepting writes).
    let o = obs(
        "pg1",
        cluster(&[
            &format!("initialize={SYSID}"),
            "leader=pg0",
            "member=pg0:primary",
        ]),
        running(false, 100),
    );
    check(
        &o,
        &[Action::Demote {
            leader: Some(up("pg0", 5433)),
        }],
    );
}

// ---- Flow ④ unhealthy cluster ------------------------------------------------------------------

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

fn peer(name: &str, pos: u64) -> PeerStatus {
    PeerStatus {
        name: name.into(),
        primary: false,
        wal_position: pos,
        replay_position: pos,
        paused: false,
        nofailover: false,
        failover_priority: 1,
        watchdog_failed: false,
        timeline: 1,
    }
}

fn no_leader() -> Cluster {
    cluster(&[
        &format!("initialize={SYSID}"),
        "member=pg1:replica",
        "member=pg2:replica",
        "optime=100",
    ])
}

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
    o.needs_rewind = true;
    let d = check(&o, &[]);
    assert!(d.reason.contains("a replica takes over"), "{}", d.reason);
}

// ---- Failure cases: PostgreSQL crash, rejoin, history ----------------------------------------

fn leader_pg0() -> Cluster {
    cluster(&[
        &format!("initialize={SYSID}"),
        "leader=pg0",
        "member=pg0:primary",
        "member=pg1:replica",
        "optime=100",
    ])
}

#[test]
fn c_1_crashed_leader_restarts_in_place() {
    // Row C-1: the leader's postmaster died: restart as primary, keep the key.
    let mut o = obs("pg0", leader_pg0(), stopped(initialized()));
    o.primary_down_for = Some(std::time::Duration::from_secs(1));
    check(
        &o,
        &[Action::RefreshLeaderKey, Action::Start { standby_of: None }],
    );
}

#[test]
fn c_2_primary_start_timeout_zero_fails_over_at_once() {
    // Row C-2: primary_start_timeout 0 and a healthy replica: release the key.
    let mut o = obs("pg0", leader_pg0(), stopped(initialized()));
    o.dynamic = ClusterConfig::parse(r#"{"primary_start_timeout":0}"#).expect("valid");
    o.primary_down_for = Some(std::time::Duration::from_millis(10));
    check(&o, &[Action::ReleaseLeaderKey]);
}

#[test]
fn c_2_timeout_without_a_candidate_keeps_trying() {
    let mut o = obs(
        "pg0",
        cluster(&[
            &format!("initialize={SYSID}"),
            "leader=pg0",
            "member=pg0:primary",
        ]),
        stopped(initialized()),
    );
    o.dynamic = ClusterConfig::parse(r#"{"primary_start_timeout":0}"#).expect("valid");
    o.primary_down_for = Some(std::time::Duration::from_secs(100));
    check(
        &o,
        &[Action::RefreshLeaderKey, Action::Start { standby_of: None }],
    );
}

#[test]
fn c_3_crashed_replica_restarts_as_replica() {
    // Row C-3.
    let o = obs("pg1", leader_pg0(), stopped(initialized()));
    check(
        &o,
        &[Action::Start {
            standby_of: Some(Some(up("pg0", 5433))),
        }],
    );
}

#[test]
fn r_1_former_primary_rewinds_before_following() {
    // Row R-1.
    let mut o = obs("pg1", leader_pg0(), stopped(initialized()));
    o.needs_rewind = true;
    check(&o, &[Action::Rewind(up("pg0", 5433))]);
}

#[test]
fn r_1_waits_while_the_leader_is_still_promoting() {
    let mut o = obs(
        "pg1",
        cluster(&[
            &format!("initialize={SYSID}"),
            "leader=pg0",
            "member=pg0:replica",
        ]),
        stopped(initialized()),
    );
    o.needs_rewind = true;
    check(&o, &[]);
}

#[test]
fn r_2_demoted_standby_rewinds_once_a_leader_exists() {
    // Row R-2.
    let mut o = obs("pg1", leader_pg0(), running(true, 100));
    o.needs_rewind = true;
    check(&o, &[Action::Rewind(up("pg0", 5433))]);
}

#[test]
fn r_3_without_pg_rewind_reclone_when_allowed() {
    // Row R-3.
    let mut o = obs("pg1", leader_pg0(), stopped(initialized()));
    o.needs_rewind = true;
    o.use_pg_rewind = false;
    o.remove_data_directory_on_diverged_timelines = true;
    let d = decide(&o);
    assert!(
        matches!(&d.actions[..], [Action::RemoveDataDirectory { .. }]),
        "{d:?}"
    );
    o.remove_data_directory_on_diverged_timelines = false;
    check(
        &o,
        &[Action::Start {
            standby_of: Some(Some(up("pg0", 5433))),
        }],
    );
}

#[test]
fn r_4_failed_rewind_stays_down() {
    let mut o = obs("pg1", leader_pg0(), stopped(initialized()));
    o.needs_rewind = true;
    o.rewind_failed = true;
    check(&o, &[]);
}

fn hline(tl: u64, ts: Option<&str>, who: Option<&str>) -> patrol_dcs::HistoryLine {
    patrol_dcs::HistoryLine {
        timeline: tl,
        lsn: tl * 1000,
        reason: "no recovery target specified".into(),
        timestamp: ts.map(String::from),
        new_leader: who.map(String::from),
    }
}

#[test]
fn h_history_is_published_after_promotion_and_keeps_old_stamps() {
    // Row H-hist.
    let mut c = leader_pg0();
    c.history = Some(History {
        lines: vec![hline(1, Some("t1"), Some("pg1"))],
    });
    let mut local = running(false, 100);
    local.timeline = Some(3);
    local.history = Some(History {
        lines: vec![hline(1, None, None), hline(2, Some("t2"), Some("pg0"))],
    });
    let o = obs("pg0", c, local);
    let d = decide(&o);
    let expected = History {
        lines: vec![
            hline(1, Some("t1"), Some("pg1")),
            hline(2, Some("t2"), Some("pg0")),
        ],
    };
    assert!(d.actions.contains(&Action::WriteHistory(expected)), "{d:?}");
}

#[test]
fn h_history_never_goes_backwards() {
    let mut c = leader_pg0();
    c.history = Some(History {
        lines: vec![
            hline(1, Some("t1"), Some("pg1")),
            hline(2, Some("t2"), Some("pg2")),
            hline(3, Some("t3"), Some("pg1")),
        ],
    });
    let mut local = running(false, 100);
    local.history = Some(History {
        lines: vec![hline(1, None, None), hline(2, Some("t2"), Some("pg0"))],
    });
    let o = obs("pg0", c, local);
    let d = decide(&o);
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::WriteHistory(_))),
        "{d:?}"
    );
}

// ---- Manual switchover / failover (the `failover` key) and maintenance mode ---------------------

fn with_failover(mut c: Cluster, json: &str) -> Cluster {
    c.failover = Some(patrol_dcs::Versioned {
        version: 7,
        value: patrol_dcs::Failover::parse(json),
    });
    c
}

fn healthy3() -> Cluster {
    let mut c = cluster(&[
        &format!("initialize={SYSID}"),
        "leader=pg0",
        "member=pg0:primary",
        "member=pg1:replica",
        "member=pg2:replica",
        "optime=100",
    ]);
    for m in c.members.iter_mut() {
        m.data.xlog_location = Some(100);
    }
    c
}

#[test]
fn m_1_leader_demotes_gracefully_for_a_switchover() {
    // Row M-1.
    let o = obs(
        "pg0",
        with_failover(healthy3(), r#"{"leader":"pg0","member":"pg1"}"#),
        running(false, 100),
    );
    check(&o, &[Action::RefreshLeaderKey, Action::GracefulDemote]);
}

#[test]
fn m_1_switchover_to_an_unknown_or_unhealthy_candidate_is_cleared() {
    let o = obs(
        "pg0",
        with_failover(healthy3(), r#"{"leader":"pg0","member":"pgX"}"#),
        running(false, 100),
    );
    check(
        &o,
        &[
            Action::RefreshLeaderKey,
            Action::ClearFailover { version: 7 },
        ],
    );
    let o = obs(
        "pg0",
        with_failover(healthy3(), r#"{"leader":"pg9","member":"pg1"}"#),
        running(false, 100),
    );
    check(
        &o,
        &[
            Action::RefreshLeaderKey,
            Action::ClearFailover { version: 7 },
        ],
    );
}

#[test]
fn m_1_scheduled_switchover_waits_until_due_and_expires() {
    let mut o = obs(
        "pg0",
        with_failover(
            healthy3(),
            r#"{"leader":"pg0","member":"pg1","scheduled_at":"2023-11-14T22:13:30+00:00"}"#,
        ),
        running(false, 100),
    );
    // 2023-11-14T22:13:30Z = 1_700_000_010_000 ms: 10 s in the future.
    let d = decide(&o);
    assert!(!d.actions.contains(&Action::GracefulDemote), "{d:?}");
    o.now_epoch_ms = 1_700_000_010_500;
    check(&o, &[Action::RefreshLeaderKey, Action::GracefulDemote]);
    o.now_epoch_ms = 1_700_000_030_000;
    check(
        &o,
        &[
            Action::RefreshLeaderKey,
            Action::ClearFailover { version: 7 },
        ],
    );
}

fn unlocked_after_switchover(json: &str) -> Cluster {
    let mut c = healthy3();
    c.leader = None;
    with_failover(c, json)
}

#[test]
fn m_2_named_candidate_takes_the_key_without_checks() {
    // Row M-2: even when a peer is ahead.
    let mut o = obs(
        "pg1",
        unlocked_after_switchover(r#"{"leader":"pg0","member":"pg1"}"#),
        running(true, 90),
    );
    o.peers = vec![peer("pg2", 100)];
    check(
        &o,
        &[
            Action::AcquireLeaderKey,
            Action::ClearFailover { version: 7 },
            Action::Promote,
        ],
    );
}

#[test]
fn m_3_others_defer_to_a_reachable_candidate() {
    // Row M-3.
    let mut o = obs(
        "pg2",
        unlocked_after_switchover(r#"{"leader":"pg0","member":"pg1"}"#),
        running(true, 100),
    );
    o.peers = vec![peer("pg1", 90)];
    check(&o, &[]);
    // Candidate unreachable: a normal race among the others.
    o.peers = vec![];
    check(
        &o,
        &[
            Action::AcquireLeaderKey,
            Action::ClearFailover { version: 7 },
            Action::Promote,
        ],
    );
}

#[test]
fn m_3_former_leader_does_not_retake_the_key() {
    let o = obs(
        "pg0",
        unlocked_after_switchover(r#"{"leader":"pg0"}"#),
        running(true, 100),
    );
    let d = check(&o, &[]);
    assert!(d.reason.contains("I was the leader"), "{}", d.reason);
}

#[test]
fn p_1_paused_node_does_not_start_postgres() {
    // Row P-1.
    let mut c = healthy3();
    c.config = ClusterConfig::parse(r#"{"pause":true}"#).map(|v| patrol_dcs::Versioned {
        version: 1,
        value: v,
    });
    let o = obs("pg1", c.clone(), stopped(initialized()));
    check(&o, &[]);
    let o = obs("pg0", c, stopped(initialized()));
    check(&o, &[Action::ReleaseLeaderKey]);
}

#[test]
fn p_3_paused_primary_without_key_is_not_demoted() {
    // Row P-3.
    let mut c = healthy3();
    c.config = ClusterConfig::parse(r#"{"pause":true}"#).map(|v| patrol_dcs::Versioned {
        version: 1,
        value: v,
    });
    let o = obs("pg1", c, running(false, 100));
    check(&o, &[]);
}

#[test]
fn p_4_paused_unlocked_primary_takes_the_key_replicas_wait() {
    // Row P-4.
    let mut c = cluster(&[&format!("initialize={SYSID}"), "member=pg1:replica"]);
    c.config = ClusterConfig::parse(r#"{"pause":true}"#).map(|v| patrol_dcs::Versioned {
        version: 1,
        value: v,
    });
    let o = obs("pg0", c.clone(), running(false, 100));
    check(&o, &[Action::AcquireLeaderKey]);
    let o = obs("pg1", c, running(true, 100));
    check(&o, &[]);
}

#[test]
fn p_2_paused_leader_running_as_replica_releases() {
    let mut c = healthy3();
    c.config = ClusterConfig::parse(r#"{"pause":true}"#).map(|v| patrol_dcs::Versioned {
        version: 1,
        value: v,
    });
    let o = obs("pg0", c, running(true, 100));
    check(&o, &[Action::ReleaseLeaderKey]);
}

#[test]
fn reinit_from_leader_ignores_clonefrom() {
    let mut o = obs(
        "pg2",
        cluster(&[
            &format!("initialize={SYSID}"),
            "leader=pg0",
            "member=pg0:primary",
            "member=pg1:replica:clonefrom",
        ]),
        stopped(DataState::Empty),
    );
    o.clone_from_leader = true;
    check(&o, &[Action::CloneFrom(up("pg0", 5433))]);
}

#[test]
fn a_peer_whose_postgres_is_down_is_not_a_live_primary() {
    let body =
        serde_json::json!({"state": "crashed", "role": "primary", "xlog": {"location": 100}});
    assert!(!super::runner::peer_from_status("pg0", &body).primary);
    let body =
        serde_json::json!({"state": "running", "role": "primary", "xlog": {"location": 100}});
    assert!(super::runner::peer_from_status("pg0", &body).primary);
}

#[test]
fn s_2_2_lost_key_during_promotion_demotes() {
    // Row S-2.2': found by the simulation (seed replays in agent/tests/simulation.rs).
    let mut o = obs("pg2", leader_pg0(), running(true, 100));
    o.in_flight = Some(Task::Promote);
    check(
        &o,
        &[Action::Demote {
            leader: Some(up("pg0", 5433)),
        }],
    );
    o.in_flight = Some(Task::StartPrimary);
    check(
        &o,
        &[Action::Demote {
            leader: Some(up("pg0", 5433)),
        }],
    );
    // A plain start as a standby just waits.
    o.in_flight = Some(Task::Start);
    check(&o, &[]);
}

#[test]
fn r_5_replica_past_the_fork_is_rewound() {
    // Row R-5: still on timeline 1 at 5000 but the cluster's timeline 1 ended at 1000.
    let mut c = leader_pg0();
    c.history = Some(History {
        lines: vec![hline(1, Some("t"), Some("pg0"))],
    });
    let mut local = running(true, 5000);
    local.timeline = Some(1);
    let o = obs("pg1", c.clone(), local);
    check(&o, &[Action::Rewind(up("pg0", 5433))]);
    // Before the fork point it just follows.
    let mut local = running(true, 900);
    local.timeline = Some(1);
    let o = obs("pg1", c, local);
    check(&o, &[Action::Follow(up("pg0", 5433))]);
}

/// A cluster without a leader whose history says timeline 1 ended (so the cluster is on 2).
fn no_leader_on_timeline_2() -> Cluster {
    let mut c = cluster(&[
        &format!("initialize={SYSID}"),
        "member=pg0:primary",
        "member=pg1:replica",
    ]);
    c.history = Some(History {
        lines: vec![hline(1, Some("t1"), Some("pg1"))],
    });
    c
}

#[test]
fn u_3_stale_primary_never_takes_the_key() {
    // Row U-3: frozen past its lease, woken after the new leader (timeline 2) died too: a
    // running primary still on timeline 1 demotes instead of racing, whatever check_timeline.
    let mut local = running(false, 5000);
    local.timeline = Some(1);
    let o = obs("pg0", no_leader_on_timeline_2(), local);
    let d = check(&o, &[Action::Demote { leader: None }]);
    assert!(d.reason.contains("timeline 1 is behind"), "{}", d.reason);
}

#[test]
fn u_3_a_primary_on_the_cluster_s_timeline_still_races() {
    let mut local = running(false, 5000);
    local.timeline = Some(2);
    let o = obs("pg0", no_leader_on_timeline_2(), local);
    check(&o, &[Action::AcquireLeaderKey]);
}

#[test]
fn u_3_a_demoted_stale_primary_waits_to_rewind() {
    // After the demotion it runs read-only and still needs a rewind: it does not race either.
    let mut local = running(true, 5000);
    local.timeline = Some(1);
    let mut o = obs("pg0", no_leader_on_timeline_2(), local);
    o.needs_rewind = true;
    let d = check(&o, &[]);
    assert!(d.reason.contains("timeline 1 is behind"), "{}", d.reason);
}

#[test]
fn u_3_a_replica_behind_races_unless_check_timeline() {
    // Replicas keep Patroni's rule: the timeline counts only with check_timeline (for a
    // replica that stopped before the fork: timeline 1 ended at 1000).
    let mut local = running(true, 900);
    local.timeline = Some(1);
    let o = obs("pg1", no_leader_on_timeline_2(), local.clone());
    check(&o, &[Action::AcquireLeaderKey, Action::Promote]);
    let mut o = obs("pg1", no_leader_on_timeline_2(), local);
    o.dynamic = ClusterConfig::from_map(
        serde_json::json!({"check_timeline": true})
            .as_object()
            .expect("object")
            .clone(),
    );
    check(&o, &[]);
}

#[test]
fn u_3_a_crashed_leader_does_not_yield_to_a_replica_left_behind() {
    // The new leader (pg1, timeline 2) crashed and came back read-only; the only other member
    // is the stale former primary, still on timeline 1: it cannot race (Row U-3), so pg1 must
    // not yield to it.
    let mut c = no_leader_on_timeline_2();
    let stale = c.members.iter_mut().find(|m| m.name == "pg0").expect("pg0");
    stale.data.role = patrol_dcs::Role::Replica;
    stale.data.timeline = Some(1);
    let mut local = running(true, 5000);
    local.timeline = Some(2);
    let mut o = obs("pg1", c, local);
    o.needs_rewind = true;
    check(&o, &[Action::AcquireLeaderKey, Action::Promote]);
}

#[test]
fn u_3_a_peer_on_an_abandoned_branch_does_not_outrank_the_new_timeline() {
    // pg0, the demoted stale primary, wrote past the end of timeline 1 (history: ended at
    // 1000); pg1, on timeline 2 and behind it in bytes, must still race.
    let mut local = running(true, 900);
    local.timeline = Some(2);
    let mut o = obs("pg1", no_leader_on_timeline_2(), local);
    o.needs_rewind = true;
    let mut stale = peer("pg0", 5000);
    stale.timeline = 1;
    o.peers = vec![stale.clone()];
    check(&o, &[Action::AcquireLeaderKey, Action::Promote]);
    // A replica of timeline 1 that stopped before the fork is an ordinary peer.
    stale.wal_position = 950;
    stale.replay_position = 950;
    o.peers = vec![stale];
    check(&o, &[]);
}

#[test]
fn s_2_2_restart_runs_as_a_task() {
    // Row S-2.2: the leader's restart keeps the key refreshed; a replica's just waits.
    let mut o = obs("pg0", leader_pg0(), stopped(initialized()));
    o.in_flight = Some(Task::RestartPrimary);
    check(&o, &[Action::RefreshLeaderKey]);
    let mut o = obs("pg1", leader_pg0(), stopped(initialized()));
    o.in_flight = Some(Task::Restart);
    check(&o, &[]);
    // Row S-2.2': the key was lost while restarting as primary: abort and demote.
    let mut o = obs("pg2", leader_pg0(), running(false, 100));
    o.in_flight = Some(Task::RestartPrimary);
    check(
        &o,
        &[Action::Demote {
            leader: Some(up("pg0", 5433)),
        }],
    );
}

#[test]
fn u_3_a_replica_past_the_fork_never_races() {
    // It received timeline 1 past its end (1000) from a stale primary: promoting it would
    // serve the abandoned branch, whatever check_timeline.
    let mut local = running(true, 5000);
    local.timeline = Some(1);
    let o = obs("pg1", no_leader_on_timeline_2(), local);
    let d = check(&o, &[]);
    assert!(
        d.reason.contains("went past the end of timeline 1"),
        "{}",
        d.reason
    );
}
