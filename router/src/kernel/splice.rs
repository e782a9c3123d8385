//! Kernel splicing of relayed sessions (`splice: true`): both sockets of a session go into a
//! BPF sockhash whose stream-verdict program redirects every received segment to the other
//! socket's send path, so established sessions are relayed inside the kernel and the data
//! threads wake only for a session's end.
//!
//! The program is eleven instructions, assembled here; the map is keyed by the receiving
//! socket's cookie and holds the peer socket. Loading it needs `CAP_BPF` and `CAP_NET_ADMIN`
//! (root) and Linux 5.13 or later (`BPF_SK_SKB_VERDICT`); without them the router says so once
//! and relays in user space. The program is assembled with `super::bpf`; the system calls,
//! `bpf(2)` and the socket options read below, are in `super::sys`.
//!
//! A spliced socket must not stay in the data threads' epoll: the kernel still signals "data
//! arrived" for every redirected segment, which would wake a thread per message (the cost
//! splicing removes). So the pair leaves tokio's reactor and is watched, for its end only
//! (`EPOLLRDHUP`, errors, hang-ups), by one epoll instance of its own that the control loop
//! polls. At the end, whatever the kernel still holds for the other side is sent before its
//! sending side is shut down: the bytes each socket received must all be in the other's send
//! queue (`tcpi_bytes_received` against `tcpi_bytes_acked` plus `SIOCOUTQ`), so a server's
//! last `ErrorResponse` reaches the client.

use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::bpf::{insn, Insn};
use super::sys::{self, Map};

// From include/uapi/linux/bpf.h.
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
const BPF_SK_SKB_VERDICT: u32 = 38;
const BPF_FUNC_GET_SOCKET_COOKIE: i32 = 46;
const BPF_FUNC_SK_REDIRECT_HASH: i32 = 72;

/// `key = bpf_get_socket_cookie(skb); return bpf_sk_redirect_hash(skb, map, &key, 0);`
fn program(map: RawFd) -> [Insn; 11] {
    let [ld0, ld1] = super::bpf::ld_map(2, map);
    [
        insn(0xbf, 6, 1, 0, 0),                          // r6 = r1 (skb)
        insn(0x85, 0, 0, 0, BPF_FUNC_GET_SOCKET_COOKIE), // r0 = cookie(skb)
        insn(0x7b, 10, 0, -8, 0),                        // *(u64 *)(r10 - 8) = r0
        insn(0xbf, 1, 6, 0, 0),                          // r1 = skb
        ld0,                                             // r2 = map (ld_imm64, 2 slots)
        ld1,                                             //
        insn(0xbf, 3, 10, 0, 0),                         // r3 = r10
        insn(0x07, 3, 0, 0, -8),                         // r3 += -8 (&key)
        insn(0xb7, 4, 0, 0, 0),                          // r4 = 0 (flags: egress)
        insn(0x85, 0, 0, 0, BPF_FUNC_SK_REDIRECT_HASH),  // r0 = redirect
        insn(0x95, 0, 0, 0, 0),                          // exit
    ]
}

/// The loaded program, its sockhash, and the epoll instance that watches spliced sessions for
/// their end. Dropping it detaches everything (sockets still in the map are released by the
/// kernel).
pub struct Splicer {
    map: Map,
    _prog: OwnedFd,
    ends: Epoll,
    waiting: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next: AtomicU64,
}

/// How long a closing session waits for the kernel to hand over what it still holds, without
/// progress (the receiving peer acknowledging, or the kernel queueing more for it): a slow
/// client still reading a large result gets all of it, a stuck one does not hold the session.
const DRAIN: Duration = Duration::from_secs(1);

impl Splicer {
    /// Creates the map for `sessions` concurrent sessions and loads and attaches the program.
    pub fn new(sessions: usize) -> io::Result<Splicer> {
        let map = Map::create(
            sys::BPF_MAP_TYPE_SOCKHASH,
            8,
            4,
            sessions.saturating_mul(2).max(2),
            0,
        )?;
        let prog = super::bpf::load(
            BPF_PROG_TYPE_SK_SKB,
            0,
            &program(map.raw_fd()),
            "patrol_splice",
        )?;
        sys::prog_attach(map.as_fd(), prog.as_fd(), BPF_SK_SKB_VERDICT)?;
        let ends = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?;
        Ok(Splicer {
            map,
            _prog: prog,
            ends,
            waiting: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        })
    }

