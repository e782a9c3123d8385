//! End to end: a cluster on an etcd of three members, as production runs it (real etcd
//! processes, agents, PostgreSQL 15, `patrol-router`, `patrolctl`). Every agent, the router and
//! `patrolctl` are given all three members and use the first, `e0`. Losing or freezing that
//! member costs nothing: the leader keeps its key and timeline, a session through the router
//! keeps working, `patrolctl list` answers; losing two of three takes etcd's quorum away and the
//! leader demotes, as with a single etcd stopped.
//!
//! Before each fault `e0` is made an etcd follower (etcd's raft leader moves to `e2`), so the
//! fault is only the loss of the member in use. Losing etcd's raft leader also costs an election
//! (one to two seconds, during which no member commits anything): that case is checked at the
//! client level in `dcs_etcd`.

use std::process::{Command, Stdio};

use patrol_tests::{assert_holds_for, wait_until, Cluster, Router};

use crate::support::workload::checkpoint_timeline;
use crate::support::{in_recovery, start_all, PROPAGATION_TIMEOUT, TTL};

/// Agents and PostgreSQL servers: a leader and one replica.
const NODES: usize = 2;
/// Members of the etcd cluster.
const ETCD_MEMBERS: usize = 3;

/// A healthy cluster on three etcd members, etcd's raft leader moved off `e0`, and a router
/// routing writes to the leader. Returns the leader's index.
async fn setup() -> (Cluster, usize, Router) {
    setup_with(false).await
}

/// [`setup`], with `failsafe_mode` in `bootstrap.dcs` when asked.
async fn setup_with(failsafe: bool) -> (Cluster, usize, Router) {
    let mut c = Cluster::with_etcd_members(NODES, ETCD_MEMBERS).expect("cluster");
    if failsafe {
        for i in 0..c.len() {
            c.set_config_override(i, |y| {
                *y = y.replace("dcs: {ttl: 10,", "dcs: {failsafe_mode: true, ttl: 10,");
            });
        }
    }
    let leader = start_all(&mut c).await;
    c.etcd_cluster()
        .move_leader(2)
        .await
        .expect("e2 becomes etcd's raft leader");
    let r = Router::start(&c, "").expect("router");
    let want = c.name(leader).to_owned();
    let (r_ref, want) = (&r, &want);
    wait_until(
        "the router to route writes to the leader",
        PROPAGATION_TIMEOUT,
        || async move {
            let s = r_ref.stats().await?;
            Ok((s["write_backend"]["name"].as_str() == Some(want)).then_some(()))
        },
    )
    .await
    .expect("routing");
    (c, leader, r)
}

/// The line an etcd client logs when it leaves member `e0`.
fn left_e0(c: &Cluster) -> String {
    format!("etcd member {} failed", c.etcd().endpoint())
}

/// `patrolctl list` on the cluster's patronictl config: its exit status and output.
fn patrolctl_list(c: &Cluster) -> (bool, String) {
    let config = c.patronictl_config().expect("patronictl config");
    let out = tokio::task::block_in_place(|| {
        Command::new(patrol_tests::bin("patrolctl"))
            .arg("-c")
            .arg(&config)
            .arg("list")
            .env_remove("PATRONICTL_CONFIG_FILE")
            .env_remove("DCS_URL")
            .stdin(Stdio::null())
            .output()
            .expect("run patrolctl")
    });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// What happens to `e0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// SIGKILL: connections refused.
    Kill,
    /// SIGSTOP: connections accepted, nothing answered.
    Freeze,
}

/// For 3 × ttl after `fault` on `e0`: the leader keeps its key, stays primary on its timeline,
/// and the write session opened through the router before the fault keeps writing; every agent
/// and the router log that they left `e0`; `patrolctl list` shows the leader.
async fn assert_nothing_lost(c: &mut Cluster, leader: usize, r: &Router, fault: Fault) {
    let name = c.name(leader).to_owned();
    let timeline = checkpoint_timeline(c, leader).await.expect("timeline");
    let session = r.connect_write().await.expect("a write session");
    session
        .batch_execute("CREATE TABLE em (v int)")
        .await
        .expect("create table");
    let left = left_e0(c);
    for i in 0..c.len() {
        assert!(
            !c.agent_log(i).contains(&left),
            "{} left e0 before the fault",
            c.name(i)
        );
    }
    assert!(
        !r.log().contains(&left),
        "the router left e0 before the fault"
    );
    match fault {
        Fault::Kill => c.etcd_mut().kill(),
        Fault::Freeze => c.etcd().pause().expect("SIGSTOP e0"),
    }
    let c = &*c;
    let (session, name) = (&session, &name);
    let held = assert_holds_for(
        "the leader to keep its key, and the session through the router to keep writing",
        TTL * 3,
        || async move {
            let key = c.leader().await?;
            anyhow::ensure!(key.as_deref() == Some(name.as_str()), "leader key {key:?}");
            anyhow::ensure!(!in_recovery(c, leader).await?, "{name} is in recovery");
            session.execute("INSERT INTO em VALUES (1)", &[]).await?;
            Ok(())
        },
    )
    .await;
    let (listed, list) = patrolctl_list(c);
    if fault == Fault::Freeze {
        let _ = c.etcd().resume();
    }
    held.unwrap_or_else(|e| panic!("after {fault:?} of e0: {e:#}"));
    assert_eq!(
        checkpoint_timeline(c, leader).await.expect("timeline"),
        timeline,
        "the timeline changed"
    );
    assert!(listed, "patrolctl list with e0 down: {list}");
    assert!(
        list.lines()
            .any(|l| l.contains(name.as_str()) && l.contains("Leader")),
        "patrolctl list shows the leader: {list}"
    );
    for i in 0..c.len() {
        assert!(
            c.agent_log(i).contains(&left),
            "{} did not log {left:?}",
            c.name(i)
        );
    }
    assert!(r.log().contains(&left), "the router did not log {left:?}");
}

