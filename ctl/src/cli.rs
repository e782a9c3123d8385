//! The command line: patronictl's options and subcommands (clap), with the arguments of each
//! subcommand in its own struct for the module that runs it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::members::CtlRole;

/// `patrolctl`'s subcommands, in the order of its `--help`: patronictl 4.1's commands, its older
/// `configure` and `scaffold`, and `haproxy-config` and `completion` of our own. A test checks
/// this list against the clap definition, another that `docs/patroni-compatibility.md`
/// describes each.
pub const COMMANDS: &[&str] = &[
    "list",
    "topology",
    "switchover",
    "failover",
    "restart",
    "reinit",
    "reload",
    "pause",
    "resume",
    "edit-config",
    "show-config",
    "history",
    "flush",
    "dsn",
    "query",
    "remove",
    "haproxy-config",
    "version",
    "demote-cluster",
    "promote-cluster",
    "configure",
    "scaffold",
    "completion",
];

/// Command-line interface for interacting with Patroni.
#[derive(Parser, Debug)]
#[command(name = "patrolctl", version, about, max_term_width = 100)]
pub struct Args {
    /// Configuration file (default ~/.config/patroni/patronictl.yaml, ignored if missing)
    #[arg(short = 'c', long = "config-file", env = "PATRONICTL_CONFIG_FILE")]
    pub config_file: Option<PathBuf>,
    /// The DCS connect url, e.g. etcd3://127.0.0.1:2379/service
    #[arg(short = 'd', long = "dcs-url", visible_alias = "dcs", env = "DCS_URL")]
    pub dcs_url: Option<String>,
    /// Allow connections to SSL sites without certs
    #[arg(short = 'k', long = "insecure")]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: Command,
}

fn role_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(CtlRole::ALL)
}

fn format_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(["pretty", "tsv", "json", "yaml", "yml"])
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the Patroni members for a given Patroni
    List(ListArgs),
    /// Prints ASCII topology for given cluster
    Topology(TopologyArgs),
    /// Switchover to a replica
    Switchover(SwitchoverArgs),
    /// Failover to a replica
    Failover(FailoverArgs),
    /// Restart cluster member
    Restart(RestartArgs),
    /// Reinitialize cluster member
    Reinit(ReinitArgs),
    /// Reload cluster member configuration
    Reload(ReloadArgs),
    /// Disable auto failover
    Pause(PauseArgs),
    /// Resume auto failover
    Resume(ResumeArgs),
    /// Edit cluster configuration
    EditConfig(EditConfigArgs),
    /// Show cluster configuration
    ShowConfig(ShowConfigArgs),
    /// Show the history of failovers/switchovers
    History(HistoryArgs),
    /// Discard scheduled events: CLUSTER_NAME [MEMBER_NAMES]... {restart|switchover}
    Flush(FlushArgs),
    /// Generate a dsn for the provided member, defaults to a dsn of the leader
    Dsn(DsnArgs),
    /// Query a Patroni PostgreSQL member
    Query(QueryArgs),
    /// Remove cluster from DCS
    Remove(RemoveArgs),
    /// Print an haproxy.cfg for the cluster (write and read listens checked against each
    /// member's REST API), as `patrol-router haproxy-config` does
    HaproxyConfig(HaproxyConfigArgs),
    /// Output version of patrolctl command or a running Patroni instance
    Version(VersionArgs),
    /// Demote cluster to a standby cluster
    DemoteCluster(DemoteClusterArgs),
    /// Promote cluster, make it run standalone
    PromoteCluster(PromoteClusterArgs),
    /// Create configuration file
    Configure(ConfigureArgs),
    /// Create a structure for the cluster in DCS
    Scaffold(ScaffoldArgs),
    /// Print a shell completion script
    Completion(CompletionArgs),
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    pub cluster_names: Vec<String>,
    /// Citus group (Citus is not supported: must be absent or 0)
    #[arg(long)]
    pub group: Option<i64>,
    /// Show some extra information
    #[arg(short = 'e', long)]
    pub extended: bool,
    /// Print timestamp
    #[arg(short = 't', long = "timestamp")]
    pub ts: bool,
    /// Output format
    #[arg(short = 'f', long = "format", default_value = "pretty", value_parser = format_parser())]
    pub fmt: String,
    /// Auto update the screen every 2 seconds
    #[arg(short = 'W')]
    pub w: bool,
    /// Auto update the screen every X seconds
    #[arg(short = 'w', long = "watch")]
    pub watch: Option<f64>,
}

#[derive(clap::Args, Debug)]
pub struct TopologyArgs {
    pub cluster_names: Vec<String>,
    #[arg(long)]
    pub group: Option<i64>,
    #[arg(short = 'W')]
    pub w: bool,
    #[arg(short = 'w', long = "watch")]
    pub watch: Option<f64>,
}

