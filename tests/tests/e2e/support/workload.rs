//! Observers for the fault tests, each a tokio task that records what it saw with
//! `std::time::Instant`s so a test can line its observations up with the faults it injected:
//!
//! - [`Writer`]: a client that keeps inserting unique rows the way a libpq multi-host client
//!   with `target_session_attrs=read-write` would (fresh connection per attempt, 1 s connect
//!   timeout, the node it last succeeded on first, a read-only error means "next node");
//! - [`Prober`]: asks every node `SELECT pg_is_in_recovery()` every 200 ms;
//! - [`LeaderWatch`]: an etcd watch on the leader key that records every change.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use patrol_tests::{wait_until, Cluster};
use tokio::task::JoinHandle;

/// The table the [`Writer`] inserts into: `(id bigint primary key, node text)`.
pub const WRITER_TABLE: &str = "failover_writes";

/// Pause between two writes.
const WRITE_INTERVAL: Duration = Duration::from_millis(50);
/// Connect timeout of every writer and prober connection (like libpq's `connect_timeout=1`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Cut-off of one whole write attempt (connect + INSERT).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(3);
/// Interval between two prober rounds.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);
/// Cut-off of one probe of one node (connect + query).
const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);

/// A superuser TCP config for the PostgreSQL on `port` with a 1 s connect timeout.
fn quick_config(port: u16) -> tokio_postgres::Config {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password("supersecret")
        .dbname("postgres")
        .connect_timeout(CONNECT_TIMEOUT);
    cfg
}

async fn quick_connect(port: u16) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = quick_config(port).connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Seconds from `t0` to `t` (negative when `t` is earlier), for messages.
pub fn secs_since(t0: Instant, t: Instant) -> f64 {
    if t >= t0 {
        (t - t0).as_secs_f64()
    } else {
        -(t0 - t).as_secs_f64()
    }
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

/// What became of one write attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The INSERT (autocommit) returned: the COMMIT was acknowledged by that node.
    Acked,
    /// Certainly not committed: no connection, or the server answered with an error (for
    /// example `cannot execute INSERT in a read-only transaction`).
    Failed(String),
    /// The connection broke or the attempt timed out after the INSERT was sent: it may or may
    /// not have committed.
    Unknown(String),
}

/// One write attempt of one id on one node.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub id: i64,
    pub node: usize,
    pub start: Instant,
    pub end: Instant,
    pub outcome: Outcome,
}

impl Attempt {
    pub fn acked(&self) -> bool {
        self.outcome == Outcome::Acked
    }
}

/// A running writer; see the module doc.
pub struct Writer {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    task: JoinHandle<()>,
    names: Vec<String>,
}

impl Writer {
    /// Creates [`WRITER_TABLE`] on node `primary` and starts writing, `primary` first.
    pub async fn start(cluster: &Cluster, primary: usize) -> anyhow::Result<Writer> {
        let client = cluster.connect(primary).await?;
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {WRITER_TABLE} (id bigint PRIMARY KEY, node text NOT NULL)"
            ))
            .await
            .with_context(|| format!("creating {WRITER_TABLE} on {}", cluster.name(primary)))?;
        let ports: Vec<u16> = (0..cluster.len()).map(|i| cluster.pg_port(i)).collect();
        let names = (0..cluster.len())
            .map(|i| cluster.name(i).to_owned())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(write_loop(ports, primary, stop.clone(), attempts.clone()));
        Ok(Writer {
            stop,
            attempts,
            task,
            names,
        })
    }

    /// Everything recorded so far.
    pub fn snapshot(&self) -> WriteLog {
        WriteLog {
            attempts: self.attempts.lock().expect("writer log").clone(),
            names: self.names.clone(),
        }
    }

    /// Waits until at least `n` writes matching `pred` were acknowledged; returns the `n`th.
    pub async fn wait_acked(
        &self,
        what: &str,
        n: usize,
        timeout: Duration,
        pred: impl Fn(&Attempt) -> bool,
    ) -> anyhow::Result<Attempt> {
        let pred = &pred;
        wait_until(&format!("the writer: {what}"), timeout, || async move {
            let log = self.attempts.lock().expect("writer log");
            let matching: Vec<&Attempt> = log.iter().filter(|a| a.acked() && pred(a)).collect();
            if matching.len() >= n {
                Ok(Some(matching[n - 1].clone()))
            } else {
                let last = log.last().map(|a| format!("{a:?}")).unwrap_or_default();
                anyhow::bail!(
                    "{} of {n} acknowledged; last attempt: {last}",
                    matching.len()
                )
            }
        })
        .await
    }

    /// Stops writing (after the attempt in flight) and returns the whole log.
    pub async fn stop(self) -> WriteLog {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.task.await {
            panic!("writer task failed: {e}");
        }
        let attempts = std::mem::take(&mut *self.attempts.lock().expect("writer log"));
        WriteLog {
            attempts,
            names: self.names,
        }
    }
}

