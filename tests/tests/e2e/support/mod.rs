//! Helpers shared by the end-to-end test modules: cluster waits, table checks, the raw HTTP
//! client, slow clients and the fault tests' observers.

pub mod ctl;
pub mod http;
pub mod slow;
pub mod watchdog;
pub mod workload;

use std::time::Duration;

use anyhow::Context;
pub use patrol_tests::{index_of, members, wait_healthy, HEALTHY_TIMEOUT};
use patrol_tests::{wait_until, Cluster};

/// Starts every node of `cluster` and waits until it is healthy; returns the leader's index.
pub async fn start_all(cluster: &mut Cluster) -> usize {
    patrol_tests::start_all(cluster)
        .await
        .expect("cluster becomes healthy")
}

/// The harness's `ttl` (its `bootstrap.dcs`, see `Cluster::config_yaml`).
pub const TTL: Duration = Duration::from_secs(10);

/// Deadline for data or state to propagate once the cluster is healthy.
pub const PROPAGATION_TIMEOUT: Duration = Duration::from_secs(60);

/// `SELECT pg_is_in_recovery()` on node `i`.
/// Runs `patrol <args>` as a command (not an agent): a clean environment plus `env`, in
/// `dir`, as the agent user (for files that user owns) or as this process's user; stdin from
/// /dev/null; killed after 30 s.
pub async fn patrol_cli<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    env: &[(&str, &str)],
    dir: &std::path::Path,
    agent_user: bool,
) -> std::process::Output {
    let mut cmd = std::process::Command::new(patrol_tests::bin("patrol"));
    cmd.args(args)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
        )
        .env("HOME", dir)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(std::process::Stdio::null());
    if agent_user {
        patrol_tests::as_agent_user(&mut cmd).expect("as agent user");
    }
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("patrol must exit within 30 s")
        .expect("run patrol")
}

/// `SHOW <guc>` on node `i`.
pub async fn show(cluster: &Cluster, i: usize, guc: &str) -> anyhow::Result<String> {
    let client = cluster.connect(i).await?;
    let row = client.query_one(&format!("SHOW {guc}"), &[]).await?;
    Ok(row.get(0))
}

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
