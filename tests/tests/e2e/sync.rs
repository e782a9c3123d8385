//! Synchronous replication end to end (spec 5.7) on a real 3-node cluster (real etcd,
//! PostgreSQL 15): `synchronous_mode` turned on with `PATCH /config`, the leader's
//! `synchronous_standby_names` and the `sync` key agreeing on the standbys, `GET /sync`,
//! `/async` and `/quorum` answering from that key, the `nosync` tag, `synchronous_node_count`,
//! strict mode holding commits while no standby is left, non-strict mode falling back to
//! asynchronous, quorum mode's `ANY n (...)` and its failover to one of the voters, and the
//! roles `patrolctl list` (and Patroni's `patronictl list`) show.

use std::time::Duration;

use anyhow::Context;
use patrol_dcs::SyncState;
use patrol_tests::{assert_holds_for, wait_until, Cluster, Signal};
use serde_json::{json, Value};

use crate::support::{
    in_recovery, index_of, start_all, wait_healthy, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT, TTL,
};

/// How long a "never happens" or "still waiting" condition is watched.
const HOLD: Duration = Duration::from_secs(6);

/// `PATCH /config` with `body` on node `i`'s REST API; fails unless it answers 200.
async fn patch_config(c: &Cluster, i: usize, body: Value) -> anyhow::Result<()> {
    let r = reqwest::Client::new()
        .patch(format!("{}/config", c.api_url(i)))
        .json(&body)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .context("PATCH /config")?;
    let status = r.status();
    anyhow::ensure!(
        status.as_u16() == 200,
        "PATCH /config {body} answered {status}: {}",
        r.text().await?
    );
    Ok(())
}

/// The `sync` key, raw and parsed; `None` while it does not exist.
async fn sync_key(c: &Cluster) -> anyhow::Result<Option<(String, SyncState)>> {
    Ok(c.etcd_get("sync").await?.map(|raw| {
        let parsed = SyncState::parse(&raw);
        (raw, parsed)
    }))
}

/// `SHOW synchronous_standby_names` on node `i`.
async fn standby_names(c: &Cluster, i: usize) -> anyhow::Result<String> {
    let client = c.connect(i).await?;
    Ok(client
        .query_one("SHOW synchronous_standby_names", &[])
        .await
        .with_context(|| format!("SHOW synchronous_standby_names on {}", c.name(i)))?
        .get(0))
}

