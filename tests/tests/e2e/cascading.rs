//! End to end: the `replicatefrom`, `nostream` and `noloadbalance` tags (rows H-1.2c, H-1.2n).
//! A cascading replica streams from its upstream through a slot there, survives the upstream's
//! restart, falls back to the leader while the upstream is gone and returns to it. A `nostream`
//! member recovers from the archive only; a `noloadbalance` member is left out of reads.

use std::path::Path;

use nix::sys::signal::Signal;
use patrol_tests::{make_agent_dir, wait_until, Cluster, Router};

use crate::support::ctl::ok;
use crate::support::workload::{wait_streaming_from, wal_receiver};
use crate::support::{wait_healthy, wait_table_values, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT};

/// `tags: {}` of the harness's YAML replaced by `tags`.
fn with_tags(cluster: &mut Cluster, i: usize, tags: &'static str) {
    cluster.set_config_override(i, move |y| *y = y.replace("tags: {}", tags));
}

async fn sql(cluster: &Cluster, i: usize, q: &str) -> anyhow::Result<()> {
    cluster.connect(i).await?.batch_execute(q).await?;
    Ok(())
}

/// Whether node `i` has a replication slot `name` that something streams from.
async fn active_slot(cluster: &Cluster, i: usize, name: &str) -> anyhow::Result<Option<bool>> {
    let row = cluster
        .connect(i)
        .await?
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cascading_replica_streams_from_its_upstream_and_survives_its_restart() {
    let mut c = Cluster::new(3).expect("cluster");
    with_tags(&mut c, 2, "tags: {replicatefrom: pg1}");
    c.start_node(0).expect("start pg0");
    wait_healthy(&c, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("pg0 leads");
    c.start_node(1).expect("start pg1");
    wait_healthy(&c, &[0, 1], HEALTHY_TIMEOUT)
        .await
        .expect("pg1 streams");
    c.start_node(2).expect("start pg2");
    wait_healthy(&c, &[0, 1, 2], HEALTHY_TIMEOUT)
        .await
        .expect("healthy");
    let tl = 1;
    wait_streaming_from(&c, 2, 1, tl, PROPAGATION_TIMEOUT)
        .await
        .expect("pg2 streams from pg1");
    wait_streaming_from(&c, 1, 0, tl, PROPAGATION_TIMEOUT)
        .await
        .expect("pg1 streams from pg0");
    wait_until("pg2's slot on pg1 in use", PROPAGATION_TIMEOUT, || async {
        Ok((active_slot(&c, 1, "pg2").await? == Some(true)).then_some(()))
    })
    .await
    .expect("pg1 keeps pg2's slot");
    sql(
        &c,
        0,
        "CREATE TABLE t (v text PRIMARY KEY); INSERT INTO t VALUES ('one')",
    )
    .await
    .expect("write");
    wait_table_values(&c, 2, &["one"], PROPAGATION_TIMEOUT)
        .await
        .expect("through pg1 to pg2");

    // The upstream's PostgreSQL restarts: pg2 streams from it again afterwards.
    ok(&c, &["restart", c.scope(), "pg1", "--force"]);
    wait_streaming_from(&c, 2, 1, tl, PROPAGATION_TIMEOUT)
        .await
        .expect("pg2 streams from pg1 after its restart");
    sql(&c, 0, "INSERT INTO t VALUES ('two')")
        .await
        .expect("write");
    wait_table_values(&c, 2, &["one", "two"], PROPAGATION_TIMEOUT)
        .await
        .expect("rows after the restart");

    // The upstream is gone (agent and PostgreSQL killed; its key expires): pg2 streams from
    // the leader; when it is back, from it again.
    c.kill_node(1);
    c.signal_postgres(1, Signal::SIGKILL)
        .expect("kill pg1's PostgreSQL");
    wait_streaming_from(&c, 2, 0, tl, HEALTHY_TIMEOUT)
        .await
        .expect("pg2 falls back to the leader");
    sql(&c, 0, "INSERT INTO t VALUES ('three')")
        .await
        .expect("write");
    wait_table_values(&c, 2, &["one", "three", "two"], PROPAGATION_TIMEOUT)
        .await
        .expect("rows from the leader");
    c.start_node(1).expect("restart pg1");
    wait_streaming_from(&c, 2, 1, tl, HEALTHY_TIMEOUT)
        .await
        .expect("pg2 back on pg1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nostream_recovers_from_the_archive_and_noloadbalance_takes_no_reads() {
    let mut c = Cluster::new(3).expect("cluster");
    let archive = c.root().join("archive");
    make_agent_dir(&archive).expect("archive dir");
    let a = archive.display().to_string();
    let params = format!(
        "fsync: off, archive_mode: 'on', archive_command: 'test ! -f {a}/%f && cp %p {a}/%f'"
    );
    c.set_config_override(0, move |y| *y = y.replace("fsync: off", &params));
    let restore = restore_conf(&archive);
    c.set_config_override(1, move |y| {
        *y = y.replace("tags: {}", "tags: {nostream: true}");
        *y = y.replace("  bin_dir:", &format!("{restore}  bin_dir:"));
    });
    with_tags(&mut c, 2, "tags: {noloadbalance: true}");
    c.start_node(0).expect("start pg0");
    wait_healthy(&c, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("pg0 leads");
    c.start_node(1).expect("start pg1");
    c.start_node(2).expect("start pg2");
    wait_healthy(&c, &[0, 2], HEALTHY_TIMEOUT)
        .await
        .expect("pg2 streams");

    // pg1 recovers from the archive: no WAL receiver, no slot on the leader, its member key
    // says so; rows reach it once their segment is archived.
    sql(
        &c,
        0,
        "CREATE TABLE t (v text PRIMARY KEY); INSERT INTO t VALUES ('one')",
    )
    .await
    .expect("write");
    let pg0 = c.connect(0).await.expect("pg0");
    pg0.batch_execute("SELECT pg_switch_wal()")
        .await
        .expect("switch");
    wait_table_values(&c, 1, &["one"], PROPAGATION_TIMEOUT)
        .await
        .expect("pg1 restores from the archive");
    assert_eq!(wal_receiver(&c, 1).await.expect("pg1"), None);
    assert_eq!(active_slot(&c, 0, "pg1").await.expect("slots"), None);
    wait_until(
        "pg1's member key to say archive recovery",
        PROPAGATION_TIMEOUT,
        || async {
            let m = crate::support::members(&c).await?;
            Ok(m.get("pg1")
                .is_some_and(|m| m.replication_state.as_deref() == Some("in archive recovery"))
                .then_some(()))
        },
    )
    .await
    .expect("member key");

    // noloadbalance: GET /replica says 503 on pg2, and the router reads only from pg1.
    assert_eq!(c.api_get(2, "/replica").await.expect("GET").0, 503);
    assert_eq!(c.api_get(1, "/replica").await.expect("GET").0, 200);
    let r = Router::start(&c, "").expect("router");
    wait_until(
        "the router's read pool to be pg1 alone",
        PROPAGATION_TIMEOUT,
        || async {
            let s = r.stats().await?;
            let pool: Vec<String> = s["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["read_pool"] == true)
                .filter_map(|m| m["name"].as_str().map(str::to_owned))
                .collect();
            Ok((pool == ["pg1"]).then_some(()))
        },
    )
    .await
    .expect("read pool");
}

/// `postgresql.recovery_conf` that restores from `archive` (lines of the postgresql section).
fn restore_conf(archive: &Path) -> String {
    format!(
        "  recovery_conf: {{restore_command: 'cp {}/%f %p'}}\n",
        archive.display()
    )
}
