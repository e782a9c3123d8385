//! End to end: `patrolctl` against a real 3-node patrol cluster (real etcd, PostgreSQL 15),
//! compared with Patroni's own `patronictl` where both read the same keys, and Patroni's
//! `patronictl` driving our agents (edit-config, pause/resume, switchover, list).

use std::process::{Command, Output, Stdio};

use patrol_tests::{wait_until, Cluster};
use serde_json::Value;

use crate::support::ctl::{ok, patrolctl, patrolctl_in, patrolctl_with, text};
use crate::support::{
    index_of, members, start_all, wait_healthy, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT,
};

fn patronictl_ok(cluster: &Cluster, args: &[&str]) -> String {
    let out = tokio::task::block_in_place(|| cluster.run_patronictl(args))
        .unwrap_or_else(|e| panic!("patronictl {args:?}: {e:#}"));
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "patronictl {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

/// Waits until patrolctl and patronictl print the same text for `args` (member keys move a
/// little between two runs: LSNs, a loop's worth of state).
async fn same_as_patronictl(cluster: &Cluster, args: &[&str]) -> String {
    let what = format!("patrolctl {args:?} to print what patronictl prints");
    wait_until(&what, PROPAGATION_TIMEOUT, || async move {
        let theirs = patronictl_ok(cluster, args);
        let ours = ok(cluster, args);
        if ours == theirs {
            Ok(Some(ours))
        } else {
            anyhow::bail!("patronictl:\n{theirs}\npatrolctl:\n{ours}")
        }
    })
    .await
    .expect("same output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patrolctl_reads_the_cluster_like_patronictl() {
    let ctl = tokio::task::spawn_blocking(patrol_tests::patronictl)
        .await
        .expect("join")
        .expect("patronictl installed");
    assert!(ctl.is_file());
    let mut cluster = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut cluster).await;
    let leader_name = cluster.name(leader).to_owned();
    let replica = (0..3).find(|&i| i != leader).expect("a replica");

    // Byte-for-byte the same output as Patroni's patronictl over the same keys.
    for args in [
        &["list"][..],
        &["list", "-e"],
        &["list", "-f", "json"],
        &["list", "-f", "tsv"],
        &["list", "-f", "yaml"],
        &["topology"],
        &["history"],
        &["history", "-f", "json"],
        &["show-config"],
        &["dsn"],
        &["dsn", "-r", "replica"],
        &["dsn", "-m", cluster.name(replica)],
    ] {
        same_as_patronictl(&cluster, args).await;
    }
    let list = ok(&cluster, &["list"]);
    assert!(
        list.lines()
            .any(|l| l.contains(&leader_name) && l.contains("| Leader ")),
        "{list}"
    );
    assert_eq!(
        ok(&cluster, &["dsn"]),
        format!("host=127.0.0.1 port={}\n", cluster.pg_port(leader))
    );
    let err = patrolctl(&cluster, &["dsn", "-m", "nosuch"]);
    assert_eq!(err.status.code(), Some(1));
    assert_eq!(text(&err).1, "Error: Can not find a suitable member\n");

    // query: the superuser from... the -U/--password options (patronictl's way); the
    // password comes from PGPASSWORD like libpq.
    let q = tokio::task::block_in_place(|| {
        let config = cluster.patronictl_config().expect("config");
        Command::new(patrol_tests::bin("patrolctl"))
            .arg("-c")
            .arg(&config)
            .args([
                "query",
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-c",
                "SELECT 1 AS one, 'x' AS s, pg_is_in_recovery() AS r",
            ])
            .env("PGPASSWORD", "supersecret")
            .output()
            .expect("query")
    });
    assert_eq!(text(&q).0, "one\ts\tr\n1\tx\tFalse\n", "{:?}", text(&q));
    let q = tokio::task::block_in_place(|| {
        let config = cluster.patronictl_config().expect("config");
        Command::new(patrol_tests::bin("patrolctl"))
            .arg("-c")
            .arg(&config)
            .args([
                "query",
                "-U",
                "postgres",
                "-r",
                "replica",
                "--format",
                "json",
                "-c",
                "SELECT pg_is_in_recovery() AS r",
            ])
            .env("PGPASSWORD", "supersecret")
            .output()
            .expect("query")
    });
    assert_eq!(text(&q).0, "[{\"r\": true}]\n", "{:?}", text(&q));
    let q = tokio::task::block_in_place(|| {
        let config = cluster.patronictl_config().expect("config");
        Command::new(patrol_tests::bin("patrolctl"))
            .arg("-c")
            .arg(&config)
            .args(["query", "-U", "postgres", "-c", "SELECT * FROM nosuch"])
            .env("PGPASSWORD", "supersecret")
            .output()
            .expect("query")
    });
    assert!(
        text(&q).0.ends_with("\tERROR, SQLSTATE: 42P01\n"),
        "{:?}",
        text(&q)
    );

    // promote-cluster on a cluster that is not a standby cluster, demote-cluster without a
    // source: patronictl's refusals, nothing sent.
    let e = patrolctl(&cluster, &["promote-cluster", "--force"]);
    assert_eq!(
        text(&e).1,
        "Error: Cluster is already in the required state\n"
    );
    let e = patrolctl(&cluster, &["demote-cluster", "--force"]);
    assert_eq!(
        text(&e).1,
        "Error: At least --host, --port or --restore-command should be specified\n"
    );

    // version: ours, then every member's Patroni and PostgreSQL versions from GET /patroni.
    let v = ok(&cluster, &["version", cluster.scope()]);
    let mut lines = v.lines();
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .starts_with("patrolctl version "),
        "{v}"
    );
    assert_eq!(lines.next(), Some(""), "{v}");
    for i in 0..3 {
        let want = format!("{}: Patroni 4.1.4 PostgreSQL 15.", cluster.name(i));
        assert!(v.lines().any(|l| l.starts_with(&want)), "{want}: {v}");
    }

    // edit-config writes the config key (CAS) and prints patronictl's diff; the agents pick
    // the change up.
    let edit = ok(
        &cluster,
        &[
            "edit-config",
            "-s",
            "maximum_lag_on_failover=2097152",
            "--force",
        ],
    );
    assert!(
        edit.starts_with("--- \n+++ \n@@ -1,5 +1,5 @@\n loop_wait: 1\n"),
        "{edit}"
    );
    assert!(
        edit.contains("\n-maximum_lag_on_failover: 1048576\n+maximum_lag_on_failover: 2097152\n"),
        "{edit}"
    );
    assert!(edit.ends_with("\nConfiguration changed\n"), "{edit}");
    assert!(ok(&cluster, &["show-config"])
        .lines()
        .any(|l| l == "maximum_lag_on_failover: 2097152"));

    // haproxy-config: every member as a server in both listens, and HAProxy accepts it.
    let (w, r, st) = (
        format!("127.0.0.1:{}", patrol_tests::free_port()),
        format!("127.0.0.1:{}", patrol_tests::free_port()),
        format!("127.0.0.1:{}", patrol_tests::free_port()),
    );
    let cfg = ok(
        &cluster,
        &[
            "haproxy-config",
            "--write-bind",
            &w,
            "--read-bind",
            &r,
            "--stats-bind",
            &st,
        ],
    );
    for i in 0..3 {
        let line = format!(
            "server {} 127.0.0.1:{} ",
            cluster.name(i),
            cluster.pg_port(i)
        );
        assert_eq!(cfg.matches(&line).count(), 2, "{line} in\n{cfg}");
    }
    let path = cluster.root().join("patrolctl-haproxy.cfg");
    std::fs::write(&path, &cfg).expect("write haproxy.cfg");
    let check = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&path)
        .output()
        .expect("run haproxy -c");
    assert!(
        check.status.success(),
        "haproxy -c: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert_eq!(
        ok(
            &cluster,
            &[
                "edit-config",
                "-s",
                "maximum_lag_on_failover=2097152",
                "--force"
            ]
        ),
        "Not changed\n"
    );
    let cl = &cluster;
    for i in 0..3 {
        wait_until(
            "GET /config to show the new maximum_lag_on_failover",
            PROPAGATION_TIMEOUT,
            || async move {
                let (code, body) = cl.api_get(i, "/config").await?;
                let v: Value = serde_json::from_str(&body)?;
                Ok((code == 200 && v["maximum_lag_on_failover"] == 2097152).then_some(()))
            },
        )
        .await
        .expect("agents read the new config");
    }

    // Patroni's patronictl edits our config key the same way.
    let theirs = patronictl_ok(&cluster, &["edit-config", "-s", "loop_wait=2", "--force"]);
    assert!(theirs.contains("+loop_wait: 2"), "{theirs}");
    assert!(ok(&cluster, &["show-config"])
        .lines()
        .any(|l| l == "loop_wait: 2"));

    // pause --wait / resume --wait through PATCH /config; member keys get and lose `pause`.
    let p = ok(&cluster, &["pause", "--wait"]);
    assert_eq!(
        p,
        "'pause' request sent, waiting until it is recognized by all nodes\nSuccess: cluster management is paused\n"
    );
    let m = members(&cluster).await.expect("members");
    assert!(m.values().all(|m| m.pause), "{m:?}");
    assert!(ok(&cluster, &["list"]).ends_with(" Maintenance mode: on\n"));
    let again = patrolctl(&cluster, &["pause"]);
    assert_eq!(again.status.code(), Some(1));
    assert_eq!(text(&again).1, "Error: Cluster is already paused\n");
    let r = ok(&cluster, &["resume", "--wait"]);
    assert_eq!(
        r,
        "'resume' request sent, waiting until it is recognized by all nodes\nSuccess: cluster management is resumed\n"
    );
    let m = members(&cluster).await.expect("members");
    assert!(m.values().all(|m| !m.pause), "{m:?}");

    // The same with Patroni's patronictl.
    let p = patronictl_ok(&cluster, &["pause", "--wait"]);
    assert!(
        p.ends_with("Success: cluster management is paused\n"),
        "{p}"
    );
    let r = patronictl_ok(&cluster, &["resume", "--wait"]);
    assert!(
        r.ends_with("Success: cluster management is resumed\n"),
        "{r}"
    );
    let m = members(&cluster).await.expect("members");
    assert!(m.values().all(|m| !m.pause), "{m:?}");
}

