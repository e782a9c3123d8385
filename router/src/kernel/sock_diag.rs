//! The `sock_diag` netlink socket of connect-time routing: lists the host's IPv4 TCP sockets
//! (filtered by remote port in the kernel, with an `inet_diag` bytecode program) and destroys
//! one on request (`SOCK_DESTROY`, as `ss -K` does: the owner's next call fails with
//! `ECONNABORTED` and the peer gets a reset). Listing every user's sockets and destroying them
//! need `CAP_NET_ADMIN`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

/// One TCP socket of the host, from `sock_diag`.
#[derive(Debug, Clone)]
pub struct DiagSocket {
    /// The `inet_diag_sockid` as the kernel sent it (what `SOCK_DESTROY` takes back).
    id: [u8; 48],
    pub cookie: u64,
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_JMP: u8 = 1;
const INET_DIAG_BC_D_EQ: u8 = 12;
const TCP_LISTEN: u8 = 10;
const TCP_TIME_WAIT: u8 = 6;

/// A `sock_diag` netlink socket.
pub struct Diag {
    fd: OwnedFd,
    seq: u32,
}

impl Diag {
    pub fn open() -> io::Result<Diag> {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockProtocol, SockType};
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .map_err(io::Error::from)?;
        // The kernel answers every request; a reply that never comes must not stall the sweep.
        let timeout = nix::sys::time::TimeVal::new(2, 0);
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
            .map_err(io::Error::from)?;
        Ok(Diag { fd, seq: 0 })
    }

    /// Sends one request; `filter` is an `INET_DIAG_REQ_BYTECODE` program (empty: none).
    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        states: u32,
        id: &[u8; 48],
        filter: &[u8],
    ) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let attr = if filter.is_empty() {
            0
        } else {
            4 + filter.len()
        };
        let mut m = Vec::with_capacity(72 + attr);
        m.extend_from_slice(&((72 + attr) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        // inet_diag_req_v2: family, protocol, ext (none), pad, states, id.
        m.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0]);
        m.extend_from_slice(&states.to_ne_bytes());
        m.extend_from_slice(id);
        if !filter.is_empty() {
            m.extend_from_slice(&(attr as u16).to_ne_bytes());
            m.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
            m.extend_from_slice(filter);
        }
        let to = nix::sys::socket::NetlinkAddr::new(0, 0);
        nix::sys::socket::sendto(
            self.fd.as_raw_fd(),
            &m,
            &to,
            nix::sys::socket::MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        Ok(self.seq)
    }

    /// Reads replies to `seq` until the dump ends or the ack comes, calling `each` on every
    /// message body of type `SOCK_DIAG_BY_FAMILY`.
    fn replies(&mut self, seq: u32, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = nix::sys::socket::recv(
                self.fd.as_raw_fd(),
                &mut buf,
                nix::sys::socket::MsgFlags::empty(),
            )
            .map_err(io::Error::from)?;
            let mut at = 0;
            while at + 16 <= n {
                let len =
                    u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
                let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                let mseq = u32::from_ne_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default());
                if len < 16 || at + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "sock_diag: short message",
                    ));
                }
                let body = &buf[at + 16..at + len];
                if mseq == seq {
                    match kind {
                        // A dump's DONE carries its error code, as an ack does.
                        NLMSG_DONE | NLMSG_ERROR => {
                            let code = body
                                .get(..4)
                                .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
                                .unwrap_or(0);
                            return if code == 0 {
                                Ok(())
                            } else {
                                Err(io::Error::from_raw_os_error(-code))
                            };
                        }
                        SOCK_DIAG_BY_FAMILY => each(body),
                        _ => {}
                    }
                }
                at += (len + 3) & !3;
            }
        }
    }

    /// Every IPv4 TCP socket of this network namespace, but listeners and `TIME_WAIT` ones,
    /// whose remote port is one of `remote_ports` (the kernel filters; empty: every port).
    pub fn tcp_sockets(&mut self, remote_ports: &[u16]) -> io::Result<Vec<DiagSocket>> {
        let states = !((1u32 << TCP_LISTEN) | (1u32 << TCP_TIME_WAIT));
        let seq = self.request(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            states,
            &[0; 48],
            &remote_port_filter(remote_ports),
        )?;
        let mut out = Vec::new();
        self.replies(seq, |b| {
            if let Some(s) = parse_diag_msg(b) {
                out.push(s);
            }
        })?;
        Ok(out)
    }

    /// Destroys one socket (gone already: not an error).
    pub fn destroy(&mut self, s: &DiagSocket) -> io::Result<()> {
        let seq = self.request(
            SOCK_DESTROY,
            NLM_F_REQUEST | NLM_F_ACK,
            u32::MAX,
            &s.id,
            &[],
        )?;
        match self.replies(seq, |_| {}) {
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
            r => r,
        }
    }
}

/// An `inet_diag` bytecode program accepting sockets whose remote port is one of `ports`. Each
/// test (`INET_DIAG_BC_D_EQ`, the port in its second word) goes on a match to a jump to the end
/// (accept), on a miss to the next test; the last one's miss goes past the end (reject). The
/// kernel's check wants every test reachable along the "match" offsets, hence the jumps in
/// between (as `ss` compiles an "or").
fn remote_port_filter(ports: &[u16]) -> Vec<u8> {
    let Some(last) = ports.len().checked_sub(1) else {
        return Vec::new();
    };
    let len = 12 * last + 8;
    let mut bc = Vec::with_capacity(len);
    let op = |bc: &mut Vec<u8>, code: u8, yes: u8, no: usize| {
        bc.push(code);
        bc.push(yes);
        bc.extend_from_slice(&(no as u16).to_ne_bytes());
    };
    for (i, port) in ports.iter().enumerate() {
        op(&mut bc, INET_DIAG_BC_D_EQ, 8, 12);
        bc.extend_from_slice(&[0, 0]);
        bc.extend_from_slice(&port.to_ne_bytes());
        if i < last {
            let end = len - bc.len();
            op(&mut bc, INET_DIAG_BC_JMP, 4, end);
        }
    }
    bc
}

