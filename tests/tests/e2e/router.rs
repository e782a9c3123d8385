//! End to end: `patrol-router` in front of a real 3-node cluster (real etcd, agents,
//! PostgreSQL 15). The write port follows the confirmed leader and cuts sessions of the old one,
//! holds new connections while there is none and then answers with a PostgreSQL error; the read
//! port balances over streaming replicas within the lag limit (with hysteresis); garbage closes
//! only its own connection; an etcd blip drops nothing; the admin page shows it all. Nothing
//! waits forever: a hung backend's clients get an error and their slots back, slow admin
//! clients are cut and capped, and a cancel request reaches only its session's backend.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use patrol_tests::{wait_until, Cluster, Router, Signal};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{start_all, PROPAGATION_TIMEOUT};

/// The harness's `ttl`.
const TTL: Duration = Duration::from_secs(10);

fn others(cluster: &Cluster, but: usize) -> Vec<usize> {
    (0..cluster.len()).filter(|&i| i != but).collect()
}

/// The node whose PostgreSQL listens on `port`.
fn node_of_port(cluster: &Cluster, port: i32) -> Option<usize> {
    (0..cluster.len()).find(|&i| i32::from(cluster.pg_port(i)) == port)
}

/// `inet_server_port()` and `pg_is_in_recovery()` of a session.
async fn server_of(client: &tokio_postgres::Client) -> anyhow::Result<(i32, bool)> {
    let row = client
        .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
        .await
        .context("SELECT inet_server_port(), pg_is_in_recovery()")?;
    Ok((row.get(0), row.get(1)))
}

/// The `write_backend` name of a stats.json document.
fn write_backend(stats: &Value) -> Option<&str> {
    stats["write_backend"]["name"].as_str()
}

/// The `read_backends` of a stats.json document, sorted.
fn read_backends(stats: &Value) -> Vec<String> {
    let mut v: Vec<String> = stats["read_backends"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|x| x.as_str().map(String::from))
        .collect();
    v.sort();
    v
}

/// The texts of stats.json's events (newest first) recorded at or after `since`.
fn events_since(stats: &Value, since: SystemTime) -> Vec<String> {
    let since = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    stats["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["at"].as_f64().is_some_and(|at| at >= since - 0.001))
        .filter_map(|e| e["text"].as_str().map(String::from))
        .collect()
}

fn all_events(stats: &Value) -> Vec<String> {
    events_since(stats, SystemTime::UNIX_EPOCH)
}

/// Waits until the router writes to `leader` and reads from exactly the other nodes.
async fn wait_routing(router: &Router, cluster: &Cluster, leader: usize) -> Value {
    let want_writer = cluster.name(leader).to_owned();
    let mut want_readers: Vec<String> = others(cluster, leader)
        .into_iter()
        .map(|i| cluster.name(i).to_owned())
        .collect();
    want_readers.sort();
    let (ww, wr) = (&want_writer, &want_readers);
    wait_until(
        &format!("the router to write to {ww} and read from {wr:?}"),
        PROPAGATION_TIMEOUT,
        || async move {
            let s = router.stats().await?;
            if write_backend(&s) == Some(ww.as_str()) && &read_backends(&s) == wr {
                Ok(Some(s))
            } else {
                anyhow::bail!(
                    "write_backend {} ({}), read_backends {:?}",
                    s["write_backend"],
                    s["write_reason"],
                    read_backends(&s)
                )
            }
        },
    )
    .await
    .expect("router routing table")
}

/// The value of the sample `name{labels}` in Prometheus text (0 when absent).
fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == name_and_labels).then(|| v.parse::<f64>().ok())?
        })
        .unwrap_or(0.0)
}

/// Waits until a fresh write-port session lands on a primary other than the nodes in `not`
/// and can write; returns that node.
async fn wait_write_lands_elsewhere(
    router: &Router,
    cluster: &Cluster,
    not: &[usize],
    timeout: Duration,
) -> anyhow::Result<usize> {
    let what = format!(
        "a write-port session on a writable primary other than {:?}",
        not.iter().map(|&i| cluster.name(i)).collect::<Vec<_>>()
    );
    wait_until(&what, timeout, || async move {
        let client = router.connect_write().await?;
        let (port, in_recovery) = server_of(&client).await?;
        let node = node_of_port(cluster, port).context("unknown server port")?;
        if not.contains(&node) {
            anyhow::bail!("landed on {}", cluster.name(node));
        }
        if in_recovery {
            anyhow::bail!("landed on {} which is in recovery", cluster.name(node));
        }
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS router_t (v text); \
                 INSERT INTO router_t VALUES (now()::text)",
            )
            .await
            .context("writing through the write port")?;
        Ok(Some(node))
    })
    .await
}

