//! `demote-cluster`, `promote-cluster` and `remove`: the whole cluster's role, or its removal
//! from the DCS.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Map, Value};

use crate::cli::{DemoteClusterArgs, PromoteClusterArgs, RemoveArgs};
use crate::client;
use crate::cmd::select::print_members;
use crate::cmd::{check_group, fmt_of};
use crate::context::Ctx;
use crate::error::fail;
use crate::list::output_members;
use crate::pyfmt::str_repr;
use crate::term::out;

pub(crate) async fn demote_cluster(ctx: &mut Ctx, a: DemoteClusterArgs) -> anyhow::Result<()> {
    let DemoteClusterArgs {
        cluster_name,
        force,
        host,
        port,
        restore_command,
        primary_slot_name,
        timeout,
    } = a;
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
    change_cluster_role(ctx, &name, force, Some(data), timeout).await
}

pub(crate) async fn promote_cluster(ctx: &mut Ctx, a: PromoteClusterArgs) -> anyhow::Result<()> {
    let name = ctx.scope_or(a.cluster_name)?;
    change_cluster_role(ctx, &name, a.force, None, a.timeout).await
}

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
                "the leader did not become a running {target_role} within {timeout} s"
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    print_members(&cluster, name);
    Ok(())
}

pub(crate) async fn remove(ctx: &Ctx, a: RemoveArgs) -> anyhow::Result<()> {
    check_group(a.group)?;
    let (name, fmt) = (a.cluster_name.as_str(), fmt_of(&a.fmt));
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
