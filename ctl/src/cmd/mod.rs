//! The commands: [`run`] loads the configuration and hands each subcommand to its module, one
//! per command group. Texts, prompts and exit codes follow patronictl.

mod cluster;
mod config;
mod failover;
mod haproxy;
mod list;
mod pause;
mod query;
mod restart;
mod select;
mod setup;
mod version;

use clap::CommandFactory;

use crate::cli::{Args, Command, CompletionArgs};
use crate::context::load_ctx;
use crate::error::fail;
use crate::members::CtlRole;
use crate::table::Format;

/// Runs one `patrolctl` command. `completion` and `configure` need no configuration; every
/// other command reads it first.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let Args {
        config_file,
        dcs_url,
        insecure,
        command,
    } = args;
    let load = || load_ctx(config_file.as_deref(), dcs_url.as_deref(), insecure);
    match command {
        Command::Completion(a) => completion(a),
        Command::Configure(a) => setup::configure(a),
        Command::List(a) => list::list(&load()?, a).await,
        Command::Topology(a) => list::topology(&load()?, a).await,
        Command::Switchover(a) => failover::switchover(&mut load()?, a).await,
        Command::Failover(a) => failover::failover(&mut load()?, a).await,
        Command::Restart(a) => restart::restart(&mut load()?, a).await,
        Command::Reinit(a) => restart::reinit(&mut load()?, a).await,
        Command::Reload(a) => restart::reload(&mut load()?, a).await,
        Command::Pause(a) => pause::pause(&mut load()?, a).await,
        Command::Resume(a) => pause::resume(&mut load()?, a).await,
        Command::EditConfig(a) => config::edit_config(&load()?, a).await,
        Command::ShowConfig(a) => config::show_config(&load()?, a).await,
        Command::HaproxyConfig(a) => haproxy::haproxy_config(&load()?, a).await,
        Command::History(a) => list::history(&load()?, a).await,
        Command::Flush(a) => restart::flush(&mut load()?, a).await,
        Command::Dsn(a) => query::dsn(&load()?, a).await,
        Command::Query(a) => query::query(&load()?, a).await,
        Command::Remove(a) => cluster::remove(&load()?, a).await,
        Command::Version(a) => version::version(&mut load()?, a).await,
        Command::DemoteCluster(a) => cluster::demote_cluster(&mut load()?, a).await,
        Command::PromoteCluster(a) => cluster::promote_cluster(&mut load()?, a).await,
        Command::Scaffold(a) => setup::scaffold(&load()?, a).await,
    }
}

fn completion(a: CompletionArgs) -> anyhow::Result<()> {
    let mut cmd = Args::command();
    clap_complete::generate(a.shell, &mut cmd, "patrolctl", &mut std::io::stdout());
    Ok(())
}

pub(crate) fn check_group(group: Option<i64>) -> anyhow::Result<()> {
    match group {
        None | Some(0) => Ok(()),
        Some(_) => fail("Citus groups are not supported by Patrol"),
    }
}

pub(crate) fn fmt_of(s: &str) -> Format {
    Format::parse(s).unwrap_or(Format::Pretty)
}

pub(crate) fn role_of(s: &str) -> CtlRole {
    CtlRole::parse(s).unwrap_or(CtlRole::Any)
}
