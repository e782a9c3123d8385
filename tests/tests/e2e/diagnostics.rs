//! A failure a user must be able to diagnose from the agent's log: PostgreSQL refuses to start
//! because `unix_socket_directories` is left at its default (`/var/run/postgresql`, which the
//! agent's user cannot write). `pg_ctl` only says "Examine the log output"; the agent's log must
//! carry PostgreSQL's own FATAL line, and the server log must survive the removal of the
//! half-bootstrapped data directory.

use std::time::Duration;

use patrol_tests::{wait_until, Cluster};

#[tokio::test]
async fn a_failed_start_shows_postgresql_s_reason_in_the_agent_log() {
    let mut c = Cluster::new(1).expect("cluster");
    let dir = c.node_dir(0).display().to_string();
    c.set_config_override(0, move |yaml| {
        let before = yaml.clone();
        *yaml = yaml.replacen(&format!("unix_socket_directories: {dir}, "), "", 1);
        assert_ne!(
            *yaml, before,
            "the harness config sets unix_socket_directories"
        );
    });
    c.start_node(0).expect("start the agent");
    let cl = &c;
    let line = wait_until(
        "the FATAL line of the failed start in the agent's log",
        Duration::from_secs(60),
        || async move {
            Ok(cl
                .agent_log(0)
                .lines()
                .find(|l| l.contains("could not create lock file"))
                .map(str::to_owned))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", c.agent_log(0)));
    assert!(line.contains("FATAL"), "{line}");

    // The data directory of the failed bootstrap was removed, its server log kept beside it.
    let kept = wait_until(
        "the server log kept beside the removed data directory",
        Duration::from_secs(30),
        || async move {
            Ok(std::fs::read_dir(cl.node_dir(0))?
                .flatten()
                .map(|e| e.path())
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("data.log-"))
                }))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", c.agent_log(0)));
    let postmaster_log =
        std::fs::read_to_string(kept.join("postmaster.log")).expect("the kept postmaster log");
    assert!(
        postmaster_log.contains("could not create lock file"),
        "{postmaster_log}"
    );
}
