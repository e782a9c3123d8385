//! Running a simulated cluster: the nodes' real agents (`Ha::run`) on one current-thread tokio
//! runtime with paused time, the simulated PostgreSQL servers taking writes and streaming,
//! faults from the seeded RNG, and the invariants checked every 10 ms of simulated time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use patrol_agent::config::{load, ConfigSource};
use patrol_agent::ha::{Ha, SharedState};
use patrol_dcs::{ClusterConfig, Dcs};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::etcd::SimEtcd;
use crate::pg::{SimPeers, SimPostgres};
use crate::world::{lock, Agent, Node, Shared, SimPg, Stats, World};

/// Quiet time after the faults stop within which the cluster must converge.
const CONVERGE_WITHIN: Duration = Duration::from_secs(120);
/// After the faults stop: the ttl of the simulated cluster.
const SETTLE: Duration = Duration::from_secs(10);
/// How long a converged cluster must stay converged.
const STAYS_CONVERGED: Duration = Duration::from_secs(10);

/// `mode`: the `synchronous_mode` of the cluster (`off`, `on`, `quorum`).
fn node_config(i: usize, mode: &str) -> Arc<patrol_agent::config::Config> {
    let (pg, api) = (crate::PG_PORT as usize + i, 8008 + i);
    let yaml = format!(
        r#"
scope: sim
namespace: /service/
name: pg{i}
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts: 127.0.0.1:2379
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 3
    synchronous_mode: {mode}
    postgresql:
      use_pg_rewind: true
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: /nonexistent/patrol-simulation/pg{i}
  pgpass: /nonexistent/patrol-simulation/pgpass{i}
  remove_data_directory_on_rewind_failure: true
  authentication:
    superuser: {{username: postgres, password: sim}}
    replication: {{username: replicator, password: sim}}
# The simulated leaders must never open the host's /dev/watchdog (Patroni's default).
watchdog:
  mode: off
"#
    );
    let env = BTreeMap::from([("PATRONI_CONFIGURATION".to_string(), yaml)]);
    let loaded = load(ConfigSource::EnvOnly, &env).expect("the simulation's configuration loads");
    Arc::new(loaded.config)
}

pub struct Sim {
    pub w: Shared,
    shutdown: CancellationToken,
    agents: Vec<Option<JoinHandle<patrol_agent::ha::Exit>>>,
    lenient: bool,
}

impl Sim {
    pub fn new(seed: u64, nodes: usize) -> Sim {
        Sim::with_mode(seed, nodes, "off")
    }

    /// A cluster in `synchronous_mode: <mode>`.
    pub fn with_mode(seed: u64, nodes: usize, mode: &str) -> Sim {
        let mut world = World::new(seed);
        for i in 0..nodes {
            world.nodes.push(Node {
                name: format!("pg{i}"),
                cfg: node_config(i, mode),
                pg: SimPg::default(),
                agent: Agent::Down,
                epoch: 0,
                partitioned: false,
                shared: Arc::new(SharedState::default()),
                settle_after_cycle: None,
            });
        }
        let mut sim = Sim {
            w: Arc::new(std::sync::Mutex::new(world)),
            shutdown: CancellationToken::new(),
            agents: (0..nodes).map(|_| None).collect(),
            lenient: std::env::var_os("PATROL_SIM_LENIENT").is_some(),
        };
        for i in 0..nodes {
            sim.start_agent(i);
        }
        sim.spawn_world();
        sim
    }

    pub fn nodes(&self) -> usize {
        self.agents.len()
    }

