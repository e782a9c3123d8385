//! `patrolctl`: patronictl 4.1's commands (and its older `configure`/`scaffold`) against a
//! Patrol (or Patroni) cluster: the DCS is read and written directly, members are driven
//! through their REST API (`api_url` in their member keys). Texts, prompts and exit codes
//! follow patronictl; rendering lives in `patrol_agent::ctl`.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use patrol_agent::config::{self, CtlTarget};
use patrol_agent::ctl::client::{self, Aborted, RestClient, RestSettings};
use patrol_agent::ctl::config_edit::{
    apply_config_changes, apply_yaml, format_config, history_output, load_yaml, show_config,
};
use patrol_agent::ctl::difflib::unified_diff;
use patrol_agent::ctl::list::{is_synchronous_mode, output_members};
use patrol_agent::ctl::members::{
    all_members, any_member, check_response, failover_candidates, members_leader_first,
    reload_response, restart_response, version_line, CtlRole,
};
use patrol_agent::ctl::pyfmt::{json_dumps_compact, py_str, str_repr, yaml_dump};
use patrol_agent::ctl::table::{print_output, Format};
use patrol_agent::ctl::time::{isoformat, next_hour_example, parse_scheduled, timestamp};
use patrol_dcs::{cluster_prefix, parse_conn_url, Cluster, EtcdDcs, EtcdSettings, Member};
use serde_json::{json, Map, Value};

/// An error patronictl reports as `Error: <text>` with exit code 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CtlError(String);

fn fail<T>(msg: impl Into<String>) -> anyhow::Result<T> {
    Err(CtlError(msg.into()).into())
}

/// Command-line interface for interacting with Patroni.
#[derive(Parser, Debug)]
#[command(name = "patrolctl", version, about, max_term_width = 100)]
struct Args {
    /// Configuration file (default ~/.config/patroni/patronictl.yaml, ignored if missing)
    #[arg(short = 'c', long = "config-file", env = "PATRONICTL_CONFIG_FILE")]
    config_file: Option<PathBuf>,
    /// The DCS connect url, e.g. etcd3://127.0.0.1:2379/service
    #[arg(short = 'd', long = "dcs-url", visible_alias = "dcs", env = "DCS_URL")]
    dcs_url: Option<String>,
    /// Allow connections to SSL sites without certs
    #[arg(short = 'k', long = "insecure")]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

fn role_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(CtlRole::ALL)
}

fn format_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(["pretty", "tsv", "json", "yaml", "yml"])
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the Patroni members for a given Patroni
    List {
        cluster_names: Vec<String>,
        /// Citus group (Citus is not supported: must be absent or 0)
        #[arg(long)]
        group: Option<i64>,
        /// Show some extra information
        #[arg(short = 'e', long)]
        extended: bool,
        /// Print timestamp
        #[arg(short = 't', long = "timestamp")]
        ts: bool,
        /// Output format
        #[arg(short = 'f', long = "format", default_value = "pretty", value_parser = format_parser())]
        fmt: String,
        /// Auto update the screen every 2 seconds
        #[arg(short = 'W')]
        w: bool,
        /// Auto update the screen every X seconds
        #[arg(short = 'w', long = "watch")]
        watch: Option<f64>,
    },
    /// Prints ASCII topology for given cluster
    Topology {
        cluster_names: Vec<String>,
        #[arg(long)]
        group: Option<i64>,
        #[arg(short = 'W')]
        w: bool,
        #[arg(short = 'w', long = "watch")]
        watch: Option<f64>,
    },
    /// Switchover to a replica
    Switchover {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<i64>,
        /// The name of the current leader
        #[arg(long = "leader", visible_alias = "primary")]
        leader: Option<String>,
        /// The name of the candidate
        #[arg(long)]
        candidate: Option<String>,
        /// Timestamp of a scheduled switchover in unambiguous format (e.g. ISO 8601)
        #[arg(long)]
        scheduled: Option<String>,
        /// Do not ask for confirmation at any point
        #[arg(long)]
        force: bool,
    },
    /// Failover to a replica
    Failover {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<i64>,
        /// The name of the candidate
        #[arg(long)]
        candidate: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Restart cluster member
    Restart {
        cluster_name: String,
        member_names: Vec<String>,
        #[arg(long)]
        group: Option<i64>,
        /// Restart only members with this role
        #[arg(short = 'r', long, default_value = "any", value_parser = role_parser())]
        role: String,
        /// Restart a single member only
        #[arg(long = "any")]
        p_any: bool,
        /// Timestamp of a scheduled restart in unambiguous format (e.g. ISO 8601)
        #[arg(long)]
        scheduled: Option<String>,
        /// Restart if the PostgreSQL version is less than provided (e.g. 9.5.2)
        #[arg(long = "pg-version")]
        pg_version: Option<String>,
        /// Restart if pending
        #[arg(long)]
        pending: bool,
        /// Return error and fail over if necessary when restarting takes longer than this.
        #[arg(long)]
        timeout: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Reinitialize cluster member
    Reinit {
        cluster_name: String,
        member_names: Vec<String>,
        #[arg(long)]
        group: Option<i64>,
        #[arg(long)]
        force: bool,
        /// Get basebackup from leader
        #[arg(long = "from-leader")]
        from_leader: bool,
        /// Wait until reinitialization completes
        #[arg(long)]
        wait: bool,
    },
    /// Reload cluster member configuration
    Reload {
        cluster_name: String,
        member_names: Vec<String>,
        #[arg(long)]
        group: Option<i64>,
        /// Reload only members with this role
        #[arg(short = 'r', long, default_value = "any", value_parser = role_parser())]
        role: String,
        #[arg(long)]
        force: bool,
    },
    /// Disable auto failover
    Pause {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<i64>,
        /// Wait until pause is applied on all nodes
        #[arg(long)]
        wait: bool,
    },
    /// Resume auto failover
    Resume {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<i64>,
        /// Wait until pause is cleared on all nodes
        #[arg(long)]
        wait: bool,
    },
    /// Edit cluster configuration
    EditConfig {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<i64>,
        /// Do not show changes
        #[arg(short = 'q', long)]
        quiet: bool,
        /// Set specific configuration value. Can be specified multiple times
        #[arg(short = 's', long = "set")]
        kvpairs: Vec<String>,
        /// Set specific PostgreSQL parameter value. Shorthand for -s postgresql.parameters.
        /// Can be specified multiple times
        #[arg(short = 'p', long = "pg")]
        pgkvpairs: Vec<String>,
        /// Apply configuration from file. Use - for stdin.
        #[arg(long = "apply")]
        apply_filename: Option<String>,
        /// Apply configuration from file, replacing existing configuration. Use - for stdin.
        #[arg(long = "replace")]
        replace_filename: Option<String>,
        #[arg(long)]
        force: bool,
    },
    /// Show cluster configuration
    ShowConfig {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<i64>,
    },
    /// Show the history of failovers/switchovers
    History {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<i64>,
        #[arg(short = 'f', long = "format", default_value = "pretty", value_parser = format_parser())]
        fmt: String,
    },
    /// Discard scheduled events: CLUSTER_NAME [MEMBER_NAMES]... {restart|switchover}
    Flush {
        /// CLUSTER_NAME [MEMBER_NAMES]... TARGET (restart or switchover)
        #[arg(required = true, num_args = 2.., value_name = "CLUSTER_NAME [MEMBER_NAMES]... TARGET")]
        args: Vec<String>,
        #[arg(long)]
        group: Option<i64>,
        /// Flush only members with this role
        #[arg(short = 'r', long, default_value = "any", value_parser = role_parser())]
        role: String,
        #[arg(long)]
        force: bool,
    },
    /// Generate a dsn for the provided member, defaults to a dsn of the leader
    Dsn {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<i64>,
        /// Give a dsn of any member with this role
        #[arg(short = 'r', long, value_parser = role_parser())]
        role: Option<String>,
        /// Generate a dsn for this member
        #[arg(short = 'm', long)]
        member: Option<String>,
    },
    /// Query a Patroni PostgreSQL member
    Query {
        cluster_name: Option<String>,
        #[arg(long)]
        group: Option<i64>,
        /// Output format (pretty, tsv, json, yaml)
        #[arg(long = "format", default_value = "tsv", value_parser = format_parser())]
        fmt: String,
        /// Execute the SQL commands from this file
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// force password prompt
        #[arg(long)]
        password: bool,
        /// database user name
        #[arg(short = 'U', long)]
        username: Option<String>,
        #[arg(short = 'W')]
        w: bool,
        #[arg(short = 'w', long = "watch")]
        watch: Option<f64>,
        /// The role of the query
        #[arg(short = 'r', long, value_parser = role_parser())]
        role: Option<String>,
        /// Query a specific member
        #[arg(short = 'm', long)]
        member: Option<String>,
        /// The column delimiter
        #[arg(long, default_value = "\t")]
        delimiter: String,
        /// The SQL commands to execute
        #[arg(short = 'c', long)]
        command: Option<String>,
        /// database name to connect to
        #[arg(short = 'd', long)]
        dbname: Option<String>,
    },
    /// Remove cluster from DCS
    Remove {
        cluster_name: String,
        #[arg(long)]
        group: Option<i64>,
        #[arg(short = 'f', long = "format", default_value = "pretty", value_parser = format_parser())]
        fmt: String,
    },
    /// Print an haproxy.cfg for the cluster (write and read listens checked against each
    /// member's REST API), as `patrol-router haproxy-config` does
    HaproxyConfig {
        cluster_name: Option<String>,
        /// `bind` of the primary (write) listen.
        #[arg(long, default_value = "*:5000")]
        write_bind: String,
        /// `bind` of the replicas (read) listen.
        #[arg(long, default_value = "*:5001")]
        read_bind: String,
        /// `bind` of the stats page.
        #[arg(long, default_value = "*:7000")]
        stats_bind: String,
        /// Replicas further behind fail their check.
        #[arg(long, default_value_t = 1_048_576)]
        max_lag_bytes: u64,
        /// Runtime API socket (for `patrol-router --haproxy-socket`).
        #[arg(long)]
        admin_socket: Option<String>,
    },
    /// Output version of patrolctl command or a running Patroni instance
    Version {
        cluster_name: Option<String>,
        member_names: Vec<String>,
        #[arg(long)]
        group: Option<i64>,
    },
    /// Demote cluster to a standby cluster
    DemoteCluster {
        cluster_name: Option<String>,
        #[arg(long)]
        force: bool,
        /// Address of the remote node
        #[arg(long)]
        host: Option<String>,
        /// Port of the remote node
        #[arg(long)]
        port: Option<u16>,
        /// Command to restore WAL records from the remote primary
        #[arg(long = "restore-command")]
        restore_command: Option<String>,
        /// Name of the slot on the remote node to use for replication
        #[arg(long = "primary-slot-name")]
        primary_slot_name: Option<String>,
        /// Give up waiting for the new role after this many seconds (patronictl waits forever)
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Promote cluster, make it run standalone
    PromoteCluster {
        cluster_name: Option<String>,
        #[arg(long)]
        force: bool,
        /// Give up waiting for the new role after this many seconds (patronictl waits forever)
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Create configuration file
    Configure {
        /// Configuration file
        #[arg(short = 'c', long = "config-file")]
        config_file: Option<PathBuf>,
        /// The DCS connect url
        #[arg(short = 'd', long = "dcs-url", visible_alias = "dcs")]
        dcs: Option<String>,
        /// The namespace
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// The cluster name (scope)
        #[arg(short = 's', long)]
        scope: Option<String>,
    },
    /// Create a structure for the cluster in DCS
    Scaffold {
        cluster_name: String,
        /// System ID of the cluster to put into the initialize key
        #[arg(short = 's', long, default_value = "")]
        sysid: String,
        /// YAML file with the dynamic configuration to write into the config key
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a shell completion script
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::from(1);
        }
    };
    let result = rt.block_on(run(args));
    let _ = std::io::stdout().flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Aborted>().is_some() => {
            eprintln!("\nAborted!");
            ExitCode::from(1)
        }
        Err(e) if e.downcast_ref::<CtlError>().is_some() => {
            eprintln!("Error: {e}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("Error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// patronictl's `logging.warning` lines on stderr.
fn warn(msg: &str) {
    eprintln!(
        "{} - WARNING - {msg}",
        chrono::Local::now().format("%Y-%m-%d %H:%M:%S,%3f")
    );
}

/// The loaded configuration: DCS target, REST settings and the raw document.
struct Ctx {
    doc: Map<String, Value>,
    target: CtlTarget,
    rest: RestSettings,
    http: Option<RestClient>,
}

fn default_config_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/".into())).join(".config")
        });
    base.join("patroni").join("patronictl.yaml")
}

/// patronictl's `parse_dcs`: `[scheme://]host[:port][/namespace]` as a DCS section.
fn parse_dcs_url(url: &str) -> anyhow::Result<(String, Option<String>)> {
    let with = if url.contains("//") {
        url.to_string()
    } else {
        format!("//{url}")
    };
    let (scheme, rest) = with.split_once("//").unwrap_or(("", &with));
    let scheme = scheme.trim_end_matches(':');
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse::<u16>().ok()),
        _ => (hostport, None),
    };
    let scheme = if scheme.is_empty() {
        match port {
            Some(2181) => "zookeeper",
            Some(8181) => "exhibitor",
            Some(8500) => "consul",
            _ => "etcd",
        }
    } else {
        scheme
    };
    match scheme {
        "etcd" | "etcd3" => {}
        "zookeeper" | "exhibitor" | "consul" => {
            return fail(format!(
                "Patrol supports only etcd (v3 API) as DCS, not {scheme}"
            ))
        }
        other => return fail(format!("Unknown dcs scheme: {other}")),
    }
    let host = if host.is_empty() { "localhost" } else { host };
    let hp = format!("{host}:{}", port.unwrap_or(2379));
    let ns = Some(path.trim())
        .filter(|p| !p.is_empty() && *p != "/")
        .map(String::from);
    Ok((hp, ns))
}

