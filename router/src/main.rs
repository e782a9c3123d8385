//! `patrol-router`: parse arguments, load and validate the configuration before binding, run.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use patrol_router::config::{Config, Overrides};

/// Routes PostgreSQL connections to a Patrol/Patroni cluster: write port to the leader, read port
/// across replicas within a lag limit.
#[derive(Parser, Debug)]
#[command(name = "patrol-router", version, about)]
struct Args {
    /// Router configuration file (YAML).
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Take etcd, namespace and scope from an agent (Patroni) configuration file.
    #[arg(long)]
    agent_config: Option<String>,
    /// etcd endpoints, comma-separated host:port.
    #[arg(long)]
    etcd: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
    /// Cluster name.
    #[arg(long)]
    scope: Option<String>,
    /// Write port address (default 127.0.0.1:5000).
    #[arg(long)]
    write: Option<String>,
    /// Read port address (default 127.0.0.1:5001).
    #[arg(long)]
    read: Option<String>,
    /// Admin (stats, metrics) address (default 127.0.0.1:8080).
    #[arg(long)]
    admin: Option<String>,
    /// Check the configuration and exit.
    #[arg(long)]
    validate_config: bool,
}

fn main() -> ExitCode {
    let a = Args::parse();
    let o = Overrides {
        etcd_hosts: a.etcd,
        namespace: a.namespace,
        scope: a.scope,
        write: a.write,
        read: a.read,
        admin: a.admin,
        agent_config: a.agent_config,
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,h2=warn,hyper=warn,tower=warn,reqwest=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("patrol-router: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(patrol_router::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("patrol-router: {e:#}");
            ExitCode::from(1)
        }
    }
}
