//! Where the router sends sessions: writes to the confirmed leader, reads balanced over the
//! streaming replicas within the lag limit (with hysteresis) or over the leader's synchronous
//! standbys only (`read.sync_only`), members named by host name, busy polling, and the admin
//! page that shows it all.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use patrol_tests::{assert_holds_for, metric, wait_until, Cluster, Router};
use serde_json::Value;

use super::{
    events_since, node_of_port, others, read_backends, server_of, ssl_request_reaches_the_backend,
    wait_routing,
};
use crate::support::{start_all, PROPAGATION_TIMEOUT};

/// The texts of all of stats.json's events, newest first.
fn all_events(stats: &Value) -> Vec<String> {
    events_since(stats, SystemTime::UNIX_EPOCH)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_port_goes_to_the_leader_read_port_to_replicas() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let r = Router::start(&c, "").expect("router");
    let stats = wait_routing(&r, &c, leader).await;
    assert_eq!(stats["leader"], c.name(leader), "{stats:#}");
    assert_eq!(stats["cluster"], c.scope(), "{stats:#}");
    assert_eq!(stats["dcs"]["healthy"], true, "{stats:#}");

    let w = r.connect_write().await.expect("write session");
    let (port, in_recovery) = server_of(&w).await.expect("write session query");
    assert_eq!(
        port,
        i32::from(c.pg_port(leader)),
        "the write port must reach the leader {}",
        c.name(leader)
    );
    assert!(!in_recovery, "the write port must reach a primary");

    // Ten sessions held open at once: least-connections spreads them over both replicas.
    let mut sessions = Vec::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for k in 0..10 {
        let s = r.connect_read().await.expect("read session");
        let (port, in_recovery) = server_of(&s).await.expect("read session query");
        let node = node_of_port(&c, port).expect("known port");
        assert_ne!(node, leader, "read session {k} landed on the leader");
        assert!(
            in_recovery,
            "read session {k} on {} is not in recovery",
            c.name(node)
        );
        *per_node.entry(c.name(node).to_owned()).or_default() += 1;
        sessions.push(s);
    }
    eprintln!("read sessions per replica: {per_node:?}");
    assert_eq!(
        per_node.len(),
        2,
        "both replicas get sessions: {per_node:?}"
    );
    assert!(
        per_node.values().all(|&n| (4..=6).contains(&n)),
        "least-connections balance: {per_node:?}"
    );

    ssl_request_reaches_the_backend(r.write_port()).await;

    // The stats count them too.
    let stats = wait_until(
        "stats.json to count 11 sessions",
        Duration::from_secs(5),
        || async {
            let s = r.stats().await?;
            Ok((s["sessions"] == 11).then_some(s))
        },
    )
    .await
    .expect("11 sessions");
    for m in stats["members"].as_array().expect("members") {
        let name = m["name"].as_str().expect("name");
        let is_leader = name == c.name(leader);
        assert_eq!(m["write_pool"], is_leader, "{m}");
        assert_eq!(m["read_pool"], !is_leader, "{m}");
        if !is_leader {
            assert_eq!(m["sessions"]["read"], per_node[name], "{m}");
        }
    }
}

/// Members that advertise a host name (`postgresql.connect_address: localhost:<port>`, as
/// DNS-based deployments do) are routed: the router resolves the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_host_names_are_routed() {
    let mut c = Cluster::new(3).expect("cluster");
    for i in 0..c.len() {
        c.set_config_override(i, |y| {
            *y = y.replace(
                "  connect_address: 127.0.0.1:",
                "  connect_address: localhost:",
            )
        });
    }
    let leader = start_all(&mut c).await;
    let member = c
        .etcd_get(&format!("members/{}", c.name(leader)))
        .await
        .expect("etcd")
        .expect("member key");
    assert!(member.contains("postgres://localhost:"), "{member}");
    let r = Router::start(&c, "").expect("router");
    wait_routing(&r, &c, leader).await;
    let w = r.connect_write().await.expect("write session");
    let (port, in_recovery) = server_of(&w).await.expect("query");
    assert_eq!(node_of_port(&c, port), Some(leader));
    assert!(!in_recovery);
    let rd = r.connect_read().await.expect("read session");
    let (port, in_recovery) = server_of(&rd).await.expect("query");
    assert_ne!(node_of_port(&c, port), Some(leader));
    assert!(in_recovery);
}