/// Polls `SELECT 1` on `client` until it fails; returns the error text.
async fn wait_session_error(
    client: &tokio_postgres::Client,
    what: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    wait_until(what, timeout, || async move {
        match client.simple_query("SELECT 1").await {
            Ok(_) => Ok(None),
            Err(e) => Ok(Some(format!("{e}"))),
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_port_goes_to_the_leader_read_port_to_replicas() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let r = Router::start(&c, "").expect("router");
    let stats = wait_routing(&r, &c, leader).await;
    assert_eq!(stats["leader"], c.name(leader), "{stats:#}");
    assert_eq!(stats["cluster"], c.scope(), "{stats:#}");
    assert_eq!(stats["dcs"]["healthy"], true, "{stats:#}");

    let w = r.connect_write().await.expect("write session");
    let (port, in_recovery) = server_of(&w).await.expect("write session query");
    assert_eq!(
        port,
        i32::from(c.pg_port(leader)),
        "the write port must reach the leader {}",
        c.name(leader)
    );
    assert!(!in_recovery, "the write port must reach a primary");

    // Ten sessions held open at once: least-connections spreads them over both replicas.
    let mut sessions = Vec::new();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for k in 0..10 {
        let s = r.connect_read().await.expect("read session");
        let (port, in_recovery) = server_of(&s).await.expect("read session query");
        let node = node_of_port(&c, port).expect("known port");
        assert_ne!(node, leader, "read session {k} landed on the leader");
        assert!(
            in_recovery,
            "read session {k} on {} is not in recovery",
            c.name(node)
        );
        *per_node.entry(c.name(node).to_owned()).or_default() += 1;
        sessions.push(s);
    }
    eprintln!("read sessions per replica: {per_node:?}");
    assert_eq!(
        per_node.len(),
        2,
        "both replicas get sessions: {per_node:?}"
    );
    assert!(
        per_node.values().all(|&n| (4..=6).contains(&n)),
        "least-connections balance: {per_node:?}"
    );

    ssl_request_reaches_the_backend(r.write_port()).await;

    // The stats count them too.
    let stats = wait_until(
        "stats.json to count 11 sessions",
        Duration::from_secs(5),
        || async {
            let s = r.stats().await?;
            Ok((s["sessions"] == 11).then_some(s))
        },
    )
    .await
    .expect("11 sessions");
    for m in stats["members"].as_array().expect("members") {
        let name = m["name"].as_str().expect("name");
        let is_leader = name == c.name(leader);
        assert_eq!(m["write_pool"], is_leader, "{m}");
        assert_eq!(m["read_pool"], !is_leader, "{m}");
        if !is_leader {
            assert_eq!(m["sessions"]["read"], per_node[name], "{m}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_moves_writes_and_cuts_old_sessions() {
    let mut c = Cluster::new(3).expect("cluster");
    let old = start_all(&mut c).await;
    let r = Router::start(&c, "").expect("router");
    wait_routing(&r, &c, old).await;

    // 1. SIGTERM of the leader's agent: a clean handover.
    let s = r.connect_write().await.expect("write session");
    let (port, _) = server_of(&s).await.expect("query");
    assert_eq!(port, i32::from(c.pg_port(old)));
    let t_term = Instant::now();
    let since = SystemTime::now();
    c.stop_node(old, Signal::SIGTERM).expect("SIGTERM agent");
    let err = wait_session_error(&s, "the old write session to fail", PROPAGATION_TIMEOUT)
        .await
        .expect("the session to the old leader ends");
    eprintln!(
        "old write session failed {:.1?} after SIGTERM: {err}",
        t_term.elapsed()
    );
    let new = wait_write_lands_elsewhere(&r, &c, &[old], Duration::from_secs(15))
        .await
        .expect("writes move to the new leader within 15 s of SIGTERM");
    eprintln!(
        "write port reached the new leader {} {:.1?} after SIGTERM",
        c.name(new),
        t_term.elapsed()
    );
    assert_eq!(
        c.leader().await.expect("leader key").as_deref(),
        Some(c.name(new)),
        "the router's writer holds the leader key"
    );
    let stats = r.stats().await.expect("stats");
    let events = events_since(&stats, since);
    let switch = format!("write port -> {}", c.name(new));
    assert!(
        events.iter().any(|e| e.starts_with(&switch)),
        "events must show {switch:?}: {events:#?}"
    );
    assert_eq!(write_backend(&stats), Some(c.name(new)), "{stats:#}");
    let killed = metric(
        &r.metrics().await.expect("metrics"),
        "patrol_router_sessions_killed_total{port=\"write\"}",
    );
    eprintln!("write sessions killed by the router so far: {killed}");
    assert!(
        r.log().contains(&switch),
        "the router's log must show the switch"
    );

    // 2. Host loss of the new leader: its agent dies first, and while its PostgreSQL still
    // runs (and would keep the session open), the router drops it from the write port (its
    // agent no longer confirms it is primary) and cuts the session itself. Then the postmaster
    // dies too; writes follow to the last node after about ttl.
    let s2 = r.connect_write().await.expect("write session 2");
    let (port, _) = server_of(&s2).await.expect("query");
    assert_eq!(port, i32::from(c.pg_port(new)));
    let killed_before = metric(
        &r.metrics().await.expect("metrics"),
        "patrol_router_sessions_killed_total{port=\"write\"}",
    );
    let t_kill = Instant::now();
    let since = SystemTime::now();
    c.kill_node(new);
    wait_until(
        "the router to drop the lost leader from the write port",
        Duration::from_secs(5),
        || async {
            let s = r.stats().await?;
            Ok(s["write_backend"].is_null().then_some(()))
        },
    )
    .await
    .expect("write_backend becomes null");
    let err = wait_session_error(&s2, "the write session to fail", Duration::from_secs(5))
        .await
        .expect("the router closes the session to the lost leader");
    eprintln!(
        "write session cut {:.1?} after the agent's death: {err}",
        t_kill.elapsed()
    );
    assert!(
        c.postmaster_pid(new).is_some(),
        "the session was cut by the router, not by PostgreSQL going away"
    );
    let killed = metric(
        &r.metrics().await.expect("metrics"),
        "patrol_router_sessions_killed_total{port=\"write\"}",
    );
    assert!(
        killed > killed_before,
        "sessions_killed_total counts the cut ({killed_before} -> {killed})"
    );
    c.signal_postgres(new, Signal::SIGKILL)
        .expect("SIGKILL postmaster");
    let next = wait_write_lands_elsewhere(&r, &c, &[old, new], TTL + Duration::from_secs(30))
        .await
        .expect("writes follow to the next leader after about ttl");
    eprintln!(
        "write port reached {} {:.1?} after the host loss",
        c.name(next),
        t_kill.elapsed()
    );
    let stats = r.stats().await.expect("stats");
    let events = events_since(&stats, since);
    let switch = format!("write port -> {}", c.name(next));
    assert!(
        events.iter().any(|e| e.starts_with(&switch)),
        "events must show {switch:?}: {events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("write port has no backend")),
        "events must show the write port without backend: {events:#?}"
    );
}

/// CPU seconds (user + system) a process has used, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; after the command, index 11 and 12.
    let ticks: f64 =
        fields[11].parse::<f64>().expect("utime") + fields[12].parse::<f64>().expect("stime");
    ticks / 100.0
}

/// `busy_poll_us`: sessions relay as usual, and once they are idle the data threads stop
/// spinning (the router does not keep a core busy while nothing flows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_polling_relays_and_stops_spinning_when_idle() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let r = Router::start(&c, "busy_poll_us: 200\n").expect("router");
    wait_routing(&r, &c, leader).await;
    let w = r.connect_write().await.expect("write session");
    w.batch_execute("CREATE TABLE spin (v int)")
        .await
        .expect("create");
    for v in 0..200 {
        w.execute("INSERT INTO spin VALUES ($1)", &[&v])
            .await
            .expect("insert");
    }
    let n: i64 = w
        .query_one("SELECT count(*) FROM spin", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 200);
    let rd = r.connect_read().await.expect("read session");
    let (_, in_recovery) = server_of(&rd).await.expect("query");
    assert!(in_recovery);
    // Idle now (sessions open, nothing flowing): measure the router's CPU over 2 s.
    let pid = r.proc().pid().as_raw();
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 0.5,
        "an idle router must not spin: {used:.2} CPU seconds in 2 s"
    );
    drop((w, rd));
}

/// Members that advertise a host name (`postgresql.connect_address: localhost:<port>`, as
/// DNS-based deployments do) are routed: the router resolves the name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_with_host_names_are_routed() {
    let mut c = Cluster::new(3).expect("cluster");
    for i in 0..c.len() {
        c.set_config_override(i, |y| {
            *y = y.replace(
                "  connect_address: 127.0.0.1:",
                "  connect_address: localhost:",
            )
        });
    }
    let leader = start_all(&mut c).await;
    let member = c
        .etcd_get(&format!("members/{}", c.name(leader)))
        .await
        .expect("etcd")
        .expect("member key");
    assert!(member.contains("postgres://localhost:"), "{member}");
    let r = Router::start(&c, "").expect("router");
    wait_routing(&r, &c, leader).await;
    let w = r.connect_write().await.expect("write session");
    let (port, in_recovery) = server_of(&w).await.expect("query");
    assert_eq!(node_of_port(&c, port), Some(leader));
    assert!(!in_recovery);
    let rd = r.connect_read().await.expect("read session");
    let (port, in_recovery) = server_of(&rd).await.expect("query");
    assert_ne!(node_of_port(&c, port), Some(leader));
    assert!(in_recovery);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_connection_succeeds_when_a_leader_appears() {
    let mut c = Cluster::new(3).expect("cluster");
    let old = start_all(&mut c).await;
    let r = Router::start(&c, "write: {hold_ms: 30000}\n").expect("router");
    wait_routing(&r, &c, old).await;

    let t_kill = Instant::now();
    c.stop_node(old, Signal::SIGKILL).expect("SIGKILL agent");
    c.signal_postgres(old, Signal::SIGKILL)
        .expect("SIGKILL postmaster");
    let stats = wait_until(
        "the router to drop the lost leader from the write port",
        Duration::from_secs(10),
        || async {
            let s = r.stats().await?;
            Ok(s["write_backend"].is_null().then_some(s))
        },
    )
    .await
    .expect("write_backend becomes null");
    eprintln!(
        "write port without backend {:.1?} after the host loss: {}",
        t_kill.elapsed(),
        stats["write_reason"]
    );

    let cfg = r.pg_config(r.write_port());
    let t_connect = Instant::now();
    let held = tokio::spawn(async move {
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
        let elapsed = t_connect.elapsed();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let (port, in_recovery) = server_of(&client).await?;
        client
            .batch_execute("CREATE TABLE held (v int); INSERT INTO held VALUES (1)")
            .await
            .context("writing through the held session")?;
        anyhow::Ok((port, in_recovery, elapsed))
    });
    let (port, in_recovery, elapsed) = tokio::time::timeout(Duration::from_secs(60), held)
        .await
        .expect("the held connection completes within 60 s")
        .expect("task")
        .expect("the held connection succeeds");
    let node = node_of_port(&c, port).expect("known port");
    eprintln!(
        "held connection reached {} after {elapsed:.1?} ({:.1?} after the host loss)",
        c.name(node),
        t_kill.elapsed()
    );
    assert_ne!(
        node, old,
        "the held connection must not reach the lost leader"
    );
    assert!(!in_recovery, "the held connection must reach a primary");
    assert_eq!(
        c.leader().await.expect("leader key").as_deref(),
        Some(c.name(node)),
        "the held connection reached the leader key holder"
    );
    assert!(
        elapsed >= Duration::from_secs(1),
        "the connection was held until a leader appeared, not answered at once ({elapsed:?})"
    );
}

/// An SSLRequest goes to the backend (TLS would run end to end): the test servers have no TLS,
/// so the answer is their `N`, and the startup that follows reaches PostgreSQL, which asks for
/// the password.
async fn ssl_request_reaches_the_backend(port: u16) {
    let mut raw = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let mut req = 8u32.to_be_bytes().to_vec();
    req.extend_from_slice(&80_877_103u32.to_be_bytes());
    raw.write_all(&req).await.expect("SSLRequest");
    let answer = tokio::time::timeout(Duration::from_secs(10), raw.read_u8())
        .await
        .expect("an answer to the SSLRequest")
        .expect("answer");
    assert_eq!(answer, b'N');
    raw.write_all(&startup_message()).await.expect("startup");
    let (ty, _) = read_message(&mut raw).await.expect("a message");
    assert_eq!(ty, b'R', "PostgreSQL's authentication request");
}

/// A v3 startup message for user/database `postgres`.
fn startup_message() -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes());
    for s in ["user", "postgres", "database", "postgres"] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// Reads one backend message (type byte and body) with a deadline.
async fn read_message(s: &mut TcpStream) -> anyhow::Result<(u8, Vec<u8>)> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let ty = s.read_u8().await.context("message type")?;
        let len = s.read_u32().await.context("message length")? as usize;
        anyhow::ensure!((4..1 << 20).contains(&len), "bad message length {len}");
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.context("message body")?;
        Ok((ty, body))
    })
    .await
    .context("no message within 10 s")?
}

