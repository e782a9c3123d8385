//! STYLE.md testing level 2: a deterministic simulation of several agents.
//!
//! Three (and five) simulated nodes run the real `decide` over an in-memory DCS with etcd
//! semantics (revisions, keys on leases with a TTL in simulated time, `create_revision == 0`
//! and value-compare transactions) and a simulated PostgreSQL each (data directory, running,
//! recovery, WAL as branches of history plus a position, timelines). The runner's semantics
//! (`agent/src/ha/runner.rs`: task collection, `track_rewind_and_downtime`, peer probing,
//! `execute`, `publish`, `handle_dcs_error`) are mirrored action by action. Faults come from a
//! seeded RNG: PostgreSQL crashes, agent crashes and restarts (fresh runner memory, new lease),
//! node freezes (agent stopped, PostgreSQL still serving), DCS partitions of one node, lost
//! member-key and status writes, and lease expiry through time passing.
//!
//! After every step: (a) at most one writable primary among the nodes whose agent runs; (b) it
//! holds the leader key unless it is cut off from the DCS or bootstrapping; a node cut off from
//! the DCS is not a writable primary at the end of any of its cycles; the `history` timeline
//! never decreases; `initialize` never changes once it holds a sysid. After the faults stop the
//! cluster converges within `CONVERGE_WITHIN_MS`: one leader, every other node a running replica
//! streaming from it on its branch of WAL history, and stays so.
//!
//! Diverged replicas: a replica whose WAL went past the point where the new leader's timeline
//! forked (it kept streaming from an old primary that still took writes) must be rewound
//! (decision row R-5, from the cluster `history`); the convergence check fails if one is left
//! stuck. `PATROL_SIM_LENIENT=1` tolerates them (counted in `stuck_diverged`), for comparing.
//!
//! The default seeds are fixed (reproducible in CI); `PATROL_SIM_RANDOM=1` draws new ones.
//! Known gap: two nodes that both promoted to the same timeline number from the same parent (a
//! split promotion: one lost its key mid-promotion) have different WAL under one timeline ID; a
//! replica on the losing branch is not detected yet (Patroni compares switch points with
//! `TIMELINE_HISTORY`). Random seeds can hit it (e.g. 12589065524472902284).
//! Each run prints its seed; replay one with `PATROL_SIM_SEED=<seed>`, print every event with
//! `PATROL_SIM_TRACE=1`, run more seeds with `PATROL_SIM_RUNS=<n>`:
//! `PATROL_SIM_SEED=<seed> PATROL_SIM_TRACE=1 cargo test -p patrol-agent --test simulation -- --nocapture`.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use patrol_agent::ha::decide::{
    decide, Action, DataState, LocalPg, Observation, PeerStatus, Task, TaskResult, Upstream,
};
use patrol_agent::ha::runner::peer_from_status;
use patrol_dcs::{Cluster, ClusterConfig, History, HistoryLine, Kv, MemberData, Role, Status};
use serde_json::json;

/// The dynamic configuration every node runs with.
const DYNAMIC: &str = r#"{"ttl":10,"loop_wait":1,"retry_timeout":3}"#;
const TTL_MS: u64 = 10_000;
/// A live agent that has not run a cycle for this long is scheduled first: the real loop runs
/// every `loop_wait`, so only injected freezes and crashes can make a live agent miss its lease.
const OVERDUE_MS: u64 = 3_000;
/// Quiet time after the faults stop within which the cluster must converge.
const CONVERGE_WITHIN_MS: u64 = 120_000;
/// The simulated nodes run with `remove_data_directory_on_rewind_failure` (a failed rewind
/// re-clones; without it the member waits for a manual reinit, by design).
const REMOVE_DATA_ON_REWIND_FAILURE: bool = true;
const EVENTS_SHOWN: usize = 30;

// ---- Deterministic randomness ----------------------------------------------------------------

/// SplitMix64: tiny, good enough, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `per_mille / 1000`.
    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn pick(&mut self, from: &[usize]) -> Option<usize> {
        if from.is_empty() {
            None
        } else {
            Some(from[self.below(from.len() as u64) as usize])
        }
    }
}

// ---- In-memory DCS with etcd semantics -------------------------------------------------------

#[derive(Debug, Clone)]
struct Entry {
    value: String,
    mod_revision: i64,
    lease: i64,
}

/// One etcd: a revision counter, keys with their mod revision and lease, and leases that expire
/// (deleting their keys) unless kept alive.
#[derive(Debug, Default)]
struct SimDcs {
    revision: i64,
    keys: BTreeMap<String, Entry>,
    /// Lease id -> expiry time (ms).
    leases: BTreeMap<i64, u64>,
    last_lease: i64,
}

impl SimDcs {
    fn grant(&mut self, now: u64) -> i64 {
        self.last_lease += 1;
        let id = 7_000 + self.last_lease;
        self.leases.insert(id, now + TTL_MS);
        id
    }

    fn keep_alive(&mut self, id: i64, now: u64) -> bool {
        match self.leases.get_mut(&id) {
            Some(deadline) => {
                *deadline = now + TTL_MS;
                true
            }
            None => false,
        }
    }

    /// Expires the leases whose TTL passed; returns the keys deleted with them.
    fn expire(&mut self, now: u64) -> Vec<String> {
        let dead: Vec<i64> = self
            .leases
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(id, _)| *id)
            .collect();
        let mut gone = Vec::new();
        for id in dead {
            self.leases.remove(&id);
            let keys: Vec<String> = self
                .keys
                .iter()
                .filter(|(_, e)| e.lease == id)
                .map(|(k, _)| k.clone())
                .collect();
            if !keys.is_empty() {
                self.revision += 1;
            }
            for k in keys {
                self.keys.remove(&k);
                gone.push(format!("{k} (lease {id})"));
            }
        }
        gone
    }

    fn put(&mut self, key: &str, value: &str, lease: i64) {
        assert!(
            lease == 0 || self.leases.contains_key(&lease),
            "put {key} on unknown lease {lease}"
        );
        self.revision += 1;
        self.keys.insert(
            key.to_string(),
            Entry {
                value: value.to_string(),
                mod_revision: self.revision,
                lease,
            },
        );
    }

    /// `create_revision == 0` transaction: put only if the key does not exist.
    fn create(&mut self, key: &str, value: &str, lease: i64) -> bool {
        if self.keys.contains_key(key) {
            return false;
        }
        self.put(key, value, lease);
        true
    }

    fn delete(&mut self, key: &str) -> bool {
        if self.keys.remove(key).is_some() {
            self.revision += 1;
            true
        } else {
            false
        }
    }

    fn value(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(|e| e.value.as_str())
    }

    /// One linearizable prefix read, as the node sees it.
    fn cluster(&self) -> Cluster {
        let kvs: Vec<Kv> = self
            .keys
            .iter()
            .map(|(k, e)| Kv {
                key: k.clone(),
                value: e.value.clone(),
                mod_revision: e.mod_revision,
                lease: e.lease,
            })
            .collect();
        Cluster::from_kvs(self.revision, &kvs)
    }
}

// ---- Simulated PostgreSQL ---------------------------------------------------------------------

/// A stretch of WAL written by one data directory (`owner`) from `start` on, on `timeline`.
/// Two data directories have the same WAL up to a position exactly when they share the branch.
#[derive(Debug, Clone)]
struct Branch {
    id: u64,
    timeline: u64,
    start: u64,
    owner: u64,
}

#[derive(Debug, Clone)]
struct Wal {
    /// Ancestry, oldest first; the last is the branch being written or replayed.
    branches: Vec<Branch>,
    pos: u64,
    /// The timeline history file: (timeline, switch position) per promotion.
    history: Vec<(u64, u64)>,
}

