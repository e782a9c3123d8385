//! `restart`, `reinit`, `reload` and `flush`: actions on chosen members through their REST API.

use std::time::Duration;

use anyhow::Context;
use patrol_dcs::Member;
use serde_json::{json, Map, Value};

use crate::cli::{FlushArgs, ReinitArgs, ReloadArgs, RestartArgs};
use crate::client;
use crate::cmd::select::{confirm_members_action, get_members};
use crate::cmd::{check_group, role_of};
use crate::context::Ctx;
use crate::error::{fail, CtlError};
use crate::members::{
    check_response, loop_wait, members_leader_first, reload_response, restart_response, CtlRole,
};
use crate::pyfmt::py_str;
use crate::term::{out, warn};
use crate::time::{isoformat, next_hour_example, parse_scheduled, timestamp};

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

pub(crate) async fn restart(ctx: &mut Ctx, a: RestartArgs) -> anyhow::Result<()> {
    let RestartArgs {
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
    } = a;
    check_group(group)?;
    let (name, role) = (cluster_name.as_str(), role.as_str());
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

pub(crate) async fn reinit(ctx: &mut Ctx, a: ReinitArgs) -> anyhow::Result<()> {
    let ReinitArgs {
        cluster_name,
        member_names,
        group,
        force,
        from_leader,
        wait,
    } = a;
    check_group(group)?;
    let name = cluster_name.as_str();
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

pub(crate) async fn reload(ctx: &mut Ctx, a: ReloadArgs) -> anyhow::Result<()> {
    let ReloadArgs {
        cluster_name,
        member_names,
        group,
        role,
        force,
    } = a;
    check_group(group)?;
    let (name, role) = (cluster_name.as_str(), role.as_str());
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
    let loop_wait = loop_wait(&cluster);
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

pub(crate) async fn flush(ctx: &mut Ctx, a: FlushArgs) -> anyhow::Result<()> {
    let FlushArgs {
        args,
        group,
        role,
        force,
    } = a;
    check_group(group)?;
    let role = role.as_str();
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