/// The fields of an ErrorResponse body, by field type.
fn error_fields(body: &[u8]) -> BTreeMap<char, String> {
    body.split(|&b| b == 0)
        .filter(|f| !f.is_empty())
        .map(|f| (f[0] as char, String::from_utf8_lossy(&f[1..]).into_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_leader_past_hold_time_gets_an_error_response() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let r = Router::start(&c, "write: {hold_ms: 500}\n").expect("router");
    wait_routing(&r, &c, leader).await;

    // Replicas first, so none of them takes the key the leader releases.
    for i in others(&c, leader).into_iter().chain([leader]) {
        c.stop_node(i, Signal::SIGTERM).expect("SIGTERM agent");
        c.wait_node_exit(i, Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("agent {} exits after SIGTERM", c.name(i)));
    }
    wait_until(
        "the router to have no write backend",
        PROPAGATION_TIMEOUT,
        || async {
            let s = r.stats().await?;
            Ok(s["write_backend"].is_null().then_some(()))
        },
    )
    .await
    .expect("no write backend");

    // tokio_postgres gets a real ErrorResponse, not a reset.
    let t = Instant::now();
    let err = match r.try_connect(r.write_port()).await {
        Ok(_) => panic!("a write-port connection without a leader must fail"),
        Err(e) => e,
    };
    let elapsed = t.elapsed();
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a PostgreSQL error, got {err:?}"));
    eprintln!(
        "after {elapsed:.1?}: {} {}: {}",
        db.severity(),
        db.code().code(),
        db.message()
    );
    assert!(
        db.message().contains(c.scope()),
        "the error names the cluster: {}",
        db.message()
    );
    let lower = db.message().to_lowercase();
    assert!(
        lower.contains("no backend") || lower.contains("no leader"),
        "the error gives the reason: {}",
        db.message()
    );
    assert!(
        elapsed >= Duration::from_millis(450),
        "the connection is held for hold_ms first ({elapsed:?})"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "but not much longer ({elapsed:?})"
    );

    // By hand: SSLRequest (and GSSENCRequest) are declined with `N`, then the startup
    // message gets an ErrorResponse and the connection is closed.
    for (what, code) in [("SSLRequest", 80_877_103u32), ("GSSENCRequest", 80_877_104)] {
        let mut s = TcpStream::connect(("127.0.0.1", r.write_port()))
            .await
            .expect("connect");
        let mut req = 8u32.to_be_bytes().to_vec();
        req.extend_from_slice(&code.to_be_bytes());
        s.write_all(&req).await.expect("send request");
        let answer = tokio::time::timeout(Duration::from_secs(10), s.read_u8())
            .await
            .unwrap_or_else(|_| panic!("no answer to the {what}"))
            .unwrap_or_else(|e| panic!("answer to the {what}: {e}"));
        assert_eq!(answer, b'N', "{what} must be declined with N");
        s.write_all(&startup_message()).await.expect("send startup");
        let (ty, body) = read_message(&mut s).await.expect("a message");
        assert_eq!(ty, b'E', "after {what}: expected an ErrorResponse");
        let fields = error_fields(&body);
        eprintln!("after {what}: {fields:?}");
        assert!(
            fields.get(&'M').is_some_and(|m| m.contains(c.scope())),
            "{fields:?}"
        );
        assert_eq!(fields.get(&'S').map(String::as_str), Some("FATAL"));
        let mut rest = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest))
            .await
            .expect("the router closes the connection after the error")
            .unwrap_or(0);
        assert_eq!(n, 0, "nothing follows the ErrorResponse");
    }
}

