//! Nothing waits forever and nothing spreads: garbage and bad startup packets close only their
//! own connection, a hung backend's clients get an error and their slots back, a cancel request
//! reaches only its session's backend, slow admin clients are cut and capped.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use patrol_tests::{metric, root_or_skip, wait_until, Cluster, Router, Signal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{
    error_fields, node_of_port, others, read_message, server_of, startup_message, wait_routing,
    wait_write_lands_elsewhere,
};
use crate::support::{start_all, PROPAGATION_TIMEOUT};

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
    // with 2 sessions and 14 silent connections at max_connections 16, the next is refused by
    // the cap when accepted (counted as `max_connections`), not left to the 1 s startup
    // timeout. How soon that is: `router_limits_bench`.
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
    let m = r.metrics().await.expect("metrics");
    assert_eq!(
        metric(
            &m,
            "patrol_router_connections_rejected_total{port=\"read\",reason=\"max_connections\"}"
        ),
        1.0,
        "the connection over the cap is refused by the cap:\n{m}"
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
/// The same with the kernel relay (`splice`, root only), where the backend's answer to
/// the startup packet never reaches user space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_backend_answers_ssl_and_plain_clients_and_frees_their_slots() {
    let kernel = root_or_skip("its kernel-relay half needs root to load the relay");
    let mut c = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut c).await;
    let settings =
        "max_connections: 8\nbackend_answer_timeout_ms: 1000\nstartup_timeout_ms: 5000\n";
    let mut routers = vec![("user space", Router::start(&c, settings).expect("router"))];
    if kernel {
        let spliced = Router::start(&c, &format!("{settings}splice: true\n")).expect("router");
        routers.push(("kernel", spliced));
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
