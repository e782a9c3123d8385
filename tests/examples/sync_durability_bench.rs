//! Durability benchmark: how many acknowledged commits a failover loses, per replication mode.
//! A 3-node cluster in `--mode async|on|quorum` (plus `--strict`); a writer inserts rows with
//! increasing ids in autocommit on whichever node is the writable primary (reconnecting after a
//! failover) and records an id only when its COMMIT was acknowledged. The leader's host is then
//! lost `--rounds` times (default 20), alternately: SIGKILL of its agent and of its whole
//! PostgreSQL (postmaster and every child, frozen first so none escapes); SIGSTOP of all of
//! them until a new leader is writable (longer than ttl), then SIGKILL, so the frozen primary
//! never runs again. After each failover every
//! acknowledged id is looked up on the new leader; then the lost node is restarted (pg_rewind)
//! and rejoins before the next round. Not a test: figures go to docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo build -p patrol-agent -p patrol-ctl
//! cargo run -p patrol-tests --example sync_durability_bench -- --mode on --rounds 20
//! ```
//! Options: `--mode async|on|quorum` (default `on`), `--strict`, `--rounds N`. Environment:
//! `BENCH_DCS` (the bootstrap.dcs flow mapping, default the harness's
//! `{ttl: 10, loop_wait: 1, retry_timeout: 3}`).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use patrol_dcs::SyncState;
use patrol_tests::{index_of, wait_healthy, wait_until, Cluster, Signal, HEALTHY_TIMEOUT};
use tokio_postgres::NoTls;

/// Cut-off of one connection attempt (TCP connect, startup, `pg_is_in_recovery()`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Cut-off of one INSERT: past it the outcome is unknown and the id is not counted.
const INSERT_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause between two INSERTs.
const WRITE_INTERVAL: Duration = Duration::from_millis(5);
/// Acknowledged commits wanted on the leader before each fault.
const WARMUP_ACKS: usize = 50;

struct Args {
    mode: String,
    strict: bool,
    rounds: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        mode: "on".into(),
        strict: false,
        rounds: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--mode" => a.mode = it.next().context("--mode needs a value")?,
            "--strict" => a.strict = true,
            "--rounds" => {
                a.rounds = it
                    .next()
                    .context("--rounds needs a value")?
                    .parse()
                    .context("--rounds: not a number")?
            }
            other => {
                bail!("unknown argument {other:?} (--mode async|on|quorum, --strict, --rounds N)")
            }
        }
    }
    if !["async", "on", "quorum"].contains(&a.mode.as_str()) {
        bail!("--mode {:?}: expected async, on or quorum", a.mode);
    }
    Ok(a)
}

/// A superuser connection to the PostgreSQL on `port` if it is a writable primary.
async fn connect_primary(port: u16) -> anyhow::Result<tokio_postgres::Client> {
    let attempt = async {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(port)
            .user("postgres")
            .password("supersecret")
            .dbname("postgres")
            .connect_timeout(CONNECT_TIMEOUT);
        let (client, conn) = cfg.connect(NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let in_recovery: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await?
            .get(0);
        anyhow::ensure!(!in_recovery, "in recovery");
        Ok(client)
    };
    tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .context("connect timed out")?
}

/// The writer's shared record: acknowledged ids, in order.
#[derive(Default)]
struct Acks {
    ids: Vec<i64>,
}

/// Inserts ids 1, 2, ... one at a time through whichever node is a writable primary.
async fn write_loop(ports: Vec<u16>, stop: Arc<AtomicBool>, acks: Arc<Mutex<Acks>>) {
    let mut next_id: i64 = 1;
    let mut client: Option<tokio_postgres::Client> = None;
    let mut preferred = 0usize;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_ref() else {
            for k in 0..ports.len() {
                let i = (preferred + k) % ports.len();
                if let Ok(c) = connect_primary(ports[i]).await {
                    client = Some(c);
                    preferred = i;
                    break;
                }
            }
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        };
        let id = next_id;
        next_id += 1;
        let r = tokio::time::timeout(
            INSERT_TIMEOUT,
            c.execute("INSERT INTO acked(id) VALUES ($1)", &[&id]),
        )
        .await;
        match r {
            Ok(Ok(_)) => acks.lock().expect("acks").ids.push(id),
            // An error or no answer: not acknowledged (it may or may not have committed).
            _ => client = None,
        }
        tokio::time::sleep(WRITE_INTERVAL).await;
    }
}