const DCS_SECTIONS: [&str; 7] = [
    "etcd",
    "etcd3",
    "consul",
    "zookeeper",
    "exhibitor",
    "kubernetes",
    "raft",
];

fn load_ctx(args: &Args) -> anyhow::Result<Ctx> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let path = match &args.config_file {
        Some(p) => {
            if std::fs::File::open(p).is_err() {
                return fail(format!(
                    "Provided config file {} not existing or no read rights. Check the -c/--config-file parameter",
                    p.display()
                ));
            }
            Some(p.clone())
        }
        None => Some(default_config_path()).filter(|p| std::fs::File::open(p).is_ok()),
    };
    let mut doc = config::load_ctl_doc(path.as_deref(), &env).with_context(|| {
        format!(
            "reading {}",
            path.as_deref().unwrap_or(Path::new("")).display()
        )
    })?;
    if let Some(url) = &args.dcs_url {
        let (hp, ns) = parse_dcs_url(url)?;
        for s in DCS_SECTIONS {
            doc.remove(s);
        }
        doc.insert("etcd3".into(), json!({ "host": hp }));
        if let Some(ns) = ns {
            doc.insert("namespace".into(), Value::String(ns));
        }
    }
    if !DCS_SECTIONS.iter().any(|s| doc.contains_key(*s)) {
        doc.insert("etcd3".into(), json!({"host": "127.0.0.1:2379"}));
    }
    let target = config::ctl_target(&doc).map_err(|e| CtlError(e.to_string()))?;
    let sect = |s: &str| {
        doc.get(s)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    let ctl = sect("ctl");
    let restapi = sect("restapi");
    let auth_of = |m: &Map<String, Value>| {
        m.get("authentication")
            .and_then(Value::as_object)
            .and_then(|a| {
                Some((
                    a.get("username").map(py_str)?,
                    a.get("password").map(py_str).unwrap_or_default(),
                ))
            })
    };
    let (username, password) = match auth_of(&ctl).or_else(|| auth_of(&restapi)) {
        Some((u, p)) => (Some(u), Some(p)),
        None => (None, None),
    };
    let path_of = |m: &Map<String, Value>, k: &str| {
        m.get(k)
            .map(py_str)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
    };
    let rest = RestSettings {
        username,
        password,
        insecure: args.insecure || patrol_dcs::lenient_bool(ctl.get("insecure")).unwrap_or(false),
        cacert: path_of(&ctl, "cacert").or_else(|| path_of(&restapi, "cafile")),
        certfile: path_of(&ctl, "certfile"),
        keyfile: path_of(&ctl, "keyfile"),
    };
    Ok(Ctx {
        doc,
        target,
        rest,
        http: None,
    })
}

impl Ctx {
    fn scope_or(&self, cluster: Option<String>) -> anyhow::Result<String> {
        match cluster.or_else(|| self.target.scope.clone()) {
            Some(c) => Ok(c),
            None => fail("Missing argument 'CLUSTER_NAME': no cluster name given and no scope in the configuration"),
        }
    }

    async fn dcs(&self, scope: &str) -> anyhow::Result<EtcdDcs> {
        let settings = EtcdSettings {
            endpoints: self.target.endpoints.clone(),
            username: self.target.username.clone(),
            password: self.target.password.clone(),
            tls: self.target.tls.clone(),
            prefix: cluster_prefix(&self.target.namespace, scope),
            member_name: String::new(),
        };
        EtcdDcs::connect(&settings, 30, Duration::from_secs(10))
            .await
            .with_context(|| format!("connecting to etcd at {}", self.target.endpoints.join(",")))
    }

    async fn cluster(&self, dcs: &EtcdDcs) -> anyhow::Result<Cluster> {
        dcs.get_cluster().await.with_context(|| {
            format!(
                "reading the cluster from etcd at {}",
                self.target.endpoints.join(",")
            )
        })
    }

    fn http(&mut self) -> anyhow::Result<&RestClient> {
        if self.http.is_none() {
            self.http = Some(RestClient::new(self.rest.clone())?);
        }
        Ok(self.http.as_ref().expect("just set"))
    }
}

fn check_group(group: Option<i64>) -> anyhow::Result<()> {
    match group {
        None | Some(0) => Ok(()),
        Some(_) => fail("Citus groups are not supported by Patrol"),
    }
}

fn fmt_of(s: &str) -> Format {
    Format::parse(s).unwrap_or(Format::Pretty)
}

