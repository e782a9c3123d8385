//! `version`: patrolctl's, and each member's as its REST API reports it.

use std::time::Duration;

use serde_json::Value;

use crate::cli::VersionArgs;
use crate::client;
use crate::cmd::check_group;
use crate::context::Ctx;
use crate::error::fail;
use crate::members::{all_members, version_line, CtlRole};
use crate::term::out;

pub(crate) async fn version(ctx: &mut Ctx, a: VersionArgs) -> anyhow::Result<()> {
    let VersionArgs {
        cluster_name,
        member_names,
        group,
    } = a;
    check_group(group)?;
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