/// Reads until EOF or an error; returns what was read and how long it took (`None` if the
/// connection was still open after `timeout`).
async fn wait_closed(s: &mut TcpStream, timeout: Duration) -> Option<(Vec<u8>, Duration)> {
    let t = Instant::now();
    let mut got = Vec::new();
    let r = tokio::time::timeout(timeout, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    r.ok().map(|()| (got, t.elapsed()))
}

/// 64 pseudo-random bits (xorshift), enough for garbage.
fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_bad_startup_packets_close_only_that_connection() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let mut r =
        Router::start(&c, "startup_timeout_ms: 1000\nmax_connections: 16\n").expect("router");
    wait_routing(&r, &c, leader).await;
    let w = r.connect_write().await.expect("write session");
    let rd = r.connect_read().await.expect("read session");
    server_of(&w).await.expect("write session works");
    server_of(&rd).await.expect("read session works");

    let mut seed = 0x9e37_79b9_7f4a_7c15u64
        ^ SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
    let mut garbage: Vec<u8> = (0..1000).map(|_| xorshift(&mut seed) as u8).collect();
    // A first byte >= 0x80 keeps the random length far above the 10,000-byte limit.
    garbage[0] |= 0x80;
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend_from_slice(&196_608u32.to_be_bytes());
    truncated.extend_from_slice(b"user\0postgres\0");

    struct Case {
        what: &'static str,
        port: u16,
        send: Vec<u8>,
        half_close: bool,
        min: Duration,
    }
    let cases = vec![
        Case {
            what: "1000 random bytes (write port)",
            port: r.write_port(),
            send: garbage.clone(),
            half_close: false,
            min: Duration::ZERO,
        },
        Case {
            what: "1000 random bytes (read port)",
            port: r.read_port(),
            send: garbage.clone(),
            half_close: false,
            min: Duration::ZERO,
        },
        Case {
            what: "random bytes with a plausible length",
            port: r.write_port(),
            send: {
                let mut g = 200u32.to_be_bytes().to_vec();
                g.extend_from_slice(&garbage[..196]);
                g
            },
            half_close: false,
            min: Duration::ZERO,
        },
        Case {
            what: "length 100000",
            port: r.write_port(),
            send: 100_000u32.to_be_bytes().to_vec(),
            half_close: false,
            min: Duration::ZERO,
        },
        Case {
            what: "length 4",
            port: r.write_port(),
            send: 4u32.to_be_bytes().to_vec(),
            half_close: false,
            min: Duration::ZERO,
        },
        Case {
            what: "truncated startup packet, then close",
            port: r.write_port(),
            send: truncated,
            half_close: true,
            min: Duration::ZERO,
        },
        Case {
            what: "nothing (startup timeout 1 s)",
            port: r.write_port(),
            send: Vec::new(),
            half_close: false,
            min: Duration::from_millis(900),
        },
        Case {
            what: "half a length, then nothing",
            port: r.read_port(),
            send: vec![0, 0],
            half_close: false,
            min: Duration::from_millis(900),
        },
    ];
    // All at once, so each must be closed on its own.
    let mut streams = Vec::new();
    for case in &cases {
        let mut s = TcpStream::connect(("127.0.0.1", case.port))
            .await
            .expect("connect");
        // The router may close (even reset) before everything is written.
        let _ = s.write_all(&case.send).await;
        if case.half_close {
            let _ = s.shutdown().await;
        }
        streams.push(s);
    }
    let mut handles = Vec::new();
    for mut s in streams {
        handles.push(tokio::spawn(async move {
            wait_closed(&mut s, Duration::from_secs(5)).await
        }));
    }
    for (case, h) in cases.iter().zip(handles) {
        let closed = h.await.expect("task");
        let Some((got, after)) = closed else {
            panic!("{}: the connection is still open after 5 s", case.what);
        };
        eprintln!(
            "{}: closed after {after:.1?}, {} bytes before ({:?})",
            case.what,
            got.len(),
            got.first().map(|&b| b as char)
        );
        assert!(
            after >= case.min,
            "{}: closed too early ({after:?})",
            case.what
        );
        assert!(
            got.is_empty() || got[0] == b'E',
            "{}: only an ErrorResponse may come back: {got:?}",
            case.what
        );
    }

    // Nothing else was affected.
    assert!(r.is_running(), "the router must still run");
    let (port, _) = server_of(&w).await.expect("the write session still works");
    assert_eq!(port, i32::from(c.pg_port(leader)));
    server_of(&rd).await.expect("the read session still works");
    let (status, _) = r.get("/health").await.expect("health");
    assert_eq!(status, 200);
    let m = r.metrics().await.expect("metrics");
    let rejected = metric(
        &m,
        "patrol_router_connections_rejected_total{port=\"write\",reason=\"protocol\"}",
    );
    assert!(rejected >= 6.0, "rejections are counted ({rejected}):\n{m}");

    // The cap counts every open connection, including ones still in their startup phase:
    // with 2 sessions and 14 silent connections at max_connections 16, the next is closed at
    // once (not after the 1 s startup timeout).
    let open_connections = |want: u64| {
        let r = &r;
        async move {
            wait_until(
                &format!("stats.json to count {want} open connections"),
                Duration::from_secs(5),
                || async move {
                    let s = r.stats().await?;
                    if s["connections"] == want {
                        Ok(Some(()))
                    } else {
                        anyhow::bail!("connections {}", s["connections"])
                    }
                },
            )
            .await
        }
    };
    open_connections(2)
        .await
        .expect("only the two sessions are open");
    let mut silent = Vec::new();
    for _ in 0..14 {
        silent.push(
            TcpStream::connect(("127.0.0.1", r.write_port()))
                .await
                .expect("connect"),
        );
    }
    open_connections(16)
        .await
        .expect("the silent connections are counted");
    let mut over = TcpStream::connect(("127.0.0.1", r.read_port()))
        .await
        .expect("connect");
    let (got, after) = wait_closed(&mut over, Duration::from_secs(5))
        .await
        .expect("the connection over the cap is closed");
    eprintln!("connection over the cap closed after {after:.1?}");
    assert!(got.is_empty(), "{got:?}");
    assert!(
        after < Duration::from_millis(700),
        "the connection over the cap is closed at once, not by the startup timeout ({after:?})"
    );
    let m = r.metrics().await.expect("metrics");
    assert!(
        metric(
            &m,
            "patrol_router_connections_rejected_total{port=\"read\",reason=\"max_connections\"}"
        ) >= 1.0,
        "{m}"
    );
    for mut s in silent {
        wait_closed(&mut s, Duration::from_secs(5))
            .await
            .expect("silent connections close at the startup timeout");
    }
    open_connections(2).await.expect("slots are given back");
    let w2 = r.connect_write().await.expect("a new write session");
    server_of(&w2).await.expect("new write session works");
    server_of(&w).await.expect("the write session still works");
    server_of(&rd).await.expect("the read session still works");
    assert_eq!(
        metric(&m, "patrol_router_sessions_killed_total{port=\"write\"}"),
        0.0,
        "no session was killed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_leaves_the_read_pool_and_returns_without_flapping() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let r =
        Router::start(&c, "read: {max_lag_bytes: 1048576, hold_down_ms: 3000}\n").expect("router");
    wait_routing(&r, &c, leader).await;
    let reps = others(&c, leader);
    let (lagging, other) = (reps[0], reps[1]);
    let lagging_name = c.name(lagging).to_owned();

    // One read session on each replica (least-connections), kept across the lag.
    let mut read_sessions = Vec::new();
    for _ in 0..2 {
        let s = r.connect_read().await.expect("read session");
        let (port, _) = server_of(&s).await.expect("query");
        read_sessions.push((node_of_port(&c, port).expect("known port"), s));
    }
    let on_lagging = read_sessions
        .iter()
        .position(|(n, _)| *n == lagging)
        .expect("one read session on each replica");

    let since = SystemTime::now();
    let lc = c.connect(lagging).await.expect("connect to the replica");
    lc.batch_execute("SELECT pg_wal_replay_pause()")
        .await
        .expect("pause replay");
    let lead = c.connect(leader).await.expect("connect to the leader");
    let before: i64 = lead
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
        .await
        .expect("lsn")
        .get(0);
    lead.batch_execute(
        "CREATE TABLE big AS SELECT i, repeat('x', 1000) AS pad FROM generate_series(1, 6000) i",
    )
    .await
    .expect("write on the leader");
    let after: i64 = lead
        .query_one("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
        .await
        .expect("lsn")
        .get(0);
    assert!(
        after - before > 4 << 20,
        "more than 4 MB of WAL written ({} bytes)",
        after - before
    );
    let t_written = Instant::now();

    let ln = &lagging_name;
    let r = &r;
    let out =
        wait_until(
            &format!("{ln} to leave the read pool for lag"),
            Duration::from_secs(5),
            || async move {
                let s = r.stats().await?;
                let m = s["members"]
                    .as_array()
                    .and_then(|a| a.iter().find(|m| m["name"] == ln.as_str()))
                    .cloned()
                    .context("member missing")?;
                Ok((m["read_pool"] == false
                    && m["reason"].as_str().is_some_and(|x| x.contains("lag")))
                .then_some(m))
            },
        )
        .await
        .expect("the lagging replica leaves the read pool within 5 s");
    eprintln!(
        "{ln} out of the read pool {:.1?} after the write: {out}",
        t_written.elapsed()
    );

    // The burst may have pushed the other replica over the limit for a moment too (the agents
    // report positions once per loop): wait until it is back, alone.
    let want = vec![c.name(other).to_owned()];
    let want = &want;
    wait_until(
        "the read pool to be exactly the other replica",
        Duration::from_secs(30),
        || async move {
            let s = r.stats().await?;
            let got = read_backends(&s);
            if &got == want {
                Ok(Some(()))
            } else {
                anyhow::bail!("read_backends {got:?}")
            }
        },
    )
    .await
    .expect("read pool without the lagging replica");
    // New read sessions go to the other replica only; the lagging one keeps its session.
    for _ in 0..4 {
        let s = r.connect_read().await.expect("read session");
        let (port, in_recovery) = server_of(&s).await.expect("query");
        assert_eq!(
            node_of_port(&c, port),
            Some(other),
            "new read sessions avoid the lagging replica"
        );
        assert!(in_recovery);
    }
    let (port, _) = server_of(&read_sessions[on_lagging].1)
        .await
        .expect("the lagging replica's existing session survives (keep_sessions_on_lag)");
    assert_eq!(node_of_port(&c, port), Some(lagging));

    lc.batch_execute("SELECT pg_wal_replay_resume()")
        .await
        .expect("resume replay");
    let t_resumed = Instant::now();
    wait_until(
        &format!("{ln} to return to the read pool"),
        PROPAGATION_TIMEOUT,
        || async move {
            let s = r.stats().await?;
            Ok(read_backends(&s).contains(ln).then_some(()))
        },
    )
    .await
    .expect("the replica returns");
    let back_after = t_resumed.elapsed();
    eprintln!("{ln} back in the read pool {back_after:.1?} after resuming replay");
    // Stable afterwards: wait a few hold-downs and count the transitions.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let stats = r.stats().await.expect("stats");
    let events = events_since(&stats, since);
    let exits = events
        .iter()
        .filter(|e| e.starts_with(&format!("read pool -= {ln} ")))
        .count();
    let entries = events
        .iter()
        .filter(|e| *e == &format!("read pool += {ln}"))
        .count();
    assert_eq!(
        (exits, entries),
        (1, 1),
        "exactly one exit and one entry: {events:#?}"
    );
    assert!(
        read_backends(&stats).contains(ln),
        "{ln} stays in the pool: {stats:#}"
    );
    let s = r.connect_read().await.expect("read session");
    server_of(&s).await.expect("query");
    let all = all_events(&stats);
    eprintln!("events: {all:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_blip_drops_no_session() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let r = Router::start(&c, "").expect("router");
    wait_routing(&r, &c, leader).await;
    let w = r.connect_write().await.expect("write session");
    let rd = r.connect_read().await.expect("read session");
    let (wport, _) = server_of(&w).await.expect("write query");
    let (rport, _) = server_of(&rd).await.expect("read query");

    let pause = Duration::from_millis(1500);
    c.etcd().pause().expect("pause etcd");
    let t = Instant::now();
    let mut seen_unhealthy = None;
    let mut writers = Vec::new();
    let mut during = None;
    while t.elapsed() < pause {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(300), r.stats()).await {
            if s["dcs"]["healthy"] == false && seen_unhealthy.is_none() {
                seen_unhealthy = Some(t.elapsed());
                // A new write connection during the outage still reaches the last leader.
                let cfg = r.pg_config(r.write_port());
                during = Some(tokio::spawn(async move {
                    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    server_of(&client).await
                }));
            }
            writers.push(write_backend(&s).map(String::from));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.etcd().resume().expect("resume etcd");
    let paused_for = t.elapsed();
    eprintln!(
        "etcd paused {paused_for:.1?}; router saw it unhealthy after {seen_unhealthy:?}; write \
         backends seen: {writers:?}"
    );
    let seen_unhealthy =
        seen_unhealthy.expect("stats.json shows the DCS unhealthy during the pause");
    assert!(seen_unhealthy < paused_for);
    assert!(
        writers.iter().all(|w| w.as_deref() == Some(c.name(leader))),
        "writes keep going to the leader, confirmed by its agent: {writers:?}"
    );

    let (p, _) = server_of(&w).await.expect("the write session survives");
    assert_eq!(p, wport);
    let (p, _) = server_of(&rd).await.expect("the read session survives");
    assert_eq!(p, rport);
    w.batch_execute("CREATE TABLE blip (v int); INSERT INTO blip VALUES (1)")
        .await
        .expect("write after the blip");
    let (p, in_recovery) = during
        .expect("spawned")
        .await
        .expect("task")
        .expect("a write connection made during the outage succeeds");
    assert_eq!(p, i32::from(c.pg_port(leader)));
    assert!(!in_recovery);

    wait_until(
        "stats.json to show the DCS healthy again",
        PROPAGATION_TIMEOUT,
        || async {
            let s = r.stats().await?;
            Ok((s["dcs"]["healthy"] == true).then_some(()))
        },
    )
    .await
    .expect("DCS healthy after the blip");
    let m = r.metrics().await.expect("metrics");
    for port in ["write", "read"] {
        assert_eq!(
            metric(
                &m,
                &format!("patrol_router_sessions_killed_total{{port=\"{port}\"}}")
            ),
            0.0,
            "no {port} session was killed"
        );
    }
    assert_eq!(
        c.leader().await.expect("leader").as_deref(),
        Some(c.name(leader)),
        "the agents did not fail over"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_page_html() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let r = Router::start(&c, "").expect("router");
    wait_routing(&r, &c, leader).await;
    let w = r.connect_write().await.expect("write session");
    server_of(&w).await.expect("query");

    let (status, html) = r.get("/").await.expect("GET /");
    assert_eq!(status, 200, "{html}");
    assert!(html.contains("<html"), "{html}");
    assert!(
        html.contains(c.scope()),
        "the page names the cluster:\n{html}"
    );
    assert!(
        html.contains(&format!("<b id=\"leader\">{}</b>", c.name(leader))),
        "the page names the leader:\n{html}"
    );
    for i in others(&c, leader) {
        assert!(
            html.contains(&format!("<td>{}</td>", c.name(i))),
            "the page lists replica {}:\n{html}",
            c.name(i)
        );
    }

    let m = r.metrics().await.expect("metrics");
    assert!(m.contains("patrol_router_sessions_total"), "{m}");
    assert!(m.contains("patrol_router_pool_member"), "{m}");
    assert_eq!(
        metric(
            &m,
            &format!(
                "patrol_router_pool_member{{member=\"{}\",pool=\"write\"}}",
                c.name(leader)
            )
        ),
        1.0,
        "{m}"
    );
    let (status, _) = r.get("/health").await.expect("health");
    assert_eq!(status, 200);
}

/// Context switches (voluntary and not) of the router's data-path threads so far.
fn data_thread_switches(pid: i32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let dir = task.expect("task").path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !comm.starts_with("data-") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        total += status
            .lines()
            .filter(|l| l.contains("ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    total
}

/// Runs `n` one-row round trips on `client`; returns how often the router's data threads were
/// switched in meanwhile.
async fn switches_for_round_trips(router: &Router, client: &tokio_postgres::Client, n: u64) -> u64 {
    let pid = router.proc().pid().as_raw();
    let before = data_thread_switches(pid);
    for _ in 0..n {
        client.simple_query("SELECT 1").await.expect("SELECT 1");
    }
    data_thread_switches(pid) - before
}

/// Waits until the router counts `n` open sessions (ended ones are noticed).
async fn wait_sessions(r: &Router, n: u64) {
    wait_until(
        &format!("the router to count {n} open sessions"),
        PROPAGATION_TIMEOUT,
        || async {
            let s = r.stats().await?;
            Ok((s["sessions"] == n).then_some(()))
        },
    )
    .await
    .expect("ended sessions are noticed");
}

/// Every row of `SELECT g, md5(g::text) FROM generate_series(1, n)`, as text.
async fn md5_rows(client: &tokio_postgres::Client, n: i32) -> Vec<String> {
    client
        .simple_query(&format!(
            "SELECT g, md5(g::text) FROM generate_series(1, {n}) g"
        ))
        .await
        .expect("rows")
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(format!(
                "{}|{}",
                r.get(0).unwrap_or(""),
                r.get(1).unwrap_or("")
            )),
            _ => None,
        })
        .collect()
}

/// `splice: true` (root): established sessions are relayed by the kernel. Bytes arrive intact
/// both ways, errors and a server's last FATAL message reach the client, the data threads are
/// not woken per message (a user-space router beside it is, which shows the count measures
/// something), ended sessions are noticed, and a switchover cuts the old leader's sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spliced_sessions_relay_in_the_kernel_and_are_cut_on_switchover() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: loading the kernel relay needs root (CI runs as root)");
        return;
    }
    let mut c = Cluster::new(3).expect("cluster");
    let old = start_all(&mut c).await;
    let r = Router::start(&c, "splice: true\n").expect("router");
    let plain = Router::start(&c, "").expect("user-space router");
    wait_routing(&r, &c, old).await;
    wait_routing(&plain, &c, old).await;
    let stats = r.stats().await.expect("stats");
    assert_eq!(stats["relay"], "kernel", "{stats:#}");
    assert_eq!(plain.stats().await.expect("stats")["relay"], "user space");

    // Bytes both ways: 200,000 rows down, 1 MB up, compared with a direct session.
    let w = r.connect_write().await.expect("write session");
    let direct = c.connect(old).await.expect("direct session");
    let (down_router, down_direct) =
        tokio::join!(md5_rows(&w, 200_000), md5_rows(&direct, 200_000));
    assert_eq!(down_router.len(), 200_000);
    assert!(
        down_router == down_direct,
        "rows through the kernel relay differ"
    );
    let big: String = (0..1_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let row = w
        .query_one("SELECT length($1::text), md5($1::text)", &[&big])
        .await
        .expect("1 MB parameter");
    let want = direct
        .query_one("SELECT md5($1::text)", &[&big])
        .await
        .expect("md5 direct");
    assert_eq!(row.get::<_, i32>(0), 1_000_000);
    assert_eq!(row.get::<_, String>(1), want.get::<_, String>(0));

    // An error leaves the session usable; a FATAL is the last thing the server sends before
    // it closes, and it must reach the client before the router closes its side.
    let err = w
        .simple_query("SELECT 1/0")
        .await
        .expect_err("division by zero");
    assert!(format!("{err:?}").contains("division by zero"), "{err:?}");
    w.simple_query("SELECT 1")
        .await
        .expect("session still usable");
    let doomed = r.connect_write().await.expect("second session");
    let err = doomed
        .simple_query("SELECT pg_terminate_backend(pg_backend_pid())")
        .await
        .expect_err("the backend terminates itself");
    assert!(
        format!("{err:?}").contains("terminating connection due to administrator command"),
        "the server's FATAL must reach the client: {err:?}"
    );

    // The SSLRequest path joins the pair after the backend's one-byte answer.
    ssl_request_reaches_the_backend(r.write_port()).await;

    // No wake-up per message: 2,000 round trips through each router.
    let p = plain.connect_write().await.expect("user-space session");
    let spliced = switches_for_round_trips(&r, &w, 2_000).await;
    let relayed = switches_for_round_trips(&plain, &p, 2_000).await;
    eprintln!(
        "data-thread switches for 2,000 round trips: kernel relay {spliced}, user space {relayed}"
    );
    assert!(
        relayed >= 2_000,
        "the user-space relay wakes per message: {relayed}"
    );
    assert!(
        spliced < 200,
        "the kernel relay must not wake the router per message: {spliced}"
    );

    // Ended sessions are noticed (the count returns to the open ones) and their bytes counted.
    drop((doomed, p));
    wait_sessions(&r, 1).await;

    // A switchover cuts the kernel-relayed session to the old leader.
    let new = others(&c, old)[0];
    c.switchover(old, new).await.expect("switchover");
    let err = wait_session_error(&w, "the old write session to fail", PROPAGATION_TIMEOUT)
        .await
        .expect("the session to the old leader is cut");
    eprintln!("old spliced session ended: {err}");
    let landed = wait_write_lands_elsewhere(&r, &c, &[old], Duration::from_secs(15))
        .await
        .expect("writes move to the new leader");
    assert_eq!(landed, new);
    drop(w);
    wait_sessions(&r, 0).await;
    let to_client = metric(
        &r.metrics().await.expect("metrics"),
        "patrol_router_bytes_total{direction=\"to_client\",port=\"write\"}",
    );
    assert!(
        to_client > 8_000_000.0,
        "spliced bytes are counted: {to_client}"
    );
    drop(direct);
}

/// The redirected sessions the router's last sweep counted for `member` on `port`.
fn redirected(stats: &Value, member: &str, port: &str) -> u64 {
    stats["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["name"] == member)
        .and_then(|m| m["redirected_sessions"][port].as_u64())
        .unwrap_or(0)
}

/// `redirect_local: true` (root): clients on the router's host are connected by the kernel
/// straight to the backend (the router relays none of their bytes and counts them from the
/// kernel's socket list); the router still cuts them when their backend leaves the pool, here
/// a leader whose agent died while its PostgreSQL runs on; new connects follow the new leader;
/// and when the router process dies its program goes with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_clients_are_routed_at_connect_time_and_still_cut() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: linking the connect program needs root (CI runs as root)");
        return;
    }
    let mut c = Cluster::new(3).expect("cluster");
    let old = start_all(&mut c).await;
    let r = Router::start(&c, "redirect_local: true\n").expect("router");
    wait_routing(&r, &c, old).await;
    assert_eq!(r.stats().await.expect("stats")["redirect_local"], true);

    let w = r.connect_write().await.expect("write session");
    let (port, in_recovery) = server_of(&w).await.expect("query");
    assert_eq!((port, in_recovery), (i32::from(c.pg_port(old)), false));
    let rd = r.connect_read().await.expect("read session");
    let (rport, in_recovery) = server_of(&rd).await.expect("query");
    let replica = node_of_port(&c, rport).expect("a member's port");
    assert!(replica != old && in_recovery, "reads go to a replica");
    // The write session is redirected. With two replicas the read port is left to the
    // listener (a cancel request could otherwise reach the wrong replica), so it is relayed.
    let stats = wait_until(
        "the sweep to count the write session",
        PROPAGATION_TIMEOUT,
        || async {
            let s = r.stats().await?;
            Ok((redirected(&s, c.name(old), "write") == 1).then_some(s))
        },
    )
    .await
    .expect("redirected sessions on the stats page");
    assert_eq!(
        stats["sessions"], 1,
        "only the read session is relayed: {stats:#}"
    );
    assert_eq!(redirected(&stats, c.name(replica), "read"), 0, "{stats:#}");

    // A cancel request is a new connection to the same port: it reaches the session's server.
    // The cancel is sent once the query is seen running on the leader (a cancel that comes
    // first would find nothing to cancel).
    let token = w.cancel_token();
    let watcher = c.connect(old).await.expect("direct session");
    let canceller = tokio::spawn(async move {
        wait_until("the query to run", PROPAGATION_TIMEOUT, || async {
            let n: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE state = 'active' AND query = 'SELECT pg_sleep(20)'",
                    &[],
                )
                .await?
                .get(0);
            Ok((n == 1).then_some(()))
        })
        .await?;
        token
            .cancel_query(tokio_postgres::NoTls)
            .await
            .context("cancel request")
    });
    let err = w
        .simple_query("SELECT pg_sleep(20)")
        .await
        .expect_err("the query is cancelled");
    canceller.await.expect("task").expect("cancel request sent");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err:?}"
    );
    let m = r.metrics().await.expect("metrics");
    let gauge = format!(
        "patrol_router_redirected_sessions{{backend=\"{}\",port=\"write\"}}",
        c.name(old)
    );
    assert_eq!(metric(&m, &gauge), 1.0, "{m}");

    // The leader's agent dies; its PostgreSQL runs on and would keep the session. The router
    // drops it from the write port and destroys the redirected session itself.
    let t_kill = Instant::now();
    c.kill_node(old);
    let err = wait_session_error(
        &w,
        "the redirected write session to fail",
        Duration::from_secs(5),
    )
    .await
    .expect("the router cuts the redirected session to the lost leader");
    eprintln!(
        "redirected write session cut {:.1?} after the agent's death: {err}",
        t_kill.elapsed()
    );
    assert!(
        c.postmaster_pid(old).is_some(),
        "the session was cut by the router, not by PostgreSQL going away"
    );
    let m = r.metrics().await.expect("metrics");
    assert!(
        metric(&m, "patrol_router_sessions_killed_total{port=\"write\"}") >= 1.0,
        "the cut is counted: {m}"
    );
    assert!(
        metric(
            &m,
            "patrol_router_session_kill_seconds_count{port=\"write\"}"
        ) >= 1.0,
        "and its latency: {m}"
    );
    server_of(&rd)
        .await
        .expect("the read session on a live replica stays");
    c.signal_postgres(old, Signal::SIGKILL)
        .expect("SIGKILL postmaster");
    let next = wait_write_lands_elsewhere(&r, &c, &[old], TTL + Duration::from_secs(30))
        .await
        .expect("writes follow to the next leader");
    let w2 = r
        .connect_write()
        .await
        .expect("write session to the new leader");
    // One replica left: the read port has one backend and is redirected too.
    let third = (0..3)
        .find(|&i| i != old && i != next)
        .expect("a third node");
    let rd2 = wait_until(
        "a read session on the last replica",
        PROPAGATION_TIMEOUT,
        || async {
            let s = r.connect_read().await?;
            let (port, _) = server_of(&s).await?;
            Ok((node_of_port(&c, port) == Some(third)).then_some(s))
        },
    )
    .await
    .expect("reads on the remaining replica");
    assert_eq!(
        server_of(&w2).await.expect("query").0,
        i32::from(c.pg_port(next))
    );
    wait_until(
        "the new leader's session to be counted",
        PROPAGATION_TIMEOUT,
        || async {
            let s = r.stats().await?;
            Ok((redirected(&s, c.name(next), "write") >= 1
                && redirected(&s, c.name(third), "read") >= 1)
                .then_some(()))
        },
    )
    .await
    .expect("the new session is redirected too");

    // The program is linked to the router process: once it is gone, connects to its port
    // reach nothing (no listener), and are not sent to the leader.
    r.proc().signal(Signal::SIGKILL).expect("SIGKILL router");
    wait_until(
        "connects to the dead router's port to be refused",
        Duration::from_secs(5),
        || async {
            Ok(TcpStream::connect(("127.0.0.1", r.write_port()))
                .await
                .is_err()
                .then_some(()))
        },
    )
    .await
    .expect("no redirect outlives the router");
    drop((w2, rd, rd2));
}