fn out(text: &str) {
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

fn clear_screen() {
    if std::io::stdout().is_terminal() {
        out("\x1b[2J\x1b[1;1H");
    }
}

/// patronictl's `watching(w, watch)`: the refresh interval, if any.
fn watch_interval(w: bool, watch: Option<f64>) -> Option<Duration> {
    match watch {
        Some(s) if s > 0.0 => Some(Duration::from_secs_f64(s)),
        _ if w => Some(Duration::from_secs(2)),
        _ => None,
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    match &args.command {
        Command::Completion { shell } => {
            let mut cmd = Args::command();
            clap_complete::generate(*shell, &mut cmd, "patrolctl", &mut std::io::stdout());
            return Ok(());
        }
        Command::Configure {
            config_file,
            dcs,
            namespace,
            scope,
        } => {
            return configure(
                config_file.clone(),
                dcs.clone(),
                namespace.clone(),
                scope.clone(),
            )
        }
        _ => {}
    }
    let mut ctx = load_ctx(&args)?;
    match args.command {
        Command::Completion { .. } | Command::Configure { .. } => unreachable!("handled above"),
        Command::List {
            cluster_names,
            group,
            extended,
            ts,
            fmt,
            w,
            watch,
        } => {
            check_group(group)?;
            list(&ctx, cluster_names, extended, ts, fmt_of(&fmt), w, watch).await
        }
        Command::Topology {
            cluster_names,
            group,
            w,
            watch,
        } => {
            check_group(group)?;
            list(
                &ctx,
                cluster_names,
                false,
                false,
                Format::Topology,
                w,
                watch,
            )
            .await
        }
        Command::Switchover {
            cluster_name,
            group,
            leader,
            candidate,
            scheduled,
            force,
        } => {
            check_group(group)?;
            let name = ctx.scope_or(cluster_name)?;
            failover_or_switchover(
                &mut ctx,
                "switchover",
                &name,
                candidate,
                force,
                leader,
                scheduled,
            )
            .await
        }
        Command::Failover {
            cluster_name,
            group,
            candidate,
            force,
        } => {
            check_group(group)?;
            let name = ctx.scope_or(cluster_name)?;
            failover_or_switchover(&mut ctx, "failover", &name, candidate, force, None, None).await
        }
        Command::Restart {
            cluster_name,
            member_names,
            group,
            role,
            p_any,
            scheduled,
            pg_version,
            pending,
            timeout,
            force,
        } => {
            check_group(group)?;
            restart(
                &mut ctx,
                &cluster_name,
                member_names,
                &role,
                p_any,
                scheduled,
                pg_version,
                pending,
                timeout,
                force,
            )
            .await
        }
        Command::Reinit {
            cluster_name,
            member_names,
            group,
            force,
            from_leader,
            wait,
        } => {
            check_group(group)?;
            reinit(
                &mut ctx,
                &cluster_name,
                member_names,
                force,
                from_leader,
                wait,
            )
            .await
        }
        Command::Reload {
            cluster_name,
            member_names,
            group,
            role,
            force,
        } => {
            check_group(group)?;
            reload(&mut ctx, &cluster_name, member_names, &role, force).await
        }
        Command::Pause {
            cluster_name,
            group,
            wait,
        } => {
            check_group(group)?;
            let name = ctx.scope_or(cluster_name)?;
            toggle_pause(&mut ctx, &name, true, wait).await
        }
        Command::Resume {
            cluster_name,
            group,
            wait,
        } => {
            check_group(group)?;
            let name = ctx.scope_or(cluster_name)?;
            toggle_pause(&mut ctx, &name, false, wait).await
        }
        Command::EditConfig {
            cluster_name,
            group,
            quiet,
            kvpairs,
            pgkvpairs,
            apply_filename,
            replace_filename,
            force,
        } => {
            check_group(group)?;
            let name = ctx.scope_or(cluster_name)?;
            edit_config(
                &ctx,
                &name,
                force,
                quiet,
                kvpairs,
                pgkvpairs,
                apply_filename,
                replace_filename,
            )
            .await
        }
        Command::ShowConfig {
            cluster_name,
            group,
        } => {
            check_group(group)?;
            let name = ctx.scope_or(cluster_name)?;
            let dcs = ctx.dcs(&name).await?;
            let c = ctx.cluster(&dcs).await?;
            out(&show_config(&c));
            Ok(())
        }
        Command::HaproxyConfig {
            cluster_name,
            write_bind,
            read_bind,
            stats_bind,
            max_lag_bytes,
            admin_socket,
        } => {
            let name = ctx.scope_or(cluster_name)?;
            let dcs = ctx.dcs(&name).await?;
            let c = ctx.cluster(&dcs).await?;
            let servers = patrol_haproxy::Server::from_cluster(&c);
            if servers.is_empty() {
                return fail(format!("cluster {name} has no members"));
            }
            let o = patrol_haproxy::Options {
                write_bind,
                read_bind,
                stats_bind,
                max_lag_bytes,
                admin_socket,
                ..patrol_haproxy::Options::default()
            };
            out(&patrol_haproxy::render(&name, &servers, &o));
            Ok(())
        }
        Command::History {
            cluster_name,
            group,
            fmt,
        } => {
            check_group(group)?;
            let name = ctx.scope_or(cluster_name)?;
            let dcs = ctx.dcs(&name).await?;
            let c = ctx.cluster(&dcs).await?;
            out(&history_output(&c, fmt_of(&fmt)));
            Ok(())
        }
        Command::Flush {
            args,
            group,
            role,
            force,
        } => {
            check_group(group)?;
            flush(&mut ctx, args, &role, force).await
        }
        Command::Dsn {
            cluster_name,
            group,
            role,
            member,
        } => {
            check_group(group)?;
            let name = ctx.scope_or(cluster_name)?;
            let dcs = ctx.dcs(&name).await?;
            let c = ctx.cluster(&dcs).await?;
            let role = role.as_deref().and_then(CtlRole::parse);
            let m = any_member(&c, role, member.as_deref()).map_err(CtlError)?;
            match m.and_then(patrol_agent::ctl::members::dsn) {
                Some(d) => {
                    out(&format!("{d}\n"));
                    Ok(())
                }
                None => fail("Can not find a suitable member"),
            }
        }
        Command::Query {
            cluster_name,
            group,
            fmt,
            file,
            password,
            username,
            w,
            watch,
            role,
            member,
            delimiter,
            command,
            dbname,
        } => {
            check_group(group)?;
            let name = ctx.scope_or(cluster_name)?;
            query(
                &ctx, &name, &fmt, file, password, username, w, watch, role, member, &delimiter,
                command, dbname,
            )
            .await
        }
        Command::Remove {
            cluster_name,
            group,
            fmt,
        } => {
            check_group(group)?;
            remove(&ctx, &cluster_name, fmt_of(&fmt)).await
        }
        Command::Version {
            cluster_name,
            member_names,
            group,
        } => {
            check_group(group)?;
            version(&mut ctx, cluster_name, member_names).await
        }
        Command::DemoteCluster {
            cluster_name,
            force,
            host,
            port,
            restore_command,
            primary_slot_name,
            timeout,
        } => {
            if host.is_none() && port.is_none() && restore_command.is_none() {
                return fail("At least --host, --port or --restore-command should be specified");
            }
            let mut data = Map::new();
            if let Some(h) = host.filter(|h| !h.is_empty()) {
                data.insert("host".into(), h.into());
            }
            if let Some(p) = port.filter(|p| *p != 0) {
                data.insert("port".into(), p.into());
            }
            if let Some(s) = primary_slot_name.filter(|s| !s.is_empty()) {
                data.insert("primary_slot_name".into(), s.into());
            }
            if let Some(r) = restore_command.filter(|r| !r.is_empty()) {
                data.insert("restore_command".into(), r.into());
            }
            let name = ctx.scope_or(cluster_name)?;
            change_cluster_role(&mut ctx, &name, force, Some(data), timeout).await
        }
        Command::PromoteCluster {
            cluster_name,
            force,
            timeout,
        } => {
            let name = ctx.scope_or(cluster_name)?;
            change_cluster_role(&mut ctx, &name, force, None, timeout).await
        }
        Command::Scaffold {
            cluster_name,
            sysid,
            config,
        } => scaffold(&ctx, &cluster_name, &sysid, config).await,
    }
}

// ----------------------------------------------------------------------------------------------
// list, topology

async fn list(
    ctx: &Ctx,
    mut names: Vec<String>,
    extended: bool,
    ts: bool,
    fmt: Format,
    w: bool,
    watch: Option<f64>,
) -> anyhow::Result<()> {
    if names.is_empty() {
        match &ctx.target.scope {
            Some(s) => names.push(s.clone()),
            None => {
                warn("Listing members: No cluster names were provided");
                return Ok(());
            }
        }
    }
    let mut conns = Vec::new();
    for n in &names {
        conns.push((n.clone(), ctx.dcs(n).await?));
    }
    let interval = watch_interval(w, watch);
    if interval.is_some() {
        clear_screen();
    }
    loop {
        let started = Instant::now();
        if ts {
            out(&format!("{}\n", timestamp(0)));
        }
        for (n, dcs) in &conns {
            let c = ctx.cluster(dcs).await?;
            out(&output_members(&c, n, extended, fmt));
        }
        let Some(iv) = interval else { return Ok(()) };
        tokio::time::sleep(iv.saturating_sub(started.elapsed())).await;
        clear_screen();
    }
}

// ----------------------------------------------------------------------------------------------
// member selection with prompts (get_members / confirm_members_action)

fn print_members(c: &Cluster, name: &str) {
    out(&output_members(c, name, false, Format::Pretty));
}

#[allow(clippy::too_many_arguments)]
fn get_members<'a>(
    cluster: &'a Cluster,
    name: &str,
    member_names: &[String],
    role: CtlRole,
    role_repr: &str,
    force: bool,
    action: &str,
    ask_confirmation: bool,
) -> anyhow::Result<Vec<&'a Member>> {
    let members = all_members(cluster, role);
    let mut candidates: Vec<String> = members.iter().map(|m| m.name.clone()).collect();
    candidates.sort();
    if member_names.is_empty() && candidates.is_empty() {
        return fail(format!("{name} cluster doesn't have any members"));
    }
    print_members(cluster, name);
    let mut names: Vec<String> = Vec::new();
    if !member_names.is_empty() {
        for n in member_names {
            if cluster.member(n).is_none() {
                return fail(format!("{n} is not a member of cluster"));
            }
        }
        names = member_names
            .iter()
            .filter(|n| candidates.contains(n))
            .cloned()
            .collect();
        if names.is_empty() {
            return fail(format!("No {role_repr} among provided members"));
        }
    } else if action != "reinitialize" {
        names = candidates.clone();
    }
    if names.is_empty() && !force {
        names = vec![client::prompt(
            &format!(
                "Which member do you want to {action} [{}]?",
                candidates.join(", ")
            ),
            Some(""),
        )?];
    }
    for n in &names {
        if !candidates.contains(n) {
            return fail(format!("{n} is not a member of cluster"));
        }
    }
    let selected: Vec<&Member> = members
        .into_iter()
        .filter(|m| names.contains(&m.name))
        .collect();
    if ask_confirmation {
        confirm_members_action(&selected, force, action, None, false)?;
    }
    Ok(selected)
}

