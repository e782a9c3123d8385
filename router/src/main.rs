//! `patrol-router`: parse arguments, load and validate the configuration before binding, run.
//! `patrol-router haproxy-config` prints an `haproxy.cfg` for the cluster instead.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use patrol_router::config::{Config, Overrides};
use patrol_router::haproxy_sync;

/// Routes PostgreSQL connections to a Patrol/Patroni cluster: write port to the leader, read port
/// across replicas within a lag limit.
#[derive(Parser, Debug)]
#[command(
    name = "patrol-router",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Router configuration file (YAML).
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// Write port address (default 127.0.0.1:5000).
    #[arg(long)]
    write: Option<String>,
    /// Read port address (default 127.0.0.1:5001).
    #[arg(long)]
    read: Option<String>,
    /// Admin (stats, metrics) address (default 127.0.0.1:8080).
    #[arg(long)]
    admin: Option<String>,
    /// Drive a running HAProxy through this runtime API socket (`stats socket ... level
    /// admin`, as `haproxy-config --admin-socket` writes it): server states follow every
    /// leader and pool change at once; HAProxy's checks stay as the safety net.
    #[arg(long, env = "PATROL_ROUTER_HAPROXY_SOCKET")]
    haproxy_socket: Option<PathBuf>,
    /// With --haproxy-socket: keep the server lines of this HAProxy configuration file in step
    /// with the members, reloading HAProxy when they change.
    #[arg(
        long,
        env = "PATROL_ROUTER_HAPROXY_CONFIG",
        requires = "haproxy_socket"
    )]
    haproxy_config: Option<PathBuf>,
    /// HAProxy's master CLI socket (`haproxy -W -S <path>`): reloads, and sessions of old
    /// workers after a reload.
    #[arg(
        long,
        env = "PATROL_ROUTER_HAPROXY_MASTER_SOCKET",
        requires = "haproxy_socket"
    )]
    haproxy_master_socket: Option<PathBuf>,
    /// HAProxy master's pid file (`haproxy -W -p <path>`): reload with SIGUSR2 when there is
    /// no master socket.
    #[arg(
        long,
        env = "PATROL_ROUTER_HAPROXY_PID_FILE",
        requires = "haproxy_socket"
    )]
    haproxy_pid_file: Option<PathBuf>,
    /// The haproxy binary used to check a rewritten configuration.
    #[arg(long, default_value = "haproxy")]
    haproxy_bin: PathBuf,
    /// Check the configuration and exit.
    #[arg(long)]
    validate_config: bool,
}

/// Where the cluster is (shared by the router and its subcommands).
#[derive(clap::Args, Debug, Clone)]
struct ClusterArgs {
    /// Take etcd, namespace and scope from an agent (Patroni) configuration file.
    #[arg(long)]
    agent_config: Option<String>,
    /// etcd endpoints, comma-separated host:port.
    #[arg(long)]
    etcd: Option<String>,
    /// DCS namespace (default /service).
    #[arg(long)]
    namespace: Option<String>,
    /// Cluster name.
    #[arg(long)]
    scope: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Read the cluster from etcd once and print an haproxy.cfg for it: a `primary` listen
    /// (write) and a `replicas` listen (read) with every member as a server, checked against
    /// each agent's REST API.
    HaproxyConfig(HaproxyConfigArgs),
}

#[derive(clap::Args, Debug)]
struct HaproxyConfigArgs {
    /// Router configuration file to take etcd, namespace, scope and read.max_lag_bytes from.
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    #[command(flatten)]
    cluster: ClusterArgs,
    /// `bind` of the primary (write) listen.
    #[arg(long, default_value = "*:5000")]
    write_bind: String,
    /// `bind` of the replicas (read) listen.
    #[arg(long, default_value = "*:5001")]
    read_bind: String,
    /// `bind` of the stats page.
    #[arg(long, default_value = "*:7000")]
    stats_bind: String,
    #[arg(long, default_value = "admin")]
    stats_user: String,
    #[arg(long, default_value = "admin", env = "PATROL_HAPROXY_STATS_PASSWORD")]
    stats_password: String,
    /// Runtime API socket for `patrol-router --haproxy-socket`.
    #[arg(long)]
    admin_socket: Option<String>,
    /// `server-state-file` (kept across reloads by `patrol-router --haproxy-config`).
    #[arg(long)]
    server_state_file: Option<String>,
    /// `bind` of a Prometheus exporter frontend (HAProxy built with PROMEX).
    #[arg(long)]
    prometheus_bind: Option<String>,
    /// Replicas further behind fail their check (default: the router's read.max_lag_bytes).
    #[arg(long)]
    max_lag_bytes: Option<u64>,
    /// Check timings of Patroni's template (inter 3s, fall 3, rise 2), for HAProxy without
    /// the router driving it.
    #[arg(long)]
    standalone: bool,
    /// Check interval (default 1000; 3000 with --standalone).
    #[arg(long)]
    inter_ms: Option<u64>,
    /// Failed checks before a server is marked down (default 2; 3 with --standalone).
    #[arg(long)]
    fall: Option<u32>,
    /// Passed checks before a server is marked up (default 2).
    #[arg(long)]
    rise: Option<u32>,
}