/// How a client opens a connection to a frozen backend.
#[derive(Debug, Clone, Copy)]
enum Opening {
    /// `SSLRequest`, then (after the router's `N`) the startup packet.
    Ssl,
    /// The same with a `GSSENCRequest`.
    Gssenc,
    /// The startup packet at once.
    Plain,
    /// An `SSLRequest`, then the client goes away.
    SslAbandoned,
}

/// Opens a connection to `port` the way `how` says and reads what the router answers: the
/// fields of its ErrorResponse (none for an abandoned one), and how long it took.
async fn open_against_frozen(
    port: u16,
    how: Opening,
) -> anyhow::Result<(BTreeMap<char, String>, Duration)> {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    let code: u32 = match how {
        Opening::Ssl | Opening::SslAbandoned => 80_877_103,
        Opening::Gssenc => 80_877_104,
        Opening::Plain => 0,
    };
    if code != 0 {
        let mut req = 8u32.to_be_bytes().to_vec();
        req.extend_from_slice(&code.to_be_bytes());
        s.write_all(&req).await?;
        if let Opening::SslAbandoned = how {
            return Ok((BTreeMap::new(), t.elapsed()));
        }
        let answer = tokio::time::timeout(Duration::from_secs(20), s.read_u8())
            .await
            .context("no answer to the encryption request within 20 s")??;
        anyhow::ensure!(answer == b'N', "{how:?}: answer {answer:?}, not N");
    }
    s.write_all(&startup_message()).await?;
    let (ty, body) = read_message(&mut s).await?;
    anyhow::ensure!(
        ty == b'E',
        "{how:?}: message {:?}, not an ErrorResponse",
        ty as char
    );
    let after = t.elapsed();
    wait_closed(&mut s, Duration::from_secs(5))
        .await
        .context("the router closes the connection after the error")?;
    Ok((error_fields(&body), after))
}

