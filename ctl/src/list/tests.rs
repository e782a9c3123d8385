use super::*;
use crate::testutil::cluster_from;

fn a() -> Cluster {
    cluster_from(include_str!("../testdata/a_keys.json"))
}

fn b() -> Cluster {
    cluster_from(include_str!("../testdata/b_keys.json"))
}

/// The pretty table (`list` without options).
fn render_pretty(scope: &str, cluster: &Cluster) -> String {
    output_members(cluster, scope, false, Format::Pretty)
}

// Every expected text below was printed by Patroni 4.1's patronictl for the same keys.

#[test]
fn pretty_with_all_optional_columns_and_footer() {
    assert_eq!(
        output_members(&a(), "gold", false, Format::Pretty),
        include_str!("../testdata/a_list.txt")
    );
    assert_eq!(
        output_members(&a(), "gold", true, Format::Pretty),
        include_str!("../testdata/a_list_e.txt")
    );
}

#[test]
fn machine_formats() {
    assert_eq!(
        output_members(&a(), "gold", false, Format::Tsv),
        include_str!("../testdata/a_list_tsv.txt")
    );
    assert_eq!(
        output_members(&a(), "gold", false, Format::Json),
        include_str!("../testdata/a_list_json.txt")
    );
    assert_eq!(
        output_members(&a(), "gold", false, Format::Yaml),
        include_str!("../testdata/a_list_yaml.txt")
    );
}

#[test]
fn topology_tree_by_replicatefrom() {
    assert_eq!(
        output_members(&a(), "gold", false, Format::Topology),
        include_str!("../testdata/a_topology.txt")
    );
    assert_eq!(
        output_members(&b(), "gold", false, Format::Topology),
        include_str!("../testdata/b_topology.txt")
    );
}

#[test]
fn standby_leader_ports_and_member_without_host() {
    assert_eq!(
        output_members(&b(), "gold", false, Format::Pretty),
        include_str!("../testdata/b_list.txt")
    );
    assert_eq!(
        output_members(&b(), "gold", true, Format::Pretty),
        include_str!("../testdata/b_list_e.txt")
    );
    assert_eq!(
        output_members(&b(), "gold", true, Format::Tsv),
        include_str!("../testdata/b_list_e_tsv.txt")
    );
    assert_eq!(
        output_members(&b(), "gold", true, Format::Json),
        include_str!("../testdata/b_list_e_json.txt")
    );
}

#[test]
fn empty_cluster() {
    assert_eq!(
        output_members(&Cluster::default(), "other", false, Format::Pretty),
        include_str!("../testdata/empty_list.txt")
    );
    assert_eq!(
        output_members(&Cluster::default(), "other", false, Format::Json),
        "[]\n"
    );
}

#[test]
fn pretty_matches_patronictl_layout() {
    let c = cluster_from(
        r#"{"initialize": "7711487133213910474", "leader": "pg1", "status": "{\"optime\":67108960}",
        "members/pg0": "{\"conn_url\":\"postgres://127.0.0.1:25430/postgres\",\"api_url\":\"\",\"state\":\"running\",\"role\":\"replica\",\"version\":\"4.1.4\",\"xlog_location\":67108960,\"replay_lsn\":67108960,\"receive_lsn\":67108960,\"replication_state\":\"streaming\",\"timeline\":1}",
        "members/pg1": "{\"conn_url\":\"postgres://127.0.0.1:25431/postgres\",\"api_url\":\"\",\"state\":\"running\",\"role\":\"primary\",\"version\":\"4.1.4\",\"xlog_location\":67108960,\"timeline\":1}",
        "members/pg2": "{\"conn_url\":\"postgres://127.0.0.1:25432/postgres\",\"api_url\":\"\",\"state\":\"running\",\"role\":\"replica\",\"version\":\"4.1.4\",\"xlog_location\":67108960,\"replay_lsn\":67108960,\"receive_lsn\":67108960,\"replication_state\":\"streaming\",\"timeline\":1}"}"#,
    );
    // Captured from Patroni 4.1's patronictl against the same keys.
    let expected = "\
+ Cluster: smoke (7711487133213910474) ----------+----+-------------+-----+------------+-----+
| Member | Host            | Role    | State     | TL | Receive LSN | Lag | Replay LSN | Lag |
+--------+-----------------+---------+-----------+----+-------------+-----+------------+-----+
| pg0    | 127.0.0.1:25430 | Replica | streaming |  1 |   0/4000060 |   0 |  0/4000060 |   0 |
| pg1    | 127.0.0.1:25431 | Leader  | running   |  1 |             |     |            |     |
| pg2    | 127.0.0.1:25432 | Replica | streaming |  1 |   0/4000060 |   0 |  0/4000060 |   0 |
+--------+-----------------+---------+-----------+----+-------------+-----+------------+-----+
";
    assert_eq!(render_pretty("smoke", &c), expected);
}

#[test]
fn uninitialized_and_paused() {
    let c = cluster_from(r#"{"config": "{\"pause\":true}"}"#);
    let s = render_pretty("x", &c);
    assert!(s.starts_with("+ Cluster: x (uninitialized) "), "{s}");
    assert!(s.ends_with(" Maintenance mode: on\n"), "{s}");
}

#[test]
fn cluster_json_like_get_cluster() {
    let cj = cluster_as_json(&a());
    let m0 = &cj["members"][0];
    assert_eq!(m0["role"], "sync_standby");
    assert_eq!(m0["host"], "10.0.0.1");
    assert_eq!(m0["port"], 5432);
    assert_eq!(m0["receive_lag"], 0);
    assert_eq!(m0["replay_lsn"], "0/30000A0");
    assert_eq!(m0["lag"], 0);
    assert_eq!(cj["members"][3]["lsn"], "unknown");
    assert_eq!(cj["pause"], true);
    assert_eq!(cj["scheduled_switchover"]["to"], "pg2");
}

#[test]
fn long_pending_restart_reasons_are_hidden_in_pretty_output() {
    let c = cluster_from(
        r#"{"leader": "pg0", "members/pg0": "{\"conn_url\":\"postgres://h:5432/postgres\",\"api_url\":\"\",\"state\":\"running\",\"role\":\"primary\",\"pending_restart\":true,\"pending_restart_reason\":{\"shared_preload_libraries\":{\"old_value\":\"pg_stat_statements,auto_explain\",\"new_value\":\"pg_stat_statements\"}}}"}"#,
    );
    let s = output_members(&c, "x", false, Format::Pretty);
    assert!(
        s.contains("shared_preload_libraries: [hidden - too long]"),
        "{s}"
    );
    let s = output_members(&c, "x", false, Format::Json);
    assert!(
        s.contains("pg_stat_statements,auto_explain->pg_stat_statements"),
        "{s}"
    );
}
