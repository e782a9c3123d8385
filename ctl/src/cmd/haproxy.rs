//! `haproxy-config`: an haproxy.cfg for the cluster's members, rendered by `patrol-haproxy`.

use crate::cli::HaproxyConfigArgs;
use crate::context::Ctx;
use crate::error::fail;
use crate::term::out;

pub(crate) async fn haproxy_config(ctx: &Ctx, a: HaproxyConfigArgs) -> anyhow::Result<()> {
    let HaproxyConfigArgs {
        cluster_name,
        write_bind,
        read_bind,
        stats_bind,
        max_lag_bytes,
        admin_socket,
    } = a;
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
