//! The data path: accept, read the first packet (bounded, with a deadline), pick a backend with
//! one table load, connect, and relay bytes both ways until either side closes or the session
//! is cancelled because its backend left the pool.
//!
//! SSL: the router is L4. An `SSLRequest` is forwarded to the chosen backend, so TLS runs end to
//! end; only when no backend can be chosen, or the chosen one does not answer, does the router
//! answer `N` itself and send a PostgreSQL `ErrorResponse` in plaintext.
//!
//! Dangerous: every open connection holds one of `max_connections` slots, so nothing before the
//! relay may wait without a deadline (a backend whose postmaster hangs still completes TCP
//! handshakes, and then answers nothing): connecting has `connect_timeout`, the backend's first
//! answer `backend_answer_timeout`, the client's packets and every write to it
//! `startup_timeout`. The relay itself has none: an idle session is legitimate, and TCP
//! keepalive on both sockets notices a peer that vanished.
//!
//! Cancel requests are read from the first packet here and handled in `crate::cancel`; while
//! a plaintext session starts, the relay reads the backend's cancel key for it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::cancel::{forward_cancel, KeyScan, Scan};
use crate::config::{Balance, ReadFallback};
use crate::state::{ConnectionSlot, Shared};
use crate::table::{Backend, Port};

const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;
const MIN_STARTUP: usize = 8;
const MAX_STARTUP: usize = 10_000;
const BUF: usize = 16 * 1024;
/// A `CancelRequest`: length, code, process id, and a secret of 4 bytes (protocol 3.0) up to
/// 256 (3.2).
const MIN_CANCEL: usize = 16;
const MAX_CANCEL: usize = 12 + 256;
/// TCP keepalive of relayed sockets: first probe after this much silence, ...
const KEEPALIVE_IDLE_SECS: u32 = 60;
/// ... then one every 10 s, and the connection is dropped after 6 unanswered (a peer that
/// vanished is noticed about two minutes after it went silent).
const KEEPALIVE_INTERVAL_SECS: u32 = 10;
const KEEPALIVE_PROBES: u32 = 6;

/// Turns TCP keepalive on for `socket` (a listener passes it on to the connections it
/// accepts).
pub fn keepalive(socket: &impl std::os::fd::AsFd) -> nix::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt};
    setsockopt(socket, sockopt::KeepAlive, &true)?;
    setsockopt(socket, sockopt::TcpKeepIdle, &KEEPALIVE_IDLE_SECS)?;
    setsockopt(socket, sockopt::TcpKeepInterval, &KEEPALIVE_INTERVAL_SECS)?;
    setsockopt(socket, sockopt::TcpKeepCount, &KEEPALIVE_PROBES)
}

thread_local! {
    /// This data thread's last relayed message and its spinner's state (`busy_poll_us`).
    static ACTIVITY: Activity = Activity::default();
}

#[derive(Default)]
struct Activity {
    last: std::cell::Cell<Option<std::time::Instant>>,
    spinning: std::cell::Cell<bool>,
    wake: std::rc::Rc<tokio::sync::Notify>,
}

fn note_activity() {
    ACTIVITY.with(|a| {
        a.last.set(Some(std::time::Instant::now()));
        if !a.spinning.get() {
            a.wake.notify_one();
        }
    });
}

/// `busy_poll_us`: after each relayed message, keep this data thread polling its sockets
/// (without sleeping in the kernel) for `window`, so the reply that usually follows within tens
/// of microseconds is picked up without a wake-up from idle. Costs CPU while it spins; runs on
/// the data thread's own event loop (not a spawned task).
pub async fn spin(window: Duration) {
    let wake = ACTIVITY.with(|a| a.wake.clone());
    loop {
        wake.notified().await;
        ACTIVITY.with(|a| a.spinning.set(true));
        while ACTIVITY.with(|a| a.last.get().is_some_and(|t| t.elapsed() < window)) {
            // Yielding makes the runtime poll its sockets without blocking before it comes back.
            tokio::task::yield_now().await;
        }
        ACTIVITY.with(|a| a.spinning.set(false));
    }
}