    fn update(&self, key: u64, fd: RawFd) -> io::Result<()> {
        self.map
            .update(&key.to_ne_bytes(), &(fd as u32).to_ne_bytes())
    }

    fn delete(&self, key: u64) {
        let _ = self.map.delete(&key.to_ne_bytes());
    }

    /// From now on, whatever `client` receives is sent on `server` and the reverse, in the
    /// kernel. Call it before anything can be in flight on either socket; then hand both to
    /// [`Joined::run`].
    pub fn join(&self, client: &TcpStream, server: &TcpStream) -> io::Result<Joined<'_>> {
        let (fc, fs) = (client.as_raw_fd(), server.as_raw_fd());
        let (kc, ks) = (sys::socket_cookie(client)?, sys::socket_cookie(server)?);
        self.update(kc, fs)?;
        if let Err(e) = self.update(ks, fc) {
            self.delete(kc);
            return Err(e);
        }
        Ok(Joined {
            splicer: self,
            keys: [kc, ks],
        })
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<()>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes the session of every socket that reached its end. Runs for the router's life.
    pub async fn watch_ends(&self) -> io::Result<()> {
        let ready = sys::register_readable(self.ends.0.as_fd())?;
        let mut events = [EpollEvent::empty(); 64];
        loop {
            let mut guard = ready.readable().await?;
            let n = self
                .ends
                .wait(&mut events, EpollTimeout::ZERO)
                .map_err(io::Error::from)?;
            if n == 0 {
                guard.clear_ready();
                continue;
            }
            let mut waiting = self.waiting();
            for e in &events[..n] {
                if let Some(tx) = waiting.remove(&e.data()) {
                    let _ = tx.send(());
                }
            }
        }
    }
}

/// A joined pair; dropping it takes both sockets out of the map.
pub struct Joined<'a> {
    splicer: &'a Splicer,
    keys: [u64; 2],
}

/// Bytes a finished spliced session carried, each way.
pub struct Carried {
    pub to_backend: u64,
    pub to_client: u64,
}

impl Joined<'_> {
    /// Waits for either end to close (or `cancel`), then closes the session: on a close, what
    /// the kernel still holds for the other side is sent first (while it makes progress, see
    /// [`DRAIN`]); on `cancel`, both are cut at once.
    pub async fn run(
        self,
        client: TcpStream,
        server: TcpStream,
        cancel: &CancellationToken,
    ) -> Carried {
        let (client, server) = match (client.into_std(), server.into_std()) {
            (Ok(c), Ok(s)) => (c, s),
            _ => {
                return Carried {
                    to_backend: 0,
                    to_client: 0,
                }
            }
        };
        let token = self.splicer.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.splicer.waiting().insert(token, tx);
        let flags = EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT;
        let watched = [&client, &server].iter().all(|s| {
            self.splicer
                .ends
                .add(s, EpollEvent::new(flags, token))
                .is_ok()
        });
        let cancelled = if watched {
            tokio::select! {
                _ = rx => false,
                _ = cancel.cancelled() => true,
            }
        } else {
            true
        };
        self.splicer.waiting().remove(&token);
        for s in [&client, &server] {
            let _ = self.splicer.ends.delete(s);
        }
        if cancelled {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        } else {
            for (from, to, to_is_server) in [(&client, &server, true), (&server, &client, false)] {
                drain(from, to, to_is_server).await;
                let _ = to.shutdown(Shutdown::Write);
            }
        }
        Carried {
            to_backend: sys::tcp_info(&client).map_or(0, |i| data_received(&i)),
            to_client: sys::tcp_info(&server).map_or(0, |i| data_received(&i)),
        }
    }
}

impl Drop for Joined<'_> {
    fn drop(&mut self) {
        for k in self.keys {
            self.splicer.delete(k);
        }
    }
}

