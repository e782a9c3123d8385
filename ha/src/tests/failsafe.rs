//! Failsafe mode: rows D-2F (the primary without the DCS), D-2F' (a member a failsafe leader
//! called), U-2F (the race) and the leader's `failsafe` key.

use crate::failsafe::{self, FailsafeCheck, FailsafeLeader};

use super::*;

const ON: &str = r#"{"failsafe_mode":true}"#;
const KEY: &str =
    r#"{"pg0":"http://127.0.0.1:6433/patroni","pg1":"http://127.0.0.1:6434/patroni"}"#;

fn offline_primary(mode: &str, check: Option<FailsafeCheck>) -> Observation {
    let mut o = obs("pg0", cluster(&[]), running(false, 100));
    o.dcs = DcsView::Unreachable;
    o.dynamic = ClusterConfig::parse(mode).expect("valid");
    o.failsafe_check = check;
    o
}

#[test]
fn d_2f_every_member_accepted_the_primary_holds() {
    let o = offline_primary(ON, Some(FailsafeCheck::Accepted));
    assert!(failsafe::wants_check(&o));
    let d = check(&o, &[Action::HoldAsFailsafe]);
    assert!(
        d.reason.contains("failsafe mode is enabled"),
        "{}",
        d.reason
    );
    // The same answer after the leader's refresh failed in a cycle that read the cluster.
    let mut o = obs(
        "pg0",
        cluster(&[&format!("config={ON}"), "leader=pg0", "member=pg0:primary"]),
        running(false, 100),
    );
    o.dynamic = ClusterConfig::parse(ON).expect("valid");
    o.failsafe_check = Some(FailsafeCheck::Accepted);
    let d = after_setback(&o, &Setback::DcsUnreachable);
    assert_eq!(d.actions, [Action::HoldAsFailsafe], "{}", d.reason);
}

#[test]
fn d_2f_a_hold_keeps_the_watchdog_armed() {
    let mut o = offline_primary(ON, Some(FailsafeCheck::Accepted));
    o.watchdog.enabled = true;
    o.watchdog.armed = true;
    check(&o, &[Action::HoldAsFailsafe]);
    o.failsafe_check = Some(FailsafeCheck::NotInKey);
    check(
        &o,
        &[Action::Demote { leader: None }, Action::DisarmWatchdog],
    );
}

#[test]
fn d_2f_a_refusal_a_silent_member_or_no_place_in_the_key_demotes() {
    for c in [
        FailsafeCheck::Refused(vec!["pg1".into()]),
        FailsafeCheck::NotInKey,
    ] {
        check(
            &offline_primary(ON, Some(c)),
            &[Action::Demote { leader: None }],
        );
    }
    // Not asked (the runner failed to): demote, never hold.
    check(
        &offline_primary(ON, None),
        &[Action::Demote { leader: None }],
    );
}

#[test]
fn d_2f_failsafe_mode_off_demotes_whatever_the_answer() {
    let o = offline_primary("{}", Some(FailsafeCheck::Accepted));
    assert!(!failsafe::wants_check(&o));
    check(&o, &[Action::Demote { leader: None }]);
}

