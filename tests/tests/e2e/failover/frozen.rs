//! Something freezes and wakes again: the leader's agent (demoted at once when it wakes), a
//! stale primary woken after its successor died (never takes the key back), a backend that
//! holds up a restart of the leader past `ttl` (the key stays).

use std::time::{Duration, Instant};

use patrol_dcs::History;
use patrol_tests::{assert_holds_for, wait_until, Cluster, Signal};

use super::{
    assert_few_acked_writes_lost, assert_key_never_back, assert_no_return, wait_new_leader,
    wait_writes_on,
};
use crate::support::workload::{
    agent_log_lines, describe_changes, last_run_log, primary_timeline, secs_since,
    wait_streaming_from, LeaderWatch, Prober, Writer,
};
use crate::support::{in_recovery, start_all, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT, TTL};

/// Rows D-1 and R-2: the leader's agent is frozen (SIGSTOP) longer than ttl; a replica takes
/// over; once thawed the old node demotes at once, is rewound and follows, and never takes the
/// key back. The agents here have no watchdog (their default, `/dev/watchdog`, is absent or not
/// theirs to open), so its PostgreSQL stays writable while the agent is frozen and only the writer's view is checked: writes
/// never return to the old node. With a watchdog the window is closed: the frozen leader's
/// host is reset before its key expires (`watchdog::frozen_leader_agent_is_reset_by_the_watchdog_before_its_key_expires`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_leader_agent_is_demoted_after_waking() {
    let mut c = Cluster::new(3).expect("cluster");
    let old = start_all(&mut c).await;
    let tl_before = primary_timeline(&c, old).await.expect("timeline");

    let t0 = Instant::now();
    let watch = LeaderWatch::start(&c).await.expect("leader watch");
    let prober = Prober::start(&c);
    let writer = Writer::start(&c, old).await.expect("writer");
    wait_writes_on(&writer, &c, old, t0).await;

    let stop_at = Instant::now();
    c.stop_node(old, Signal::SIGSTOP).expect("SIGSTOP agent");
    let new = wait_new_leader(&c, old, TTL + Duration::from_secs(15))
        .await
        .expect("a replica takes over while the leader's agent is frozen");
    let promoted_at = Instant::now();
    let tl_new = primary_timeline(&c, new).await.expect("new timeline");
    assert!(
        tl_new > tl_before,
        "new timeline {tl_new} must be above {tl_before}"
    );
    tokio::time::sleep_until((stop_at + TTL + Duration::from_secs(5)).into()).await;
    let cont_at = Instant::now();
    c.stop_node(old, Signal::SIGCONT).expect("SIGCONT agent");

    // The woken agent demotes at once: not writable within 10 s, in recovery within 20 s.
    let cl = &c;
    wait_until(
        &format!("{} to stop being a primary", c.name(old)),
        Duration::from_secs(10),
        || async move {
            match in_recovery(cl, old).await {
                Ok(false) => Ok(None),
                Ok(true) | Err(_) => Ok(Some(())),
            }
        },
    )
    .await
    .expect("the old primary is demoted within 10 s of SIGCONT");
    let demoted_at = Instant::now();
    let remaining = (cont_at + Duration::from_secs(20)).saturating_duration_since(Instant::now());
    wait_until(
        &format!("{} to be in recovery", c.name(old)),
        remaining,
        || async move { Ok(in_recovery(cl, old).await?.then_some(())) },
    )
    .await
    .expect("the old primary is in recovery within 20 s of SIGCONT");
    let in_recovery_at = Instant::now();
    wait_streaming_from(&c, old, new, tl_new, HEALTHY_TIMEOUT)
        .await
        .expect("the old primary streams from the new leader");
    wait_writes_on(&writer, &c, new, demoted_at).await;
    assert_eq!(
        c.leader().await.expect("leader").as_deref(),
        Some(c.name(new))
    );

    let log = writer.stop().await;
    let probes = prober.stop().await;
    let changes = watch.stop();
    eprintln!("{}", log.summary(t0));
    eprintln!("leader key:\n{}", describe_changes(&changes, t0));
    let taken = changes
        .iter()
        .find(|ch| ch.holder.as_deref().is_some_and(|h| h != c.name(old)));
    let on_old_after_takeover = taken.map(|t| {
        log.acked()
            .iter()
            .filter(|a| a.node == old && a.end > t.at)
            .count()
    });
    eprintln!(
        "SIGSTOP at {:+.3}s; key to {} after {:?}; {} writable after {:.3}s; SIGCONT at \
         {:+.3}s; old primary not writable {:.3}s and in recovery {:.3}s after SIGCONT; \
         writes acknowledged by the frozen old primary after the takeover: {:?}; longest \
         two-primary span seen by the prober: {:?}",
        secs_since(t0, stop_at),
        c.name(new),
        taken.map(|ch| ch.at.saturating_duration_since(stop_at)),
        c.name(new),
        (promoted_at - stop_at).as_secs_f64(),
        secs_since(t0, cont_at),
        (demoted_at - cont_at).as_secs_f64(),
        (in_recovery_at - cont_at).as_secs_f64(),
        on_old_after_takeover,
        probes.longest_multi_primary_span()
    );
    eprintln!("demote/rewind log lines of {}:", c.name(old));
    for l in agent_log_lines(&c, old, "demot")
        .into_iter()
        .chain(agent_log_lines(&c, old, "rewind"))
    {
        eprintln!("  {l}");
    }

    assert_key_never_back(&changes, &c, old, t0);
    assert_no_return(&log, t0);
    // Writes the frozen old primary acknowledged after the replica took over are lost (known
    // limitation without a watchdog to reset its host, see `watchdog.rs`); what it acknowledged before the takeover (give or take the
    // streaming delay) must survive.
    let taken_at = taken.expect("the key moved").at;
    assert_few_acked_writes_lost(
        &c,
        new,
        &log,
        t0,
        old,
        (
            taken_at - Duration::from_secs(1),
            cont_at + Duration::from_secs(10),
        ),
    )
    .await;
    let late: Vec<_> = probes
        .rounds
        .iter()
        .filter(|r| r.start > cont_at + Duration::from_secs(10) && r.primaries().len() >= 2)
        .collect();
    assert!(
        late.is_empty(),
        "two primaries more than 10 s after SIGCONT:\n{}",
        probes.describe(t0, cont_at, Instant::now())
    );
}

