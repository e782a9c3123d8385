//! End to end, with real etcd and PostgreSQL: what the agents do with the dynamic configuration
//! and the member keys, which anyone who can write to etcd (or call `PATCH /config`) controls.
//! A valid timing change applies to the lease guard at once (the leader keeps running); a value
//! no agent could use is refused by the REST API and, written straight into etcd, ignored with
//! an error while every agent keeps running; hostile parameter names, hosts and URLs never reach
//! postgresql.conf, a libpq connection string or haproxy.cfg.

use std::process::Command;
use std::time::Duration;

use patrol_tests::{assert_holds_for, bin, wait_until, Cluster};
use serde_json::{json, Value};

use crate::support::http::call;
use crate::support::{in_recovery, start_all, wait_healthy, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT};

/// The guard's line when it stops PostgreSQL because the lease is about to expire.
const GUARD_STOP: &str = "stopping PostgreSQL now";

/// Puts `value` at `<prefix><key>` in etcd directly, as any client with write access can.
async fn etcd_put(cluster: &Cluster, key: &str, value: &str) {
    let mut c = cluster.etcd().client().await.expect("etcd client");
    c.put(format!("{}{key}", cluster.prefix()), value, None)
        .await
        .expect("etcd put");
}

async fn config_key(cluster: &Cluster) -> Value {
    let raw = cluster
        .etcd_get("config")
        .await
        .expect("etcd")
        .expect("config key");
    serde_json::from_str(&raw).expect("config is JSON")
}

