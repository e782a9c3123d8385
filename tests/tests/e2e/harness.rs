//! Self-test of the harness library: etcd, ports, process cleanup, waiting, the agent user and
//! the cluster scaffolding. Needs no agent binary.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use patrol_tests::{
    as_agent_user, assert_holds_for, ensure_user, free_port, wait_until, Cluster, Etcd,
    EtcdCluster, Proc, Signal, TcpProxy,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// True if `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

#[tokio::test]
async fn etcd_serves_pauses_and_restarts_with_its_data() {
    let mut etcd = Etcd::start().expect("etcd starts");
    assert!(etcd.endpoint().starts_with("http://127.0.0.1:"));
    let mut client = etcd.client().await.expect("client connects");
    client.put("/harness/k", "v1", None).await.expect("put");
    let resp = client.get("/harness/k", None).await.expect("get");
    assert_eq!(resp.kvs()[0].value_str().expect("utf8"), "v1");

    etcd.pause().expect("SIGSTOP");
    let frozen =
        tokio::time::timeout(Duration::from_millis(500), client.get("/harness/k", None)).await;
    assert!(
        frozen.is_err() || frozen.is_ok_and(|r| r.is_err()),
        "paused etcd answered"
    );
    etcd.resume().expect("SIGCONT");
    wait_until(
        "etcd answers after SIGCONT",
        Duration::from_secs(10),
        || {
            let mut c = client.clone();
            async move { Ok(c.get("/harness/k", None).await.ok().map(|_| ())) }
        },
    )
    .await
    .expect("etcd resumes");

    etcd.kill();
    assert!(!etcd.proc().log_path().as_os_str().is_empty());
    etcd.restart().expect("etcd restarts");
    let mut client = etcd.client().await.expect("client reconnects");
    let resp = client
        .get("/harness/k", None)
        .await
        .expect("get after restart");
    assert_eq!(resp.kvs()[0].value_str().expect("utf8"), "v1");
    assert!(
        etcd.log_tail(50).contains("serving client traffic"),
        "{}",
        etcd.log_tail(50)
    );
}

/// Puts `v`, retrying while etcd elects a new leader (a write in flight when its leader dies
/// waits out etcd's request timeout).
async fn put(etcd: &EtcdCluster, v: &str) {
    wait_until(
        &format!("etcd to take {v}"),
        Duration::from_secs(30),
        || async {
            let mut c = etcd.client().await?;
            Ok(c.put("/harness/k", v, None).await.ok().map(|_| ()))
        },
    )
    .await
    .expect("put");
}

async fn get_from(m: &Etcd) -> String {
    let mut c = m.client().await.expect("member client");
    let r = c.get("/harness/k", None).await.expect("get");
    r.kvs()[0].value_str().expect("utf8").to_owned()
}

/// Three members, each on its own ports and data dir: the cluster serves with any one of them
/// stopped (SIGKILL, SIGTERM) or frozen, and a member restarted catches up on what it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_cluster_of_three_serves_with_one_member_down_frozen_or_restarted() {
    let mut etcd = EtcdCluster::start(3).expect("three members start");
    assert_eq!(etcd.len(), 3);
    let mut ports: Vec<u16> = etcd
        .members()
        .iter()
        .flat_map(|m| [m.client_port(), m.peer_port()])
        .collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 6, "every member has its own ports");
    assert_eq!(etcd.member(1).name(), "e1");
    assert_eq!(etcd.endpoints().len(), 3);

    put(&etcd, "v1").await;
    etcd.move_leader(2).await.expect("e2 becomes etcd's leader");
    etcd.move_leader(0).await.expect("e0 becomes etcd's leader");

    etcd.member_mut(0).kill();
    assert!(!etcd.member(0).is_serving());
    put(&etcd, "v2").await;
    etcd.member_mut(0).restart().expect("member 0 restarts");
    let m0 = etcd.member(0);
    wait_until(
        "member 0 to catch up",
        Duration::from_secs(20),
        || async move { Ok((get_from(m0).await == "v2").then_some(())) },
    )
    .await
    .expect("the restarted member has the write it missed");

    etcd.member(1).pause().expect("SIGSTOP member 1");
    assert!(!etcd.member(1).is_serving());
    put(&etcd, "v3").await;
    etcd.member(1).resume().expect("SIGCONT member 1");

    etcd.member_mut(2).terminate().expect("SIGTERM member 2");
    assert!(!etcd.member(2).is_serving());
    put(&etcd, "v4").await;
    etcd.member_mut(2).restart().expect("member 2 restarts");
    let m2 = etcd.member(2);
    wait_until(
        "member 2 to catch up",
        Duration::from_secs(20),
        || async move { Ok((get_from(m2).await == "v4").then_some(())) },
    )
    .await
    .expect("the restarted member has the write it missed");
}

