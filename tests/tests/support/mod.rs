//! Helpers shared by the end-to-end test files (each `tests/*.rs` is its own crate and
//! includes this module with `mod support;`).

#![allow(dead_code)]

pub mod workload;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use patrol_dcs::{MemberData, Role};
use patrol_tests::{wait_until, Cluster};

/// Deadline for a cluster to bootstrap (or a member to join) and become healthy.
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(120);

/// Deadline for data or state to propagate once the cluster is healthy.
pub const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(60);

/// The index of the node named `name`, if any.
pub fn index_of(cluster: &Cluster, name: &str) -> Option<usize> {
    (0..cluster.len()).find(|&i| cluster.name(i) == name)
}

/// Every `members/<name>` key, parsed, by member name.
pub async fn members(cluster: &Cluster) -> anyhow::Result<BTreeMap<String, MemberData>> {
    let prefix = format!("{}members/", cluster.prefix());
    Ok(cluster
        .etcd_get_prefix()
        .await?
        .into_iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&prefix)
                .map(|name| (name.to_owned(), MemberData::parse(&v)))
        })
        .collect())
}

/// Whether the published member is a running, streaming replica.
pub fn is_streaming_replica(m: &MemberData) -> bool {
    m.role == Role::Replica
        && m.state == "running"
        && m.replication_state.as_deref() == Some("streaming")
}

/// Waits until the leader key names one of `nodes`, whose member key says primary/running, and
/// every other node of `nodes` publishes a running, streaming replica. Returns the leader's
/// index.
pub async fn wait_healthy(
    cluster: &Cluster,
    nodes: &[usize],
    timeout: Duration,
) -> anyhow::Result<usize> {
    let what = format!(
        "one leader and streaming replicas among {:?}",
        nodes.iter().map(|&i| cluster.name(i)).collect::<Vec<_>>()
    );
    wait_until(&what, timeout, || async move {
        let Some(leader) = cluster.leader().await? else {
            return Ok(None);
        };
        let Some(li) = index_of(cluster, &leader).filter(|i| nodes.contains(i)) else {
            return Ok(None);
        };
        let members = members(cluster).await?;
        let leader_ok = members
            .get(&leader)
            .is_some_and(|m| m.role == Role::Primary && m.state == "running");
        let replicas_ok = nodes.iter().filter(|&&i| i != li).all(|&i| {
            members
                .get(cluster.name(i))
                .is_some_and(is_streaming_replica)
        });
        Ok((leader_ok && replicas_ok).then_some(li))
    })
    .await
}

/// `SELECT pg_is_in_recovery()` on node `i`.
pub async fn in_recovery(cluster: &Cluster, i: usize) -> anyhow::Result<bool> {
    let client = cluster.connect(i).await?;
    let row = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await
        .with_context(|| format!("pg_is_in_recovery() on {}", cluster.name(i)))?;
    Ok(row.get(0))
}

/// The database system identifier of node `i` (from `pg_control_system()`), as a decimal string.
pub async fn system_identifier(cluster: &Cluster, i: usize) -> anyhow::Result<String> {
    let client = cluster.connect(i).await?;
    let row = client
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .with_context(|| format!("pg_control_system() on {}", cluster.name(i)))?;
    let id: i64 = row.get(0);
    // The identifier is an unsigned 64-bit number that PostgreSQL shows as a signed bigint.
    Ok((id as u64).to_string())
}

/// Values of the text column `v` of table `t` on node `i`, sorted; `None` while the table
/// does not exist there yet.
pub async fn table_values(cluster: &Cluster, i: usize) -> anyhow::Result<Option<Vec<String>>> {
    let client = cluster.connect(i).await?;
    let exists: bool = client
        .query_one("SELECT to_regclass('public.t') IS NOT NULL", &[])
        .await?
        .get(0);
    if !exists {
        return Ok(None);
    }
    let rows = client.query("SELECT v FROM t ORDER BY v", &[]).await?;
    Ok(Some(rows.iter().map(|r| r.get::<_, String>(0)).collect()))
}

/// Waits until node `i` returns exactly `want` (sorted) from table `t`.
pub async fn wait_table_values(
    cluster: &Cluster,
    i: usize,
    want: &[&str],
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    let want = &want;
    wait_until(
        &format!("{} to return rows {want:?}", cluster.name(i)),
        timeout,
        || async move {
            match table_values(cluster, i).await? {
                Some(got) if &got == want => Ok(Some(())),
                Some(got) => anyhow::bail!("{} has rows {got:?}", cluster.name(i)),
                None => anyhow::bail!("{} has no table t yet", cluster.name(i)),
            }
        },
    )
    .await
}
