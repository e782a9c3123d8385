//! The simulated world every port reads and writes: one etcd (keys, revisions, leases), the
//! nodes (a simulated PostgreSQL each, the state of its agent process, a partition from etcd),
//! the seeded RNG and the event log.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use patrol_agent::config::Config;
use patrol_agent::ha::SharedState;
use patrol_dcs::{Cluster, Kv};
use tokio::sync::watch;
use tokio::time::Instant;

pub const SCOPE_PREFIX: &str = "/service/sim/";
const EVENTS_SHOWN: usize = 40;

/// SplitMix64: tiny, good enough, and the same on every platform.
pub struct Rng(pub u64);

impl Rng {
    pub fn draw(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.draw() % n
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    pub fn pick(&mut self, from: &[usize]) -> Option<usize> {
        if from.is_empty() {
            None
        } else {
            Some(from[self.below(from.len() as u64) as usize])
        }
    }
}

// ---- etcd ------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Entry {
    pub value: String,
    pub mod_revision: i64,
    pub lease: i64,
}

/// One etcd: a revision counter, keys (without the cluster prefix) with their mod revision and
/// lease, and leases that expire (deleting their keys) unless kept alive.
#[derive(Debug, Default)]
pub struct Etcd {
    pub revision: i64,
    pub keys: BTreeMap<String, Entry>,
    /// Lease id -> expiry.
    pub leases: BTreeMap<i64, Instant>,
    pub last_lease: i64,
}

impl Etcd {
    pub fn grant(&mut self, ttl: Duration) -> i64 {
        self.last_lease += 1;
        let id = 7_000 + self.last_lease;
        self.leases.insert(id, Instant::now() + ttl);
        id
    }