async fn write_loop(
    ports: Vec<u16>,
    first: usize,
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
) {
    let mut preferred = first;
    let mut next_id: i64 = 1;
    while !stop.load(Ordering::SeqCst) {
        let order = std::iter::once(preferred).chain((0..ports.len()).filter(|&i| i != preferred));
        for node in order {
            let id = next_id;
            next_id += 1;
            let start = Instant::now();
            let outcome = match tokio::time::timeout(ATTEMPT_TIMEOUT, insert(ports[node], id)).await
            {
                Ok(outcome) => outcome,
                Err(_) => Outcome::Unknown(format!("attempt cut off after {ATTEMPT_TIMEOUT:?}")),
            };
            let end = Instant::now();
            let acked = outcome == Outcome::Acked;
            attempts.lock().expect("writer log").push(Attempt {
                id,
                node,
                start,
                end,
                outcome,
            });
            if acked {
                preferred = node;
                break;
            }
        }
        tokio::time::sleep(WRITE_INTERVAL).await;
    }
}

/// One attempt: a fresh connection and an autocommit INSERT of `id`.
async fn insert(port: u16, id: i64) -> Outcome {
    let client = match quick_connect(port).await {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("connect: {e}")),
    };
    let sql = format!(
        "INSERT INTO {WRITER_TABLE} (id, node) VALUES ($1, inet_server_port()::text) \
         RETURNING inet_server_port()"
    );
    match client.query_one(&sql, &[&id]).await {
        Ok(row) => {
            let server_port: i32 = row.get(0);
            if server_port == i32::from(port) {
                Outcome::Acked
            } else {
                // Cannot happen on loopback with one server per port; keep it visible.
                Outcome::Unknown(format!("connected to {port}, server says {server_port}"))
            }
        }
        Err(e) if e.as_db_error().is_some() => Outcome::Failed(format!("{e}")),
        Err(e) => Outcome::Unknown(format!("{e}")),
    }
}

/// A maximal run of consecutive acknowledged writes on one node.
#[derive(Debug, Clone)]
pub struct Run {
    pub node: usize,
    pub count: usize,
    /// Start of the first write of the run.
    pub first: Instant,
    /// Acknowledgement of the last write of the run.
    pub last: Instant,
}

/// Every attempt of a [`Writer`], in order.
#[derive(Debug, Clone)]
pub struct WriteLog {
    pub attempts: Vec<Attempt>,
    names: Vec<String>,
}

impl WriteLog {
    pub fn name(&self, node: usize) -> &str {
        &self.names[node]
    }

    /// Acknowledged attempts, in time order (the writer is sequential).
    pub fn acked(&self) -> Vec<&Attempt> {
        self.attempts.iter().filter(|a| a.acked()).collect()
    }

    /// Acknowledged writes grouped into runs of consecutive writes on one node.
    pub fn runs(&self) -> Vec<Run> {
        let mut runs: Vec<Run> = Vec::new();
        for a in self.acked() {
            match runs.last_mut() {
                Some(r) if r.node == a.node => {
                    r.count += 1;
                    r.last = a.end;
                }
                _ => runs.push(Run {
                    node: a.node,
                    count: 1,
                    first: a.start,
                    last: a.end,
                }),
            }
        }
        runs
    }

    /// "No two nodes were writable at once", as the writer saw it: once acknowledged writes
    /// moved from node A to node B, no later acknowledged write went to A again.
    pub fn check_no_return(&self, t0: Instant) -> Result<(), String> {
        let runs = self.runs();
        let mut left: Vec<usize> = Vec::new();
        for (k, r) in runs.iter().enumerate() {
            if left.contains(&r.node) {
                return Err(format!(
                    "acknowledged writes went back to {} (run {k} of {}) after moving away from \
                     it:\n{}",
                    self.name(r.node),
                    runs.len(),
                    self.summary(t0)
                ));
            }
            if k + 1 < runs.len() {
                left.push(r.node);
            }
        }
        Ok(())
    }