/// Why a connection got an error instead of a backend.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("{0}")]
    Protocol(&'static str),
    #[error("no backend: {0}")]
    NoBackend(String),
    #[error("could not connect to {0}: {1}")]
    Connect(String, String),
    /// The backend took the connection but did not answer in time (its postmaster hangs).
    #[error("backend {name} did not answer within {} ms", .1.as_millis(), name = .0)]
    NoAnswer(String, Duration),
}

impl Refusal {
    /// The `reason` label of `patrol_router_connections_rejected_total`, and the SQLSTATE.
    fn reason(&self) -> (&'static str, &'static str) {
        match self {
            Refusal::Protocol(_) => ("protocol", "08P01"),
            Refusal::NoBackend(_) => ("no_backend", "57P03"),
            Refusal::Connect(..) => ("connect", "57P03"),
            Refusal::NoAnswer(..) => ("backend_timeout", "57P03"),
        }
    }
}

/// The first packet a client sends (startup, SSL/GSSENC request or cancel).
struct FirstPacket {
    code: u32,
    bytes: BytesMut,
}

async fn read_first(client: &mut TcpStream) -> Result<FirstPacket, Refusal> {
    let len = client
        .read_u32()
        .await
        .map_err(|_| Refusal::Protocol("connection closed before the startup packet"))?
        as usize;
    if !(MIN_STARTUP..=MAX_STARTUP).contains(&len) {
        return Err(Refusal::Protocol("invalid startup packet length"));
    }
    let mut bytes = BytesMut::with_capacity(len);
    bytes.extend_from_slice(&(len as u32).to_be_bytes());
    bytes.resize(len, 0);
    client
        .read_exact(&mut bytes[4..])
        .await
        .map_err(|_| Refusal::Protocol("truncated startup packet"))?;
    let code = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    Ok(FirstPacket { code, bytes })
}

/// A FATAL ErrorResponse (SQLSTATE 57P03 cannot_connect_now unless given).
fn error_response(code: &str, message: &str) -> BytesMut {
    let e = ErrorResponse::new(vec![
        (b'S', "FATAL".into()),
        (b'V', "FATAL".into()),
        (b'C', code.into()),
        (b'M', message.into()),
    ]);
    let mut buf = BytesMut::new();
    if e.encode(&mut buf).is_err() {
        buf.clear();
    }
    buf
}

/// Serves one listener until `shutdown`.
pub async fn serve(
    shared: Arc<Shared>,
    port: Port,
    listener: TcpListener,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("{} port: accept failed: {e}", port.as_str());
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Every open connection counts, not only relayed sessions: connections still in their
        // startup phase or held for a leader hold a task and a socket too.
        let Some(slot) = ConnectionSlot::acquire(&shared, shared.cfg.max_connections) else {
            shared
                .metrics
                .rejected_total
                .with_label_values(&[port.as_str(), "max_connections"])
                .inc();
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            handle(shared, port, stream, peer).await;
            drop(slot);
        });
    }
}

async fn handle(shared: Arc<Shared>, port: Port, mut client: TcpStream, peer: SocketAddr) {
    let _ = client.set_nodelay(true);
    let deadline = shared.cfg.startup_timeout;
    let first = match timeout(deadline, read_first(&mut client)).await {
        Ok(Ok(p)) => p,
        Ok(Err(r)) => return reject_quietly(&shared, port, peer, &r),
        Err(_) => {
            return reject_quietly(&shared, port, peer, &Refusal::Protocol("startup timeout"))
        }
    };
    match first.code {
        CANCEL_REQUEST if (MIN_CANCEL..=MAX_CANCEL).contains(&first.bytes.len()) => {
            forward_cancel(&shared, port, first.bytes.freeze()).await;
        }
        CANCEL_REQUEST => {
            let r = Refusal::Protocol("invalid cancel request length");
            reject_quietly(&shared, port, peer, &r)
        }
        SSL_REQUEST | GSSENC_REQUEST => match pick(&shared, port).await {
            Ok(backend) => relay_with_ssl(&shared, port, client, peer, &first, backend).await,
            // No backend: decline encryption ourselves, read the real startup, then refuse.
            Err(r) => decline_and_refuse(&shared, port, client, peer, &r).await,
        },
        code if code >> 16 == 3 => match pick(&shared, port).await {
            Ok(backend) => relay_plain(&shared, port, client, &first.bytes, backend).await,
            Err(r) => refuse(&shared, port, client, &r).await,
        },
        _ => {
            let r = Refusal::Protocol("unsupported frontend protocol");
            refuse(&shared, port, client, &r).await
        }
    }
}

