//! Failure cases: PostgreSQL crash, rejoin, history.

use super::*;

#[test]
fn c_1_crashed_leader_restarts_in_place() {
    // Row C-1: the leader's postmaster died: restart as primary, keep the key.
    let mut o = obs("pg0", leader_pg0(), stopped(initialized()));
    o.mem.primary_down_since = Some(NOW - std::time::Duration::from_secs(1));
    check(
        &o,
        &[Action::RefreshLeaderKey, Action::Start { standby_of: None }],
    );
}

#[test]
fn c_1_a_leader_whose_data_is_a_standby_starts_read_only_then_promotes() {
    // Row C-1': the host was lost while it promoted (pg_control says standby): start in
    // recovery, never as a primary on the old timeline; the next cycle promotes.
    let data = DataState::Initialized {
        sysid: SYSID.into(),
        cluster_state: ControlState::InArchiveRecovery,
    };
    let mut o = obs("pg0", leader_pg0(), stopped(data));
    o.mem.primary_down_since = Some(NOW - std::time::Duration::from_secs(1));
    check(
        &o,
        &[
            Action::RefreshLeaderKey,
            Action::Start {
                standby_of: Some(None),
            },
        ],
    );
    let mut o = obs("pg0", leader_pg0(), running(true, 100));
    o.mem.primary_down_since = None;
    assert!(decide(&o).actions.contains(&Action::Promote));
}

#[test]
fn c_2_primary_start_timeout_zero_fails_over_at_once() {
    // Row C-2: primary_start_timeout 0 and a healthy replica: release the key.
    let mut o = obs("pg0", leader_pg0(), stopped(initialized()));
    o.dynamic = ClusterConfig::parse(r#"{"primary_start_timeout":0}"#).expect("valid");
    o.mem.primary_down_since = Some(NOW - std::time::Duration::from_millis(10));
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
    o.mem.primary_down_since = Some(NOW - std::time::Duration::from_secs(100));
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
    o.mem.needs_rewind = true;
    check(&o, &[Action::Rewind(up("pg0", 5433))]);
}

#[test]
fn r_1_prime_a_stopped_standby_past_its_fork_rewinds_before_following() {
    // Row R-1': a demoted primary (or a standby that received from it) stopped on timeline 2
    // past the point where the cluster's history says timeline 2 ended (2000); this process
    // knows nothing of it (restarted), only pg_control does.
    let mut c = leader_pg0();
    c.history = Some(History {
        lines: vec![hline(1, None, None), hline(2, None, Some("pg0"))],
    });
    let mut local = stopped(initialized());
    local.stopped_at = Some((2, 2500));
    let o = obs("pg1", c.clone(), local.clone());
    check(&o, &[Action::Rewind(up("pg0", 5433))]);
    // At or before the fork it starts as a standby.
    local.stopped_at = Some((2, 2000));
    let o = obs("pg1", c, local);
    let d = decide(&o);
    assert!(
        matches!(d.actions.as_slice(), [Action::Start { .. }]),
        "{d:?}"
    );
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
    o.mem.needs_rewind = true;
    check(&o, &[]);
}

#[test]
fn r_2_demoted_standby_rewinds_once_a_leader_exists() {
    // Row R-2.
    let mut o = obs("pg1", leader_pg0(), running(true, 100));
    o.mem.needs_rewind = true;
    check(&o, &[Action::Rewind(up("pg0", 5433))]);
}

#[test]
fn r_3_without_pg_rewind_reclone_when_allowed() {
    // Row R-3.
    let mut o = obs("pg1", leader_pg0(), stopped(initialized()));
    o.mem.needs_rewind = true;
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
    o.mem.needs_rewind = true;
    o.mem.rewind_failed = true;
    check(&o, &[]);
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
fn h_a_history_stored_trimmed_is_not_written_again() {
    // An idle cluster writes nothing: with `max_timelines_history` the stored history is the
    // trimmed one, and it equals what the leader would write.
    let mut c = leader_pg0();
    c.config = Some(patrol_dcs::Versioned {
        value: ClusterConfig::from_map(
            serde_json::json!({"max_timelines_history": 2})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        ),
        version: 1,
    });
    c.history = Some(History {
        lines: vec![
            hline(2, Some("t2"), Some("pg1")),
            hline(3, Some("t3"), Some("pg0")),
        ],
    });
    let mut local = running(false, 100);
    local.timeline = Some(4);
    local.history = Some(History {
        lines: vec![
            hline(1, Some("t1"), None),
            hline(2, Some("t2"), Some("pg1")),
            hline(3, Some("t3"), Some("pg0")),
        ],
    });
    let mut o = obs("pg0", c, local);
    o.dynamic = ClusterConfig::from_map(
        serde_json::json!({"max_timelines_history": 2})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    let d = decide(&o);
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::WriteHistory(_))),
        "{d:?}"
    );
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
