//! Slow-loris clients: each opens a connection and sends an HTTP request's headers a byte at a
//! time without ever finishing them, to check that a server bounds what such clients hold.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// One slow client; its task stops when the server closes the connection.
pub struct SlowClient {
    closed: watch::Receiver<Option<Duration>>,
}

impl SlowClient {
    /// Connects to `addr` and sends `GET <path>` and then an endless header, one byte every
    /// `every`, until the server closes the connection (end of stream, reset, or a failed write).
    pub async fn open(addr: SocketAddr, path: &str, every: Duration) -> anyhow::Result<SlowClient> {
        let mut s = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        let opened = Instant::now();
        let mut bytes = format!("GET {path} HTTP/1.1\r\nHost: slow\r\nX-Slow: ").into_bytes();
        let (tx, closed) = watch::channel(None);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            let mut buf = [0u8; 1024];
            let mut next = 0;
            loop {
                tokio::select! {
                    r = s.read(&mut buf) => match r {
                        // An answer (e.g. 408) before the close is read and ignored.
                        Ok(n) if n > 0 => continue,
                        _ => break,
                    },
                    _ = tick.tick() => {
                        if next == bytes.len() {
                            bytes.push(b'x');
                        }
                        if s.write_all(&bytes[next..=next]).await.is_err() {
                            break;
                        }
                        next += 1;
                    }
                }
            }
            let _ = tx.send(Some(opened.elapsed()));
        });
        Ok(SlowClient { closed })
    }

    /// How long the connection lived, once the server closed it (waiting at most `timeout`).
    pub async fn lifetime(&mut self, timeout: Duration) -> Option<Duration> {
        let r = tokio::time::timeout(timeout, self.closed.wait_for(|c| c.is_some())).await;
        match r {
            Ok(Ok(v)) => *v,
            _ => None,
        }
    }
}

/// Opens `n` slow clients of `addr`.
pub async fn open_many(
    addr: SocketAddr,
    path: &str,
    n: usize,
    every: Duration,
) -> anyhow::Result<Vec<SlowClient>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(SlowClient::open(addr, path, every).await?);
    }
    Ok(out)
}

/// Waits until every client in `clients` is closed (at most `timeout` in all); returns their
/// lifetimes, or an error naming how many are still open.
pub async fn lifetimes(
    clients: &mut [SlowClient],
    timeout: Duration,
) -> anyhow::Result<Vec<Duration>> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::with_capacity(clients.len());
    for (i, c) in clients.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.lifetime(left).await {
            Some(d) => out.push(d),
            None => anyhow::bail!("slow connection {i} is still open after {timeout:?}"),
        }
    }
    Ok(out)
}

/// Of `lived`: how many were closed at once (within 2 s: refused beyond a cap), and how many
/// lived about `deadline` or longer (cut by a header deadline; the client's clock starts a
/// little after the server's, hence the half second).
pub fn split(lived: &[Duration], deadline: Duration) -> (usize, usize) {
    let at_once = lived
        .iter()
        .filter(|d| **d < Duration::from_secs(2))
        .count();
    let held = lived
        .iter()
        .filter(|d| **d + Duration::from_millis(500) >= deadline)
        .count();
    (at_once, held)
}