/// Of the router's data-path threads (`data-*`): how many are runnable right now (state `R`
/// in `/proc/<pid>/task/<tid>/stat`: running or waiting for a core), and how many there are.
fn data_threads_runnable(pid: i32) -> (usize, usize) {
    let (mut runnable, mut total) = (0, 0);
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("data-") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        total += 1;
        if state == Some("R") {
            runnable += 1;
        }
    }
    (runnable, total)
}

/// `busy_poll_us`: sessions relay as usual, and once they are idle the data threads stop
/// spinning (the router does not keep a core busy while nothing flows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_relays_and_stops_spinning_when_idle() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let r = Router::start(&c, "busy_poll_us: 200\n").expect("router");
    wait_routing(&r, &c, leader).await;
    let w = r.connect_write().await.expect("write session");
    w.batch_execute("CREATE TABLE spin (v int)")
        .await
        .expect("create");
    for v in 0..200 {
        w.execute("INSERT INTO spin VALUES ($1)", &[&v])
            .await
            .expect("insert");
    }
    let n: i64 = w
        .query_one("SELECT count(*) FROM spin", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 200);
    let rd = r.connect_read().await.expect("read session");
    let (_, in_recovery) = server_of(&rd).await.expect("query");
    assert!(in_recovery);
    // Idle now (sessions open, nothing flowing). A spinning data thread is always runnable;
    // one that stopped spinning sleeps in the kernel until a socket wakes it. Sample their
    // states for 2 s. (What an idle router costs in CPU is a benchmark:
    // `router_limits_bench`.)
    let pid = r.proc().pid().as_raw();
    let (mut samples, mut busy) = (0u32, 0u32);
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let (runnable, threads) = data_threads_runnable(pid);
        assert!(threads > 0, "the router names its data threads data-*");
        samples += 1;
        busy += u32::from(runnable > 0);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        busy * 4 < samples,
        "an idle router must not spin: a data thread was runnable in {busy} of {samples} samples"
    );
    drop((w, rd));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_leaves_the_read_pool_and_returns_without_flapping() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let r =
        Router::start(&c, "read: {max_lag_bytes: 1048576, hold_down_ms: 3000}\n").expect("router");
    wait_routing(&r, &c, leader).await;
    let reps = others(&c, leader);
    let (lagging, other) = (reps[0], reps[1]);
    let lagging_name = c.name(lagging).to_owned();

    // One read session on each replica (least-connections), kept across the lag.
    let mut read_sessions = Vec::new();
    for _ in 0..2 {
        let s = r.connect_read().await.expect("read session");
        let (port, _) = server_of(&s).await.expect("query");
        read_sessions.push((node_of_port(&c, port).expect("known port"), s));
    }
    let on_lagging = read_sessions
        .iter()
        .position(|(n, _)| *n == lagging)
        .expect("one read session on each replica");

    let since = SystemTime::now();
    let lc = c.connect(lagging).await.expect("connect to the replica");
    lc.batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause replay");
    let lead = c.connect(leader).await.expect("connect to the leader");
    let before: i64 = lead
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
        .await
        .expect("lsn")
        .get(0);
    lead.batch_execute(
        "CREATE TABLE big AS SELECT i, repeat('x', 1000) AS pad FROM generate_series(1, 6000) i",
    )
    .await
    .expect("write on the leader");
    let after: i64 = lead
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
        .await
        .expect("lsn")
        .get(0);
    assert!(
        after - before > 4 << 20,
        "more than 4 MB of WAL written ({} bytes)",
        after - before
    );
    let t_written = Instant::now();

    let ln = &lagging_name;
    let r = &r;
    let out =
        wait_until(
            &format!("{ln} to leave the read pool for lag"),
            Duration::from_secs(5),
            || async move {
                let s = r.stats().await?;
                let m = s["members"]
                    .as_array()
                    .and_then(|a| a.iter().find(|m| m["name"] == ln.as_str()))
                    .cloned()
                    .context("member missing")?;
                Ok((m["read_pool"] == false
                    && m["reason"].as_str().is_some_and(|x| x.contains("lag")))
                .then_some(m))
            },
        )
        .await
        .expect("the lagging replica leaves the read pool within 5 s");
    eprintln!(
        "{ln} out of the read pool {:.1?} after the write: {out}",
        t_written.elapsed()
    );

    // The burst may have pushed the other replica over the limit for a moment too (the agents
    // report positions once per loop): wait until it is back, alone.
    let want = vec![c.name(other).to_owned()];
    let want = &want;
    wait_until(
        "the read pool to be exactly the other replica",
        Duration::from_secs(30),
        || async move {
            let s = r.stats().await?;
            let got = read_backends(&s);
            if &got == want {
                Ok(Some(()))
            } else {
                anyhow::bail!("read_backends {got:?}")
            }
        },
    )
    .await
    .expect("read pool without the lagging replica");
    // New read sessions go to the other replica only; the lagging one keeps its session.
    for _ in 0..4 {
        let s = r.connect_read().await.expect("read session");
        let (port, in_recovery) = server_of(&s).await.expect("query");
        assert_eq!(
            node_of_port(&c, port),
            Some(other),
            "new read sessions avoid the lagging replica"
        );
        assert!(in_recovery);
    }
    let (port, _) = server_of(&read_sessions[on_lagging].1)
        .await
        .expect("the lagging replica's existing session survives (keep_sessions_on_lag)");
    assert_eq!(node_of_port(&c, port), Some(lagging));

    lc.batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume replay");
    let t_resumed = Instant::now();
    wait_until(
        &format!("{ln} to return to the read pool"),
        PROPAGATION_TIMEOUT,
        || async move {
            let s = r.stats().await?;
            Ok(read_backends(&s).contains(ln).then_some(()))
        },
    )
    .await
    .expect("the replica returns");
    let back_after = t_resumed.elapsed();
    eprintln!("{ln} back in the read pool {back_after:.1?} after resuming replay");
    // Stable afterwards: in the pool for a few hold-downs, then count the transitions.
    assert_holds_for(
        &format!("{ln} to stay in the read pool"),
        Duration::from_secs(8),
        || async move {
            let got = read_backends(&r.stats().await?);
            anyhow::ensure!(got.contains(ln), "read_backends {got:?}");
            Ok(())
        },
    )
    .await
    .expect("no flapping");
    let stats = r.stats().await.expect("stats");
    let events = events_since(&stats, since);
    let exits = events
        .iter()
        .filter(|e| e.starts_with(&format!("read pool -= {ln} ")))
        .count();
    let entries = events
        .iter()
        .filter(|e| *e == &format!("read pool += {ln}"))
        .count();
    assert_eq!(
        (exits, entries),
        (1, 1),
        "exactly one exit and one entry: {events:#?}"
    );
    assert!(
        read_backends(&stats).contains(ln),
        "{ln} stays in the pool: {stats:#}"
    );
    let s = r.connect_read().await.expect("read session");
    server_of(&s).await.expect("query");
    let all = all_events(&stats);
    eprintln!("events: {all:#?}");
}