fn reject_quietly(shared: &Shared, port: Port, peer: SocketAddr, r: &Refusal) {
    tracing::debug!(
        "{} port: closing connection from {peer}: {r}",
        port.as_str()
    );
    count(shared, port, r);
}

fn count(shared: &Shared, port: Port, r: &Refusal) {
    shared
        .metrics
        .rejected_total
        .with_label_values(&[port.as_str(), r.reason().0])
        .inc();
    if let Refusal::NoAnswer(name, _) = r {
        shared.warn_limited(
            &format!("no answer from {name}"),
            format!(
                "{} port: {r} (is its postmaster hung?); its clients get an error",
                port.as_str()
            ),
        );
    }
}

/// The `ErrorResponse` a refused client gets.
fn refusal(shared: &Shared, port: Port, r: &Refusal) -> BytesMut {
    let msg = format!(
        "patrol-router: cluster \"{}\" {} port: {r}",
        shared.cfg.scope,
        port.as_str()
    );
    error_response(r.reason().1, &msg)
}

async fn refuse(shared: &Shared, port: Port, mut client: TcpStream, r: &Refusal) {
    count(shared, port, r);
    let msg = refusal(shared, port, r);
    let _ = timeout(shared.cfg.startup_timeout, async {
        client.write_all(&msg).await?;
        client.shutdown().await
    })
    .await;
}

/// Writes to a client before the relay, within `startup_timeout` (a client that reads nothing
/// cannot hold its slot). False when it failed or timed out.
async fn send_client(shared: &Shared, client: &mut TcpStream, bytes: &[u8]) -> bool {
    matches!(
        timeout(shared.cfg.startup_timeout, client.write_all(bytes)).await,
        Ok(Ok(()))
    )
}

/// Answers an SSL/GSSENC request with `N` (no encryption), reads the startup packet that
/// follows and refuses it with `r`. A client that requires encryption closes instead.
async fn decline_and_refuse(
    shared: &Shared,
    port: Port,
    mut client: TcpStream,
    peer: SocketAddr,
    r: &Refusal,
) {
    if !send_client(shared, &mut client, b"N").await {
        return reject_quietly(shared, port, peer, r);
    }
    match timeout(shared.cfg.startup_timeout, read_first(&mut client)).await {
        Ok(Ok(p)) if p.code >> 16 == 3 => refuse(shared, port, client, r).await,
        Ok(Ok(_)) => {
            let bad = Refusal::Protocol("bad startup after SSL request");
            reject_quietly(shared, port, peer, &bad)
        }
        _ => reject_quietly(shared, port, peer, r),
    }
}

/// Chooses a backend with one table load; the write port holds up to `hold` for a leader.
async fn pick(shared: &Shared, port: Port) -> Result<Backend, Refusal> {
    match port {
        Port::Write => {
            let mut rx = shared.table_tx.subscribe();
            let deadline = tokio::time::Instant::now() + shared.cfg.hold;
            loop {
                let t = shared.table.load();
                if let Some(w) = &t.writer {
                    return Ok(w.clone());
                }
                let reason = t.writer_reason.clone();
                // A standby cluster has no writer to wait for.
                if t.standby_cluster {
                    return Err(Refusal::NoBackend(reason));
                }
                drop(t);
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return Err(Refusal::NoBackend(reason)) },
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(Refusal::NoBackend(format!("{reason} (waited {} ms)", shared.cfg.hold.as_millis())));
                    }
                }
            }
        }
        Port::Read => {
            let t = shared.table.load();
            let turn = shared.rr.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize;
            let best = choose(&t.readers, shared.cfg.balance, turn, |b| {
                shared.sessions.count(Port::Read, b)
            });
            match (best, shared.cfg.read_fallback, &t.writer) {
                (Some(b), _, _) => Ok(b.clone()),
                (None, ReadFallback::Leader, Some(w)) => Ok(w.clone()),
                _ => Err(Refusal::NoBackend("no replica within the lag limit".into())),
            }
        }
    }
}

