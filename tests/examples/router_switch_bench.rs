//! patrol-router switch benchmark (targets T1/T2 of the router spec), from the etcd events that
//! move the leader key: T1, from the new leader being locked and promoted to the first new
//! connection through the write port served by it; T2, from the key leaving the old leader to
//! the last session to the old leader through the write port closed.
//!
//! The events are timestamped by this program's own etcd watch on the leader key and by direct
//! sessions polling `pg_is_in_recovery()`; sessions and connections are real clients.
//! Scenarios: `switchover` (POST /switchover to the leader) and `freeze` (the leader's agent
//! and PostgreSQL stopped with SIGSTOP: the key expires after `ttl`, the old server keeps its
//! sockets open and only the router can close them). Each run uses a fresh 3-node cluster;
//! not a test: figures go to docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release --bins -p patrol-agent -p patrol-router
//! PATROL_BIN_DIR=target/release cargo run --release -p patrol-tests --example router_switch_bench
//! ```
//! Environment: `BENCH_RUNS` (default 3), `BENCH_SCENARIOS` (default `switchover,freeze`),
//! `BENCH_SESSIONS` (idle sessions to the old leader, default 20), `BENCH_ROUTER_YAML` (extra
//! router settings, e.g. `splice: true`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use etcd_client::{EventType, WatchOptions};
use patrol_tests::{start_all, wait_until, Cluster, Router, Signal};

/// What the leader-key watch saw: when the key stopped naming `old`, and when it first named
/// someone else.
#[derive(Default, Debug, Clone, Copy)]
struct KeyEvents {
    left_old: Option<Instant>,
    named_new: Option<Instant>,
}

async fn watch_leader(c: &Cluster, old: String) -> anyhow::Result<Arc<Mutex<KeyEvents>>> {
    let mut client = c.etcd().client().await?;
    let key = format!("{}leader", c.prefix());
    let mut stream = client.watch(key, Some(WatchOptions::new())).await?;
    let seen = Arc::new(Mutex::new(KeyEvents::default()));
    let out = seen.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(Some(resp)) = stream.message().await {
            let now = Instant::now();
            for ev in resp.events() {
                let value = ev
                    .kv()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                    .unwrap_or_default();
                let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                let names_old = ev.event_type() == EventType::Put && value == old;
                if !names_old && s.left_old.is_none() {
                    s.left_old = Some(now);
                }
                if ev.event_type() == EventType::Put && value != old && s.named_new.is_none() {
                    s.named_new = Some(now);
                }
            }
        }
    });
    Ok(out)
}

/// The leader's postmaster and every child of it (backends, walsenders, auxiliary processes).
fn postgres_pids(c: &Cluster, i: usize) -> anyhow::Result<Vec<nix::unistd::Pid>> {
    let pm = c.postmaster_pid(i).context("no postmaster")?;
    let mut pids = vec![pm];
    for e in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // ppid is the second field after the parenthesised command.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if ppid == Some(pm.as_raw()) {
            pids.push(nix::unistd::Pid::from_raw(pid));
        }
    }
    Ok(pids)
}

struct RunResult {
    t1: Duration,
    /// From the key naming the new leader to its PostgreSQL leaving recovery.
    promote: Duration,
    t2: f64,
    connect: Duration,
}