fn confirm_members_action(
    members: &[&Member],
    force: bool,
    action: &str,
    scheduled_at: Option<&chrono::DateTime<chrono::FixedOffset>>,
    pending: bool,
) -> anyhow::Result<()> {
    if force {
        return Ok(());
    }
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    match scheduled_at {
        Some(at) => {
            let ok = if pending {
                client::confirm("The nodes needing a restart will be identified at the scheduled time, and might be different from the ones showing pending restart right now. Is this fine?")?
            } else {
                client::confirm(&format!(
                    "Are you sure you want to schedule {action} of members {} at {}?",
                    names.join(", "),
                    isoformat(at).replacen('T', " ", 1)
                ))?
            };
            if !ok {
                return fail(format!("Aborted scheduled {action}"));
            }
        }
        None => {
            if !client::confirm(&format!(
                "Are you sure you want to {action} members {}?",
                names.join(", ")
            ))? {
                return fail(format!("Aborted {action}"));
            }
        }
    }
    Ok(())
}

fn role_of(s: &str) -> CtlRole {
    CtlRole::parse(s).unwrap_or(CtlRole::Any)
}

// ----------------------------------------------------------------------------------------------
// switchover, failover

/// `{"leader":..,"member":..,"scheduled_at":..}` with only the given fields, compact (what
/// patronictl's DCS fallback writes).
fn failover_key_json(leader: Option<&str>, candidate: Option<&str>, at: Option<&str>) -> String {
    let mut o = Map::new();
    if let Some(l) = leader.filter(|s| !s.is_empty()) {
        o.insert("leader".into(), l.into());
    }
    if let Some(c) = candidate.filter(|s| !s.is_empty()) {
        o.insert("member".into(), c.into());
    }
    if let Some(a) = at.filter(|s| !s.is_empty()) {
        o.insert("scheduled_at".into(), a.into());
    }
    json_dumps_compact(&Value::Object(o))
}