/// The read backend for a new connection: `turn` rotates (round robin, and ties of least
/// connections); `sessions` counts a backend's open read sessions.
fn choose(
    readers: &[Backend],
    balance: Balance,
    turn: usize,
    sessions: impl Fn(&str) -> usize,
) -> Option<&Backend> {
    let n = readers.len();
    if n == 0 {
        return None;
    }
    match balance {
        Balance::RoundRobin => readers.get(turn % n),
        Balance::LeastConnections => (0..n)
            .map(|k| &readers[(turn + k) % n])
            .min_by_key(|b| sessions(&b.name)),
    }
}

async fn connect(shared: &Shared, b: &Backend) -> Result<TcpStream, Refusal> {
    match timeout(shared.cfg.connect_timeout, TcpStream::connect(b.addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            let _ = keepalive(&s);
            Ok(s)
        }
        Ok(Err(e)) => Err(Refusal::Connect(b.name.clone(), e.to_string())),
        Err(_) => Err(Refusal::Connect(b.name.clone(), "timed out".into())),
    }
}

async fn relay_plain(
    shared: &Shared,
    port: Port,
    client: TcpStream,
    first: &[u8],
    backend: Backend,
) {
    let mut server = match connect(shared, &backend).await {
        Ok(s) => s,
        Err(r) => return refuse(shared, port, client, &r).await,
    };
    let joined = join(shared, &client, &server);
    let limit = shared.cfg.backend_answer_timeout;
    let failed = match timeout(limit, server.write_all(first)).await {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(Refusal::Connect(
            backend.name.clone(),
            format!("sending the startup packet: {e}"),
        )),
        Err(_) => Some(Refusal::NoAnswer(backend.name.clone(), limit)),
    };
    if let Some(r) = failed {
        drop(joined);
        return refuse(shared, port, client, &r).await;
    }
    // The backend's first messages must start within the answer deadline; in user space the
    // relay also reads the session's cancel key from them.
    let watch = Watch {
        key: joined.is_none(),
        first_answer: Some(limit),
    };
    relay(shared, port, client, server, backend, joined, watch).await;
}

/// Hands the pair to the kernel relay when `splice` is on (before anything is in flight).
fn join<'a>(
    shared: &'a Shared,
    client: &TcpStream,
    server: &TcpStream,
) -> Option<crate::kernel::splice::Joined<'a>> {
    let splicer = shared.splicer.as_ref()?;
    match splicer.join(client, server) {
        Ok(j) => Some(j),
        Err(e) => {
            tracing::debug!("splice: relaying this session in user space: {e}");
            None
        }
    }
}

/// Forwards the SSL/GSSENC request to the backend and its one-byte answer to the client; TLS
/// then runs end to end through the relay. A backend that does not answer within
/// `backend_answer_timeout` (or closes) is treated as one that cannot be reached: the router
/// declines encryption itself and refuses the startup packet that follows.
async fn relay_with_ssl(
    shared: &Shared,
    port: Port,
    mut client: TcpStream,
    peer: SocketAddr,
    first: &FirstPacket,
    backend: Backend,
) {
    let mut server = match connect(shared, &backend).await {
        Ok(s) => s,
        Err(r) => return decline_and_refuse(shared, port, client, peer, &r).await,
    };
    let limit = shared.cfg.backend_answer_timeout;
    let asked = async {
        server.write_all(&first.bytes).await?;
        server.read_u8().await
    };
    let answer = match timeout(limit, asked).await {
        Ok(Ok(a)) => a,
        Ok(Err(e)) => {
            let r = Refusal::Connect(
                backend.name.clone(),
                format!("no answer to the request ({e})"),
            );
            return decline_and_refuse(shared, port, client, peer, &r).await;
        }
        Err(_) => {
            let r = Refusal::NoAnswer(backend.name.clone(), limit);
            return decline_and_refuse(shared, port, client, peer, &r).await;
        }
    };
    let joined = join(shared, &client, &server);
    if !send_client(shared, &mut client, &[answer]).await {
        return;
    }
    // SSL declined by the server: the session goes on in plaintext (a startup packet next), so
    // its cancel key can be read. (After a declined GSSENC request a client may still ask for
    // SSL on the same connection, and the answer byte would not parse as a message.)
    let watch = Watch {
        key: joined.is_none() && first.code == SSL_REQUEST && answer == b'N',
        first_answer: None,
    };
    relay(shared, port, client, server, backend, joined, watch).await;
}

