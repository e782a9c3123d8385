//! Row PP-1: `postgresql.pre_promote` runs right before a promotion, while PostgreSQL is still
//! a standby; a script that fails cancels the promotion (the standby gives the key up and stays
//! a standby) and the cluster still gets a leader.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use patrol_tests::{chown_to_agent, index_of, wait_until, Cluster, Signal};

use crate::support::{in_recovery, start_all, wait_healthy, PROPAGATION_TIMEOUT};

/// Long enough for the lease (`ttl` 10 s) to expire, one failed attempt and the next race.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(120);

/// Node `i`'s pre_promote script: records `<name> <pg_is_in_recovery()> <argument count>
/// <ok|fail>` in `<root>/pre_promote.log`, and fails once for the whole cluster (the first
/// call that removes `<root>/fail-once`).
fn install_script(c: &mut Cluster, i: usize) -> anyhow::Result<()> {
    let yaml = c.config_yaml(i);
    let bin_dir = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("bin_dir: "))
        .expect("the harness sets bin_dir")
        .to_string();
    let root = c.root().display().to_string();
    let dir = c.node_dir(i).display().to_string();
    let script = c.node_dir(i).join("pre_promote.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             r=$({bin_dir}/psql -h {dir} -p {port} -U postgres -d postgres -XAtc 'SELECT pg_is_in_recovery()')\n\
             if rm {root}/fail-once 2>/dev/null; then\n\
             \techo \"{name} $r $# fail\" >> {root}/pre_promote.log\n\
             \texit 1\n\
             fi\n\
             echo \"{name} $r $# ok\" >> {root}/pre_promote.log\n",
            port = c.pg_port(i),
            name = c.name(i),
        ),
    )?;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    chown_to_agent(&script)?;
    let cmd = script.display().to_string();
    c.set_config_override(i, move |y| {
        *y = y.replace(
            "\n  bin_dir:",
            &format!("\n  pre_promote: {cmd}\n  bin_dir:"),
        )
    });
    Ok(())
}

fn calls(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join("pre_promote.log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// The leader's host is lost; the first standby to take the key runs pre_promote, which fails:
/// it gives the key up without promoting. A standby then promotes after its pre_promote
/// succeeded, and the script saw PostgreSQL still in recovery each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pre_promote_cancels_the_promotion_and_another_attempt_leads() -> anyhow::Result<()>
{
    let mut c = Cluster::new(3).expect("cluster");
    for i in 0..3 {
        install_script(&mut c, i).expect("pre_promote script");
    }
    let old = start_all(&mut c).await;
    // Bootstrapping is no promotion: the script has not run.
    assert_eq!(calls(c.root()), Vec::<String>::new());
    let fail_once = c.root().join("fail-once");
    std::fs::write(&fail_once, "")?;
    chown_to_agent(&fail_once).expect("chown fail-once");

    // Host loss: the agent and its PostgreSQL die; the key expires after ttl.
    c.kill_node(old);
    c.signal_postgres(old, Signal::SIGKILL)
        .expect("SIGKILL postmaster");

    let cl = &c;
    let new = wait_until(
        "a new leader, promoted after its pre_promote succeeded",
        FAILOVER_TIMEOUT,
        || async move {
            let Some(name) = cl.leader().await? else {
                return Ok(None);
            };
            let Some(i) = index_of(cl, &name).filter(|&i| i != old) else {
                return Ok(None);
            };
            Ok((!in_recovery(cl, i).await?).then_some(i))
        },
    )
    .await
    .expect("a new leader");
    let new_name = c.name(new).to_string();

    let lines = calls(c.root());
    eprintln!("pre_promote calls (name, in recovery, arguments, result): {lines:?}");
    assert!(!fail_once.exists(), "pre_promote never failed: {lines:?}");
    assert!(lines.len() >= 2, "{lines:?}");
    // The first attempt failed while PostgreSQL was a standby; the script got no arguments.
    let first: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(first[1..], ["t", "0", "fail"], "{lines:?}");
    let failed = index_of(&c, first[0]).expect("a member name");
    assert_ne!(failed, old);
    // The promotion that happened ran the script first, and it succeeded while in recovery.
    assert_eq!(
        lines.last().map(String::as_str),
        Some(format!("{new_name} t 0 ok").as_str()),
        "{lines:?}"
    );
    let log = c.agent_log(failed);
    assert!(
        log.contains("Promotion cancelled because the pre-promote script failed"),
        "{log}"
    );
    assert!(log.contains("exited with exit status: 1"), "{log}");
    if failed != new {
        // It gave the key up without promoting and follows the new leader.
        assert!(!log.contains("Promote finished"), "{log}");
        wait_healthy(&c, &[new, failed], PROPAGATION_TIMEOUT)
            .await
            .expect("the standby whose script failed streams from the new leader");
        assert!(in_recovery(&c, failed).await.expect("status"));
    }
    Ok(())
}