    /// The last acknowledged write before `t` (by acknowledgement time).
    pub fn last_acked_before(&self, t: Instant) -> Option<&Attempt> {
        self.acked().into_iter().rev().find(|a| a.end < t)
    }

    /// The first acknowledged write that started after `t`.
    pub fn first_acked_after(&self, t: Instant) -> Option<&Attempt> {
        self.acked().into_iter().find(|a| a.start > t)
    }

    /// Client-visible write outage around `t`: from the last acknowledgement before `t` to the
    /// first acknowledgement of a write started after `t`.
    pub fn outage_around(&self, t: Instant) -> Option<Duration> {
        let before = self.last_acked_before(t)?;
        let after = self.first_acked_after(t)?;
        Some(after.end.saturating_duration_since(before.end))
    }

    /// Acknowledged writes whose id is not in `present`.
    pub fn missing(&self, present: &HashSet<i64>) -> Vec<&Attempt> {
        self.acked()
            .into_iter()
            .filter(|a| !present.contains(&a.id))
            .collect()
    }

    /// Counts per outcome and node, and the runs, with times relative to `t0`.
    pub fn summary(&self, t0: Instant) -> String {
        let mut per_node: BTreeMap<&str, (usize, usize, usize)> = BTreeMap::new();
        for a in &self.attempts {
            let e = per_node.entry(self.name(a.node)).or_default();
            match a.outcome {
                Outcome::Acked => e.0 += 1,
                Outcome::Failed(_) => e.1 += 1,
                Outcome::Unknown(_) => e.2 += 1,
            }
        }
        let mut s = format!("writer: {} attempts;", self.attempts.len());
        for (name, (ok, failed, unknown)) in &per_node {
            let _ = write!(
                s,
                " {name}: {ok} acked, {failed} failed, {unknown} unknown;"
            );
        }
        let mut took: Vec<Duration> = self.acked().iter().map(|a| a.end - a.start).collect();
        took.sort();
        if let (Some(min), Some(max)) = (took.first(), took.last()) {
            let _ = write!(
                s,
                " acknowledged attempts took {min:.0?} min, {:.0?} median, {max:.0?} max;",
                took[took.len() / 2]
            );
        }
        s.push_str("\nruns of acknowledged writes:");
        for r in self.runs() {
            let _ = write!(
                s,
                "\n  {} x{} from {:+.3}s to {:+.3}s",
                self.name(r.node),
                r.count,
                secs_since(t0, r.first),
                secs_since(t0, r.last)
            );
        }
        let unknown: Vec<String> = self
            .attempts
            .iter()
            .filter_map(|a| match &a.outcome {
                Outcome::Unknown(e) => Some(format!(
                    "  id {} on {} at {:+.3}s: {e}",
                    a.id,
                    self.name(a.node),
                    secs_since(t0, a.start)
                )),
                _ => None,
            })
            .collect();
        if !unknown.is_empty() {
            let _ = write!(s, "\nin-doubt attempts:\n{}", unknown.join("\n"));
        }
        s
    }
}

/// The ids in [`WRITER_TABLE`] on node `i`.
pub async fn written_ids(cluster: &Cluster, i: usize) -> anyhow::Result<HashSet<i64>> {
    let client = cluster.connect(i).await?;
    let rows = client
        .query(&format!("SELECT id FROM {WRITER_TABLE}"), &[])
        .await
        .with_context(|| format!("reading {WRITER_TABLE} on {}", cluster.name(i)))?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}

// ---------------------------------------------------------------------------------------------
// Prober
// ---------------------------------------------------------------------------------------------

/// One prober round: every node asked `pg_is_in_recovery()` concurrently.
#[derive(Debug, Clone)]
pub struct Round {
    pub start: Instant,
    pub end: Instant,
    /// Per node: `Some(in_recovery)`, or `None` when it did not answer.
    pub in_recovery: Vec<Option<bool>>,
}