/// What the relay watches while a session starts.
#[derive(Debug, Clone, Copy, Default)]
struct Watch {
    /// The backend speaks plaintext protocol messages from the first byte: record its
    /// `BackendKeyData` (user-space relay only).
    key: bool,
    /// The backend's first bytes must arrive within this long (its startup packet was sent).
    first_answer: Option<Duration>,
}

/// Copies both ways with buffers allocated only while data flows, until either side closes or
/// the session is cancelled.
async fn relay(
    shared: &Shared,
    port: Port,
    client: TcpStream,
    server: TcpStream,
    backend: Backend,
    joined: Option<crate::kernel::splice::Joined<'_>>,
    watch: Watch,
) {
    let (id, cancel) = shared.sessions.register(port, &backend);
    let m = &shared.metrics;
    let labels = [port.as_str(), backend.name.as_str()];
    m.sessions_total.with_label_values(&labels).inc();
    let current = m.sessions_current.with_label_values(&labels);
    current.inc();
    // The backend may have left the pool between the table load and the registration.
    let t = shared.table.load();
    let still_valid = match port {
        Port::Write => t.writer.as_ref().is_some_and(|w| w.name == backend.name),
        Port::Read => {
            t.readers.iter().any(|r| r.name == backend.name)
                || t.writer.as_ref().is_some_and(|w| w.name == backend.name)
        }
    };
    drop(t);
    if still_valid {
        let up = m
            .bytes_total
            .with_label_values(&[port.as_str(), "to_backend"]);
        let down = m
            .bytes_total
            .with_label_values(&[port.as_str(), "to_client"]);
        let ended = if let Some(joined) = joined {
            match watch.first_answer {
                Some(limit) if !crate::kernel::splice::answered(&server, limit).await => {
                    drop(joined);
                    let r = Refusal::NoAnswer(backend.name.clone(), limit);
                    refuse(shared, port, client, &r).await;
                    true
                }
                _ => {
                    let carried = joined.run(client, server, &cancel).await;
                    up.inc_by(carried.to_backend);
                    down.inc_by(carried.to_client);
                    !cancel.is_cancelled()
                }
            }
        } else {
            let spin = !shared.cfg.busy_poll.is_zero();
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let from_server = async {
                let (mut sr, mut cw) = (sr, cw);
                if (watch.key || watch.first_answer.is_some())
                    && !watch_start(shared, port, &backend, id, &mut sr, &mut cw, &down, watch)
                        .await
                {
                    return;
                }
                pump(sr, cw, &down, spin).await
            };
            tokio::select! {
                _ = pump(cr, sw, &up, spin) => true,
                _ = from_server => true,
                _ = cancel.cancelled() => false,
            }
        };
        if !ended {
            tracing::debug!(
                "{} session to {} closed: backend left the pool",
                port.as_str(),
                backend.name
            );
        }
    }
    current.dec();
    shared.sessions.unregister(id);
}

