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
    assert!(parsed.leader_matches("NODE0"));
    assert!(!parsed.leader_matches("node1"));
    assert!(!SyncState::parse(r#"{"leader":null}"#).leader_matches("node0"));
}

#[test]
fn synchronous_mode_as_patroni_reads_it() {
    let mode = |json: &str| {
        ClusterConfig::parse(json)
            .expect("an object")
            .synchronous_mode()
    };
    assert_eq!(mode("{}"), SynchronousMode::Off);
    for off in ["false", r#""off""#, "null", r#""sometimes""#] {
        assert_eq!(
            mode(&format!(r#"{{"synchronous_mode":{off}}}"#)),
            SynchronousMode::Off,
            "{off}"
        );
    }
    for on in ["true", r#""on""#, r#""yes""#, "1"] {
        assert_eq!(
            mode(&format!(r#"{{"synchronous_mode":{on}}}"#)),
            SynchronousMode::On,
            "{on}"
        );
    }
    assert_eq!(
        mode(r#"{"synchronous_mode":"Quorum"}"#),
        SynchronousMode::Quorum
    );
    assert_eq!(
        mode(r#"{"synchronous_mode":true,"standby_cluster":{"host":"10.0.0.1"}}"#),
        SynchronousMode::Off,
        "a standby cluster is never synchronous"
    );
    assert_eq!(Cluster::default().synchronous_mode(), SynchronousMode::Off);
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

#[test]
fn timing_is_bounded_whatever_the_dcs_holds() {
    // The value that crashed every agent (`overflow when adding duration to instant`).
    let c = ClusterConfig::parse(
        r#"{"ttl":9223372036854775807,"loop_wait":9223372036854775807,"retry_timeout":18446744073709551615}"#,
    )
    .expect("an object");
    let t = c.timing();
    assert_eq!(t.ttl, MAX_TTL);
    assert!(t.loop_wait + 2 * t.retry_timeout <= t.ttl, "{t:?}");
    assert_eq!(
        ClusterConfig::parse(r#"{"ttl":-5,"loop_wait":"x","retry_timeout":1e300}"#)
            .expect("an object")
            .timing(),
        Timing::adjusted(0, 10, 10)
    );
    assert_eq!(
        ClusterConfig::parse(r#"{"primary_start_timeout":9223372036854775807}"#)
            .expect("an object")
            .primary_start_timeout(),
        MAX_SECONDS
    );
}

#[test]
fn check_names_the_key_that_is_wrong() {
    let err = |json: &str| {
        ClusterConfig::parse(json)
            .expect("an object")
            .check()
            .expect_err(json)
    };
    let e = err(r#"{"ttl":9223372036854775807,"loop_wait":9223372036854775807}"#);
    assert_eq!(e.key, "ttl");
    assert_eq!(
        e.to_string(),
        "ttl: must be an integer from 1 to 86400, not 9223372036854775807"
    );
    assert_eq!(err(r#"{"loop_wait":86401}"#).key, "loop_wait");
    assert_eq!(err(r#"{"retry_timeout":0}"#).key, "retry_timeout");
    assert_eq!(err(r#"{"ttl":"abc"}"#).key, "ttl");
    assert_eq!(err(r#"{"ttl":[30]}"#).key, "ttl");
    assert_eq!(err(r#"{"ttl":30.5}"#).key, "ttl");
    assert_eq!(
        err(r#"{"maximum_lag_on_failover":-1}"#).key,
        "maximum_lag_on_failover"
    );
    assert_eq!(
        err(r#"{"primary_start_timeout":99999999999}"#).key,
        "primary_start_timeout"
    );
    assert_eq!(
        err(r#"{"member_slots_ttl":"30 years"}"#).key,
        "member_slots_ttl"
    );
    assert_eq!(err(r#"{"pause":"maybe"}"#).key, "pause");
    assert_eq!(
        err(r#"{"synchronous_mode":"sometimes"}"#).key,
        "synchronous_mode"
    );
    assert_eq!(
        err(r#"{"synchronous_node_count":0}"#).key,
        "synchronous_node_count"
    );
    assert_eq!(err(r#"{"postgresql":[]}"#).key, "postgresql");
    assert_eq!(
        err(r#"{"postgresql":{"parameters":"work_mem=1MB"}}"#).key,
        "postgresql.parameters"
    );
    assert_eq!(
        err(r#"{"postgresql":{"parameters":{"work_mem":{"a":1}}}}"#).key,
        "postgresql.parameters.work_mem"
    );
    assert_eq!(
        err(r#"{"postgresql":{"pg_hba":"host all all 0.0.0.0/0 trust"}}"#).key,
        "postgresql.pg_hba"
    );
    assert_eq!(
        err(r#"{"postgresql":{"use_slots":"perhaps"}}"#).key,
        "postgresql.use_slots"
    );
    assert_eq!(
        err(r#"{"standby_cluster":{"host":"h","port":70000}}"#).key,
        "standby_cluster.port"
    );
    assert_eq!(err(r#"{"slots":"x"}"#).key, "slots");
    assert_eq!(err(r#"{"ignore_slots":{}}"#).key, "ignore_slots");
    // A parameter name with a control character is shown escaped.
    let e = err(r#"{"postgresql":{"parameters":{"a\nb":[1]}}}"#);
    assert_eq!(e.key, r#"postgresql.parameters."a\nb""#);
}

#[test]
fn check_accepts_what_patroni_writes() {
    let ok = |json: &str| {
        ClusterConfig::parse(json)
            .expect("an object")
            .check()
            .unwrap_or_else(|e| panic!("{json}: {e}"))
    };
    ok("{}");
    ok(
        r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"postgresql":{"use_pg_rewind":true,"use_slots":true,"parameters":{"wal_level":"hot_standby","max_connections":100,"hot_standby":"on","archive_mode":true}},"check_timeline":false,"pause":null}"#,
    );
    // Values below the minimums are raised, not refused (as Patroni adjusts them).
    ok(r#"{"ttl":5,"loop_wait":1,"retry_timeout":1}"#);
    ok(r#"{"ttl":"20","loop_wait":"1","retry_timeout":3.0}"#);
    ok(r#"{"synchronous_mode":"quorum","synchronous_node_count":2,"member_slots_ttl":"30min"}"#);
    ok(r#"{"synchronous_mode":"on","maximum_lag_on_syncnode":-1,"failsafe_mode":"off"}"#);
    ok(
        r#"{"standby_cluster":{"host":"","port":"","restore_command":""},"slots":{"s":{"type":"physical"}},"ignore_slots":[{"name":"x"}]}"#,
    );
    ok(
        r#"{"standby_cluster":null,"slots":null,"postgresql":{"parameters":{"x":null},"pg_hba":["local all all trust"]}}"#,
    );
}

#[test]
fn seconds_with_units_as_patroni_reads_them() {
    use serde_json::json;
    assert_eq!(seconds_with_unit(&json!(1800)), Some(1800));
    assert_eq!(seconds_with_unit(&json!("30min")), Some(1800));
    assert_eq!(seconds_with_unit(&json!("1h")), Some(3600));
    assert_eq!(seconds_with_unit(&json!("2d")), Some(172_800));
    assert_eq!(seconds_with_unit(&json!("1500ms")), Some(2));
    assert_eq!(seconds_with_unit(&json!("10 s")), Some(10));
    assert_eq!(seconds_with_unit(&json!("10 years")), None);
    assert_eq!(seconds_with_unit(&json!("1e400h")), None);
    assert_eq!(seconds_with_unit(&json!(true)), None);
}

#[test]
fn member_hosts_and_ports_are_checked() {
    assert_eq!(
        parse_conn_url("postgres://10.0.0.1:5433/postgres"),
        Some(("10.0.0.1".into(), 5433))
    );
    assert_eq!(
        parse_conn_url("postgresql://u:p@db-1.example.com/postgres?sslmode=require"),
        Some(("db-1.example.com".into(), 5432))
    );
    assert_eq!(
        parse_conn_url("postgres://[fe80::1]:6432/x"),
        Some(("fe80::1".into(), 6432))
    );
    assert_eq!(
        parse_conn_url("postgres://[fe80::1]/x"),
        Some(("fe80::1".into(), 5432))
    );
    for bad in [
        "postgres://127.0.0.1\tsslmode=disable:5432/postgres",
        "postgres://127.0.0.1\n    server evil 10.0.0.9:5432/postgres",
        "postgres://a b:5432/postgres",
        "postgres://h'x:5432/postgres",
        "postgres://host=x:5432/postgres",
        "postgres://127.0.0.1:0/postgres",
        "postgres://127.0.0.1:65536/postgres",
        "postgres://127.0.0.1:+5432/postgres",
        "postgres://127.0.0.1:/postgres",
        "postgres://:5432/postgres",
        "postgres://[not-v6]:5432/postgres",
        "postgres://[::1]x:5432/postgres",
        "postgres://-/x",
        "postgres://a..b/x",
        "postgres://%2Ftmp/x",
        "mysql://h:1/x",
    ] {
        assert_eq!(parse_conn_url(bad), None, "{bad:?}");
    }
    assert_eq!(
        parse_api_url("https://u:p@db1.example:8443/patroni"),
        Some(("db1.example".into(), 8443))
    );
    assert_eq!(
        parse_api_url("http://[::1]:8008/patroni"),
        Some(("::1".into(), 8008))
    );
    assert_eq!(
        parse_api_url("http://127.0.0.1/patroni"),
        None,
        "port required"
    );
    assert_eq!(
        parse_api_url("http://x\n    stats admin if TRUE\n    server y 10.0.0.9:1/patroni"),
        None
    );
    let mut m =
        MemberData::parse(r#"{"conn_url":"postgres://h:1/p","api_url":"http://h:2/patroni"}"#);
    assert_eq!(member_address_problem(&m), None);
    m.api_url = "http://h\n:2/patroni".into();
    assert_eq!(
        member_address_problem(&m).as_deref(),
        Some(
            r#"api_url "http://h\n:2/patroni" is not http(s)://host:port/... with a valid host and port"#
        )
    );
}

#[test]
fn a_config_key_that_is_no_object_is_noted() {
    for bad in ["[1]", "not json", "", "30"] {
        let c = Cluster::from_kvs(
            3,
            &[Kv {
                key: "config".into(),
                value: bad.into(),
                mod_revision: 7,
                lease: 0,
            }],
        );
        assert_eq!(
            (c.config.is_none(), c.config_unreadable),
            (true, Some(7)),
            "{bad:?}"
        );
    }
}