async fn one_run(scenario: &str, sessions: usize) -> anyhow::Result<RunResult> {
    let mut c = Cluster::new(3)?;
    let li = start_all(&mut c).await?;
    let leader = c.name(li).to_string();
    eprintln!("  cluster up, leader {leader}");
    let router = Router::start(&c, &std::env::var("BENCH_ROUTER_YAML").unwrap_or_default())?;
    let wp = router.write_port();
    // The cost of one connection (SCRAM, startup) through the router before the switch.
    let mut connects = Vec::new();
    for _ in 0..9 {
        let t = Instant::now();
        let client = wait_until("the write port", Duration::from_secs(30), || {
            let r = &router;
            async move { Ok(r.try_connect(wp).await.ok()) }
        })
        .await?;
        connects.push(t.elapsed());
        drop(client);
    }
    connects.sort();
    let connect = connects[connects.len() / 2];
    eprintln!("  router up");
    // Idle sessions to the old leader; each records when its connection ended.
    let closed: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..sessions {
        let (client, conn) = router.pg_config(wp).connect(tokio_postgres::NoTls).await?;
        let closed = closed.clone();
        tokio::spawn(async move {
            let _ = conn.await;
            closed
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(Instant::now());
        });
        let port: i32 = client
            .query_one("SELECT inet_server_port()", &[])
            .await?
            .get(0);
        anyhow::ensure!(
            port == i32::from(c.pg_port(li)),
            "session not on the leader"
        );
        clients.push(client);
    }
    let events = watch_leader(&c, leader.clone()).await?;
    // Direct sessions to the other members, polled every 2 ms: when one stops being in
    // recovery, the new leader is promoted (the router's confirmation cannot come before).
    let promoted: Arc<Mutex<Option<Instant>>> = Arc::default();
    for i in (0..3).filter(|i| *i != li) {
        let client = c.connect(i).await?;
        let promoted = promoted.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(row) = client.query_one("SELECT pg_is_in_recovery()", &[]).await {
                    if !row.get::<_, bool>(0) {
                        let mut p = promoted.lock().unwrap_or_else(|e| e.into_inner());
                        p.get_or_insert(Instant::now());
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
    }
    eprintln!("  sessions open, watching");
    let mut frozen = Vec::new();
    match scenario {
        "switchover" => c.switchover(li, (li + 1) % 3).await?,
        "freeze" => {
            frozen = postgres_pids(&c, li)?;
            c.stop_node(li, Signal::SIGSTOP)?;
            for p in &frozen {
                let _ = nix::sys::signal::kill(*p, Signal::SIGSTOP);
            }
        }
        other => anyhow::bail!("unknown scenario {other}"),
    }
    // Connect through the write port until a connection is served by a primary that is not the
    // old leader (connections made while there is no leader are held by the router).
    let old_port = i32::from(c.pg_port(li));
    eprintln!("  fault injected");
    let first_new = loop {
        if let Ok(client) = router.try_connect(wp).await {
            let row = tokio::time::timeout(
                Duration::from_secs(2),
                client.query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[]),
            )
            .await;
            if let Ok(Ok(row)) = row {
                let (port, recovery): (i32, bool) = (row.get(0), row.get(1));
                if port != old_port && !recovery {
                    break Instant::now();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    // Every old session must be closed; wait a little for the stragglers.
    eprintln!("  new leader serving");
    let all_closed = wait_until("every old session closed", Duration::from_secs(30), || {
        let closed = closed.clone();
        async move {
            let v = closed.lock().unwrap_or_else(|e| e.into_inner());
            Ok((v.len() == sessions)
                .then(|| v.iter().max().copied())
                .flatten())
        }
    })
    .await?;
    if scenario == "freeze" {
        for p in &frozen {
            let _ = nix::sys::signal::kill(*p, Signal::SIGCONT);
        }
        let _ = c.stop_node(li, Signal::SIGCONT);
    }
    let ev = *events.lock().unwrap_or_else(|e| e.into_inner());
    let named_new = ev.named_new.context("no leader event seen")?;
    let left_old = ev.left_old.unwrap_or(named_new);
    let promoted_at =
        (*promoted.lock().unwrap_or_else(|e| e.into_inner())).context("no member seen promoted")?;
    // T1 counts from the moment the new leader is both locked and promoted.
    let t1 = first_new.saturating_duration_since(named_new.max(promoted_at));
    let promote = promoted_at.saturating_duration_since(named_new);
    // Negative when the sessions ended before the key moved (a switchover's fast shutdown).
    let t2 = if all_closed >= left_old {
        all_closed.duration_since(left_old).as_secs_f64()
    } else {
        -left_old.duration_since(all_closed).as_secs_f64()
    };
    drop(clients);
    if std::env::var_os("BENCH_DEBUG").is_some() {
        eprintln!("{}", router.log());
    }
    Ok(RunResult {
        t1,
        t2,
        connect,
        promote,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let runs: usize = env("BENCH_RUNS", "3").parse()?;
    let sessions: usize = env("BENCH_SESSIONS", "20").parse()?;
    let scenarios = env("BENCH_SCENARIOS", "switchover,freeze");
    println!("| scenario | runs | T1: new leader locked and promoted → first new connection served by it (median, all) | T2: key leaves the old leader → last of {sessions} old sessions closed (median, all) | one connection through the router (median) |");
    println!("|---|---|---|---|---|");
    for s in scenarios.split(',') {
        let mut t1 = Vec::new();
        let mut t2 = Vec::new();
        let mut conn = Vec::new();
        for r in 0..runs {
            let res = one_run(s, sessions)
                .await
                .with_context(|| format!("{s} run {r}"))?;
            eprintln!(
                "{s} run {r}: T1 {:.1} ms, T2 {:.1} ms, connect {:.1} ms, promotion {:.1} ms after the key",
                res.t1.as_secs_f64() * 1e3,
                res.t2 * 1e3,
                res.connect.as_secs_f64() * 1e3,
                res.promote.as_secs_f64() * 1e3
            );
            t1.push(res.t1.as_secs_f64() * 1e3);
            t2.push(res.t2 * 1e3);
            conn.push(res.connect.as_secs_f64() * 1e3);
        }
        let all = |v: &[f64]| {
            v.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        };
        println!(
            "| {s} | {runs} | {:.1} ms ({}) | {:.1} ms ({}) | {:.1} ms |",
            median(t1.clone()),
            all(&t1),
            median(t2.clone()),
            all(&t2),
            median(conn)
        );
    }
    Ok(())
}
