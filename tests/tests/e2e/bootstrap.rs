//! End to end: a new cluster bootstraps through the agents (real etcd, real PostgreSQL 15),
//! writes Patroni 4's keys and JSON, replicates, admits a new member and answers Patroni's
//! health checks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::Context;
use patrol_dcs::{slot_name_from_member_name, to_compact, MemberData, Role};
use patrol_tests::{wait_until, Cluster};
use serde_json::Value;

use crate::support::{
    in_recovery, index_of, members, start_all, system_identifier, wait_healthy, wait_table_values,
    HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT,
};

/// Whether `s` is exactly how Python's `json.dumps(separators=(',', ':'))` would write its
/// own content (no whitespace between tokens, key order kept).
fn is_compact_json(s: &str) -> bool {
    serde_json::from_str::<Value>(s).is_ok_and(|v| to_compact(&v) == s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_one_leader_two_streaming_replicas() {
    let mut cluster = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut cluster).await;
    let leader_name = cluster.name(leader).to_owned();
    let replicas: Vec<usize> = (0..3).filter(|&i| i != leader).collect();

    // Exactly one leader key holder, two streaming replicas in the DCS.
    let published = members(&cluster).await.expect("members");
    assert_eq!(
        published.keys().cloned().collect::<Vec<_>>(),
        vec!["pg0", "pg1", "pg2"],
        "member keys"
    );
    assert_eq!(published[&leader_name].role, Role::Primary);
    for &r in &replicas {
        let m = &published[cluster.name(r)];
        assert_eq!(m.role, Role::Replica, "{}: {m:?}", cluster.name(r));
        assert_eq!(m.state, "running", "{}: {m:?}", cluster.name(r));
        assert_eq!(m.replication_state.as_deref(), Some("streaming"));
    }

    // PostgreSQL agrees: only the leader key holder is out of recovery.
    let mut primaries = Vec::new();
    for i in 0..3 {
        if !in_recovery(&cluster, i).await.expect("pg_is_in_recovery") {
            primaries.push(cluster.name(i).to_owned());
        }
    }
    assert_eq!(
        primaries,
        vec![leader_name.clone()],
        "nodes out of recovery"
    );

    // The leader streams to both replicas, by member name.
    let want_apps: BTreeSet<(String, String)> = replicas
        .iter()
        .map(|&r| (cluster.name(r).to_owned(), "streaming".to_owned()))
        .collect();
    let cl = &cluster;
    wait_until(
        "pg_stat_replication on the leader to list both replicas streaming",
        PROPAGATION_TIMEOUT,
        || {
            let want = want_apps.clone();
            async move {
                let client = cl.connect(leader).await?;
                let rows = client
                    .query(
                        "SELECT application_name, state FROM pg_stat_replication",
                        &[],
                    )
                    .await?;
                let got: BTreeSet<(String, String)> = rows
                    .iter()
                    .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
                    .collect();
                if got == want {
                    Ok(Some(()))
                } else {
                    anyhow::bail!("pg_stat_replication: {got:?}, want {want:?}")
                }
            }
        },
    )
    .await
    .expect("replication connections");

    // Each replica uses its own physical slot on the leader, named after the member.
    let want_slots: BTreeSet<(String, String, bool)> = replicas
        .iter()
        .map(|&r| {
            (
                patrol_dcs::slot_name_from_member_name(cluster.name(r)),
                "physical".to_owned(),
                true,
            )
        })
        .collect();
    wait_until(
        "the leader's physical slots for both replicas to be active",
        PROPAGATION_TIMEOUT,
        || {
            let want = want_slots.clone();
            async move {
                let client = cl.connect(leader).await?;
                let rows = client
                    .query(
                        "SELECT slot_name::text, slot_type, active FROM pg_replication_slots",
                        &[],
                    )
                    .await?;
                let got: BTreeSet<(String, String, bool)> = rows
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2)))
                    .collect();
                if got == want {
                    Ok(Some(()))
                } else {
                    anyhow::bail!("pg_replication_slots: {got:?}, want {want:?}")
                }
            }
        },
    )
    .await
    .expect("replication slots");

    // Each replica keeps, as Patroni 4 does with `member_slots_ttl` > 0 (row H-1.2m), an
    // inactive physical slot for every other member, so that it has them if it is promoted;
    // none of its own name.
    for &r in &replicas {
        let cl = &cluster;
        let want: BTreeSet<String> = (0..cluster.len())
            .filter(|&i| i != r)
            .map(|i| slot_name_from_member_name(cluster.name(i)))
            .collect();
        let want = &want;
        wait_until(
            &format!("the member slots on replica {}", cluster.name(r)),
            PROPAGATION_TIMEOUT,
            || async move {
                let client = cl.connect(r).await?;
                let rows = client
                    .query(
                        "SELECT slot_name::text, slot_type, active FROM pg_replication_slots",
                        &[],
                    )
                    .await?;
                let got: BTreeSet<String> = rows
                    .iter()
                    .filter(|row| row.get::<_, String>(1) == "physical" && !row.get::<_, bool>(2))
                    .map(|row| row.get(0))
                    .collect();
                anyhow::ensure!(
                    got == *want && rows.len() == want.len(),
                    "slots {got:?} ({} in all), want {want:?} inactive",
                    rows.len()
                );
                Ok(Some(()))
            },
        )
        .await
        .expect("member slots on replicas");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dcs_keys_have_patroni_format() {
    let mut cluster = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut cluster).await;
    let leader_name = cluster.name(leader).to_owned();
    let prefix = cluster.prefix();

    // The status key is written by the leader's loop shortly after it takes the lock; give it
    // the chance to appear so its format gets checked (its absence alone is not an error).
    let _ = wait_until("the status key", Duration::from_secs(15), || async {
        Ok(cluster.etcd_get("status").await?.map(|_| ()))
    })
    .await;

    let mut client = cluster.etcd().client().await.expect("etcd client");
    let resp = client
        .get(
            prefix.as_str(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("get prefix");
    // key (relative) -> (value, lease)
    let kvs: BTreeMap<String, (String, i64)> = resp
        .kvs()
        .iter()
        .map(|kv| {
            let key = kv.key_str().expect("utf8 key");
            let rel = key
                .strip_prefix(prefix.as_str())
                .expect("key under the prefix")
                .to_owned();
            (
                rel,
                (kv.value_str().expect("utf8 value").to_owned(), kv.lease()),
            )
        })
        .collect();

    // No key outside Patroni's set.
    let known = [
        "leader",
        "initialize",
        "config",
        "status",
        "history",
        "failover",
        "sync",
        "failsafe",
    ];
    for key in kvs.keys() {
        let ok = known.contains(&key.as_str())
            || key
                .strip_prefix("members/")
                .is_some_and(|n| index_of(&cluster, n).is_some());
        assert!(ok, "unexpected key {prefix}{key} in {kvs:#?}");
    }

    // initialize: the decimal system identifier of the leader's PostgreSQL, without a lease.
    let (init, init_lease) = kvs.get("initialize").expect("initialize key");
    let sysid = system_identifier(&cluster, leader).await.expect("sysid");
    assert_eq!(init, &sysid, "initialize vs pg_control_system()");
    assert!(init.bytes().all(|b| b.is_ascii_digit()), "{init:?}");
    assert_eq!(*init_lease, 0, "initialize must not be on a lease");

    // leader: the bare member name, on a lease.
    let (leader_value, leader_lease) = kvs.get("leader").expect("leader key");
    assert_eq!(leader_value, &leader_name);
    assert_ne!(*leader_lease, 0, "leader key must be on a lease");

    // config: compact JSON, exactly bootstrap.dcs from the YAML, without a lease.
    let (config, config_lease) = kvs.get("config").expect("config key");
    assert_eq!(*config_lease, 0, "config must not be on a lease");
    assert!(
        is_compact_json(config),
        "config is not compact JSON: {config}"
    );
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&cluster.config_yaml(leader)).expect("node YAML");
    let want_dcs: Value = serde_json::to_value(&yaml["bootstrap"]["dcs"]).expect("dcs as JSON");
    let got_dcs: Value = serde_json::from_str(config).expect("config JSON");
    assert_eq!(got_dcs, want_dcs, "config vs bootstrap.dcs");
    assert_eq!(
        config,
        &to_compact(&want_dcs),
        "config must be bootstrap.dcs as Patroni's json.dumps writes it (same key order)"
    );

    // members: compact JSON that round-trips byte for byte, with the right addresses.
    for i in 0..3 {
        let name = cluster.name(i);
        let (raw, lease) = kvs
            .get(&format!("members/{name}"))
            .unwrap_or_else(|| panic!("members/{name} missing"));
        assert_ne!(*lease, 0, "members/{name} must be on a lease");
        assert!(is_compact_json(raw), "members/{name} not compact: {raw}");
        let m = MemberData::parse(raw);
        assert_eq!(&m.to_json(), raw, "members/{name} does not round-trip");
        assert_eq!(
            m.conn_url,
            format!("postgres://127.0.0.1:{}/postgres", cluster.pg_port(i)),
            "members/{name} conn_url"
        );
        assert_eq!(
            m.api_url,
            format!("http://127.0.0.1:{}/patroni", cluster.api_port(i)),
            "members/{name} api_url"
        );
        assert_eq!(m.version, "4.1.4", "members/{name} version");
        assert_eq!(m.state, "running", "members/{name} state");
        let want_role = if i == leader {
            Role::Primary
        } else {
            Role::Replica
        };
        assert_eq!(m.role, want_role, "members/{name} role");
        assert_eq!(m.timeline, Some(1), "members/{name} timeline");
        let v: Value = serde_json::from_str(raw).expect("member JSON");
        assert!(
            v["xlog_location"].is_u64(),
            "members/{name} xlog_location must be an integer: {raw}"
        );
        assert!(v["timeline"].is_u64(), "members/{name} timeline: {raw}");
        if i != leader {
            assert_eq!(
                m.replication_state.as_deref(),
                Some("streaming"),
                "members/{name}: {raw}"
            );
        }
    }

    // status, if present: an object with an integer optime.
    if let Some((status, lease)) = kvs.get("status") {
        assert_eq!(*lease, 0, "status must not be on a lease");
        assert!(is_compact_json(status), "status not compact: {status}");
        let v: Value = serde_json::from_str(status).expect("status JSON");
        assert!(
            v["optime"].is_u64(),
            "status optime must be an integer: {status}"
        );
        let parsed = patrol_dcs::Status::parse(status);
        assert!(parsed.optime.is_some_and(|o| o > 0), "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_written_on_leader_reach_both_replicas() {
    let mut cluster = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut cluster).await;

    let client = cluster.connect(leader).await.expect("connect leader");
    client
        .batch_execute(
            "CREATE TABLE t (v text PRIMARY KEY);
             INSERT INTO t VALUES ('a'), ('b'), ('c');",
        )
        .await
        .expect("create and insert on the leader");

    for i in (0..3).filter(|&i| i != leader) {
        wait_table_values(&cluster, i, &["a", "b", "c"], PROPAGATION_TIMEOUT)
            .await
            .expect("rows replicated");
    }

    // Replicas are read-only.
    let replica = (0..3).find(|&i| i != leader).expect("a replica");
    let rc = cluster.connect(replica).await.expect("connect replica");
    let err = rc
        .execute("INSERT INTO t VALUES ('x')", &[])
        .await
        .expect_err("a write on a replica must fail");
    assert!(
        err.to_string().contains("read-only") || format!("{err:?}").contains("read-only"),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_empty_member_joins_running_cluster() {
    let mut cluster = Cluster::new(3).expect("cluster");
    cluster.start_node(0).expect("start pg0");
    cluster.start_node(1).expect("start pg1");
    let leader = wait_healthy(&cluster, &[0, 1], HEALTHY_TIMEOUT)
        .await
        .expect("two-node cluster healthy");
    assert!(
        !members(&cluster)
            .await
            .expect("members")
            .contains_key("pg2"),
        "pg2 was never started"
    );
    assert!(!cluster.data_dir(2).join("PG_VERSION").exists());

    let client = cluster.connect(leader).await.expect("connect leader");
    client
        .batch_execute("CREATE TABLE t (v text PRIMARY KEY); INSERT INTO t VALUES ('before');")
        .await
        .expect("insert before");

    cluster.start_node(2).expect("start pg2");
    let leader_after = wait_healthy(&cluster, &[0, 1, 2], HEALTHY_TIMEOUT)
        .await
        .expect("pg2 joins and streams");
    assert_eq!(leader_after, leader, "the leader must not change");
    assert!(
        cluster.data_dir(2).join("PG_VERSION").exists(),
        "pg2 was cloned"
    );
    assert!(
        in_recovery(&cluster, 2).await.expect("recovery"),
        "pg2 is a replica"
    );
    assert_eq!(
        system_identifier(&cluster, 2).await.expect("sysid pg2"),
        system_identifier(&cluster, leader)
            .await
            .expect("sysid leader"),
        "pg2 is a clone of the leader"
    );

    let client = cluster.connect(leader).await.expect("reconnect leader");
    client
        .execute("INSERT INTO t VALUES ('after')", &[])
        .await
        .expect("insert after");
    wait_table_values(&cluster, 2, &["after", "before"], PROPAGATION_TIMEOUT)
        .await
        .expect("both rows on pg2");
}

/// `method url`: status code and body, 5 s timeout.
async fn request(method: reqwest::Method, url: &str) -> anyhow::Result<(u16, String)> {
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .request(method.clone(), url)
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let code = resp.status().as_u16();
    Ok((code, resp.text().await?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_health_codes() {
    let mut cluster = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut cluster).await;
    // Health answers come from each agent's own view, which can lag the DCS by a loop; wait
    // until every node's /patroni reports what the DCS says before checking codes.
    let cl = &cluster;
    wait_until(
        "every node's /patroni to report its DCS role, running",
        PROPAGATION_TIMEOUT,
        || async move {
            for i in 0..3 {
                let (code, body) = cl.api_get(i, "/patroni").await?;
                let v: Value = serde_json::from_str(&body)?;
                let want = if i == leader { "primary" } else { "replica" };
                if code != 200 || v["role"] != want || v["state"] != "running" {
                    return Ok(None);
                }
                if i != leader && v["replication_state"] != "streaming" {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
    .expect("REST views settle");

    let sysid = system_identifier(&cluster, leader).await.expect("sysid");
    for i in 0..3 {
        let name = cluster.name(i);
        let is_leader = i == leader;
        let get = |path: &'static str| {
            let cl = &cluster;
            async move { cl.api_get(i, path).await.expect(path) }
        };
        let lead_code = if is_leader { 200 } else { 503 };
        let repl_code = if is_leader { 503 } else { 200 };
        for path in ["/primary", "/leader", "/master", "/read-write", "/"] {
            let (code, body) = get(path).await;
            assert_eq!(code, lead_code, "GET {path} on {name}: {body}");
            let v: Value = serde_json::from_str(&body)
                .unwrap_or_else(|e| panic!("GET {path} on {name}: not JSON ({e}): {body}"));
            assert_eq!(v["patroni"]["name"], name, "GET {path} on {name}");
        }
        for path in ["/replica", "/replica?lag=16MB"] {
            let (code, body) = get(path).await;
            assert_eq!(code, repl_code, "GET {path} on {name}: {body}");
        }
        for path in ["/read-only", "/health", "/liveness", "/readiness"] {
            let (code, body) = get(path).await;
            assert_eq!(code, 200, "GET {path} on {name}: {body}");
        }

        // An unknown path is a health check that nothing satisfies: 503 with the status JSON.
        let (code, body) = get("/foo").await;
        assert_eq!(code, 503, "GET /foo on {name}: {body}");
        let v: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("GET /foo on {name}: not JSON ({e}): {body}"));
        assert_eq!(v["patroni"]["name"], name);

        // GET /patroni: Patroni's status document.
        let (code, body) = get("/patroni").await;
        assert_eq!(code, 200, "GET /patroni on {name}: {body}");
        let v: Value = serde_json::from_str(&body).expect("/patroni JSON");
        let want_role = if is_leader { "primary" } else { "replica" };
        assert_eq!(v["role"], want_role, "/patroni on {name}: {body}");
        assert_eq!(v["state"], "running", "/patroni on {name}: {body}");
        assert_eq!(v["timeline"], 1, "/patroni on {name}: {body}");
        assert_eq!(v["patroni"]["name"], name, "/patroni on {name}: {body}");
        assert_eq!(
            v["patroni"]["scope"],
            cluster.scope(),
            "/patroni on {name}: {body}"
        );
        assert_eq!(
            v["patroni"]["version"], "4.1.4",
            "/patroni on {name}: {body}"
        );
        assert_eq!(
            v["database_system_identifier"],
            sysid.as_str(),
            "/patroni on {name}: {body}"
        );
        if is_leader {
            assert!(v["xlog"]["location"].is_u64(), "/patroni on {name}: {body}");
        } else {
            assert_eq!(v["replication_state"], "streaming", "/patroni on {name}");
            assert!(
                v["xlog"]["replayed_location"].is_u64(),
                "/patroni on {name}: {body}"
            );
        }

        // HEAD: the code without a body.
        let base = cluster.api_url(i);
        for (path, want) in [("/primary", lead_code), ("/replica", repl_code)] {
            let (code, body) = request(reqwest::Method::HEAD, &format!("{base}{path}"))
                .await
                .expect("HEAD");
            assert_eq!(code, want, "HEAD {path} on {name}");
            assert!(body.is_empty(), "HEAD {path} on {name} has a body: {body}");
        }
        // OPTIONS / (HAProxy's `option httpchk`): the leader check.
        let (code, _) = request(reqwest::Method::OPTIONS, &format!("{base}/"))
            .await
            .expect("OPTIONS");
        assert_eq!(code, lead_code, "OPTIONS / on {name}");
    }

    // The leader's /patroni lists its walsenders as Patroni does (`row_to_json` over
    // pg_stat_replication). The agent serves its last loop's view, so wait until that shows
    // both replicas streaming (right after the clones it may still show pg_basebackup's
    // connections).
    let mut want_apps: Vec<String> = (0..3)
        .filter(|&i| i != leader)
        .map(|i| cluster.name(i).to_owned())
        .collect();
    want_apps.sort();
    let want_apps = &want_apps;
    let rows: Vec<Value> = wait_until(
        "the leader's /patroni to list both replicas streaming",
        PROPAGATION_TIMEOUT,
        || async move {
            let (_, body) = cl.api_get(leader, "/patroni").await?;
            let v: Value = serde_json::from_str(&body)?;
            let rows = v["replication"].as_array().cloned().unwrap_or_default();
            let mut apps: Vec<String> = rows
                .iter()
                .filter(|r| r["state"] == "streaming")
                .map(|r| {
                    r["application_name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect();
            apps.sort();
            if rows.len() == 2 && &apps == want_apps {
                Ok(Some(rows))
            } else {
                anyhow::bail!("leader /patroni: {body}")
            }
        },
    )
    .await
    .expect("leader /patroni replication list");
    let dump = Value::Array(rows.clone()).to_string();
    for r in &rows {
        assert_eq!(r["usename"], "replicator", "{dump}");
        assert_eq!(r["sync_state"], "async", "{dump}");
        assert_eq!(r["sync_priority"], 0, "{dump}");
        // inet's output form, as row_to_json gives it: no "/32" (that is the ::text cast).
        assert_eq!(
            r["client_addr"], "127.0.0.1",
            "client_addr as Patroni shows it: {dump}"
        );
    }
}
