//! Fleet benchmark: what many clusters cost one etcd. For each fleet size a fresh single-member
//! etcd starts (3.4, default settings), then `clusters` × 3 members, each the agent's own HA
//! loop with the agent's real etcd client (watch, lease, transactions) and a simulated
//! PostgreSQL (`patrol-sim`), bootstrap and settle; then for a window nothing happens (or, with
//! `BENCH_BUSY=1`, every primary takes writes and its standbys stream) while etcd's own
//! `/metrics` and a watch on `/service/` count what etcd is asked and what it writes. Not a test:
//! figures go to docs/BENCHMARKS.md.
//!
//! ```sh
//! BENCH_CLUSTERS=100,300,1000 cargo run --release -p patrol-tests --example fleet_bench
//! ```
//! Environment: `BENCH_CLUSTERS` (comma list, default `100`), `BENCH_WINDOW` (seconds measured,
//! default 60), `BENCH_SETTLE` (seconds after every cluster is healthy, default 40: past one
//! `ttl`, so that bootstrap's writes are over), `BENCH_BUSY=1`, `BENCH_DCS` (the bootstrap.dcs
//! flow mapping, default Patroni's timing `{ttl: 30, loop_wait: 10, retry_timeout: 10}`),
//! `BENCH_LOG` (a tracing filter for the agents' log lines, e.g. `patrol_dcs=debug`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::resource::{getrusage, UsageWho};
use patrol_sim::fleet::{Fleet, FleetOptions};
use patrol_tests::{metric_sum as sum, Etcd};

/// This process's CPU time (every simulated agent runs in it).
fn own_cpu() -> anyhow::Result<f64> {
    let u = getrusage(UsageWho::RUSAGE_SELF)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(u.user_time()) + secs(u.system_time()))
}

