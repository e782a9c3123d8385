//! End to end: systemd's readiness protocol without systemd. The agent runs with
//! `NOTIFY_SOCKET` naming a datagram socket the test binds; `READY=1` arrives once the REST API
//! answers and the member key is published, a `STATUS=` line follows the role, `STOPPING=1`
//! comes on SIGTERM, and PostgreSQL does not inherit the socket. `patrol-router` sends
//! `READY=1` once it serves and `STOPPING=1` on SIGTERM.

use std::time::{Duration, Instant};

use patrol_tests::{chown_to_agent, Cluster, Router, Signal};
use tokio::net::UnixDatagram;

use crate::support::HEALTHY_TIMEOUT;

/// Datagrams from the agent, in order.
struct Inbox {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Inbox {
    /// Receives until a datagram has a line `line`; all of them are kept in `seen`.
    async fn wait_for(&mut self, line: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let mut buf = vec![0u8; 4096];
            let left = deadline.saturating_duration_since(Instant::now());
            let len = match tokio::time::timeout(left, self.socket.recv(&mut buf)).await {
                Ok(r) => r.expect("recv"),
                Err(_) => panic!(
                    "no datagram with {line:?} within {timeout:?}; received: {:?}",
                    self.seen
                ),
            };
            let msg = String::from_utf8_lossy(&buf[..len]).into_owned();
            self.seen.push(msg.clone());
            if msg.lines().any(|l| l == line) {
                return msg;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_status_and_stopping_reach_notify_socket() {
    let mut cluster = Cluster::new(1).expect("cluster");
    let path = cluster.node_dir(0).join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    // The agent runs as the agent user and must be allowed to send to it.
    chown_to_agent(&path).expect("chown the socket");
    let mut inbox = Inbox {
        socket,
        seen: Vec::new(),
    };
    let yaml = cluster.config_yaml(0);
    let path_text = path.to_str().expect("UTF-8 path").to_string();
    cluster
        .start_node_with(0, &yaml, &[("NOTIFY_SOCKET", &path_text)])
        .expect("start pg0");

    let ready = inbox.wait_for("READY=1", HEALTHY_TIMEOUT).await;
    assert!(
        ready.lines().any(|l| l.starts_with("STATUS=")),
        "READY=1 comes with a status: {ready:?}"
    );
    // By then the REST API answers and the member key is published.
    let (code, body) = cluster
        .api_get(0, "/liveness")
        .await
        .expect("GET /liveness");
    assert_eq!(code, 200, "{body}");
    assert!(
        cluster
            .etcd_get("members/pg0")
            .await
            .expect("etcd get")
            .is_some(),
        "the member key is published before READY=1"
    );
    inbox
        .wait_for("STATUS=primary, PostgreSQL running", HEALTHY_TIMEOUT)
        .await;
    assert_eq!(
        inbox.seen.iter().filter(|m| m.contains("READY=1")).count(),
        1,
        "{:?}",
        inbox.seen
    );

    // PostgreSQL (which speaks the protocol itself when built for systemd) must not have the
    // socket: the agent removed it from the environment its children inherit.
    let postmaster = cluster.postmaster_pid(0).expect("postmaster runs");
    let environ = std::fs::read(format!("/proc/{postmaster}/environ")).expect("environ");
    assert!(
        !String::from_utf8_lossy(&environ).contains("NOTIFY_SOCKET="),
        "the postmaster inherited NOTIFY_SOCKET"
    );

    cluster.stop_node(0, Signal::SIGTERM).expect("SIGTERM");
    inbox.wait_for("STOPPING=1", Duration::from_secs(30)).await;
    let status = cluster
        .wait_node_exit(0, Duration::from_secs(60))
        .await
        .expect("the agent exits after SIGTERM");
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_reports_ready_and_stopping() {
    // Only for its etcd: the router needs no member to be ready.
    let cluster = Cluster::new(1).expect("cluster");
    let path = cluster.root().join("router-notify.sock");
    let mut inbox = Inbox {
        socket: UnixDatagram::bind(&path).expect("bind the notify socket"),
        seen: Vec::new(),
    };
    let hosts: Vec<String> = cluster
        .etcd_cluster()
        .host_ports()
        .iter()
        .map(|h| format!("'{h}'"))
        .collect();
    let etcd = format!("etcd: {{hosts: [{}]}}", hosts.join(", "));
    let path_text = path.to_str().expect("UTF-8 path").to_string();
    // Started once its admin port answers.
    let router = Router::start_with_env(&cluster, &etcd, "", &[("NOTIFY_SOCKET", &path_text)])
        .expect("router");
    inbox.wait_for("READY=1", Duration::from_secs(30)).await;
    router.proc().signal(Signal::SIGTERM).expect("SIGTERM");
    inbox.wait_for("STOPPING=1", Duration::from_secs(30)).await;
}