    /// Starts (or restarts, with fresh memory and a new lease) node `i`'s agent.
    pub fn start_agent(&mut self, i: usize) {
        let (cfg, epoch, shared) = {
            let mut w = lock(&self.w);
            let n = &mut w.nodes[i];
            n.epoch += 1;
            n.agent = Agent::Live;
            n.shared = Arc::new(SharedState::default());
            n.settle_after_cycle = Some(2);
            let out = (n.cfg.clone(), n.epoch, n.shared.clone());
            let m = format!("{}: agent started", n.name);
            w.log(m);
            out
        };
        let timing = ClusterConfig::from_map(cfg.bootstrap.dcs.clone()).timing();
        let dcs = Arc::new(SimEtcd::new(
            self.w.clone(),
            i,
            epoch,
            cfg.name.clone(),
            timing,
        ));
        let pg = SimPostgres {
            w: self.w.clone(),
            i,
            epoch,
        };
        let peers = SimPeers {
            w: self.w.clone(),
            i,
            epoch,
        };
        let rx = dcs.watch_cluster();
        let ha = Ha::new(cfg, dcs, pg, peers, shared);
        let token = self.shutdown.child_token();
        self.agents[i] = Some(tokio::spawn(ha.run(rx, token)));
    }

    /// The agent process dies (SIGKILL): its tasks die with it; PostgreSQL keeps serving.
    pub fn crash_agent(&mut self, i: usize) {
        if let Some(h) = self.agents[i].take() {
            h.abort();
        }
        let mut w = lock(&self.w);
        w.nodes[i].epoch += 1;
        w.nodes[i].agent = Agent::Down;
        let m = format!("{}: agent killed", w.nodes[i].name);
        w.log(m);
    }

    pub fn freeze(&self, i: usize) {
        let mut w = lock(&self.w);
        w.nodes[i].agent = Agent::Frozen;
        let m = format!("{}: agent frozen", w.nodes[i].name);
        w.log(m);
    }

