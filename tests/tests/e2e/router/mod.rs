//! End to end: `patrol-router` in front of a real 3-node cluster (real etcd, agents,
//! PostgreSQL 15), one module per area: `routing` (the write port follows the confirmed
//! leader, the read port balances over streaming replicas within the lag limit, or over the
//! leader's synchronous standbys only, the admin page), `leader_change` (old sessions cut, new connections held while there is no leader and
//! then answered with a PostgreSQL error, an etcd blip dropping nothing), `hostile` (garbage
//! and hung backends close only their own connections, cancel requests reach only their
//! session's backend, slow admin clients are cut and capped) and `kernel` (the kernel relay
//! and connect-time redirection, as root). This file holds what they share.

mod hostile;
mod kernel;
mod leader_change;
mod routing;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use patrol_tests::{wait_until, Cluster, Router};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::PROPAGATION_TIMEOUT;

fn others(cluster: &Cluster, but: usize) -> Vec<usize> {
    (0..cluster.len()).filter(|&i| i != but).collect()
}

/// The node whose PostgreSQL listens on `port`.
fn node_of_port(cluster: &Cluster, port: i32) -> Option<usize> {
    (0..cluster.len()).find(|&i| i32::from(cluster.pg_port(i)) == port)
}

/// `inet_server_port()` and `pg_is_in_recovery()` of a session.
pub(crate) async fn server_of(client: &tokio_postgres::Client) -> anyhow::Result<(i32, bool)> {
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

/// Waits until the router writes to `leader` and reads from exactly the other nodes.
pub(crate) async fn wait_routing(router: &Router, cluster: &Cluster, leader: usize) -> Value {
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
