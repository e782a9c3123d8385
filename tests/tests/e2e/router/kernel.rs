//! The kernel data paths (root only): sessions relayed by the kernel (`splice`) and local
//! clients connected straight to their backend at connect time (`redirect_local`), both still
//! cut when their backend leaves the pool.

use std::time::{Duration, Instant};

use anyhow::Context;
use patrol_tests::{metric, root_or_skip, wait_until, Cluster, Router, Signal};
use serde_json::Value;
use tokio::net::TcpStream;

use super::{
    node_of_port, others, server_of, ssl_request_reaches_the_backend, wait_routing,
    wait_session_error, wait_write_lands_elsewhere,
};
use crate::support::{start_all, PROPAGATION_TIMEOUT, TTL};

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
    if !root_or_skip("loading the kernel relay needs root") {
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
    if !root_or_skip("linking the connect program needs root") {
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
