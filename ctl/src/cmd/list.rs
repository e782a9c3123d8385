//! `list`, `topology` and `history`: the cluster as the DCS holds it.

use std::time::Instant;

use crate::cli::{HistoryArgs, ListArgs, TopologyArgs};
use crate::cmd::{check_group, fmt_of};
use crate::config_edit::history_output;
use crate::context::Ctx;
use crate::list::output_members;
use crate::table::Format;
use crate::term::{clear_screen, out, warn, watch_interval};
use crate::time::timestamp;

pub(crate) async fn list(ctx: &Ctx, a: ListArgs) -> anyhow::Result<()> {
    check_group(a.group)?;
    list_clusters(
        ctx,
        a.cluster_names,
        a.extended,
        a.ts,
        fmt_of(&a.fmt),
        a.w,
        a.watch,
    )
    .await
}

pub(crate) async fn topology(ctx: &Ctx, a: TopologyArgs) -> anyhow::Result<()> {
    check_group(a.group)?;
    list_clusters(
        ctx,
        a.cluster_names,
        false,
        false,
        Format::Topology,
        a.w,
        a.watch,
    )
    .await
}

pub(crate) async fn history(ctx: &Ctx, a: HistoryArgs) -> anyhow::Result<()> {
    check_group(a.group)?;
    let name = ctx.scope_or(a.cluster_name)?;
    let dcs = ctx.dcs(&name).await?;
    let c = ctx.cluster(&dcs).await?;
    out(&history_output(&c, fmt_of(&a.fmt)));
    Ok(())
}

async fn list_clusters(
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