/// Waits until stats.json counts `want` open client connections.
async fn wait_connections(r: &Router, want: u64) {
    wait_until(
        &format!("stats.json to count {want} open connections"),
        Duration::from_secs(20),
        || async move {
            let s = r.stats().await?;
            if s["connections"] == want {
                Ok(Some(()))
            } else {
                anyhow::bail!("connections {}", s["connections"])
            }
        },
    )
    .await
    .expect("open connections");
}

/// A hung postmaster (SIGSTOP) still completes TCP handshakes through the kernel and answers
/// nothing: SSL, GSSENC and plain clients of the write port get an ErrorResponse after
/// `backend_answer_timeout_ms` and their slots back, so two rounds of clients filling
/// `max_connections` both get answers; the read port keeps working; the agent keeps its key
/// (its own session still works), and once the postmaster runs again so does the write port.
/// The same with the kernel relay (`splice`, when run as root), where the backend's answer to
/// the startup packet never reaches user space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_backend_answers_ssl_and_plain_clients_and_frees_their_slots() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let settings =
        "max_connections: 8\nbackend_answer_timeout_ms: 1000\nstartup_timeout_ms: 5000\n";
    let mut routers = vec![("user space", Router::start(&c, settings).expect("router"))];
    if nix::unistd::geteuid().is_root() {
        let spliced = Router::start(&c, &format!("{settings}splice: true\n")).expect("router");
        routers.push(("kernel", spliced));
    } else {
        eprintln!("the kernel relay is not tried: loading it needs root (CI runs as root)");
    }
    let mut reads = Vec::new();
    for (relay, r) in &routers {
        wait_routing(r, &c, leader).await;
        assert_eq!(r.stats().await.expect("stats")["relay"], *relay);
        let rd = r.connect_read().await.expect("read session");
        server_of(&rd).await.expect("read session works");
        wait_connections(r, 1).await;
        reads.push(rd);
    }

    c.signal_postgres(leader, Signal::SIGSTOP)
        .expect("SIGSTOP the leader's postmaster");
    for ((relay, r), rd) in routers.iter().zip(&reads) {
        // Seven clients and the read session take all eight slots; twice, so the second round
        // gets answers only if the first gave its slots back.
        for round in 0..2 {
            let kinds = [
                Opening::Ssl,
                Opening::Plain,
                Opening::Gssenc,
                Opening::Ssl,
                Opening::Plain,
                Opening::SslAbandoned,
                Opening::Plain,
            ];
            let port = r.write_port();
            let tasks: Vec<_> = kinds
                .iter()
                .map(|&how| tokio::spawn(open_against_frozen(port, how)))
                .collect();
            for (how, task) in kinds.iter().zip(tasks) {
                let (fields, after) = task
                    .await
                    .expect("client task")
                    .unwrap_or_else(|e| panic!("{relay}, round {round}, {how:?}: {e:#}"));
                if let Opening::SslAbandoned = how {
                    continue;
                }
                eprintln!("{relay}, round {round}, {how:?}: after {after:.1?}: {fields:?}");
                let message = fields.get(&'M').cloned().unwrap_or_default();
                assert!(
                    message.contains(c.name(leader)) && message.contains("did not answer"),
                    "{relay}, {how:?}: the error names the backend and why: {fields:?}"
                );
                assert_eq!(
                    fields.get(&'C').map(String::as_str),
                    Some("57P03"),
                    "{fields:?}"
                );
                assert!(
                    after >= Duration::from_millis(900),
                    "{relay}, {how:?}: answered after {after:?}, before the backend's deadline"
                );
            }
            // Every slot comes back, the abandoned client's too.
            wait_connections(r, 1).await;
        }

        // The read port was not affected; a real client of the write port gets the error too.
        let rd2 = r.connect_read().await.expect("a new read session");
        let (port, in_recovery) = server_of(&rd2).await.expect("new read session works");
        assert!(in_recovery && node_of_port(&c, port) != Some(leader));
        server_of(rd).await.expect("the read session still works");
        let err = match r.try_connect(r.write_port()).await {
            Ok(_) => panic!("a write session to a hung backend cannot succeed"),
            Err(e) => e,
        };
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("expected a PostgreSQL error, got {err:?}"));
        assert!(db.message().contains("did not answer"), "{}", db.message());
        let m = r.metrics().await.expect("metrics");
        let timeouts = metric(
            &m,
            "patrol_router_connections_rejected_total{port=\"write\",reason=\"backend_timeout\"}",
        );
        assert!(
            timeouts >= 13.0,
            "{relay}: hung-backend refusals are counted ({timeouts})"
        );
        assert!(
            r.log().contains("is its postmaster hung?"),
            "{relay}: the router says why: {}",
            r.log()
        );
    }

    c.signal_postgres(leader, Signal::SIGCONT)
        .expect("SIGCONT the leader's postmaster");
    for (relay, r) in &routers {
        let node = wait_write_lands_elsewhere(r, &c, &[], PROPAGATION_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("{relay}: the write port works again: {e:#}"));
        assert_eq!(
            node, leader,
            "the leader kept its key while its postmaster hung"
        );
    }
}

