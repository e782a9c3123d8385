//! Manual switchover / failover (the `failover` key) and maintenance mode.

use super::*;

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
    o.mem.clone_from_leader = true;
    check(
        &o,
        &[Action::CreateReplica {
            from: Some(up("pg0", 5433)),
            basebackup_only: true,
        }],
    );
}

#[test]
fn a_peer_whose_postgres_is_down_is_not_a_live_primary() {
    let body =
        serde_json::json!({"state": "crashed", "role": "primary", "xlog": {"location": 100}});
    assert!(!PeerStatus::from_status("pg0", &body).primary);
    let body =
        serde_json::json!({"state": "running", "role": "primary", "xlog": {"location": 100}});
    assert!(PeerStatus::from_status("pg0", &body).primary);
}

#[test]
fn s_2_2_lost_key_during_promotion_demotes() {
    // Row S-2.2': found by the simulation (the simulation in sim/).
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
    o.mem.needs_rewind = true;
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
    o.mem.needs_rewind = true;
    check(&o, &[Action::AcquireLeaderKey, Action::Promote]);
}

#[test]
fn u_3_a_peer_on_an_abandoned_branch_does_not_outrank_the_new_timeline() {
    // pg0, the demoted stale primary, wrote past the end of timeline 1 (history: ended at
    // 1000); pg1, on timeline 2 and behind it in bytes, must still race.
    let mut local = running(true, 900);
    local.timeline = Some(2);
    let mut o = obs("pg1", no_leader_on_timeline_2(), local);
    o.mem.needs_rewind = true;
    let mut stale = peer("pg0", 5000);
    stale.timeline = 1;
    o.peers = vec![stale.clone()];
    check(&o, &[Action::AcquireLeaderKey, Action::Promote]);
    // Row U-tl: a replica of timeline 1 that stopped before the fork has nothing we lack,
    // whatever the bytes say; a peer of our own timeline further on does outrank us.
    stale.wal_position = 950;
    stale.replay_position = 950;
    o.peers = vec![stale.clone()];
    check(&o, &[Action::AcquireLeaderKey, Action::Promote]);
    let mut same = peer("pg2", 950);
    same.timeline = 2;
    o.peers = vec![stale, same];
    check(&o, &[]);
}

#[test]
fn u_tl_a_peer_on_a_newer_timeline_outranks_a_longer_older_one() {
    // A stale primary (timeline 1, 5000 bytes) came back while the cluster's history does not
    // know timeline 2 yet (its leader died before writing it): a replica that streamed from
    // timeline 2 holds commits acknowledged there, and it leads, not the longer timeline 1.
    let mut local = running(true, 5000);
    local.timeline = Some(1);
    let c = cluster(&[
        &format!("initialize={SYSID}"),
        "member=pg0:replica",
        "member=pg1:replica",
    ]);
    let mut o = obs("pg0", c, local);
    let mut newer = peer("pg1", 4000);
    newer.timeline = 2;
    o.peers = vec![newer];
    let d = check(&o, &[]);
    assert!(d.reason.contains("Timeline 2 of pg1"), "{}", d.reason);
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
