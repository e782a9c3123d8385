//! README's first command, end to end: `scripts/demo.sh` brings up etcd, three agents,
//! patrol-router and HAProxy; writes go through the router's write port, reads through its read
//! port, the stats page answers; `scripts/demo.sh stop` then leaves no process of it running.
//! The script runs with its knobs set to free ports, a temp dir and the binaries this build made
//! (`PATROL_BIN_DIR`), so it needs no release build and no fixed port.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use patrol_tests::{bin, free_port, wait_until, workspace_dir};

/// The demo's processes are not children of the test (the script starts them in the
/// background), so a failed test must stop them itself.
struct StopOnDrop<'a> {
    env: &'a [(String, String)],
}

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        let _ = demo(self.env, &["stop"]);
    }
}

fn demo(env: &[(String, String)], args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("bash")
        .arg(workspace_dir().join("scripts").join("demo.sh"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .context("running scripts/demo.sh")?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(
        out.status.success(),
        "scripts/demo.sh {args:?} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

fn pids_in(root: &Path) -> Vec<(String, i32)> {
    let mut files = vec![
        root.join("etcd.pid"),
        root.join("router.pid"),
        root.join("haproxy.pid"),
    ];
    for i in 0..3 {
        files.push(root.join(format!("pg{i}/agent.pid")));
        files.push(root.join(format!("pg{i}/data/postmaster.pid")));
    }
    files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).ok()?;
            let pid = text.lines().next()?.trim().parse().ok()?;
            Some((f.display().to_string(), pid))
        })
        .collect()
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|st| {
            st.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Processes whose command line mentions `root`.
fn processes_under(root: &Path) -> Vec<String> {
    let needle = root.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) && alive(pid) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

async fn connect(port: u16) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .password("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(3))
        .connect(tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

#[tokio::test]
async fn readme_demo_comes_up_serves_and_stops_cleanly() {
    let dir = tempfile::Builder::new()
        .prefix("patrol-demo-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = dir.path().join("demo");
    // The three binaries side by side, as the script expects them.
    let bins = dir.path().join("bin");
    std::fs::create_dir(&bins).expect("bin dir");
    for name in ["patrol", "patrolctl", "patrol-router"] {
        std::fs::copy(bin(name), bins.join(name)).expect("copy binary");
    }
    let ports = |n: usize| {
        (0..n)
            .map(|_| free_port().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let router_ports = ports(3);
    let (write, read, admin) = {
        let p: Vec<u16> = router_ports
            .split(' ')
            .map(|p| p.parse().expect("port"))
            .collect();
        (p[0], p[1], p[2])
    };
    let env: Vec<(String, String)> = [
        ("DEMO_DIR", root.display().to_string()),
        ("PATROL_BIN_DIR", bins.display().to_string()),
        ("DEMO_ETCD_PORT", free_port().to_string()),
        ("DEMO_ETCD_PEER_PORT", free_port().to_string()),
        ("DEMO_PG_PORTS", ports(3)),
        ("DEMO_API_PORTS", ports(3)),
        ("DEMO_ROUTER_PORTS", router_ports.clone()),
        ("DEMO_HAPROXY_PORTS", ports(3)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();

    let guard = StopOnDrop { env: &env };
    let out = demo(&env, &[]).expect("the demo comes up");
    assert!(
        out.contains("bootstrapped (one leader, two streaming replicas)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("port={write} user=postgres")),
        "{out}"
    );

    // A write through the router's write port ...
    let writer = wait_until(
        "a session on the write port",
        Duration::from_secs(30),
        || async { Ok(connect(write).await.ok()) },
    )
    .await
    .expect("write port");
    writer
        .batch_execute("CREATE TABLE demo_check (v int); INSERT INTO demo_check VALUES (42)")
        .await
        .expect("write through the router");
    // ... is read back through its read port, from a replica.
    let (value, in_recovery) = wait_until(
        "the row on the read port",
        Duration::from_secs(30),
        || async {
            let Ok(reader) = connect(read).await else {
                return Ok(None);
            };
            let Ok(row) = reader
                .query_one("SELECT v, pg_is_in_recovery() FROM demo_check", &[])
                .await
            else {
                return Ok(None);
            };
            Ok(Some((row.get::<_, i32>(0), row.get::<_, bool>(1))))
        },
    )
    .await
    .expect("read port");
    assert_eq!(value, 42);
    assert!(in_recovery, "the read port reached the primary");

    let page = reqwest::get(format!("http://127.0.0.1:{admin}/"))
        .await
        .and_then(|r| r.error_for_status())
        .expect("stats page")
        .text()
        .await
        .expect("stats page body");
    for name in ["pg0", "pg1", "pg2"] {
        assert!(page.contains(name), "stats page lacks {name}");
    }

    let pids = pids_in(&root);
    assert_eq!(pids.len(), 9, "pid files: {pids:?}");
    drop(writer);
    std::mem::forget(guard);
    let stopped = demo(&env, &["stop"]).expect("the demo stops");
    assert!(stopped.contains("demo stopped and removed"), "{stopped}");
    let left: Vec<_> = pids.iter().filter(|(_, pid)| alive(*pid)).collect();
    assert!(left.is_empty(), "still running after stop: {left:?}");
    let left = processes_under(&root);
    assert!(left.is_empty(), "still running after stop: {left:?}");
    assert!(!root.exists(), "stop left {}", root.display());
}