#[test]
fn free_ports_are_unique_and_bindable() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..200 {
        let p = free_port();
        assert!(seen.insert(p), "port {p} handed out twice");
        std::net::TcpListener::bind(("127.0.0.1", p)).expect("handed-out port is bindable");
    }
}

#[test]
fn proc_drop_kills_the_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("sh.log");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "sleep 1000 & echo child=$!; wait"]);
    let mut proc = Proc::spawn("sh", cmd, &log).expect("spawn");
    let pid = proc.pid().as_raw();
    assert!(proc.is_running());
    let child: i32 = {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(c) = proc.log().lines().find_map(|l| l.strip_prefix("child=")) {
                break c.trim().parse().expect("numeric pid");
            }
            assert!(
                Instant::now() < deadline,
                "no child pid in log: {}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert!(alive(child));
    proc.signal(Signal::SIGSTOP).expect("SIGSTOP");
    assert!(proc.is_running(), "stopped counts as running");
    drop(proc);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "leader {pid} survived drop"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(child) {
        assert!(
            Instant::now() < deadline,
            "group member {child} survived drop"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn proc_reports_exit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo hello; exit 3"]);
    let mut proc = Proc::spawn("sh", cmd, dir.path().join("log")).expect("spawn");
    let status = proc.wait_exit(Duration::from_secs(10)).expect("exits");
    assert_eq!(status.code(), Some(3));
    assert!(!proc.is_running());
    assert!(proc.log().contains("hello"));
    assert!(
        proc.signal(Signal::SIGTERM).is_err(),
        "signal after reaping must fail"
    );
}

#[tokio::test]
async fn wait_until_returns_value_or_names_what_timed_out() {
    let mut n = 0;
    let v = wait_until("third try", Duration::from_secs(5), || {
        n += 1;
        let n = n;
        async move { Ok((n >= 3).then_some(n)) }
    })
    .await
    .expect("succeeds");
    assert_eq!(v, 3);

    let err = wait_until::<(), _, _>(
        "the moon to turn blue",
        Duration::from_millis(400),
        || async { anyhow::bail!("still white") },
    )
    .await
    .expect_err("times out");
    let msg = format!("{err:#}");
    assert!(msg.contains("the moon to turn blue"), "{msg}");
    assert!(msg.contains("still white"), "{msg}");

    let started = Instant::now();
    let err = wait_until::<(), _, _>("a hung probe", Duration::from_millis(300), || async {
        std::future::pending::<anyhow::Result<Option<()>>>().await
    })
    .await
    .expect_err("times out");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a hung attempt must not outlive the deadline"
    );
    assert!(format!("{err:#}").contains("a hung probe"));
}

#[tokio::test]
async fn assert_holds_for_checks_the_whole_window_and_fails_at_the_first_break() {
    let mut checks = 0;
    let started = Instant::now();
    assert_holds_for("a constant", Duration::from_millis(500), || {
        checks += 1;
        async { Ok(()) }
    })
    .await
    .expect("a constant holds");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "the whole window is checked"
    );
    assert!(
        checks >= 4,
        "checked at once, while it lasts and at its end: {checks}"
    );

    let mut n = 0;
    let started = Instant::now();
    let err = assert_holds_for("the count to stay small", Duration::from_secs(60), || {
        n += 1;
        let n = n;
        async move {
            anyhow::ensure!(n < 3, "the count is {n}");
            Ok(())
        }
    })
    .await
    .expect_err("the third check breaks it");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("the count to stay small")
            && msg.contains("the count is 3")
            && msg.contains("after 2 good checks"),
        "{msg}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it fails at the first broken check, not at the end of the window"
    );
}

