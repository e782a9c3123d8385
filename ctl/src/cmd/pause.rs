//! `pause` and `resume`: maintenance mode, through the leader's `PATCH /config`, optionally
//! waiting until every member reports it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use patrol_dcs::{Cluster, EtcdDcs};
use serde_json::{json, Value};

use crate::cli::{PauseArgs, ResumeArgs};
use crate::client;
use crate::cmd::check_group;
use crate::context::Ctx;
use crate::error::fail;
use crate::members::{loop_wait, members_leader_first};
use crate::term::{out, warn};

pub(crate) async fn pause(ctx: &mut Ctx, a: PauseArgs) -> anyhow::Result<()> {
    check_group(a.group)?;
    let name = ctx.scope_or(a.cluster_name)?;
    toggle_pause(ctx, &name, true, a.wait).await
}

pub(crate) async fn resume(ctx: &mut Ctx, a: ResumeArgs) -> anyhow::Result<()> {
    check_group(a.group)?;
    let name = ctx.scope_or(a.cluster_name)?;
    toggle_pause(ctx, &name, false, a.wait).await
}

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
    let loop_wait = loop_wait(old);
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
