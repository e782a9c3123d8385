//! Unit tests of the pure parts of the REST API: merge semantics, restart and switchover
//! validation texts, the cluster JSON, metrics, access control, and the OpenAPI document
//! against [`super::all_routes`].

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use patrol_dcs::{Cluster, Kv};
use serde_json::{json, Map, Value};

use super::access::{api_url_host, claimed_user, AccessPolicy, Client};
use super::input::*;
use super::metrics;
use super::tls::VerifyClient;
use super::views::{cluster_json, history_json};
use super::{all_routes, route_for, Guard, Handler};
use crate::config::{self, Config, ConfigSource};
use crate::ha::{NodeState, RestartFilters, Snapshot};
use crate::postgres::LocalStatus;

/// 2024-01-01T00:00:00Z.
const NOW: i64 = 1_704_067_200_000;

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

fn kv(key: &str, value: &str, rev: i64) -> Kv {
    Kv {
        key: key.into(),
        value: value.into(),
        mod_revision: rev,
        lease: 0,
    }
}

fn member(name: &str, port: u16, extra: &str) -> Kv {
    kv(
        &format!("members/{name}"),
        &format!(
            r#"{{"conn_url":"postgres://10.0.0.{port}:{p}/postgres","api_url":"http://10.0.0.{port}:8008/patroni","state":"running","role":"replica","version":"4.1.4"{extra}}}"#,
            p = 5432 + port
        ),
        3,
    )
}