/// Relays the backend's first messages while watching them: the first bytes must arrive within
/// `watch.first_answer` (else the client gets an `ErrorResponse` and the session ends), and a
/// `BackendKeyData` is recorded as the session's cancel key. Returns false when the session is
/// over; true to go on relaying.
#[allow(clippy::too_many_arguments)]
async fn watch_start(
    shared: &Shared,
    port: Port,
    backend: &Backend,
    id: u64,
    from: &mut OwnedReadHalf,
    to: &mut OwnedWriteHalf,
    counter: &prometheus::IntCounter,
    watch: Watch,
) -> bool {
    let mut scan = KeyScan::default();
    let mut first = watch.first_answer;
    loop {
        let mut buf = Vec::with_capacity(BUF);
        let read = match first.take() {
            Some(limit) => match timeout(limit, from.read_buf(&mut buf)).await {
                Ok(r) => r,
                Err(_) => {
                    let r = Refusal::NoAnswer(backend.name.clone(), limit);
                    count(shared, port, &r);
                    let msg = refusal(shared, port, &r);
                    let _ = timeout(shared.cfg.startup_timeout, to.write_all(&msg)).await;
                    return false;
                }
            },
            None => from.read_buf(&mut buf).await,
        };
        let n = match read {
            Ok(0) => {
                let _ = to.shutdown().await;
                return false;
            }
            Ok(n) => n,
            Err(_) => return false,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            return false;
        }
        counter.inc_by(n as u64);
        if !watch.key {
            return true;
        }
        match scan.feed(&buf[..n]) {
            Scan::More => {}
            Scan::Key(key) => {
                shared.sessions.set_key(id, &key);
                return true;
            }
            Scan::Done => return true,
        }
    }
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    counter: &prometheus::IntCounter,
    spin_enabled: bool,
) {
    loop {
        if from.readable().await.is_err() {
            return;
        }
        // The socket is readable: the read below completes at once. Reading through
        // `AsyncRead` (not `try_read`) lets tokio clear the readiness after a short read, which
        // saves the extra `recv` that would only return EAGAIN.
        let mut buf = Vec::with_capacity(BUF);
        match from.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                counter.inc_by(n as u64);
                if spin_enabled {
                    note_activity();
                }
            }
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Overrides};
    use crate::table::Table;

    #[tokio::test]
    async fn a_standby_cluster_refuses_writes_at_once_with_its_reason() {
        let o = Overrides {
            scope: Some("c".into()),
            ..Overrides::default()
        };
        let mut cfg = Config::load(None, &o).expect("valid");
        // Long enough that a client held for a writer would time the test out.
        cfg.hold = Duration::from_secs(3600);
        let shared = Shared::new(Arc::new(cfg));
        let reason = "cluster is a standby cluster: no writable primary \
                      (standby leader a replicates from a remote primary)";
        shared.table.store(Arc::new(Table {
            standby_cluster: true,
            writer_reason: reason.into(),
            ..Table::default()
        }));
        let picked = timeout(Duration::from_secs(60), pick(&shared, Port::Write))
            .await
            .expect("no hold for a writer in a standby cluster");
        let Err(r) = picked else {
            panic!("a standby cluster has no writer: {picked:?}");
        };
        let msg = refusal(&shared, Port::Write, &r);
        let body = String::from_utf8_lossy(&msg[5..]);
        assert!(
            body.contains(&format!("cluster \"c\" write port: no backend: {reason}")),
            "{body}"
        );
    }

    #[test]
    fn error_response_is_a_valid_message() {
        let b = error_response("57P03", "no leader");
        assert_eq!(b[0], b'E');
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        assert_eq!(len + 1, b.len());
        let body = String::from_utf8_lossy(&b[5..]);
        assert!(
            body.contains("57P03") && body.contains("no leader"),
            "{body}"
        );
    }

    #[test]
    fn read_balancing() {
        let backend = |n: &str| Backend {
            name: n.into(),
            addr: "127.0.0.1:1".parse().expect("addr"),
        };
        let readers = [backend("a"), backend("b"), backend("c")];
        let open = |n: &str| match n {
            "a" => 5,
            "b" => 1,
            _ => 1,
        };
        let pick = |balance, turn| choose(&readers, balance, turn, open).map(|b| b.name.clone());
        // Least connections: never "a"; the tie between "b" and "c" rotates with the turn.
        let least: Vec<_> = (0..4)
            .filter_map(|t| pick(Balance::LeastConnections, t))
            .collect();
        assert_eq!(least, ["b", "b", "c", "b"]);
        // Round robin: each in turn, whatever it carries.
        let rr: Vec<_> = (0..4)
            .filter_map(|t| pick(Balance::RoundRobin, t))
            .collect();
        assert_eq!(rr, ["a", "b", "c", "a"]);
        assert!(choose(&[], Balance::RoundRobin, 0, open).is_none());
    }
}