impl Wal {
    fn current(&self) -> &Branch {
        self.branches.last().expect("a WAL has a branch")
    }

    fn timeline(&self) -> u64 {
        self.current().timeline
    }

    /// A standby at `self` can stream from `src` and catch up: its branch is in `src`'s
    /// ancestry and it has nothing past the point where `src` left that branch.
    fn can_follow(&self, src: &Wal) -> bool {
        let me = self.current().id;
        match src.branches.iter().position(|b| b.id == me) {
            None => false,
            Some(i) if i + 1 == src.branches.len() => self.pos <= src.pos,
            Some(i) => self.pos <= src.branches[i + 1].start,
        }
    }
}

#[derive(Debug, Clone)]
struct PgData {
    sysid: String,
    /// pg_control's "Database cluster state".
    state: &'static str,
    /// Identity of this data directory (a clone is a new one; a rewind keeps it).
    instance: u64,
    wal: Wal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PgStatus {
    in_recovery: bool,
    pos: u64,
    timeline: u64,
}

#[derive(Debug, Default)]
struct SimPg {
    /// `None`: empty data directory.
    data: Option<PgData>,
    running: bool,
    in_recovery: bool,
    /// `primary_conninfo`: the member a standby streams from.
    upstream: Option<String>,
}

impl SimPg {
    fn writable(&self) -> bool {
        self.running && !self.in_recovery
    }

    /// What the monitoring query answers.
    fn status(&self) -> Option<PgStatus> {
        let d = self.data.as_ref()?;
        self.running.then(|| PgStatus {
            in_recovery: self.in_recovery,
            pos: d.wal.pos,
            timeline: d.wal.timeline(),
        })
    }

    /// Immediate stop (or crash): pg_control keeps its state ("in production" for a primary).
    fn stop(&mut self) {
        self.running = false;
    }

    fn describe(&self) -> String {
        let Some(d) = &self.data else {
            return format!("empty data dir, running={}", self.running);
        };
        let role = match (self.running, self.in_recovery) {
            (false, _) => "stopped".to_string(),
            (true, false) => "PRIMARY".to_string(),
            (true, true) => format!("standby of {:?}", self.upstream),
        };
        format!(
            "{role}, {:?}, tl {} branch {} pos {} (instance {})",
            d.state,
            d.wal.timeline(),
            d.wal.current().id,
            d.wal.pos,
            d.instance
        )
    }
}

// ---- Simulated agent ----------------------------------------------------------------------------

/// A long operation and what it does to PostgreSQL when it finishes.
#[derive(Debug, Clone)]
enum Job {
    Bootstrap {
        fail: bool,
    },
    Clone {
        source: String,
    },
    /// `None`: as primary; `Some(None)`: read-only following nobody.
    Start {
        standby_of: Option<Option<String>>,
    },
    /// `pg_ctl promote`; PostgreSQL is writable once it returns.
    Promote,
    /// The rest of the promote task: write the primary's configuration, `CHECKPOINT`.
    Checkpoint,
    /// The second half of `Demote { leader: None }`: restart read-only following nobody.
    RestartReadOnly,
    Rewind {
        source: String,
    },
}

#[derive(Debug, Clone)]
struct SimTask {
    task: Task,
    job: Job,
    done_at: u64,
    result: Option<Result<(), String>>,
}

/// A long operation's progress when its current part finishes.
enum Step {
    Done(Result<(), String>),
    Next(Job, u64),
}

/// What `GET /patroni` answers: the shared state of the last cycle.
#[derive(Debug, Clone)]
struct ApiView {
    status: Option<PgStatus>,
    role: Role,
    state: &'static str,
}

/// The runner's memory (lost when the agent process restarts), including the DCS client's lease.
#[derive(Debug, Default)]
struct Runner {
    in_flight: Option<SimTask>,
    /// Tasks whose handle was replaced: they still run, nobody collects their result.
    detached: Vec<SimTask>,
    last_result: Option<TaskResult>,
    bootstrapping: bool,
    following: Option<String>,
    was_running: bool,
    needs_rewind: bool,
    rewind_failed: bool,
    primary_down_since: Option<u64>,
    last_member_json: Option<(String, i64)>,
    /// The DCS client's lease.
    lease: Option<i64>,
    api: Option<ApiView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agent {
    Live,
    /// SIGSTOP: no cycles, no keep-alives, no REST answers; PostgreSQL keeps serving.
    Frozen {
        until: u64,
    },
    /// The agent process is gone (crash or exit); it restarts with fresh memory.
    Down {
        until: u64,
    },
    /// Stopped for good by `Action::Fatal`.
    Dead,
}

struct SimNode {
    name: String,
    pg: SimPg,
    agent: Agent,
    /// Cut off from the DCS (reads and writes fail) until its first cycle after this time.
    partitioned_until: Option<u64>,
    runner: Runner,
    last_cycle: u64,
}

/// How an action ended the cycle.
enum Stop {
    Cycle(String),
    /// The agent exits non-zero after a failed bootstrap; its service manager restarts it.
    Exit(String),
    /// `Action::Fatal`: the node stops for good (nothing in this simulation should cause it).
    Fatal(String),
}

#[derive(Debug, Default)]
struct Stats {
    /// Crashes, freezes and partitions.
    faults: u64,
    lost_writes: u64,
    promotions: u64,
    leader_changes: u64,
    rewinds: u64,
    clones: u64,
    converged_after_ms: u64,
    /// Replicas left on diverged WAL at the end (the known gap in the module docs).
    stuck_diverged: u64,
}

struct World {
    seed: u64,
    /// How to reproduce a failure (printed with it).
    replay: String,
    rng: Rng,
    now: u64,
    step_no: u64,
    dcs: SimDcs,
    nodes: Vec<SimNode>,
    dynamic: ClusterConfig,
    faults_on: bool,
    events: VecDeque<String>,
    last_id: u64,
    max_timeline: u64,
    sysid: Option<String>,
    last_leader: Option<String>,
    stats: Stats,
    /// `PATROL_SIM_TRACE=1`: print every event as it happens.
    trace: bool,
    /// A replica stuck on diverged WAL fails the convergence check (`PATROL_SIM_LENIENT=1`:
    /// tolerated).
    strict: bool,
    /// Scripted fault: the next node to acquire the leader key freezes for this long at the end
    /// of that cycle.
    freeze_next_winner: Option<u64>,
    frozen_winner: Option<usize>,
}

fn short(a: &Action) -> String {
    match a {
        Action::CloneFrom(u) => format!("CloneFrom({})", u.name),
        Action::Start { standby_of: None } => "Start(primary)".into(),
        Action::Start {
            standby_of: Some(None),
        } => "Start(read-only)".into(),
        Action::Start {
            standby_of: Some(Some(u)),
        } => format!("Start(standby of {})", u.name),
        Action::Demote { leader } => {
            format!("Demote({:?})", leader.as_ref().map(|u| u.name.as_str()))
        }
        Action::Rewind(u) => format!("Rewind({})", u.name),
        Action::Follow(u) => format!("Follow({})", u.name),
        Action::WriteHistory(h) => format!("WriteHistory(tl {})", h.cluster_timeline()),
        Action::EnsureSlots { .. } => "EnsureSlots".into(),
        other => format!("{other:?}"),
    }
}

fn is_sysid(s: &str) -> bool {
    s.len() >= 10 && s.bytes().all(|b| b.is_ascii_digit())
}

impl World {
    fn new(seed: u64, n: usize) -> World {
        let nodes = (0..n)
            .map(|i| SimNode {
                name: format!("pg{i}"),
                pg: SimPg::default(),
                agent: Agent::Live,
                partitioned_until: None,
                runner: Runner::default(),
                last_cycle: 0,
            })
            .collect();
        World {
            seed,
            replay: format!("replay with PATROL_SIM_SEED={seed}"),
            rng: Rng(seed),
            now: 0,
            step_no: 0,
            dcs: SimDcs::default(),
            nodes,
            dynamic: ClusterConfig::parse(DYNAMIC).expect("valid dynamic config"),
            faults_on: true,
            events: VecDeque::new(),
            last_id: 0,
            max_timeline: 0,
            sysid: None,
            last_leader: None,
            stats: Stats::default(),
            trace: std::env::var_os("PATROL_SIM_TRACE").is_some(),
            strict: std::env::var_os("PATROL_SIM_LENIENT").is_none(),
            freeze_next_winner: None,
            frozen_winner: None,
        }
    }

