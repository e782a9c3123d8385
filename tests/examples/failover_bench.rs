//! Write unavailability benchmark: how long a client that retries every 50 ms cannot write,
//! from its first failed write to its first successful write on the new (or restarted) primary,
//! for three faults on the leader: postmaster crash (SIGKILL), agent stop (SIGTERM), host loss
//! (SIGKILL of agent and postmaster together), and a planned switchover (`POST /switchover`). Each run uses a fresh 3-node cluster; the median
//! of the runs is printed. Not a test: figures go to docs/BENCHMARKS.md.
//!
//! ```sh
//! cargo build --release --bins -p patrol-agent
//! PATROL_BIN_DIR=target/release cargo run --release -p patrol-tests --example failover_bench
//! ```
//! With `BENCH_VIA_ROUTER=1` the client writes only through a `patrol-router` write port
//! instead (every 50 ms, waiting for connections the router holds), and the figure is the
//! longest interval between two acknowledged writes in the 30 s after the fault.
//!
//! Environment: `BENCH_RUNS` (default 5), `BENCH_DCS` (the bootstrap.dcs flow mapping, default
//! `{ttl: 10, loop_wait: 1, retry_timeout: 3}`; with `synchronous_mode` in it the fault waits
//! until the sync key names a standby, and a switchover goes to that standby), `BENCH_SCENARIOS` (comma list of
//! `crash,sigterm,hostloss,switchover`), `BENCH_ROUTER_YAML` (extra router settings, e.g.
//! `splice: true`), `BENCH_FLEET` (a number of simulated clusters sharing the cluster's etcd
//! during each run, see the example `fleet_bench`).

use std::time::{Duration, Instant};

use anyhow::Context;
use patrol_sim::fleet::{Fleet, FleetOptions};
use patrol_tests::{wait_healthy, Cluster, Router, Signal, HEALTHY_TIMEOUT};
use tokio_postgres::NoTls;

/// One attempt: connect (1 s timeout) to `port` and insert a row; `Ok` only if it committed.
async fn try_write(port: u16, connect_timeout: Duration) -> anyhow::Result<()> {
    let mut cfg = tokio_postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password("supersecret")
        .dbname("postgres")
        .connect_timeout(connect_timeout);
    let (client, conn) = cfg.connect(NoTls).await?;
    let h = tokio::spawn(conn);
    let r = tokio::time::timeout(
        Duration::from_secs(2),
        client.execute("INSERT INTO bench(at) VALUES (clock_timestamp())", &[]),
    )
    .await;
    drop(client);
    h.abort();
    r.context("write timed out")??;
    Ok(())
}

