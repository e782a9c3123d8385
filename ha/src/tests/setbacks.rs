//! Rows decided by the runner before P8, now rows of the core: the DCS unreachable (D-2), the
//! leader key found not ours (D-1/H-1.3), a failed rewind (R-4), and the decision memory.

use std::time::Duration;

use super::*;

fn offline(local: LocalPg) -> Observation {
    let mut o = obs("pg0", cluster(&[]), local);
    o.dcs = DcsView::Unreachable;
    o
}

#[test]
fn d_2_unreachable_dcs_demotes_a_running_primary_to_read_only() {
    check(
        &offline(running(false, 100)),
        &[Action::Demote { leader: None }],
    );
}

#[test]
fn d_2_unreachable_dcs_leaves_a_replica_and_a_stopped_node_alone() {
    check(&offline(running(true, 100)), &[]);
    check(&offline(stopped(initialized())), &[]);
}

#[test]
fn d_2_unreachable_dcs_does_not_demote_in_maintenance_mode() {
    let mut o = offline(running(false, 100));
    o.dynamic = ClusterConfig::parse(r#"{"pause":true}"#).expect("valid");
    check(&o, &[]);
}

#[test]
fn d_2_status_unknown_counts_as_the_role_last_seen() {
    // Running, but the status query did not answer: the last answer decides; never answered
    // counts as a primary (the safe side).
    let mut local = running(false, 100);
    local.in_recovery = None;
    let mut o = offline(local.clone());
    check(&o, &[Action::Demote { leader: None }]);
    o.mem.last_seen_primary = Some(false);
    check(&o, &[]);
    o.mem.last_seen_primary = Some(true);
    check(&o, &[Action::Demote { leader: None }]);
}

#[test]
fn d_2_a_setback_as_leader_is_the_same_row() {
    let o = obs(
        "pg0",
        cluster(&["leader=pg0", "member=pg0:primary"]),
        running(false, 100),
    );
    let d = after_setback(&o, &Setback::DcsUnreachable);
    assert_eq!(d.actions, [Action::Demote { leader: None }], "{}", d.reason);
}

#[test]
fn d_1_key_not_ours_stops_the_primary_without_restarting_it() {
    // The cycle read `leader = pg0` (us); the transaction found otherwise. PostgreSQL stops
    // at once; the next cycle decides whom to follow (and rewinds).
    let o = obs(
        "pg0",
        cluster(&["leader=pg0", "member=pg0:primary"]),
        running(false, 100),
    );
    let d = after_setback(&o, &Setback::KeyNotOurs);
    assert_eq!(
        d.actions,
        [Action::Demote {
            leader: Some(up("pg0", 5433))
        }],
        "{}",
        d.reason
    );
}

#[test]
fn d_1_key_not_ours_keeps_a_paused_primary_and_ignores_a_replica() {
    let c = cluster(&[
        "leader=pg0",
        "member=pg0:primary",
        r#"config={"pause":true}"#,
    ]);
    let mut o = obs("pg0", c, running(false, 100));
    o.dynamic = ClusterConfig::parse(r#"{"pause":true}"#).expect("valid");
    assert!(after_setback(&o, &Setback::KeyNotOurs).actions.is_empty());
    let o = obs(
        "pg0",
        cluster(&["leader=pg0", "member=pg0:primary"]),
        running(true, 100),
    );
    assert!(after_setback(&o, &Setback::KeyNotOurs).actions.is_empty());
}

#[test]
fn r_4_failed_rewind_removes_the_data_directory_when_allowed() {
    let c = cluster(&["leader=pg1", "member=pg1:primary", "member=pg0:replica"]);
    let mut o = obs("pg0", c, stopped(initialized()));
    o.mem.needs_rewind = true;
    o.mem.rewind_failed = true;
    o.remove_data_directory_on_rewind_failure = true;
    check(
        &o,
        &[Action::RemoveDataDirectory {
            reason: "pg_rewind failed".into(),
        }],
    );
}

#[test]
fn h_1_2_a_replica_already_following_the_leader_is_not_reconfigured() {
    let c = cluster(&["leader=pg1", "member=pg1:primary", "member=pg0:replica"]);
    let mut o = obs("pg0", c, running(true, 100));
    check(&o, &[Action::Follow(up("pg1", 5433))]);
    o.mem.following = Some("pg1".into());
    check(&o, &[]);
}

#[test]
fn memory_marks_a_stopped_former_primary_for_rewind_unless_it_leads() {
    let mut m = Memory::default();
    let local = stopped(initialized()); // pg_control: in production
    assert!(
        m.observe(Some(false), &local, true, NOW).is_none(),
        "busy: not yet"
    );
    assert!(!m.needs_rewind);
    assert!(m.observe(Some(false), &local, false, NOW).is_some());
    assert!(m.needs_rewind);
    assert!(
        m.observe(Some(false), &local, false, NOW).is_none(),
        "said once"
    );
    // Leading again as a running primary clears it.
    m.rewind_failed = true;
    m.observe(Some(true), &running(false, 1), false, NOW);
    assert!(!m.needs_rewind && !m.rewind_failed);
    // A clean standby shutdown is no former primary.
    let mut m = Memory::default();
    let standby = stopped(DataState::Initialized {
        sysid: SYSID.into(),
        cluster_state: "shut down in recovery".into(),
    });
    m.observe(Some(false), &standby, false, NOW);
    assert!(!m.needs_rewind);
}

#[test]
fn memory_times_the_leader_s_downtime() {
    let mut m = Memory::default();
    m.observe(Some(true), &stopped(initialized()), false, NOW);
    m.observe(
        Some(true),
        &stopped(initialized()),
        false,
        NOW + Duration::from_secs(5),
    );
    assert_eq!(m.primary_down_since, Some(NOW), "the clock starts once");
    m.observe(
        Some(true),
        &running(false, 1),
        false,
        NOW + Duration::from_secs(6),
    );
    assert_eq!(m.primary_down_since, None);
}

#[test]
fn memory_learns_from_outcomes() {
    let mut m = Memory::default();
    m.record(&Outcome::WonInitialize);
    assert!(m.bootstrapping);
    m.record(&Outcome::Bootstrapped);
    assert!(!m.bootstrapping);
    m.record(&Outcome::Streaming(Some("pg1".into())));
    m.record(&Outcome::Demoted);
    assert!(m.needs_rewind && m.following.is_none());
    assert_eq!(m.last_seen_primary, Some(false));
    m.record(&Outcome::TaskFinished(TaskResult::Failed(
        Task::Rewind,
        "x".into(),
    )));
    assert!(m.rewind_failed && m.needs_rewind);
    m.record(&Outcome::TaskFinished(TaskResult::Succeeded(Task::Rewind)));
    assert!(!m.rewind_failed && !m.needs_rewind);
    m.record(&Outcome::Reinitialized { from_leader: true });
    assert!(m.clone_from_leader);
    m.record(&Outcome::Cloning(Some("pg2".into())));
    assert!(!m.clone_from_leader);
    assert_eq!(m.following.as_deref(), Some("pg2"));
    m.needs_rewind = true;
    m.record(&Outcome::DataDirectoryRemoved);
    assert!(!m.needs_rewind && m.following.is_none());
}
