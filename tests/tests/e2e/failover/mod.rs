//! End to end: failures of the leader (PostgreSQL crash, host loss, SIGTERM, a frozen agent),
//! an etcd outage and a lagging replica, on a real 3-node cluster (real etcd, PostgreSQL 15),
//! with a client writing all along. Rows C-*, D-*, A-*, R-*, U-* of `docs/ha-decision-table.md`.
//!
//! Every test checks what the client saw: acknowledged rows survive on the final primary (all
//! of them for the clean cases; for the asynchronous ones, at most the few acknowledged around
//! the fault may be lost, and they are counted and reported), and once acknowledged writes
//! moved from one node to another they never went back.
//!
//! `leader_faults`: the leader's PostgreSQL crashes, its host is lost, its agent gets SIGTERM;
//! `frozen`: a frozen agent, a stale primary woken after a failover, a restart held up by a
//! frozen backend; `outage_and_lag`: etcd frozen past `ttl`, a lagging replica; `watchdog`: a
//! frozen leader's watchdog fires before its key expires, and it follows ttl, pause and stop.
//! This file holds the checks they share.

mod failsafe;
mod frozen;
mod leader_faults;
mod outage_and_lag;
mod watchdog;

use std::time::{Duration, Instant};

use patrol_tests::{wait_until, Cluster};

use crate::support::workload::{
    describe_changes, secs_since, written_ids, LeaderChange, ProbeLog, WriteLog, Writer,
};
use crate::support::{in_recovery, index_of, PROPAGATION_TIMEOUT};

/// Writes to acknowledge on a node before a fault, and again after it.
const WRITES: usize = 10;

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
