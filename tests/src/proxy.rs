//! `TcpProxy`: a TCP forwarder on a loopback port in front of one server, for network faults
//! the server does not cause: `freeze` stops moving bytes both ways while every connection
//! stays open (a stalled network: the sender's buffers fill, nothing is lost), `thaw` moves them
//! again, and `cut` closes every connection at once (a lost stream); new connections are
//! accepted throughout. Its tasks run on the runtime that started it and stop on drop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    frozen: bool,
    /// Bumped by `cut`: connections of an older generation close.
    generation: u64,
}

/// A running proxy; see the module doc.
#[derive(Debug)]
pub struct TcpProxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    accepted: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a port of 127.0.0.1 the kernel chooses and forwards each connection to
    /// `target` (connecting when the client connects).
    pub async fn start(target: SocketAddr) -> anyhow::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .context("binding the proxy's port")?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(State {
            frozen: false,
            generation: 0,
        });
        let accepted = Arc::new(AtomicU64::new(0));
        let accept = tokio::spawn({
            let state = state.clone();
            let accepted = accepted.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(relay(client, target, state.subscribe()));
                }
            }
        });
        Ok(TcpProxy {
            addr,
            state,
            accepted,
            accept,
        })
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops moving bytes in both directions; connections stay open.
    pub fn freeze(&self) {
        self.state.send_modify(|s| s.frozen = true);
    }

    /// Moves bytes again after [`TcpProxy::freeze`], the held ones first.
    pub fn thaw(&self) {
        self.state.send_modify(|s| s.frozen = false);
    }

    /// Closes every open connection (both sides); later connections are served as usual.
    pub fn cut(&self) {
        self.state.send_modify(|s| s.generation += 1);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

async fn relay(client: TcpStream, target: SocketAddr, mut state: watch::Receiver<State>) {
    let generation = state.borrow().generation;
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pump(client_read, server_write, state.clone()) => {}
        _ = pump(server_read, client_write, state.clone()) => {}
        _ = state.wait_for(|s| s.generation != generation) => {}
    }
    // Dropping the halves closes both connections.
}

/// Copies `from` to `to` while not frozen. Bytes read just before a freeze are held until the
/// thaw, so none move while frozen.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut state: watch::Receiver<State>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if state.wait_for(|s| !s.frozen).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if state.wait_for(|s| !s.frozen).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