/// An `inet_diag_msg` (its attributes are not asked for).
fn parse_diag_msg(b: &[u8]) -> Option<DiagSocket> {
    if b.len() < 72 || b[0] != libc::AF_INET as u8 {
        return None;
    }
    let id: [u8; 48] = b[4..52].try_into().ok()?;
    let v4 = |port: &[u8], ip: &[u8]| {
        SocketAddrV4::new(
            Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]),
            u16::from_be_bytes([port[0], port[1]]),
        )
    };
    let local = v4(&id[0..2], &id[4..8]);
    let remote = v4(&id[2..4], &id[20..24]);
    let cookie = u32::from_ne_bytes(id[40..44].try_into().ok()?) as u64
        | (u32::from_ne_bytes(id[44..48].try_into().ok()?) as u64) << 32;
    Some(DiagSocket {
        id,
        cookie,
        local,
        remote,
    })
}

/// Checks that this kernel destroys sockets on request (`CONFIG_INET_DIAG_DESTROY`; some
/// hardened kernels leave it out): without it the router could redirect sessions but never cut
/// them, so the feature is refused.
pub fn destroy_works(diag: &mut Diag) -> io::Result<()> {
    use std::io::Read;
    let unavailable = |why: String| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("this kernel cannot destroy sockets on request (SOCK_DESTROY: {why})"),
        )
    };
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let mut c = std::net::TcpStream::connect(l.local_addr()?)?;
    let (_server, _) = l.accept()?;
    let (local, remote) = (c.local_addr()?, c.peer_addr()?);
    let s = diag
        .tcp_sockets(&[l.local_addr()?.port()])?
        .into_iter()
        .find(|s| SocketAddr::V4(s.local) == local && SocketAddr::V4(s.remote) == remote)
        .ok_or_else(|| unavailable("the test socket is not listed".into()))?;
    diag.destroy(&s).map_err(|e| unavailable(e.to_string()))?;
    c.set_read_timeout(Some(Duration::from_secs(1)))?;
    match c.read(&mut [0u8; 1]) {
        Err(e) if e.raw_os_error() == Some(libc::ECONNABORTED) => Ok(()),
        other => Err(unavailable(format!("the test socket read {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Root only (sock_diag dumps every user's sockets only for root): the kernel accepts the
    /// port filter and lists exactly the sockets whose remote port is one of those asked for.
    #[test]
    fn the_kernel_filters_the_listing_by_remote_port() {
        use std::net::{TcpListener, TcpStream};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (CI runs as root)");
            return;
        }
        let ls: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("listener"))
            .collect();
        let ports: Vec<u16> = ls
            .iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect();
        let conns: Vec<TcpStream> = ports
            .iter()
            .map(|p| TcpStream::connect(("127.0.0.1", *p)).expect("connect"))
            .collect();
        let mut diag = Diag::open().expect("sock_diag");
        for want in [&ports[..1], &ports[..2], &ports[1..], &ports[..]] {
            let listed = diag.tcp_sockets(want).expect("dump");
            let mut remote: Vec<u16> = listed.iter().map(|s| s.remote.port()).collect();
            remote.sort_unstable();
            let mut expected = want.to_vec();
            expected.sort_unstable();
            assert_eq!(remote, expected, "asked for {want:?}");
        }
        let all = diag.tcp_sockets(&[]).expect("dump");
        assert!(ports
            .iter()
            .all(|p| all.iter().any(|s| s.remote.port() == *p)));
        drop(conns);
    }

    /// Root only: this kernel destroys sockets on request (what `redirect_local::Local::new`
    /// checks first).
    #[test]
    fn this_kernel_destroys_sockets_on_request() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: SOCK_DESTROY needs CAP_NET_ADMIN (CI runs as root)");
            return;
        }
        destroy_works(&mut Diag::open().expect("sock_diag")).expect("SOCK_DESTROY works");
    }

    #[test]
    fn a_diag_message_is_read_back() {
        let mut b = vec![0u8; 72];
        b[0] = libc::AF_INET as u8;
        b[1] = 1; // ESTABLISHED
        b[4..6].copy_from_slice(&40000u16.to_be_bytes());
        b[6..8].copy_from_slice(&5432u16.to_be_bytes());
        b[8..12].copy_from_slice(&[127, 0, 0, 1]);
        b[24..28].copy_from_slice(&[127, 0, 0, 2]);
        b[44..48].copy_from_slice(&7u32.to_ne_bytes());
        b[48..52].copy_from_slice(&1u32.to_ne_bytes());
        let s = parse_diag_msg(&b).expect("parsed");
        assert_eq!(s.local, "127.0.0.1:40000".parse().expect("addr"));
        assert_eq!(s.remote, "127.0.0.2:5432".parse().expect("addr"));
        assert_eq!(s.cookie, 7 | (1 << 32));
        assert!(parse_diag_msg(&b[..50]).is_none(), "short");
    }
}