#[test]
fn d_2f_only_a_possible_primary_asks_and_never_in_maintenance_mode() {
    let mut o = offline_primary(ON, None);
    o.local = running(true, 100);
    assert!(!failsafe::wants_check(&o), "a replica does not ask");
    check(&o, &[]);
    let o = offline_primary(r#"{"failsafe_mode":true,"pause":true}"#, None);
    assert!(
        !failsafe::wants_check(&o),
        "maintenance mode keeps the primary anyway"
    );
    check(&o, &[]);
}

#[test]
fn d_2f_whom_to_ask() {
    let key = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(KEY).unwrap();
    assert_eq!(
        failsafe::members_to_ask(Some(&key), "pg0"),
        Some(vec![("pg1".into(), "http://127.0.0.1:6434/patroni".into())])
    );
    assert_eq!(failsafe::members_to_ask(Some(&key), "pg2"), None);
    assert_eq!(failsafe::members_to_ask(None, "pg0"), None);
    let alone = serde_json::from_str(r#"{"pg0":"http://x/patroni"}"#).unwrap();
    assert_eq!(failsafe::members_to_ask(Some(&alone), "pg0"), Some(vec![]));
}

#[test]
fn the_leader_keeps_the_failsafe_key_current() {
    let me = "http://127.0.0.1:9999/patroni";
    let c = cluster(&["leader=pg0", "member=pg0:primary", "member=pg1"]);
    assert_eq!(failsafe::topology(&c, "pg0", me), None, "mode off: no key");
    let c = cluster(&[&format!("config={ON}"), "leader=pg0", "member=pg1"]);
    let want = failsafe::topology(&c, "pg0", me).expect("written");
    let expected: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
        r#"{"pg0":"http://127.0.0.1:9999/patroni","pg1":"http://127.0.0.1:6433/patroni"}"#,
    )
    .unwrap();
    assert_eq!(
        want, expected,
        "every member, and us before our member key exists"
    );
    let c = cluster(&[
        &format!("config={ON}"),
        "leader=pg0",
        "member=pg0:primary",
        "member=pg1",
        &format!("failsafe={KEY}"),
    ]);
    assert_eq!(
        failsafe::topology(&c, "pg0", me),
        None,
        "unchanged: not rewritten"
    );
}

#[test]
fn d_2f_prime_a_member_a_failsafe_leader_called_keeps_following() {
    let c = cluster(&[
        &format!("config={ON}"),
        &format!("initialize={SYSID}"),
        "member=pg1",
        "optime=100",
    ]);
    let mut o = obs("pg1", c, running(true, 100));
    o.dynamic = ClusterConfig::parse(ON).expect("valid");
    let races = decide(&o);
    assert!(
        races.actions.contains(&Action::AcquireLeaderKey),
        "without a call it races: {races:?}"
    );
    o.failsafe_leader = Some(FailsafeLeader {
        name: "pg0".into(),
        conn_url: "postgres://127.0.0.1:5433/postgres".into(),
        api_url: "http://127.0.0.1:6433/patroni".into(),
        slots: Default::default(),
    });
    let d = decide(&o);
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::AcquireLeaderKey | Action::Promote)),
        "{d:?}"
    );
    // With failsafe mode off the call counts for nothing.
    o.dynamic = ClusterConfig::default();
    assert!(decide(&o).actions.contains(&Action::AcquireLeaderKey));
}

#[test]
fn u_2f_a_member_missing_from_the_failsafe_key_does_not_race() {
    let key = r#"{"pg0":"http://127.0.0.1:6433/patroni"}"#;
    let c = cluster(&[
        &format!("config={ON}"),
        &format!("initialize={SYSID}"),
        "member=pg1",
        &format!("failsafe={key}"),
    ]);
    let mut o = obs("pg1", c, running(true, 100));
    o.dynamic = ClusterConfig::parse(ON).expect("valid");
    let d = check(&o, &[]);
    assert!(d.reason.contains("failsafe key"), "{}", d.reason);
    // Named in the key (or failsafe mode off): it races.
    o.dynamic = ClusterConfig::default();
    assert!(decide(&o).actions.contains(&Action::AcquireLeaderKey));
    let c = cluster(&[
        &format!("config={ON}"),
        &format!("initialize={SYSID}"),
        "member=pg1",
        &format!("failsafe={KEY}"),
    ]);
    let mut o = obs("pg1", c, running(true, 100));
    o.dynamic = ClusterConfig::parse(ON).expect("valid");
    assert!(decide(&o).actions.contains(&Action::AcquireLeaderKey));
}

#[test]
fn a_hold_is_renewed_before_the_guard_margin() {
    use patrol_dcs::Timing;
    // Patroni's defaults: 30 - 2*10 - 3 = 7 s between rounds instead of loop_wait 10.
    assert_eq!(
        failsafe::hold_wait(Timing::adjusted(30, 10, 10)).as_secs(),
        7
    );
    // The acceptance timing (ttl 20, loop_wait 2, retry_timeout 3): loop_wait.
    assert_eq!(failsafe::hold_wait(Timing::adjusted(20, 2, 3)).as_secs(), 2);
    // Never below a second.
    assert_eq!(failsafe::hold_wait(Timing::adjusted(10, 1, 4)).as_secs(), 1);
}

#[test]
fn u_2f_a_former_primary_does_not_wait_for_a_member_the_failsafe_key_excludes() {
    // The former leader restarts read-only after a clean stop (it needs a rewind, so it would
    // yield to a replica that can take over); the only replica is not in the failsafe key and
    // may not race: the former leader races.
    let key = r#"{"pg0":"http://127.0.0.1:6433/patroni"}"#;
    let c = cluster(&[
        &format!("config={ON}"),
        &format!("initialize={SYSID}"),
        "member=pg0",
        "member=pg1",
        &format!("failsafe={key}"),
    ]);
    let mut o = obs("pg0", c, running(true, 100));
    o.dynamic = ClusterConfig::parse(ON).expect("valid");
    o.mem.needs_rewind = true;
    assert!(decide(&o).actions.contains(&Action::AcquireLeaderKey));
    // Without failsafe mode pg1 could take over, and pg0 yields.
    o.dynamic = ClusterConfig::default();
    assert!(!decide(&o).actions.contains(&Action::AcquireLeaderKey));
}