/// `read.sync_only: true`: the read port reaches only the replica the `sync` key lists for the
/// current leader, and the other once the key lists it instead; while none is listed
/// (asynchronous cluster), reads go to the leader (`read.fallback: leader`). The leader's agent
/// chooses the synchronous standby; tagging it `nosync` makes it choose the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_only_reads_follow_the_sync_key() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let r = Router::start(&c, "read: {sync_only: true, fallback: leader}\n").expect("router");
    // Asynchronous cluster: no replica qualifies, and reads fall back to the leader.
    let (r, leader_name) = (&r, c.name(leader));
    wait_until(
        "the router to have a writer and no readers",
        PROPAGATION_TIMEOUT,
        || async move {
            let s = r.stats().await?;
            Ok(
                (s["write_backend"]["name"] == leader_name && read_backends(&s).is_empty())
                    .then_some(()),
            )
        },
    )
    .await
    .expect("an empty read pool");
    let s = r.connect_read().await.expect("read session");
    let (port, _) = server_of(&s).await.expect("query");
    assert_eq!(
        node_of_port(&c, port),
        Some(leader),
        "read.fallback: leader"
    );

    // Synchronous mode: the leader's agent names a synchronous standby in the sync key; then
    // that standby is tagged nosync (a configuration reload) and the leader names the other.
    let http = reqwest::Client::new();
    let resp = http
        .patch(format!("{}/config", c.api_url(leader)))
        .body(r#"{"synchronous_mode": true}"#)
        .send()
        .await
        .expect("PATCH /config");
    assert_eq!(resp.status().as_u16(), 200);
    let reps = others(&c, leader);
    let mut tagged_nosync: Option<usize> = None;
    for round in 0..2 {
        let (cl, reps) = (&c, &reps);
        let listed = wait_until(
            "the sync key to name one standby",
            PROPAGATION_TIMEOUT,
            || async move {
                let Some(v) = cl.etcd_get("sync").await? else {
                    return Ok(None);
                };
                let k = patrol_dcs::SyncState::parse(&v);
                Ok(match k.sync_standby.as_slice() {
                    [one] => reps
                        .iter()
                        .copied()
                        .find(|&i| cl.name(i) == one.as_str() && Some(i) != tagged_nosync),
                    _ => None,
                })
            },
        )
        .await
        .expect("a synchronous standby");
        let other = if listed == reps[0] { reps[1] } else { reps[0] };
        let want = vec![c.name(listed).to_owned()];
        let want = &want;
        let stats = wait_until(
            &format!("the read pool to be exactly {want:?}"),
            PROPAGATION_TIMEOUT,
            || async move {
                let s = r.stats().await?;
                let got = read_backends(&s);
                if &got == want {
                    Ok(Some(s))
                } else {
                    anyhow::bail!("read_backends {got:?}")
                }
            },
        )
        .await
        .expect("the listed replica reads");
        let member = |i: usize| {
            stats["members"]
                .as_array()
                .and_then(|a| a.iter().find(|m| m["name"] == c.name(i)))
                .cloned()
                .expect("member in stats.json")
        };
        assert_eq!(member(listed)["sync_state"], "sync", "{stats:#}");
        assert_eq!(member(other)["sync_state"], "async", "{stats:#}");
        assert_eq!(member(leader)["sync_state"], Value::Null, "{stats:#}");
        let reason = member(other)["reason"].as_str().unwrap_or("").to_owned();
        assert!(reason.contains("not listed in the sync key"), "{reason}");
        for k in 0..4 {
            let s = r.connect_read().await.expect("read session");
            let (port, in_recovery) = server_of(&s).await.expect("query");
            assert_eq!(
                node_of_port(&c, port),
                Some(listed),
                "read session {k} must reach the synchronous standby {}",
                c.name(listed)
            );
            assert!(in_recovery);
        }
        let m = r.metrics().await.expect("metrics");
        let state = |i: usize, state: &str| {
            metric(
                &m,
                &format!(
                    "patrol_router_replica_sync_state{{member=\"{}\",state=\"{state}\"}}",
                    c.name(i)
                ),
            )
        };
        assert_eq!(
            (state(listed, "sync"), state(other, "async")),
            (1.0, 1.0),
            "{m}"
        );
        if round == 0 {
            // The listed standby is tagged nosync: the leader names the other one.
            let yaml = c
                .config_yaml(listed)
                .replace("tags: {}", "tags: {nosync: true}");
            std::fs::write(c.config_path(listed), yaml).expect("write config");
            let resp = http
                .post(format!("{}/reload", c.api_url(listed)))
                .send()
                .await
                .expect("POST /reload");
            assert_eq!(resp.status().as_u16(), 202);
            tagged_nosync = Some(listed);
        }
    }
    let (_, html) = r.get("/").await.expect("GET /");
    assert!(html.contains("<th>sync</th>"), "{html}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_page_html() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let r = Router::start(&c, "").expect("router");
    wait_routing(&r, &c, leader).await;
    let w = r.connect_write().await.expect("write session");
    server_of(&w).await.expect("query");

    let (status, html) = r.get("/").await.expect("GET /");
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("<html"), "{html}");
    assert!(
        html.contains(c.scope()),
        "the page names the cluster:\n{html}"
    );
    assert!(
        html.contains(&format!("<b id=\"leader\">{}</b>", c.name(leader))),
        "the page names the leader:\n{html}"
    );
    for i in others(&c, leader) {
        assert!(
            html.contains(&format!("<td>{}</td>", c.name(i))),
            "the page lists replica {}:\n{html}",
            c.name(i)
        );
    }

    let m = r.metrics().await.expect("metrics");
    assert!(m.contains("patrol_router_sessions_total"), "{m}");
    assert!(m.contains("patrol_router_pool_member"), "{m}");
    assert_eq!(
        metric(
            &m,
            &format!(
                "patrol_router_pool_member{{member=\"{}\",pool=\"write\"}}",
                c.name(leader)
            )
        ),
        1.0,
        "{m}"
    );
    let (status, _) = r.get("/health").await.expect("health");
    assert_eq!(status, 200);
}
