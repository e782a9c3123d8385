//! End to end: a standby cluster (spec 5.9, rows SC-1..SC-3 and SC-B). Cluster B follows
//! cluster A's primary through a permanent slot: its first member clones A and becomes the
//! *standby leader*, the other streams from it, rows written on A appear on both. B fails over
//! within itself. Then the two swap roles with `patrolctl demote-cluster` and
//! `promote-cluster` (A demoted to follow B, B promoted and written to), and swap back with
//! Patroni's own `patronictl`.

use nix::sys::signal::Signal;
use patrol_dcs::Role;
use patrol_tests::{is_streaming_replica, wait_until, Cluster, Router};

use crate::support::ctl::{ok, patronictl_ok};
use crate::support::{
    in_recovery, index_of, members, wait_healthy, wait_table_values, HEALTHY_TIMEOUT,
    PROPAGATION_TIMEOUT,
};

/// Waits until the leader key of `cluster` names one of `nodes` whose member key says
/// `standby_leader`/`running`, and the others publish running, streaming replicas. Returns the
/// standby leader's index.
async fn wait_standby_healthy(cluster: &Cluster, nodes: &[usize]) -> anyhow::Result<usize> {
    wait_until(
        "a standby leader and streaming replicas",
        HEALTHY_TIMEOUT,
        || async move {
            let Some(leader) = cluster.leader().await? else {
                return Ok(None);
            };
            let Some(li) = index_of(cluster, &leader).filter(|i| nodes.contains(i)) else {
                return Ok(None);
            };
            let m = members(cluster).await?;
            let leader_ok = m
                .get(&leader)
                .is_some_and(|m| m.role == Role::StandbyLeader && m.state == "running");
            let replicas_ok = nodes
                .iter()
                .filter(|&&i| i != li)
                .all(|&i| m.get(cluster.name(i)).is_some_and(is_streaming_replica));
            Ok((leader_ok && replicas_ok).then_some(li))
        },
    )
    .await
}

async fn sql(cluster: &Cluster, i: usize, q: &str) -> anyhow::Result<()> {
    cluster.connect(i).await?.batch_execute(q).await?;
    Ok(())
}

/// The sender port of node `i`'s WAL receiver, while it streams.
async fn streams_from(cluster: &Cluster, i: usize) -> anyhow::Result<Option<u16>> {
    let row = cluster
        .connect(i)
        .await?
        .query_opt(
            "SELECT sender_port FROM pg_stat_wal_receiver WHERE status = 'streaming'",
            &[],
        )
        .await?;
    Ok(row
        .and_then(|r| r.get::<_, Option<i32>>(0))
        .and_then(|p| u16::try_from(p).ok()))
}