/// Ids present in `acked` on node `i`.
async fn ids_on(c: &Cluster, i: usize) -> anyhow::Result<BTreeSet<i64>> {
    let client = c.connect(i).await?;
    let rows = client.query("SELECT id FROM acked", &[]).await?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}

/// The children of `parent` (from `/proc/<pid>/stat`, field 4 after the `(comm)`).
fn children_of(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let after = &stat[stat.rfind(')')? + 1..];
                    after.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent.as_raw())
        })
        .map(Pid::from_raw)
        .collect()
}

/// Freezes node `i`'s whole PostgreSQL and returns its processes: the postmaster first (so it
/// forks no more), then every child (each runs in its own process group, so a signal to the
/// postmaster's group would miss them).
fn freeze_postgres(c: &Cluster, i: usize) -> anyhow::Result<Vec<Pid>> {
    let pm = c
        .postmaster_pid(i)
        .with_context(|| format!("no postmaster for {}", c.name(i)))?;
    kill(pm, Signal::SIGSTOP).context("SIGSTOP postmaster")?;
    let mut all = vec![pm];
    all.extend(children_of(pm));
    for &p in &all[1..] {
        let _ = kill(p, Signal::SIGSTOP);
    }
    Ok(all)
}

fn kill_all(pids: &[Pid]) {
    for &p in pids {
        let _ = kill(p, Signal::SIGKILL);
    }
}

/// Waits until every process of `pids` is gone (reaped, not even a zombie), as after a reboot:
/// a new postmaster refuses a data dir whose lock file names a live pid.
async fn wait_gone(pids: &[Pid]) -> anyhow::Result<()> {
    wait_until(
        "the killed PostgreSQL to be gone",
        Duration::from_secs(30),
        || async move {
            Ok(pids
                .iter()
                .all(|&p| kill(p, None) == Err(Errno::ESRCH))
                .then_some(()))
        },
    )
    .await
}

/// Waits until the leader key names a node other than `old` that is a writable primary.
async fn wait_new_leader(c: &Cluster, old: usize) -> anyhow::Result<usize> {
    wait_until("a new writable leader", HEALTHY_TIMEOUT, || async move {
        let Some(name) = c.leader().await? else {
            return Ok(None);
        };
        let Some(i) = index_of(c, &name).filter(|&i| i != old) else {
            return Ok(None);
        };
        let client = c.connect(i).await?;
        let rec: bool = client
            .query_one("SELECT pg_is_in_recovery()", &[])
            .await?
            .get(0);
        Ok((!rec).then_some(i))
    })
    .await
}

/// In a synchronous mode: waits until the sync key names `leader` and at least one standby.
async fn wait_sync_ready(c: &Cluster, leader: usize) -> anyhow::Result<()> {
    wait_until(
        "the sync key to name the leader and a standby",
        HEALTHY_TIMEOUT,
        || async move {
            let key = c.etcd_get("sync").await?.map(|raw| SyncState::parse(&raw));
            Ok(key
                .filter(|k| {
                    k.leader.as_deref() == Some(c.name(leader)) && !k.sync_standby.is_empty()
                })
                .map(|_| ()))
        },
    )
    .await
}