    /// The world's own activity: writes on primaries, streaming, lease expiry, the checker.
    fn spawn_world(&self) {
        let w = self.w.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut n: u64 = 0;
            loop {
                tick.tick().await;
                n = (n + 1) % 5;
                let mut g = lock(&w);
                let gone = g.etcd.expire();
                if !gone.is_empty() {
                    g.publish();
                    let m = format!("etcd: lease expired: {}", gone.join(", "));
                    g.log(m);
                }
                if n == 0 {
                    run_postgres(&mut g);
                }
                g.check();
            }
        });
    }

    /// Injects faults for `secs` seconds of simulated time.
    pub async fn faults(&mut self, secs: u64) {
        let end = Instant::now() + Duration::from_secs(secs);
        let mut until: Vec<Option<(Instant, &'static str)>> = vec![None; self.nodes()];
        let mut partitioned: Vec<Option<Instant>> = vec![None; self.nodes()];
        let mut cut: Vec<Option<Instant>> = vec![None; self.nodes()];
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if self.failed() {
                return;
            }
            let now = Instant::now();
            // Ends what is due.
            for i in 0..self.nodes() {
                if let Some((t, what)) = until[i] {
                    if t <= now {
                        until[i] = None;
                        match what {
                            "down" => self.start_agent(i),
                            _ => thaw(&self.w, i),
                        }
                    }
                }
                if cut[i].is_some_and(|t| t <= now) {
                    cut[i] = None;
                    let mut w = lock(&self.w);
                    w.nodes[i].pg.repl_cut = false;
                    let m = format!("{}: replication connection restored", w.nodes[i].name);
                    w.log(m);
                }
                if partitioned[i].is_some_and(|t| t <= now) {
                    partitioned[i] = None;
                    let mut w = lock(&self.w);
                    w.nodes[i].partitioned = false;
                    let m = format!("{}: partition healed", w.nodes[i].name);
                    w.log(m);
                }
            }
            let mut w = lock(&self.w);
            if w.sysid.is_none() {
                continue;
            }
            let n = self.agents.len();
            let live: Vec<usize> = (0..n).filter(|&i| until[i].is_none()).collect();
            if w.rng.chance(2) {
                let running: Vec<usize> = (0..n).filter(|&i| w.nodes[i].pg.running).collect();
                if let Some(i) = w.rng.pick(&running) {
                    w.nodes[i].pg.running = false;
                    w.stats.faults += 1;
                    let m = format!("FAULT {}: PostgreSQL crashed", w.nodes[i].name);
                    w.log(m);
                }
            }
            if w.rng.chance(1) {
                if let Some(i) = w.rng.pick(&live) {
                    let d = w.rng.range(0, 15_000);
                    until[i] = Some((now + Duration::from_millis(d), "down"));
                    w.stats.faults += 1;
                    drop(w);
                    self.crash_agent(i);
                    continue;
                }
            }
            if w.rng.chance(1) {
                if let Some(i) = w.rng.pick(&live) {
                    let d = w.rng.range(1_000, 20_000);
                    until[i] = Some((now + Duration::from_millis(d), "frozen"));
                    w.stats.faults += 1;
                    drop(w);
                    self.freeze(i);
                    continue;
                }
            }
            if w.rng.chance(1) {
                // Host loss: the agent and its PostgreSQL die together.
                if let Some(i) = w.rng.pick(&live) {
                    let d = w.rng.range(0, 15_000);
                    until[i] = Some((now + Duration::from_millis(d), "down"));
                    w.nodes[i].pg.running = false;
                    w.stats.faults += 1;
                    let m = format!("FAULT {}: host lost", w.nodes[i].name);
                    w.log(m);
                    drop(w);
                    self.crash_agent(i);
                    continue;
                }
            }
            if w.rng.chance(1) {
                // The replication connection of one node is cut for a while.
                let d = w.rng.range(1_000, 20_000);
                if let Some(i) = w.rng.pick(&(0..n).collect::<Vec<_>>()) {
                    w.nodes[i].pg.repl_cut = true;
                    cut[i] = Some(now + Duration::from_millis(d));
                    w.stats.faults += 1;
                    let m = format!("FAULT {}: replication connection cut", w.nodes[i].name);
                    w.log(m);
                }
            }
            if w.rng.chance(1) {
                let free: Vec<usize> = (0..n).filter(|&i| partitioned[i].is_none()).collect();
                if let Some(i) = w.rng.pick(&free) {
                    let d = w.rng.range(1_000, 30_000);
                    partitioned[i] = Some(now + Duration::from_millis(d));
                    w.nodes[i].partitioned = true;
                    w.stats.faults += 1;
                    let m = format!("FAULT {}: partitioned from etcd", w.nodes[i].name);
                    w.log(m);
                }
            }
        }
        // Faults end: frozen agents thaw, dead ones restart, partitions heal.
        for (i, due) in until.into_iter().enumerate() {
            match due {
                Some((_, "down")) => self.start_agent(i),
                Some(_) => thaw(&self.w, i),
                None => {}
            }
            lock(&self.w).nodes[i].partitioned = false;
            lock(&self.w).nodes[i].pg.repl_cut = false;
        }
        lock(&self.w).log("faults stopped".into());
        // What the last faults set going (a call failing after retry_timeout, a lease ending)
        // plays out within a ttl; convergence is judged from then on.
        tokio::time::sleep(SETTLE).await;
    }

    pub fn failed(&self) -> bool {
        lock(&self.w).failure.is_some()
    }

    /// Panics with the first violation, if any.
    pub fn assert_ok(&self) {
        if let Some(f) = lock(&self.w).failure.clone() {
            panic!("{f}");
        }
    }

    /// Waits without faults until the cluster converged, then checks that it stays so.
    pub async fn converge(&mut self) {
        let since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.assert_ok();
            let r = lock(&self.w).converged(self.lenient);
            if r.is_ok() {
                break;
            }
            if since.elapsed() > CONVERGE_WITHIN {
                let why = r.expect_err("not converged");
                let mut w = lock(&self.w);
                w.fail(&format!(
                    "no convergence within {CONVERGE_WITHIN:?} without faults: {why}"
                ));
                drop(w);
                self.assert_ok();
            }
        }
        lock(&self.w).stats.converged_after_ms = since.elapsed().as_millis() as u64;
        let held = Instant::now();
        while held.elapsed() < STAYS_CONVERGED {
            tokio::time::sleep(Duration::from_millis(100)).await;
            self.assert_ok();
            let r = lock(&self.w).converged(self.lenient);
            match r {
                Ok(stuck) => lock(&self.w).stats.stuck_diverged = stuck.len() as u64,
                Err(why) => {
                    lock(&self.w).fail(&format!("the converged cluster fell apart: {why}"));
                    self.assert_ok();
                }
            }
        }
    }

    /// Counts the acknowledged commits the converged leader does not have.
    pub fn count_lost_commits(&self) {
        let mut w = lock(&self.w);
        let Some(li) = w.etcd.value("leader").and_then(|l| w.index(l)) else {
            return;
        };
        let Some(wal) = w.nodes[li].pg.data.as_ref().map(|d| d.wal.clone()) else {
            return;
        };
        let missing: Vec<(u64, u64)> = w
            .acked
            .iter()
            .filter(|(b, p)| !wal.contains(*b, *p))
            .copied()
            .collect();
        for (b, p) in &missing {
            let m = format!(
                "LOST: acknowledged commit at branch {b} pos {p} is not on the final leader"
            );
            w.log(m);
        }
        let lost = missing.len() as u64;
        w.stats.lost_acked_commits = lost;
    }

    pub fn stats(&self) -> Stats {
        lock(&self.w).stats.clone()
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }
}