/// A `CancelRequest` through the read port goes to the one replica holding the session (the
/// router read its key from the backend's `BackendKeyData`): the query is cancelled and no
/// other member hears of it. A request with a key the router never saw goes to every member
/// that may hold the session (each logs it), as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_request_goes_to_the_session_backend_only() {
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let r = Router::start(&c, "").expect("router");
    wait_routing(&r, &c, leader).await;

    let rd = r.connect_read().await.expect("read session");
    let (port, _) = server_of(&rd).await.expect("read session works");
    let node = node_of_port(&c, port).expect("a member's port");
    let pid: i32 = rd
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pg_backend_pid()")
        .get(0);
    let token = rd.cancel_token();
    let sleeping = tokio::spawn(async move {
        let r = rd.simple_query("SELECT pg_sleep(60)").await;
        (rd, r.map(|_| ()))
    });
    let direct = c.connect(node).await.expect("direct session");
    wait_until("the query to run", Duration::from_secs(20), || async {
        let row = direct
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
                &[&pid],
            )
            .await?;
        Ok((row.get::<_, i64>(0) == 1).then_some(()))
    })
    .await
    .expect("pg_sleep runs");

    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send the cancel request through the router");
    let (_rd, result) = tokio::time::timeout(Duration::from_secs(20), sleeping)
        .await
        .expect("the query ends soon after the cancel")
        .expect("query task");
    let err = result.expect_err("the query is cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err:?}"
    );
    let m = r.metrics().await.expect("metrics");
    let routed = |m: &str, target: &str| {
        metric(
            m,
            &format!("patrol_router_cancel_requests_total{{port=\"read\",target=\"{target}\"}}"),
        )
    };
    assert_eq!(routed(&m, "session"), 1.0, "{m}");
    assert_eq!(routed(&m, "fanout"), 0.0, "{m}");

    // A key the router never saw (the right process id, a wrong secret) goes to every member
    // that may hold the session: the holder logs a wrong key, the others no such process.
    let mut req = 16u32.to_be_bytes().to_vec();
    req.extend_from_slice(&80_877_102u32.to_be_bytes());
    req.extend_from_slice(&pid.to_be_bytes());
    req.extend_from_slice(&0x5eed_f00du32.to_be_bytes());
    let mut s = TcpStream::connect(("127.0.0.1", r.read_port()))
        .await
        .expect("connect");
    s.write_all(&req).await.expect("send a cancel request");
    wait_closed(&mut s, Duration::from_secs(10))
        .await
        .expect("the router closes a cancel request's connection");
    let log = |i: usize| {
        std::fs::read_to_string(c.data_dir(i).join("log").join("postmaster.log"))
            .unwrap_or_default()
    };
    let no_match = &format!("PID {pid} in cancel request did not match any process");
    let log = &log;
    for i in others(&c, node) {
        wait_until(
            &format!("{} to log the unknown key", c.name(i)),
            Duration::from_secs(20),
            || async move { Ok(log(i).contains(no_match).then_some(())) },
        )
        .await
        .expect("every member hears of an unknown key");
        // Once: the cancel with the right key did not reach it.
        assert_eq!(
            log(i).matches(no_match.as_str()).count(),
            1,
            "{} heard of the session's cancel request",
            c.name(i)
        );
    }
    let wrong = format!("wrong key in cancel request for process {pid}");
    wait_until(
        "the holder to log the wrong key",
        Duration::from_secs(20),
        || async { Ok(log(node).contains(&wrong).then_some(())) },
    )
    .await
    .expect("the holder hears of the unknown key too");
    let m = r.metrics().await.expect("metrics");
    assert_eq!(routed(&m, "fanout"), 1.0, "{m}");
}

