//! Waiting for a healthy cluster: one leader and streaming replicas, as the agents publish them.
//! Shared by the end-to-end tests and the benchmarks.

use std::collections::BTreeMap;
use std::time::Duration;

use patrol_dcs::{MemberData, Role};

use crate::cluster::Cluster;
use crate::wait::wait_until;

/// Deadline for a cluster to bootstrap (or a member to join) and become healthy.
pub const HEALTHY_TIMEOUT: Duration = Duration::from_secs(120);

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
/// every other node of `nodes` publishes a running, streaming replica on the leader's timeline
/// (a replica still on the old one after a failover is not yet a switchover candidate). Returns
/// the leader's index.
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
        let Some(lm) = members
            .get(&leader)
            .filter(|m| m.role == Role::Primary && m.state == "running")
        else {
            return Ok(None);
        };
        let replicas_ok = nodes.iter().filter(|&&i| i != li).all(|&i| {
            members.get(cluster.name(i)).is_some_and(|m| {
                is_streaming_replica(m) && (lm.timeline.is_none() || m.timeline == lm.timeline)
            })
        });
        Ok(replicas_ok.then_some(li))
    })
    .await
}

/// Starts every node of `cluster` and waits until it is healthy; returns the leader's index.
pub async fn start_all(cluster: &mut Cluster) -> anyhow::Result<usize> {
    for i in 0..cluster.len() {
        cluster.start_node(i)?;
    }
    let nodes: Vec<usize> = (0..cluster.len()).collect();
    wait_healthy(cluster, &nodes, HEALTHY_TIMEOUT).await
}
