//! The leader goes away: its PostgreSQL crashes (restarted in place, or handed over with
//! `primary_start_timeout: 0`), its host is lost (the key expires, the old primary is rewound),
//! its agent is stopped with SIGTERM (a clean, quick handover).

use std::time::{Duration, Instant};

use patrol_dcs::History;
use patrol_tests::{wait_until, Cluster, Signal};

use super::{
    all, assert_few_acked_writes_lost, assert_key_never_back, assert_never_two_primaries,
    assert_no_acked_write_lost, assert_no_return, wait_new_leader, wait_writes_on,
};
use crate::support::workload::{
    agent_log_marks, agent_log_since, checkpoint_timeline, describe_changes, last_run_log,
    primary_timeline, secs_since, wait_streaming_from, written_ids, LeaderWatch, Prober, Writer,
};
use crate::support::{
    in_recovery, start_all, wait_healthy, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT, TTL,
};

/// Row C-1: the leader's postmaster is SIGKILLed; the agent restarts it in place as primary on
/// the same timeline, keeping the leader key; no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmaster_crash_restarts_in_place() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let name = c.name(leader).to_owned();
    let tl_before = checkpoint_timeline(&c, leader).await.expect("timeline");

    let t0 = Instant::now();
    let watch = LeaderWatch::start(&c).await.expect("leader watch");
    let prober = Prober::start(&c);
    let writer = Writer::start(&c, leader).await.expect("writer");
    wait_writes_on(&writer, &c, leader, t0).await;

    let old_pid = c.postmaster_pid(leader).expect("postmaster pid");
    let crash_at = Instant::now();
    c.signal_postgres(leader, Signal::SIGKILL)
        .expect("SIGKILL postmaster");

    let cl = &c;
    wait_until(
        &format!("{name} to run a new postmaster as primary"),
        PROPAGATION_TIMEOUT,
        || async move {
            match cl.postmaster_pid(leader) {
                Some(pid) if pid != old_pid => {}
                other => anyhow::bail!("postmaster pid {other:?} (crashed: {old_pid})"),
            }
            Ok((!in_recovery(cl, leader).await?).then_some(()))
        },
    )
    .await
    .expect("leader restarted in place");
    let back_at = Instant::now();
    wait_writes_on(&writer, &c, leader, crash_at).await;

    let log = writer.stop().await;
    let probes = prober.stop().await;
    let changes = watch.stop();
    eprintln!("{}", log.summary(t0));
    eprintln!(
        "postmaster SIGKILLed at {:+.3}s; primary again after {:.3}s; client write outage {:?}",
        secs_since(t0, crash_at),
        (back_at - crash_at).as_secs_f64(),
        log.outage_around(crash_at)
    );
    eprintln!("leader key:\n{}", describe_changes(&changes, t0));

    assert_eq!(c.leader().await.expect("leader").as_deref(), Some(&*name));
    assert!(
        changes
            .iter()
            .all(|ch| ch.holder.as_deref() == Some(&*name)),
        "the leader key must stay with {name} throughout:\n{}",
        describe_changes(&changes, t0)
    );
    let tl_after = checkpoint_timeline(&c, leader).await.expect("timeline");
    assert_eq!(tl_after, tl_before, "timeline after the in-place restart");
    assert_eq!(
        primary_timeline(&c, leader).await.expect("WAL timeline"),
        tl_before
    );
    assert!(
        log.acked().iter().all(|a| a.node == leader),
        "every acknowledged write must be on {name}:\n{}",
        log.summary(t0)
    );
    assert_no_acked_write_lost(&c, leader, &log, t0).await;
    assert_no_return(&log, t0);
    assert_never_two_primaries(&probes, t0);

    // The replicas follow the restarted primary again.
    wait_healthy(&c, &all(&c), HEALTHY_TIMEOUT)
        .await
        .expect("healthy after the crash");
}