/// A frozen agent continues; it is exempt from the checks until it acted on what it sees.
pub fn thaw(w: &Shared, i: usize) {
    let mut w = lock(w);
    if w.nodes[i].agent != Agent::Frozen {
        return;
    }
    let cycles = w.nodes[i].shared.snapshot().cycles;
    w.nodes[i].agent = Agent::Live;
    w.nodes[i].settle_after_cycle = Some(cycles + 2);
    let m = format!("{}: agent thawed", w.nodes[i].name);
    w.log(m);
}

/// Primaries take writes (acknowledged when their node holds the leader key), standbys stream.
pub fn run_postgres(w: &mut World) {
    let leader = w.etcd.value("leader").map(str::to_string);
    let mut primaries = Vec::new();
    for i in 0..w.nodes.len() {
        if !w.nodes[i].pg.writable() {
            continue;
        }
        let add = w.rng.range(1, 4096);
        let holds = leader.as_deref() == Some(w.nodes[i].name.as_str());
        let Some(d) = w.nodes[i].pg.data.as_mut() else {
            continue;
        };
        assert_eq!(
            d.wal.current().owner,
            d.instance,
            "a primary writes its own branch"
        );
        d.wal.pos += add;
        if holds {
            primaries.push(i);
        }
    }
    for i in 0..w.nodes.len() {
        let pg = &w.nodes[i].pg;
        if !(pg.running && pg.in_recovery) || pg.repl_cut {
            continue;
        }
        let Some(up) = pg.upstream else {
            continue;
        };
        let src = &w.nodes[up].pg;
        let (Some(mine), Some(theirs)) = (&pg.data, &src.data) else {
            continue;
        };
        if !src.running || mine.sysid != theirs.sysid || !mine.wal.can_follow(&theirs.wal) {
            continue;
        }
        // Streaming takes time: a standby on its upstream's branch receives a part of what is
        // new each tick; after a timeline switch it takes the new history at once.
        let same_branch = mine.wal.current().id == theirs.wal.current().id;
        let (wal, behind) = (
            theirs.wal.clone(),
            theirs.wal.pos.saturating_sub(mine.wal.pos),
        );
        if w.rng.chance(750) {
            let step = w.rng.range(1, 8_192);
            if let Some(d) = w.nodes[i].pg.data.as_mut() {
                if same_branch {
                    d.wal.pos += behind.min(step);
                } else {
                    d.wal = wal;
                }
            }
        }
    }
    // Commits are acknowledged up to what `synchronous_standby_names` lets the primary
    // acknowledge (all of it under asynchronous replication).
    for i in primaries {
        let Some(branch) = w.nodes[i].pg.data.as_ref().map(|d| d.wal.current().clone()) else {
            continue;
        };
        let Some(pos) = crate::world::ack_position(w, i).filter(|&p| p > branch.start) else {
            continue;
        };
        match w.acked.last_mut() {
            Some(last) if last.0 == branch.id => last.1 = last.1.max(pos),
            _ => w.acked.push((branch.id, pos)),
        }
    }
}