impl Round {
    /// Nodes that said they are not in recovery (writable primaries).
    pub fn primaries(&self) -> Vec<usize> {
        (0..self.in_recovery.len())
            .filter(|&i| self.in_recovery[i] == Some(false))
            .collect()
    }
}

/// A running prober; see the module doc.
pub struct Prober {
    stop: Arc<AtomicBool>,
    rounds: Arc<Mutex<Vec<Round>>>,
    task: JoinHandle<()>,
    names: Vec<String>,
}

impl Prober {
    pub fn start(cluster: &Cluster) -> Prober {
        let ports: Vec<u16> = (0..cluster.len()).map(|i| cluster.pg_port(i)).collect();
        let names = (0..cluster.len())
            .map(|i| cluster.name(i).to_owned())
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(probe_loop(ports, stop.clone(), rounds.clone()));
        Prober {
            stop,
            rounds,
            task,
            names,
        }
    }

    pub fn snapshot(&self) -> Vec<Round> {
        self.rounds.lock().expect("prober log").clone()
    }

    pub async fn stop(self) -> ProbeLog {
        self.stop.store(true, Ordering::SeqCst);
        if let Err(e) = self.task.await {
            panic!("prober task failed: {e}");
        }
        let rounds = std::mem::take(&mut *self.rounds.lock().expect("prober log"));
        ProbeLog {
            rounds,
            names: self.names,
        }
    }
}

async fn probe_loop(ports: Vec<u16>, stop: Arc<AtomicBool>, rounds: Arc<Mutex<Vec<Round>>>) {
    // One kept connection per node (a fresh one after any failure): cheaper than connecting
    // every round, so rounds stay close to PROBE_INTERVAL.
    let mut conns: Vec<Option<tokio_postgres::Client>> = ports.iter().map(|_| None).collect();
    let mut tick = tokio::time::interval(PROBE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let start = Instant::now();
        let probes: Vec<JoinHandle<(Option<tokio_postgres::Client>, Option<bool>)>> = ports
            .iter()
            .zip(conns.iter_mut())
            .map(|(&port, conn)| tokio::spawn(probe(port, conn.take())))
            .collect();
        let mut in_recovery = Vec::with_capacity(probes.len());
        for (p, conn) in probes.into_iter().zip(conns.iter_mut()) {
            let (client, answer) = p.await.unwrap_or((None, None));
            *conn = client;
            in_recovery.push(answer);
        }
        let end = Instant::now();
        rounds.lock().expect("prober log").push(Round {
            start,
            end,
            in_recovery,
        });
    }
}

