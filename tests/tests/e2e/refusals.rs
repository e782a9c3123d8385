//! End to end: the agent refuses to run when it must not (a live member with its name, a bad
//! configuration, a data directory of another cluster), with a clear message and exit code 1,
//! and without disturbing the running cluster.

use std::net::TcpListener;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use anyhow::Context;
use patrol_tests::{chown_to_agent, wait_until, Cluster, Signal};

use crate::support::{patrol_cli, system_identifier, wait_healthy, HEALTHY_TIMEOUT};

/// What node `i`'s most recent agent run wrote (its log after the last harness header).
fn last_run_log(cluster: &Cluster, i: usize) -> String {
    let log = cluster.agent_log(i);
    match log.rfind("--- harness: starting") {
        Some(at) => log[at..].to_owned(),
        None => log,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_name_refuses_to_start() {
    let mut cluster = Cluster::new(2).expect("cluster");
    cluster.start_node(0).expect("start pg0");
    wait_healthy(&cluster, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("pg0 bootstraps as leader");
    let member_before = cluster.etcd_get("members/pg0").await.expect("get member");
    let sysid = system_identifier(&cluster, 0).await.expect("sysid");

    // Node slot 1 (its own ports and data dir), but named pg0.
    let yaml = cluster.config_yaml(1);
    assert!(yaml.contains("\nname: pg1\n"), "{yaml}");
    let yaml = yaml.replace("\nname: pg1\n", "\nname: pg0\n");
    cluster
        .start_node_with_config(1, &yaml)
        .expect("start the impostor");
    let status = cluster
        .wait_node_exit(1, Duration::from_secs(30))
        .await
        .expect("the second pg0 must exit within 30 s");
    assert!(!status.success(), "exit status {status}");
    assert_eq!(status.code(), Some(1), "exit status {status}");
    let log = last_run_log(&cluster, 1);
    assert!(
        log.lines().any(|l| l.get(24..).is_some_and(|rest| rest
            .starts_with("CRITICAL: Can't start; there is already a node named 'pg0' running"))),
        "log of the second pg0:\n{log}"
    );

    // It touched nothing: no data dir, no REST listener, and pg0 keeps its keys and its lock.
    assert!(
        !cluster.data_dir(1).join("PG_VERSION").exists(),
        "the impostor initialized a data dir"
    );
    TcpListener::bind(("127.0.0.1", cluster.api_port(1)))
        .expect("the impostor's REST port is free after it exited");
    assert!(cluster.is_node_running(0), "pg0's agent must keep running");
    assert_eq!(
        cluster.leader().await.expect("leader").as_deref(),
        Some("pg0")
    );
    let member_after = cluster.etcd_get("members/pg0").await.expect("get member");
    let parse = |v: &Option<String>| {
        patrol_dcs::MemberData::parse(v.as_deref().expect("members/pg0 exists"))
    };
    assert_eq!(
        parse(&member_after).conn_url,
        parse(&member_before).conn_url,
        "members/pg0 was overwritten by the impostor"
    );
    assert_eq!(
        parse(&member_after).api_url,
        format!("http://127.0.0.1:{}/patroni", cluster.api_port(0))
    );
    assert_eq!(
        cluster.etcd_get("initialize").await.expect("initialize"),
        Some(sysid)
    );
    // And pg0 still serves as the primary.
    let (code, body) = cluster.api_get(0, "/primary").await.expect("GET /primary");
    assert_eq!(code, 200, "{body}");
}

/// Runs `patrol <args>` as the agent user with a clean environment; kills it after 30 s.
async fn run_patrol(args: &[&Path], validate: bool, home: &Path) -> Output {
    let flags: &[&str] = if validate {
        &["--validate-config"]
    } else {
        &[]
    };
    run_patrol_with(flags, args, &[], home).await
}

/// [`run_patrol`] with more flags and environment variables.
async fn run_patrol_with(
    flags: &[&str],
    args: &[&Path],
    env: &[(&str, &str)],
    home: &Path,
) -> Output {
    let mut all: Vec<&std::ffi::OsStr> = flags.iter().map(std::ffi::OsStr::new).collect();
    all.extend(args.iter().map(|p| p.as_os_str()));
    let mut env = env.to_vec();
    env.push(("RUST_LOG", "info"));
    patrol_cli(&all, &env, home, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_exits_with_clear_message() {
    // Only for its etcd, ports and dirs: no agent is started through it.
    let cluster = Cluster::new(1).expect("cluster");
    let good = cluster.config_yaml(0);
    let dir = cluster.node_dir(0).to_path_buf();
    let api_line = format!(
        "restapi: {{listen: 127.0.0.1:{api}, connect_address: 127.0.0.1:{api}}}",
        api = cluster.api_port(0)
    );
    assert!(good.contains(&api_line), "{good}");
    assert!(good.contains("ttl: 10,"), "{good}");
    assert!(good.contains("\n  data_dir: "), "{good}");

    let without_data_dir: String = good
        .lines()
        .filter(|l| !l.starts_with("  data_dir: "))
        .map(|l| format!("{l}\n"))
        .collect();
    let bad_listen = good.replace(
        &api_line,
        &format!(
            "restapi: {{listen: nonsense, connect_address: 127.0.0.1:{}}}",
            cluster.api_port(0)
        ),
    );
    let syntax_error = good.replace("tags: {}", "tags: {unclosed: [1, 2\n");
    let bad_ttl = good.replace("ttl: 10,", "ttl: abc,");
    let top_level_list = format!("- {}\n- {}\n", "scope: x", "name: y");
    let bad_log_level = format!("{good}log: {{level: LOUD}}\n");
    let bad_log_format = format!("{good}log: {{format: '%(asctime)s %(hostname)s'}}\n");

    // (file name, content, text the message must contain)
    let cases: [(&str, &str, &str); 7] = [
        (
            "no-data-dir.yml",
            &without_data_dir,
            "invalid configuration: postgresql.data_dir: ",
        ),
        (
            "bad-listen.yml",
            &bad_listen,
            "invalid configuration: restapi.listen: ",
        ),
        ("syntax.yml", &syntax_error, "invalid YAML in "),
        (
            "bad-ttl.yml",
            &bad_ttl,
            "invalid configuration: bootstrap.dcs.ttl: ",
        ),
        ("list.yml", &top_level_list, "invalid YAML in "),
        (
            "bad-log-level.yml",
            &bad_log_level,
            "invalid configuration: log.level: expected one of DEBUG",
        ),
        (
            "bad-log-format.yml",
            &bad_log_format,
            "invalid configuration: log.format: unknown attribute 'hostname'",
        ),
    ];
    for (file, content, want) in cases {
        let path = dir.join(file);
        std::fs::write(&path, content).expect("write config");
        chown_to_agent(&path).expect("chown config");
        for validate in [true, false] {
            let mode = if validate {
                "--validate-config"
            } else {
                "start"
            };
            let out = run_patrol(&[&path], validate, &dir).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{file} ({mode}): {}\nstdout: {stdout}\nstderr: {stderr}",
                out.status
            );
            assert!(
                stderr.starts_with("patrol: "),
                "{file} ({mode}): stderr: {stderr}"
            );
            assert!(
                stderr.contains(want),
                "{file} ({mode}): want {want:?} in stderr: {stderr}"
            );
            assert_eq!(
                stderr.trim_end().lines().count(),
                1,
                "{file} ({mode}): one clear line, got: {stderr}"
            );
            if file == "list.yml" || file == "syntax.yml" {
                assert!(
                    stderr.contains(&path.display().to_string()),
                    "{file} ({mode}): the message must name the file: {stderr}"
                );
            }
            assert!(
                !stdout.contains("configuration is valid"),
                "{file} ({mode}): {stdout}"
            );
            // Nothing was bound, created or registered.
            TcpListener::bind(("127.0.0.1", cluster.api_port(0)))
                .unwrap_or_else(|e| panic!("{file} ({mode}): REST port not free: {e}"));
            TcpListener::bind(("127.0.0.1", cluster.pg_port(0)))
                .unwrap_or_else(|e| panic!("{file} ({mode}): PG port not free: {e}"));
            assert!(
                !cluster.data_dir(0).exists(),
                "{file} ({mode}): a data dir was created"
            );
            assert!(
                cluster
                    .etcd_get_prefix()
                    .await
                    .expect("etcd get")
                    .is_empty(),
                "{file} ({mode}): keys were written to etcd"
            );
        }
    }

    // A missing file is an error for --validate-config too.
    let missing = dir.join("missing.yml");
    let out = run_patrol(&[&missing], true, &dir).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "missing file: {stderr}");
    assert!(
        stderr.contains("missing.yml"),
        "missing file: the message must name it: {stderr}"
    );

    // The good config validates, and validating binds nothing either.
    let path = dir.join("good.yml");
    std::fs::write(&path, &good).expect("write config");
    chown_to_agent(&path).expect("chown config");
    let out = run_patrol(&[&path], true, &dir).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "good config: stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    TcpListener::bind(("127.0.0.1", cluster.api_port(0))).expect("REST port free");
    assert!(cluster
        .etcd_get_prefix()
        .await
        .expect("etcd get")
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_guarantees_refuse_to_start() {
    // Only for its etcd, ports and dirs: no agent is started through it.
    let cluster = Cluster::new(1).expect("cluster");
    let good = cluster.config_yaml(0);
    let dir = cluster.node_dir(0).to_path_buf();
    let citus = format!("{good}citus: {{group: 0, database: citus}}\n");

    // (file name, content, the key and value the message must name)
    let cases = [(
        "citus.yml",
        citus.as_str(),
        "citus = {\"group\":0,\"database\":\"citus\"}: ",
    )];
    for (file, content, want) in cases {
        let path = dir.join(file);
        std::fs::write(&path, content).expect("write config");
        chown_to_agent(&path).expect("chown config");
        for validate in [true, false] {
            let mode = if validate {
                "--validate-config"
            } else {
                "start"
            };
            let out = run_patrol(&[&path], validate, &dir).await;
            let stderr = String::from_utf8_lossy(&out.stderr);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{file} ({mode}): {}\nstdout: {stdout}\nstderr: {stderr}",
                out.status
            );
            assert_eq!(
                stderr.trim_end().lines().count(),
                1,
                "{file} ({mode}): one line for the one refused key: {stderr}"
            );
            assert!(
                stderr.starts_with(&format!("patrol: {want}")),
                "{file} ({mode}): stderr: {stderr}"
            );
            assert!(
                stderr.contains("so it refuses to start (--allow-unsupported or PATROL_ALLOW_UNSUPPORTED=1 starts it anyway"),
                "{file} ({mode}): the message names the override: {stderr}"
            );
            assert!(
                !stdout.contains("configuration is valid"),
                "{file} ({mode}): {stdout}"
            );
            // Nothing was bound, created or registered.
            TcpListener::bind(("127.0.0.1", cluster.api_port(0)))
                .unwrap_or_else(|e| panic!("{file} ({mode}): REST port not free: {e}"));
            TcpListener::bind(("127.0.0.1", cluster.pg_port(0)))
                .unwrap_or_else(|e| panic!("{file} ({mode}): PG port not free: {e}"));
            assert!(
                !cluster.data_dir(0).exists(),
                "{file} ({mode}): a data dir was created"
            );
            assert!(
                cluster
                    .etcd_get_prefix()
                    .await
                    .expect("etcd get")
                    .is_empty(),
                "{file} ({mode}): keys were written to etcd"
            );
        }

        // The override, as a flag or a variable: valid, and the key is still named.
        for (flags, env) in [
            (&["--validate-config", "--allow-unsupported"][..], &[][..]),
            (
                &["--validate-config"][..],
                &[("PATROL_ALLOW_UNSUPPORTED", "1")][..],
            ),
        ] {
            let out = run_patrol_with(flags, &[&path], env, &dir).await;
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{file} {flags:?} {env:?}: stdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                stdout.contains(&format!("warning: {want}")) && stdout.contains("runs without it"),
                "{file} {flags:?} {env:?}: {stdout}"
            );
            assert!(stdout.ends_with("configuration is valid\n"), "{stdout}");
        }
    }
}

/// SIGTERMs node 0's agent and waits until both it and its PostgreSQL are gone.
async fn stop_cleanly(cluster: &mut Cluster) {
    cluster.stop_node(0, Signal::SIGTERM).expect("SIGTERM");
    let status = cluster
        .wait_node_exit(0, Duration::from_secs(60))
        .await
        .expect("agent exits after SIGTERM");
    assert!(status.success(), "clean stop exit status {status}");
    let cl = &*cluster;
    wait_until(
        "PostgreSQL to stop with its agent",
        Duration::from_secs(60),
        || async move { Ok(cl.postmaster_pid(0).is_none().then_some(())) },
    )
    .await
    .expect("postmaster gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_data_directory_refuses_to_start() {
    // Cluster A: bootstrap, then stop cleanly; its data dir is what B will be handed.
    let mut a = Cluster::new(1).expect("cluster A");
    a.start_node(0).expect("start A");
    wait_healthy(&a, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("A bootstraps");
    let sysid_a = system_identifier(&a, 0).await.expect("sysid A");
    stop_cleanly(&mut a).await;

    // Cluster B: its own etcd, bootstraps its own data dir, then stops cleanly.
    let mut b = Cluster::new(1).expect("cluster B");
    b.start_node(0).expect("start B");
    wait_healthy(&b, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("B bootstraps");
    let sysid_b = system_identifier(&b, 0).await.expect("sysid B");
    assert_ne!(sysid_a, sysid_b, "two initdb runs gave the same sysid");
    assert_eq!(
        b.etcd_get("initialize").await.expect("get").as_deref(),
        Some(sysid_b.as_str())
    );
    stop_cleanly(&mut b).await;
    let bref = &b;
    wait_until(
        "B's leader key to go (released on clean stop, or expired)",
        Duration::from_secs(30),
        || async move { Ok(bref.leader().await?.is_none().then_some(())) },
    )
    .await
    .expect("no leader key");

    // Swap in A's data dir (cp -a keeps the agent user's ownership and modes).
    let data_b = b.data_dir(0);
    std::fs::remove_dir_all(&data_b).expect("remove B's data dir");
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg(a.data_dir(0))
        .arg(&data_b)
        .output()
        .context("running cp")
        .expect("cp");
    assert!(
        out.status.success(),
        "cp -a: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    chown_to_agent(&data_b).expect("chown");

    b.start_node(0).expect("restart B on A's data");
    let status = b
        .wait_node_exit(0, Duration::from_secs(60))
        .await
        .expect("the agent must refuse A's data dir and exit");
    assert!(!status.success(), "exit status {status}");
    assert_eq!(status.code(), Some(1), "exit status {status}");
    let log = last_run_log(&b, 0);
    assert!(
        log.contains("belongs to another cluster"),
        "agent log:\n{log}"
    );
    assert!(
        log.contains(&sysid_a) && log.contains(&sysid_b),
        "the message should name both system identifiers ({sysid_a}, {sysid_b}):\n{log}"
    );

    // B's DCS still describes B, and nobody holds its lock on A's data.
    assert_eq!(
        b.etcd_get("initialize").await.expect("get").as_deref(),
        Some(sysid_b.as_str()),
        "initialize was overwritten"
    );
    assert_ne!(
        b.leader().await.expect("leader").as_deref(),
        Some("pg0"),
        "the refusing agent holds the leader key"
    );
}
