//! Cancel requests. A client cancels a query on a new connection carrying the session's
//! backend process id and secret key. The relay reads that key from the backend's
//! `BackendKeyData` ([`KeyScan`]) when the session is plaintext and relayed in user space, and
//! records it in the session registry; a `CancelRequest` carrying it goes to that one backend
//! ([`forward_cancel`]). Any other (TLS, GSS-encrypted or kernel-relayed sessions, clients
//! redirected at connect time, or a session made through another router) goes to every backend
//! that may hold it ([`cancel_fanout`]).

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::state::Shared;
use crate::table::{Backend, Port};

/// What [`KeyScan::feed`] found so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// Keep feeding.
    More,
    /// The body of the backend's `BackendKeyData`: process id and secret key, as a
    /// `CancelRequest` carries them after its code.
    Key(Vec<u8>),
    /// No key will come: the backend is ready for queries, sent an error, or the stream is not
    /// the startup messages expected.
    Done,
}

/// Reads a backend's messages from its first byte (after a plaintext startup packet) up to its
/// `BackendKeyData`, across reads of any size. Only the key's body is kept.
#[derive(Debug, Default)]
pub struct KeyScan {
    header: [u8; 5],
    /// Bytes of `header` read (5 while in a body).
    have: usize,
    body_left: usize,
    key: Vec<u8>,
    seen: usize,
}

/// Stop looking for the key after this much of the stream (authentication exchanges and
/// parameter reports are far smaller).
const SCAN_LIMIT: usize = 1 << 20;
/// A longer message is not one of the startup messages (the largest, a GSSAPI token, is at
/// most 64 kB).
const MAX_MESSAGE: usize = 1 << 17;

impl KeyScan {
    pub fn feed(&mut self, mut data: &[u8]) -> Scan {
        self.seen += data.len();
        if self.seen > SCAN_LIMIT {
            return Scan::Done;
        }
        while !data.is_empty() {
            if self.have < 5 {
                let take = (5 - self.have).min(data.len());
                self.header[self.have..self.have + take].copy_from_slice(&data[..take]);
                self.have += take;
                data = &data[take..];
                if self.have < 5 {
                    break;
                }
                let h = self.header;
                let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                // Authentication, parameter status, key, notice, protocol negotiation: the
                // messages that may come before the key. Anything else ends the search.
                let body = match (h[0], len.checked_sub(4)) {
                    (b'K', Some(body)) if (8..=4 + 256).contains(&body) => body,
                    (b'R' | b'S' | b'N' | b'v', Some(body)) if body <= MAX_MESSAGE => body,
                    _ => return Scan::Done,
                };
                self.body_left = body;
                if body == 0 {
                    self.have = 0;
                }
                continue;
            }
            let take = self.body_left.min(data.len());
            if self.header[0] == b'K' {
                self.key.extend_from_slice(&data[..take]);
            }
            self.body_left -= take;
            data = &data[take..];
            if self.body_left == 0 {
                self.have = 0;
                if self.header[0] == b'K' {
                    return Scan::Key(std::mem::take(&mut self.key));
                }
            }
        }
        Scan::More
    }
}