/// Waits until the leader key names `name` and the cluster is healthy again.
async fn wait_leader(cluster: &Cluster, name: &str) {
    let i = index_of(cluster, name).expect("known member");
    let l = wait_healthy(cluster, &[0, 1, 2], HEALTHY_TIMEOUT)
        .await
        .expect("healthy");
    if l != i {
        let cl = cluster;
        wait_until("the expected leader", HEALTHY_TIMEOUT, || async move {
            Ok((cl.leader().await?.as_deref() == Some(name)).then_some(()))
        })
        .await
        .expect("leader");
        wait_healthy(cluster, &[0, 1, 2], HEALTHY_TIMEOUT)
            .await
            .expect("healthy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patrolctl_drives_the_agents_through_the_rest_api() {
    let ctl = tokio::task::spawn_blocking(patrol_tests::patronictl)
        .await
        .expect("join")
        .expect("patronictl installed");
    assert!(ctl.is_file());
    let mut cluster = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut cluster).await;
    let names: Vec<String> = (0..3).map(|i| cluster.name(i).to_owned()).collect();
    let target = names[(leader + 1) % 3].clone();

    // switchover --force to a named candidate: POST /switchover on the leader.
    let s = ok(&cluster, &["switchover", "--candidate", &target, "--force"]);
    assert!(s.starts_with("Current cluster topology\n"), "{s}");
    assert!(
        s.contains(&format!(" Successfully switched over to \"{target}\"\n")),
        "{s}"
    );
    wait_leader(&cluster, &target).await;

    // failover --candidate --force: POST /failover.
    let next = names[(leader + 2) % 3].clone();
    let f = ok(&cluster, &["failover", "--candidate", &next, "--force"]);
    assert!(
        f.contains(&format!(" Successfully failed over to \"{next}\"\n")),
        "{f}"
    );
    wait_leader(&cluster, &next).await;

    // Interactive switchover: patronictl's prompts, answered on stdin.
    let s = tokio::task::block_in_place(|| {
        patrolctl_in(&cluster, &["switchover"], &format!("\n{target}\nnow\ny\n"))
    });
    let (so, se) = text(&s);
    assert!(s.status.success(), "{so}\n{se}");
    assert!(so.contains(&format!("Primary [{next}]: ")), "{so}");
    assert!(so.contains("Candidate ['"), "{so}");
    assert!(
        so.contains(&format!(
            "Are you sure you want to switchover cluster {}, demoting current leader {next}? [y/N]: ",
            cluster.scope()
        )),
        "{so}"
    );
    assert!(
        so.contains(&format!("Successfully switched over to \"{target}\"")),
        "{so}"
    );
    wait_leader(&cluster, &target).await;

    // Scheduled switchover shows in list's footer and flush removes it (DELETE /switchover).
    let at = (chrono_like_now_plus_hours(2)).to_string();
    let s = ok(
        &cluster,
        &[
            "switchover",
            "--candidate",
            &next,
            "--scheduled",
            &at,
            "--force",
        ],
    );
    assert!(s.contains(" Switchover scheduled\n"), "{s}");
    let l = ok(&cluster, &["list"]);
    assert!(l.contains(" Switchover scheduled at: "), "{l}");
    assert!(
        l.contains(&format!("\n                    from: {target}\n")),
        "{l}"
    );
    let fl = ok(
        &cluster,
        &["flush", cluster.scope(), "switchover", "--force"],
    );
    assert_eq!(fl, "Success: scheduled switchover deleted\n");
    assert!(!ok(&cluster, &["list"]).contains("Switchover scheduled"));

    // restart --force on one replica: POST /restart.
    let replica = next.clone();
    let r = ok(&cluster, &["restart", cluster.scope(), &replica, "--force"]);
    assert!(
        r.ends_with(&format!("Success: restart on member {replica}\n")),
        "{r}"
    );
    wait_healthy(&cluster, &[0, 1, 2], HEALTHY_TIMEOUT)
        .await
        .expect("healthy after restart");

    // reload: POST /reload.
    let r = ok(&cluster, &["reload", cluster.scope(), &replica, "--force"]);
    assert!(
        r.contains(&format!("Reload request received for member {replica}"))
            || r.contains(&format!("No changes to apply on member {replica}")),
        "{r}"
    );

    // reinit --force --wait: POST /reinitialize, then GET /patroni until the copy is done.
    let r = ok(
        &cluster,
        &["reinit", cluster.scope(), &replica, "--force", "--wait"],
    );
    assert!(
        r.contains(&format!("Success: reinitialize for member {replica}\n")),
        "{r}"
    );
    assert!(
        r.ends_with(&format!("Reinitialize is completed on: {replica}\n")),
        "{r}"
    );
    wait_healthy(&cluster, &[0, 1, 2], HEALTHY_TIMEOUT)
        .await
        .expect("healthy after reinit");

    // Errors: unknown member, leader as reinit target.
    let e = patrolctl(&cluster, &["restart", cluster.scope(), "pgX", "--force"]);
    assert_eq!(e.status.code(), Some(1));
    assert_eq!(text(&e).1, "Error: pgX is not a member of cluster\n");
    let e = patrolctl(&cluster, &["reinit", cluster.scope(), &target, "--force"]);
    assert_eq!(text(&e).1, "Error: No replica among provided members\n");

    // Patroni's patronictl switches our cluster over.
    let before = cluster.leader().await.expect("leader").expect("a leader");
    let s = patronictl_ok(&cluster, &["switchover", "--force"]);
    assert!(s.contains("Successfully switched over to"), "{s}");
    let cl = &cluster;
    let before = &before;
    wait_until(
        "patronictl's switchover to move the leader",
        HEALTHY_TIMEOUT,
        || async move { Ok(cl.leader().await?.filter(|l| l != before).map(|_| ())) },
    )
    .await
    .expect("new leader");
    wait_healthy(&cluster, &[0, 1, 2], HEALTHY_TIMEOUT)
        .await
        .expect("healthy after patronictl switchover");
    let list = patronictl_ok(&cluster, &["list"]);
    assert!(list.contains("| Leader "), "{list}");
}

/// `YYYY-MM-DDTHH:MM` two hours from now in UTC, with `+00:00`.
fn chrono_like_now_plus_hours(h: u64) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        + h * 3600;
    let days = secs / 86400;
    let rem = secs % 86400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}+00:00",
        rem / 3600,
        (rem % 3600) / 60
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configure_scaffold_and_remove() {
    let cluster = Cluster::new(0).expect("etcd");
    let root = cluster.root().to_path_buf();
    let cfg = root.join("conf").join("patrolctl.yaml");
    let etcd = cluster.etcd().host_port();

    // configure: non-interactive with flags.
    let out = tokio::task::block_in_place(|| {
        Command::new(patrol_tests::bin("patrolctl"))
            .args(["configure", "-c"])
            .arg(&cfg)
            .args([
                "-d",
                &format!("etcd3://{etcd}"),
                "-n",
                "/service/",
                "-s",
                "scaf",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("configure")
    });
    assert!(out.status.success(), "{:?}", text(&out));
    let written = std::fs::read_to_string(&cfg).expect("config written");
    assert_eq!(
        written,
        format!("etcd3:\n  host: {etcd}\nnamespace: /service/\nscope: scaf\n")
    );
    let run = |args: &[&str], input: &str| -> Output { patrolctl_with(&cfg, args, input) };

    // scaffold: initialize, a permanent member and leader key, and the given config.
    let dyn_cfg = root.join("dcs.yaml");
    std::fs::write(&dyn_cfg, "ttl: 30\nloop_wait: 10\n").expect("write");
    let out = tokio::task::block_in_place(|| {
        run(
            &[
                "scaffold",
                "scaf",
                "--sysid",
                "7311111111111111111",
                "--config",
                dyn_cfg.to_str().expect("utf-8"),
            ],
            "",
        )
    });
    assert_eq!(
        text(&out).0,
        "Cluster scaf has been created successfully\n",
        "{:?}",
        text(&out)
    );
    let mut client = cluster.etcd().client().await.expect("etcd client");
    let get = |k: &str| format!("/service/scaf/{k}");
    let val = |r: etcd_client::GetResponse| {
        r.kvs()
            .first()
            .map(|kv| (String::from_utf8_lossy(kv.value()).into_owned(), kv.lease()))
    };
    assert_eq!(
        val(client.get(get("initialize"), None).await.expect("get")),
        Some(("7311111111111111111".into(), 0))
    );
    assert_eq!(
        val(client.get(get("leader"), None).await.expect("get")),
        Some(("scaf".into(), 0))
    );
    assert_eq!(
        val(client.get(get("members/scaf"), None).await.expect("get")),
        Some((
            r#"{"conn_url":"postgres://127.0.0.1:5432/postgres","api_url":"http://127.0.0.1:8008/patroni","state":"running","role":"primary"}"#.into(),
            0
        ))
    );
    assert_eq!(
        val(client.get(get("config"), None).await.expect("get")),
        Some((r#"{"ttl":30,"loop_wait":10}"#.into(), 0))
    );
    let list = tokio::task::block_in_place(|| run(&["list"], ""));
    assert_eq!(
        text(&list).0,
        "\
+ Cluster: scaf (7311111111111111111) --+----+-------------+-----+------------+-----+
| Member | Host      | Role   | State   | TL | Receive LSN | Lag | Replay LSN | Lag |
+--------+-----------+--------+---------+----+-------------+-----+------------+-----+
| scaf   | 127.0.0.1 | Leader | running |    |             |     |            |     |
+--------+-----------+--------+---------+----+-------------+-----+------------+-----+
"
    );
    let again = tokio::task::block_in_place(|| run(&["scaffold", "scaf"], ""));
    assert_eq!(
        text(&again).1,
        "Error: This cluster is already initialized\n"
    );

    // remove: patronictl's three confirmations; a wrong answer aborts.
    let wrong =
        tokio::task::block_in_place(|| run(&["remove", "scaf"], "scaf\nYes I am aware\nnope\n"));
    assert_eq!(
        text(&wrong).1,
        "Error: You did not specify the current leader of the cluster\n"
    );
    let out =
        tokio::task::block_in_place(|| run(&["remove", "scaf"], "scaf\nYes I am aware\nscaf\n"));
    let (so, se) = text(&out);
    assert!(out.status.success(), "{so}\n{se}");
    assert!(
        so.contains("Please confirm the cluster name to remove: "),
        "{so}"
    );
    assert!(
        so.contains("You are about to remove all information in DCS for scaf, please type: \"Yes I am aware\": "),
        "{so}"
    );
    let left = client
        .get(
            "/service/scaf/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("get");
    assert!(left.kvs().is_empty(), "keys left after remove");

    // completion scripts.
    let out = tokio::task::block_in_place(|| run(&["completion", "bash"], ""));
    assert!(text(&out).0.contains("patrolctl"), "{:?}", text(&out));
}
