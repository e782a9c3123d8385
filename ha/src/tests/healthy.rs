//! Flow ③ healthy cluster.

use super::*;

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

#[test]
fn h_1_6_a_leader_without_a_config_key_writes_it() {
    let mut c = cluster(&[
        "no-config",
        &format!("initialize={SYSID}"),
        "leader=pg0",
        "member=pg0:primary",
    ]);
    let o = obs("pg0", c.clone(), running(false, 100));
    let d = decide(&o);
    assert_eq!(
        &d.actions[..2],
        &[Action::RefreshLeaderKey, Action::WriteConfig],
        "{}",
        d.reason
    );
    // Not over a config key that holds something unreadable, nor by a replica.
    c.config_unreadable = Some(3);
    let o = obs("pg0", c, running(false, 100));
    assert!(!decide(&o).actions.contains(&Action::WriteConfig));
    let c = cluster(&[
        "no-config",
        &format!("initialize={SYSID}"),
        "leader=pg0",
        "member=pg0:primary",
        "member=pg1:replica",
    ]);
    let o = obs("pg1", c, running(true, 100));
    assert!(!decide(&o).actions.contains(&Action::WriteConfig));
}

#[test]
fn h_1_2c_a_cascading_replica_follows_its_replicatefrom_member_while_it_has_a_key() {
    let mut o = obs("pg2", healthy3(), running(true, 100));
    o.replicatefrom = Some("pg1".into());
    check(&o, &[Action::Follow(up("pg1", 5434))]);
    o.mem.following = Some("pg1".into());
    check(&o, &[]);
    // Its upstream's key is gone: back to the leader.
    let c = cluster(&[
        &format!("initialize={SYSID}"),
        "leader=pg0",
        "member=pg0:primary",
        "member=pg2:replica",
    ]);
    let mut o = obs("pg2", c, running(true, 100));
    o.replicatefrom = Some("pg1".into());
    o.mem.following = Some("pg1".into());
    check(&o, &[Action::Follow(up("pg0", 5433))]);
    // Started after a stop: from the upstream at once.
    let mut o = obs("pg2", healthy3(), stopped(initialized()));
    o.replicatefrom = Some("pg1".into());
    check(
        &o,
        &[Action::Start {
            standby_of: Some(Some(up("pg1", 5434))),
        }],
    );
}

#[test]
fn h_1_2n_a_nostream_member_does_not_stream() {
    let mut o = obs("pg2", healthy3(), running(true, 100));
    o.nostream = true;
    check(&o, &[]);
    o.mem.following = Some("pg0".into());
    check(&o, &[Action::Unfollow]);
    let mut o = obs("pg2", healthy3(), stopped(initialized()));
    o.nostream = true;
    o.replicatefrom = Some("pg1".into());
    check(
        &o,
        &[Action::Start {
            standby_of: Some(None),
        }],
    );
}
