//! Running `patrolctl` against a test cluster.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use patrol_tests::Cluster;

/// A command's stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `patrolctl -c <cluster's patronictl.yml> <args>` with `input` on stdin.
pub fn patrolctl_in(cluster: &Cluster, args: &[&str], input: &str) -> Output {
    let config = cluster.patronictl_config().expect("patronictl config");
    patrolctl_with(&config, args, input)
}

/// Runs `patrolctl -c <config> <args>` with `input` on stdin.
pub fn patrolctl_with(config: &std::path::Path, args: &[&str], input: &str) -> Output {
    let mut child = Command::new(patrol_tests::bin("patrolctl"))
        .arg("-c")
        .arg(config)
        .args(args)
        .env_remove("PATRONICTL_CONFIG_FILE")
        .env_remove("DCS_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn patrolctl");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("patrolctl output")
}

pub fn patrolctl(cluster: &Cluster, args: &[&str]) -> Output {
    patrolctl_in(cluster, args, "")
}

/// Runs patrolctl (blocking, from async code) and insists on exit 0; returns stdout.
pub fn ok(cluster: &Cluster, args: &[&str]) -> String {
    let out = tokio::task::block_in_place(|| patrolctl(cluster, args));
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "patrolctl {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}

/// Runs Patroni's own patronictl (blocking, from async code) and insists on exit 0; returns
/// stdout.
pub fn patronictl_ok(cluster: &Cluster, args: &[&str]) -> String {
    patronictl_ok_with(cluster, args, &[], None)
}

/// [`patronictl_ok`] with environment variables and answers to its prompts.
pub fn patronictl_ok_with(
    cluster: &Cluster,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> String {
    let out = tokio::task::block_in_place(|| cluster.run_patronictl_with(args, env, stdin))
        .unwrap_or_else(|e| panic!("patronictl {args:?}: {e:#}"));
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success(),
        "patronictl {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    stdout
}