/// `dcs: {` of the harness's `bootstrap.dcs` with `extra` added in front.
fn with_dcs(cluster: &mut Cluster, i: usize, extra: String) {
    cluster.set_config_override(i, move |y| {
        *y = y.replace("dcs: {ttl: 10,", &format!("dcs: {{{extra}, ttl: 10,"))
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_cluster_follows_fails_over_and_swaps_roles() {
    // Cluster A: one primary with a permanent slot for the standby cluster.
    let mut a = Cluster::new(1).expect("cluster A");
    with_dcs(&mut a, 0, "slots: {standby_b: {type: physical}}".into());
    a.start_node(0).expect("start A");
    wait_healthy(&a, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("A leads");
    sql(
        &a,
        0,
        "CREATE TABLE t (v text PRIMARY KEY); INSERT INTO t VALUES ('a1')",
    )
    .await
    .expect("write on A");

    // Cluster B: a standby cluster of A.
    let mut b = Cluster::new(2).expect("cluster B");
    let port = a.pg_port(0);
    for i in 0..2 {
        with_dcs(
            &mut b,
            i,
            format!(
                "standby_cluster: {{host: 127.0.0.1, port: {port}, primary_slot_name: standby_b}}"
            ),
        );
    }
    b.start_node(0).expect("start B0");
    wait_standby_healthy(&b, &[0])
        .await
        .expect("B0 is the standby leader");
    b.start_node(1).expect("start B1");
    let l = wait_standby_healthy(&b, &[0, 1])
        .await
        .expect("B1 streams from B0");
    assert_eq!(l, 0);
    sql(&a, 0, "INSERT INTO t VALUES ('a2')")
        .await
        .expect("write on A");
    for i in 0..2 {
        wait_table_values(&b, i, &["a1", "a2"], PROPAGATION_TIMEOUT)
            .await
            .expect("A's rows reach B");
    }
    // The standby leader streams from A through the slot; B1 from B0; B takes no writes.
    assert_eq!(streams_from(&b, 0).await.expect("B0"), Some(port));
    assert_eq!(streams_from(&b, 1).await.expect("B1"), Some(b.pg_port(0)));
    let active: bool = a
        .connect(0)
        .await
        .expect("A")
        .query_one(
            "SELECT active FROM pg_replication_slots WHERE slot_name = 'standby_b'",
            &[],
        )
        .await
        .expect("slot standby_b on A")
        .get(0);
    assert!(active, "B's standby leader uses A's slot standby_b");
    assert!(in_recovery(&b, 0).await.expect("B0"));
    for (path, code) in [
        ("/standby-leader", 200),
        ("/standby_leader", 200),
        ("/primary", 503),
    ] {
        let (got, body) = b.api_get(0, path).await.expect("GET");
        assert_eq!(got, code, "{path}: {body}");
    }
    let (_, body) = b.api_get(0, "/patroni").await.expect("GET /patroni");
    assert!(
        body.contains(r#""role": "standby_leader""#) || body.contains(r#""role":"standby_leader""#),
        "{body}"
    );
    assert_eq!(b.api_get(1, "/replica").await.expect("GET").0, 200);

    // B's router refuses writes with a clear error at once and serves reads.
    let router = Router::start(&b, "").expect("router on B");
    let refused = wait_until(
        "B's router to refuse writes",
        PROPAGATION_TIMEOUT,
        || async { Ok(router.connect_write().await.err().map(|e| format!("{e:#}"))) },
    )
    .await
    .expect("write port refuses");
    assert!(
        refused.contains("standby cluster") && refused.contains("no writable primary"),
        "{refused}"
    );
    let rows = wait_until("a read through B's router", PROPAGATION_TIMEOUT, || async {
        let c = router.connect_read().await?;
        let n: i64 = c.query_one("SELECT count(*) FROM t", &[]).await?.get(0);
        Ok(Some(n))
    })
    .await
    .expect("read port serves");
    assert_eq!(rows, 2);

    // Failover within B: its standby leader's host is lost; B1 becomes the standby leader and
    // follows A, and B0 comes back as its replica.
    b.kill_node(0);
    b.signal_postgres(0, Signal::SIGKILL)
        .expect("kill B0's PostgreSQL");
    wait_until(
        "B1 to become the standby leader",
        HEALTHY_TIMEOUT,
        || async {
            let m = members(&b).await?;
            Ok((b.leader().await?.as_deref() == Some(b.name(1))
                && m.get(b.name(1))
                    .is_some_and(|m| m.role == Role::StandbyLeader))
            .then_some(()))
        },
    )
    .await
    .expect("B1 leads B");
    sql(&a, 0, "INSERT INTO t VALUES ('a3')")
        .await
        .expect("write on A");
    wait_table_values(&b, 1, &["a1", "a2", "a3"], PROPAGATION_TIMEOUT)
        .await
        .expect("the new standby leader follows A");
    b.start_node(0).expect("restart B0");
    assert_eq!(
        wait_standby_healthy(&b, &[0, 1]).await.expect("B healthy"),
        1
    );
    wait_table_values(&b, 0, &["a1", "a2", "a3"], PROPAGATION_TIMEOUT)
        .await
        .expect("B0 follows B1");

    // Swap: A becomes a standby cluster of B's standby leader, then B is promoted.
    let b_port = b.pg_port(1).to_string();
    ok(
        &a,
        &[
            "demote-cluster",
            "--host",
            "127.0.0.1",
            "--port",
            &b_port,
            "--force",
            "--timeout",
            "120",
        ],
    );
    wait_standby_healthy(&a, &[0])
        .await
        .expect("A is a standby cluster");
    ok(&b, &["promote-cluster", "--force", "--timeout", "120"]);
    assert_eq!(
        wait_healthy(&b, &[0, 1], HEALTHY_TIMEOUT)
            .await
            .expect("B is a normal cluster"),
        1
    );
    // B's router now routes writes to its primary.
    let w = wait_until(
        "a write through B's router",
        PROPAGATION_TIMEOUT,
        || async { Ok(router.connect_write().await.ok()) },
    )
    .await
    .expect("write port");
    w.batch_execute("INSERT INTO t VALUES ('b1')")
        .await
        .expect("write on B through its router");
    wait_table_values(&a, 0, &["a1", "a2", "a3", "b1"], PROPAGATION_TIMEOUT)
        .await
        .expect("B's rows reach A");
    wait_table_values(&b, 0, &["a1", "a2", "a3", "b1"], PROPAGATION_TIMEOUT)
        .await
        .expect("B's replica follows its primary");

    // And back, with Patroni's own patronictl: B demoted to follow A, A promoted and written to.
    let a_port = a.pg_port(0).to_string();
    let scope_b = b.scope().to_owned();
    let out = patronictl_ok(
        &b,
        &[
            "demote-cluster",
            &scope_b,
            "--host",
            "127.0.0.1",
            "--port",
            &a_port,
            "--force",
        ],
    );
    assert!(out.contains("demoted"), "{out}");
    wait_standby_healthy(&b, &[0, 1])
        .await
        .expect("B is a standby cluster again");
    let scope_a = a.scope().to_owned();
    let out = patronictl_ok(&a, &["promote-cluster", &scope_a, "--force"]);
    assert!(out.contains("promoted"), "{out}");
    wait_healthy(&a, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("A leads again");
    sql(&a, 0, "INSERT INTO t VALUES ('a4')")
        .await
        .expect("write on A");
    for i in 0..2 {
        wait_table_values(&b, i, &["a1", "a2", "a3", "a4", "b1"], PROPAGATION_TIMEOUT)
            .await
            .expect("A's rows reach B again");
    }
}