async fn metrics(etcd: &Etcd) -> anyhow::Result<String> {
    let url = format!("{}/metrics", etcd.endpoint());
    Ok(reqwest::get(&url).await?.text().await?)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Row {
    clusters: usize,
    bootstrap: Duration,
    window: f64,
    before: String,
    after: String,
    watch_events: u64,
    agents_cpu: f64,
}

impl Row {
    fn rate(&self, name: &str) -> f64 {
        (sum(&self.after, name) - sum(&self.before, name)) / self.window
    }

    /// Per gRPC method: messages received and calls handled in the window (to stderr).
    fn print_methods(&self) {
        let mut methods = std::collections::BTreeSet::new();
        for l in self.after.lines() {
            if let Some(rest) = l.strip_prefix("grpc_server_msg_received_total{") {
                if let Some(m) = rest.split("grpc_method=\"").nth(1) {
                    methods.insert(m.split('"').next().unwrap_or_default().to_string());
                }
            }
        }
        for m in methods {
            let of = |text: &str, name: &str| -> f64 {
                text.lines()
                    .filter(|l| l.starts_with(name) && l.contains(&format!("grpc_method=\"{m}\"")))
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                    .sum()
            };
            let rate = |name: &str| (of(&self.after, name) - of(&self.before, name)) / self.window;
            if rate("grpc_server_msg_received_total") == 0.0 {
                continue;
            }
            eprintln!(
                "  {m}: {:.2} messages/s, {:.2} calls handled/s",
                rate("grpc_server_msg_received_total"),
                rate("grpc_server_handled_total")
            );
        }
    }

    fn print(&self) {
        self.print_methods();
        let n = self.clusters as f64;
        let grpc = self.rate("grpc_server_handled_total");
        let msgs = self.rate("grpc_server_msg_received_total");
        let proposals = self.rate("etcd_server_proposals_committed_total");
        let puts = self.rate("etcd_mvcc_put_total");
        let events = self.watch_events as f64 / self.window;
        let cpu = self.rate("process_cpu_seconds_total") * 100.0;
        let db = sum(&self.after, "etcd_mvcc_db_total_size_in_bytes") / 1e6;
        let db_growth = self.rate("etcd_mvcc_db_total_size_in_bytes");
        let watchers = sum(&self.after, "etcd_debugging_mvcc_watcher_total");
        let keys = sum(&self.after, "etcd_debugging_mvcc_keys_total");
        println!(
            "| {} | {} | {:.0} s | {grpc:.1}/s ({:.3}) | {msgs:.1}/s ({:.3}) | {proposals:.2}/s ({:.4}) | {puts:.2}/s | {events:.2}/s | {cpu:.1}% | {db:.1} MB (+{db_growth:.0} B/s) | {keys:.0} | {watchers:.0} | {:.1}% |",
            self.clusters,
            self.clusters * 3,
            self.bootstrap.as_secs_f64(),
            grpc / n,
            msgs / n,
            proposals / n,
            self.agents_cpu / self.window * 100.0,
        );
    }
}

async fn one_size(clusters: usize, opts: &FleetOptions) -> anyhow::Result<Row> {
    let etcd = Etcd::start()?;
    let opts = FleetOptions {
        endpoints: vec![etcd.host_port()],
        clusters,
        ..opts.clone()
    };
    let started = Instant::now();
    let fleet = Fleet::start(&opts)?;
    let limit = Duration::from_secs(120 + clusters as u64);
    loop {
        let h = fleet.health();
        if h.healthy == h.clusters {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < limit,
            "{} of {} clusters healthy after {limit:?}",
            h.healthy,
            h.clusters
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let bootstrap = started.elapsed();
    eprintln!(
        "{clusters} clusters healthy after {:.1} s",
        bootstrap.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(env_u64("BENCH_SETTLE", 40))).await;

    // Every event etcd sends a watcher of the whole namespace.
    let events = Arc::new(AtomicU64::new(0));
    let mut client = etcd.client().await?;
    let mut stream = client
        .watch(
            "/service/",
            Some(etcd_client::WatchOptions::new().with_prefix()),
        )
        .await
        .context("watch /service/")?;
    let counted = events.clone();
    let watch = tokio::spawn(async move {
        let _client = client;
        while let Ok(Some(resp)) = stream.message().await {
            counted.fetch_add(resp.events().len() as u64, Ordering::Relaxed);
        }
    });

    let window = Duration::from_secs(env_u64("BENCH_WINDOW", 60));
    let before = metrics(&etcd).await?;
    let cpu_before = own_cpu()?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let after = metrics(&etcd).await?;
    let agents_cpu = own_cpu()? - cpu_before;
    let elapsed = t0.elapsed().as_secs_f64();
    watch.abort();
    let h = fleet.health();
    anyhow::ensure!(
        h.healthy == h.clusters,
        "only {} of {} clusters were healthy at the end of the window",
        h.healthy,
        h.clusters
    );
    fleet.stop().await;
    drop(etcd);
    Ok(Row {
        clusters,
        bootstrap,
        window: elapsed,
        before,
        after,
        watch_events: events.load(Ordering::Relaxed),
        agents_cpu,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("BENCH_LOG").is_some() {
        // The agents' own log lines, e.g. `BENCH_LOG=patrol_dcs=debug`.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("BENCH_LOG"))
            .init();
    }
    let sizes: Vec<usize> = std::env::var("BENCH_CLUSTERS")
        .unwrap_or_else(|_| "100".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .context("BENCH_CLUSTERS: a comma list of numbers")
        })
        .collect::<anyhow::Result<_>>()?;
    let mut opts = FleetOptions {
        busy: std::env::var_os("BENCH_BUSY").is_some(),
        ..FleetOptions::default()
    };
    if let Ok(dcs) = std::env::var("BENCH_DCS") {
        opts.dcs = dcs;
    }
    println!(
        "{} fleet, bootstrap.dcs {}; per cluster in parentheses",
        if opts.busy { "busy" } else { "idle" },
        opts.dcs
    );
    println!("| clusters | agents | all healthy after | gRPC calls | gRPC messages received | raft proposals | puts | watch events (one watcher of /service/) | etcd CPU | etcd DB size | keys | watchers | agents' CPU (this process) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for n in sizes {
        let row = one_size(n, &opts)
            .await
            .with_context(|| format!("{n} clusters"))?;
        row.print();
    }
    Ok(())
}
