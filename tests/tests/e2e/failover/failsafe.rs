//! Failsafe mode (rows D-2F, D-2F', U-2F, F-1): etcd frozen for 3 × ttl while every member
//! answers: the primary stays writable (directly and through the router), nobody promotes,
//! nothing is lost; a replica frozen as well: the primary demotes as with failsafe mode off
//! (that case is `outage_and_lag::etcd_outage_demotes_leader_and_nobody_promotes`).

use std::time::{Duration, Instant};

use patrol_tests::{wait_until, Cluster, Router, Signal};

use super::{all, assert_never_two_primaries, assert_no_acked_write_lost, wait_writes_on};
use crate::router::{server_of, wait_routing};
use crate::support::workload::{secs_since, Prober, Writer};
use crate::support::{
    in_recovery, start_all, wait_healthy, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT, TTL,
};

/// A 3-node cluster bootstrapped with `failsafe_mode: true`, once the leader wrote the
/// `failsafe` key naming all three; returns the leader.
async fn failsafe_cluster() -> (Cluster, usize) {
    let mut c = Cluster::new(3).expect("cluster");
    for i in 0..c.len() {
        c.set_config_override(i, |y| {
            *y = y.replace("dcs: {ttl: 10,", "dcs: {failsafe_mode: true, ttl: 10,");
        });
    }
    let leader = start_all(&mut c).await;
    let cl = &c;
    wait_until(
        "the failsafe key to name every member",
        PROPAGATION_TIMEOUT,
        || async move {
            let Some(v) = cl.etcd_get("failsafe").await? else {
                return Ok(None);
            };
            let key: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&v)?;
            let named = (0..cl.len()).all(|i| {
                key.get(cl.name(i)).and_then(|u| u.as_str())
                    == Some(format!("{}/patroni", cl.api_url(i)).as_str())
            });
            Ok(named.then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| {
        c.dump_logs();
        panic!("{e:#}")
    });
    (c, leader)
}

/// Waits (up to ttl) until `GET /patroni` of node `i` says `failsafe_mode_is_active`.
async fn wait_failsafe_active(c: &Cluster, i: usize) -> anyhow::Result<()> {
    wait_until(
        "the leader to report failsafe mode active",
        TTL,
        || async move {
            let (_, body) = c.api_get(i, "/patroni").await?;
            let v: serde_json::Value = serde_json::from_str(&body)?;
            Ok((v["failsafe_mode_is_active"] == serde_json::Value::Bool(true)).then_some(()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_primary_stays_writable_through_an_etcd_outage() {
    let (c, leader) = failsafe_cluster().await;
    let r = Router::start(&c, "").expect("router");
    wait_routing(&r, &c, leader).await;
    let session = r
        .connect_write()
        .await
        .expect("write session through the router");
    session
        .batch_execute("CREATE TABLE failsafe_router (n int)")
        .await
        .expect("create through the router");

    let t0 = Instant::now();
    let prober = Prober::start(&c);
    let writer = Writer::start(&c, leader).await.expect("writer");
    wait_writes_on(&writer, &c, leader, t0).await;

    let pause_at = Instant::now();
    c.etcd().pause().expect("pause etcd");
    let active = wait_failsafe_active(&c, leader).await;
    let outage = async {
        active?;
        // Three ttl of outage: the leader must renew its hold several times.
        let mut n = 0;
        while pause_at.elapsed() < 3 * TTL {
            tokio::time::sleep(Duration::from_secs(1)).await;
            session
                .execute("INSERT INTO failsafe_router VALUES ($1)", &[&n])
                .await
                .map_err(|e| anyhow::anyhow!("write through the router during the outage: {e}"))?;
            n += 1;
        }
        anyhow::Ok(n)
    }
    .await;
    let resume_at = Instant::now();
    c.etcd().resume().expect("resume etcd");
    let routed = outage.unwrap_or_else(|e| {
        c.dump_logs();
        panic!("{e:#}")
    });

    let acked_during = writer
        .snapshot()
        .acked()
        .iter()
        .filter(|a| a.node == leader && a.start > pause_at + TTL && a.end < resume_at)
        .count();
    wait_healthy(&c, &all(&c), HEALTHY_TIMEOUT)
        .await
        .expect("healthy after the outage");
    wait_writes_on(&writer, &c, leader, resume_at).await;
    let log = writer.stop().await;
    let probes = prober.stop().await;
    eprintln!(
        "etcd paused {:.1}s at {:+.3}s; {acked_during} direct and {routed} routed writes acked past ttl of the outage",
        (resume_at - pause_at).as_secs_f64(),
        secs_since(t0, pause_at),
    );
    assert_eq!(
        c.leader().await.expect("leader key").as_deref(),
        Some(c.name(leader)),
        "the leader keeps its key through the outage"
    );
    let during: Vec<_> = probes
        .rounds
        .iter()
        .filter(|r| r.start >= pause_at && r.end <= resume_at)
        .collect();
    assert!(during.len() >= 10, "only {} prober rounds", during.len());
    for r in &during {
        let p = r.primaries();
        assert!(
            p.is_empty() || p == [leader],
            "only the leader may be primary during the outage: {:?}",
            r.in_recovery
        );
    }
    assert!(
        during.iter().filter(|r| r.primaries() == [leader]).count() * 10 >= during.len() * 9,
        "the leader stays writable through the outage"
    );
    assert!(
        acked_during > 0,
        "direct writes acknowledged past ttl of the outage"
    );
    assert!(
        !in_recovery(&c, leader).await.expect("leader answers"),
        "still primary"
    );
    let (port, recovery) = server_of(&session)
        .await
        .unwrap_or_else(|e| panic!("the routed session lives: {e:#}\n{}", r.log()));
    assert_eq!((port, recovery), (i32::from(c.pg_port(leader)), false));
    assert_no_acked_write_lost(&c, leader, &log, t0).await;
    assert_never_two_primaries(&probes, t0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_primary_demotes_when_a_member_does_not_answer() {
    let (c, leader) = failsafe_cluster().await;
    let replica = (leader + 1) % c.len();
    let t0 = Instant::now();
    let prober = Prober::start(&c);

    c.etcd().pause().expect("pause etcd");
    let active = wait_failsafe_active(&c, leader).await;
    let cl = &c;
    c.stop_node(replica, Signal::SIGSTOP)
        .expect("SIGSTOP a replica's agent");
    let frozen_at = Instant::now();
    let demoted = match active {
        Ok(()) => {
            wait_until("the leader to demote", 2 * TTL, || async move {
                Ok(in_recovery(cl, leader).await?.then_some(()))
            })
            .await
        }
        Err(e) => Err(e),
    };
    let demoted_at = Instant::now();
    c.stop_node(replica, Signal::SIGCONT).expect("SIGCONT");
    c.etcd().resume().expect("resume etcd");
    if let Err(e) = demoted {
        c.dump_logs();
        panic!("{e:#}");
    }
    eprintln!(
        "replica frozen at {:+.3}s; leader in recovery {:.1}s later",
        secs_since(t0, frozen_at),
        (demoted_at - frozen_at).as_secs_f64()
    );
    wait_healthy(&c, &all(&c), HEALTHY_TIMEOUT)
        .await
        .expect("healthy after the outage");
    let probes = prober.stop().await;
    assert_never_two_primaries(&probes, t0);
    assert!(
        c.agent_log(leader).contains("did not accept"),
        "the leader names the member that did not answer"
    );
}