#[derive(clap::Args, Debug)]
pub struct SwitchoverArgs {
    pub cluster_name: Option<String>,
    #[arg(long)]
    pub group: Option<i64>,
    /// The name of the current leader
    #[arg(long = "leader", visible_alias = "primary")]
    pub leader: Option<String>,
    /// The name of the candidate
    #[arg(long)]
    pub candidate: Option<String>,
    /// Timestamp of a scheduled switchover in unambiguous format (e.g. ISO 8601)
    #[arg(long)]
    pub scheduled: Option<String>,
    /// Do not ask for confirmation at any point
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct FailoverArgs {
    pub cluster_name: Option<String>,
    #[arg(long)]
    pub group: Option<i64>,
    /// The name of the candidate
    #[arg(long)]
    pub candidate: Option<String>,
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct RestartArgs {
    pub cluster_name: String,
    pub member_names: Vec<String>,
    #[arg(long)]
    pub group: Option<i64>,
    /// Restart only members with this role
    #[arg(short = 'r', long, default_value = "any", value_parser = role_parser())]
    pub role: String,
    /// Restart a single member only
    #[arg(long = "any")]
    pub p_any: bool,
    /// Timestamp of a scheduled restart in unambiguous format (e.g. ISO 8601)
    #[arg(long)]
    pub scheduled: Option<String>,
    /// Restart if the PostgreSQL version is less than provided (e.g. 9.5.2)
    #[arg(long = "pg-version")]
    pub pg_version: Option<String>,
    /// Restart if pending
    #[arg(long)]
    pub pending: bool,
    /// Return error and fail over if necessary when restarting takes longer than this.
    #[arg(long)]
    pub timeout: Option<String>,
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct ReinitArgs {
    pub cluster_name: String,
    pub member_names: Vec<String>,
    #[arg(long)]
    pub group: Option<i64>,
    #[arg(long)]
    pub force: bool,
    /// Get basebackup from leader
    #[arg(long = "from-leader")]
    pub from_leader: bool,
    /// Wait until reinitialization completes
    #[arg(long)]
    pub wait: bool,
}

#[derive(clap::Args, Debug)]
pub struct ReloadArgs {
    pub cluster_name: String,
    pub member_names: Vec<String>,
    #[arg(long)]
    pub group: Option<i64>,
    /// Reload only members with this role
    #[arg(short = 'r', long, default_value = "any", value_parser = role_parser())]
    pub role: String,
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct PauseArgs {
    pub cluster_name: Option<String>,
    #[arg(long)]
    pub group: Option<i64>,
    /// Wait until pause is applied on all nodes
    #[arg(long)]
    pub wait: bool,
}

#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    pub cluster_name: Option<String>,
    #[arg(long)]
    pub group: Option<i64>,
    /// Wait until pause is cleared on all nodes
    #[arg(long)]
    pub wait: bool,
}

#[derive(clap::Args, Debug)]
pub struct EditConfigArgs {
    pub cluster_name: Option<String>,
    #[arg(long)]
    pub group: Option<i64>,
    /// Do not show changes
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Set specific configuration value. Can be specified multiple times
    #[arg(short = 's', long = "set")]
    pub kvpairs: Vec<String>,
    /// Set specific PostgreSQL parameter value. Shorthand for -s postgresql.parameters.
    /// Can be specified multiple times
    #[arg(short = 'p', long = "pg")]
    pub pgkvpairs: Vec<String>,
    /// Apply configuration from file. Use - for stdin.
    #[arg(long = "apply")]
    pub apply_filename: Option<String>,
    /// Apply configuration from file, replacing existing configuration. Use - for stdin.
    #[arg(long = "replace")]
    pub replace_filename: Option<String>,
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct ShowConfigArgs {
    pub cluster_name: Option<String>,
    #[arg(long)]
    pub group: Option<i64>,
}

#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    pub cluster_name: Option<String>,
    #[arg(long)]
    pub group: Option<i64>,
    #[arg(short = 'f', long = "format", default_value = "pretty", value_parser = format_parser())]
    pub fmt: String,
}

#[derive(clap::Args, Debug)]
pub struct FlushArgs {
    /// CLUSTER_NAME [MEMBER_NAMES]... TARGET (restart or switchover)
    #[arg(required = true, num_args = 2.., value_name = "CLUSTER_NAME [MEMBER_NAMES]... TARGET")]
    pub args: Vec<String>,
    #[arg(long)]
    pub group: Option<i64>,
    /// Flush only members with this role
    #[arg(short = 'r', long, default_value = "any", value_parser = role_parser())]
    pub role: String,
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args, Debug)]
pub struct DsnArgs {
    pub cluster_name: Option<String>,
    #[arg(long)]
    pub group: Option<i64>,
    /// Give a dsn of any member with this role
    #[arg(short = 'r', long, value_parser = role_parser())]
    pub role: Option<String>,
    /// Generate a dsn for this member
    #[arg(short = 'm', long)]
    pub member: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct QueryArgs {
    pub cluster_name: Option<String>,
    #[arg(long)]
    pub group: Option<i64>,
    /// Output format (pretty, tsv, json, yaml)
    #[arg(long = "format", default_value = "tsv", value_parser = format_parser())]
    pub fmt: String,
    /// Execute the SQL commands from this file
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// force password prompt
    #[arg(long)]
    pub password: bool,
    /// database user name
    #[arg(short = 'U', long)]
    pub username: Option<String>,
    #[arg(short = 'W')]
    pub w: bool,
    #[arg(short = 'w', long = "watch")]
    pub watch: Option<f64>,
    /// The role of the query
    #[arg(short = 'r', long, value_parser = role_parser())]
    pub role: Option<String>,
    /// Query a specific member
    #[arg(short = 'm', long)]
    pub member: Option<String>,
    /// The column delimiter
    #[arg(long, default_value = "\t")]
    pub delimiter: String,
    /// The SQL commands to execute
    #[arg(short = 'c', long)]
    pub command: Option<String>,
    /// database name to connect to
    #[arg(short = 'd', long)]
    pub dbname: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct RemoveArgs {
    pub cluster_name: String,
    #[arg(long)]
    pub group: Option<i64>,
    #[arg(short = 'f', long = "format", default_value = "pretty", value_parser = format_parser())]
    pub fmt: String,
}

#[derive(clap::Args, Debug)]
pub struct HaproxyConfigArgs {
    pub cluster_name: Option<String>,
    /// `bind` of the primary (write) listen.
    #[arg(long, default_value = "*:5000")]
    pub write_bind: String,
    /// `bind` of the replicas (read) listen.
    #[arg(long, default_value = "*:5001")]
    pub read_bind: String,
    /// `bind` of the stats page.
    #[arg(long, default_value = "*:7000")]
    pub stats_bind: String,
    /// Replicas further behind fail their check.
    #[arg(long, default_value_t = 1_048_576)]
    pub max_lag_bytes: u64,
    /// Runtime API socket (for `patrol-router --haproxy-socket`).
    #[arg(long)]
    pub admin_socket: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct VersionArgs {
    pub cluster_name: Option<String>,
    pub member_names: Vec<String>,
    #[arg(long)]
    pub group: Option<i64>,
}

#[derive(clap::Args, Debug)]
pub struct DemoteClusterArgs {
    pub cluster_name: Option<String>,
    #[arg(long)]
    pub force: bool,
    /// Address of the remote node
    #[arg(long)]
    pub host: Option<String>,
    /// Port of the remote node
    #[arg(long)]
    pub port: Option<u16>,
    /// Command to restore WAL records from the remote primary
    #[arg(long = "restore-command")]
    pub restore_command: Option<String>,
    /// Name of the slot on the remote node to use for replication
    #[arg(long = "primary-slot-name")]
    pub primary_slot_name: Option<String>,
    /// Give up waiting for the new role after this many seconds (patronictl waits forever)
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct PromoteClusterArgs {
    pub cluster_name: Option<String>,
    #[arg(long)]
    pub force: bool,
    /// Give up waiting for the new role after this many seconds (patronictl waits forever)
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(clap::Args, Debug)]
pub struct ConfigureArgs {
    /// Configuration file
    #[arg(short = 'c', long = "config-file")]
    pub config_file: Option<PathBuf>,
    /// The DCS connect url
    #[arg(short = 'd', long = "dcs-url", visible_alias = "dcs")]
    pub dcs: Option<String>,
    /// The namespace
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The cluster name (scope)
    #[arg(short = 's', long)]
    pub scope: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct ScaffoldArgs {
    pub cluster_name: String,
    /// System ID of the cluster to put into the initialize key
    #[arg(short = 's', long, default_value = "")]
    pub sysid: String,
    /// YAML file with the dynamic configuration to write into the config key
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct CompletionArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::CommandFactory;
    use patrol_config::compatibility_doc::{self, rows};

    use super::*;

    #[test]
    fn the_library_knows_every_subcommand() {
        let names: Vec<String> = Args::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        assert_eq!(names, COMMANDS);
    }

    #[test]
    fn cli_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn every_patrolctl_command_is_documented() {
        let mut documented = BTreeSet::new();
        for row in rows(compatibility_doc::COMMANDS) {
            for command in &row.keys {
                if matches!(row.state.as_str(), "yes" | "differs" | "extra") {
                    assert!(
                        super::COMMANDS.contains(&command.as_str()),
                        "line {}: the doc lists `{command}` as a patrolctl command, but patrolctl has none by that name",
                        row.line
                    );
                }
                documented.insert(command.clone());
            }
        }
        for command in super::COMMANDS {
            assert!(
                documented.contains(*command),
                "patrolctl {command} is not in the doc's patronictl commands table"
            );
        }
    }
}