/// Row C-2: with `primary_start_timeout: 0` the leader whose PostgreSQL died releases the key
/// at once, a replica promotes, and the old node is rewound and follows it. A failover with
/// asynchronous replication: writes acknowledged around the crash may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_start_timeout_zero_fails_over() {
    let mut c = Cluster::new(3).expect("cluster");
    for i in 0..c.len() {
        c.set_config_override(i, |yaml| {
            *yaml = yaml.replace(
                "maximum_lag_on_failover: 1048576,",
                "maximum_lag_on_failover: 1048576, primary_start_timeout: 0,",
            );
        });
    }
    assert!(
        c.config_yaml(0).contains("primary_start_timeout: 0"),
        "{}",
        c.config_yaml(0)
    );
    let old = start_all(&mut c).await;
    let tl_before = primary_timeline(&c, old).await.expect("timeline");

    let t0 = Instant::now();
    let watch = LeaderWatch::start(&c).await.expect("leader watch");
    let prober = Prober::start(&c);
    let writer = Writer::start(&c, old).await.expect("writer");
    wait_writes_on(&writer, &c, old, t0).await;

    let marks = agent_log_marks(&c);
    let crash_at = Instant::now();
    c.signal_postgres(old, Signal::SIGKILL)
        .expect("SIGKILL postmaster");
    let new = wait_new_leader(&c, old, PROPAGATION_TIMEOUT)
        .await
        .expect("a replica takes over");
    let promoted_at = Instant::now();
    wait_writes_on(&writer, &c, new, crash_at).await;
    let tl_new = primary_timeline(&c, new).await.expect("new timeline");
    assert!(
        tl_new > tl_before,
        "new leader's timeline {tl_new} must be above {tl_before}"
    );

    wait_streaming_from(&c, old, new, tl_new, HEALTHY_TIMEOUT)
        .await
        .expect("the old primary rejoins as a replica of the new leader");
    wait_healthy(&c, &all(&c), HEALTHY_TIMEOUT)
        .await
        .expect("healthy after the failover");

    let log = writer.stop().await;
    let probes = prober.stop().await;
    let changes = watch.stop();
    eprintln!("{}", log.summary(t0));
    eprintln!("leader key:\n{}", describe_changes(&changes, t0));
    let key_moved = changes
        .iter()
        .find(|ch| ch.holder.as_deref().is_some_and(|h| h != c.name(old)));
    eprintln!(
        "postmaster SIGKILLed at {:+.3}s; key to {} after {:?}; writable after {:.3}s; client \
         write outage {:?}",
        secs_since(t0, crash_at),
        c.name(new),
        key_moved.map(|ch| ch.at.saturating_duration_since(crash_at)),
        (promoted_at - crash_at).as_secs_f64(),
        log.outage_around(crash_at)
    );
    for i in [old, new] {
        eprintln!(
            "{} log after the crash:\n{}",
            c.name(i),
            agent_log_since(&c, i, &marks, 12)
        );
    }

    assert_eq!(
        c.leader().await.expect("leader").as_deref(),
        Some(c.name(new))
    );
    assert_key_never_back(&changes, &c, old, t0);
    // Asynchronous replication: a write the old primary acknowledged around the crash may not
    // have been streamed (a backend can even commit after its postmaster was killed, once the
    // walsenders are gone). Only those may be missing.
    assert_few_acked_writes_lost(
        &c,
        new,
        &log,
        t0,
        old,
        (crash_at - Duration::from_secs(1), promoted_at),
    )
    .await;
    assert_no_return(&log, t0);
    assert_never_two_primaries(&probes, t0);
}

/// Rows A-2, U-h and R-1: the leader's agent and postmaster are SIGKILLed together (host
/// loss); a replica takes over once the lease expires and publishes `history`; the old node's
/// restarted agent rewinds it and it streams from the new leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_host_loss_fails_over_and_old_primary_rejoins_with_rewind() {
    let mut c = Cluster::new(3).expect("cluster");
    let old = start_all(&mut c).await;
    let tl_before = primary_timeline(&c, old).await.expect("timeline");

    let t0 = Instant::now();
    let watch = LeaderWatch::start(&c).await.expect("leader watch");
    let prober = Prober::start(&c);
    let writer = Writer::start(&c, old).await.expect("writer");
    wait_writes_on(&writer, &c, old, t0).await;

    let kill_at = Instant::now();
    c.kill_node(old);
    c.signal_postgres(old, Signal::SIGKILL)
        .expect("SIGKILL postmaster");
    let new = wait_new_leader(&c, old, TTL + Duration::from_secs(15))
        .await
        .expect("a replica takes over within ttl + 15 s");
    let promoted_at = Instant::now();
    wait_writes_on(&writer, &c, new, kill_at).await;
    let tl_new = primary_timeline(&c, new).await.expect("new timeline");
    assert!(
        tl_new > tl_before,
        "new timeline {tl_new} must be above {tl_before}"
    );

    // The winner publishes the timeline switch.
    let cl = &c;
    let history = wait_until(
        &format!("a history line for timeline {tl_before}"),
        PROPAGATION_TIMEOUT,
        || async move {
            let Some(raw) = cl.etcd_get("history").await? else {
                anyhow::bail!("no history key");
            };
            let Some(h) = History::parse(&raw) else {
                anyhow::bail!("unparsable history {raw:?}");
            };
            Ok(h.lines
                .iter()
                .any(|l| l.timeline == u64::from(tl_before))
                .then_some(raw))
        },
    )
    .await
    .expect("history key");
    eprintln!("history: {history}");
    let line = History::parse(&history)
        .expect("parsed")
        .lines
        .into_iter()
        .find(|l| l.timeline == u64::from(tl_before))
        .expect("line");
    if let Some(leader) = &line.new_leader {
        assert_eq!(leader, c.name(new), "history line {line:?}");
    }

    // The old node comes back: rewound, then a replica of the new leader.
    c.start_node(old).expect("restart the old node's agent");
    wait_streaming_from(&c, old, new, tl_new, HEALTHY_TIMEOUT)
        .await
        .expect("the old primary streams from the new leader");
    let rewind_lines: Vec<String> = last_run_log(&c, old)
        .lines()
        .filter(|l| l.to_lowercase().contains("rewind"))
        .map(str::to_owned)
        .collect();
    eprintln!("{} rewind log lines: {rewind_lines:#?}", c.name(old));
    assert!(
        !rewind_lines.is_empty(),
        "the old primary's agent must have run pg_rewind; its log:\n{}",
        last_run_log(&c, old)
    );
    let rejoined_at = Instant::now();
    wait_writes_on(&writer, &c, new, rejoined_at).await;

    let log = writer.stop().await;
    let probes = prober.stop().await;
    let changes = watch.stop();
    eprintln!("{}", log.summary(t0));
    eprintln!("leader key:\n{}", describe_changes(&changes, t0));
    eprintln!(
        "host lost at {:+.3}s; {} writable after {:.3}s; client write outage {:?}",
        secs_since(t0, kill_at),
        c.name(new),
        (promoted_at - kill_at).as_secs_f64(),
        log.outage_around(kill_at)
    );

    // Rows written after the failover reach the rejoined node.
    let cl = &c;
    let after: Vec<i64> = log
        .acked()
        .iter()
        .filter(|a| a.node == new)
        .map(|a| a.id)
        .collect();
    let after = &after;
    wait_until(
        &format!(
            "the {} rows acknowledged by {} to reach {}",
            after.len(),
            c.name(new),
            c.name(old)
        ),
        PROPAGATION_TIMEOUT,
        || async move {
            let ids = written_ids(cl, old).await?;
            let missing = after.iter().filter(|id| !ids.contains(id)).count();
            if missing == 0 {
                Ok(Some(()))
            } else {
                anyhow::bail!("{missing} missing")
            }
        },
    )
    .await
    .expect("rows replicate to the rejoined node");

    assert_few_acked_writes_lost(&c, new, &log, t0, old, (kill_at - TTL, kill_at)).await;
    assert_key_never_back(&changes, &c, old, t0);
    assert_no_return(&log, t0);
    assert_never_two_primaries(&probes, t0);
}