/// Row U-3 (Patroni's PR #2787): the leader's agent is frozen past its lease; the replica
/// promotes (timeline 2) and publishes the history, then dies too. The old leader, woken with
/// its PostgreSQL still a primary on timeline 1 and no leader key in etcd, must not take the
/// key: it demotes, and when the new leader's node comes back, that node leads again and the
/// old one is rewound onto the new timeline and follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_primary_woken_after_the_new_leader_died_never_serves_writes() {
    let mut c = Cluster::new(2).expect("cluster");
    let old = start_all(&mut c).await;
    let new = 1 - old;
    let tl_before = primary_timeline(&c, old).await.expect("timeline");
    let t0 = Instant::now();
    let watch = LeaderWatch::start(&c).await.expect("leader watch");

    c.stop_node(old, Signal::SIGSTOP).expect("SIGSTOP agent");
    let promoted = wait_new_leader(&c, old, TTL + Duration::from_secs(15))
        .await
        .expect("the replica takes over while the leader's agent is frozen");
    assert_eq!(promoted, new);
    let tl_new = primary_timeline(&c, new).await.expect("new timeline");
    assert!(tl_new > tl_before, "timeline {tl_new} after {tl_before}");
    let cl = &c;
    wait_until(
        "the history of the promotion",
        PROPAGATION_TIMEOUT,
        || async move {
            let raw = cl.etcd_get("history").await?.unwrap_or_default();
            Ok(History::parse(&raw)
                .is_some_and(|h| h.cluster_timeline() >= u64::from(tl_new))
                .then_some(()))
        },
    )
    .await
    .expect("the new leader publishes the history");

    // The new leader's host is lost; its key expires.
    let postmaster = c.postmaster_pid(new).expect("the new leader's postmaster");
    c.kill_node(new);
    nix::sys::signal::kill(postmaster, Signal::SIGKILL).expect("SIGKILL the postmaster");
    let cl = &c;
    wait_until(
        "the leader key to expire",
        TTL + Duration::from_secs(15),
        || async move { Ok(cl.leader().await?.is_none().then_some(())) },
    )
    .await
    .expect("the dead leader's key expires");

    // The stale primary wakes: it must not lead, and stops being writable.
    let cont_at = Instant::now();
    c.stop_node(old, Signal::SIGCONT).expect("SIGCONT agent");
    wait_until(
        &format!("{} to stop being a primary", c.name(old)),
        Duration::from_secs(20),
        || async move {
            match in_recovery(cl, old).await {
                Ok(false) => Ok(None),
                Ok(true) | Err(_) => Ok(Some(())),
            }
        },
    )
    .await
    .expect("the stale primary demotes");
    let demoted_after = cont_at.elapsed();
    // It decided not to race, and says why; the key is still free (the leader watch below
    // also checks it never held it).
    let refusal = format!("my timeline {tl_before} is behind last known cluster timeline");
    wait_until(
        "the stale primary's refusal to race",
        Duration::from_secs(20),
        || {
            let refusal = refusal.clone();
            async move { Ok(last_run_log(cl, old).contains(&refusal).then_some(())) }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", last_run_log(&c, old)));
    assert_eq!(
        c.leader().await.expect("etcd").as_deref(),
        None,
        "the stale primary took the leader key:\n{}",
        last_run_log(&c, old)
    );

    // The new leader's node comes back: it leads again, the stale one is rewound and follows.
    c.start_node(new).expect("restart the new leader's agent");
    let back = wait_new_leader(&c, old, HEALTHY_TIMEOUT)
        .await
        .expect("the new leader's node leads again");
    assert_eq!(back, new);
    let tl_now = primary_timeline(&c, new).await.expect("timeline");
    wait_streaming_from(&c, old, new, tl_now, HEALTHY_TIMEOUT)
        .await
        .expect("the stale primary is rewound and follows");
    let changes = watch.stop();
    eprintln!(
        "demoted {:.3}s after SIGCONT; leader key:\n{}",
        demoted_after.as_secs_f64(),
        describe_changes(&changes, t0)
    );
    assert_key_never_back(&changes, &c, old, t0);
}

/// Row S-2.2 for `POST /restart`: a restart of the leader slowed past `ttl` (a backend frozen
/// with SIGSTOP keeps the fast shutdown waiting) runs as a tracked task: the HA loop keeps
/// refreshing the leader key meanwhile, so nobody promotes, and when the stop completes the
/// leader starts again as primary, holding the key, on the same timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_restart_of_the_leader_keeps_the_key() {
    let mut c = Cluster::new(2).expect("cluster");
    let leader = start_all(&mut c).await;
    let replica = 1 - leader;
    let tl = primary_timeline(&c, leader).await.expect("timeline");
    let t0 = Instant::now();
    let watch = LeaderWatch::start(&c).await.expect("leader watch");

    // A backend that cannot exit: the fast shutdown waits for it.
    let session = c.connect(leader).await.expect("connect");
    let backend: i32 = session
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let backend = nix::unistd::Pid::from_raw(backend);
    nix::sys::signal::kill(backend, Signal::SIGSTOP).expect("SIGSTOP the backend");

    let url = format!("{}/restart", c.api_url(leader));
    let restart = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .post(url)
            .body("{}")
            .timeout(Duration::from_secs(120))
            .send()
            .await?;
        let code = r.status().as_u16();
        Ok::<_, anyhow::Error>((code, r.text().await?))
    });
    // Longer than ttl: the key must stay, the replica must stay a replica.
    let (cl, restarting) = (&c, &restart);
    let (leader_name, replica_name) = (c.name(leader), c.name(replica));
    assert_holds_for(
        "the restart to wait, holding the key",
        TTL + Duration::from_secs(5),
        || async move {
            anyhow::ensure!(
                !restarting.is_finished(),
                "the restart did not wait for the frozen backend"
            );
            let holder = cl.leader().await?;
            anyhow::ensure!(
                holder.as_deref() == Some(leader_name),
                "the leader key expired during the restart: it names {holder:?}"
            );
            anyhow::ensure!(
                in_recovery(cl, replica).await?,
                "the replica {replica_name} promoted during the leader's restart"
            );
            Ok(())
        },
    )
    .await
    .expect("the key stays while the restart waits");

    nix::sys::signal::kill(backend, Signal::SIGCONT).expect("SIGCONT the backend");
    let (code, text) = restart
        .await
        .expect("join")
        .expect("the restart request is answered");
    assert_eq!((code, text.as_str()), (200, "restarted successfully"));
    drop(session);
    let cl = &c;
    wait_until(
        "the leader to be a primary again",
        PROPAGATION_TIMEOUT,
        || async move { Ok((!in_recovery(cl, leader).await?).then_some(())) },
    )
    .await
    .expect("primary after the restart");
    assert_eq!(primary_timeline(&c, leader).await.expect("timeline"), tl);
    let changes = watch.stop();
    eprintln!("leader key:\n{}", describe_changes(&changes, t0));
    assert!(
        changes
            .iter()
            .all(|ch| ch.holder.as_deref() == Some(c.name(leader))),
        "the leader key changed hands:\n{}",
        describe_changes(&changes, t0)
    );
}