/// Retries every 50 ms across all nodes (primary first) until `stop`; returns the unavailability
/// window: first failure after `fault_at` to the next success.
async fn writer(ports: Vec<u16>, fault_at: Instant, deadline: Instant) -> Option<Duration> {
    let mut preferred = 0usize;
    let mut first_failure: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline {
            return None;
        }
        let mut ok = false;
        for k in 0..ports.len() {
            let i = (preferred + k) % ports.len();
            if try_write(ports[i], Duration::from_secs(1)).await.is_ok() {
                preferred = i;
                ok = true;
                break;
            }
        }
        let t = Instant::now();
        if ok {
            if let Some(f) = first_failure {
                return Some(t - f);
            }
            if t > fault_at + Duration::from_secs(60) {
                return Some(Duration::ZERO);
            }
        } else if t >= fault_at && first_failure.is_none() {
            first_failure = Some(now);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Through the router's write port: a write every 50 ms (connections the router holds while
/// there is no leader are waited for, up to 15 s) during `window` after `fault_at`; returns the
/// longest interval between two acknowledged writes, and how many attempts failed.
async fn router_writer(port: u16, fault_at: Instant, window: Duration) -> (Duration, usize) {
    let mut last_ok = Instant::now();
    let mut longest = Duration::ZERO;
    let mut failed = 0;
    while Instant::now() < fault_at + window {
        let ok = try_write(port, Duration::from_secs(15)).await.is_ok();
        let t = Instant::now();
        if ok {
            if t > fault_at {
                longest = longest.max(t - last_ok);
            }
            last_ok = t;
        } else if t > fault_at {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (longest, failed)
}

async fn one_run(scenario: &str, dcs: &str) -> anyhow::Result<Duration> {
    let mut c = Cluster::new(3)?;
    for i in 0..3 {
        let dcs = dcs.to_string();
        c.set_config_override(i, move |y| {
            *y = y.replace(
                "dcs: {ttl: 10, loop_wait: 1, retry_timeout: 3, ",
                &format!("dcs: {{{}, ", dcs.trim_matches(['{', '}'])),
            )
        });
        c.start_node(i)?;
    }
    // Healthy: a leader and two streaming replicas.
    let li = wait_healthy(&c, &[0, 1, 2], HEALTHY_TIMEOUT).await?;
    let client = c.connect(li).await?;
    client
        .batch_execute("CREATE TABLE bench(id bigserial primary key, at timestamptz)")
        .await?;
    drop(client);
    let ports: Vec<u16> = {
        let mut p = vec![c.pg_port(li)];
        p.extend((0..3).filter(|i| *i != li).map(|i| c.pg_port(i)));
        p
    };
    // With `BENCH_FLEET=<n>`, n more clusters (simulated PostgreSQL, the agents' real loops
    // and etcd clients) share this cluster's etcd, bootstrapped and settled before the fault.
    let fleet = match std::env::var("BENCH_FLEET")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(clusters) => Some(start_fleet(&c, clusters).await?),
        None => None,
    };
    let via_router = std::env::var_os("BENCH_VIA_ROUTER").is_some();
    let router = if via_router {
        Some(Router::start(
            &c,
            &std::env::var("BENCH_ROUTER_YAML").unwrap_or_default(),
        )?)
    } else {
        None
    };
    // In synchronous or quorum mode (`BENCH_DCS`), the fault comes once the sync key names its
    // standbys: the writes measured are synchronous ones, and a switchover goes to one of them.
    let sync_standbys = wait_for_sync_standbys(&c).await?;
    let fault_at = Instant::now() + Duration::from_millis(500);
    let w = match &router {
        None => tokio::spawn(writer(ports, fault_at, fault_at + Duration::from_secs(120))),
        Some(r) => {
            let port = r.write_port();
            // Long enough for host loss (ttl) plus the new leader settling.
            let window = Duration::from_secs(30);
            tokio::spawn(async move {
                let (gap, failed) = router_writer(port, fault_at, window).await;
                eprintln!("  through the router: {failed} failed attempts");
                Some(gap)
            })
        }
    };
    tokio::time::sleep_until(fault_at.into()).await;
    match scenario {
        "crash" => c.signal_postgres(li, Signal::SIGKILL)?,
        "sigterm" => c.stop_node(li, Signal::SIGTERM)?,
        "hostloss" => {
            c.stop_node(li, Signal::SIGKILL)?;
            c.signal_postgres(li, Signal::SIGKILL)?;
        }
        "switchover" => {
            let target = sync_standbys
                .first()
                .and_then(|n| patrol_tests::index_of(&c, n))
                .unwrap_or((li + 1) % 3);
            c.switchover(li, target).await?
        }
        other => anyhow::bail!("unknown scenario {other}"),
    }
    let gap = w.await?.context("writes did not resume within 120 s")?;
    if let Some(f) = fleet {
        let h = f.health();
        eprintln!("  fleet: {} of {} clusters healthy", h.healthy, h.clusters);
        f.stop().await;
    }
    Ok(gap)
}

/// `clusters` simulated clusters on `c`'s etcd, every one healthy, then 30 s of quiet.
async fn start_fleet(c: &Cluster, clusters: usize) -> anyhow::Result<Fleet> {
    let fleet = Fleet::start(&FleetOptions {
        endpoints: c.etcd_cluster().host_ports(),
        clusters,
        ..FleetOptions::default()
    })?;
    let started = Instant::now();
    while fleet.health().healthy < clusters {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120 + clusters as u64),
            "the fleet did not become healthy: {:?}",
            fleet.health()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "  fleet of {clusters} clusters healthy after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    Ok(fleet)
}

/// The standbys the `sync` key names once it names any, when the cluster is in synchronous
/// mode; empty otherwise.
async fn wait_for_sync_standbys(c: &Cluster) -> anyhow::Result<Vec<String>> {
    let dcs = std::env::var("BENCH_DCS").unwrap_or_default();
    if !dcs.contains("synchronous_mode") {
        return Ok(Vec::new());
    }
    let until = Instant::now() + Duration::from_secs(60);
    while Instant::now() < until {
        if let Some(v) = c.etcd_get("sync").await? {
            let s = patrol_dcs::SyncState::parse(&v);
            if !s.sync_standby.is_empty() {
                eprintln!("  sync key: {v}");
                return Ok(s.sync_standby);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the sync key named no standby within 60 s")
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let dcs = std::env::var("BENCH_DCS")
        .unwrap_or_else(|_| "{ttl: 10, loop_wait: 1, retry_timeout: 3}".into());
    let scenarios =
        std::env::var("BENCH_SCENARIOS").unwrap_or_else(|_| "crash,sigterm,hostloss".into());
    println!("| scenario | settings | runs | median | min | max |");
    println!("|---|---|---|---|---|---|");
    for s in scenarios.split(',') {
        let mut gaps = Vec::new();
        for r in 0..runs {
            let g = one_run(s, &dcs)
                .await
                .with_context(|| format!("{s} run {r}"))?;
            eprintln!("{s} run {r}: {:.3} s", g.as_secs_f64());
            gaps.push(g);
        }
        let (min, max) = (gaps.iter().min().copied(), gaps.iter().max().copied());
        println!(
            "| {s} | {dcs} | {runs} | {:.2} s | {:.2} s | {:.2} s |",
            median(gaps).as_secs_f64(),
            min.unwrap_or_default().as_secs_f64(),
            max.unwrap_or_default().as_secs_f64()
        );
    }
    Ok(())
}
