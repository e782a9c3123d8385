//! The cluster around a healthy leader fails: etcd frozen past `ttl` (the leader demotes
//! itself, nobody promotes), a replica lagging past `maximum_lag_on_failover` (never promoted).

use std::time::{Duration, Instant};

use patrol_tests::{assert_holds_for, wait_until, Cluster, Signal};

use super::{
    all, assert_few_acked_writes_lost, assert_never_two_primaries, assert_no_return,
    wait_new_leader, wait_writes_on,
};
use crate::support::workload::{describe_changes, secs_since, LeaderWatch, Prober, Writer};
use crate::support::{
    in_recovery, index_of, start_all, wait_healthy, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT, TTL,
};

/// `maximum_lag_on_failover` of the harness's `bootstrap.dcs`.
const MAX_LAG: f64 = 1_048_576.0;

/// Row D-2: etcd frozen longer than ttl: the leader demotes itself before its lease can expire
/// and nobody promotes; once etcd is back a leader is elected and writes work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_outage_demotes_leader_and_nobody_promotes() {
    let mut c = Cluster::new(3).expect("cluster");
    let old = start_all(&mut c).await;

    let t0 = Instant::now();
    let watch = LeaderWatch::start(&c).await.expect("leader watch");
    let prober = Prober::start(&c);
    let writer = Writer::start(&c, old).await.expect("writer");
    wait_writes_on(&writer, &c, old, t0).await;

    let pause_at = Instant::now();
    c.etcd().pause().expect("pause etcd");
    let cl = &c;
    let demoted = wait_until(
        &format!("{} to demote itself", c.name(old)),
        TTL,
        || async move { Ok(in_recovery(cl, old).await?.then_some(())) },
    )
    .await;
    let demoted_at = Instant::now();
    if let Err(e) = demoted {
        // Thaw etcd first so the agents (and the log dump) are not stuck.
        let _ = c.etcd().resume();
        panic!("the leader must be in recovery within ttl of the etcd outage: {e:#}");
    }
    tokio::time::sleep_until((pause_at + TTL + Duration::from_secs(5)).into()).await;
    let resume_at = Instant::now();
    c.etcd().resume().expect("resume etcd");

    // Nobody writable from the demotion to the end of the outage (prober and writer agree).
    let during: Vec<_> = prober
        .snapshot()
        .into_iter()
        .filter(|r| r.start >= demoted_at && r.end <= resume_at)
        .collect();
    assert!(
        during.len() >= 10,
        "only {} prober rounds during the outage",
        during.len()
    );
    let primaries: Vec<_> = during
        .iter()
        .filter(|r| !r.primaries().is_empty())
        .collect();
    let acked_during: Vec<_> = writer
        .snapshot()
        .acked()
        .iter()
        .filter(|a| a.end >= demoted_at && a.end <= resume_at)
        .map(|a| (a.id, a.node))
        .collect();

    // A leader again within 60 s, exactly one primary, and writes work.
    let leader = wait_until(
        "exactly one primary holding the leader key after etcd is back",
        PROPAGATION_TIMEOUT,
        || async move {
            let Some(name) = cl.leader().await? else {
                anyhow::bail!("no leader key");
            };
            let mut writable = Vec::new();
            for i in 0..cl.len() {
                if let Ok(false) = in_recovery(cl, i).await {
                    writable.push(cl.name(i).to_owned());
                }
            }
            if writable == [name.clone()] {
                Ok(index_of(cl, &name))
            } else {
                anyhow::bail!("leader key {name}, primaries {writable:?}")
            }
        },
    )
    .await
    .expect("one primary after the outage");
    let elected_at = Instant::now();
    wait_writes_on(&writer, &c, leader, resume_at).await;
    wait_healthy(&c, &all(&c), HEALTHY_TIMEOUT)
        .await
        .expect("healthy after the outage");

    let log = writer.stop().await;
    let probes = prober.stop().await;
    let changes = watch.stop();
    eprintln!("{}", log.summary(t0));
    eprintln!("leader key:\n{}", describe_changes(&changes, t0));
    eprintln!(
        "etcd paused at {:+.3}s; {} in recovery after {:.3}s; resumed at {:+.3}s; {} primary \
         {:.3}s after resume; client write outage {:?}",
        secs_since(t0, pause_at),
        c.name(old),
        (demoted_at - pause_at).as_secs_f64(),
        secs_since(t0, resume_at),
        c.name(leader),
        (elected_at - resume_at).as_secs_f64(),
        log.outage_around(pause_at)
    );
    assert!(
        primaries.is_empty(),
        "no node may be a primary while etcd is down:\n{}",
        probes.describe(t0, demoted_at, resume_at)
    );
    assert!(
        acked_during.is_empty(),
        "writes acknowledged while etcd was down (id, node): {acked_during:?}\n{}",
        log.summary(t0)
    );
    assert_few_acked_writes_lost(&c, leader, &log, t0, old, (pause_at - TTL, demoted_at)).await;
    if leader != old {
        assert_no_return(&log, t0);
    }
    assert_never_two_primaries(&probes, t0);
}

