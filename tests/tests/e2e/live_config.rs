//! Live configuration, driven by Patroni's own `patronictl`: a dynamic parameter reaches every
//! member with a reload; a restart-only one sets the pending restart (member keys,
//! `GET /patroni`, `patronictl list`) until `restart --pending` (here first `--role replica`)
//! applies it; a value PostgreSQL would refuse is kept out and never stops PostgreSQL; a
//! dynamic `pg_hba` lets a new client in. Then the patronictl commands not run elsewhere:
//! `query`, `version`, `failover`, `switchover --scheduled` with `flush ... switchover`, and
//! `remove`.

use serde_json::Value;

use patrol_tests::{tail_lines, wait_until, Cluster};

use crate::support::ctl::{patronictl_ok, patronictl_ok_with};
use crate::support::{show, start_all, wait_healthy, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT};

async fn postmaster_start(c: &Cluster, i: usize) -> anyhow::Result<String> {
    let client = c.connect(i).await?;
    let row = client
        .query_one("SELECT pg_postmaster_start_time()::text", &[])
        .await?;
    Ok(row.get(0))
}

/// `patronictl list -f json`'s rows.
fn list(c: &Cluster) -> anyhow::Result<Vec<Value>> {
    let out = tokio::task::block_in_place(|| c.run_patronictl(&["list", "-f", "json"]))?;
    anyhow::ensure!(out.status.success(), "patronictl list: {}", out.status);
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Waits until `guc` shows `want` on every member.
async fn wait_shown(c: &Cluster, guc: &str, want: &str) {
    wait_until(
        &format!("{guc} = {want} on every member"),
        PROPAGATION_TIMEOUT,
        || async {
            for i in 0..c.len() {
                if show(c, i, guc).await? != want {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Waits until `patronictl list` shows "Pending restart" on exactly the members `pending`.
async fn wait_pending(c: &Cluster, pending: &[&str]) -> Vec<Value> {
    wait_until(
        &format!("pending restart on exactly {pending:?}"),
        PROPAGATION_TIMEOUT,
        || async {
            let rows = list(c)?;
            let mut flagged: Vec<&str> = rows
                .iter()
                .filter(|r| r.get("Pending restart").and_then(Value::as_str) == Some("*"))
                .filter_map(|r| r["Member"].as_str())
                .collect();
            flagged.sort();
            let mut want = pending.to_vec();
            want.sort();
            if flagged == want {
                Ok(Some(rows))
            } else {
                let why: Vec<String> = (0..c.len())
                    .flat_map(|i| {
                        c.agent_log(i)
                            .lines()
                            .filter(|l| l.contains("restart"))
                            .map(|l| format!("{}: {l}", c.name(i)))
                            .collect::<Vec<_>>()
                    })
                    .collect();
                anyhow::bail!("flagged: {flagged:?}; rows: {rows:?}\n{}", why.join("\n"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parameters_apply_live_and_restarts_wait_for_pending() {
    let mut c = Cluster::new(3).expect("cluster");
    let all = [0, 1, 2];
    let leader = start_all(&mut c).await;
    let names: Vec<String> = (0..3).map(|i| c.name(i).to_owned()).collect();
    let scope = c.scope().to_owned();

    // A parameter PostgreSQL reloads: every member has it within a few loops.
    patronictl_ok(
        &c,
        &["edit-config", &scope, "--force", "-p", "work_mem=7MB"],
    );
    wait_shown(&c, "work_mem", "7MB").await;

    // A restart-only parameter: pending restart everywhere, with Patroni's reason.
    let before = show(&c, leader, "max_connections").await.expect("SHOW");
    patronictl_ok(
        &c,
        &[
            "edit-config",
            &scope,
            "--force",
            "--pg",
            "max_connections=123",
        ],
    );
    let all_names: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_pending(&c, &all_names).await;
    for i in all {
        let (code, body) = c.api_get(i, "/patroni").await.expect("GET /patroni");
        assert_eq!(code, 200);
        let v: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(
            v["pending_restart"],
            true,
            "{body}\n{}",
            tail_lines(&c.agent_log_path(i), 40)
        );
        assert_eq!(
            v["pending_restart_reason"]["max_connections"],
            serde_json::json!({"old_value": before, "new_value": "123"}),
            "{body}\n{}",
            tail_lines(&c.agent_log_path(i), 40)
        );
        let (_, metrics) = c.api_get(i, "/metrics").await.expect("GET /metrics");
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("patroni_pending_restart{") && l.ends_with(" 1")),
            "{metrics}"
        );
    }

    // `restart --role replica --pending`: the replicas only; the leader keeps waiting.
    let leader_started = postmaster_start(&c, leader).await.expect("start time");
    let out = patronictl_ok(
        &c,
        &[
            "restart",
            &scope,
            "--role",
            "replica",
            "--pending",
            "--force",
        ],
    );
    for (i, name) in names.iter().enumerate() {
        if i != leader {
            assert!(
                out.contains(&format!("Success: restart on member {name}")),
                "{out}"
            );
        }
    }
    wait_healthy(&c, &all, HEALTHY_TIMEOUT)
        .await
        .expect("healthy after restarting the replicas");
    wait_pending(&c, &[names[leader].as_str()]).await;
    assert_eq!(
        postmaster_start(&c, leader).await.expect("start time"),
        leader_started,
        "the leader was not restarted"
    );

    // `restart --pending` now restarts the leader alone and clears the flag.
    let out = patronictl_ok(&c, &["restart", &scope, "--pending", "--force"]);
    assert!(
        out.contains(&format!("Success: restart on member {}", names[leader])),
        "{out}"
    );
    wait_healthy(&c, &all, HEALTHY_TIMEOUT)
        .await
        .expect("healthy after restarting the leader");
    wait_pending(&c, &[]).await;
    wait_shown(&c, "max_connections", "123").await;

    // A value PostgreSQL would refuse is kept out of postgresql.conf (and said so), so a
    // restart still brings PostgreSQL up with what it had.
    let buffers = show(&c, leader, "wal_buffers").await.expect("SHOW");
    patronictl_ok(
        &c,
        &["edit-config", &scope, "--force", "-p", "wal_buffers=lots"],
    );
    let replica = (0..3).find(|&i| i != leader).expect("a replica");
    wait_until(
        "the refused value in the agent's log",
        PROPAGATION_TIMEOUT,
        || async {
            Ok(c.agent_log(replica)
                .contains("removing parameter wal_buffers=\"lots\"")
                .then_some(()))
        },
    )
    .await
    .expect("the agent names the refused value");
    patronictl_ok(&c, &["restart", &scope, &names[replica], "--force"]);
    wait_healthy(&c, &all, HEALTHY_TIMEOUT)
        .await
        .expect("PostgreSQL restarts despite the bad value");
    assert_eq!(
        show(&c, replica, "wal_buffers").await.expect("SHOW"),
        buffers
    );
    wait_pending(&c, &[]).await;

    // A dynamic pg_hba: a client the old rules turn away gets in.
    let admin = c.connect(leader).await.expect("connect");
    admin
        .batch_execute("CREATE ROLE newcomer LOGIN")
        .await
        .expect("CREATE ROLE");
    let newcomer = |i: usize| {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(c.pg_port(i))
            .user("newcomer")
            .dbname("postgres")
            .connect_timeout(std::time::Duration::from_secs(5));
        async move { cfg.connect(tokio_postgres::NoTls).await.map(|_| ()) }
    };
    assert!(newcomer(leader).await.is_err(), "no password: refused");
    patronictl_ok(
        &c,
        &[
            "edit-config",
            &scope,
            "--force",
            "-s",
            "postgresql.pg_hba=[local all all trust, host all newcomer 127.0.0.1/32 trust, \
             host replication replicator 127.0.0.1/32 scram-sha-256, \
             host all all 127.0.0.1/32 scram-sha-256]",
        ],
    );
    wait_until(
        "the newcomer let in everywhere",
        PROPAGATION_TIMEOUT,
        || async {
            for i in 0..3 {
                if newcomer(i).await.is_err() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .expect("pg_hba applied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patronictl_queries_fails_over_flushes_and_removes() {
    let mut c = Cluster::new(2).expect("cluster");
    let all = [0, 1];
    let leader = start_all(&mut c).await;
    let scope = c.scope().to_owned();
    let other = 1 - leader;
    let (lname, oname) = (c.name(leader).to_owned(), c.name(other).to_owned());

    // query: through the member's conn_url, with libpq's environment for the password.
    let out = patronictl_ok_with(
        &c,
        &[
            "query",
            &scope,
            "-m",
            &oname,
            "-U",
            "postgres",
            "-c",
            "SELECT pg_is_in_recovery(), 6 * 7",
        ],
        &[("PGPASSWORD", "supersecret")],
        None,
    );
    assert!(out.contains("True\t42"), "{out}");

    // version: patronictl's own, then each member's from GET /patroni.
    let out = patronictl_ok(&c, &["version", &scope]);
    assert!(out.contains("patronictl version"), "{out}");
    for name in [&lname, &oname] {
        assert!(out.contains(&format!("{name}: Patroni ")), "{out}");
        assert!(out.contains("PostgreSQL 15"), "{out}");
    }

    // A scheduled switchover, then flushed.
    patronictl_ok(
        &c,
        &[
            "switchover",
            &scope,
            "--leader",
            &lname,
            "--candidate",
            &oname,
            "--scheduled",
            "2099-01-01T00:00:00+00:00",
            "--force",
        ],
    );
    wait_until(
        "the scheduled switchover in etcd",
        PROPAGATION_TIMEOUT,
        || async {
            Ok(c.etcd_get("failover")
                .await?
                .filter(|v| v.contains("2099"))
                .map(|_| ()))
        },
    )
    .await
    .expect("scheduled");
    let out = patronictl_ok(&c, &["flush", &scope, "switchover", "--force"]);
    assert!(
        out.contains("Success: scheduled switchover deleted"),
        "{out}"
    );
    // Patroni's DELETE /switchover leaves an empty `failover` key.
    let left = c.etcd_get("failover").await.expect("etcd");
    assert!(left.as_deref().is_none_or(|v| v == "{}"), "{left:?}");

    // failover to the replica (the leader is healthy: patronictl asks the cluster to hand
    // over, as Patroni does).
    let out = patronictl_ok(&c, &["failover", &scope, "--candidate", &oname, "--force"]);
    assert!(
        out.contains(&format!("Successfully failed over to \"{oname}\"")),
        "{out}"
    );
    assert_eq!(
        c.leader().await.expect("etcd").as_deref(),
        Some(oname.as_str())
    );
    wait_healthy(&c, &all, HEALTHY_TIMEOUT)
        .await
        .expect("healthy after the failover");

    // remove: with the agents stopped, patronictl wipes the cluster's keys after its two
    // confirmations.
    for i in all {
        c.stop_node(i, patrol_tests::Signal::SIGTERM)
            .expect("SIGTERM");
    }
    for i in all {
        c.wait_node_exit(i, std::time::Duration::from_secs(60))
            .await
            .expect("agent stopped");
    }
    let answers = format!("{scope}\nYes I am aware\n");
    patronictl_ok_with(&c, &["remove", &scope], &[], Some(&answers));
    assert_eq!(c.etcd_get_prefix().await.expect("etcd"), Vec::new());
}