async fn failover_or_switchover(
    ctx: &mut Ctx,
    action: &str,
    name: &str,
    candidate: Option<String>,
    force: bool,
    switchover_leader: Option<String>,
    scheduled: Option<String>,
) -> anyhow::Result<()> {
    let dcs = ctx.dcs(name).await?;
    let mut cluster = ctx.cluster(&dcs).await?;
    out("Current cluster topology\n");
    print_members(&cluster, name);
    let standby = cluster
        .config
        .as_ref()
        .is_some_and(|c| c.value.is_standby_cluster());
    let paused = cluster.is_paused();
    let cluster_leader = cluster.leader_name().map(String::from);
    let mut leader = switchover_leader;
    if action == "switchover" {
        let Some(cl) = cluster_leader.clone() else {
            return fail("This cluster has no leader");
        };
        if leader.is_none() {
            leader = Some(if force {
                cl.clone()
            } else {
                let label = if standby { "Standby Leader" } else { "Primary" };
                client::prompt(label, Some(&cl))?
            });
        }
        let l = leader.clone().unwrap_or_default();
        if l != cl {
            return fail(format!("Member {l} is not the leader of cluster {name}"));
        }
    }
    let candidates = failover_candidates(&cluster);
    if candidates.is_empty() {
        return fail(format!("No candidates found to {action} to"));
    }
    let mut candidate = candidate;
    if candidate.is_none() && !force {
        let list: Vec<String> = candidates.iter().map(|c| str_repr(c)).collect();
        candidate = Some(client::prompt(
            &format!("Candidate [{}]", list.join(", ")),
            Some(""),
        )?);
    }
    let cand = candidate.clone().filter(|c| !c.is_empty());
    if action == "failover" && cand.is_none() {
        return fail("Failover could be performed only to a specific candidate");
    }
    if let Some(c) = &cand {
        if !candidates.contains(c) {
            if Some(c) == cluster_leader.as_ref() {
                return fail(format!(
                    "Member {c} is already the leader of cluster {name}"
                ));
            }
            return fail(format!(
                "Member {c} does not exist in cluster {name} or is tagged as nofailover"
            ));
        }
    }
    if !force && action == "failover" && is_synchronous_mode(&cluster) {
        if let Some(sync) = cluster.sync.as_ref().map(|s| &s.value) {
            let c = cand.clone().unwrap_or_default();
            let in_sync = sync.matches(&c)
                || sync
                    .leader
                    .as_deref()
                    .is_some_and(|l| l.eq_ignore_ascii_case(&c));
            if sync.leader.is_some()
                && !in_sync
                && !client::confirm(&format!(
                    "Are you sure you want to failover to the asynchronous node {c}?"
                ))?
            {
                return fail(format!("Aborting {action}"));
            }
        }
    }
    let mut scheduled_at = None;
    if action == "switchover" {
        let mut sched = scheduled;
        if sched.is_none() && !force {
            sched = Some(client::prompt(
                &format!(
                    "When should the switchover take place (e.g. {} ) ",
                    next_hour_example()
                ),
                Some("now"),
            )?);
        }
        scheduled_at = parse_scheduled(sched.as_deref()).map_err(CtlError)?;
        if scheduled_at.is_some() && paused {
            return fail("Can't schedule switchover in the paused state");
        }
    }
    let scheduled_at_str = scheduled_at.as_ref().map(isoformat);
    let mut body = Map::new();
    body.insert(
        "candidate".into(),
        candidate.clone().map(Value::String).unwrap_or(Value::Null),
    );
    if action == "switchover" {
        body.insert(
            "leader".into(),
            leader.clone().map(Value::String).unwrap_or(Value::Null),
        );
    }
    if let Some(s) = &scheduled_at_str {
        body.insert("scheduled_at".into(), s.clone().into());
    }
    let body = Value::Object(body);
    if !force {
        let demote_msg = cluster_leader
            .as_ref()
            .map(|l| format!(", demoting current leader {l}"))
            .unwrap_or_default();
        if let Some(at) = &scheduled_at_str {
            if !client::confirm(&format!(
                "Are you sure you want to schedule switchover of cluster {name} at {at}{demote_msg}?"
            ))? {
                return fail(format!("Aborting scheduled {action}"));
            }
        } else if !client::confirm(&format!(
            "Are you sure you want to {action} cluster {name}{demote_msg}?"
        ))? {
            return fail(format!("Aborting {action}"));
        }
    }
    let target: Option<Member> = match cluster_leader.as_deref() {
        Some(l) => Some(cluster.member(l).cloned().unwrap_or_else(|| Member {
            name: l.to_string(),
            version: 0,
            session: 0,
            data: patrol_dcs::MemberData::parse(""),
        })),
        None => cand.as_deref().and_then(|c| cluster.member(c)).cloned(),
    };
    let http = ctx.http()?;
    let result = match &target {
        Some(m) if !m.data.api_url.is_empty() => {
            match http
                .request(m, "POST", Some(action), Some(&body), None)
                .await
            {
                Ok(r)
                    if r.status == 501
                        && action == "switchover"
                        && r.body.contains("Server does not support this operation") =>
                {
                    http.request(m, "POST", Some("failover"), Some(&body), None)
                        .await
                        .map_err(|e| client::error_text(&e))
                }
                other => other.map_err(|e| client::error_text(&e)),
            }
        }
        Some(m) => Err(format!("member {} has no api_url", m.name)),
        None => Err("no member to send the request to".to_string()),
    };
    match result {
        Ok(r) if r.status == 200 || r.status == 202 => {
            cluster = ctx.cluster(&dcs).await?;
            out(&format!("{} {}\n", timestamp(6), r.body));
        }
        Ok(r) => {
            let mut t = action.to_string();
            t[..1].make_ascii_uppercase();
            out(&format!("{t} failed, details: {}, {}\n", r.status, r.body));
            return Ok(());
        }
        Err(e) => {
            warn(&e);
            warn("Failing over to DCS");
            out(&format!(
                "{} Could not {action} using Patroni api, falling back to DCS\n",
                timestamp(6)
            ));
            let v = failover_key_json(
                leader.as_deref(),
                cand.as_deref(),
                scheduled_at_str.as_deref(),
            );
            dcs.set_failover(&v, None)
                .await
                .context("writing the failover key")?;
        }
    }
    print_members(&cluster, name);
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// restart, reinit, reload, flush

fn validate_pg_version(v: &str) -> Result<(), String> {
    let comps: Result<Vec<u64>, _> = v.split('.').map(|p| p.parse::<u64>()).collect();
    let Ok(c) = comps else {
        return Err(format!("Invalid PostgreSQL version: {v}"));
    };
    if c.len() < 2 || (c.len() == 2 && c[0] < 10) || c.len() > 3 {
        return Err(format!(
            "Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: {v}"
        ));
    }
    Ok(())
}

fn role_repr_cli(role: &str) -> String {
    format!("'{role}'")
}

#[allow(clippy::too_many_arguments)]
async fn restart(
    ctx: &mut Ctx,
    name: &str,
    member_names: Vec<String>,
    role: &str,
    p_any: bool,
    scheduled: Option<String>,
    pg_version: Option<String>,
    pending: bool,
    timeout: Option<String>,
    force: bool,
) -> anyhow::Result<()> {
    let dcs = ctx.dcs(name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    let mut members = get_members(
        &cluster,
        name,
        &member_names,
        role_of(role),
        &role_repr_cli(role),
        force,
        "restart",
        false,
    )?;
    let mut scheduled = scheduled;
    if scheduled.is_none() && !force {
        scheduled = Some(client::prompt(
            &format!(
                "When should the restart take place (e.g. {}) ",
                next_hour_example()
            ),
            Some("now"),
        )?);
    }
    let scheduled_at = parse_scheduled(scheduled.as_deref()).map_err(CtlError)?;
    let mut content = Map::new();
    if pending {
        content.insert("restart_pending".into(), true.into());
        if scheduled_at.is_none() {
            members.retain(|m| m.data.pending_restart);
        }
    }
    if p_any && members.len() > 1 {
        let pick = (chrono::Utc::now().timestamp_subsec_nanos() as usize) % members.len();
        members = vec![members[pick]];
    }
    confirm_members_action(&members, force, "restart", scheduled_at.as_ref(), pending)?;
    let mut version = pg_version;
    if version.is_none() && !force {
        version = Some(client::prompt(
            "Restart if the PostgreSQL version is less than provided (e.g. 9.5.2) ",
            Some(""),
        )?);
    }
    if let Some(v) = version.filter(|v| !v.is_empty()) {
        validate_pg_version(&v).map_err(CtlError)?;
        content.insert("postgres_version".into(), v.into());
    }
    if let Some(at) = &scheduled_at {
        if cluster.is_paused() {
            return fail("Can't schedule restart in the paused state");
        }
        content.insert("schedule".into(), isoformat(at).into());
    }
    if let Some(t) = timeout {
        content.insert("timeout".into(), t.into());
    }
    let body = Value::Object(content);
    let http = ctx.http()?;
    for m in members {
        if body.get("schedule").is_some() && force && m.data.scheduled_restart.is_some() {
            match http.request(m, "DELETE", Some("restart"), None, None).await {
                Ok(r) => {
                    let (t, _) =
                        check_response(r.status, &r.body, &m.name, "flush scheduled restart", true);
                    if !t.is_empty() {
                        out(&format!("{t}\n"));
                    }
                }
                Err(e) => warn(&format!(
                    "Member {} is not accessible: {}",
                    m.name,
                    client::error_text(&e)
                )),
            }
        }
        match http
            .request(m, "POST", Some("restart"), Some(&body), None)
            .await
        {
            Ok(r) => out(&format!(
                "{}\n",
                restart_response(r.status, &r.body, &m.name)
            )),
            Err(e) => out(&format!(
                "Failed: restart for member {}, ({})\n",
                m.name,
                client::error_text(&e)
            )),
        }
    }
    Ok(())
}

async fn reinit(
    ctx: &mut Ctx,
    name: &str,
    member_names: Vec<String>,
    force: bool,
    from_leader: bool,
    wait: bool,
) -> anyhow::Result<()> {
    let dcs = ctx.dcs(name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    let members = get_members(
        &cluster,
        name,
        &member_names,
        CtlRole::Replica,
        "replica",
        force,
        "reinitialize",
        true,
    )?;
    let http = ctx.http()?;
    let mut wait_on: Vec<&Member> = Vec::new();
    for m in members {
        let mut body = json!({"force": force, "from_leader": from_leader});
        loop {
            let (started, again) = match http
                .request(m, "POST", Some("reinitialize"), Some(&body), None)
                .await
            {
                Ok(r) => {
                    let (t, ok) = check_response(r.status, &r.body, &m.name, "reinitialize", false);
                    out(&format!("{t}\n"));
                    let again = !ok
                        && r.body.ends_with(" already in progress")
                        && !force
                        && client::confirm("Do you want to cancel it and reinitialize anyway?")?;
                    (ok, again)
                }
                Err(e) => {
                    out(&format!(
                        "Failed: reinitialize for member {}, ({})\n",
                        m.name,
                        client::error_text(&e)
                    ));
                    (false, false)
                }
            };
            if again {
                body["force"] = true.into();
                continue;
            }
            if started && wait {
                wait_on.push(m);
            }
            break;
        }
    }
    let mut last: Vec<String> = Vec::new();
    while !wait_on.is_empty() {
        let names: Vec<String> = wait_on.iter().map(|m| m.name.clone()).collect();
        if names != last {
            out(&format!(
                "Waiting for reinitialize to complete on: {}\n",
                names.join(", ")
            ));
            last = names;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut still = Vec::new();
        for m in wait_on {
            let state = match http
                .request(
                    m,
                    "GET",
                    Some("patroni"),
                    None,
                    Some(Duration::from_secs(10)),
                )
                .await
            {
                Ok(r) => serde_json::from_str::<Value>(&r.body)
                    .ok()
                    .and_then(|v| v.get("state").map(py_str)),
                Err(_) => Some("creating replica".to_string()),
            };
            if state.as_deref() != Some("creating replica") {
                out(&format!("Reinitialize is completed on: {}\n", m.name));
            } else {
                still.push(m);
            }
        }
        wait_on = still;
    }
    Ok(())
}

async fn reload(
    ctx: &mut Ctx,
    name: &str,
    member_names: Vec<String>,
    role: &str,
    force: bool,
) -> anyhow::Result<()> {
    let dcs = ctx.dcs(name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    let members = get_members(
        &cluster,
        name,
        &member_names,
        role_of(role),
        &role_repr_cli(role),
        force,
        "reload",
        true,
    )?;
    let loop_wait = patrol_agent::ctl::members::loop_wait(&cluster);
    let http = ctx.http()?;
    for m in members {
        match http.request(m, "POST", Some("reload"), None, None).await {
            Ok(r) => out(&format!(
                "{}\n",
                reload_response(r.status, &r.body, &m.name, loop_wait)
            )),
            Err(e) => out(&format!(
                "Failed: reload for member {}, ({})\n",
                m.name,
                client::error_text(&e)
            )),
        }
    }
    Ok(())
}

async fn flush(ctx: &mut Ctx, args: Vec<String>, role: &str, force: bool) -> anyhow::Result<()> {
    let (target, rest) = args.split_last().expect("clap requires two values");
    if target != "restart" && target != "switchover" {
        return fail(format!(
            "Invalid value for 'TARGET': '{target}' is not one of 'restart', 'switchover'."
        ));
    }
    let (name, member_names) = rest.split_first().expect("clap requires two values");
    let dcs = ctx.dcs(name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    if target == "restart" {
        let members = get_members(
            &cluster,
            name,
            member_names,
            role_of(role),
            &role_repr_cli(role),
            force,
            "flush",
            true,
        )?;
        let http = ctx.http()?;
        for m in members {
            if m.data.scheduled_restart.is_some() {
                match http.request(m, "DELETE", Some("restart"), None, None).await {
                    Ok(r) => {
                        let (t, _) = check_response(
                            r.status,
                            &r.body,
                            &m.name,
                            "flush scheduled restart",
                            false,
                        );
                        out(&format!("{t}\n"));
                    }
                    Err(e) => out(&format!(
                        "Failed: flush scheduled restart for member {}, ({})\n",
                        m.name,
                        client::error_text(&e)
                    )),
                }
            } else {
                out(&format!("No scheduled restart for member {}\n", m.name));
            }
        }
        return Ok(());
    }
    let Some(failover) = cluster.failover.as_ref().filter(|f| {
        f.value
            .scheduled_at
            .as_deref()
            .is_some_and(|s| !s.is_empty())
    }) else {
        out("No pending scheduled switchover\n");
        return Ok(());
    };
    let http = ctx.http()?;
    for m in members_leader_first(&cluster) {
        match http
            .request(m, "DELETE", Some("switchover"), None, None)
            .await
        {
            Ok(r) if r.status == 200 || r.status == 404 => {
                let prefix = if r.status == 200 { "Success" } else { "Failed" };
                out(&format!("{prefix}: {}\n", r.body));
                return Ok(());
            }
            Ok(r) => out(&format!(
                "Failed: member={}, status_code={}, ({})\n",
                m.name, r.status, r.body
            )),
            Err(e) => {
                warn(&client::error_text(&e));
                warn(&format!("Member {} is not accessible", m.name));
            }
        }
    }
    warn("Failing over to DCS");
    out(&format!(
        "{} Could not find any accessible member of cluster {name}\n",
        timestamp(6)
    ));
    dcs.set_failover("{}", Some(failover.version))
        .await
        .context("resetting the failover key")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// pause, resume

async fn toggle_pause(ctx: &mut Ctx, name: &str, paused: bool, wait: bool) -> anyhow::Result<()> {
    let dcs = ctx.dcs(name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    if cluster.is_paused() == paused {
        return fail(format!(
            "Cluster is {} paused",
            if paused { "already" } else { "not" }
        ));
    }
    let word = if paused { "paused" } else { "resumed" };
    let body = json!({ "pause": if paused { Value::Bool(true) } else { Value::Null } });
    let http = ctx.http()?;
    for m in members_leader_first(&cluster) {
        let r = match http
            .request(
                m,
                "PATCH",
                Some("config"),
                Some(&body),
                Some(Duration::from_secs(30)),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                warn(&client::error_text(&e));
                warn(&format!("Member {} is not accessible", m.name));
                continue;
            }
        };
        if r.status == 200 {
            if wait {
                wait_until_pause_is_applied(ctx, &dcs, paused, &cluster).await?;
            } else {
                out(&format!("Success: cluster management is {word}\n"));
            }
        } else {
            out(&format!(
                "Failed: {} cluster management status code={}, ({})\n",
                if paused { "pause" } else { "resume" },
                r.status,
                r.body
            ));
        }
        return Ok(());
    }
    fail("Can not find accessible cluster member")
}

async fn wait_until_pause_is_applied(
    ctx: &Ctx,
    dcs: &EtcdDcs,
    paused: bool,
    old: &Cluster,
) -> anyhow::Result<()> {
    out(&format!(
        "'{}' request sent, waiting until it is recognized by all nodes\n",
        if paused { "pause" } else { "resume" }
    ));
    let old_versions: BTreeMap<String, i64> = old
        .members
        .iter()
        .filter(|m| !m.data.api_url.is_empty())
        .map(|m| (m.name.clone(), m.version))
        .collect();
    let loop_wait = patrol_agent::ctl::members::loop_wait(old);
    let end = Instant::now() + Duration::from_secs((loop_wait + 1) as u64);
    let mut cluster = None;
    let mut done = false;
    while Instant::now() < end {
        let c = ctx.cluster(dcs).await?;
        let all = c
            .members
            .iter()
            .filter(|m| old_versions.contains_key(&m.name))
            .all(|m| m.data.pause == paused);
        cluster = Some(c);
        if all {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    if !done {
        if let Some(c) = &cluster {
            let remaining: Vec<&str> = c
                .members
                .iter()
                .filter(|m| {
                    m.data.pause != paused
                        && old_versions.get(&m.name).is_some_and(|v| *v != m.version)
                })
                .map(|m| m.name.as_str())
                .collect();
            if !remaining.is_empty() {
                out(&format!(
                    "{} members didn't recognized pause state after {loop_wait} seconds\n",
                    remaining.join(", ")
                ));
                return Ok(());
            }
        }
    }
    out(&format!(
        "Success: cluster management is {}\n",
        if paused { "paused" } else { "resumed" }
    ));
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// edit-config

fn read_source(name: &str) -> anyhow::Result<String> {
    if name == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(name).with_context(|| format!("reading {name}"))
    }
}

fn invoke_editor(before: &str, cluster_name: &str) -> anyhow::Result<(String, Map<String, Value>)> {
    let editor =
        match std::env::var("EDITOR").ok().filter(|e| !e.is_empty()) {
            Some(e) => e,
            None => {
                let path = std::env::var_os("PATH").unwrap_or_default();
                let found = ["editor", "vi"].iter().find_map(|ed| {
                    std::env::split_paths(&path)
                        .map(|d| d.join(ed))
                        .find(|p| p.is_file())
                });
                match found {
                    Some(p) => p.display().to_string(),
                    None => return fail(
                        "EDITOR environment variable is not set. editor or vi are not available",
                    ),
                }
            }
        };
    let safe = cluster_name.replace('/', "_");
    let nanos = chrono::Utc::now().timestamp_subsec_nanos();
    let tmp = std::env::temp_dir().join(format!(
        "{safe}-config-{}{nanos:08x}.yaml",
        std::process::id()
    ));
    std::fs::write(&tmp, before).with_context(|| format!("writing {}", tmp.display()))?;
    let status = if editor.contains(char::is_whitespace) {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&tmp)
            .status()
    } else {
        std::process::Command::new(&editor).arg(&tmp).status()
    };
    let result = (|| {
        let status = status.with_context(|| format!("running {editor}"))?;
        if !status.success() {
            return fail(format!(
                "Editor exited with return code {}",
                status.code().unwrap_or(-1)
            ));
        }
        let after = std::fs::read_to_string(&tmp)?;
        let data = match load_yaml(&after).map_err(CtlError)? {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                return fail(format!(
                    "the edited configuration is not a mapping: {other}"
                ))
            }
        };
        Ok((after, data))
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

#[allow(clippy::too_many_arguments)]
async fn edit_config(
    ctx: &Ctx,
    name: &str,
    force: bool,
    quiet: bool,
    kvpairs: Vec<String>,
    pgkvpairs: Vec<String>,
    apply_filename: Option<String>,
    replace_filename: Option<String>,
) -> anyhow::Result<()> {
    let dcs = ctx.dcs(name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    let Some(config) = &cluster.config else {
        return fail(format!(
            "The config key does not exist in the cluster {name}"
        ));
    };
    let data = &config.value.data;
    let before = format_config(data);
    let mut after: Option<String> = None;
    let mut changed = data.clone();
    if let Some(f) = &replace_filename {
        changed = apply_yaml(&Map::new(), &read_source(f)?).map_err(CtlError)?;
        after = Some(format_config(&changed));
    }
    if let Some(f) = &apply_filename {
        changed = apply_yaml(&changed, &read_source(f)?).map_err(CtlError)?;
        after = Some(format_config(&changed));
    }
    if !kvpairs.is_empty() || !pgkvpairs.is_empty() {
        let mut all = kvpairs.clone();
        all.extend(
            pgkvpairs
                .iter()
                .map(|v| format!("postgresql.parameters.{}", v.trim_start())),
        );
        changed = apply_config_changes(&changed, &all).map_err(CtlError)?;
        after = Some(format_config(&changed));
    }
    let after = match after {
        Some(a) => a,
        None => {
            let (a, d) = invoke_editor(&before, name)?;
            changed = d;
            a
        }
    };
    if patrol_agent::ctl::pyfmt::py_eq(
        &Value::Object(data.clone()),
        &Value::Object(changed.clone()),
    ) {
        if !quiet {
            out("Not changed\n");
        }
        return Ok(());
    }
    if !quiet {
        out(&unified_diff(&before, &after));
    }
    if (apply_filename.as_deref() == Some("-") || replace_filename.as_deref() == Some("-"))
        && !force
    {
        out("Use --force option to apply changes\n");
        return Ok(());
    }
    if force || client::confirm("Apply these changes?")? {
        let json = json_dumps_compact(&Value::Object(changed));
        if !dcs
            .set_config(&json, Some(config.version))
            .await
            .context("writing the config key")?
        {
            return fail("Config modification aborted due to concurrent changes");
        }
        out("Configuration changed\n");
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// query

fn py_str_of_timestamp(text: &str) -> String {
    // PostgreSQL `2024-01-02 03:04:05.12+01` -> Python `2024-01-02 03:04:05.120000+01:00`.
    let (main, tz) = match text.rfind(['+', '-']) {
        Some(i) if i > 10 => (&text[..i], Some(&text[i..])),
        _ => (text, None),
    };
    let main = match main.split_once('.') {
        Some((a, f)) => format!("{a}.{:0<6}", f),
        None => main.to_string(),
    };
    match tz {
        Some(tz) => {
            let sign = &tz[..1];
            let parts: Vec<&str> = tz[1..].split(':').collect();
            let hh = parts.first().copied().unwrap_or("00");
            let mm = parts.get(1).copied().unwrap_or("00");
            format!("{main}{sign}{hh:0>2}:{mm:0>2}")
        }
        None => main,
    }
}

/// A text-format value as psycopg2 would decode it, for the given column type.
fn typed_value(text: Option<&str>, ty: Option<&tokio_postgres::types::Type>) -> Value {
    use tokio_postgres::types::Type;
    let Some(t) = text else { return Value::Null };
    match ty {
        Some(ty) if *ty == Type::BOOL => Value::Bool(t == "t"),
        Some(ty) if [Type::INT2, Type::INT4, Type::INT8, Type::OID].contains(ty) => t
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| t.into()),
        Some(ty) if [Type::FLOAT4, Type::FLOAT8].contains(ty) => t
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(|| t.into()),
        Some(ty) if *ty == Type::TIMESTAMPTZ || *ty == Type::TIMESTAMP => {
            Value::String(py_str_of_timestamp(t))
        }
        _ => Value::String(t.to_string()),
    }
}

type QueryOutput = (Vec<Vec<Value>>, Option<Vec<String>>);

#[allow(clippy::too_many_arguments)]
async fn query_member(
    cluster: &Cluster,
    member: Option<&str>,
    role: Option<&str>,
    sql: &str,
    user: &str,
    password: Option<&str>,
    dbname: &str,
) -> anyhow::Result<QueryOutput> {
    let role_e = role.map(role_of);
    let m = any_member(cluster, role_e, member).map_err(CtlError)?;
    let none = |member: Option<&str>, role: Option<&str>| {
        let message = match (member, role) {
            (Some(m), _) => format!("No connection to member {m} is available"),
            (None, Some(r)) => format!("No connection to role {} is available", str_repr(r)),
            _ => "No connection is available".to_string(),
        };
        (
            vec![vec![Value::from(timestamp(0)), Value::from(message)]],
            None,
        )
    };
    let Some(m) = m else {
        return Ok(none(member, role));
    };
    let Some((host, port)) = parse_conn_url(&m.data.conn_url) else {
        return Ok(none(member, role));
    };
    let err = |e: &tokio_postgres::Error| {
        let message = e
            .code()
            .map(|c| c.code().to_string())
            .unwrap_or_else(|| {
                let mut s = e.to_string();
                if let Some(src) = std::error::Error::source(e) {
                    s = format!("{s}: {src}");
                }
                s
            })
            .replace('\n', " ");
        (
            vec![vec![
                Value::from(timestamp(0)),
                Value::from(format!("ERROR, SQLSTATE: {message}")),
            ]],
            None,
        )
    };
    let mut cfg = tokio_postgres::Config::new();
    cfg.host(&host)
        .port(port)
        .user(user)
        .dbname(dbname)
        .application_name("Patroni ctl")
        .connect_timeout(Duration::from_secs(5));
    if let Some(p) = password {
        cfg.password(p);
    }
    let (client, conn) = match cfg.connect(tokio_postgres::NoTls).await {
        Ok(x) => x,
        Err(e) => return Ok(err(&e)),
    };
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        if let Some(r) = role_e.filter(|r| ![CtlRole::Any, CtlRole::Leader].contains(r)) {
            let in_recovery = match client
                .query_one("SELECT pg_catalog.pg_is_in_recovery()", &[])
                .await
            {
                Ok(row) => row.get::<_, bool>(0),
                Err(e) => return Ok(err(&e)),
            };
            let ok = (in_recovery
                && [CtlRole::Replica, CtlRole::Standby, CtlRole::StandbyLeader].contains(&r))
                || (!in_recovery && r == CtlRole::Primary);
            if !ok {
                return Ok(none(member, role));
            }
        }
        let types: Option<Vec<tokio_postgres::types::Type>> = client
            .prepare(sql)
            .await
            .ok()
            .map(|s| s.columns().iter().map(|c| c.type_().clone()).collect());
        let msgs = match client.simple_query(sql).await {
            Ok(m) => m,
            Err(e) => return Ok(err(&e)),
        };
        let mut header: Option<Vec<String>> = None;
        let mut rows: Vec<Vec<Value>> = Vec::new();
        for msg in msgs {
            match msg {
                tokio_postgres::SimpleQueryMessage::RowDescription(cols) => {
                    header = Some(cols.iter().map(|c| c.name().to_string()).collect());
                    rows.clear();
                }
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    if header.is_none() {
                        header = Some(r.columns().iter().map(|c| c.name().to_string()).collect());
                    }
                    let row = (0..r.len())
                        .map(|i| typed_value(r.get(i), types.as_ref().and_then(|t| t.get(i))))
                        .collect();
                    rows.push(row);
                }
                _ => {}
            }
        }
        match header {
            Some(h) => Ok((rows, Some(h))),
            None => Ok((
                vec![vec![
                    Value::from(timestamp(0)),
                    Value::from("ERROR, SQLSTATE: no results to fetch"),
                ]],
                None,
            )),
        }
    }
    .await;
    drop(client);
    let _ = task.await;
    result
}

#[allow(clippy::too_many_arguments)]
async fn query(
    ctx: &Ctx,
    name: &str,
    fmt: &str,
    file: Option<PathBuf>,
    password: bool,
    username: Option<String>,
    w: bool,
    watch: Option<f64>,
    role: Option<String>,
    member: Option<String>,
    delimiter: &str,
    command: Option<String>,
    dbname: Option<String>,
) -> anyhow::Result<()> {
    let sql = match (file, command) {
        (Some(_), Some(_)) => return fail("--file and --command are mutually exclusive options"),
        (Some(f), None) => {
            if f.as_os_str() == "-" {
                read_source("-")?
            } else {
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?
            }
        }
        (None, Some(c)) => c,
        (None, None) => return fail("You need to specify either --command or --file"),
    };
    let superuser = ctx
        .doc
        .get("postgresql")
        .and_then(|p| p.get("authentication"))
        .and_then(|a| a.get("superuser"))
        .cloned()
        .unwrap_or(Value::Null);
    let su_name = superuser.get("username").map(py_str);
    let su_pass = superuser.get("password").map(py_str);
    let user = username
        .clone()
        .or_else(|| su_name.clone())
        .or_else(|| std::env::var("PGUSER").ok())
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "postgres".into());
    let pass = if password {
        Some(client::prompt_password("Password")?)
    } else if su_name.as_deref() == Some(user.as_str()) && su_pass.is_some() {
        su_pass
    } else {
        std::env::var("PGPASSWORD").ok()
    };
    let db = dbname
        .or_else(|| std::env::var("PGDATABASE").ok())
        .unwrap_or_else(|| user.clone());
    let dcs = ctx.dcs(name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    let interval = watch_interval(w, watch);
    loop {
        let started = Instant::now();
        let (rows, header) = query_member(
            &cluster,
            member.as_deref(),
            role.as_deref(),
            &sql,
            &user,
            pass.as_deref(),
            &db,
        )
        .await?;
        out(&print_output(
            &header.unwrap_or_default(),
            &rows,
            &[],
            fmt_of(fmt),
            "",
            delimiter,
        ));
        let Some(iv) = interval else { return Ok(()) };
        tokio::time::sleep(iv.saturating_sub(started.elapsed())).await;
    }
}

// ----------------------------------------------------------------------------------------------
// remove, version

async fn remove(ctx: &Ctx, name: &str, fmt: Format) -> anyhow::Result<()> {
    let dcs = ctx.dcs(name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    out(&output_members(&cluster, name, false, fmt));
    if client::prompt("Please confirm the cluster name to remove", None)? != name {
        return fail("Cluster names specified do not match");
    }
    let message = "Yes I am aware";
    let answer = client::prompt(
        &format!(
            "You are about to remove all information in DCS for {name}, please type: \"{message}\""
        ),
        None,
    )?;
    if answer != message {
        return fail(format!("You did not exactly type \"{message}\""));
    }
    if let Some(l) = cluster.leader_name().filter(|l| !l.is_empty()) {
        let answer = client::prompt(
            "This cluster currently is healthy. Please specify the leader name to continue",
            None,
        )?;
        if answer != l {
            return fail("You did not specify the current leader of the cluster");
        }
    }
    dcs.delete_cluster().await.context("deleting the cluster")?;
    Ok(())
}

async fn version(
    ctx: &mut Ctx,
    cluster_name: Option<String>,
    member_names: Vec<String>,
) -> anyhow::Result<()> {
    out(&format!(
        "patrolctl version {}\n",
        env!("CARGO_PKG_VERSION")
    ));
    let Some(name) = cluster_name else {
        return Ok(());
    };
    out("\n");
    let dcs = ctx.dcs(&name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    for n in &member_names {
        if cluster.member(n).is_none() {
            return fail(format!("{n} is not a member of cluster"));
        }
    }
    let http = ctx.http()?;
    for m in all_members(&cluster, CtlRole::Any) {
        if m.data.api_url.is_empty() || !(member_names.is_empty() || member_names.contains(&m.name))
        {
            continue;
        }
        let line = match http
            .request(m, "GET", None, None, Some(Duration::from_secs(10)))
            .await
        {
            Ok(r) => match serde_json::from_str::<Value>(&r.body) {
                Ok(v) => version_line(&m.name, &v),
                Err(e) => format!("{}: failed to get version: {e}", m.name),
            },
            Err(e) => format!(
                "{}: failed to get version: {}",
                m.name,
                client::error_text(&e)
            ),
        };
        out(&format!("{line}\n"));
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// demote-cluster, promote-cluster

async fn change_cluster_role(
    ctx: &mut Ctx,
    name: &str,
    force: bool,
    standby_config: Option<Map<String, Value>>,
    timeout: u64,
) -> anyhow::Result<()> {
    let demote = standby_config.as_ref().is_some_and(|c| !c.is_empty());
    let action = if demote { "demot" } else { "promot" };
    let target_role = if demote { "standby_leader" } else { "primary" };
    let dcs = ctx.dcs(name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    let Some(leader_name) = cluster
        .leader_name()
        .filter(|l| !l.is_empty())
        .map(String::from)
    else {
        return fail(format!(
            "Cluster has no leader, {action}ion is not possible"
        ));
    };
    let leader_member = cluster.leader_member().cloned();
    if leader_member
        .as_ref()
        .is_some_and(|m| m.data.role.as_str() == target_role)
    {
        return fail("Cluster is already in the required state");
    }
    out("Current cluster topology\n");
    print_members(&cluster, name);
    if !force
        && !client::confirm(&format!(
            "Are you sure you want to {action}e {name} cluster?"
        ))?
    {
        return fail(format!("Aborted cluster {action}ion"));
    }
    let body =
        json!({ "standby_cluster": standby_config.map(Value::Object).unwrap_or(Value::Null) });
    let Some(lm) = leader_member else {
        return fail(format!(
            "Failed to {action}e {name} cluster: the leader {leader_name} has no member key"
        ));
    };
    let http = ctx.http()?;
    match http
        .request(
            &lm,
            "PATCH",
            Some("config"),
            Some(&body),
            Some(Duration::from_secs(30)),
        )
        .await
    {
        Ok(r) if r.status == 200 => {}
        Ok(r) => {
            return fail(format!(
                "Failed to {action}e {name} cluster: /config PATCH status code={}, ({})",
                r.status, r.body
            ))
        }
        Err(e) => {
            return fail(format!(
                "Failed to {action}e {name} cluster: {}",
                client::error_text(&e)
            ))
        }
    }
    let deadline = Instant::now() + Duration::from_secs(timeout);
    drop(cluster);
    let cluster = loop {
        let cluster = ctx.cluster(&dcs).await?;
        let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
        let leader = cluster.leader_member();
        let is_unlocked = cluster.leader.is_none();
        let leader_role = leader.map(|m| m.data.role.as_str().to_string());
        let leader_state = leader.map(|m| m.data.state.clone());
        let old_state = cluster.member(&leader_name).map(|m| m.data.state.clone());
        if !is_unlocked
            && leader_role.as_deref() == Some(target_role)
            && leader_state.as_deref() == Some("running")
            && (!demote || old_state.as_deref() == Some("running"))
        {
            out(&format!("{now} cluster is successfully {action}ed\n"));
            break cluster;
        }
        let py = |v: &Option<String>| v.clone().unwrap_or_else(|| "None".into());
        let mut parts = vec![
            format!(
                "{now} cluster is unlocked: {}",
                if is_unlocked { "True" } else { "False" }
            ),
            format!("leader role: {}", py(&leader_role)),
            format!("leader state: {}", py(&leader_state)),
        ];
        if demote && cluster.leader_name() != Some(leader_name.as_str()) {
            if let Some(s) = &old_state {
                parts.push(format!("previous leader state: {}", str_repr(s)));
            }
        }
        out(&format!("{}\n", parts.join(", ")));
        if Instant::now() >= deadline {
            print_members(&cluster, name);
            return fail(format!(
                "the leader did not become a running {target_role} within {timeout} s (note: Patrol agents do not implement standby clusters yet)"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    print_members(&cluster, name);
    Ok(())
}

// ----------------------------------------------------------------------------------------------
// configure, scaffold

fn configure(
    config_file: Option<PathBuf>,
    dcs: Option<String>,
    namespace: Option<String>,
    scope: Option<String>,
) -> anyhow::Result<()> {
    let path = match config_file {
        Some(p) => p,
        None => PathBuf::from(client::prompt(
            "Configuration file",
            Some(&default_config_path().display().to_string()),
        )?),
    };
    let dcs = match dcs {
        Some(d) => d,
        None => client::prompt("DCS connect url", Some("etcd3://localhost:2379"))?,
    };
    let namespace = match namespace {
        Some(n) => n,
        None => client::prompt("Namespace", Some("/service/"))?,
    };
    let scope = match scope {
        Some(s) => s,
        None => client::prompt("Cluster name (scope)", Some(""))?,
    };
    let (hp, ns_from_url) = parse_dcs_url(&dcs)?;
    let mut doc = Map::new();
    doc.insert("etcd3".into(), json!({ "host": hp }));
    doc.insert(
        "namespace".into(),
        Value::String(ns_from_url.unwrap_or(namespace)),
    );
    if !scope.is_empty() {
        doc.insert("scope".into(), Value::String(scope));
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, yaml_dump(&Value::Object(doc), false))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// `host[:port]` of a `listen`/`connect_address` value, with a default port.
fn address(v: Option<&Value>, default_host: &str, default_port: u16) -> String {
    let s = v.map(py_str).unwrap_or_default();
    let first = s.split(',').next().unwrap_or("").trim();
    if first.is_empty() {
        return format!("{default_host}:{default_port}");
    }
    if first.contains(':') && !first.ends_with(']') {
        first.to_string()
    } else {
        format!("{first}:{default_port}")
    }
}

async fn scaffold(
    ctx: &Ctx,
    name: &str,
    sysid: &str,
    config_file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let config_json = match &config_file {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            match load_yaml(&text).map_err(CtlError)? {
                Value::Object(m) => Some(json_dumps_compact(&Value::Object(m))),
                _ => {
                    return fail(format!(
                        "{}: the dynamic configuration must be a mapping",
                        f.display()
                    ))
                }
            }
        }
        None => None,
    };
    let dcs = ctx.dcs(name).await?;
    let cluster = ctx.cluster(&dcs).await?;
    if cluster.initialize.is_some() {
        return fail("This cluster is already initialized");
    }
    if !dcs
        .initialize(true, sysid)
        .await
        .context("writing the initialize key")?
    {
        return fail(format!("Initialize key for cluster {name} already exists"));
    }
    // The permanent member and leader keys Patroni's scaffold writes (no lease: they never
    // expire), named after the config's `name` or the cluster.
    let member = ctx
        .doc
        .get("name")
        .map(py_str)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| name.to_string());
    let pg = ctx.doc.get("postgresql").cloned().unwrap_or(Value::Null);
    let api = ctx.doc.get("restapi").cloned().unwrap_or(Value::Null);
    let pg_addr = address(
        pg.get("connect_address").or_else(|| pg.get("listen")),
        "127.0.0.1",
        5432,
    );
    let api_addr = address(
        api.get("connect_address").or_else(|| api.get("listen")),
        "127.0.0.1",
        8008,
    );
    let proto = if api.get("certfile").is_some() {
        "https"
    } else {
        "http"
    };
    let data = json!({
        "conn_url": format!("postgres://{pg_addr}/postgres"),
        "api_url": format!("{proto}://{api_addr}/patroni"),
        "state": "running",
        "role": "primary",
    });
    let prefix = cluster_prefix(&ctx.target.namespace, name);
    let written: anyhow::Result<bool> = async {
        let mut opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(10))
            .with_timeout(Duration::from_secs(10));
        if let (Some(u), Some(p)) = (&ctx.target.username, &ctx.target.password) {
            opts = opts.with_user(u.clone(), p.clone());
        }
        let mut client =
            etcd_client::Client::connect(ctx.target.endpoints.clone(), Some(opts)).await?;
        client
            .put(
                format!("{prefix}members/{member}"),
                json_dumps_compact(&data),
                None,
            )
            .await?;
        let key = format!("{prefix}leader");
        let txn = etcd_client::Txn::new()
            .when([etcd_client::Compare::create_revision(
                key.clone(),
                etcd_client::CompareOp::Equal,
                0,
            )])
            .and_then([etcd_client::TxnOp::put(key, member.clone(), None)]);
        let ok = client.txn(txn).await?.succeeded();
        if ok {
            if let Some(c) = &config_json {
                client
                    .put(format!("{prefix}config"), c.clone(), None)
                    .await?;
            }
        }
        Ok(ok)
    }
    .await;
    if !matches!(written, Ok(true)) {
        let _ = dcs.delete_cluster().await;
        if let Err(e) = written {
            warn(&format!("{e:#}"));
        }
        return fail(format!(
            "Unable to install permanent leader for cluster {name}"
        ));
    }
    out(&format!("Cluster {name} has been created successfully\n"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_knows_every_subcommand() {
        let names: Vec<String> = Args::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert_eq!(names, patrol_agent::ctl::COMMANDS);
    }

    #[test]
    fn dcs_urls_like_patronictl() {
        assert_eq!(
            parse_dcs_url("etcd3://random.com:2399/customnamespace").unwrap(),
            ("random.com:2399".into(), Some("/customnamespace".into()))
        );
        assert_eq!(
            parse_dcs_url("etcd://:2399").unwrap(),
            ("localhost:2399".into(), None)
        );
        assert_eq!(
            parse_dcs_url("127.0.0.1:2379").unwrap(),
            ("127.0.0.1:2379".into(), None)
        );
        assert_eq!(
            parse_dcs_url("etcd://test").unwrap(),
            ("test:2379".into(), None)
        );
        assert!(parse_dcs_url("consul://x:8500").is_err());
        assert_eq!(
            parse_dcs_url("foo://x").unwrap_err().to_string(),
            "Unknown dcs scheme: foo"
        );
    }

    #[test]
    fn failover_key_like_patroni() {
        assert_eq!(
            failover_key_json(Some("pg0"), Some("pg1"), None),
            r#"{"leader":"pg0","member":"pg1"}"#
        );
        assert_eq!(failover_key_json(None, Some(""), None), "{}");
    }

    #[test]
    fn pg_versions() {
        assert!(validate_pg_version("15.4").is_ok());
        assert!(validate_pg_version("9.6.24").is_ok());
        assert_eq!(
            validate_pg_version("9.6").unwrap_err(),
            "Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: 9.6"
        );
        assert_eq!(
            validate_pg_version("a.b").unwrap_err(),
            "Invalid PostgreSQL version: a.b"
        );
    }

    #[test]
    fn timestamps_from_postgres_text() {
        assert_eq!(
            py_str_of_timestamp("2024-01-02 03:04:05.12+01"),
            "2024-01-02 03:04:05.120000+01:00"
        );
        assert_eq!(
            py_str_of_timestamp("2024-01-02 03:04:05"),
            "2024-01-02 03:04:05"
        );
    }

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }
}