/// Rows U-1.2 and U-lag: a replica whose replay is paused and lags more than
/// `maximum_lag_on_failover` never takes the key; the up-to-date replica does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_is_never_promoted() {
    let mut c = Cluster::new(3).expect("cluster");
    let old = start_all(&mut c).await;
    let replicas: Vec<usize> = all(&c).into_iter().filter(|&i| i != old).collect();
    let (paused, fresh) = (replicas[0], replicas[1]);
    let cl = &c;

    let pc = c.connect(paused).await.expect("connect paused replica");
    pc.batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause replay");
    wait_until("replay to be paused", PROPAGATION_TIMEOUT, || async {
        let state: String = pc
            .query_one("SELECT pg_get_wal_replay_pause_state()", &[])
            .await?
            .get(0);
        Ok((state == "paused").then_some(()))
    })
    .await
    .expect("paused");

    let lc = c.connect(old).await.expect("connect leader");
    lc.batch_execute(
        "CREATE TABLE big (id int PRIMARY KEY, pad text);
         INSERT INTO big SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g",
    )
    .await
    .expect("write 20 MB");
    let lsn: String = lc
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("lsn")
        .get(0);
    let lsn = &lsn;
    wait_until(
        &format!("{} to replay up to {lsn}", c.name(fresh)),
        PROPAGATION_TIMEOUT,
        || async move {
            let client = cl.connect(fresh).await?;
            let behind: f64 = client
                .query_one(
                    "SELECT pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn())::float8",
                    &[lsn],
                )
                .await?
                .get(0);
            Ok((behind <= 0.0).then_some(()))
        },
    )
    .await
    .expect("the other replica is up to date");
    let lag: f64 = pc
        .query_one(
            "SELECT pg_wal_lsn_diff($1::text::pg_lsn, pg_last_wal_replay_lsn())::float8",
            &[lsn],
        )
        .await
        .expect("lag")
        .get(0);
    eprintln!("{} replay lags {lag} bytes behind {lsn}", c.name(paused));
    assert!(lag > MAX_LAG, "the paused replica lags only {lag} bytes");
    drop(pc);
    drop(lc);

    let t0 = Instant::now();
    let watch = LeaderWatch::start(&c).await.expect("leader watch");
    let kill_at = Instant::now();
    c.kill_node(old);
    c.signal_postgres(old, Signal::SIGKILL)
        .expect("SIGKILL postmaster");
    let new = wait_new_leader(&c, old, TTL + Duration::from_secs(30))
        .await
        .expect("a replica takes over");
    let promoted_at = Instant::now();
    // Keep watching a while after the takeover: the key stays with the new leader, the paused
    // replica stays a replica.
    let (cl, new_name) = (&c, c.name(new));
    assert_holds_for(
        "the takeover to stand",
        Duration::from_secs(5),
        || async move {
            let holder = cl.leader().await?;
            anyhow::ensure!(
                holder.as_deref() == Some(new_name),
                "the leader key names {holder:?}"
            );
            anyhow::ensure!(
                in_recovery(cl, paused).await?,
                "the lagging replica is no longer in recovery"
            );
            Ok(())
        },
    )
    .await
    .expect("the new leader keeps the key, the lagging replica stays a replica");
    let changes = watch.stop();
    eprintln!("leader key:\n{}", describe_changes(&changes, t0));
    eprintln!(
        "host lost at {:+.3}s; {} writable after {:.3}s",
        secs_since(t0, kill_at),
        c.name(new),
        (promoted_at - kill_at).as_secs_f64()
    );
    assert!(
        !changes
            .iter()
            .any(|ch| ch.holder.as_deref() == Some(c.name(paused))),
        "the lagging replica {} held the leader key:\n{}",
        c.name(paused),
        describe_changes(&changes, t0)
    );
    assert_eq!(new, fresh, "the up-to-date replica must take over");
}
