//! End to end: failures of the leader (PostgreSQL crash, host loss, SIGTERM, a frozen agent),
//! an etcd outage and a lagging replica, on a real 3-node cluster (real etcd, PostgreSQL 15),
//! with a client writing all along. Rows C-*, D-*, A-*, R-*, U-* of `docs/ha-decision-table.md`.
//!
//! Every test checks what the client saw: acknowledged rows survive on the final primary (all
//! of them for the clean cases; for the asynchronous ones, at most the few acknowledged just
//! before the fault may be lost, and they are counted and reported), and once acknowledged
//! writes moved from one node to another they never went back.

use std::time::{Duration, Instant};

use patrol_dcs::History;
use patrol_tests::{wait_until, Cluster, Signal};

use crate::support::workload::{
    agent_log_lines, agent_log_marks, agent_log_since, checkpoint_timeline, describe_changes,
    last_run_log, primary_timeline, secs_since, wait_streaming_from, written_ids, LeaderChange,
    LeaderWatch, ProbeLog, Prober, WriteLog, Writer,
};
use crate::support::{
    in_recovery, index_of, start_all, wait_healthy, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT,
};

/// The harness's `ttl` (seconds).
const TTL: Duration = Duration::from_secs(10);
/// Writes to acknowledge on a node before a fault, and again after it.
const WRITES: usize = 10;
/// `maximum_lag_on_failover` of the harness's `bootstrap.dcs`.
const MAX_LAG: f64 = 1_048_576.0;

fn all(cluster: &Cluster) -> Vec<usize> {
    (0..cluster.len()).collect()
}

/// Waits until the leader key names a node other than `old` and that node is a writable
/// primary; returns its index.
async fn wait_new_leader(
    cluster: &Cluster,
    old: usize,
    timeout: Duration,
) -> anyhow::Result<usize> {
    let what = format!("a leader other than {} to be primary", cluster.name(old));
    wait_until(&what, timeout, || async move {
        let Some(name) = cluster.leader().await? else {
            anyhow::bail!("no leader key");
        };
        let Some(i) = index_of(cluster, &name) else {
            anyhow::bail!("leader key names unknown member {name:?}");
        };
        if i == old {
            anyhow::bail!("the leader key still names {name}");
        }
        if in_recovery(cluster, i).await? {
            anyhow::bail!("{name} holds the key but is still in recovery");
        }
        Ok(Some(i))
    })
    .await
}