/// Waits until `server`, a spliced session's backend socket, has received its first data, at
/// most `limit`; false when nothing came. That answer goes straight to the client in the
/// kernel, so its arrival is read from `TCP_INFO`, polled from 1 ms backing off to 50 ms (a
/// backend usually answers a startup packet within a few milliseconds). A socket that closed
/// or failed counts as answered: the relay then sees the end.
pub async fn answered(server: &TcpStream, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(1);
    loop {
        match sys::tcp_info(server) {
            Ok(i) if i.tcpi_bytes_received == 0 && i.tcpi_state == ESTABLISHED => {}
            _ => return true,
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        tokio::time::sleep(pause.min(left)).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// TCP states (include/net/tcp_states.h).
const ESTABLISHED: u8 = 1;
const TIME_WAIT: u8 = 6;
const CLOSE: u8 = 7;
const CLOSE_WAIT: u8 = 8;
const LAST_ACK: u8 = 9;
const CLOSING: u8 = 11;

/// Data bytes a socket received: `bytes_received` counts sequence numbers, and a received FIN
/// takes one. A socket in CLOSE was reset, after a FIN or not: counting a FIN there can only
/// miss a last single byte of a session that was reset anyway.
fn data_received(i: &libc::tcp_info) -> u64 {
    let fin = [CLOSE_WAIT, LAST_ACK, CLOSING, TIME_WAIT, CLOSE].contains(&i.tcpi_state);
    i.tcpi_bytes_received.saturating_sub(u64::from(fin))
}

/// Waits until everything `from` received is in `to`'s send queue, or nothing moved for
/// [`DRAIN`]. Polls at 1 ms, backing off to 50 ms while a slow peer reads.
async fn drain(from: &impl AsFd, to: &impl AsFd, to_is_server: bool) {
    let mut last = None;
    let mut still_since = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(1);
    while let Some(progress) = pending(from, to, to_is_server) {
        let now = tokio::time::Instant::now();
        if last != Some(progress) {
            last = Some(progress);
            still_since = now;
        } else if now - still_since >= DRAIN {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// When `from` received data that is not yet in `to`'s send queue (while `to` can still send):
/// how far `to` has got (bytes acknowledged, bytes queued), to tell progress; `None` once all
/// of it is queued. Before the join the router forwarded exactly what it read, so the counts
/// match once the kernel caught up. On the side the router connected from, `bytes_acked` also
/// counts the SYN.
fn pending(from: &impl AsFd, to: &impl AsFd, to_is_server: bool) -> Option<(u64, u64)> {
    let (Ok(f), Ok(t)) = (sys::tcp_info(from), sys::tcp_info(to)) else {
        return None;
    };
    if t.tcpi_state != ESTABLISHED && t.tcpi_state != CLOSE_WAIT {
        return None;
    }
    let queued = sys::outq(to).unwrap_or(0);
    let written = (t.tcpi_bytes_acked + queued).saturating_sub(u64::from(to_is_server));
    (data_received(&f) > written).then_some((t.tcpi_bytes_acked, queued))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Aborts the end-watcher task when a test ends.
    struct AbortOnDrop(tokio::task::JoinHandle<io::Result<()>>);

    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }

    /// A loaded splicer with its end-watcher running, and two connections through a would-be
    /// router: the application's `client` end and the router's `router_client` end, the
    /// router's `router_server` end (the side it connected) and PostgreSQL's `server` end.
    struct Rig {
        splicer: Arc<Splicer>,
        _watcher: AbortOnDrop,
        client: TcpStream,
        router_client: TcpStream,
        router_server: TcpStream,
        server: TcpStream,
    }

    /// `None` (and a note) unless root: loading the program needs it; CI runs as root.
    async fn rig() -> Option<Rig> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: loading the kernel relay needs root (CI runs as root)");
            return None;
        }
        let splicer = Arc::new(Splicer::new(16).expect("load the program"));
        let watcher = {
            let s = splicer.clone();
            AbortOnDrop(tokio::spawn(async move { s.watch_ends().await }))
        };
        let (client, router_client) = pair().await;
        let (router_server, server) = pair().await;
        Some(Rig {
            splicer,
            _watcher: watcher,
            client,
            router_client,
            router_server,
            server,
        })
    }

    /// A connected pair of loopback sockets: (the outside end, the router's end).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let outside = TcpStream::connect(l.local_addr().expect("addr"))
            .await
            .expect("connect");
        let (inside, _) = l.accept().await.expect("accept");
        (outside, inside)
    }

    /// The kernel relays both ways; the server's last bytes before it closes reach the client,
    /// then the client sees the end; the byte counts are right.
    #[tokio::test]
    async fn relays_both_ways_and_hands_over_the_last_bytes() {
        let Some(rig) = rig().await else { return };
        let cancel = CancellationToken::new();
        let joined = rig.splicer.join(&rig.router_client, &rig.router_server);
        let session = joined
            .expect("join")
            .run(rig.router_client, rig.router_server, &cancel);
        let (mut client, mut server) = (rig.client, rig.server);
        let big = vec![7u8; 3 << 20];
        client.write_all(b"hello server").await.expect("write");
        let mut buf = [0u8; 12];
        let (mut client_read, _client_write) = client.split();
        let server_side = async {
            server.read_exact(&mut buf).await.expect("read");
            server.write_all(&big).await.expect("write 3 MB");
            server.write_all(b"last words").await.expect("write");
            drop(server);
        };
        let client_side = async {
            let mut got = Vec::new();
            client_read
                .read_to_end(&mut got)
                .await
                .expect("read to the end");
            got
        };
        let ends = async { tokio::join!(server_side, client_side).1 };
        let (carried, got) = tokio::join!(session, ends);
        assert_eq!(&buf, b"hello server");
        assert_eq!(got.len(), big.len() + 10);
        assert!(got.ends_with(b"last words"));
        assert_eq!(carried.to_backend, 12);
        assert_eq!(carried.to_client, big.len() as u64 + 10);
    }

    /// Cancelling (the backend left the pool) cuts both ends at once, and nothing more is
    /// relayed.
    #[tokio::test]
    async fn cancel_cuts_both_ends() {
        let Some(rig) = rig().await else { return };
        let cancel = CancellationToken::new();
        let joined = rig.splicer.join(&rig.router_client, &rig.router_server);
        let session = joined
            .expect("join")
            .run(rig.router_client, rig.router_server, &cancel);
        let (mut client, mut server) = (rig.client, rig.server);
        let ends = async {
            client.write_all(b"ping").await.expect("write");
            let mut buf = [0u8; 4];
            server.read_exact(&mut buf).await.expect("read");
            cancel.cancel();
            let mut rest = Vec::new();
            let c = client.read_to_end(&mut rest).await;
            let s = server.read_to_end(&mut rest).await;
            (c.map_or(0, |n| n), s.map_or(0, |n| n), rest)
        };
        let (_, (c, s, rest)) = tokio::join!(session, ends);
        assert_eq!((c, s), (0, 0), "both ends see the end and nothing else");
        assert!(rest.is_empty());
    }

    /// A server that sends a large last chunk and closes, to a client that reads it slowly
    /// (for longer than [`DRAIN`]): the client still gets every byte.
    #[tokio::test]
    async fn a_slow_client_gets_everything_after_the_server_closed() {
        let Some(rig) = rig().await else { return };
        let cancel = CancellationToken::new();
        let joined = rig.splicer.join(&rig.router_client, &rig.router_server);
        let session = joined
            .expect("join")
            .run(rig.router_client, rig.router_server, &cancel);
        let (mut client, mut server) = (rig.client, rig.server);
        let total = 8usize << 20;
        let server_side = async {
            let chunk = vec![1u8; 1 << 20];
            for _ in 0..8 {
                server.write_all(&chunk).await.expect("write");
            }
            drop(server);
        };
        let client_side = async {
            let mut got = 0usize;
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match client.read(&mut buf).await.expect("read") {
                    0 => break got,
                    n => got += n,
                }
                // At least 128 reads of at most 64 kB, 15 ms apart: longer than DRAIN.
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        };
        let (_, (), got) = tokio::join!(session, server_side, client_side);
        assert_eq!(got, total);
    }
}
