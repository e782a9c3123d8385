//! patrol-router figures that the end-to-end tests once asserted as limits and now leave to this
//! benchmark: the CPU an idle router uses (a write and a read session open, nothing flowing),
//! with the default relay and with `busy_poll_us: 200`; and how soon a connection beyond
//! `max_connections` is closed (at accept, long before the startup timeout). Each run uses a
//! fresh 3-node cluster; not a test: the figures go to docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release --bins -p patrol-agent -p patrol-router
//! PATROL_BIN_DIR=target/release cargo run --release -p patrol-tests --example router_limits_bench
//! ```
//! Environment: `BENCH_RUNS` (default 3), `BENCH_IDLE_SECS` (the CPU window, default 10),
//! `BENCH_OVER_CAP` (connections tried beyond the cap in each run, default 20).

use std::time::{Duration, Instant};

use anyhow::Context;
use patrol_tests::{metric, start_all, wait_until, Cluster, Router};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The router's cap in the over-cap figure; the startup timeout is left at its 10 s default.
const CAP: u64 = 16;

/// CPU seconds (user + system) process `pid` has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: i32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("no command in /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; after the command, index 11 and 12.
    // In USER_HZ ticks, 100 a second on every Linux this runs on.
    let ticks = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// A router with `settings`; a write and a read session with some traffic through each; then
/// the router's CPU over `idle` while both stay open and silent, as a share of one core.
async fn idle_cpu(c: &Cluster, settings: &str, idle: Duration) -> anyhow::Result<f64> {
    let r = Router::start(c, settings)?;
    let r = &r;
    let w = wait_until("a write session", Duration::from_secs(30), || async move {
        Ok(r.connect_write().await.ok())
    })
    .await?;
    w.batch_execute("CREATE TABLE IF NOT EXISTS bench_idle (v int)")
        .await?;
    for v in 0..200 {
        w.execute("INSERT INTO bench_idle VALUES ($1)", &[&v])
            .await?;
    }
    let rd = wait_until("a read session", Duration::from_secs(30), || async move {
        Ok(r.connect_read().await.ok())
    })
    .await?;
    for _ in 0..200 {
        rd.simple_query("SELECT 1").await?;
    }
    let pid = r.proc().pid().as_raw();
    let before = cpu_seconds(pid)?;
    let t = Instant::now();
    tokio::time::sleep(idle).await;
    let used = cpu_seconds(pid)? - before;
    drop((w, rd));
    Ok(used / t.elapsed().as_secs_f64())
}

/// A router at `max_connections: 16` held full by silent connections; then `tries`
/// connections to its read port one after another, each timed from connect to close.
async fn over_cap_closes(c: &Cluster, tries: usize) -> anyhow::Result<Vec<Duration>> {
    let r = Router::start(c, &format!("max_connections: {CAP}\n"))?;
    let mut silent = Vec::new();
    for _ in 0..CAP {
        silent.push(TcpStream::connect(("127.0.0.1", r.write_port())).await?);
    }
    let r = &r;
    wait_until(
        &format!("the router to count {CAP} connections"),
        Duration::from_secs(5),
        || async move { Ok((r.stats().await?["connections"] == CAP).then_some(())) },
    )
    .await?;
    let refused =
        "patrol_router_connections_rejected_total{port=\"read\",reason=\"max_connections\"}";
    let before = metric(&r.metrics().await?, refused);
    let mut closes = Vec::new();
    for _ in 0..tries {
        let t = Instant::now();
        let mut s = TcpStream::connect(("127.0.0.1", r.read_port())).await?;
        let mut buf = [0u8; 64];
        // End of stream or a reset: either way the router closed it.
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .context("a connection over the cap was still open after 5 s")?;
        closes.push(t.elapsed());
    }
    let counted = metric(&r.metrics().await?, refused) - before;
    anyhow::ensure!(
        counted == tries as f64,
        "{counted} of {tries} refusals counted as max_connections"
    );
    drop(silent);
    Ok(closes)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn all(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let runs: usize = env("BENCH_RUNS", "3").parse()?;
    let idle = Duration::from_secs(env("BENCH_IDLE_SECS", "10").parse()?);
    let tries: usize = env("BENCH_OVER_CAP", "20").parse()?;
    let (mut plain, mut busy, mut closes) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let mut c = Cluster::new(3)?;
        start_all(&mut c).await.context("cluster")?;
        let p = idle_cpu(&c, "", idle).await.context("default relay")?;
        let b = idle_cpu(&c, "busy_poll_us: 200\n", idle)
            .await
            .context("busy polling")?;
        let cl: Vec<f64> = over_cap_closes(&c, tries)
            .await
            .context("over the cap")?
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        eprintln!(
            "run {run}: idle CPU {:.2} % (default), {:.2} % (busy_poll_us 200); over the cap \
             closed after {:.2} ms (median of {tries})",
            p * 100.0,
            b * 100.0,
            median(cl.clone())
        );
        plain.push(p * 100.0);
        busy.push(b * 100.0);
        closes.extend(cl);
    }
    println!("| figure | runs | median | all |");
    println!("|---|---|---|---|");
    println!(
        "| idle router CPU, % of one core over {idle:?}, default relay | {runs} | {:.2} % | {} |",
        median(plain.clone()),
        all(&plain)
    );
    println!(
        "| idle router CPU, % of one core over {idle:?}, `busy_poll_us: 200` | {runs} | {:.2} % | {} |",
        median(busy.clone()),
        all(&busy)
    );
    let max = closes.iter().copied().fold(0.0, f64::max);
    println!(
        "| connection over `max_connections` closed after (connect to end of stream) | {} connections | {:.2} ms | max {max:.2} ms |",
        closes.len(),
        median(closes.clone())
    );
    Ok(())
}
