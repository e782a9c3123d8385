//! Codec tests: Patroni's own examples must round-trip byte for byte, and garbage must parse
//! to defaults without panicking.

use super::*;

#[test]
fn member_examples_round_trip_exactly() {
    let primary = r#"{"conn_url":"postgres://10.0.0.1:5432/postgres","api_url":"http://10.0.0.1:8008/patroni","state":"running","role":"primary","version":"4.1.4","xlog_location":67395656,"timeline":1}"#;
    let replica = r#"{"conn_url":"postgres://10.0.0.2:5432/postgres","api_url":"http://10.0.0.2:8008/patroni","state":"running","role":"replica","version":"4.1.4","tags":{"clonefrom":true},"xlog_location":67419744,"replay_lsn":67419744,"receive_lsn":67419744,"replication_state":"streaming","timeline":1}"#;
    for s in [primary, replica] {
        assert_eq!(MemberData::parse(s).to_json(), s);
    }
    let r = MemberData::parse(replica);
    assert_eq!(r.role, Role::Replica);
    assert!(r.clonefrom());
    assert_eq!(r.host_port(), Some(("10.0.0.2".into(), 5432)));
}

#[test]
fn master_is_read_as_primary_and_written_as_primary() {
    let m = MemberData::parse(r#"{"role":"master","state":"running"}"#);
    assert_eq!(m.role, Role::Primary);
    assert!(m.to_json().contains(r#""role":"primary""#));
}

#[test]
fn tags_keep_types_and_order() {
    let s = r#"{"conn_url":"","api_url":"","state":"","role":"replica","version":"","tags":{"zeta":1,"failover_priority":"1","nofailover":true,"alpha":[1,2]}}"#;
    let m = MemberData::parse(s);
    let keys: Vec<_> = m.tags.keys().cloned().collect();
    assert_eq!(keys, ["zeta", "failover_priority", "nofailover", "alpha"]);
    assert_eq!(m.to_json(), s);
    assert!(m.nofailover());
}

#[test]
fn failover_priority_zero_means_nofailover() {
    let m = MemberData::parse(r#"{"tags":{"failover_priority":0}}"#);
    assert!(m.nofailover());
    let m = MemberData::parse(r#"{"tags":{"failover_priority":3}}"#);
    assert_eq!(m.failover_priority(), 3);
}

#[test]
fn garbage_parses_to_defaults() {
    for s in [
        "",
        "{",
        "[]",
        "null",
        "42",
        "\"x\"",
        "{\"xlog_location\":\"abc\",\"timeline\":-1}",
    ] {
        let m = MemberData::parse(s);
        assert_eq!(m.xlog_location, None);
        assert_eq!(m.timeline, None);
        let _ = Failover::parse(s);
        let _ = SyncState::parse(s);
        let _ = History::parse(s);
        let _ = Status::parse(s);
        let _ = ClusterConfig::parse(s);
    }
    let m = MemberData::parse("postgres://1.2.3.4:5433/postgres");
    assert_eq!(m.host_port(), Some(("1.2.3.4".into(), 5433)));
}

#[test]
fn unknown_member_fields_survive_a_round_trip() {
    let s = r#"{"conn_url":"a","api_url":"b","state":"running","role":"replica","version":"4.1.4","future_field":{"x":1}}"#;
    assert_eq!(MemberData::parse(s).to_json(), s);
}

#[test]
fn sync_state_format() {
    let s = SyncState {
        leader: Some("node0".into()),
        sync_standby: vec!["node2".into(), "node1".into()],
        quorum: 0,
    };
    assert_eq!(
        s.to_json(),
        r#"{"leader":"node0","quorum":0,"sync_standby":"node1,node2"}"#
    );
    let empty = SyncState {
        leader: Some("node0".into()),
        ..SyncState::default()
    };
    assert_eq!(
        empty.to_json(),
        r#"{"leader":"node0","quorum":0,"sync_standby":null}"#
    );
    let parsed = SyncState::parse(r#"{"leader":"node0","quorum":1,"sync_standby":"Node1,node2"}"#);
    assert!(parsed.matches("node1"));
    assert_eq!(parsed.quorum, 1);
}

#[test]
fn failover_formats() {
    assert!(Failover::parse("{}").is_empty());
    assert_eq!(Failover::default().to_json(), "{}");
    let f = Failover::parse(
        r#"{"leader":"a","member":"b","scheduled_at":"2023-09-24T10:36:00+02:00"}"#,
    );
    assert_eq!(f.member.as_deref(), Some("b"));
    assert_eq!(
        f.to_json(),
        r#"{"leader":"a","member":"b","scheduled_at":"2023-09-24T10:36:00+02:00"}"#
    );
    let legacy = Failover::parse("a:b");
    assert_eq!(legacy.leader.as_deref(), Some("a"));
    assert_eq!(legacy.member.as_deref(), Some("b"));
}

#[test]
fn history_round_trip_and_timeline() {
    let s = r#"[[1,25623960,"no recovery target specified","2019-09-23T16:57:57+02:00","postgresql1"]]"#;
    let h = History::parse(s).expect("valid history");
    assert_eq!(h.to_json(), s);
    assert_eq!(h.cluster_timeline(), 2);
    assert_eq!(History::parse("[]").expect("empty").cluster_timeline(), 1);
}

#[test]
fn status_formats() {
    let s = r#"{"optime":67395656,"slots":{"pg1":67395656},"retain_slots":["pg1","pg2"]}"#;
    assert_eq!(Status::parse(s).to_json(), s);
    assert_eq!(Status::parse("12345").optime, Some(12345));
    assert_eq!(Status::default().to_json(), "{}");
}

#[test]
fn timing_rule_matches_patroni() {
    assert_eq!(
        Timing::adjusted(30, 10, 10),
        Timing {
            ttl: 30,
            loop_wait: 10,
            retry_timeout: 10
        }
    );
    // loop_wait shrinks first.
    assert_eq!(
        Timing::adjusted(20, 10, 8),
        Timing {
            ttl: 20,
            loop_wait: 4,
            retry_timeout: 8
        }
    );
    // then retry_timeout.
    assert_eq!(
        Timing::adjusted(20, 10, 10),
        Timing {
            ttl: 20,
            loop_wait: 1,
            retry_timeout: 9
        }
    );
    // Patrol accepts short ttls.
    assert_eq!(
        Timing::adjusted(10, 1, 3),
        Timing {
            ttl: 10,
            loop_wait: 1,
            retry_timeout: 3
        }
    );
    assert_eq!(
        Timing::adjusted(0, 0, 0),
        Timing {
            ttl: 3,
            loop_wait: 1,
            retry_timeout: 1
        }
    );
}

#[test]
fn cluster_from_kvs() {
    let kv = |k: &str, v: &str, rev: i64, lease: i64| Kv {
        key: k.into(),
        value: v.into(),
        mod_revision: rev,
        lease,
    };
    let c = Cluster::from_kvs(
        42,
        &[
            kv("members/pg1", r#"{"role":"replica"}"#, 5, 7),
            kv("members/pg0", r#"{"role":"primary"}"#, 4, 9),
            kv("members/pg0/garbage", "x", 4, 9),
            kv("leader", "pg0", 3, 9),
            kv("initialize", "7277694203142172922", 2, 0),
            kv("config", r#"{"ttl":20,"pause":true}"#, 6, 0),
            kv("optime/leader", "100", 8, 0),
        ],
    );
    assert_eq!(c.revision, 42);
    assert_eq!(
        c.members
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>(),
        ["pg0", "pg1"]
    );
    assert_eq!(
        c.leader.as_ref().map(|l| (l.name.as_str(), l.session)),
        Some(("pg0", 9))
    );
    assert_eq!(c.initialized_sysid(), Some("7277694203142172922"));
    assert!(c.is_paused());
    assert_eq!(c.status.optime, Some(100));
    assert_eq!(c.timeline(), 0);
    assert_eq!(
        c.leader_member().map(|m| m.data.role.clone()),
        Some(Role::Primary)
    );
}

#[test]
fn prefix_collapses_slashes() {
    assert_eq!(cluster_prefix("/service/", "batman"), "/service/batman/");
    assert_eq!(cluster_prefix("service", "batman"), "/service/batman/");
    assert_eq!(cluster_prefix("//a//", "/b/"), "/a/b/");
}

#[test]
fn slot_names() {
    assert_eq!(slot_name_from_member_name("postgres-0"), "postgres_0");
    assert_eq!(slot_name_from_member_name("Pg.One"), "pg_one");
    assert_eq!(slot_name_from_member_name("a b"), "au0032b");
    assert_eq!(slot_name_from_member_name(&"x".repeat(100)).len(), 63);
}

#[test]
fn lsn_format() {
    assert_eq!(format_lsn(0x4000060), "0/4000060");
    assert_eq!(format_lsn((1 << 32) + 0x10), "1/10");
    assert_eq!(parse_lsn("1/10"), Some((1 << 32) + 0x10));
    assert_eq!(parse_lsn("zz"), None);
}

#[test]
fn timeline_history_file() {
    let lines = History::from_timeline_file(
        "1\t0/3000060\tno recovery target specified\n\n2\t0/5000000\tbefore 2000-01-01\n",
    );
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0].timeline, 1);
    assert_eq!(lines[0].lsn, 0x3000060);
    assert_eq!(lines[1].reason, "before 2000-01-01");
}