/// pg0 leads; pg1 streams (lsn 100, receive 120); pg2 published no positions.
fn three(extra: &[Kv]) -> Cluster {
    let mut kvs = vec![
        kv("leader", "pg0", 5),
        kv("config", r#"{"ttl":30,"loop_wait":10}"#, 4),
        kv("status", r#"{"optime":150}"#, 6),
        member("pg0", 0, r#","xlog_location":150,"timeline":2"#),
        member(
            "pg1",
            1,
            r#","tags":{"clonefrom":true},"xlog_location":100,"replay_lsn":100,"receive_lsn":120,"replication_state":"streaming","timeline":2"#,
        ),
        member("pg2", 2, ""),
    ];
    kvs.extend_from_slice(extra);
    Cluster::from_kvs(10, &kvs)
}

// ---- PATCH /config merge (Patroni's patch_config) ----

#[test]
fn merge_null_deletes_objects_merge_scalars_replace() {
    let mut cfg = obj(json!({
        "ttl": 30,
        "postgresql": {"parameters": {"max_connections": 100, "work_mem": "4MB"}, "use_slots": true},
        "tags": ["a"],
    }));
    let changed = patch_config(
        &mut cfg,
        &obj(json!({
            "ttl": 20,
            "postgresql": {"parameters": {"max_connections": null, "shared_buffers": "1GB"}},
            "tags": ["b"],
            "pause": true,
        })),
    );
    assert!(changed);
    assert_eq!(
        Value::Object(cfg),
        json!({
            "ttl": 20,
            "postgresql": {"parameters": {"work_mem": "4MB", "shared_buffers": "1GB"}, "use_slots": true},
            "tags": ["b"],
            "pause": true,
        })
    );
}

#[test]
fn merge_compares_string_forms_and_reports_no_change() {
    let mut cfg = obj(json!({"ttl": 30, "pause": true, "x": {"y": 1}}));
    // "30" and 30 have the same str(); deleting a missing key and merging equal objects
    // change nothing.
    let changed = patch_config(
        &mut cfg,
        &obj(json!({"ttl": "30", "missing": null, "x": {"y": 1}})),
    );
    assert!(!changed);
    assert_eq!(cfg["ttl"], json!(30), "the stored type is kept when equal");
    // An object replaces a scalar; a scalar replaces an object.
    let mut cfg = obj(json!({"a": 1, "b": {"c": 1}}));
    assert!(patch_config(&mut cfg, &obj(json!({"a": {"z": 1}, "b": 2}))));
    assert_eq!(Value::Object(cfg), json!({"a": {"z": 1}, "b": 2}));
}

#[test]
fn config_changes_that_ask_for_implemented_features_are_written() {
    let current = obj(json!({"ttl": 30, "pause": true}));
    // As patrolctl demote-cluster writes it: standby clusters are implemented. (No dynamic
    // key is refused today; the config crate's tests cover a refused one.)
    let patch = json!({"standby_cluster": {"host": "10.0.0.9", "port": 5432}});
    let mut after = current.clone();
    assert!(patch_config(&mut after, &obj(patch.clone())));
    assert_eq!(unsupported_change(&current, &after, false), Ok(()));
    // Keys Patrol only warns about are written; so is turning a section off, and any change
    // to a configuration that already had it on.
    let mut after = current.clone();
    patch_config(
        &mut after,
        &obj(json!({"failsafe_mode": true, "synchronous_mode": false})),
    );
    assert_eq!(unsupported_change(&current, &after, false), Ok(()));
    let standby = obj(json!({"standby_cluster": {"host": "10.0.0.9"}}));
    let mut after = standby.clone();
    patch_config(&mut after, &obj(json!({"pause": true})));
    assert_eq!(unsupported_change(&standby, &after, false), Ok(()));
    let mut after = standby.clone();
    patch_config(&mut after, &obj(json!({"standby_cluster": null})));
    assert_eq!(unsupported_change(&standby, &after, false), Ok(()));
    // Synchronous replication is implemented: turning it on is written.
    let mut after = current.clone();
    patch_config(
        &mut after,
        &obj(json!({"synchronous_mode": "quorum", "synchronous_mode_strict": true})),
    );
    assert_eq!(unsupported_change(&current, &after, false), Ok(()));
}

#[test]
fn python_string_forms() {
    assert_eq!(py_str(&json!(true)), "True");
    assert_eq!(py_str(&json!(null)), "None");
    assert_eq!(py_str(&json!(1.0)), "1.0");
    assert_eq!(py_str(&json!("on")), "on");
    assert_eq!(py_str(&json!([1, "a"])), "[1, 'a']");
    assert!(deep_compare(
        &obj(json!({"a": 1, "b": {"c": "x"}})),
        &obj(json!({"a": "1", "b": {"c": "x"}}))
    ));
    assert!(!deep_compare(
        &obj(json!({"a": 1})),
        &obj(json!({"a": 1, "b": 2}))
    ));
    assert!(!deep_compare(
        &obj(json!({"a": {"c": 1}})),
        &obj(json!({"a": 1}))
    ));
}

// ---- POST /restart ----

fn restart(body: Value, paused: bool) -> Result<RestartPlan, (u16, String)> {
    restart_plan(&obj(body), paused, NOW)
}

#[test]
fn restart_filters_are_validated_in_order_with_patronis_texts() {
    let cases: &[(Value, bool, u16, &str)] = &[
        (
            json!({"schedule": "2030-01-01T00:00:00+00:00"}),
            true,
            500,
            "Can't schedule restart in the paused state",
        ),
        (
            json!({"role": "master"}),
            false,
            400,
            "PostgreSQL role should be either primary, standby_leader, or replica",
        ),
        (
            json!({"postgres_version": "9.6"}),
            false,
            400,
            "Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: 9.6",
        ),
        (
            json!({"postgres_version": "a.b"}),
            false,
            400,
            "Invalid PostgreSQL version: a.b",
        ),
        (
            json!({"timeout": 0}),
            false,
            400,
            "Timeout should be a positive number of seconds",
        ),
        (
            json!({"timeout": "soon"}),
            false,
            400,
            "Timeout should be a positive number of seconds",
        ),
        (
            json!({"when": "now"}),
            false,
            400,
            "Unknown filter for the scheduled restart: when",
        ),
        (
            json!({"schedule": "2030-01-01T00:00:00"}),
            false,
            400,
            "Timezone information is mandatory for the scheduled restart",
        ),
        (
            json!({"schedule": "2020-01-01T00:00:00+00:00"}),
            false,
            422,
            "Cannot schedule restart in the past",
        ),
        (
            json!({"schedule": "tomorrow-ish"}),
            false,
            422,
            "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601",
        ),
        // The first bad key decides.
        (
            json!({"bogus": 1, "role": "master"}),
            false,
            400,
            "Unknown filter for the scheduled restart: bogus",
        ),
    ];
    for (body, paused, code, text) in cases {
        assert_eq!(
            restart(body.clone(), *paused),
            Err((*code, text.to_string())),
            "body {body}"
        );
    }
}

#[test]
fn restart_plans() {
    assert_eq!(
        restart(json!({}), false),
        Ok(RestartPlan::Now(RestartFilters::default()))
    );
    assert_eq!(
        restart(
            json!({"role": "replica", "postgres_version": "15.4", "timeout": "2min", "restart_pending": true}),
            true
        ),
        Ok(RestartPlan::Now(RestartFilters {
            role: Some("replica".into()),
            postgres_version: Some(("15.4".into(), 150004)),
            restart_pending: true,
            timeout: Some(120),
        }))
    );
    match restart(json!({"schedule": "2030-06-01 12:30+02:00"}), false) {
        Ok(RestartPlan::At {
            schedule, at_ms, ..
        }) => {
            assert_eq!(schedule, "2030-06-01T12:30:00+02:00");
            assert_eq!(at_ms, 1_906_540_200_000);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn version_and_seconds_parsing() {
    assert_eq!(postgres_version_to_int("9.5.3"), Ok(90503));
    assert_eq!(postgres_version_to_int("10.1"), Ok(100001));
    assert!(postgres_version_to_int("10").is_err());
    assert_eq!(parse_seconds(&json!(30)), Some(30));
    assert_eq!(parse_seconds(&json!("30s")), Some(30));
    assert_eq!(parse_seconds(&json!("1h")), Some(3600));
    assert_eq!(parse_seconds(&json!("1500ms")), Some(2));
    assert_eq!(parse_seconds(&json!("1 parsec")), None);
    assert_eq!(parse_seconds(&json!(true)), None);
}

#[test]
fn schedules_accept_iso_forms_with_zones() {
    for s in [
        "2030-01-01T10:00:00+00:00",
        "2030-01-01T10:00:00Z",
        "2030-01-01T10:00:00.123456+0100",
        "2030-01-01 10:00:00+01:00",
        "2030-01-01 10:00 UTC",
        "2030-01-01T10:00+05:30",
    ] {
        assert!(
            parse_schedule(&json!(s), "restart", NOW).is_ok(),
            "{s} should parse"
        );
    }
    assert_eq!(
        parse_schedule(&json!(12), "switchover", NOW).map_err(|e| e.0),
        Err(422)
    );
    let t = parse_schedule(&json!("2030-01-01T10:00:00.5+01:00"), "x", NOW).expect("parses");
    assert_eq!(isoformat(&t), "2030-01-01T10:00:00.500000+01:00");
}

// ---- POST /switchover, /failover ----

fn plan(action: Action, body: Value, c: &Cluster) -> Result<SwitchoverPlan, (u16, String)> {
    switchover_plan(action, &obj(body), c, NOW)
}

fn err(r: Result<SwitchoverPlan, (u16, String)>) -> (u16, String) {
    match r {
        Err(e) => e,
        Ok(p) => panic!("expected a refusal, got {p:?}"),
    }
}

#[test]
fn switchover_validation_texts_in_patronis_order() {
    let c = three(&[]);
    let paused = three(&[kv("config", r#"{"pause":true}"#, 7)]);
    let e = |code: u16, t: &str| (code, t.to_string());
    use Action::{Failover as F, Switchover as S};
    assert_eq!(
        err(plan(F, json!({"leader": "pg0"}), &c)),
        e(
            400,
            "Failover could be performed only to a specific candidate"
        )
    );
    assert_eq!(
        err(plan(S, json!({"candidate": "pg1"}), &c)),
        e(
            400,
            "Switchover could be performed only from a specific leader"
        )
    );
    assert_eq!(
        err(plan(
            F,
            json!({"candidate": "pg1", "scheduled_at": "2030-01-01T00:00:00+00:00"}),
            &c
        )),
        e(400, "Failover can't be scheduled")
    );
    assert_eq!(
        err(plan(
            S,
            json!({"leader": "pg0", "scheduled_at": "2030-01-01T00:00:00+00:00"}),
            &paused
        )),
        e(400, "Can't schedule switchover in the paused state")
    );
    assert_eq!(
        err(plan(
            S,
            json!({"leader": "pg0", "scheduled_at": "2030-01-01T00:00:00"}),
            &c
        )),
        e(
            400,
            "Timezone information is mandatory for the scheduled switchover"
        )
    );
    assert_eq!(
        err(plan(
            S,
            json!({"leader": "pg0", "scheduled_at": "2001-01-01T00:00:00+00:00"}),
            &c
        )),
        e(422, "Cannot schedule switchover in the past")
    );
    assert_eq!(
        err(plan(S, json!({"leader": "pg0"}), &paused)),
        e(
            400,
            "Switchover is possible only to a specific candidate in a paused state"
        )
    );
    assert_eq!(
        err(plan(S, json!({"leader": "pg1", "candidate": "pg1"}), &c)),
        e(400, "Switchover target and source are the same")
    );
    // A failover naming a leader is a switchover: same-target text applies.
    assert_eq!(
        err(plan(F, json!({"leader": "pg1", "member": "pg1"}), &c)),
        e(400, "Switchover target and source are the same")
    );
    assert_eq!(
        err(plan(S, json!({"leader": "pg1", "candidate": "pg2"}), &c)),
        e(412, "leader name does not match")
    );
    assert_eq!(
        err(plan(S, json!({"leader": "pg0", "candidate": "pg9"}), &c)),
        e(412, "candidate does not exists")
    );
    let sync = three(&[
        kv("config", r#"{"synchronous_mode":true}"#, 7),
        kv("sync", r#"{"leader":"pg0","sync_standby":null}"#, 8),
    ]);
    assert_eq!(
        err(plan(S, json!({"leader": "pg0", "candidate": "pg1"}), &sync)),
        e(412, "candidate name does not match with sync_standby")
    );
    assert_eq!(
        err(plan(S, json!({"leader": "pg0"}), &sync)),
        e(412, "switchover is not possible: can not find sync_standby")
    );
    let alone = Cluster::from_kvs(1, &[kv("leader", "pg0", 1), member("pg0", 0, "")]);
    assert_eq!(
        err(plan(S, json!({"leader": "pg0"}), &alone)),
        e(
            412,
            "switchover is not possible: cluster does not have members except leader"
        )
    );
    assert_eq!(
        no_good_candidates(Action::Failover),
        "failover is not possible: no good candidates have been found"
    );
}

#[test]
fn switchover_plans_name_who_to_probe_and_the_key_to_write() {
    let c = three(&[]);
    let p = plan(Action::Switchover, json!({"leader": "pg0"}), &c).expect("valid");
    assert_eq!(
        p.probe,
        vec![
            (
                "pg1".to_string(),
                "http://10.0.0.1:8008/patroni".to_string()
            ),
            (
                "pg2".to_string(),
                "http://10.0.0.2:8008/patroni".to_string()
            ),
        ]
    );
    assert_eq!(p.failover_key().to_json(), r#"{"leader":"pg0"}"#);
    let p = plan(Action::Failover, json!({"candidate": "pg2"}), &c).expect("valid");
    assert_eq!(p.action, Action::Failover);
    assert_eq!(p.probe.len(), 1);
    assert_eq!(p.failover_key().to_json(), r#"{"member":"pg2"}"#);
    let p = plan(
        Action::Switchover,
        json!({"leader": "pg0", "candidate": "pg1", "scheduled_at": "2030-01-01T01:02:03+02:00"}),
        &c,
    )
    .expect("valid");
    assert!(p.probe.is_empty(), "scheduled: no probe");
    assert_eq!(
        p.failover_key().to_json(),
        r#"{"leader":"pg0","member":"pg1","scheduled_at":"2030-01-01T01:02:03+02:00"}"#
    );
}

#[test]
fn switchover_outcomes() {
    let pending = kv("failover", r#"{"leader":"pg0","member":"pg1"}"#, 9);
    let moved = Cluster::from_kvs(1, &[kv("leader", "pg1", 1), pending.clone()]);
    assert_eq!(
        switchover_outcome(&moved, Some("pg0"), Some("pg1"), Action::Switchover),
        Some((200, "Successfully switched over to \"pg1\"".into()))
    );
    assert_eq!(
        switchover_outcome(&moved, Some("pg0"), Some("pg2"), Action::Failover),
        Some((200, "Failed over to \"pg1\" instead of \"pg2\"".into()))
    );
    assert_eq!(
        switchover_outcome(&moved, Some("pg0"), None, Action::Failover),
        Some((200, "Successfully failed over to \"pg1\"".into()))
    );
    let same = Cluster::from_kvs(1, &[kv("leader", "pg0", 1), pending]);
    assert_eq!(
        switchover_outcome(&same, Some("pg0"), Some("pg1"), Action::Switchover),
        None
    );
    let cleared = Cluster::from_kvs(1, &[kv("leader", "pg0", 1), kv("failover", "{}", 10)]);
    assert_eq!(
        switchover_outcome(&cleared, Some("pg0"), Some("pg1"), Action::Switchover),
        Some((503, "Switchover failed".into()))
    );
    let no_leader_yet = Cluster::from_kvs(1, &[kv("failover", r#"{"member":"pg1"}"#, 10)]);
    assert_eq!(
        switchover_outcome(&no_leader_yet, Some("pg0"), Some("pg1"), Action::Failover),
        None
    );
}

#[test]
fn reinitialize_flags() {
    assert_eq!(reinitialize_options(&Map::new()), (false, false));
    assert_eq!(
        reinitialize_options(&obj(json!({"force": "yes", "from_leader": true}))),
        (true, true)
    );
}

// ---- GET /cluster, /history ----

#[test]
fn cluster_json_matches_patroni() {
    let c = three(&[kv(
        "failover",
        r#"{"leader":"pg0","member":"pg1","scheduled_at":"2030-01-01T00:00:00+00:00"}"#,
        9,
    )]);
    assert_eq!(
        cluster_json(&c, "demo"),
        json!({
            "members": [
                {"name": "pg0", "role": "leader", "state": "running",
                 "api_url": "http://10.0.0.0:8008/patroni", "host": "10.0.0.0", "port": 5432,
                 "timeline": 2},
                {"name": "pg1", "role": "replica", "state": "streaming",
                 "api_url": "http://10.0.0.1:8008/patroni", "host": "10.0.0.1", "port": 5433,
                 "timeline": 2, "tags": {"clonefrom": true},
                 "receive_lsn": "0/78", "receive_lag": 30, "replay_lsn": "0/64", "replay_lag": 50,
                 "lsn": "0/64", "lag": 50},
                {"name": "pg2", "role": "replica", "state": "running",
                 "api_url": "http://10.0.0.2:8008/patroni", "host": "10.0.0.2", "port": 5434,
                 "receive_lsn": "unknown", "receive_lag": "unknown",
                 "replay_lsn": "unknown", "replay_lag": "unknown",
                 "lsn": "unknown", "lag": "unknown"},
            ],
            "scope": "demo",
            "scheduled_switchover": {"at": "2030-01-01T00:00:00+00:00", "from": "pg0", "to": "pg1"},
        })
    );
}

#[test]
fn cluster_json_roles_in_sync_mode_and_pause() {
    let c = three(&[
        kv("config", r#"{"synchronous_mode":true,"pause":true}"#, 7),
        kv("sync", r#"{"leader":"pg0","sync_standby":"pg2"}"#, 8),
    ]);
    let v = cluster_json(&c, "s");
    let roles: Vec<&str> = v["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| m["role"].as_str().expect("role"))
        .collect();
    assert_eq!(roles, vec!["leader", "replica", "sync_standby"]);
    assert_eq!(v["pause"], json!(true));
    assert!(v.get("scheduled_switchover").is_none());
}

#[test]
fn history_is_a_list() {
    assert_eq!(history_json(&Cluster::default()), json!([]));
    let c = Cluster::from_kvs(
        1,
        &[kv(
            "history",
            r#"[[1,25623960,"no recovery target specified","2019-09-23T16:57:57+02:00","pg1"]]"#,
            1,
        )],
    );
    assert_eq!(
        history_json(&c),
        json!([[
            1,
            25623960,
            "no recovery target specified",
            "2019-09-23T16:57:57+02:00",
            "pg1"
        ]])
    );
}

// ---- GET /metrics ----

fn test_config(extra: &str) -> Config {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("patrol.yml");
    let yaml = format!(
        "name: pg1\nscope: demo\nrestapi: {{listen: 127.0.0.1:8008}}\netcd3: {{host: 127.0.0.1:2379}}\npostgresql: {{listen: 127.0.0.1:5432, data_dir: /data, authentication: {{superuser: {{username: postgres}}, replication: {{username: r}}}}}}\n{extra}"
    );
    std::fs::write(&path, yaml).expect("write config");
    let env = BTreeMap::from([("HOME".to_string(), "/tmp".to_string())]);
    config::load(ConfigSource::File(&path), &env)
        .expect("test config loads")
        .config
}

fn replica_snapshot() -> Snapshot {
    let status = LocalStatus {
        in_recovery: true,
        server_version: 150004,
        timeline: 2,
        receive_lsn: Some(120),
        replay_lsn: Some(100),
        replication_state: Some("streaming".into()),
        postmaster_start_time: Some("2024-08-28 19:39:26.352526+00:00".into()),
        ..LocalStatus::default()
    };
    Snapshot {
        node: NodeState {
            cluster: Some(std::sync::Arc::new(three(&[
                kv("config", r#"{"synchronous_mode":true}"#, 7),
                kv("sync", r#"{"leader":"pg0","sync_standby":"pg1"}"#, 8),
            ]))),
            status: Some(status.clone()),
            state: "running".into(),
            role: patrol_dcs::Role::Replica,
            sysid: None,
            paused: false,
            maximum_lag_on_failover: 1 << 20,
            watchdog: Default::default(),
            pending_restart: Default::default(),
        },
        status: Some(status),
        is_leader: false,
        dcs_last_seen: Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000)),
        last_cycle: None,
        cycles: 1,
        timing: patrol_dcs::Timing::default(),
        failsafe_active: false,
    }
}

#[test]
fn metrics_render_every_patroni_metric_with_help_type_and_labels() {
    let cfg = test_config("");
    let body = metrics::render(&cfg, &replica_snapshot());
    let names = metrics::names(&body);
    let want = [
        "patroni_version",
        "patroni_postgres_running",
        "patroni_postmaster_start_time",
        "patroni_primary",
        "patroni_xlog_location",
        "patroni_standby_leader",
        "patroni_replica",
        "patroni_sync_standby",
        "patroni_quorum_standby",
        "patroni_xlog_received_location",
        "patroni_xlog_replayed_location",
        "patroni_xlog_replayed_timestamp",
        "patroni_xlog_paused",
        "patroni_postgres_streaming",
        "patroni_postgres_in_archive_recovery",
        "patroni_postgres_server_version",
        "patroni_cluster_unlocked",
        "patroni_failsafe_mode_is_active",
        "patroni_postgres_timeline",
        "patroni_dcs_last_seen",
        "patroni_pending_restart",
        "patroni_is_paused",
        "patrol_watchdog_armed",
        "patrol_watchdog_failed",
        "patroni_postgres_state",
    ];
    assert_eq!(names, want);
    for n in want {
        assert!(body.contains(&format!("# HELP {n} ")), "HELP of {n}");
    }
    let sample = |n: &str| {
        let prefix = format!("{n}{{scope=\"demo\",name=\"pg1\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("no sample for {n} in\n{body}"))
            .to_string()
    };
    assert_eq!(sample("patroni_version"), "040104");
    assert_eq!(sample("patroni_postgres_running"), "1");
    assert_eq!(sample("patroni_postmaster_start_time"), "1724873966.352526");
    assert_eq!(sample("patroni_replica"), "1");
    assert_eq!(sample("patroni_primary"), "0");
    assert_eq!(sample("patroni_sync_standby"), "1");
    assert_eq!(sample("patroni_xlog_received_location"), "120");
    assert_eq!(sample("patroni_xlog_replayed_location"), "100");
    assert_eq!(sample("patroni_xlog_replayed_timestamp"), "0");
    assert_eq!(sample("patroni_postgres_streaming"), "1");
    assert_eq!(sample("patroni_postgres_server_version"), "150004");
    assert_eq!(sample("patroni_cluster_unlocked"), "0");
    assert_eq!(sample("patroni_postgres_timeline"), "2");
    assert_eq!(sample("patroni_dcs_last_seen"), "1700000000");
    assert_eq!(sample("patroni_postgres_state"), "5");
    assert!(body.contains(
        "# HELP patroni_postgres_state Numeric representation of Postgres state.\n# Values: 0=initdb, 1=initdb_failed, 2=custom_bootstrap, 3=custom_bootstrap_failed, 4=creating_replica, 5=running, 6=starting, 7=bootstrap_starting, 8=start_failed, 9=restarting, 10=restart_failed, 11=stopping, 12=stopped, 13=stop_failed, 14=crashed\n# TYPE patroni_postgres_state gauge\n"
    ));
}

#[test]
fn metrics_without_postgres() {
    let cfg = test_config("");
    let mut s = replica_snapshot();
    s.status = None;
    s.node.status = None;
    s.node.state = "stopped".into();
    s.node.cluster = None;
    let body = metrics::render(&cfg, &s);
    assert!(
        !body.contains("patroni_postgres_streaming"),
        "needs PG >= 9.6"
    );
    assert!(body.contains("patroni_postgres_state{scope=\"demo\",name=\"pg1\"} 12\n"));
    assert!(body.contains("patroni_cluster_unlocked{scope=\"demo\",name=\"pg1\"} 1\n"));
    assert!(body.contains("patroni_postmaster_start_time{scope=\"demo\",name=\"pg1\"} 0\n"));
    assert_eq!(metrics::state_code("unknown"), -1);
}

/// Row W-1: Patroni's `watchdog_failed: true` (only when it failed) and the watchdog gauges.
#[test]
fn watchdog_state_in_status_and_metrics() {
    let cfg = test_config("");
    let mut s = replica_snapshot();
    let status = super::health::status_json(&cfg, &s);
    assert!(status.get("watchdog_failed").is_none(), "{status}");
    let body = metrics::render(&cfg, &s);
    assert!(body.contains("patrol_watchdog_armed{scope=\"demo\",name=\"pg1\"} 0\n"));
    assert!(body.contains("patrol_watchdog_failed{scope=\"demo\",name=\"pg1\"} 0\n"));

    s.node.watchdog.required = true;
    s.node.watchdog.failed = true;
    let status = super::health::status_json(&cfg, &s);
    assert_eq!(status["watchdog_failed"], json!(true));
    let body = metrics::render(&cfg, &s);
    assert!(body.contains("patrol_watchdog_failed{scope=\"demo\",name=\"pg1\"} 1\n"));
    // What peers read from it: left out of the leader race.
    assert!(patrol_ha::PeerStatus::from_status("pg1", &status).watchdog_failed);

    s.node.watchdog = patrol_ha::WatchdogView {
        enabled: true,
        required: true,
        armed: true,
        failed: false,
    };
    let body = metrics::render(&cfg, &s);
    assert!(body.contains("patrol_watchdog_armed{scope=\"demo\",name=\"pg1\"} 1\n"));
}

// ---- access control ----

fn client<'a>(ip: &str, cert: bool, auth: Option<&'a str>) -> Client<'a> {
    Client {
        ip: ip.parse().expect("ip"),
        has_client_cert: cert,
        authorization: auth,
    }
}

#[test]
fn access_checks_in_patronis_order() {
    let denied = |code, text| Err(super::Denied { code, text });
    let p = AccessPolicy::from_parts(
        vec!["10.0.0.0/8".parse().expect("net")],
        true,
        true,
        VerifyClient::Optional,
        Some(("admin", "s3cret")),
    );
    let good = "Basic YWRtaW46czNjcmV0"; // admin:s3cret
    let members: Vec<IpAddr> = vec!["192.168.1.5".parse().expect("ip")];
    assert_eq!(
        p.check(&client("127.0.0.1", true, Some(good)), true, &members),
        denied(403, "Access is denied")
    );
    assert_eq!(
        p.check(&client("192.168.1.5", true, Some(good)), true, &members),
        Ok(())
    );
    // The member part is skipped for POST /failsafe.
    assert_eq!(
        p.check(&client("192.168.1.5", true, Some(good)), false, &members),
        denied(403, "Access is denied")
    );
    // IPv4-mapped IPv6 from a dual-stack socket matches IPv4 entries.
    assert_eq!(
        p.check(&client("::ffff:10.1.2.3", true, Some(good)), true, &[]),
        Ok(())
    );
    assert_eq!(
        p.check(&client("10.1.2.3", false, Some(good)), true, &[]),
        denied(403, "client certificate required")
    );
    assert_eq!(
        p.check(&client("10.1.2.3", true, None), true, &[]),
        denied(401, "no auth header received")
    );
    assert_eq!(
        p.check(
            &client("10.1.2.3", true, Some("Basic YWRtaW46d3Jvbmc=")),
            true,
            &[]
        ),
        denied(401, "not authenticated")
    );
    assert_eq!(
        p.check(&client("10.1.2.3", true, Some("Bearer x")), true, &[]),
        denied(401, "not authenticated")
    );
    let open = AccessPolicy::from_parts(vec![], false, false, VerifyClient::None, None);
    assert_eq!(
        open.check(&client("8.8.8.8", false, None), true, &[]),
        Ok(())
    );
}

#[test]
fn audit_user_and_api_url_hosts() {
    assert_eq!(
        claimed_user(Some("Basic YWRtaW46czNjcmV0")).as_deref(),
        Some("admin")
    );
    assert_eq!(claimed_user(Some("Basic !!!")), None);
    assert_eq!(claimed_user(None), None);
    assert_eq!(
        api_url_host("https://[::1]:8443/patroni"),
        Some(("::1".into(), 8443))
    );
    assert_eq!(
        api_url_host("http://db1.example/patroni"),
        Some(("db1.example".into(), 80))
    );
}

// ---- routing and the OpenAPI document ----

#[test]
fn routing_by_first_segment_with_health_fallback() {
    let h = |m, p| route_for(m, p).map(|r| (r.handler, r.guard));
    assert_eq!(
        h("GET", "/cluster/x"),
        Some((Handler::Cluster, Guard::Open))
    );
    assert_eq!(h("GET", "/whatever"), Some((Handler::Health, Guard::Open)));
    assert_eq!(h("HEAD", "/cluster"), Some((Handler::Health, Guard::Open)));
    assert_eq!(
        h("POST", "/switchover"),
        Some((Handler::Switchover, Guard::Unsafe))
    );
    assert_eq!(
        h("POST", "/failsafe"),
        Some((Handler::PostFailsafe, Guard::UnsafeNoMembers))
    );
    assert_eq!(h("POST", "/patroni"), None, "501");
    assert_eq!(h("PUT", "/restart"), None, "501");
}

#[test]
fn openapi_documents_exactly_the_routes() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.yaml");
    let text = std::fs::read_to_string(path).expect("docs/openapi.yaml exists");
    let doc: Value = serde_yaml_ng::from_str(&text).expect("docs/openapi.yaml is YAML");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "an OpenAPI 3 document"
    );
    let methods = ["get", "put", "post", "delete", "patch", "head", "options"];
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .expect("path item")
                .keys()
                .filter(|m| methods.contains(&m.as_str()))
                .map(|m| (m.to_uppercase(), p.clone()))
                .collect::<Vec<_>>()
        })
        .collect();
    let served: BTreeSet<(String, String)> = all_routes()
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(missing.is_empty(), "served but not documented: {missing:?}");
    assert!(extra.is_empty(), "documented but not served: {extra:?}");
    // Unsafe operations say they need the basic auth scheme.
    for r in all_routes().iter().filter(|r| r.guard != Guard::Open) {
        let op = &doc["paths"][r.path][r.method.to_lowercase()];
        assert!(
            op["security"].is_array(),
            "{} {} must declare security",
            r.method,
            r.path
        );
    }
}

#[test]
fn patch_and_put_refuse_a_config_the_agents_could_not_use() {
    let body = obj(json!({"ttl": 9223372036854775807_i64, "loop_wait": 9223372036854775807_i64}));
    let (code, text) = invalid_config(&body).expect_err("huge timing");
    assert_eq!(code, 400);
    assert_eq!(
        text,
        "invalid dynamic configuration: ttl: must be an integer from 1 to 86400, not 9223372036854775807"
    );
    let (_, text) = invalid_config(&obj(json!({"loop_wait": "soon"}))).expect_err("a string");
    assert!(text.contains("loop_wait: "), "{text}");
    let (_, text) = invalid_config(&obj(
        json!({"postgresql": {"parameters": {"work_mem = 1MB\nshared_preload_libraries": "x"}}}),
    ))
    .expect_err("a name that is no parameter");
    assert_eq!(
        text,
        r#"invalid dynamic configuration: postgresql.parameters: "work_mem = 1MB\nshared_preload_libraries" is not a parameter name"#
    );
    // What Patroni writes passes; values below the minimums are adjusted by the agents.
    invalid_config(&obj(json!({"ttl": 10, "loop_wait": 1, "retry_timeout": 3})))
        .expect("the fast timing of the README");
    invalid_config(&obj(
        json!({"ttl": 5, "loop_wait": 10, "retry_timeout": 10}),
    ))
    .expect("adjusted, as Patroni does");
    invalid_config(&obj(
        json!({"postgresql": {"parameters": {"pg_stat_statements.max": 1000}}}),
    ))
    .expect("an extension's parameter");
}