    /// Expires the leases whose TTL passed; returns the keys deleted with them.
    pub fn expire(&mut self) -> Vec<String> {
        let now = Instant::now();
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

    pub fn put(&mut self, key: &str, value: &str, lease: i64) {
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

    pub fn delete(&mut self, key: &str) -> bool {
        if self.keys.remove(key).is_some() {
            self.revision += 1;
            true
        } else {
            false
        }
    }

    pub fn value(&self, key: &str) -> Option<&str> {
        self.keys.get(key).map(|e| e.value.as_str())
    }

    /// One linearizable prefix read.
    pub fn cluster(&self) -> Cluster {
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

// ---- PostgreSQL --------------------------------------------------------------------------------

/// A stretch of WAL written by one data directory (`owner`) from `start` on, on `timeline`.
/// Two data directories have the same WAL up to a position exactly when they share the branch.
#[derive(Debug, Clone)]
pub struct Branch {
    pub id: u64,
    pub timeline: u64,
    pub start: u64,
    pub owner: u64,
}

#[derive(Debug, Clone)]
pub struct Wal {
    /// Ancestry, oldest first; the last is the branch being written or replayed.
    pub branches: Vec<Branch>,
    pub pos: u64,
    /// The timeline history file: (timeline, switch position) per promotion.
    pub history: Vec<(u64, u64)>,
}

impl Wal {
    pub fn current(&self) -> &Branch {
        self.branches.last().expect("a WAL has a branch")
    }

    pub fn timeline(&self) -> u64 {
        self.current().timeline
    }

    /// A standby at `self` can stream from `src` and catch up: its branch is in `src`'s
    /// ancestry and it has nothing past the point where `src` left that branch.
    pub fn can_follow(&self, src: &Wal) -> bool {
        let me = self.current().id;
        match src.branches.iter().position(|b| b.id == me) {
            None => false,
            Some(i) if i + 1 == src.branches.len() => self.pos <= src.pos,
            Some(i) => self.pos <= src.branches[i + 1].start,
        }
    }

    /// Whether the WAL up to `pos` on `branch` is part of this WAL.
    pub fn contains(&self, branch: u64, pos: u64) -> bool {
        match self.branches.iter().position(|b| b.id == branch) {
            None => false,
            Some(i) if i + 1 == self.branches.len() => pos <= self.pos,
            Some(i) => pos <= self.branches[i + 1].start,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PgData {
    pub sysid: String,
    /// pg_control's "Database cluster state".
    pub state: &'static str,
    /// Identity of this data directory (a clone is a new one; a rewind keeps it).
    pub instance: u64,
    pub wal: Wal,
}

#[derive(Debug, Default)]
pub struct SimPg {
    /// `None`: empty data directory.
    pub data: Option<PgData>,
    pub running: bool,
    pub in_recovery: bool,
    /// The node a standby streams from (`primary_conninfo`).
    pub upstream: Option<usize>,
    /// What the configuration files on disk say: `None` no `standby.signal`; `Some(up)` a
    /// standby of `up` (or of nobody).
    pub recovery: Option<Option<usize>>,
    pub slots: BTreeSet<String>,
    /// `synchronous_standby_names` in the configuration files, and in effect (after a start
    /// or reload).
    pub ssn_file: String,
    pub ssn: String,
    /// Changes at every start (the walsender pid a primary reports for this standby).
    pub start_id: u64,
    /// Its replication connection is cut (a network fault between it and its upstream).
    pub repl_cut: bool,
}

impl SimPg {
    pub fn writable(&self) -> bool {
        self.running && !self.in_recovery
    }

    pub fn describe(&self, names: &[String]) -> String {
        let Some(d) = &self.data else {
            return format!("empty data dir, running={}", self.running);
        };
        let role = match (self.running, self.in_recovery) {
            (false, _) => "stopped".to_string(),
            (true, false) => "PRIMARY".to_string(),
            (true, true) => format!(
                "standby of {}",
                self.upstream.map_or("nobody", |u| names[u].as_str())
            ),
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

// ---- Nodes -------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    Live,
    /// The agent process is stopped (SIGSTOP); its PostgreSQL still serves.
    Frozen,
    /// The agent process is dead; its PostgreSQL still serves.
    Down,
}

pub struct Node {
    pub name: String,
    pub cfg: Arc<Config>,
    pub pg: SimPg,
    pub agent: Agent,
    /// Incremented when the agent process dies: the ports of a dead process block forever.
    pub epoch: u64,
    pub partitioned: bool,
    /// The running agent's shared state (what its REST API answers from).
    pub shared: Arc<SharedState>,
    /// After a thaw or restart: the agent's cycle count by which it has acted on what it now
    /// sees (the checker exempts it until then).
    pub settle_after_cycle: Option<u64>,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub faults: u64,
    pub promotions: u64,
    pub clones: u64,
    pub rewinds: u64,
    pub leader_changes: u64,
    pub converged_after_ms: u64,
    pub stuck_diverged: u64,
    /// Acknowledged commits (of primaries holding the leader key) not in the final leader's WAL:
    /// the price of asynchronous replication (P9's synchronous mode must make it 0).
    pub lost_acked_commits: u64,
}

pub struct World {
    pub rng: Rng,
    pub etcd: Etcd,
    pub watch: watch::Sender<Option<Arc<Cluster>>>,
    pub nodes: Vec<Node>,
    next_id: u64,
    pub log: VecDeque<String>,
    pub trace: bool,
    pub replay: String,
    pub stats: Stats,
    pub max_timeline: u64,
    pub sysid: Option<String>,
    pub last_leader: Option<String>,
    /// Commits acknowledged by a primary holding the leader key: (branch, position).
    pub acked: Vec<(u64, u64)>,
    /// Scripted: freeze the next node that takes the leader key for this long.
    pub freeze_next_winner: Option<Duration>,
    pub frozen_winner: Option<usize>,
    /// The first invariant violation, with the events before it.
    pub failure: Option<String>,
    pub start: Instant,
}

pub type Shared = Arc<Mutex<World>>;

pub fn lock(w: &Shared) -> MutexGuard<'_, World> {
    // A panic while holding the lock is a test failure already on its way.
    w.lock().unwrap_or_else(|e| e.into_inner())
}

impl World {
    pub fn new(seed: u64) -> World {
        World {
            rng: Rng(seed),
            etcd: Etcd::default(),
            watch: watch::channel(None).0,
            nodes: Vec::new(),
            next_id: 0,
            log: VecDeque::new(),
            trace: std::env::var_os("PATROL_SIM_TRACE").is_some(),
            replay: format!("PATROL_SIM_SEED={seed}"),
            stats: Stats::default(),
            max_timeline: 0,
            sysid: None,
            last_leader: None,
            acked: Vec::new(),
            freeze_next_winner: None,
            frozen_winner: None,
            failure: None,
            start: Instant::now(),
        }
    }

    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    pub fn log(&mut self, msg: String) {
        let t = Instant::now().duration_since(self.start).as_millis() as f64 / 1000.0;
        let line = format!("[{t:9.3}s] {msg}");
        if self.trace {
            eprintln!("{line}");
        }
        self.log.push_back(line);
        if self.log.len() > EVENTS_SHOWN {
            self.log.pop_front();
        }
    }

    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The node whose PostgreSQL listens on this port.
    pub fn by_port(&self, port: u16) -> Option<usize> {
        let i = port.checked_sub(crate::PG_PORT)? as usize;
        (i < self.nodes.len()).then_some(i)
    }

    /// Publishes the etcd state to the watchers (after every change).
    pub fn publish(&mut self) {
        let c = Arc::new(self.etcd.cluster());
        self.watch.send_replace(Some(c));
    }

    pub fn describe(&self) -> String {
        let names = self.names();
        let mut s = String::new();
        for n in &self.nodes {
            s.push_str(&format!(
                "  {}: agent {:?}{}, pg {}\n",
                n.name,
                n.agent,
                if n.partitioned { " (partitioned)" } else { "" },
                n.pg.describe(&names)
            ));
        }
        s.push_str(&format!(
            "  etcd: leader={:?} initialize={:?} history={:?}\n",
            self.etcd.value("leader"),
            self.etcd.value("initialize"),
            self.etcd.value("history"),
        ));
        s
    }

    /// Records the first violation with the recent events (the test fails at its next check).
    pub fn fail(&mut self, what: &str) {
        if self.failure.is_some() {
            return;
        }
        let events: Vec<&str> = self.log.iter().map(String::as_str).collect();
        self.failure = Some(format!(
            "simulation invariant violated: {what}\nreplay: {}\nstate:\n{}last events:\n  {}",
            self.replay,
            self.describe(),
            events.join("\n  ")
        ));
    }

    /// A node that just came back is exempt until its agent completed two more cycles (one
    /// that may have started before it stopped, and one that saw the world as it is).
    fn settled(&mut self, i: usize) -> bool {
        let cycles = self.nodes[i].shared.snapshot().cycles;
        match self.nodes[i].settle_after_cycle {
            Some(c) if cycles < c => false,
            _ => {
                self.nodes[i].settle_after_cycle = None;
                true
            }
        }
    }

    /// The safety invariants, checked after every event.
    pub fn check(&mut self) {
        let leader = self.etcd.value("leader").map(str::to_string);
        // Bootstrapping: `initialize` is being raced for, or its winner is publishing the
        // cluster (`FinishBootstrap` writes `initialize`, `config`, then the leader key).
        let bootstrapping = self.etcd.value("initialize") == Some("")
            || (self.stats.leader_changes == 0 && leader.is_none());
        let mut watched = Vec::new();
        for i in 0..self.nodes.len() {
            if self.nodes[i].agent == Agent::Live && self.settled(i) {
                watched.push(i);
            }
        }
        // (a) At most one writable primary among the nodes whose agent runs. A frozen or dead
        // agent cannot fence its PostgreSQL: there only the lease deadline protects (in
        // production the watchdog resets its host; the simulation has none).
        let primaries: Vec<&str> = watched
            .iter()
            .filter(|&&i| self.nodes[i].pg.writable())
            .map(|&i| self.nodes[i].name.as_str())
            .collect();
        if primaries.len() > 1 {
            let p = format!("several writable primaries: {primaries:?}");
            self.fail(&p);
        }
        // (b) It holds the leader key, unless it is cut off from the DCS (the lease guard
        // stops it before its lease can end) or the cluster is being bootstrapped.
        for &i in &watched {
            let n = &self.nodes[i];
            if n.pg.writable()
                && !n.partitioned
                && !bootstrapping
                && leader.as_deref() != Some(n.name.as_str())
            {
                let m = format!(
                    "{} is a writable primary but the leader key is {leader:?}",
                    n.name
                );
                self.fail(&m);
            }
        }
        // (c) The DCS timeline never goes back.
        let tl = self
            .etcd
            .value("history")
            .and_then(patrol_dcs::History::parse)
            .map(|h| h.cluster_timeline())
            .unwrap_or(0);
        if tl < self.max_timeline {
            let m = format!(
                "history timeline went back from {} to {tl}",
                self.max_timeline
            );
            self.fail(&m);
        }
        self.max_timeline = self.max_timeline.max(tl);
        // (d) `initialize` never changes once it holds a sysid.
        let init = self.etcd.value("initialize").map(str::to_string);
        match (&self.sysid, init) {
            (Some(s), i) if i.as_deref() != Some(s.as_str()) => {
                let m = format!("initialize changed from {s} to {i:?}");
                self.fail(&m);
            }
            (None, Some(i)) if i.len() > 5 && i.bytes().all(|b| b.is_ascii_digit()) => {
                self.sysid = Some(i)
            }
            _ => {}
        }
        if leader != self.last_leader {
            if leader.is_some() {
                self.stats.leader_changes += 1;
            }
            let m = format!("etcd: leader key {:?} -> {leader:?}", self.last_leader);
            self.log(m);
            self.last_leader = leader;
        }
    }

    /// One leader, a live primary; every other node a live replica streaming from it on its
    /// branch of WAL history. Returns the replicas stuck on WAL that diverged from the leader's
    /// (allowed with `PATROL_SIM_LENIENT=1`).
    pub fn converged(&self, lenient: bool) -> Result<Vec<String>, String> {
        let name = self.etcd.value("leader").ok_or("no leader key")?;
        let li = self.index(name).ok_or("leader key names no node")?;
        let l = &self.nodes[li];
        if !l.pg.writable() || l.agent != Agent::Live {
            return Err(format!("leader {name} is not a live primary"));
        }
        let lwal = &l.pg.data.as_ref().expect("a primary has data").wal;
        let mut stuck = Vec::new();
        for (i, n) in self.nodes.iter().enumerate().filter(|(i, _)| *i != li) {
            let following = n.agent == Agent::Live
                && !n.partitioned
                && n.pg.running
                && n.pg.in_recovery
                && n.pg.upstream == Some(li);
            let wal = n.pg.data.as_ref().map(|d| &d.wal);
            let on_branch = wal.is_some_and(|w| {
                w.current().id == lwal.current().id && w.timeline() == lwal.timeline()
            });
            if following && on_branch {
                continue;
            }
            if following && lenient && wal.is_some_and(|w| !w.can_follow(lwal)) {
                stuck.push(n.name.clone());
                continue;
            }
            return Err(format!(
                "{} is not a replica of {name} on its timeline: agent {:?}, pg {} (node {i})",
                n.name,
                n.agent,
                n.pg.describe(&self.names())
            ));
        }
        Ok(stuck)
    }
}

// ---- Synchronous replication -------------------------------------------------------------------

/// The standbys streaming from primary `i` now: node index and position (on `i`'s history).
pub fn streaming_from(w: &World, i: usize) -> Vec<(usize, u64)> {
    let Some(src) = w.nodes[i].pg.data.as_ref() else {
        return Vec::new();
    };
    (0..w.nodes.len())
        .filter(|&j| j != i)
        .filter_map(|j| {
            let pg = &w.nodes[j].pg;
            let d = pg.data.as_ref()?;
            (pg.running
                && pg.in_recovery
                && !pg.repl_cut
                && pg.upstream == Some(i)
                && d.sysid == src.sysid
                && d.wal.can_follow(&src.wal))
            .then_some((j, d.wal.pos))
        })
        .collect()
}

/// How primary `i`'s PostgreSQL counts each streaming standby under its
/// `synchronous_standby_names`: `sync` (or `quorum` with `ANY`) when listed among the first
/// `num` (`*` lists every standby, the first by name synchronous), `potential` when listed
/// beyond, else `async`.
fn sync_state_of(
    parsed: &patrol_ha::sync::ParsedNames,
    name: &str,
    rank_of_star: usize,
) -> &'static str {
    if parsed.members.is_empty() {
        return "async";
    }
    let listed = parsed.has_star() || parsed.members.iter().any(|m| m.eq_ignore_ascii_case(name));
    if !listed {
        return "async";
    }
    if parsed.quorum {
        return "quorum";
    }
    let rank = if parsed.has_star() {
        rank_of_star
    } else {
        parsed
            .members
            .iter()
            .position(|m| m.eq_ignore_ascii_case(name))
            .unwrap_or(usize::MAX)
    };
    if rank < parsed.num {
        "sync"
    } else {
        "potential"
    }
}

/// Primary `i`'s `pg_stat_replication`.
pub fn walsenders(w: &World, i: usize) -> Vec<patrol_agent::postgres::ReplicationRow> {
    let parsed = patrol_ha::sync::parse_standby_names(&w.nodes[i].pg.ssn).unwrap_or_default();
    let mut standbys = streaming_from(w, i);
    standbys.sort_by(|a, b| w.nodes[a.0].name.cmp(&w.nodes[b.0].name));
    standbys
        .iter()
        .enumerate()
        .map(|(rank, &(j, pos))| patrol_agent::postgres::ReplicationRow {
            usename: "replicator".into(),
            application_name: w.nodes[j].name.clone(),
            state: "streaming".into(),
            sync_state: sync_state_of(&parsed, &w.nodes[j].name, rank).into(),
            pid: (w.nodes[j].pg.start_id % 1_000_000) as i32 + 1,
            write_lsn: Some(pos),
            flush_lsn: Some(pos),
            replay_lsn: Some(pos),
            ..Default::default()
        })
        .collect()
}

/// The position up to which primary `i` acknowledges commits: its own under asynchronous
/// replication; with `synchronous_standby_names` naming standbys, the `num`-th highest
/// position among the listed standbys streaming from it (none: nothing more is acknowledged).
pub fn ack_position(w: &World, i: usize) -> Option<u64> {
    let pg = &w.nodes[i].pg;
    let own = pg.data.as_ref()?.wal.pos;
    let parsed = patrol_ha::sync::parse_standby_names(&pg.ssn).unwrap_or_default();
    if parsed.members.is_empty() || parsed.num == 0 {
        return Some(own);
    }
    let mut confirmed: Vec<u64> = streaming_from(w, i)
        .into_iter()
        .filter(|&(j, _)| {
            parsed.has_star()
                || parsed
                    .members
                    .iter()
                    .any(|m| m.eq_ignore_ascii_case(&w.nodes[j].name))
        })
        .map(|(_, pos)| pos)
        .collect();
    confirmed.sort_unstable_by(|a, b| b.cmp(a));
    confirmed.get(parsed.num - 1).map(|&p| p.min(own))
}