    fn id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    fn log(&mut self, msg: String) {
        let line = format!(
            "[step {:>5} t={:>8.1}s] {msg}",
            self.step_no,
            self.now as f64 / 1000.0
        );
        if self.trace {
            eprintln!("{line}");
        }
        self.events.push_back(line);
        if self.events.len() > EVENTS_SHOWN {
            self.events.pop_front();
        }
    }

    fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("unknown member {name}"))
    }

    fn conn_url(i: usize) -> String {
        format!("postgres://10.0.0.{}:5432/postgres", i + 1)
    }

    fn api_url(i: usize) -> String {
        format!("http://10.0.0.{}:8008/patroni", i + 1)
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let r = &n.runner;
            s.push_str(&format!(
                "  {}: agent {:?}{}; pg: {}; runner: in_flight {:?}, needs_rewind {}, following {:?}, bootstrapping {}\n",
                n.name,
                n.agent,
                match n.partitioned_until {
                    Some(u) => format!(" (partitioned until {:.1}s)", u as f64 / 1000.0),
                    None => String::new(),
                },
                n.pg.describe(),
                r.in_flight.as_ref().map(|t| (t.task, t.result.is_some())),
                r.needs_rewind,
                r.following,
                r.bootstrapping,
            ));
        }
        s.push_str("  DCS:\n");
        for (k, e) in &self.dcs.keys {
            s.push_str(&format!("    {k} = {} (lease {})\n", e.value, e.lease));
        }
        s
    }

    fn fail(&self, what: &str) -> ! {
        let events: Vec<&str> = self.events.iter().map(String::as_str).collect();
        panic!(
            "simulation invariant violated: {what}\n  seed {} ({} nodes), step {}, t={:.1}s; {}\nstate:\n{}last events:\n  {}",
            self.seed,
            self.nodes.len(),
            self.step_no,
            self.now as f64 / 1000.0,
            self.replay,
            self.describe(),
            events.join("\n  ")
        );
    }

    // ---- One step ------------------------------------------------------------------------------

    fn step(&mut self) {
        self.step_no += 1;
        // 100-2000 ms for three nodes; scaled so each node still cycles about every 3 s.
        let dt = self.rng.range(100, 2000) * 3 / self.nodes.len() as u64;
        self.now += dt;
        for key in self.dcs.expire(self.now) {
            self.log(format!("DCS: lease expired, deleted {key}"));
        }
        if self.faults_on && self.sysid.is_some() {
            self.inject_faults();
        }
        self.run_postgres();
        // A finished long operation wakes its agent at once (`wait_task`).
        let woken: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                n.agent == Agent::Live
                    && n.runner
                        .in_flight
                        .as_ref()
                        .is_some_and(|t| t.result.is_some())
            })
            .collect();
        for &i in &woken {
            self.cycle(i);
        }
        if let Some(i) = self.pick(&woken) {
            self.wake(i);
            self.cycle(i);
        }
        self.check_invariants();
    }

    fn inject_faults(&mut self) {
        let n = self.nodes.len();
        let live: Vec<usize> = (0..n)
            .filter(|&i| self.nodes[i].agent == Agent::Live)
            .collect();
        if self.rng.chance(12) {
            let running: Vec<usize> = (0..n).filter(|&i| self.nodes[i].pg.running).collect();
            if let Some(i) = self.rng.pick(&running) {
                self.nodes[i].pg.stop();
                self.stats.faults += 1;
                let what = self.nodes[i].pg.describe();
                self.log(format!(
                    "FAULT {}: PostgreSQL crashed ({what})",
                    self.nodes[i].name
                ));
            }
        }
        if self.rng.chance(4) {
            if let Some(i) = self.rng.pick(&live) {
                let until = self.now + self.rng.range(0, 15_000);
                self.crash_agent(i, until);
                self.stats.faults += 1;
                self.log(format!(
                    "FAULT {}: agent crashed, restarts at {:.1}s",
                    self.nodes[i].name,
                    until as f64 / 1000.0
                ));
            }
        }
        if self.rng.chance(4) {
            if let Some(i) = self.rng.pick(&live) {
                if self.nodes[i].agent == Agent::Live {
                    let until = self.now + self.rng.range(1_000, 20_000);
                    self.nodes[i].agent = Agent::Frozen { until };
                    self.stats.faults += 1;
                    self.log(format!(
                        "FAULT {}: node frozen until {:.1}s",
                        self.nodes[i].name,
                        until as f64 / 1000.0
                    ));
                }
            }
        }
        if self.rng.chance(4) {
            let free: Vec<usize> = (0..n)
                .filter(|&i| self.nodes[i].partitioned_until.is_none())
                .collect();
            if let Some(i) = self.rng.pick(&free) {
                let until = self.now + self.rng.range(1_000, 30_000);
                self.nodes[i].partitioned_until = Some(until);
                self.stats.faults += 1;
                self.log(format!(
                    "FAULT {}: partitioned from the DCS until {:.1}s",
                    self.nodes[i].name,
                    until as f64 / 1000.0
                ));
            }
        }
    }

    fn crash_agent(&mut self, i: usize, until: u64) {
        let node = &mut self.nodes[i];
        node.agent = Agent::Down { until };
        // Its tasks die with the process; PostgreSQL keeps running.
        node.runner.in_flight = None;
        node.runner.detached.clear();
    }

    /// Ends the faults: everything frozen, down or partitioned recovers at its next cycle.
    fn stop_faults(&mut self) {
        self.faults_on = false;
        let now = self.now;
        for n in &mut self.nodes {
            n.agent = match n.agent {
                Agent::Frozen { until } => Agent::Frozen {
                    until: until.min(now),
                },
                Agent::Down { until } => Agent::Down {
                    until: until.min(now),
                },
                other => other,
            };
            if let Some(u) = &mut n.partitioned_until {
                *u = (*u).min(now);
            }
        }
        self.log("faults stopped".into());
    }

    /// The node that runs a cycle: a live agent that is overdue first (the real loop runs every
    /// `loop_wait`), then one woken by a PostgreSQL crash or thawing, else any.
    fn pick(&mut self, ran: &[usize]) -> Option<usize> {
        let now = self.now;
        let eligible: Vec<usize> = (0..self.nodes.len())
            .filter(|i| !ran.contains(i))
            .filter(|&i| match self.nodes[i].agent {
                Agent::Live => true,
                Agent::Frozen { until } | Agent::Down { until } => until <= now,
                Agent::Dead => false,
            })
            .collect();
        let overdue = eligible
            .iter()
            .copied()
            .filter(|&i| now - self.nodes[i].last_cycle > OVERDUE_MS)
            .max_by_key(|&i| (now - self.nodes[i].last_cycle, std::cmp::Reverse(i)));
        if overdue.is_some() {
            return overdue;
        }
        let urgent: Vec<usize> = eligible
            .iter()
            .copied()
            .filter(|&i| {
                let n = &self.nodes[i];
                n.agent != Agent::Live || (n.runner.was_running && !n.pg.running)
            })
            .collect();
        if !urgent.is_empty() {
            return self.rng.pick(&urgent);
        }
        self.rng.pick(&eligible)
    }

    /// A frozen node thaws, a crashed agent restarts with fresh memory, a partition heals.
    fn wake(&mut self, i: usize) {
        let now = self.now;
        match self.nodes[i].agent {
            Agent::Live | Agent::Dead => {}
            Agent::Frozen { .. } => {
                self.nodes[i].agent = Agent::Live;
                self.log(format!("{}: thawed", self.nodes[i].name));
            }
            Agent::Down { .. } => {
                self.nodes[i].agent = Agent::Live;
                self.nodes[i].runner = Runner::default();
                self.log(format!("{}: agent restarted", self.nodes[i].name));
            }
        }
        if self.nodes[i].partitioned_until.is_some_and(|u| u <= now) {
            self.nodes[i].partitioned_until = None;
            self.log(format!("{}: partition healed", self.nodes[i].name));
        }
    }

    // ---- PostgreSQL between cycles -------------------------------------------------------------

    /// Long operations finish, primaries take writes, standbys stream.
    fn run_postgres(&mut self) {
        let now = self.now;
        for i in 0..self.nodes.len() {
            if self.nodes[i].agent != Agent::Live {
                continue;
            }
            let mut k = 0;
            while k < self.nodes[i].runner.detached.len() {
                let t = &self.nodes[i].runner.detached[k];
                if t.done_at > now {
                    k += 1;
                    continue;
                }
                let (task, job) = (t.task, t.job.clone());
                match self.finish(i, &job) {
                    Step::Next(job, d) => {
                        let t = &mut self.nodes[i].runner.detached[k];
                        t.job = job;
                        t.done_at = now + d;
                        k += 1;
                    }
                    Step::Done(r) => {
                        self.nodes[i].runner.detached.remove(k);
                        let name = &self.nodes[i].name;
                        self.log(format!("{name}: detached {task:?} finished: {r:?}"));
                    }
                }
            }
            let due = self.nodes[i]
                .runner
                .in_flight
                .as_ref()
                .filter(|t| t.result.is_none() && t.done_at <= now)
                .map(|t| (t.task, t.job.clone()));
            if let Some((task, job)) = due {
                let step = self.finish(i, &job);
                let t = self.nodes[i].runner.in_flight.as_mut().expect("due");
                let what = match step {
                    Step::Next(job, d) => {
                        let what = format!("{job:?} next");
                        t.job = job;
                        t.done_at = now + d;
                        what
                    }
                    Step::Done(r) => {
                        let what = format!("finished: {r:?}");
                        t.result = Some(r);
                        what
                    }
                };
                let n = &self.nodes[i];
                let line = format!("{}: {task:?} {what} -> {}", n.name, n.pg.describe());
                self.log(line);
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].pg.writable() {
                let w = self.rng.range(1, 4096);
                if let Some(d) = self.nodes[i].pg.data.as_mut() {
                    assert_eq!(
                        d.wal.current().owner,
                        d.instance,
                        "a primary writes its own branch"
                    );
                    d.wal.pos += w;
                }
            }
        }
        for i in 0..self.nodes.len() {
            let pg = &self.nodes[i].pg;
            if !(pg.running && pg.in_recovery) {
                continue;
            }
            let Some(up) = pg.upstream.clone() else {
                continue;
            };
            let src = &self.nodes[self.index(&up)].pg;
            let (Some(mine), Some(theirs)) = (&pg.data, &src.data) else {
                continue;
            };
            if !src.running || mine.sysid != theirs.sysid || !mine.wal.can_follow(&theirs.wal) {
                continue;
            }
            let wal = theirs.wal.clone();
            if self.rng.chance(750) {
                if let Some(d) = self.nodes[i].pg.data.as_mut() {
                    d.wal = wal;
                }
            }
        }
    }

    /// Applies a finished (part of a) long operation to PostgreSQL.
    fn finish(&mut self, i: usize, job: &Job) -> Step {
        if let Job::Promote = job {
            return match self.promote(i) {
                Ok(()) => Step::Next(Job::Checkpoint, self.rng.range(0, 3_000)),
                Err(e) => Step::Done(Err(e)),
            };
        }
        Step::Done(self.finish_job(i, job))
    }

    fn finish_job(&mut self, i: usize, job: &Job) -> Result<(), String> {
        match job {
            Job::Bootstrap { fail } => {
                if *fail {
                    return Err("initdb: simulated failure".into());
                }
                let instance = self.id();
                let branch = self.id();
                let sysid = format!("{}", 7_000_000_000_000_000_000 + self.rng.below(1 << 60));
                let pg = &mut self.nodes[i].pg;
                pg.data = Some(PgData {
                    sysid,
                    state: "in production",
                    instance,
                    wal: Wal {
                        branches: vec![Branch {
                            id: branch,
                            timeline: 1,
                            start: 0,
                            owner: instance,
                        }],
                        pos: 0x0100_0000,
                        history: Vec::new(),
                    },
                });
                pg.running = true;
                pg.in_recovery = false;
                pg.upstream = None;
                Ok(())
            }
            Job::Clone { source } => {
                let src = &self.nodes[self.index(source)].pg;
                let copy = src.data.clone().filter(|_| src.running);
                let instance = self.id();
                let pg = &mut self.nodes[i].pg;
                match copy {
                    Some(mut d) => {
                        d.instance = instance;
                        d.state = "in archive recovery";
                        pg.data = Some(d);
                        pg.running = true;
                        pg.in_recovery = true;
                        pg.upstream = Some(source.clone());
                        self.stats.clones += 1;
                        Ok(())
                    }
                    None => {
                        pg.data = None;
                        Err(format!("pg_basebackup: {source} is not running"))
                    }
                }
            }
            Job::Start { standby_of } => {
                let branch = self.id();
                let pg = &mut self.nodes[i].pg;
                if pg.running {
                    return Ok(());
                }
                let Some(d) = pg.data.as_mut() else {
                    return Err("no data directory".into());
                };
                match standby_of {
                    None => {
                        // A standby's data directory started without recovery configuration
                        // ends recovery on the same timeline and writes its own WAL from here.
                        if d.wal.current().owner != d.instance {
                            let timeline = d.wal.timeline();
                            d.wal.branches.push(Branch {
                                id: branch,
                                timeline,
                                start: d.wal.pos,
                                owner: d.instance,
                            });
                        }
                        d.state = "in production";
                        pg.in_recovery = false;
                        pg.upstream = None;
                    }
                    Some(up) => {
                        d.state = "in archive recovery";
                        pg.in_recovery = true;
                        pg.upstream = up.clone();
                    }
                }
                pg.running = true;
                Ok(())
            }
            Job::Promote => unreachable!("handled in finish"),
            // The runner only warns when the CHECKPOINT after promote fails.
            Job::Checkpoint => Ok(()),
            Job::RestartReadOnly => {
                let pg = &mut self.nodes[i].pg;
                if pg.running {
                    return Ok(());
                }
                let Some(d) = pg.data.as_mut() else {
                    return Err("no data directory".into());
                };
                d.state = "in archive recovery";
                pg.running = true;
                pg.in_recovery = true;
                pg.upstream = None;
                Ok(())
            }
            Job::Rewind { source } => {
                let src = &self.nodes[self.index(source)].pg;
                let src_wal = src
                    .data
                    .as_ref()
                    .filter(|_| src.writable())
                    .map(|d| (d.sysid.clone(), d.wal.clone()));
                let pg = &mut self.nodes[i].pg;
                let Some(d) = pg.data.as_mut() else {
                    return Err("no data directory".into());
                };
                match src_wal {
                    Some((sysid, wal)) if sysid == d.sysid => {
                        d.wal = wal;
                        d.state = "in archive recovery";
                        pg.running = true;
                        pg.in_recovery = true;
                        pg.upstream = Some(source.clone());
                        self.stats.rewinds += 1;
                        Ok(())
                    }
                    _ => Err(format!("pg_rewind: {source} is not a running primary")),
                }
            }
        }
    }

    /// `pg_ctl promote`: a new timeline, writable from now on.
    fn promote(&mut self, i: usize) -> Result<(), String> {
        let branch = self.id();
        let pg = &mut self.nodes[i].pg;
        if !pg.running {
            return Err("pg_ctl promote: server is not running".into());
        }
        if !pg.in_recovery {
            return Err("pg_ctl promote: server is not in standby mode".into());
        }
        let d = pg.data.as_mut().expect("a running server has data");
        let old = d.wal.timeline();
        d.wal.history.push((old, d.wal.pos));
        d.wal.branches.push(Branch {
            id: branch,
            timeline: old + 1,
            start: d.wal.pos,
            owner: d.instance,
        });
        d.state = "in production";
        pg.in_recovery = false;
        pg.upstream = None;
        self.stats.promotions += 1;
        Ok(())
    }

    // ---- One HA cycle (mirrors Ha::cycle) --------------------------------------------------------

    fn cycle(&mut self, i: usize) {
        self.nodes[i].last_cycle = self.now;
        self.collect_task(i);
        if self.nodes[i].partitioned_until.is_some() {
            self.dcs_error(i);
            return;
        }
        let cluster = self.dcs.cluster();
        let status = {
            let n = &self.nodes[i];
            n.pg.status().filter(|_| n.runner.in_flight.is_none())
        };
        let local = self.observe_local(i, &cluster, status);
        self.track_rewind_and_downtime(i, &cluster, &local);
        let peers = if cluster.leader.is_none() && local.in_recovery == Some(true) {
            self.probe_peers(i, &cluster)
        } else {
            Vec::new()
        };
        let now = self.now;
        let node = &mut self.nodes[i];
        let r = &mut node.runner;
        let obs = Observation {
            me: node.name.clone(),
            cluster,
            local,
            dynamic: self.dynamic.clone(),
            in_flight: r.in_flight.as_ref().map(|t| t.task),
            last_result: r.last_result.take(),
            bootstrapping: r.bootstrapping,
            can_bootstrap: true,
            nofailover: false,
            failover_priority: 1,
            peers,
            primary_down_for: r.primary_down_since.map(|t| Duration::from_millis(now - t)),
            needs_rewind: r.needs_rewind,
            rewind_failed: r.rewind_failed,
            use_pg_rewind: true,
            remove_data_directory_on_rewind_failure: REMOVE_DATA_ON_REWIND_FAILURE,
            remove_data_directory_on_diverged_timelines: false,
            now_epoch_ms: 1_700_000_000_000 + now as i64,
            clone_from_leader: false,
        };
        let dec = decide(&obs);
        let cluster = obs.cluster;
        let actions: Vec<String> = dec.actions.iter().map(short).collect();
        let name = self.nodes[i].name.clone();
        self.log(format!(
            "{name}: {} -> [{}]",
            dec.reason,
            actions.join(", ")
        ));
        for action in &dec.actions {
            match self.execute(i, action, &cluster) {
                Ok(()) => {}
                Err(Stop::Cycle(why)) => {
                    self.log(format!("{name}: {why}"));
                    break;
                }
                Err(Stop::Exit(why)) => {
                    let until = self.now + self.rng.range(3_000, 10_000);
                    self.log(format!("{name}: agent exits ({why}); restarts in a while"));
                    self.crash_agent(i, until);
                    return;
                }
                Err(Stop::Fatal(why)) => {
                    self.log(format!("{name}: FATAL, the node stops for good: {why}"));
                    self.crash_agent(i, 0);
                    self.nodes[i].agent = Agent::Dead;
                    return;
                }
            }
        }
        let (state, role) = self.publish(i, &cluster, status);
        let node = &mut self.nodes[i];
        node.runner.was_running = node.pg.running;
        // The REST API answers from this cycle's observation.
        node.runner.api = Some(ApiView {
            status,
            role,
            state,
        });
        if self.frozen_winner == Some(i) {
            if let Some(d) = self.freeze_next_winner.take() {
                self.nodes[i].agent = Agent::Frozen {
                    until: self.now + d,
                };
                self.log(format!(
                    "{}: frozen right after winning the race",
                    self.me(i)
                ));
            }
        }
    }

    /// Collects a finished long operation (the start of `Ha::cycle`).
    fn collect_task(&mut self, i: usize) {
        let r = &mut self.nodes[i].runner;
        let Some(t) = r.in_flight.take_if(|t| t.result.is_some()) else {
            return;
        };
        let result = match t.result {
            Some(Err(e)) => TaskResult::Failed(t.task, e),
            _ => TaskResult::Succeeded(t.task),
        };
        match &result {
            TaskResult::Succeeded(Task::Rewind) => {
                r.needs_rewind = false;
                r.rewind_failed = false;
            }
            TaskResult::Failed(Task::Rewind, _) => {
                if REMOVE_DATA_ON_REWIND_FAILURE {
                    r.needs_rewind = false;
                    let pg = &mut self.nodes[i].pg;
                    pg.stop();
                    pg.data = None;
                } else {
                    r.rewind_failed = true;
                }
            }
            _ => {}
        }
        self.nodes[i].runner.last_result = Some(result);
    }

    /// `handle_dcs_error`: a running primary demotes itself (following nobody); others wait.
    fn dcs_error(&mut self, i: usize) {
        let name = self.nodes[i].name.clone();
        if self.nodes[i].pg.writable() {
            self.log(format!(
                "{name}: DCS is not accessible: demoting self (I was a leader)"
            ));
            self.demote(i, None);
        } else {
            self.log(format!("{name}: DCS is not accessible"));
        }
        if self.nodes[i].pg.writable() {
            self.fail(&format!(
                "{name} is cut off from the DCS and still a writable primary after its cycle"
            ));
        }
    }

    fn observe_local(&self, i: usize, cluster: &Cluster, status: Option<PgStatus>) -> LocalPg {
        let n = &self.nodes[i];
        let data = match &n.pg.data {
            None => DataState::Empty,
            Some(d) => DataState::Initialized {
                sysid: d.sysid.clone(),
                cluster_state: d.state.to_string(),
            },
        };
        let i_lead = cluster.leader_name() == Some(n.name.as_str());
        let history = match (status, &n.pg.data) {
            (Some(s), Some(d))
                if i_lead
                    && !s.in_recovery
                    && s.timeline > 1
                    && cluster.timeline() < s.timeline =>
            {
                let mut lines: Vec<HistoryLine> = d
                    .wal
                    .history
                    .iter()
                    .map(|&(timeline, lsn)| HistoryLine {
                        timeline,
                        lsn,
                        reason: "no recovery target specified".into(),
                        timestamp: None,
                        new_leader: None,
                    })
                    .collect();
                if let Some(last) = lines.last_mut() {
                    last.timestamp = Some(format!("t={}ms", self.now));
                    last.new_leader = Some(n.name.clone());
                }
                Some(History { lines })
            }
            _ => None,
        };
        LocalPg {
            data,
            running: n.pg.running,
            in_recovery: status.map(|s| s.in_recovery),
            wal_position: status.map(|s| s.pos),
            timeline: status.map(|s| s.timeline),
            replay_position: status.filter(|s| s.in_recovery).map(|s| s.pos),
            replay_paused: false,
            following: n.runner.following.clone(),
            history,
        }
    }

    fn track_rewind_and_downtime(&mut self, i: usize, cluster: &Cluster, local: &LocalPg) {
        let now = self.now;
        let n = &mut self.nodes[i];
        let i_lead = cluster.leader_name() == Some(n.name.as_str());
        let r = &mut n.runner;
        if let DataState::Initialized { cluster_state, .. } = &local.data {
            let was_primary = cluster_state == "in production" || cluster_state == "shut down";
            if was_primary && !local.running && !i_lead && r.in_flight.is_none() {
                r.needs_rewind = true;
            }
        }
        if i_lead && local.running && local.in_recovery == Some(false) {
            r.needs_rewind = false;
            r.rewind_failed = false;
        }
        if i_lead && !local.running {
            r.primary_down_since.get_or_insert(now);
        } else if local.running {
            r.primary_down_since = None;
        }
    }

    /// `probe_peers`: the REST answers of the other members whose agents respond.
    fn probe_peers(&self, i: usize, cluster: &Cluster) -> Vec<PeerStatus> {
        let me = &self.nodes[i].name;
        cluster
            .members
            .iter()
            .filter(|m| &m.name != me && !m.data.api_url.is_empty())
            .filter_map(|m| {
                let n = &self.nodes[self.index(&m.name)];
                if n.agent != Agent::Live {
                    return None;
                }
                let api = n.runner.api.clone().unwrap_or(ApiView {
                    status: None,
                    role: Role::Uninitialized,
                    state: "stopped",
                });
                // As `status_json` writes it.
                let state = match (api.state, api.status) {
                    ("running", None) => "unknown",
                    (state, _) => state,
                };
                let body = match api.status {
                    Some(s) if s.in_recovery => json!({
                        "state": state,
                        "role": "replica",
                        "xlog": {
                            "received_location": s.pos,
                            "replayed_location": s.pos,
                            "paused": false,
                        },
                        "timeline": s.timeline,
                    }),
                    Some(s) => json!({
                        "state": state,
                        "role": "primary",
                        "xlog": { "location": s.pos },
                        "timeline": s.timeline,
                    }),
                    None => json!({ "state": state, "role": api.role.as_str() }),
                };
                Some(peer_from_status(&m.name, &body))
            })
            .collect()
    }

    fn me(&self, i: usize) -> String {
        self.nodes[i].name.clone()
    }

    // ---- DCS client (mirrors EtcdDcs) ------------------------------------------------------------

    /// Keeps our lease alive, granting a new one when it is gone.
    fn refresh_lease(&mut self, i: usize) -> i64 {
        let now = self.now;
        match self.nodes[i].runner.lease {
            Some(id) if self.dcs.keep_alive(id, now) => id,
            _ => {
                let id = self.dcs.grant(now);
                self.nodes[i].runner.lease = Some(id);
                id
            }
        }
    }

    /// The lease for a write (granted again when etcd says it is gone).
    fn with_lease(&mut self, i: usize) -> i64 {
        match self.nodes[i].runner.lease {
            Some(id) if self.dcs.leases.contains_key(&id) => id,
            _ => {
                let id = self.dcs.grant(self.now);
                self.nodes[i].runner.lease = Some(id);
                id
            }
        }
    }

    /// `update_leader`: confirm the key holds our name on our lease, or re-attach it to the
    /// current lease. A vanished key is not re-created. `false`: we do not hold it.
    fn update_leader(&mut self, i: usize) -> bool {
        let lease = self.refresh_lease(i);
        let me = self.me(i);
        match self.dcs.keys.get("leader") {
            Some(e) if e.value == me && e.lease == lease => true,
            Some(e) if e.value == me => {
                self.dcs.put("leader", &me, lease);
                self.log(format!("{me}: leader key re-attached to lease {lease}"));
                true
            }
            None | Some(_) => false,
        }
    }

    fn delete_leader(&mut self, i: usize) -> bool {
        if self.dcs.value("leader") == Some(self.nodes[i].name.as_str()) {
            self.dcs.delete("leader")
        } else {
            false
        }
    }

    /// A member-key or status write that may be lost (reported as an error, as etcd would; the
    /// write may or may not have been applied). Returns whether it was acknowledged.
    fn lossy_put(&mut self, key: &str, value: &str, lease: i64) -> bool {
        if self.faults_on && self.rng.chance(50) {
            let applied = self.rng.chance(500);
            if applied {
                self.dcs.put(key, value, lease);
            }
            self.stats.lost_writes += 1;
            self.log(format!("FAULT: write of {key} failed (applied: {applied})"));
            return false;
        }
        self.dcs.put(key, value, lease);
        true
    }

    // ---- Actions (mirrors Ha::execute) -----------------------------------------------------------

    fn spawn(&mut self, i: usize, task: Task, job: Job, duration: u64) {
        let t = SimTask {
            task,
            job,
            done_at: self.now + duration,
            result: None,
        };
        let r = &mut self.nodes[i].runner;
        if let Some(old) = r.in_flight.replace(t) {
            if old.result.is_none() {
                r.detached.push(old);
            }
        }
    }

    /// Immediate stop; without a leader, restart read-only following nobody.
    fn demote(&mut self, i: usize, leader: Option<&Upstream>) {
        let n = &mut self.nodes[i];
        // The runner aborts a task in flight (a promotion must not finish after a demotion).
        n.runner.in_flight = None;
        n.pg.stop();
        n.runner.needs_rewind = true;
        n.runner.following = None;
        if leader.is_none() {
            let d = self.rng.range(200, 2_000);
            self.spawn(i, Task::Demote, Job::RestartReadOnly, d);
        }
    }

    fn execute(&mut self, i: usize, action: &Action, cluster: &Cluster) -> Result<(), Stop> {
        let me = self.me(i);
        match action {
            Action::RaceInitialize => {
                if !self.dcs.create("initialize", "", 0) {
                    return Err(Stop::Cycle("failed to acquire initialize lock".into()));
                }
                self.nodes[i].runner.bootstrapping = true;
            }
            Action::Bootstrap => {
                let fail = self.rng.chance(100);
                let d = self.rng.range(1_000, 4_000);
                self.spawn(i, Task::Bootstrap, Job::Bootstrap { fail }, d);
            }
            Action::FinishBootstrap { sysid } => {
                self.dcs.put("initialize", sysid, 0);
                let config = self.dynamic.to_json();
                self.dcs.put("config", &config, 0);
                let lease = self.refresh_lease(i);
                self.dcs.put("leader", &me, lease);
                self.nodes[i].runner.bootstrapping = false;
            }
            Action::AbortBootstrap { reason } => {
                self.delete_leader(i);
                self.dcs.delete("initialize");
                let pg = &mut self.nodes[i].pg;
                pg.stop();
                pg.data = None;
                return Err(Stop::Exit(format!("bootstrap failed: {reason}")));
            }
            Action::CloneFrom(up) => {
                self.nodes[i].runner.following = Some(up.name.clone());
                let d = self.rng.range(1_000, 6_000);
                let source = up.name.clone();
                self.spawn(i, Task::Clone, Job::Clone { source }, d);
            }
            Action::WriteInitialize { sysid } => {
                if !self.dcs.create("initialize", sysid, 0) {
                    return Err(Stop::Cycle(
                        "initialize key was written by another node".into(),
                    ));
                }
            }
            Action::Start { standby_of } => {
                let up = standby_of.clone().map(|u| u.map(|u| u.name));
                self.nodes[i].runner.following = up.clone().flatten();
                let d = self.rng.range(200, 3_000);
                let task = if up.is_none() {
                    Task::StartPrimary
                } else {
                    Task::Start
                };
                self.spawn(i, task, Job::Start { standby_of: up }, d);
            }
            Action::AcquireLeaderKey => {
                self.refresh_lease(i);
                let lease = self.with_lease(i);
                if !self.dcs.create("leader", &me, lease) {
                    return Err(Stop::Cycle("failed to acquire the leader key".into()));
                }
                if self.freeze_next_winner.is_some() {
                    self.frozen_winner = Some(i);
                }
            }
            Action::RefreshLeaderKey => {
                if self.update_leader(i) {
                    self.maybe_write_status(i, cluster);
                } else {
                    if self.nodes[i].pg.writable() {
                        let leader = cluster.leader_member().map(|m| Upstream {
                            name: m.name.clone(),
                            conn_url: m.data.conn_url.clone(),
                        });
                        self.log(format!(
                            "{me}: demoting self because failed to update leader lock in DCS"
                        ));
                        self.demote(i, leader.as_ref());
                    }
                    return Err(Stop::Cycle("lost the leader key".into()));
                }
            }
            Action::ReleaseLeaderKey => {
                self.delete_leader(i);
            }
            // No failover key is ever written in the simulation; mirror the runner anyway: a
            // clean stop, the key released, a restart as a standby of nobody.
            Action::GracefulDemote => {
                self.nodes[i].pg.stop();
                self.delete_leader(i);
                self.nodes[i].runner.following = None;
                let d = self.rng.range(200, 2_000);
                self.spawn(i, Task::Demote, Job::RestartReadOnly, d);
            }
            Action::ClearFailover { .. } => self.dcs.put("failover", "{}", 0),
            Action::Promote => {
                self.nodes[i].runner.following = None;
                let d = self.rng.range(100, 2_000);
                self.spawn(i, Task::Promote, Job::Promote, d);
            }
            Action::Demote { leader } => self.demote(i, leader.as_ref()),
            Action::Rewind(up) => {
                self.nodes[i].runner.following = Some(up.name.clone());
                self.nodes[i].pg.stop();
                let d = self.rng.range(1_000, 5_000);
                let source = up.name.clone();
                self.spawn(i, Task::Rewind, Job::Rewind { source }, d);
            }
            Action::RemoveDataDirectory { .. } => {
                let n = &mut self.nodes[i];
                n.pg.stop();
                n.pg.data = None;
                n.runner.needs_rewind = false;
                n.runner.following = None;
            }
            Action::WriteHistory(h) => self.dcs.put("history", &h.to_json(), 0),
            Action::Follow(up) => {
                let n = &mut self.nodes[i];
                if n.runner.following.as_deref() != Some(up.name.as_str()) {
                    n.pg.upstream = Some(up.name.clone());
                    n.runner.following = Some(up.name.clone());
                }
            }
            Action::EnsureSlots { .. } => {}
            Action::Fatal { reason } => return Err(Stop::Fatal(reason.clone())),
        }
        Ok(())
    }

    /// The leader writes `status` (its WAL position) when it changed.
    fn maybe_write_status(&mut self, i: usize, cluster: &Cluster) {
        let Some(s) = self.nodes[i].pg.status() else {
            return;
        };
        if s.in_recovery || cluster.status.optime == Some(s.pos) {
            return;
        }
        let status = Status {
            optime: Some(s.pos),
            ..cluster.status.clone()
        };
        self.lossy_put("status", &status.to_json(), 0);
    }

    /// Publishes the member key (when it changed) and keeps the lease alive; returns the state
    /// and role published.
    fn publish(
        &mut self,
        i: usize,
        cluster: &Cluster,
        status: Option<PgStatus>,
    ) -> (&'static str, Role) {
        let me = self.me(i);
        let n = &self.nodes[i];
        let running = n.pg.running;
        let state = match n.runner.in_flight.as_ref().map(|t| t.task) {
            Some(Task::Bootstrap) => "initializing new cluster",
            Some(Task::Clone) => "creating replica",
            Some(Task::Start) | Some(Task::StartPrimary) | Some(Task::Rewind) => "starting",
            Some(Task::Promote) | Some(Task::Demote) if running => "running",
            Some(_) => "starting",
            None if running => "running",
            None if n.runner.was_running => "crashed",
            None => "stopped",
        };
        let role = match (&n.pg.data, status) {
            (Some(_), Some(s)) if !s.in_recovery => Role::Primary,
            (Some(_), _) => Role::Replica,
            (None, _) => Role::Uninitialized,
        };
        let mut m = MemberData::new(
            Self::conn_url(i),
            Self::api_url(i),
            state,
            role.clone(),
            "4.1.4",
        );
        if let Some(s) = status {
            m.xlog_location = Some(s.pos);
            if s.in_recovery {
                m.replay_lsn = Some(s.pos);
                m.receive_lsn = Some(s.pos);
            }
            m.timeline = Some(s.timeline);
        }
        let json = m.to_json();
        let session = cluster.member(&me).map(|m| m.session).unwrap_or(0);
        let unchanged = n
            .runner
            .last_member_json
            .as_ref()
            .is_some_and(|(j, s)| *j == json && *s == session && session != 0);
        self.refresh_lease(i);
        if !unchanged {
            let lease = self.with_lease(i);
            if self.lossy_put(&format!("members/{me}"), &json, lease) {
                self.nodes[i].runner.last_member_json = Some((json, session));
            }
        }
        (state, role)
    }

    // ---- Invariants ------------------------------------------------------------------------------

    fn check_invariants(&mut self) {
        let leader = self.dcs.value("leader").map(str::to_string);
        // (a) At most one writable primary among the nodes whose agent runs (a frozen or
        // crashed agent cannot fence its PostgreSQL; there the lease deadline is all we have).
        let primaries: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.pg.writable() && n.agent == Agent::Live)
            .map(|n| n.name.as_str())
            .collect();
        if primaries.len() > 1 {
            self.fail(&format!("several writable primaries: {primaries:?}"));
        }
        // (b) It holds the leader key, unless it is cut off from the DCS (it demotes in its
        // next cycle: checked in `dcs_error`) or still bootstrapping (`initialize` is ours).
        for n in &self.nodes {
            let exempt = n.partitioned_until.is_some() || n.runner.bootstrapping;
            if n.pg.writable()
                && n.agent == Agent::Live
                && !exempt
                && leader.as_deref() != Some(n.name.as_str())
            {
                self.fail(&format!(
                    "{} is a writable primary but the leader key is {leader:?}",
                    n.name
                ));
            }
        }
        // The DCS timeline never goes back.
        let tl = self
            .dcs
            .value("history")
            .and_then(History::parse)
            .map(|h| h.cluster_timeline())
            .unwrap_or(0);
        if tl < self.max_timeline {
            self.fail(&format!(
                "history timeline went back from {} to {tl}",
                self.max_timeline
            ));
        }
        self.max_timeline = tl;
        // `initialize` never changes once it holds a sysid.
        let init = self.dcs.value("initialize").map(str::to_string);
        match (&self.sysid, init) {
            (Some(s), i) if i.as_deref() != Some(s.as_str()) => {
                self.fail(&format!("initialize changed from {s} to {i:?}"))
            }
            (None, Some(i)) if is_sysid(&i) => self.sysid = Some(i),
            _ => {}
        }
        if leader != self.last_leader {
            if leader.is_some() {
                self.stats.leader_changes += 1;
            }
            self.last_leader = leader;
        }
    }

    /// Steps without faults until the cluster converged, then checks that it stays so.
    fn converge(&mut self) {
        let since = self.now;
        loop {
            self.step();
            if self.converged().is_ok() {
                break;
            }
            if self.now - since > CONVERGE_WITHIN_MS {
                let why = self.converged().expect_err("not converged");
                self.fail(&format!(
                    "no convergence within {}s without faults: {why}",
                    CONVERGE_WITHIN_MS / 1000
                ));
            }
        }
        self.stats.converged_after_ms = self.now - since;
        for _ in 0..30 {
            self.step();
            match self.converged() {
                Ok(stuck) => self.stats.stuck_diverged = stuck.len() as u64,
                Err(why) => self.fail(&format!("the converged cluster fell apart: {why}")),
            }
        }
    }

    /// One leader, a running primary; every other node a live replica streaming from it on its
    /// branch of WAL history. Returns the replicas stuck on WAL that diverged from the leader's
    /// (the known gap in the module docs), allowed unless `PATROL_SIM_STRICT`.
    fn converged(&self) -> Result<Vec<String>, String> {
        let name = self.dcs.value("leader").ok_or("no leader key")?;
        let l = &self.nodes[self.index(name)];
        if !l.pg.writable() || l.agent != Agent::Live {
            return Err(format!("leader {name} is not a live primary"));
        }
        let lwal = &l.pg.data.as_ref().expect("a primary has data").wal;
        let mut stuck = Vec::new();
        for n in self.nodes.iter().filter(|n| n.name != name) {
            let following = n.agent == Agent::Live
                && n.partitioned_until.is_none()
                && n.pg.running
                && n.pg.in_recovery
                && n.pg.upstream.as_deref() == Some(name)
                && n.runner.in_flight.is_none();
            let wal = n.pg.data.as_ref().map(|d| &d.wal);
            let on_branch = wal.is_some_and(|w| {
                w.current().id == lwal.current().id && w.timeline() == lwal.timeline()
            });
            if following && on_branch {
                continue;
            }
            if following && !self.strict && wal.is_some_and(|w| !w.can_follow(lwal)) {
                stuck.push(n.name.clone());
                continue;
            }
            return Err(format!(
                "{} is not a replica of {name} on its timeline: agent {:?}, pg {}",
                n.name,
                n.agent,
                n.pg.describe()
            ));
        }
        Ok(stuck)
    }
}

