//! STYLE.md testing level 2: a deterministic simulation that runs the real agent.
//!
//! Three (and five) nodes each run the agent's own HA loop (`patrol_agent::ha::Ha::run`, the
//! pure core `patrol-ha` inside it) on one current-thread tokio runtime with paused time,
//! behind its ports: an in-memory etcd with etcd's semantics (`etcd.rs`: revisions, leases in
//! simulated time, `create_revision == 0` and value-compare transactions), a simulated
//! PostgreSQL each (`pg.rs`: data directory, pg_control state, WAL as branches of history plus
//! a position, timelines, `standby.signal`), and peers answering `GET /patroni` through the
//! agent's own rendering of its shared state. Nothing of the runner is re-implemented here.
//!
//! Faults come from a seeded RNG (`driver.rs`): PostgreSQL crashes, agent crashes and restarts
//! (its tasks die with it; fresh memory, new lease), frozen agents (PostgreSQL still serving),
//! partitions of one node from etcd, and lease expiry through time passing. Every 10 ms of
//! simulated time the world checks (`world.rs`): (a) at most one writable primary among the
//! nodes whose agent runs (a frozen or dead agent cannot fence its PostgreSQL; the watchdog,
//! which the simulation does not model, resets such a host), (b) it holds the leader key unless it is cut off from etcd or the
//! cluster is bootstrapping, (c) the `history` timeline never decreases, (d) `initialize`
//! never changes once it holds a sysid. A node whose agent just came back (thawed, restarted)
//! is checked again from its second cycle on. After the faults stop the cluster must converge
//! within 120 s: one leader, every other node a running replica streaming from it on its branch
//! of WAL history, and stay so for 10 s. Acknowledged commits the final leader does not have
//! are counted (`lost_acked_commits`, one per WAL branch whose last acknowledged commit is
//! missing): the price of asynchronous replication; synchronous and quorum runs assert 0 (the
//! simulated primary acknowledges a commit only once `synchronous_standby_names` lets it).
//!
//! The default seeds are fixed (reproducible in CI); `PATROL_SIM_RANDOM=1` draws new ones.
//! Each run prints its seed; replay one with `PATROL_SIM_SEED=<seed>`, print every event with
//! `PATROL_SIM_TRACE=1`, run more seeds with `PATROL_SIM_RUNS=<n>`:
//! `PATROL_SIM_SEED=<seed> PATROL_SIM_TRACE=1 cargo test -p patrol-sim --test simulation -- --nocapture`.
//! `PATROL_SIM_LOG=info` prints the agents' log lines too.
//! `PATROL_SIM_LENIENT=1` tolerates replicas stuck on WAL that diverged from the leader's.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use patrol_sim::driver::{self, Sim};
use patrol_sim::world::{self, lock, Rng, Stats};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a runtime")
}

/// Runs one seed: `secs` of faults, then quiet until the cluster converges.
fn run(seed: u64, nodes: usize, secs: u64, mode: &str) -> Stats {
    if std::env::var_os("PATROL_SIM_LOG").is_some() {
        // The agents' own log lines (their cycle span names the member), e.g. `info`.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("PATROL_SIM_LOG"))
            .with_test_writer()
            .try_init();
    }
    eprintln!("simulation: {nodes} nodes, synchronous_mode {mode}, {secs} s of faults, seed {seed} (replay: PATROL_SIM_SEED={seed})");
    runtime().block_on(async {
        let mut sim = Sim::with_mode(seed, nodes, mode);
        sim.faults(secs).await;
        sim.assert_ok();
        if lock(&sim.w).sysid.is_none() {
            lock(&sim.w).fail("the cluster never bootstrapped");
            sim.assert_ok();
        }
        sim.converge().await;
        sim.count_lost_commits();
        sim.stop();
        let stats = sim.stats();
        eprintln!("  seed {seed}: {stats:?}");
        stats
    })
}