/// The admin port serves `admin.max_connections` connections at once and gives each
/// `admin.header_timeout_ms` for its headers: clients sending a byte every 200 ms hold a slot
/// no longer than that, those beyond the cap are closed at once, and a normal request is served
/// while slots are free and again within seconds once they were all taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_caps_connections_and_cuts_slow_headers() {
    // etcd only: the admin port needs no cluster.
    let c = Cluster::new(1).expect("cluster");
    let header_timeout = Duration::from_secs(5);
    let r = Router::start(
        &c,
        &format!(
            "admin: {{max_connections: 8, header_timeout_ms: {}}}\n",
            header_timeout.as_millis()
        ),
    )
    .expect("router");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], r.admin_port()).into();
    let every = Duration::from_millis(200);

    let mut slow = crate::support::slow::open_many(addr, "/stats.json", 7, every)
        .await
        .expect("slow clients");
    let (status, _) = r
        .get("/stats.json")
        .await
        .expect("a request beside 7 slow clients");
    assert_eq!(status, 200);
    slow.extend(
        crate::support::slow::open_many(addr, "/stats.json", 5, every)
            .await
            .expect("more slow clients"),
    );
    // Full: served again once the header deadline has closed the slow ones.
    let t = Instant::now();
    wait_until(
        "a request to be served",
        Duration::from_secs(30),
        || async { Ok((r.get("/health").await?.0 > 0).then_some(())) },
    )
    .await
    .expect("the admin port serves again");
    eprintln!("served again after {:.1?}", t.elapsed());

    let lived = crate::support::slow::lifetimes(&mut slow, Duration::from_secs(30))
        .await
        .expect("every slow connection is closed, trickling bytes or not");
    eprintln!("slow connections lived {lived:.1?}");
    let (at_once, held) = crate::support::slow::split(&lived, header_timeout);
    assert!(
        at_once >= 1,
        "connections beyond the cap are closed at once: {lived:?}"
    );
    assert!(
        held >= 7 && at_once + held == lived.len(),
        "the others hold a slot until the header deadline: {lived:?}"
    );
    let m = r.metrics().await.expect("metrics");
    let rejected = metric(
        &m,
        "patrol_router_connections_rejected_total{port=\"admin\",reason=\"max_connections\"}",
    );
    assert!(rejected >= at_once as f64, "{rejected} < {at_once}:\n{m}");
}
