//! The write port across leader changes: a switchover and a host loss move writes and cut the
//! old leader's sessions; new connections are held while there is no leader and then answered
//! with a PostgreSQL error; an etcd blip drops no session.

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use patrol_tests::{metric, wait_until, Cluster, Router, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    error_fields, events_since, node_of_port, others, read_message, server_of, startup_message,
    wait_routing, wait_session_error, wait_write_lands_elsewhere, write_backend,
};
use crate::support::{start_all, PROPAGATION_TIMEOUT, TTL};

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
