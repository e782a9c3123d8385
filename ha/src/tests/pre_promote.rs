//! Row PP-1: `postgresql.pre_promote` failed, so PostgreSQL was not promoted: the lock holder
//! gives the key up and stays out of leader races for `ttl` (Patroni's `enforce_primary_role`
//! and the backoff in `is_healthiest_node`).

use std::time::Duration;

use super::*;

fn failed() -> Option<TaskResult> {
    Some(TaskResult::PrePromoteFailed("exit status: 1".into()))
}

fn pg1_holds_the_key() -> Cluster {
    cluster(&[
        &format!("initialize={SYSID}"),
        "leader=pg1",
        "member=pg0:replica",
        "member=pg1:replica",
        "optime=100",
    ])
}

fn one_replica_no_leader() -> Cluster {
    cluster(&[
        &format!("initialize={SYSID}"),
        "member=pg1:replica",
        "optime=100",
    ])
}

#[test]
fn pp_1_failed_pre_promote_releases_the_key_and_backs_off_for_ttl() {
    let mut o = obs("pg1", pg1_holds_the_key(), running(true, 100));
    o.last_result = failed();
    let d = check(
        &o,
        &[
            Action::SkipRacesUntil(NOW + Duration::from_secs(30)),
            Action::ReleaseLeaderKey,
        ],
    );
    assert!(
        d.reason
            .contains("Promotion cancelled because the pre-promote script failed"),
        "{}",
        d.reason
    );
    // The backoff follows the ttl in effect.
    o.timing.ttl = 12;
    check(
        &o,
        &[
            Action::SkipRacesUntil(NOW + Duration::from_secs(12)),
            Action::ReleaseLeaderKey,
        ],
    );
    // An armed watchdog is closed once the key is given up (row W-3).
    o.watchdog = WatchdogView {
        enabled: true,
        required: false,
        armed: true,
        failed: false,
    };
    check(
        &o,
        &[
            Action::SkipRacesUntil(NOW + Duration::from_secs(12)),
            Action::ReleaseLeaderKey,
            Action::DisarmWatchdog,
        ],
    );
}

#[test]
fn pp_1_only_the_lock_holder_of_a_standby_gives_up_the_key() {
    // The key was lost meanwhile: nothing to release; the standby follows the new leader.
    let mut o = obs("pg1", leader_pg0(), running(true, 100));
    o.last_result = failed();
    check(&o, &[Action::Follow(up("pg0", 5433))]);
    // PostgreSQL runs as a primary anyway (promoted by hand): releasing the key would let
    // another node promote beside it; the leader keeps leading.
    let mut o = obs("pg1", pg1_holds_the_key(), running(false, 100));
    o.last_result = failed();
    let d = decide(&o);
    assert_eq!(d.actions[0], Action::RefreshLeaderKey, "{}", d.reason);
    assert!(!d.actions.contains(&Action::ReleaseLeaderKey), "{d:?}");
}

#[test]
fn pp_1_a_failed_pg_ctl_promote_is_retried_not_given_up() {
    // Only the script's failure gives the key up; a failed `pg_ctl promote` is tried again
    // next cycle, as Patroni.
    let mut o = obs("pg1", pg1_holds_the_key(), running(true, 100));
    o.last_result = Some(TaskResult::Failed(Task::Promote, "pg_ctl failed".into()));
    check(&o, &[Action::RefreshLeaderKey, Action::Promote]);
}

#[test]
fn pp_1_no_race_during_the_backoff() {
    let mut o = obs("pg1", one_replica_no_leader(), running(true, 100));
    o.mem
        .record(&Outcome::SkipRacesUntil(NOW + Duration::from_secs(1)));
    assert_eq!(o.mem.no_race_until, Some(NOW + Duration::from_secs(1)));
    let d = check(&o, &[]);
    assert!(d.reason.contains("backoff"), "{}", d.reason);
    // Not even as the named candidate of a manual failover (Patroni checks the backoff first).
    let mut manual = o.clone();
    manual.dcs = DcsView::Reachable(with_failover(
        one_replica_no_leader(),
        r#"{"member":"pg1"}"#,
    ));
    check(&manual, &[]);
    // Once `ttl` has passed it races again.
    o.now = NOW + Duration::from_secs(1);
    check(&o, &[Action::AcquireLeaderKey, Action::Promote]);
}

#[test]
fn pp_1_the_backoff_does_not_touch_a_cluster_with_a_leader() {
    let mut o = obs("pg1", leader_pg0(), running(true, 100));
    o.mem.no_race_until = Some(NOW + Duration::from_secs(30));
    o.mem.following = Some("pg0".into());
    check(&o, &[]);
}