#[tokio::test]
async fn tcp_proxy_forwards_freezes_thaws_and_cuts() {
    // An echo server behind the proxy.
    let server = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let target = server.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = server.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let proxy = TcpProxy::start(target).await.expect("proxy");
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .expect("connect");
    let mut buf = [0u8; 4];
    s.write_all(b"ping").await.expect("write");
    s.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"ping");

    proxy.freeze();
    s.write_all(b"held").await.expect("write while frozen");
    let early = tokio::time::timeout(Duration::from_millis(500), s.read(&mut buf)).await;
    assert!(early.is_err(), "bytes moved while frozen: {early:?}");
    proxy.thaw();
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("the held bytes arrive after the thaw")
        .expect("read");
    assert_eq!(&buf, b"held");

    proxy.cut();
    let end = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the cut closes the connection");
    assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
    let mut again = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port()))
        .await
        .expect("connect after the cut");
    again.write_all(b"pong").await.expect("write");
    again.read_exact(&mut buf).await.expect("echo");
    assert_eq!(&buf, b"pong");
    assert_eq!(proxy.accepted(), 2);
}

#[test]
fn processes_run_as_the_agent_user_when_root() {
    let user = ensure_user().expect("ensure_user");
    if !nix::unistd::geteuid().is_root() {
        assert_eq!(user, None);
        return;
    }
    let user = user.expect("root gets an agent user");
    assert!(!user.uid.is_root());
    let looked_up = nix::unistd::User::from_name(&user.name)
        .expect("lookup")
        .expect("user exists");
    assert_eq!(looked_up.uid, user.uid);

    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new("id");
    cmd.args(["-u"]);
    as_agent_user(&mut cmd).expect("as_agent_user");
    let mut proc = Proc::spawn("id", cmd, dir.path().join("id.log")).expect("spawn");
    let status = proc.wait_exit(Duration::from_secs(10)).expect("id exits");
    assert!(status.success(), "{}", proc.log());
    let out = proc.log();
    let uid = out.lines().last().expect("output").trim();
    assert_eq!(uid, user.uid.to_string(), "log: {out}");
}

#[tokio::test]
async fn cluster_scaffolding_and_cleanup() {
    let cluster = Cluster::new(2).expect("cluster");
    assert_eq!(cluster.len(), 2);
    assert_eq!(cluster.name(1), "pg1");
    assert_ne!(cluster.pg_port(0), cluster.pg_port(1));
    assert_ne!(cluster.api_port(0), cluster.pg_port(0));

    // The generated config is valid YAML with the expected shape.
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&cluster.config_yaml(1)).expect("valid YAML");
    assert_eq!(yaml["scope"].as_str(), Some(cluster.scope()));
    assert_eq!(yaml["namespace"].as_str(), Some("/service/"));
    assert_eq!(yaml["name"].as_str(), Some("pg1"));
    assert_eq!(
        yaml["etcd3"]["hosts"][0].as_str(),
        Some(cluster.etcd().host_port().as_str())
    );
    assert_eq!(
        yaml["postgresql"]["listen"].as_str(),
        Some(format!("127.0.0.1:{}", cluster.pg_port(1)).as_str())
    );
    assert_eq!(
        yaml["postgresql"]["data_dir"].as_str(),
        Some(cluster.data_dir(1).to_str().expect("utf8"))
    );
    assert_eq!(yaml["bootstrap"]["dcs"]["ttl"].as_u64(), Some(10));
    assert_eq!(
        yaml["bootstrap"]["initdb"][1].as_str(),
        Some("data-checksums")
    );

    // Node dirs belong to the agent user.
    if let Some(user) = ensure_user().expect("user") {
        for p in [cluster.root(), cluster.node_dir(0)] {
            let meta = std::fs::metadata(p).expect("stat");
            assert_eq!(meta.uid(), user.uid.as_raw(), "{}", p.display());
        }
    }

    assert!(cluster
        .etcd_get_prefix()
        .await
        .expect("get prefix")
        .is_empty());
    let mut client = cluster.etcd().client().await.expect("client");
    let key = format!("{}leader", cluster.prefix());
    client.put(key.as_str(), "pg0", None).await.expect("put");
    assert_eq!(
        cluster.leader().await.expect("leader").as_deref(),
        Some("pg0")
    );
    assert_eq!(
        cluster.etcd_get_prefix().await.expect("get prefix"),
        vec![(key, "pg0".to_owned())]
    );

    // A stray process in a node dir (think: a postmaster) dies with the cluster.
    let mut stray = Command::new("sleep")
        .arg("1000")
        .current_dir(cluster.node_dir(1))
        .process_group(0)
        .spawn()
        .expect("spawn stray");
    drop(cluster);
    let status = stray.try_wait().expect("try_wait");
    let status = match status {
        Some(s) => s,
        None => {
            std::thread::sleep(Duration::from_millis(200));
            stray
                .try_wait()
                .expect("try_wait")
                .expect("stray killed by Cluster drop")
        }
    };
    assert!(!status.success());
}