/// Asks `pg_is_in_recovery()` on the kept connection if any, else (or if that fails) on a fresh
/// one; returns the connection to keep and the answer.
async fn probe(
    port: u16,
    kept: Option<tokio_postgres::Client>,
) -> (Option<tokio_postgres::Client>, Option<bool>) {
    async fn ask(client: &tokio_postgres::Client) -> Option<bool> {
        let row = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await
            .ok()?;
        Some(row.get::<_, bool>(0))
    }
    let work = async {
        if let Some(client) = kept {
            if let Some(answer) = ask(&client).await {
                return (Some(client), Some(answer));
            }
        }
        let Ok(client) = quick_connect(port).await else {
            return (None, None);
        };
        match ask(&client).await {
            Some(answer) => (Some(client), Some(answer)),
            None => (None, None),
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, work)
        .await
        .unwrap_or((None, None))
}

/// Every round of a [`Prober`], in order.
#[derive(Debug, Clone)]
pub struct ProbeLog {
    pub rounds: Vec<Round>,
    names: Vec<String>,
}

impl ProbeLog {
    /// Rounds in which two or more nodes said they were primaries.
    pub fn multi_primary_rounds(&self) -> Vec<&Round> {
        self.rounds
            .iter()
            .filter(|r| r.primaries().len() >= 2)
            .collect()
    }

    /// The longest stretch of consecutive rounds with 2+ primaries (first start to last end).
    pub fn longest_multi_primary_span(&self) -> Duration {
        let mut best = Duration::ZERO;
        let mut open: Option<Instant> = None;
        for r in &self.rounds {
            if r.primaries().len() >= 2 {
                let s = *open.get_or_insert(r.start);
                best = best.max(r.end - s);
            } else {
                open = None;
            }
        }
        best
    }

    /// One line per round in `[from, to]`, for messages.
    pub fn describe(&self, t0: Instant, from: Instant, to: Instant) -> String {
        let mut s = String::new();
        for r in self
            .rounds
            .iter()
            .filter(|r| r.end >= from && r.start <= to)
        {
            let states: Vec<String> = r
                .in_recovery
                .iter()
                .enumerate()
                .map(|(i, st)| {
                    let st = match st {
                        Some(false) => "primary",
                        Some(true) => "recovery",
                        None => "down",
                    };
                    format!("{}={st}", self.names[i])
                })
                .collect();
            let _ = writeln!(
                s,
                "  {:+.3}s..{:+.3}s {}",
                secs_since(t0, r.start),
                secs_since(t0, r.end),
                states.join(" ")
            );
        }
        s
    }

    /// Human-readable description of the rounds with 2+ primaries.
    pub fn describe_multi_primary(&self, t0: Instant) -> String {
        let mut s = String::new();
        for r in self.multi_primary_rounds() {
            let names: Vec<&str> = r.primaries().iter().map(|&i| &*self.names[i]).collect();
            let _ = writeln!(
                s,
                "  {:+.3}s..{:+.3}s primaries {names:?}",
                secs_since(t0, r.start),
                secs_since(t0, r.end)
            );
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// LeaderWatch
// ---------------------------------------------------------------------------------------------

/// One value of the leader key: `None` when it was deleted (released or expired).
#[derive(Debug, Clone)]
pub struct LeaderChange {
    pub at: Instant,
    pub revision: i64,
    pub holder: Option<String>,
}

/// An etcd watch on `<prefix>leader` recording every put and delete (reconnecting from the last
/// seen revision if the stream breaks, so no change is missed).
pub struct LeaderWatch {
    changes: Arc<Mutex<Vec<LeaderChange>>>,
    task: JoinHandle<()>,
}

impl LeaderWatch {
    /// Reads the current value (recorded as the first change) and watches from there.
    pub async fn start(cluster: &Cluster) -> anyhow::Result<LeaderWatch> {
        let endpoint = cluster.etcd().endpoint();
        let key = format!("{}leader", cluster.prefix());
        let mut client = watch_client(&endpoint).await?;
        let resp = client
            .get(key.as_str(), None)
            .await
            .context("get leader key")?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let holder = resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
        let changes = Arc::new(Mutex::new(vec![LeaderChange {
            at: Instant::now(),
            revision,
            holder,
        }]));
        let task = tokio::spawn(watch_loop(endpoint, key, revision + 1, changes.clone()));
        Ok(LeaderWatch { changes, task })
    }

    pub fn stop(self) -> Vec<LeaderChange> {
        self.task.abort();
        let changes = self.changes.lock().expect("leader watch").clone();
        changes
    }
}

/// Every change as `+1.234s pg1` lines relative to `t0`.
pub fn describe_changes(changes: &[LeaderChange], t0: Instant) -> String {
    changes
        .iter()
        .map(|c| {
            format!(
                "  {:+.3}s rev {} {}",
                secs_since(t0, c.at),
                c.revision,
                c.holder.as_deref().unwrap_or("(none)")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn watch_client(endpoint: &str) -> anyhow::Result<etcd_client::Client> {
    // No request timeout: it would also cut the watch stream.
    let opts = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
    etcd_client::Client::connect([endpoint], Some(opts))
        .await
        .with_context(|| format!("connecting to etcd at {endpoint}"))
}

async fn watch_loop(
    endpoint: String,
    key: String,
    mut next_revision: i64,
    changes: Arc<Mutex<Vec<LeaderChange>>>,
) {
    loop {
        let stream = async {
            let mut client = watch_client(&endpoint).await?;
            let opts = etcd_client::WatchOptions::new().with_start_revision(next_revision);
            anyhow::Ok(client.watch(key.as_str(), Some(opts)).await?)
        };
        let mut stream = match stream.await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        while let Ok(Some(resp)) = stream.message().await {
            let at = Instant::now();
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                let holder = match ev.event_type() {
                    etcd_client::EventType::Put => {
                        Some(String::from_utf8_lossy(kv.value()).into_owned())
                    }
                    etcd_client::EventType::Delete => None,
                };
                next_revision = next_revision.max(kv.mod_revision() + 1);
                changes.lock().expect("leader watch").push(LeaderChange {
                    at,
                    revision: kv.mod_revision(),
                    holder,
                });
            }
            if resp.canceled() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL state helpers
// ---------------------------------------------------------------------------------------------

/// `timeline_id` of the last checkpoint (`pg_control_checkpoint()`) on node `i`.
pub async fn checkpoint_timeline(cluster: &Cluster, i: usize) -> anyhow::Result<u32> {
    let client = cluster.connect(i).await?;
    let tl: i32 = client
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .await
        .with_context(|| format!("pg_control_checkpoint() on {}", cluster.name(i)))?
        .get(0);
    Ok(tl as u32)
}

/// The timeline node `i` writes WAL on (from the name of its current WAL file); fails on a
/// node in recovery.
pub async fn primary_timeline(cluster: &Cluster, i: usize) -> anyhow::Result<u32> {
    let client = cluster.connect(i).await?;
    let file: String = client
        .query_one("SELECT pg_walfile_name(pg_current_wal_lsn())", &[])
        .await
        .with_context(|| format!("pg_walfile_name() on {}", cluster.name(i)))?
        .get(0);
    u32::from_str_radix(&file[..8], 16).with_context(|| format!("WAL file name {file}"))
}

/// Node `i`'s WAL receiver: `(status, received_tli, sender_port)`, `None` if it has none.
pub async fn wal_receiver(
    cluster: &Cluster,
    i: usize,
) -> anyhow::Result<Option<(String, u32, Option<u16>)>> {
    let client = cluster.connect(i).await?;
    let row = client
        .query_opt(
            "SELECT status, received_tli, sender_port FROM pg_stat_wal_receiver",
            &[],
        )
        .await
        .with_context(|| format!("pg_stat_wal_receiver on {}", cluster.name(i)))?;
    Ok(row.map(|r| {
        let tli: i32 = r.get(1);
        let port: Option<i32> = r.get(2);
        (
            r.get::<_, String>(0),
            tli as u32,
            port.and_then(|p| u16::try_from(p).ok()),
        )
    }))
}

/// Waits until node `i` is in recovery and streams from node `leader` on `timeline`.
pub async fn wait_streaming_from(
    cluster: &Cluster,
    i: usize,
    leader: usize,
    timeline: u32,
    timeout: Duration,
) -> anyhow::Result<()> {
    let what = format!(
        "{} to stream from {} (port {}) on timeline {timeline}",
        cluster.name(i),
        cluster.name(leader),
        cluster.pg_port(leader)
    );
    wait_until(&what, timeout, || async move {
        if !super::in_recovery(cluster, i).await? {
            anyhow::bail!("{} is not in recovery", cluster.name(i));
        }
        match wal_receiver(cluster, i).await? {
            Some((status, tli, port))
                if status == "streaming"
                    && tli == timeline
                    && port == Some(cluster.pg_port(leader)) =>
            {
                Ok(Some(()))
            }
            other => anyhow::bail!("wal receiver (status, received_tli, sender_port): {other:?}"),
        }
    })
    .await
}

/// What node `i`'s most recent agent run wrote (its log after the last harness header).
pub fn last_run_log(cluster: &Cluster, i: usize) -> String {
    let log = cluster.agent_log(i);
    match log.rfind("--- harness: starting") {
        Some(at) => log[at..].to_owned(),
        None => log,
    }
}

/// Lines of node `i`'s agent log that contain `needle` (case-insensitive).
pub fn agent_log_lines(cluster: &Cluster, i: usize, needle: &str) -> Vec<String> {
    let needle = needle.to_lowercase();
    cluster
        .agent_log(i)
        .lines()
        .filter(|l| l.to_lowercase().contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// The current length of every node's agent log, to print what was logged after a fault with
/// [`agent_log_since`].
pub fn agent_log_marks(cluster: &Cluster) -> Vec<usize> {
    (0..cluster.len())
        .map(|i| cluster.agent_log(i).len())
        .collect()
}

/// What node `i`'s agents logged after `marks[i]` (from [`agent_log_marks`]), at most
/// `max_lines` lines.
pub fn agent_log_since(cluster: &Cluster, i: usize, marks: &[usize], max_lines: usize) -> String {
    let log = cluster.agent_log(i);
    let tail = log.get(marks[i]..).unwrap_or_default();
    tail.lines().take(max_lines).collect::<Vec<_>>().join("\n")
}