struct Round {
    fault: &'static str,
    old: String,
    new: String,
    acked: usize,
    lost: usize,
    failover: Duration,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    // On SIGINT or SIGTERM the run is dropped, and with it the cluster (its processes killed).
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = run(args) => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
        _ = term.recv() => bail!("terminated"),
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let dcs = std::env::var("BENCH_DCS")
        .unwrap_or_else(|_| "{ttl: 10, loop_wait: 1, retry_timeout: 3}".into());
    let mut c = Cluster::new(3)?;
    for i in 0..3 {
        let dcs = dcs.clone();
        c.set_config_override(i, move |y| {
            *y = y.replace(
                "dcs: {ttl: 10, loop_wait: 1, retry_timeout: 3, ",
                &format!("dcs: {{{}, ", dcs.trim_matches(['{', '}'])),
            )
        });
        c.start_node(i)?;
    }
    let mut leader = wait_healthy(&c, &[0, 1, 2], HEALTHY_TIMEOUT).await?;
    let mut patch = serde_json::Map::new();
    match args.mode.as_str() {
        "on" => patch.insert("synchronous_mode".into(), true.into()),
        "quorum" => patch.insert("synchronous_mode".into(), "quorum".into()),
        _ => None,
    };
    if args.strict {
        patch.insert("synchronous_mode_strict".into(), true.into());
    }
    if !patch.is_empty() {
        let r = reqwest::Client::new()
            .patch(format!("{}/config", c.api_url(leader)))
            .json(&patch)
            .timeout(Duration::from_secs(15))
            .send()
            .await?;
        anyhow::ensure!(r.status().as_u16() == 200, "PATCH /config: {}", r.status());
    }
    c.connect(leader)
        .await?
        .batch_execute("CREATE TABLE acked (id bigint PRIMARY KEY)")
        .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Acks::default()));
    let ports: Vec<u16> = (0..3).map(|i| c.pg_port(i)).collect();
    let writer = tokio::spawn(write_loop(ports, stop.clone(), acks.clone()));
    let acked_now = || acks.lock().expect("acks").ids.len();

    let settings = format!(
        "mode {}{}, {dcs}",
        args.mode,
        if args.strict { " strict" } else { "" }
    );
    eprintln!("{settings}; {} rounds", args.rounds);
    let mut lost_so_far: BTreeSet<i64> = BTreeSet::new();
    let mut rounds = Vec::new();
    for r in 0..args.rounds {
        wait_healthy(&c, &[0, 1, 2], HEALTHY_TIMEOUT)
            .await
            .with_context(|| format!("round {r}: healthy"))?;
        if args.mode != "async" {
            wait_sync_ready(&c, leader)
                .await
                .with_context(|| format!("round {r}: sync"))?;
        }
        let start_acks = acked_now();
        let acked_now = &acked_now;
        wait_until("writes on the leader", HEALTHY_TIMEOUT, || async move {
            Ok((acked_now() >= start_acks + WARMUP_ACKS).then_some(()))
        })
        .await?;

        let old = leader;
        let fault = if r % 2 == 0 { "kill" } else { "stop" };
        let fault_at = Instant::now();
        c.stop_node(old, Signal::SIGSTOP)?;
        let pg = freeze_postgres(&c, old)?;
        if fault == "kill" {
            kill_all(&pg);
            c.kill_node(old);
        }
        let new = match wait_new_leader(&c, old).await {
            Ok(new) => new,
            Err(e) => {
                eprintln!("sync key: {:?}", c.etcd_get("sync").await);
                c.dump_logs();
                return Err(e.context(format!("round {r}: failover")));
            }
        };
        let failover = fault_at.elapsed();
        if fault == "stop" {
            // The frozen primary must never run again: kill it while it is still stopped.
            kill_all(&pg);
            c.kill_node(old);
        }
        // Every id acknowledged so far must be on the new leader.
        let snapshot: Vec<i64> = acks.lock().expect("acks").ids.clone();
        let present = ids_on(&c, new).await?;
        let missing: BTreeSet<i64> = snapshot
            .iter()
            .copied()
            .filter(|id| !present.contains(id))
            .collect();
        let lost = missing.difference(&lost_so_far).count();
        lost_so_far.extend(missing);
        let round = Round {
            fault,
            old: c.name(old).to_string(),
            new: c.name(new).to_string(),
            acked: snapshot.len() - start_acks,
            lost,
            failover,
        };
        eprintln!(
            "round {r:2}: {} of {} -> {}: {} acknowledged, {} lost, failover {:.2} s",
            round.fault,
            round.old,
            round.new,
            round.acked,
            round.lost,
            round.failover.as_secs_f64()
        );
        rounds.push(round);
        leader = new;
        // The lost node comes back (rewound) before the next round, once its processes are gone.
        wait_gone(&pg).await?;
        c.start_node(old)?;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await?;

    println!("| round | fault | old -> new | acknowledged | lost | failover |");
    println!("|---|---|---|---|---|---|");
    for (r, x) in rounds.iter().enumerate() {
        println!(
            "| {r} | {} | {} -> {} | {} | {} | {:.2} s |",
            x.fault,
            x.old,
            x.new,
            x.acked,
            x.lost,
            x.failover.as_secs_f64()
        );
    }
    let acked: usize = rounds.iter().map(|x| x.acked).sum();
    let lost: usize = rounds.iter().map(|x| x.lost).sum();
    let mut times: Vec<Duration> = rounds.iter().map(|x| x.failover).collect();
    times.sort();
    let lossy = rounds.iter().filter(|x| x.lost > 0).count();
    println!(
        "\n{settings}: {} rounds, {acked} acknowledged commits, {lost} lost ({lossy} rounds with \
         loss); failover median {:.2} s, max {:.2} s",
        rounds.len(),
        times
            .get(times.len() / 2)
            .copied()
            .unwrap_or_default()
            .as_secs_f64(),
        times.last().copied().unwrap_or_default().as_secs_f64()
    );
    Ok(())
}