/// Runs one seed: `steps` steps with faults, then quiet until the cluster converges.
fn run(seed: u64, nodes: usize, steps: u64) -> Stats {
    eprintln!(
        "simulation: {nodes} nodes, {steps} steps, seed {seed} (replay: PATROL_SIM_SEED={seed})"
    );
    let mut w = World::new(seed, nodes);
    for _ in 0..steps {
        w.step();
    }
    if w.sysid.is_none() {
        w.fail("the cluster never bootstrapped");
    }
    w.stop_faults();
    w.converge();
    eprintln!("  {:?}", w.stats);
    w.stats
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
    (0..count).map(|_| r.next()).collect()
}

/// Runs the seeds on the available cores (each run is deterministic on its own).
fn run_many(nodes: usize, count: u64, steps: u64) {
    let seeds = seeds(count);
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let results: Vec<std::thread::Result<Vec<Stats>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let mine: Vec<u64> = seeds.iter().copied().skip(w).step_by(workers).collect();
                scope.spawn(move || {
                    mine.into_iter()
                        .map(|seed| run(seed, nodes, steps))
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
                }
            }
            // The first failure, with its seed, trace and message.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    // The runs must have exercised failover, not just watched a quiet cluster.
    assert!(total.faults > 0, "no faults were injected: {total:?}");
    assert!(total.promotions > 0, "no failover happened: {total:?}");
}