fn seeds(count: u64) -> Vec<u64> {
    if let Ok(s) = std::env::var("PATROL_SIM_SEED") {
        return vec![s.trim().parse().expect("PATROL_SIM_SEED is a u64")];
    }
    let count = std::env::var("PATROL_SIM_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(count);
    // CI runs a fixed set of seeds, so a run is reproducible; `PATROL_SIM_RANDOM=1` explores
    // new ones (each printed for replay).
    let base = if std::env::var_os("PATROL_SIM_RANDOM").is_some() {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64
    } else {
        0x5EED_0F9A_7B01
    };
    let mut r = Rng(base);
    (0..count).map(|_| r.draw()).collect()
}

/// Runs the seeds on the available cores (each run is deterministic on its own).
fn run_many(nodes: usize, count: u64, secs: u64, mode: &str) -> Stats {
    let seeds = seeds(count);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let results: Vec<std::thread::Result<Vec<Stats>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let mine: Vec<u64> = seeds.iter().copied().skip(w).step_by(workers).collect();
                scope.spawn(move || {
                    mine.into_iter()
                        .map(|seed| run(seed, nodes, secs, mode))
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join()).collect()
    });
    let mut total = Stats::default();
    for r in results {
        match r {
            Ok(stats) => {
                for s in stats {
                    total.faults += s.faults;
                    total.promotions += s.promotions;
                    total.clones += s.clones;
                    total.rewinds += s.rewinds;
                    total.leader_changes += s.leader_changes;
                    total.stuck_diverged += s.stuck_diverged;
                    total.lost_acked_commits += s.lost_acked_commits;
                    total.converged_after_ms = total.converged_after_ms.max(s.converged_after_ms);
                }
            }
            // The first failure, with its seed, trace and message.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    eprintln!("total: {total:?}");
    // The runs must have exercised failover, not just watched a quiet cluster.
    assert!(total.faults > 0, "no faults were injected: {total:?}");
    assert!(total.promotions > 0, "no failover happened: {total:?}");
    total
}

#[test]
fn three_nodes_with_faults() {
    run_many(3, 10, 600, "off");
}

/// Synchronous replication: no commit a primary acknowledged (its synchronous standbys had
/// it) is missing from the final leader, whatever the faults.
#[test]
fn three_nodes_synchronous_mode_loses_no_acknowledged_commit() {
    let total = run_many(3, 6, 600, "on");
    assert_eq!(total.lost_acked_commits, 0, "{total:?}");
}

#[test]
fn three_nodes_quorum_mode_loses_no_acknowledged_commit() {
    let total = run_many(3, 4, 600, "quorum");
    assert_eq!(total.lost_acked_commits, 0, "{total:?}");
}

#[test]
fn five_nodes_with_faults() {
    run_many(5, 3, 400, "off");
}

/// The leader race winner freezes right after taking the key, before its promotion ran; its
/// lease expires and the third node takes over. When it thaws, its promotion must not make a
/// second primary (Patroni: "lost leader before promote" / "lost leader lock during promote").
#[test]
fn a_node_frozen_while_promoting_does_not_come_back_as_a_second_primary() {
    runtime().block_on(async {
        let mut sim = Sim::new(1, 3);
        lock(&sim.w).replay =
            "scripted: a_node_frozen_while_promoting_does_not_come_back_as_a_second_primary".into();
        sim.converge().await;
        let old = {
            let w = lock(&sim.w);
            w.index(w.etcd.value("leader").expect("converged"))
                .expect("a node")
        };
        // The leader's node is lost: agent and PostgreSQL.
        sim.crash_agent(old);
        lock(&sim.w).nodes[old].pg.running = false;
        lock(&sim.w).freeze_next_winner = Some(Duration::from_secs(20));
        tokio::time::sleep(Duration::from_secs(60)).await;
        sim.assert_ok();
        let (frozen, leader) = {
            let w = lock(&sim.w);
            let frozen = w.frozen_winner.expect("a replica won the race and froze");
            (frozen, w.etcd.value("leader").map(str::to_string))
        };
        let (frozen_name, frozen_agent) = {
            let w = lock(&sim.w);
            (w.nodes[frozen].name.clone(), w.nodes[frozen].agent)
        };
        assert_ne!(leader, Some(frozen_name), "the third node took over");
        assert_eq!(frozen_agent, world::Agent::Live, "the winner thawed");
        sim.start_agent(old);
        sim.converge().await;
        sim.stop();
    });
}

/// Row U-3: the leader freezes past its lease, the other node promotes (and publishes the
/// history), then that node is lost too. The old leader thaws with its PostgreSQL still a
/// primary on the old timeline and no leader key: it must never take the key (that would serve
/// writes on the abandoned timeline). When the lost node comes back, the cluster converges on
/// the new timeline with the old leader rewound.
#[test]
fn a_stale_primary_woken_after_the_new_leader_died_never_takes_the_key() {
    runtime().block_on(async {
        let mut sim = Sim::new(2, 2);
        lock(&sim.w).replay =
            "scripted: a_stale_primary_woken_after_the_new_leader_died_never_takes_the_key".into();
        sim.converge().await;
        let old = {
            let w = lock(&sim.w);
            w.index(w.etcd.value("leader").expect("converged"))
                .expect("a node")
        };
        let new = 1 - old;
        let (old_name, new_name) = {
            let w = lock(&sim.w);
            (w.nodes[old].name.clone(), w.nodes[new].name.clone())
        };
        sim.freeze(old);
        let mut waited = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let w = lock(&sim.w);
            if w.max_timeline >= 2 && w.etcd.value("leader") == Some(new_name.as_str()) {
                break;
            }
            waited += 1;
            assert!(waited < 1_200, "the other node never took over");
        }
        // The new leader's node is lost: agent and PostgreSQL.
        sim.crash_agent(new);
        lock(&sim.w).nodes[new].pg.running = false;
        while lock(&sim.w).etcd.value("leader").is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The stale primary thaws while nobody leads.
        driver::thaw(&sim.w, old);
        for _ in 0..200 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            sim.assert_ok();
            assert_ne!(
                lock(&sim.w).etcd.value("leader"),
                Some(old_name.as_str()),
                "the stale primary took the leader key"
            );
        }
        sim.start_agent(new);
        sim.converge().await;
        sim.stop();
    });
}