/// Waits until the key names `leader` with exactly `voters` (any order) and `quorum`, and
/// `synchronous_standby_names` on the leader is `names`; returns the raw key.
async fn wait_sync_state(
    c: &Cluster,
    leader: usize,
    voters: &[usize],
    quorum: i64,
    names: &str,
) -> String {
    let mut want: Vec<String> = voters.iter().map(|&i| c.name(i).to_string()).collect();
    want.sort();
    let what = format!(
        "sync key {{leader {}, voters {want:?}, quorum {quorum}}} and synchronous_standby_names \
         {names:?}",
        c.name(leader)
    );
    let want = &want;
    wait_until(&what, PROPAGATION_TIMEOUT, || async move {
        let Some((raw, key)) = sync_key(c).await? else {
            anyhow::bail!("no sync key");
        };
        let mut got = key.sync_standby.clone();
        got.sort();
        let on_leader = standby_names(c, leader).await?;
        if key.leader.as_deref() == Some(c.name(leader))
            && &got == want
            && key.quorum == quorum
            && on_leader == names
        {
            Ok(Some(raw))
        } else {
            anyhow::bail!("key {raw}, synchronous_standby_names {on_leader:?}")
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nleader log:\n{}", c.agent_log(leader)))
}

/// Waits until `GET path` on node `i` answers `code`.
async fn wait_api_code(c: &Cluster, i: usize, path: &str, code: u16) {
    let what = format!("GET {path} on {} to answer {code}", c.name(i));
    wait_until(&what, PROPAGATION_TIMEOUT, || async move {
        let (got, body) = c.api_get(i, path).await?;
        if got == code {
            Ok(Some(()))
        } else {
            anyhow::bail!("{got} {body}")
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// The agent and the postmaster of node `i` are SIGKILLed together (the host is gone).
fn kill_host(c: &mut Cluster, i: usize) {
    c.kill_node(i);
    if c.postmaster_pid(i).is_some() {
        c.signal_postgres(i, Signal::SIGKILL)
            .expect("SIGKILL postmaster");
    }
}

/// Node `i`'s YAML with `tags: {}` replaced by `tags`.
fn tag(c: &mut Cluster, i: usize, tags: &'static str) {
    c.set_config_override(i, move |yaml| {
        let before = yaml.clone();
        *yaml = yaml.replace("tags: {}", tags);
        assert_ne!(*yaml, before, "the harness config has `tags: {{}}`");
    });
}

/// Runs `program -c <patronictl.yml> list -f json` and returns each member's role.
fn list_roles(c: &Cluster, patroni: bool) -> anyhow::Result<Vec<(String, String)>> {
    let out = tokio::task::block_in_place(|| -> anyhow::Result<_> {
        if patroni {
            c.run_patronictl(&["list", "-f", "json"])
        } else {
            let config = c.patronictl_config()?;
            Ok(std::process::Command::new(patrol_tests::bin("patrolctl"))
                .arg("-c")
                .arg(&config)
                .args(["list", "-f", "json"])
                .env_remove("PATRONICTL_CONFIG_FILE")
                .env_remove("DCS_URL")
                .stdin(std::process::Stdio::null())
                .output()?)
        }
    })?;
    anyhow::ensure!(
        out.status.success(),
        "list: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("list -f json: {}", String::from_utf8_lossy(&out.stdout)))?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r["Member"].as_str().unwrap_or_default().to_string(),
                r["Role"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Waits until `patrolctl list` (and Patroni's `patronictl list` when `patroni`) shows `role`
/// for every node of `nodes`.
async fn wait_list_roles(c: &Cluster, nodes: &[usize], role: &str, patroni: bool) {
    for use_patroni in [false, patroni] {
        let tool = if use_patroni {
            "patronictl"
        } else {
            "patrolctl"
        };
        let what = format!("{tool} list to show {role} for {nodes:?}");
        wait_until(&what, PROPAGATION_TIMEOUT, || async move {
            let roles = list_roles(c, use_patroni)?;
            let ok = nodes.iter().all(|&i| {
                roles
                    .iter()
                    .any(|(m, r)| m == c.name(i) && r.as_str() == role)
            });
            if ok {
                Ok(Some(()))
            } else {
                anyhow::bail!("roles {roles:?}")
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// Patroni's `patronictl`, installed once per machine (it downloads Patroni with pip).
async fn ensure_patronictl() {
    tokio::task::spawn_blocking(patrol_tests::patronictl)
        .await
        .expect("join")
        .expect("patronictl installed");
}

/// An `INSERT` into `sync_t` on node `i`, in its own task; the table must exist.
async fn spawn_insert(
    c: &Cluster,
    i: usize,
    v: &str,
) -> tokio::task::JoinHandle<anyhow::Result<u64>> {
    let client = c.connect(i).await.expect("connect for the INSERT");
    let v = v.to_string();
    tokio::spawn(async move {
        Ok(client
            .execute("INSERT INTO sync_t(v) VALUES ($1)", &[&v])
            .await?)
    })
}

async fn create_table(c: &Cluster, i: usize) {
    c.connect(i)
        .await
        .expect("connect")
        .batch_execute("CREATE TABLE sync_t (v text PRIMARY KEY)")
        .await
        .expect("CREATE TABLE");
}

/// Mode `on`: one replica becomes the synchronous standby (key, PostgreSQL, REST and list
/// agree); when its host goes, the other replica takes its place; with
/// `synchronous_node_count: 2` both are synchronous (`2 (a,b)`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mode_on_names_one_standby_and_moves_it_when_it_goes() {
    ensure_patronictl().await;
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    patch_config(&c, leader, json!({"synchronous_mode": true}))
        .await
        .expect("enable synchronous_mode");

    let cl = &c;
    let (sync, raw) = wait_until(
        "a sync key naming one replica, as synchronous_standby_names does",
        PROPAGATION_TIMEOUT,
        || async move {
            let Some((raw, key)) = sync_key(cl).await? else {
                anyhow::bail!("no sync key");
            };
            let names = standby_names(cl, leader).await?;
            match key.sync_standby.as_slice() {
                [one] if key.leader.as_deref() == Some(cl.name(leader)) && *one == names => {
                    let i = index_of(cl, one).context("unknown member")?;
                    Ok(Some((i, raw)))
                }
                _ => anyhow::bail!("key {raw}, synchronous_standby_names {names:?}"),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nleader log:\n{}", c.agent_log(leader)));
    let other = (0..3).find(|&i| i != leader && i != sync).expect("other");
    assert_eq!(
        raw,
        format!(
            r#"{{"leader":"{}","quorum":0,"sync_standby":"{}"}}"#,
            c.name(leader),
            c.name(sync)
        )
    );
    wait_api_code(&c, sync, "/sync", 200).await;
    wait_api_code(&c, sync, "/async", 503).await;
    wait_api_code(&c, other, "/async", 200).await;
    wait_api_code(&c, other, "/sync", 503).await;
    wait_api_code(&c, leader, "/sync", 503).await;
    wait_list_roles(&c, &[sync], "Sync Standby", true).await;
    wait_list_roles(&c, &[other], "Replica", true).await;

    // The synchronous standby's host goes: the other replica takes its place.
    kill_host(&mut c, sync);
    let name = c.name(other).to_string();
    wait_sync_state(&c, leader, &[other], 0, &name).await;
    wait_api_code(&c, other, "/sync", 200).await;
    // A commit is acknowledged (the new standby confirms it).
    create_table(&c, leader).await;

    // Back: it is a replica again, asynchronous.
    c.start_node(sync).expect("restart");
    wait_healthy(&c, &[0, 1, 2], HEALTHY_TIMEOUT)
        .await
        .expect("healthy again");
    wait_api_code(&c, sync, "/async", 200).await;

    // Two synchronous standbys: `2 (a,b)`.
    patch_config(&c, leader, json!({"synchronous_node_count": 2}))
        .await
        .expect("synchronous_node_count 2");
    let mut both = [c.name(sync).to_string(), c.name(other).to_string()];
    both.sort();
    let names = format!("2 ({},{})", both[0], both[1]);
    let raw = wait_sync_state(&c, leader, &[sync, other], 0, &names).await;
    assert_eq!(
        raw,
        format!(
            r#"{{"leader":"{}","quorum":0,"sync_standby":"{},{}"}}"#,
            c.name(leader),
            both[0],
            both[1]
        )
    );
    wait_list_roles(&c, &[sync, other], "Sync Standby", true).await;
    wait_api_code(&c, sync, "/sync", 200).await;
    wait_api_code(&c, other, "/sync", 200).await;
}

/// Neither the sync key nor node `leader`'s `synchronous_standby_names` mention `name`.
async fn not_synchronous(c: &Cluster, leader: usize, name: &str) -> anyhow::Result<()> {
    let key = sync_key(c).await?.map(|(raw, _)| raw).unwrap_or_default();
    let names = standby_names(c, leader).await?;
    anyhow::ensure!(
        !key.contains(name) && !names.contains(name),
        "key {key}, synchronous_standby_names {names:?}"
    );
    Ok(())
}

/// A member tagged `nosync: true` is never a synchronous standby: not when it is the only
/// other replica, not with `synchronous_node_count: 2`, not when the only candidate goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nosync_member_is_never_chosen() {
    let mut c = Cluster::new(3).expect("cluster");
    tag(&mut c, 2, "tags: {nosync: true}");
    // pg0 bootstraps alone, so that the tagged member is a replica.
    c.start_node(0).expect("start pg0");
    wait_healthy(&c, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("pg0 leads");
    c.start_node(1).expect("start pg1");
    c.start_node(2).expect("start pg2");
    wait_healthy(&c, &[0, 1, 2], HEALTHY_TIMEOUT)
        .await
        .expect("healthy");
    patch_config(&c, 0, json!({"synchronous_mode": true}))
        .await
        .expect("enable synchronous_mode");
    wait_sync_state(&c, 0, &[1], 0, "pg1").await;

    patch_config(&c, 0, json!({"synchronous_node_count": 2}))
        .await
        .expect("synchronous_node_count 2");
    assert_holds_for("pg2 is not synchronous (two wanted)", HOLD, || {
        not_synchronous(&c, 0, "pg2")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    wait_sync_state(&c, 0, &[1], 0, "pg1").await;
    wait_api_code(&c, 2, "/async", 200).await;

    // The only candidate goes: nobody is synchronous (not strict), still not pg2.
    kill_host(&mut c, 1);
    wait_sync_state(&c, 0, &[], 0, "").await;
    assert_holds_for("pg2 is not synchronous (pg1 gone)", HOLD, || {
        not_synchronous(&c, 0, "pg2")
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    wait_api_code(&c, 2, "/async", 200).await;
}

/// `synchronous_mode_strict`: with both replicas gone a commit on the leader waits (`*`), and
/// completes once one replica is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_holds_commits_until_a_standby_is_back() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    create_table(&c, leader).await;
    patch_config(
        &c,
        leader,
        json!({"synchronous_mode": true, "synchronous_mode_strict": true}),
    )
    .await
    .expect("enable strict synchronous_mode");
    let replicas: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let cl = &c;
    wait_until(
        "a synchronous standby",
        PROPAGATION_TIMEOUT,
        || async move {
            let key = sync_key(cl).await?;
            Ok(key
                .filter(|(_, k)| k.sync_standby.len() == 1)
                .map(|(raw, _)| raw))
        },
    )
    .await
    .expect("sync key");

    for &r in &replicas {
        kill_host(&mut c, r);
    }
    let cl = &c;
    wait_until(
        "synchronous_standby_names '*' on the leader",
        PROPAGATION_TIMEOUT,
        || async move { Ok((standby_names(cl, leader).await? == "*").then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nleader log:\n{}", c.agent_log(leader)));

    let insert = spawn_insert(&c, leader, "while alone").await;
    let held = assert_holds_for("the commit waits for a standby", HOLD, || {
        let done = insert.is_finished();
        async move {
            anyhow::ensure!(!done, "the INSERT completed with no standby");
            Ok(())
        }
    })
    .await;
    if let Err(e) = held {
        panic!("{e:#}: {:?}", insert.await);
    }
    // Still the leader, still waiting (strict mode does not give up).
    assert_eq!(
        c.leader().await.expect("leader").as_deref(),
        Some(c.name(leader))
    );

    c.start_node(replicas[0]).expect("restart one replica");
    let n = tokio::time::timeout(HEALTHY_TIMEOUT, insert)
        .await
        .expect("the commit completes once a standby is back")
        .expect("join")
        .expect("INSERT");
    assert_eq!(n, 1);
    let client = c.connect(replicas[0]).await.expect("connect replica");
    let rows = client
        .query("SELECT v FROM sync_t", &[])
        .await
        .expect("read on the standby");
    assert_eq!(rows.len(), 1, "the standby has the row it confirmed");
    wait_sync_state(&c, leader, &[replicas[0]], 0, c.name(replicas[0])).await;
}

/// Mode `on`, not strict: with both replicas gone commits are acknowledged without a standby,
/// and the leader says it assigned synchronous status to nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_strict_mode_falls_back_to_asynchronous() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    create_table(&c, leader).await;
    patch_config(&c, leader, json!({"synchronous_mode": true}))
        .await
        .expect("enable synchronous_mode");
    let replicas: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (cl, rs) = (&c, &replicas);
    wait_until(
        "a synchronous standby",
        PROPAGATION_TIMEOUT,
        || async move {
            let names = standby_names(cl, leader).await?;
            Ok(rs.iter().any(|&r| names == cl.name(r)).then_some(()))
        },
    )
    .await
    .expect("synchronous_standby_names names a replica");

    for &r in &replicas {
        kill_host(&mut c, r);
    }
    // Started at once: it may wait until the leader notices, but not longer.
    let insert = spawn_insert(&c, leader, "while alone").await;
    let n = tokio::time::timeout(PROPAGATION_TIMEOUT, insert)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the commit did not complete without standbys\nleader log:\n{}",
                c.agent_log(leader)
            )
        })
        .expect("join")
        .expect("INSERT");
    assert_eq!(n, 1);
    wait_sync_state(&c, leader, &[], 0, "").await;
    let log = c.agent_log(leader);
    assert!(
        log.contains("Assigning synchronous standby status to []"),
        "the leader must say it runs without a synchronous standby:\n{log}"
    );
    // More commits go through at once.
    let n = tokio::time::timeout(
        Duration::from_secs(30),
        spawn_insert(&c, leader, "again").await,
    )
    .await
    .expect("second commit")
    .expect("join")
    .expect("INSERT");
    assert_eq!(n, 1);
}

/// Quorum mode: `ANY 1 (a,b)` with both replicas as voters and `quorum: 1` in the key; when the
/// leader's host goes, a voter takes over and the key names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_mode_any_1_and_failover_to_a_voter() {
    ensure_patronictl().await;
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    patch_config(&c, leader, json!({"synchronous_mode": "quorum"}))
        .await
        .expect("enable quorum mode");
    let voters: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let names = format!("ANY 1 ({},{})", c.name(voters[0]), c.name(voters[1]));
    let raw = wait_sync_state(&c, leader, &voters, 1, &names).await;
    assert_eq!(
        raw,
        format!(
            r#"{{"leader":"{}","quorum":1,"sync_standby":"{},{}"}}"#,
            c.name(leader),
            c.name(voters[0]),
            c.name(voters[1])
        )
    );
    for &v in &voters {
        wait_api_code(&c, v, "/quorum", 200).await;
        wait_api_code(&c, v, "/sync", 503).await;
        wait_api_code(&c, v, "/async", 503).await;
    }
    wait_list_roles(&c, &voters, "Quorum Standby", true).await;
    create_table(&c, leader).await;

    // The leader's host goes: a voter takes over once the lease expires.
    kill_host(&mut c, leader);
    let cl = &c;
    let new = wait_until(
        "a voter to lead, writable",
        TTL + PROPAGATION_TIMEOUT,
        || async move {
            let Some(name) = cl.leader().await? else {
                anyhow::bail!("no leader key");
            };
            let i = index_of(cl, &name).context("unknown leader")?;
            anyhow::ensure!(i != leader, "{name} still holds the key");
            anyhow::ensure!(!in_recovery(cl, i).await?, "{name} is in recovery");
            Ok(Some(i))
        },
    )
    .await
    .expect("failover");
    assert!(voters.contains(&new), "{} was not a voter", c.name(new));
    let new_name = c.name(new).to_string();
    let new_name = &new_name;
    wait_until(
        "the sync key to name the new leader",
        PROPAGATION_TIMEOUT,
        || async move {
            let key = sync_key(cl).await?;
            Ok(key
                .filter(|(_, k)| k.leader.as_deref() == Some(new_name.as_str()))
                .map(|(raw, _)| raw))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nnew leader log:\n{}", c.agent_log(new)));
    // The other voter confirms the new leader's commits.
    let n = tokio::time::timeout(PROPAGATION_TIMEOUT, spawn_insert(&c, new, "after").await)
        .await
        .unwrap_or_else(|_| panic!("commit on {new_name}\nlog:\n{}", c.agent_log(new)))
        .expect("join")
        .expect("INSERT");
    assert_eq!(n, 1);
}
