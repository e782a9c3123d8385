//! Rows W-1..W-4: the watchdog (Patroni's `watchdog`): armed while the node leads, disarmed
//! otherwise, and with `mode: required` no leader key without it.

use super::*;

fn wd(required: bool, armed: bool) -> WatchdogView {
    WatchdogView {
        enabled: true,
        required,
        armed,
        failed: false,
    }
}

fn leader_running() -> Observation {
    obs("pg0", leader_pg0(), running(false, 100))
}

fn paused(mut c: Cluster) -> Cluster {
    c.config = ClusterConfig::parse(r#"{"pause":true}"#).map(|v| patrol_dcs::Versioned {
        version: 1,
        value: v,
    });
    c
}

fn slots() -> Action {
    Action::EnsureSlots {
        names: vec!["pg1".into()],
    }
}

#[test]
fn w_1_required_watchdog_that_cannot_work_keeps_the_node_out_of_the_race() {
    let mut o = obs(
        "pg1",
        cluster(&[&format!("initialize={SYSID}"), "optime=100"]),
        running(true, 100),
    );
    o.watchdog = wd(true, false);
    o.watchdog.failed = true;
    let d = check(&o, &[]);
    assert!(
        d.reason.contains("Watchdog device is not usable"),
        "{}",
        d.reason
    );
    // A usable one: the node races, arms the watchdog once it holds the key, then promotes.
    o.watchdog.failed = false;
    check(
        &o,
        &[
            Action::AcquireLeaderKey,
            Action::ArmWatchdog,
            Action::Promote,
        ],
    );
}

#[test]
fn w_2_leader_arms_the_watchdog_after_refreshing_the_key() {
    let mut o = leader_running();
    o.watchdog = wd(false, false);
    check(
        &o,
        &[Action::RefreshLeaderKey, Action::ArmWatchdog, slots()],
    );
    // Armed: fed by the refresh (the runner's keepalive), nothing more to do.
    o.watchdog.armed = true;
    check(&o, &[Action::RefreshLeaderKey, slots()]);
    // No watchdog (mode off, or automatic and the device failed): nothing.
    o.watchdog = WatchdogView::default();
    check(&o, &[Action::RefreshLeaderKey, slots()]);
}

#[test]
fn w_2_lock_holder_in_recovery_arms_before_promoting() {
    let mut o = obs("pg0", leader_pg0(), running(true, 100));
    o.watchdog = wd(true, false);
    check(
        &o,
        &[
            Action::RefreshLeaderKey,
            Action::ArmWatchdog,
            Action::Promote,
        ],
    );
}

#[test]
fn w_2_bootstrap_arms_before_taking_the_key() {
    let mut o = obs("pg0", cluster(&["initialize="]), running(false, 1));
    o.mem.bootstrapping = true;
    o.watchdog = wd(true, false);
    check(
        &o,
        &[
            Action::ArmWatchdog,
            Action::FinishBootstrap {
                sysid: SYSID.into(),
            },
        ],
    );
}

#[test]
fn w_3_maintenance_mode_disarms_and_never_arms() {
    let mut o = obs("pg0", paused(leader_pg0()), running(false, 100));
    o.dynamic = ClusterConfig::parse(r#"{"pause":true}"#).expect("valid");
    o.watchdog = wd(true, true);
    let d = decide(&o);
    assert_eq!(d.actions.last(), Some(&Action::DisarmWatchdog), "{d:?}");
    o.watchdog.armed = false;
    let d = decide(&o);
    assert!(!d.actions.contains(&Action::ArmWatchdog), "{d:?}");
}

#[test]
fn w_3_demotion_disarms_after_postgres_stopped() {
    // A primary that finds another node holding the key stops first, then disarms.
    let mut o = obs("pg1", leader_pg0(), running(false, 100));
    o.watchdog = wd(false, true);
    check(
        &o,
        &[
            Action::Demote {
                leader: Some(up("pg0", 5433)),
            },
            Action::DisarmWatchdog,
        ],
    );
    // The DCS is unreachable (row D-2): the same.
    let mut off = o.clone();
    off.dcs = DcsView::Unreachable;
    check(
        &off,
        &[Action::Demote { leader: None }, Action::DisarmWatchdog],
    );
    // The key was found not ours (row D-1).
    let mut lost = leader_running();
    lost.watchdog = wd(false, true);
    let d = after_setback(&lost, &Setback::KeyNotOurs);
    assert_eq!(
        d.actions,
        [
            Action::Demote {
                leader: Some(up("pg0", 5433))
            },
            Action::DisarmWatchdog
        ],
        "{}",
        d.reason
    );
    // A replica that still has it armed (the key was released by a switchover): disarm.
    let mut replica = obs("pg0", healthy_other_leader(), running(true, 100));
    replica.mem.following = Some("pg1".into());
    replica.watchdog = wd(false, true);
    check(&replica, &[Action::DisarmWatchdog]);
}

#[test]
fn w_3_planned_switchover_keeps_it_until_the_key_is_released() {
    let mut o = leader_running();
    o.in_flight = Some(Task::Demote);
    o.watchdog = wd(true, true);
    check(&o, &[Action::RefreshLeaderKey]);
    o.watchdog.armed = false;
    check(&o, &[Action::RefreshLeaderKey]);
}

#[test]
fn w_3_a_node_that_exits_disarms_first() {
    let mut o = obs("pg0", cluster(&["initialize="]), stopped(initialized()));
    o.mem.bootstrapping = true;
    o.watchdog = wd(true, true);
    let d = decide(&o);
    assert!(
        matches!(
            d.actions.as_slice(),
            [Action::DisarmWatchdog, Action::AbortBootstrap { .. }]
        ),
        "{d:?}"
    );
}

#[test]
fn w_4_required_watchdog_that_cannot_be_armed_gives_up_the_key() {
    // A replica that just took the key: no promotion, the key is released.
    let mut o = obs(
        "pg1",
        cluster(&[&format!("initialize={SYSID}"), "optime=100"]),
        running(true, 100),
    );
    o.watchdog = wd(true, false);
    let d = after_setback(&o, &Setback::WatchdogUnavailable);
    assert_eq!(d.actions, [Action::ReleaseLeaderKey]);
    assert_eq!(
        d.reason,
        "Not promoting self because watchdog could not be activated"
    );
    // A running primary: stopped at once, then the key is released.
    let mut p = leader_running();
    p.watchdog = wd(true, false);
    let d = after_setback(&p, &Setback::WatchdogUnavailable);
    assert_eq!(
        d.actions,
        [Action::Demote { leader: None }, Action::ReleaseLeaderKey]
    );
    assert_eq!(
        d.reason,
        "Demoting self because watchdog could not be activated"
    );
    // At the end of a bootstrap: the bootstrap is cancelled.
    let mut b = obs("pg0", cluster(&["initialize="]), running(false, 1));
    b.mem.bootstrapping = true;
    b.watchdog = wd(true, false);
    let d = after_setback(&b, &Setback::WatchdogUnavailable);
    assert!(
        matches!(d.actions.as_slice(), [Action::AbortBootstrap { .. }]),
        "{d:?}"
    );
}

fn healthy_other_leader() -> Cluster {
    cluster(&[
        &format!("initialize={SYSID}"),
        "leader=pg1",
        "member=pg0:replica",
        "member=pg1:primary",
        "optime=100",
    ])
}