/// The member every client uses is killed: the leader is not demoted (its key and timeline
/// stay), a session through the router keeps writing, `patrolctl list` works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_etcd_member_in_use_demotes_nobody_and_drops_no_session() {
    let (mut c, leader, r) = setup().await;
    assert_nothing_lost(&mut c, leader, &r, Fault::Kill).await;
}

/// The member every client uses is frozen (SIGSTOP: its connections stay open and silent):
/// every client leaves it within `retry_timeout`; the leader is not demoted, the session through
/// the router keeps writing, `patrolctl list` works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_etcd_member_is_left_and_demotes_nobody() {
    let (mut c, leader, r) = setup().await;
    assert_nothing_lost(&mut c, leader, &r, Fault::Freeze).await;
}

/// Two members of three killed: etcd has no quorum, and the leader (failsafe mode off) demotes
/// itself before its key can expire, as with a single etcd stopped; nobody else promotes. With
/// the members back, a leader is elected again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_two_of_three_etcd_members_demotes_the_leader() {
    let (mut c, leader, _r) = setup().await;
    c.etcd_cluster_mut().member_mut(1).kill();
    c.etcd_cluster_mut().member_mut(2).kill();
    let cl = &c;
    wait_until(
        &format!("{} to demote itself", c.name(leader)),
        TTL * 2,
        || async move { Ok(in_recovery(cl, leader).await?.then_some(())) },
    )
    .await
    .expect("the leader demotes without etcd's quorum");
    for i in 0..c.len() {
        assert!(
            in_recovery(&c, i).await.expect("pg_is_in_recovery"),
            "{} is a primary without etcd",
            c.name(i)
        );
    }

    c.etcd_cluster_mut()
        .member_mut(1)
        .restart()
        .expect("e1 restarts");
    c.etcd_cluster_mut()
        .member_mut(2)
        .restart()
        .expect("e2 restarts");
    let cl = &c;
    wait_until(
        "one primary holding the leader key again",
        PROPAGATION_TIMEOUT,
        || async move {
            let Some(name) = cl.leader().await? else {
                anyhow::bail!("no leader key");
            };
            let mut primaries = Vec::new();
            for i in 0..cl.len() {
                if let Ok(false) = in_recovery(cl, i).await {
                    primaries.push(cl.name(i).to_owned());
                }
            }
            anyhow::ensure!(
                primaries == [name.clone()],
                "leader {name}, primaries {primaries:?}"
            );
            Ok(Some(()))
        },
    )
    .await
    .expect("a leader after quorum is back");
}

/// Two members of three killed with failsafe mode on (rows D-2F): every member answers the
/// leader's `POST /failsafe`, so it stays primary and a session through the router keeps
/// writing for 3 × ttl; nobody else promotes. With the members back it still leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_two_of_three_etcd_members_with_failsafe_mode_keeps_the_primary() {
    let (mut c, leader, r) = setup_with(true).await;
    let name = c.name(leader).to_owned();
    let cl = &c;
    wait_until("the failsafe key", PROPAGATION_TIMEOUT, || async move {
        let key = cl.etcd_get("failsafe").await?.unwrap_or_default();
        Ok((0..cl.len())
            .all(|i| key.contains(&format!("\"{}\"", cl.name(i))))
            .then_some(()))
    })
    .await
    .expect("the leader writes the failsafe key");
    let session = r.connect_write().await.expect("write session");
    session
        .batch_execute("CREATE TABLE fs (n int)")
        .await
        .expect("create");
    c.etcd_cluster_mut().member_mut(1).kill();
    c.etcd_cluster_mut().member_mut(2).kill();
    let cl = &c;
    let session = &session;
    let held = assert_holds_for(
        "the leader to stay primary and the routed session to keep writing",
        TTL * 3,
        || async move {
            anyhow::ensure!(!in_recovery(cl, leader).await?, "the leader is in recovery");
            for i in (0..cl.len()).filter(|&i| i != leader) {
                anyhow::ensure!(in_recovery(cl, i).await?, "{} is a primary", cl.name(i));
            }
            session.execute("INSERT INTO fs VALUES (1)", &[]).await?;
            Ok(())
        },
    )
    .await;
    c.etcd_cluster_mut()
        .member_mut(1)
        .restart()
        .expect("e1 restarts");
    c.etcd_cluster_mut()
        .member_mut(2)
        .restart()
        .expect("e2 restarts");
    if let Err(e) = held {
        c.dump_logs();
        panic!("{e:#}");
    }
    let cl = &c;
    let name = &name;
    wait_until("the leader key again", PROPAGATION_TIMEOUT, || async move {
        Ok((cl.leader().await?.as_deref() == Some(name.as_str())).then_some(()))
    })
    .await
    .expect("the same leader once quorum is back");
    assert!(
        c.agent_log(leader)
            .contains("continue to run as a leader because failsafe mode is enabled"),
        "the leader held on its members' answers"
    );
}