/// Throughout `window`: node `i` is a running primary (`pg_is_in_recovery()` false, same
/// postmaster), its `GET /primary` answers 200, and it holds the leader key.
async fn stays_primary(cluster: &Cluster, i: usize, window: Duration) {
    let postmaster = cluster.postmaster_pid(i).expect("a running postmaster");
    let name = cluster.name(i);
    assert_holds_for(&format!("{name} to stay primary"), window, || async move {
        anyhow::ensure!(
            cluster.postmaster_pid(i) == Some(postmaster),
            "PostgreSQL of {name} was stopped or restarted"
        );
        anyhow::ensure!(
            !in_recovery(cluster, i).await?,
            "{name} is no longer primary"
        );
        let (code, body) = cluster.api_get(i, "/primary").await?;
        anyhow::ensure!(code == 200, "GET /primary on {name}: {code} {body}");
        let leader = cluster.leader().await?;
        anyhow::ensure!(
            leader.as_deref() == Some(name),
            "the leader key names {leader:?}"
        );
        Ok(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

async fn wait_log(cluster: &Cluster, i: usize, what: &str, needle: &str) {
    wait_until(what, PROPAGATION_TIMEOUT, || async {
        Ok(cluster.agent_log(i).contains(needle).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.agent_log(i)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timing_change_to_ttl_10_keeps_the_leader_running() {
    // Started with Patroni's default timing, then switched to the README's fast one (what
    // `patrolctl edit-config -s ttl=10 ...` does). The lease guard took its margin (10 s) from
    // bootstrap.dcs once, so a 10 s lease was always "about to expire": PostgreSQL was stopped
    // after every refresh and /primary answered 503.
    let mut cluster = Cluster::new(1).expect("cluster");
    cluster.set_config_override(0, |y| {
        *y = y.replace(
            "dcs: {ttl: 10, loop_wait: 1, retry_timeout: 3,",
            "dcs: {ttl: 30, loop_wait: 10, retry_timeout: 10,",
        );
    });
    assert!(cluster.config_yaml(0).contains("ttl: 30, loop_wait: 10"));
    let leader = start_all(&mut cluster).await;
    let body = json!({"ttl": 10, "retry_timeout": 3, "loop_wait": 1}).to_string();
    let r = call(
        cluster.api_port(leader),
        "PATCH",
        "/config",
        Some(&body),
        &[],
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    wait_log(
        &cluster,
        leader,
        "the new timing in effect",
        "timing changed ttl=10 loop_wait=1 retry_timeout=3",
    )
    .await;
    stays_primary(&cluster, leader, Duration::from_secs(15)).await;
    let log = cluster.agent_log(leader);
    assert!(!log.contains(GUARD_STOP), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_without_bootstrap_dcs_leads_a_ttl_10_cluster() {
    // pg1 has no bootstrap.dcs (Patroni's defaults: ttl 30, retry_timeout 10) and joins a cluster
    // whose config says ttl 10: once it leads, its guard must use the cluster's timing.
    let mut cluster = Cluster::new(2).expect("cluster");
    cluster.set_config_override(1, |y| {
        let start = y.find("  dcs: {").expect("a dcs line");
        let end = start + y[start..].find('\n').expect("end of line") + 1;
        y.replace_range(start..end, "");
    });
    assert!(!cluster.config_yaml(1).contains("dcs:"));
    cluster.start_node(0).expect("start pg0");
    wait_healthy(&cluster, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("pg0 leads");
    cluster.start_node(1).expect("start pg1");
    wait_healthy(&cluster, &[0, 1], HEALTHY_TIMEOUT)
        .await
        .expect("pg1 streams");
    cluster.switchover(0, 1).await.expect("switchover to pg1");
    let leader = wait_healthy(&cluster, &[0, 1], HEALTHY_TIMEOUT)
        .await
        .expect("healthy after the switchover");
    assert_eq!(leader, 1);
    stays_primary(&cluster, 1, Duration::from_secs(15)).await;
    let log = cluster.agent_log(1);
    assert!(!log.contains(GUARD_STOP), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_dynamic_config_is_refused_and_ignored() {
    let mut cluster = Cluster::new(2).expect("cluster");
    let leader = start_all(&mut cluster).await;
    let replica = 1 - leader;
    let before = config_key(&cluster).await;
    let huge = i64::MAX;

    // ---- The REST API refuses it, naming the key, and writes nothing.
    let body = json!({"ttl": huge, "loop_wait": huge}).to_string();
    for port in [cluster.api_port(leader), cluster.api_port(replica)] {
        let r = call(port, "PATCH", "/config", Some(&body), &[]).await;
        assert_eq!(r.code, 400, "{}", r.body);
        assert_eq!(
            r.body,
            format!("invalid dynamic configuration: ttl: must be an integer from 1 to 86400, not {huge}")
        );
    }
    let mut replaced = before.clone();
    replaced["loop_wait"] = json!(huge);
    let r = call(
        cluster.api_port(leader),
        "PUT",
        "/config",
        Some(&replaced.to_string()),
        &[],
    )
    .await;
    assert_eq!(r.code, 400, "{}", r.body);
    assert!(
        r.body.contains("loop_wait: must be an integer"),
        "{}",
        r.body
    );
    assert_eq!(config_key(&cluster).await, before);

    // ---- Written straight into etcd, every agent ignores it with an error naming the key
    // and keeps running; the leader keeps leading. (It crashed every agent: `overflow when
    // adding duration to instant`.)
    let mut hostile = before.clone();
    hostile["ttl"] = json!(huge);
    hostile["loop_wait"] = json!(huge);
    etcd_put(&cluster, "config", &hostile.to_string()).await;
    for i in [leader, replica] {
        wait_log(
            &cluster,
            i,
            "the refusal of the config key",
            &format!("is not valid: ttl: must be an integer from 1 to 86400, not {huge}; keeping the last valid one"),
        )
        .await;
    }
    stays_primary(&cluster, leader, Duration::from_secs(8)).await;
    for i in [leader, replica] {
        assert!(
            cluster.is_node_running(i),
            "agent {} exited",
            cluster.name(i)
        );
        assert!(!cluster.agent_log(i).contains("panicked"));
    }
    assert!(in_recovery(&cluster, replica)
        .await
        .expect("replica answers"));

    // ---- Not even a JSON object: the same.
    etcd_put(&cluster, "config", "[\"ttl\", 0]").await;
    for i in [leader, replica] {
        wait_log(
            &cluster,
            i,
            "the refusal of the config key",
            "is not a JSON object; keeping the last valid one",
        )
        .await;
    }
    stays_primary(&cluster, leader, Duration::from_secs(3)).await;

    // ---- A valid configuration whose parameter names would add lines to postgresql.conf:
    // the names are removed with a warning naming them, values are quoted, PostgreSQL runs on.
    let mut params = before.clone();
    params["postgresql"]["parameters"] = json!({
        "wal_keep_size": "128MB",
        "work_mem = '1MB'\nshared_preload_libraries": "patrol_injected",
        "krb_server_keyfile": "x'\nshared_preload_libraries = 'patrol_injected",
    });
    etcd_put(&cluster, "config", &params.to_string()).await;
    // Parameters apply on a reload (POST /reload rewrites postgresql.conf from the config in
    // effect); retried until the agent has taken the new config.
    let conf_path = cluster.data_dir(leader).join("postgresql.conf");
    let conf = wait_until(
        "postgresql.conf with the new parameters",
        PROPAGATION_TIMEOUT,
        || async {
            let r = call(cluster.api_port(leader), "POST", "/reload", None, &[]).await;
            anyhow::ensure!(r.code == 202, "POST /reload: {} {}", r.code, r.body);
            let conf = std::fs::read_to_string(&conf_path)?;
            Ok(conf.contains("krb_server_keyfile = ").then_some(conf))
        },
    )
    .await
    .expect("reload");
    wait_log(
        &cluster,
        leader,
        "the warning naming the bad parameter",
        r#"removing parameter "work_mem = '1MB'\nshared_preload_libraries": not a valid PostgreSQL parameter name"#,
    )
    .await;
    assert!(
        conf.contains(
            "krb_server_keyfile = 'x''\\nshared_preload_libraries = ''patrol_injected'\n"
        ),
        "{conf}"
    );
    assert!(
        !conf
            .lines()
            .any(|l| l.trim_start().starts_with("shared_preload_libraries")),
        "{conf}"
    );
    stays_primary(&cluster, leader, Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_member_keys_are_skipped() {
    let mut cluster = Cluster::new(2).expect("cluster");
    cluster.start_node(0).expect("start pg0");
    wait_healthy(&cluster, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("pg0 leads");

    // A member that asks to be cloned from, whose host adds a libpq keyword (a tab ends an
    // unquoted value) and whose api_url adds HAProxy directives (a newline ends the line).
    let evil = json!({
        "conn_url": format!("postgres://127.0.0.1\tservice=patrol_injected:{}/postgres", cluster.pg_port(0)),
        "api_url": "http://x\n    stats admin if TRUE\n    server injected 10.9.9.9:1/patroni",
        "state": "running",
        "role": "replica",
        "version": "4.1.4",
        "tags": {"clonefrom": true},
    });
    etcd_put(&cluster, "members/evil", &evil.to_string()).await;

    // A new member clones from the leader, not from `evil` (with the keyword added, that clone
    // failed forever), and streams from it. Both agents name the member they skip.
    cluster.start_node(1).expect("start pg1");
    let leader = wait_healthy(&cluster, &[0, 1], HEALTHY_TIMEOUT)
        .await
        .expect("pg1 clones from pg0 and streams");
    assert_eq!(leader, 0);
    for i in [0, 1] {
        wait_log(
            &cluster,
            i,
            "the error naming the member",
            r#"member "evil" is skipped: its conn_url"#,
        )
        .await;
    }
    let log = cluster.agent_log(1);
    assert!(!log.contains("cloning from evil"), "{log}");
    let conf = std::fs::read_to_string(cluster.data_dir(1).join("postgresql.conf"))
        .expect("postgresql.conf of pg1");
    let conninfo = conf
        .lines()
        .find(|l| l.starts_with("primary_conninfo = "))
        .expect("pg1 has a primary_conninfo");
    assert!(conninfo.contains("host=''127.0.0.1''"), "{conninfo}");
    assert!(!conninfo.contains("service"), "{conninfo}");

    // `patrol-router haproxy-config` leaves it out, naming it, and writes no directive of it.
    let out = Command::new(bin("patrol-router"))
        .arg("haproxy-config")
        .arg("--etcd")
        .arg(cluster.etcd().host_port())
        .arg("--namespace")
        .arg(cluster.namespace())
        .arg("--scope")
        .arg(cluster.scope())
        .output()
        .expect("run patrol-router haproxy-config");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(r#"member "evil" is skipped: its conn_url"#),
        "{stderr}"
    );
    for bad in ["injected", "stats admin if TRUE", "10.9.9.9", "evil"] {
        assert!(!stdout.contains(bad), "{bad} in:\n{stdout}");
    }
    let servers: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("server "))
        .collect();
    assert_eq!(servers.len(), 4, "pg0 and pg1 in both listens: {servers:?}");
}