/// Waits until the writer has `WRITES` acknowledged writes on `node` started after `after`.
async fn wait_writes_on(writer: &Writer, cluster: &Cluster, node: usize, after: Instant) {
    writer
        .wait_acked(
            &format!("writes acknowledged by {}", cluster.name(node)),
            WRITES,
            PROPAGATION_TIMEOUT,
            |a| a.node == node && a.start > after,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", writer.snapshot().summary(after)));
}

/// Every acknowledged id is on node `i`.
async fn assert_no_acked_write_lost(cluster: &Cluster, i: usize, log: &WriteLog, t0: Instant) {
    let present = written_ids(cluster, i).await.expect("read written ids");
    let missing = log.missing(&present);
    assert!(
        missing.is_empty(),
        "{} acknowledged writes are missing on the primary {}: {:?}\n{}",
        missing.len(),
        cluster.name(i),
        missing
            .iter()
            .map(|a| format!(
                "id {} on {} acked at {:+.3}s",
                a.id,
                log.name(a.node),
                secs_since(t0, a.end)
            ))
            .collect::<Vec<_>>(),
        log.summary(t0)
    );
    eprintln!(
        "all {} acknowledged writes are on {}",
        log.acked().len(),
        cluster.name(i)
    );
}

/// Acknowledged ids missing on node `i` (asynchronous replication may lose a few): reported,
/// and each must have been acknowledged by `old` within `[from, to]`.
async fn assert_few_acked_writes_lost(
    cluster: &Cluster,
    i: usize,
    log: &WriteLog,
    t0: Instant,
    old: usize,
    (from, to): (Instant, Instant),
) -> usize {
    let present = written_ids(cluster, i).await.expect("read written ids");
    let missing = log.missing(&present);
    eprintln!(
        "{} of {} acknowledged writes are missing on the final primary {}",
        missing.len(),
        log.acked().len(),
        cluster.name(i)
    );
    for a in &missing {
        eprintln!(
            "  lost: id {} acked by {} at {:+.3}s",
            a.id,
            log.name(a.node),
            secs_since(t0, a.end)
        );
    }
    let unexpected: Vec<String> = missing
        .iter()
        .filter(|a| a.node != old || a.end < from || a.end > to)
        .map(|a| {
            format!(
                "id {} acked by {} at {:+.3}s",
                a.id,
                log.name(a.node),
                secs_since(t0, a.end)
            )
        })
        .collect();
    assert!(
        unexpected.is_empty(),
        "acknowledged writes lost outside the window {:+.3}s..{:+.3}s on {}: {unexpected:?}\n{}",
        secs_since(t0, from),
        secs_since(t0, to),
        log.name(old),
        log.summary(t0)
    );
    missing.len()
}

fn assert_no_return(log: &WriteLog, t0: Instant) {
    if let Err(e) = log.check_no_return(t0) {
        panic!("{e}");
    }
}

/// No prober round saw two primaries.
fn assert_never_two_primaries(probes: &ProbeLog, t0: Instant) {
    let multi = probes.multi_primary_rounds();
    assert!(
        multi.is_empty(),
        "{} of {} prober rounds saw 2+ primaries:\n{}",
        multi.len(),
        probes.rounds.len(),
        probes.describe_multi_primary(t0)
    );
}

/// The leader key never named `old` after it first named another member.
fn assert_key_never_back(changes: &[LeaderChange], cluster: &Cluster, old: usize, t0: Instant) {
    let old_name = cluster.name(old);
    let Some(moved) = changes
        .iter()
        .position(|c| c.holder.as_deref().is_some_and(|h| h != old_name))
    else {
        panic!(
            "the leader key never moved away from {old_name}:\n{}",
            describe_changes(changes, t0)
        );
    };
    assert!(
        !changes[moved..]
            .iter()
            .any(|c| c.holder.as_deref() == Some(old_name)),
        "the leader key went back to {old_name}:\n{}",
        describe_changes(changes, t0)
    );
}

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
/// at once, a replica promotes, and the old node is rewound and follows it.
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
    assert_no_acked_write_lost(&c, new, &log, t0).await;
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

/// Rows D-1 and R-2: the leader's agent is frozen (SIGSTOP) longer than ttl; a replica takes
/// over; once thawed the old node demotes at once, is rewound and follows, and never takes the
/// key back. Its PostgreSQL stays writable while the agent is frozen (fencing is the router's
/// job), so only the writer's view is checked: writes never return to the old node.
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
    // limitation without fencing); what it acknowledged before the takeover (give or take the
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
    tokio::time::sleep(TTL + Duration::from_secs(5)).await;
    assert!(
        !restart.is_finished(),
        "the restart did not wait for the frozen backend"
    );
    assert_eq!(
        c.leader().await.expect("etcd").as_deref(),
        Some(c.name(leader)),
        "the leader key expired during the restart"
    );
    assert!(
        in_recovery(&c, replica).await.expect("replica"),
        "the replica promoted during the leader's restart"
    );

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
    // Keep watching a while after the takeover: the paused replica must not grab the key.
    tokio::time::sleep(Duration::from_secs(5)).await;
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
    assert_eq!(
        c.leader().await.expect("leader").as_deref(),
        Some(c.name(fresh))
    );
    assert!(
        in_recovery(&c, paused).await.expect("paused replica state"),
        "the lagging replica must still be in recovery"
    );
}