#[test]
fn three_nodes_with_faults() {
    run_many(3, 20, 3000);
}

#[test]
fn five_nodes_with_faults() {
    run_many(5, 5, 2000);
}

/// The leader race winner freezes right after taking the key, before its promotion ran; its
/// lease expires and the third node takes over. When it thaws, its promotion must not make a
/// second primary (Patroni: "lost leader before promote" / "lost leader lock during promote").
#[test]
fn a_node_frozen_while_promoting_does_not_come_back_as_a_second_primary() {
    let mut w = World::new(1, 3);
    w.replay =
        "scripted: a_node_frozen_while_promoting_does_not_come_back_as_a_second_primary".into();
    w.faults_on = false;
    w.converge();
    let old = w.index(w.dcs.value("leader").expect("converged"));
    w.crash_agent(old, w.now + 60_000);
    w.nodes[old].pg.stop();
    w.log(format!(
        "{}: node lost (agent and PostgreSQL)",
        w.nodes[old].name
    ));
    w.freeze_next_winner = Some(20_000);
    for _ in 0..60 {
        w.step();
    }
    let frozen = w.frozen_winner.expect("a replica won the race and froze");
    let leader = w.dcs.value("leader").expect("a leader").to_string();
    assert_ne!(leader, w.nodes[frozen].name, "the third node took over");
    assert_eq!(w.nodes[frozen].agent, Agent::Live, "the winner thawed");
    w.converge();
}