fn overrides(c: &ClusterArgs) -> Overrides {
    Overrides {
        etcd_hosts: c.etcd.clone(),
        namespace: c.namespace.clone(),
        scope: c.scope.clone(),
        agent_config: c.agent_config.clone(),
        ..Overrides::default()
    }
}

/// Every relayed session holds two descriptors: raise the soft limit to the hard one, and say so
/// when even that cannot hold `max_connections` sessions.
fn raise_fd_limit(max_connections: usize) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let limit = if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        hard
    } else {
        soft
    };
    let needed = 2 * max_connections as u64 + 64;
    if limit < needed {
        tracing::warn!(
            "open file limit {limit} is below the {needed} that max_connections {max_connections} needs (two per session); raise LimitNOFILE / ulimit -n"
        );
    }
}

/// The control runtime (etcd watch, probes, admin page, signals): one thread. The data path runs
/// on its own threads (`threads` in the configuration), started by `patrol_router::run`.
fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("patrol-router: cannot start the runtime: {e}");
            ExitCode::from(1)
        })
}

/// `haproxy-config`: one read of the cluster, then the rendered configuration on stdout.
fn haproxy_config(a: HaproxyConfigArgs) -> ExitCode {
    let cfg = match Config::load(a.config.as_deref(), &overrides(&a.cluster)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("patrol-router: {e:#}");
            return ExitCode::from(1);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(c) => return c,
    };
    let settings = cfg.etcd_settings();
    let read = rt.block_on(async {
        let dcs = patrol_dcs::EtcdDcs::connect(&settings, 30, Duration::from_secs(5)).await?;
        dcs.get_cluster().await
    });
    let cluster = match read {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "patrol-router: cannot read cluster {} from etcd ({}): {e}",
                cfg.scope,
                cfg.endpoints.join(",")
            );
            return ExitCode::from(1);
        }
    };
    let (servers, skipped) = patrol_haproxy::Server::from_cluster_checked(&cluster);
    for why in &skipped {
        eprintln!("patrol-router: {why}");
    }
    if servers.is_empty() {
        eprintln!(
            "patrol-router: cluster {} has no members under {} (or none with conn_url and api_url)",
            cfg.scope, settings.prefix
        );
        return ExitCode::from(1);
    }
    let mut o = if a.standalone {
        patrol_haproxy::Options::standalone()
    } else {
        patrol_haproxy::Options::default()
    };
    o.write_bind = a.write_bind;
    o.read_bind = a.read_bind;
    o.stats_bind = a.stats_bind;
    o.stats_user = a.stats_user;
    o.stats_password = a.stats_password;
    o.admin_socket = a.admin_socket;
    o.server_state_file = a.server_state_file;
    o.prometheus_bind = a.prometheus_bind;
    o.max_lag_bytes = a.max_lag_bytes.unwrap_or(cfg.max_lag_bytes);
    if let Some(v) = a.inter_ms {
        o.check_inter_ms = v;
        o.check_fastinter_ms = o.check_fastinter_ms.min(v);
    }
    if let Some(v) = a.fall {
        o.fall = v;
    }
    if let Some(v) = a.rise {
        o.rise = v;
    }
    print!("{}", patrol_haproxy::render(&cfg.scope, &servers, &o));
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let a = Args::parse();
    if let Some(Cmd::HaproxyConfig(h)) = a.command {
        return haproxy_config(h);
    }
    let o = Overrides {
        write: a.write,
        read: a.read,
        admin: a.admin,
        ..overrides(&a.cluster)
    };
    let cfg = match Config::load(a.config.as_deref(), &o) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("patrol-router: {e:#}");
            return ExitCode::from(1);
        }
    };
    if a.validate_config {
        println!("configuration is valid");
        return ExitCode::SUCCESS;
    }
    let haproxy = a.haproxy_socket.map(|socket| haproxy_sync::Settings {
        config: a.haproxy_config,
        master_socket: a.haproxy_master_socket,
        pid_file: a.haproxy_pid_file,
        haproxy_bin: a.haproxy_bin,
        ..haproxy_sync::Settings::new(socket)
    });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,reqwest=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    raise_fd_limit(cfg.max_connections);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(c) => return c,
    };
    match rt.block_on(patrol_router::run(cfg, haproxy)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("patrol-router: {e:#}");
            ExitCode::from(1)
        }
    }
}