/// Row A-1: SIGTERM to the leader's agent stops PostgreSQL (fast), releases the key, and a
/// replica takes over at once; no acknowledged write is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_leader_agent_hands_over_quickly() {
    let mut c = Cluster::new(3).expect("cluster");
    let old = start_all(&mut c).await;

    let t0 = Instant::now();
    let watch = LeaderWatch::start(&c).await.expect("leader watch");
    let prober = Prober::start(&c);
    let writer = Writer::start(&c, old).await.expect("writer");
    wait_writes_on(&writer, &c, old, t0).await;

    let marks = agent_log_marks(&c);
    let term_at = Instant::now();
    c.stop_node(old, Signal::SIGTERM).expect("SIGTERM agent");
    let new = wait_new_leader(&c, old, Duration::from_secs(15))
        .await
        .expect("a replica takes over within 15 s of SIGTERM");
    let promoted_at = Instant::now();
    wait_writes_on(&writer, &c, new, term_at).await;

    let status = c
        .wait_node_exit(old, Duration::from_secs(30))
        .await
        .expect("the agent exits after SIGTERM");
    assert_eq!(
        c.postmaster_pid(old),
        None,
        "{}'s PostgreSQL must be stopped",
        c.name(old)
    );

    let log = writer.stop().await;
    let probes = prober.stop().await;
    let changes = watch.stop();
    eprintln!("{}", log.summary(t0));
    eprintln!("leader key:\n{}", describe_changes(&changes, t0));
    let released = changes
        .iter()
        .find(|ch| ch.at >= term_at && ch.holder.is_none());
    let taken = changes
        .iter()
        .find(|ch| ch.holder.as_deref().is_some_and(|h| h != c.name(old)));
    eprintln!(
        "SIGTERM at {:+.3}s; agent exit {status}; key released after {:?}, taken by {} after \
         {:?}; writable after {:.3}s; client write outage {:?}",
        secs_since(t0, term_at),
        released.map(|ch| ch.at.saturating_duration_since(term_at)),
        c.name(new),
        taken.map(|ch| ch.at.saturating_duration_since(term_at)),
        (promoted_at - term_at).as_secs_f64(),
        log.outage_around(term_at)
    );

    for i in all(&c) {
        eprintln!(
            "{} log after SIGTERM:\n{}",
            c.name(i),
            agent_log_since(&c, i, &marks, 40)
        );
    }

    assert_key_never_back(&changes, &c, old, t0);
    assert_no_acked_write_lost(&c, new, &log, t0).await;
    assert_no_return(&log, t0);
    assert_never_two_primaries(&probes, t0);
}