/// Row U-3: the leader freezes past its lease, the other node promotes (and publishes the
/// history), then that node is lost too. The old leader thaws with its PostgreSQL still a
/// primary on the old timeline and no leader key: it must never take the key (that would serve
/// writes on the abandoned timeline). When the lost node comes back, the cluster converges on
/// the new timeline with the old leader rewound.
#[test]
fn a_stale_primary_woken_after_the_new_leader_died_never_takes_the_key() {
    let mut w = World::new(2, 2);
    w.replay =
        "scripted: a_stale_primary_woken_after_the_new_leader_died_never_takes_the_key".into();
    w.faults_on = false;
    w.converge();
    let old = w.index(w.dcs.value("leader").expect("converged"));
    let new = 1 - old;
    let old_name = w.nodes[old].name.clone();
    w.nodes[old].agent = Agent::Frozen {
        until: w.now + 600_000,
    };
    w.log(format!("{old_name}: frozen"));
    let mut steps = 0;
    while w.max_timeline < 2 || w.dcs.value("leader") != Some(w.nodes[new].name.as_str()) {
        w.step();
        steps += 1;
        assert!(steps < 500, "the other node never took over");
    }
    // The new leader's node is lost: agent and PostgreSQL.
    w.crash_agent(new, w.now + 120_000);
    w.nodes[new].pg.stop();
    w.log(format!("{}: node lost", w.nodes[new].name));
    while w.dcs.value("leader").is_some() {
        w.step();
    }
    // The stale primary thaws while nobody leads.
    w.nodes[old].agent = Agent::Frozen { until: w.now };
    for _ in 0..200 {
        w.step();
        assert_ne!(
            w.dcs.value("leader"),
            Some(old_name.as_str()),
            "the stale primary took the leader key"
        );
        // (`check_invariants`, run by every step, fails as soon as a live agent's PostgreSQL is
        // writable without the key.)
    }
    w.converge();
}
