//! `patrolctl`: the command-line client (patronictl's commands; `list` and `version` so far).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use patrol_agent::config::{self, ConfigSource};
use patrol_agent::ctl::list;
use patrol_dcs::{cluster_prefix, EtcdDcs, EtcdSettings};

/// Command-line client for a Patrol (or Patroni) cluster.
#[derive(Parser, Debug)]
#[command(name = "patrolctl", version, about)]
struct Args {
    /// Configuration file (the agent's YAML works).
    #[arg(
        short = 'c',
        long = "config-file",
        env = "PATRONICTL_CONFIG_FILE",
        global = true
    )]
    config_file: Option<PathBuf>,
    /// DCS URL, e.g. etcd3://127.0.0.1:2379/service (overrides the config file).
    #[arg(
        short = 'd',
        long = "dcs-url",
        alias = "dcs",
        env = "DCS_URL",
        global = true
    )]
    dcs_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    Pretty,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the members of a cluster.
    List {
        /// Cluster name (default: scope from the config).
        cluster: Option<String>,
        #[arg(short = 'f', long = "format", value_enum, default_value = "pretty")]
        format: Format,
    },
    /// Print patrolctl's version.
    Version,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("patrolctl: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Where the cluster lives: endpoints, namespace and default scope.
struct Target {
    endpoints: Vec<String>,
    username: Option<String>,
    password: Option<String>,
    namespace: String,
    scope: Option<String>,
}

fn target(args: &Args) -> anyhow::Result<Target> {
    let mut t = Target {
        endpoints: vec!["http://127.0.0.1:2379".into()],
        username: None,
        password: None,
        namespace: "/service".into(),
        scope: None,
    };
    if let Some(path) = &args.config_file {
        let env: BTreeMap<String, String> = std::env::vars().collect();
        let doc = config::load_ctl(ConfigSource::File(path), &env)
            .with_context(|| format!("reading {}", path.display()))?;
        t.endpoints = doc.endpoints;
        t.username = doc.username;
        t.password = doc.password;
        t.namespace = doc.namespace;
        t.scope = doc.scope;
    }
    if let Some(url) = &args.dcs_url {
        let rest = url
            .split_once("://")
            .map(|(scheme, r)| {
                if scheme != "etcd3" && scheme != "etcd" {
                    anyhow::bail!("unsupported DCS scheme {scheme:?}: Patrol speaks etcd3");
                }
                Ok(r)
            })
            .transpose()?
            .unwrap_or(url.as_str());
        let (hostport, ns) = rest.split_once('/').unwrap_or((rest, ""));
        t.endpoints = vec![format!("http://{hostport}")];
        if !ns.is_empty() {
            t.namespace = format!("/{ns}");
        }
    }
    Ok(t)
}

async fn run(args: Args) -> anyhow::Result<()> {
    match &args.command {
        Command::Version => {
            println!("patrolctl version {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::List { cluster, format } => {
            let t = target(&args)?;
            let scope = cluster
                .clone()
                .or(t.scope.clone())
                .context("no cluster name given and no scope in the configuration")?;
            let settings = EtcdSettings {
                endpoints: t.endpoints.clone(),
                username: t.username.clone(),
                password: t.password.clone(),
                prefix: cluster_prefix(&t.namespace, &scope),
                member_name: String::new(),
            };
            let dcs = EtcdDcs::connect(&settings, 30, Duration::from_secs(5))
                .await
                .with_context(|| format!("connecting to etcd at {}", t.endpoints.join(",")))?;
            let c = dcs.get_cluster().await.context("reading the cluster")?;
            match format {
                Format::Pretty => print!("{}", list::render_pretty(&scope, &c)),
                Format::Json => println!("{}", list::render_json(&scope, &c)),
            }
            Ok(())
        }
    }
}
