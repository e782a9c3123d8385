//! End to end: Patroni's own `patronictl` (from PyPI) reads a patrol cluster's keys as if
//! Patroni had written them.

use patrol_tests::{wait_until, Cluster};
use serde_json::Value;

use crate::support::ctl::{patronictl_ok, text};
use crate::support::{start_all, system_identifier, PROPAGATION_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patronictl_lists_our_cluster() {
    // Install patronictl (first run: pip) before the cluster's clock starts.
    let ctl = tokio::task::spawn_blocking(patrol_tests::patronictl)
        .await
        .expect("join")
        .expect("patronictl installed");
    assert!(ctl.is_file());

    let mut cluster = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut cluster).await;
    let leader_name = cluster.name(leader).to_owned();
    let sysid = system_identifier(&cluster, leader).await.expect("sysid");

    // `list -f json`: what patronictl makes of the member keys. Retried until it shows the
    // settled cluster (the DCS said so already; this only absorbs a loop's worth of lag).
    let cl = &cluster;
    let rows: Vec<Value> = wait_until(
        "patronictl list -f json to show a leader and two streaming replicas",
        PROPAGATION_TIMEOUT,
        || async move {
            let out = tokio::task::block_in_place(|| cl.run_patronictl(&["list", "-f", "json"]))?;
            let (stdout, stderr) = text(&out);
            if !out.status.success() {
                anyhow::bail!("patronictl list failed: {}: {stderr}", out.status);
            }
            let rows: Vec<Value> = serde_json::from_str(&stdout)
                .map_err(|e| anyhow::anyhow!("not a JSON list ({e}): {stdout}"))?;
            let streaming = rows
                .iter()
                .filter(|r| r["Role"] == "Replica" && r["State"] == "streaming")
                .count();
            if rows.len() == 3 && streaming == 2 {
                Ok(Some(rows))
            } else {
                anyhow::bail!("rows: {stdout}")
            }
        },
    )
    .await
    .expect("patronictl list -f json");

    let dump = serde_json::to_string_pretty(&rows).expect("pretty");
    let leaders: Vec<&Value> = rows.iter().filter(|r| r["Role"] == "Leader").collect();
    assert_eq!(leaders.len(), 1, "one Leader: {dump}");
    assert_eq!(leaders[0]["Member"], leader_name.as_str(), "{dump}");
    assert_eq!(leaders[0]["State"], "running", "{dump}");
    let mut names: Vec<String> = rows
        .iter()
        .map(|r| r["Member"].as_str().expect("Member").to_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["pg0", "pg1", "pg2"], "{dump}");
    for row in &rows {
        let name = row["Member"].as_str().expect("Member");
        let i = crate::support::index_of(&cluster, name).expect("known member");
        assert_eq!(row["Cluster"], cluster.scope(), "{dump}");
        assert_eq!(row["TL"], 1, "{name}: {dump}");
        assert_eq!(
            row["Host"],
            format!("127.0.0.1:{}", cluster.pg_port(i)).as_str(),
            "{name}: {dump}"
        );
        if i == leader {
            continue;
        }
        assert_eq!(row["Role"], "Replica", "{name}: {dump}");
        assert_eq!(row["State"], "streaming", "{name}: {dump}");
        // patronictl computes these from our receive_lsn/replay_lsn: they must be LSN strings.
        for col in ["Receive LSN", "Replay LSN"] {
            let lsn = row[col].as_str().unwrap_or_else(|| panic!("{col}: {dump}"));
            assert!(
                patrol_dcs::parse_lsn(lsn).is_some(),
                "{name} {col} {lsn:?}: {dump}"
            );
        }
    }

    // The pretty table: Patroni's title line with scope and system identifier.
    let pretty = patronictl_ok(&cluster, &["list"]);
    let title = pretty.lines().next().unwrap_or_default();
    let want = format!(" Cluster: {} ({sysid}) ", cluster.scope());
    assert!(
        title.contains(&want),
        "title line {title:?} lacks {want:?}:\n{pretty}"
    );
    for name in ["pg0", "pg1", "pg2"] {
        assert!(pretty.contains(name), "{name} missing:\n{pretty}");
    }
    assert!(pretty.contains("| Leader "), "{pretty}");

    // history: no failover yet, but it must read our (absent or empty) history.
    let history = patronictl_ok(&cluster, &["history"]);
    assert!(history.contains("TL"), "history header:\n{history}");
    let history_json = patronictl_ok(&cluster, &["history", "-f", "json"]);
    let h: Value = serde_json::from_str(&history_json)
        .unwrap_or_else(|e| panic!("history -f json ({e}): {history_json}"));
    assert_eq!(h, Value::Array(vec![]), "no timeline switches yet");

    // show-config: the dynamic configuration from our config key.
    let config = patronictl_ok(&cluster, &["show-config"]);
    assert!(
        config.lines().any(|l| l == "ttl: 10"),
        "show-config:\n{config}"
    );
    assert!(
        config.lines().any(|l| l == "loop_wait: 1"),
        "show-config:\n{config}"
    );
    let shown: serde_yaml_ng::Value = serde_yaml_ng::from_str(&config).expect("YAML");
    assert_eq!(shown["retry_timeout"].as_u64(), Some(3), "{config}");
    assert_eq!(
        shown["postgresql"]["use_slots"].as_bool(),
        Some(true),
        "{config}"
    );
}
