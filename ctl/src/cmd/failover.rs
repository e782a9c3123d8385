//! `switchover` and `failover`: pick the leader, the candidate and the time (asking what was not
//! given), confirm, then ask the leader's REST API; if no member answers, write the failover key
//! in the DCS as patronictl does.

use anyhow::Context;
use chrono::{DateTime, FixedOffset};
use patrol_dcs::{Cluster, Member};
use serde_json::{Map, Value};

use crate::cli::{FailoverArgs, SwitchoverArgs};
use crate::client::{self, Response, RestClient};
use crate::cmd::check_group;
use crate::cmd::select::print_members;
use crate::context::Ctx;
use crate::error::{fail, CtlError};
use crate::list::is_synchronous_mode;
use crate::members::failover_candidates;
use crate::pyfmt::{json_dumps_compact, str_repr};
use crate::term::{out, warn};
use crate::time::{isoformat, next_hour_example, parse_scheduled, timestamp};

pub(crate) async fn switchover(ctx: &mut Ctx, a: SwitchoverArgs) -> anyhow::Result<()> {
    check_group(a.group)?;
    let name = ctx.scope_or(a.cluster_name)?;
    failover_or_switchover(
        ctx,
        "switchover",
        &name,
        a.candidate,
        a.force,
        a.leader,
        a.scheduled,
    )
    .await
}

pub(crate) async fn failover(ctx: &mut Ctx, a: FailoverArgs) -> anyhow::Result<()> {
    check_group(a.group)?;
    let name = ctx.scope_or(a.cluster_name)?;
    failover_or_switchover(ctx, "failover", &name, a.candidate, a.force, None, None).await
}

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
    let leader = if action == "switchover" {
        let l = choose_leader(
            cluster_leader.as_deref(),
            switchover_leader,
            standby,
            force,
            name,
        )?;
        Some(l)
    } else {
        switchover_leader
    };
    let candidate = choose_candidate(&cluster, action, name, candidate, force)?;
    let cand = candidate.clone().filter(|c| !c.is_empty());
    let mut scheduled_at = None;
    if action == "switchover" {
        scheduled_at = choose_schedule(scheduled, force, paused)?;
    }
    let scheduled_at_str = scheduled_at.as_ref().map(isoformat);
    let body = request_body(
        action,
        candidate.as_deref(),
        leader.as_deref(),
        scheduled_at_str.as_deref(),
    );
    if !force {
        confirm(
            action,
            name,
            cluster_leader.as_deref(),
            scheduled_at_str.as_deref(),
        )?;
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
    match send(http, target.as_ref(), action, &body).await {
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

/// The leader a switchover starts from: `--leader`, else the cluster's (asked for unless
/// forced). It must be the cluster's leader.
fn choose_leader(
    cluster_leader: Option<&str>,
    given: Option<String>,
    standby: bool,
    force: bool,
    name: &str,
) -> anyhow::Result<String> {
    let Some(cl) = cluster_leader else {
        return fail("This cluster has no leader");
    };
    let leader = match given {
        Some(l) => l,
        None if force => cl.to_string(),
        None => {
            let label = if standby { "Standby Leader" } else { "Primary" };
            client::prompt(label, Some(cl))?
        }
    };
    if leader != cl {
        return fail(format!(
            "Member {leader} is not the leader of cluster {name}"
        ));
    }
    Ok(leader)
}

/// The candidate as given or answered (an empty answer is `Some("")`: any healthy replica), once
/// checked against the cluster's candidates; a failover to an asynchronous node in synchronous
/// mode is confirmed first.
fn choose_candidate(
    cluster: &Cluster,
    action: &str,
    name: &str,
    candidate: Option<String>,
    force: bool,
) -> anyhow::Result<Option<String>> {
    let cluster_leader = cluster.leader_name();
    let candidates = failover_candidates(cluster);
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
            if Some(c.as_str()) == cluster_leader {
                return fail(format!(
                    "Member {c} is already the leader of cluster {name}"
                ));
            }
            return fail(format!(
                "Member {c} does not exist in cluster {name} or is tagged as nofailover"
            ));
        }
    }
    if !force && action == "failover" && is_synchronous_mode(cluster) {
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
    Ok(candidate)
}

/// When the switchover takes place: `--scheduled`, else asked for (unless forced); `None` is now.
fn choose_schedule(
    scheduled: Option<String>,
    force: bool,
    paused: bool,
) -> anyhow::Result<Option<DateTime<FixedOffset>>> {
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
    let scheduled_at = parse_scheduled(sched.as_deref()).map_err(CtlError)?;
    if scheduled_at.is_some() && paused {
        return fail("Can't schedule switchover in the paused state");
    }
    Ok(scheduled_at)
}

/// The body of `POST /switchover` or `/failover`.
fn request_body(
    action: &str,
    candidate: Option<&str>,
    leader: Option<&str>,
    scheduled_at: Option<&str>,
) -> Value {
    let mut body = Map::new();
    body.insert(
        "candidate".into(),
        candidate.map(Value::from).unwrap_or(Value::Null),
    );
    if action == "switchover" {
        body.insert(
            "leader".into(),
            leader.map(Value::from).unwrap_or(Value::Null),
        );
    }
    if let Some(s) = scheduled_at {
        body.insert("scheduled_at".into(), s.into());
    }
    Value::Object(body)
}

/// The last question before acting.
fn confirm(
    action: &str,
    name: &str,
    cluster_leader: Option<&str>,
    scheduled_at: Option<&str>,
) -> anyhow::Result<()> {
    let demote_msg = cluster_leader
        .map(|l| format!(", demoting current leader {l}"))
        .unwrap_or_default();
    if let Some(at) = scheduled_at {
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
    Ok(())
}

/// Sends the request to `target` (the leader, or without one the candidate); a Patroni that
/// does not serve `POST /switchover` gets `POST /failover`. `Err` is the text of why no answer
/// came: the caller falls back to the DCS.
async fn send(
    http: &RestClient,
    target: Option<&Member>,
    action: &str,
    body: &Value,
) -> Result<Response, String> {
    match target {
        Some(m) if !m.data.api_url.is_empty() => {
            match http
                .request(m, "POST", Some(action), Some(body), None)
                .await
            {
                Ok(r)
                    if r.status == 501
                        && action == "switchover"
                        && r.body.contains("Server does not support this operation") =>
                {
                    http.request(m, "POST", Some("failover"), Some(body), None)
                        .await
                        .map_err(|e| client::error_text(&e))
                }
                other => other.map_err(|e| client::error_text(&e)),
            }
        }
        Some(m) => Err(format!("member {} has no api_url", m.name)),
        None => Err("no member to send the request to".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failover_key_like_patroni() {
        assert_eq!(
            failover_key_json(Some("pg0"), Some("pg1"), None),
            r#"{"leader":"pg0","member":"pg1"}"#
        );
        assert_eq!(failover_key_json(None, Some(""), None), "{}");
    }
}