/// Sends a `CancelRequest` to the backend of the session whose key it carries, when the relay
/// saw that key; otherwise to every backend that may hold the session ([`cancel_fanout`]).
/// PostgreSQL ignores keys it does not know. The sends run at once, each within
/// `connect_timeout` and `backend_answer_timeout`.
pub async fn forward_cancel(shared: &Shared, port: Port, packet: Bytes) {
    let (targets, how) = match shared.sessions.holder(&packet[8..]) {
        Some(b) => (vec![b], "session"),
        None => (cancel_fanout(shared, port), "fanout"),
    };
    shared
        .metrics
        .cancel_requests_total
        .with_label_values(&[port.as_str(), how])
        .inc();
    tracing::debug!(
        "{} port: cancel request sent to {} ({})",
        port.as_str(),
        targets
            .iter()
            .map(|b| b.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        if how == "session" {
            "the session's backend"
        } else {
            "its key is unknown: every backend that may hold the session"
        }
    );
    let (connect_limit, write_limit) = (
        shared.cfg.connect_timeout,
        shared.cfg.backend_answer_timeout,
    );
    let mut sends = tokio::task::JoinSet::new();
    for b in targets {
        let packet = packet.clone();
        sends.spawn(async move {
            if let Ok(Ok(mut s)) = timeout(connect_limit, TcpStream::connect(b.addr)).await {
                let _ = timeout(write_limit, s.write_all(&packet)).await;
            }
        });
    }
    while sends.join_next().await.is_some() {}
}

/// Where a `CancelRequest` whose key the router has not seen goes: the port's pool (as it
/// would route a new session), every backend holding a session of this port whose key is
/// unknown (TLS, GSS-encrypted or kernel-relayed sessions, or sessions kept on a replica that
/// left the pool), and, with `redirect_local`, every backend with redirected sessions of this
/// port (those never pass through the relay). Each backend once.
fn cancel_fanout(shared: &Shared, port: Port) -> Vec<Backend> {
    let t = shared.table.load();
    let mut out: Vec<Backend> = match port {
        Port::Write => t.writer.iter().cloned().collect(),
        Port::Read => t.readers.iter().chain(t.writer.iter()).cloned().collect(),
    };
    let mut add = |b: Backend| {
        if !out.iter().any(|o| o.addr == b.addr) {
            out.push(b);
        }
    };
    for b in shared.sessions.keyless_backends(port) {
        add(b);
    }
    if let Some(local) = &shared.local {
        for m in &t.members {
            if let (Some(addr), true) = (m.addr, local.sessions(port, &m.name) > 0) {
                add(Backend {
                    name: m.name.clone(),
                    addr,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message: type, length, body.
    fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![ty];
        m.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    /// What a backend sends after a startup packet with SCRAM: the SASL exchange (the client's
    /// answers in between are not in this stream), parameters, the key, ready.
    fn startup_stream(key: &[u8]) -> Vec<u8> {
        let mut s = Vec::new();
        s.extend(msg(b'R', b"\0\0\0\x0aSCRAM-SHA-256\0\0"));
        s.extend(msg(b'R', b"\0\0\0\x0br=abc,s=def,i=4096"));
        s.extend(msg(b'R', b"\0\0\0\x0cv=xyz"));
        s.extend(msg(b'R', b"\0\0\0\0"));
        s.extend(msg(b'S', b"server_version\x0015.8\0"));
        s.extend(msg(b'S', b"TimeZone\0UTC\0"));
        s.extend(msg(b'K', key));
        s.extend(msg(b'Z', b"I"));
        s
    }

    #[test]
    fn key_scan_finds_the_key_across_any_split() {
        let key = [0, 0, 0x30, 0x39, 0xde, 0xad, 0xbe, 0xef];
        let stream = startup_stream(&key);
        // Every split point, and byte by byte.
        for cut in 0..stream.len() {
            let mut scan = KeyScan::default();
            let a = scan.feed(&stream[..cut]);
            let found = if let Scan::Key(k) = a {
                k
            } else {
                assert_eq!(a, Scan::More, "cut {cut}");
                match scan.feed(&stream[cut..]) {
                    Scan::Key(k) => k,
                    other => panic!("cut {cut}: {other:?}"),
                }
            };
            assert_eq!(found, key, "cut {cut}");
        }
        let mut scan = KeyScan::default();
        let mut got = None;
        for b in &stream {
            if let Scan::Key(k) = scan.feed(std::slice::from_ref(b)) {
                got = Some(k);
                break;
            }
        }
        assert_eq!(got.as_deref(), Some(&key[..]));
        // Protocol 3.2: a longer secret.
        let long: Vec<u8> = (0..36).collect();
        let mut scan = KeyScan::default();
        assert_eq!(scan.feed(&startup_stream(&long)), Scan::Key(long));
    }

    #[test]
    fn key_scan_stops_where_no_key_can_come() {
        let done = |stream: &[u8]| KeyScan::default().feed(stream);
        // An error during authentication.
        let mut s = msg(b'R', b"\0\0\0\x05salt");
        s.extend(msg(
            b'E',
            b"SFATAL\0C28P01\0Mpassword authentication failed\0\0",
        ));
        assert_eq!(done(&s), Scan::Done);
        // Ready without a key, a key of a bad size, a length below 4, data of another kind.
        assert_eq!(done(&msg(b'Z', b"I")), Scan::Done);
        assert_eq!(done(&msg(b'K', b"\0\0\0\x01")), Scan::Done);
        assert_eq!(done(&[b'R', 0, 0, 0, 3]), Scan::Done);
        assert_eq!(done(b"S\x16\x03\x01\x02\x00"), Scan::Done);
        // A stream that never gets there is given up after a while.
        let mut scan = KeyScan::default();
        let notice = msg(b'N', &[b'x'; 1000]);
        let mut last = Scan::More;
        for _ in 0..(SCAN_LIMIT / notice.len() + 2) {
            last = scan.feed(&notice);
            if last != Scan::More {
                break;
            }
        }
        assert_eq!(last, Scan::Done);
    }
}
