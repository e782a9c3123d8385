//! Connect-time routing of clients on the router's own host (`redirect_local: true`).
//!
//! A BPF program on the cgroup `connect()` hook (`BPF_CGROUP_INET4_CONNECT`) sees every IPv4
//! TCP connect of the processes under the cgroup. When the address is one of the router's
//! listeners and that port has a backend, it rewrites the address to it (the writer; for the
//! read port its one member, see [`crate::table::routes_for`]) and records the socket's cookie
//! with where it went. The kernel then connects the client straight to PostgreSQL: the router
//! carries none of its bytes and the session costs what a direct one costs. Where the port has
//! no backend (no leader yet, an empty read pool), the connect is left alone and reaches the
//! router's listener, which holds or refuses it as usual; clients on other hosts always do.
//!
//! The router still decides where such sessions may stay. On every table change, and every
//! [`SWEEP`], it lists the host's TCP sockets (`super::sock_diag`), keeps the ones whose cookie
//! it recorded, and destroys (`SOCK_DESTROY`, as `ss -K` does: the client's next call fails
//! with `ECONNABORTED` and the server gets a reset) every one whose backend it would cut: a
//! write session off the writer, a read session on a replica that died or was demoted. The same
//! listing gives the stats page its count of these sessions.
//!
//! This module is the mechanism: the program, its maps and [`sweep`], which destroys what a
//! `keep` rule rejects. What is routed and kept comes from the routing table, in
//! `crate::redirect_local`.
//!
//! The program is attached through a BPF link owned by the router process: when the router
//! ends, however it ends, the kernel detaches it and local clients reach the listeners (or
//! nothing) again. A router that stops closes the sessions it redirected (relayed ones end
//! with it too); after a crash they run on untracked, guarded only by the agents' demotion. A
//! kernel that cannot destroy sockets (`CONFIG_INET_DIAG_DESTROY` unset) is refused at start.
//! Needs `CAP_BPF` and `CAP_NET_ADMIN` (root, or the two ambient capabilities of the systemd
//! unit), cgroup v2 and Linux 5.14; without them the router says so and relays every session.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::bpf::{insn, Insn};
use super::sock_diag::Diag;
use super::sys::{self, Map};

// From include/uapi/linux/bpf.h.
const BPF_PROG_TYPE_CGROUP_SOCK_ADDR: u32 = 18;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_FUNC_MAP_LOOKUP_ELEM: i32 = 1;
const BPF_FUNC_MAP_UPDATE_ELEM: i32 = 2;
const BPF_FUNC_GET_SOCKET_COOKIE: i32 = 46;
const BPF_FUNC_GET_NETNS_COOKIE: i32 = 122;
// Offsets in `struct bpf_sock_addr`.
const USER_IP4: i16 = 4;
const USER_PORT: i16 = 24;
const SOCK_TYPE: i16 = 32;
const PROTOCOL: i16 = 36;

/// Redirected sockets tracked at once; a connect beyond it is not redirected (it reaches the
/// listener and is relayed).
const TRACKED: usize = 1 << 18;
/// Listener addresses with a route (a wildcard listener has one per local IPv4 address).
const ROUTES: usize = 4096;
/// A recorded socket missing from the listings this long is forgotten (its connect failed or
/// it ended); a socket whose connect has begun may not be listed yet.
const FORGET_AFTER: Duration = Duration::from_secs(5);
/// How often the sockets are listed when nothing changes (stats, forgotten cookies).
pub const SWEEP: Duration = Duration::from_millis(500);

/// The program. Only TCP (not MPTCP or SCTP) connects from the router's own network namespace
/// are looked at (in another one, a container's, `127.0.0.1` is another host). Route key at
/// r10-8 (ip, port as the context holds them), cookie at r10-16, the record at r10-32 (backend
/// ip, backend port, listener ip, listener port).
fn program(routes: RawFd, redirected: RawFd, netns: u64) -> Vec<Insn> {
    let mut p = vec![
        insn(0xbf, 6, 1, 0, 0),                         // r6 = ctx
        insn(0x61, 1, 6, SOCK_TYPE, 0),                 // r1 = ctx->type
        insn(0x55, 1, 0, 0, libc::SOCK_STREAM),         // if r1 != SOCK_STREAM goto out [patched]
        insn(0x61, 1, 6, PROTOCOL, 0),                  // r1 = ctx->protocol
        insn(0x55, 1, 0, 0, libc::IPPROTO_TCP),         // if r1 != TCP goto out         [patched]
        insn(0xbf, 1, 6, 0, 0),                         // r1 = ctx
        insn(0x85, 0, 0, 0, BPF_FUNC_GET_NETNS_COOKIE), // r0 = the socket's netns cookie
        insn(0x18, 1, 0, 0, netns as u32 as i32),       // r1 = the router's (ld_imm64)
        insn(0, 0, 0, 0, (netns >> 32) as u32 as i32),  //
        insn(0x5d, 0, 1, 0, 0),                         // if r0 != r1 goto out          [patched]
        insn(0x61, 7, 6, USER_IP4, 0),                  // r7 = ctx->user_ip4
        insn(0x61, 8, 6, USER_PORT, 0),                 // r8 = ctx->user_port
        insn(0x63, 10, 7, -8, 0),                       // key.ip = r7
        insn(0x63, 10, 8, -4, 0),                       // key.port = r8
        insn(0x63, 10, 7, -24, 0),                      // record.listener_ip = r7
        insn(0x63, 10, 8, -20, 0),                      // record.listener_port = r8
    ];
    p.extend(super::bpf::ld_map(1, routes)); // r1 = routes
    p.extend([
        insn(0xbf, 2, 10, 0, 0),                         // r2 = r10
        insn(0x07, 2, 0, 0, -8),                         // r2 = &key
        insn(0x85, 0, 0, 0, BPF_FUNC_MAP_LOOKUP_ELEM),   // r0 = route
        insn(0x15, 0, 0, 0, 0),                          // if r0 == 0 goto out   [patched]
        insn(0x61, 1, 0, 0, 0),                          // r1 = backend.ip
        insn(0x63, 10, 1, -32, 0),                       // record.ip = r1
        insn(0x61, 1, 0, 4, 0),                          // r1 = backend.port
        insn(0x63, 10, 1, -28, 0),                       // record.port = r1
        insn(0xbf, 1, 6, 0, 0),                          // r1 = ctx
        insn(0x85, 0, 0, 0, BPF_FUNC_GET_SOCKET_COOKIE), // r0 = cookie
        insn(0x7b, 10, 0, -16, 0),                       // *(u64 *)(r10 - 16) = cookie
    ]);
    p.extend(super::bpf::ld_map(1, redirected)); // r1 = redirected
    p.extend([
        insn(0xbf, 2, 10, 0, 0),                       // r2 = r10
        insn(0x07, 2, 0, 0, -16),                      // r2 = &cookie
        insn(0xbf, 3, 10, 0, 0),                       // r3 = r10
        insn(0x07, 3, 0, 0, -32),                      // r3 = &record
        insn(0xb7, 4, 0, 0, 0),                        // r4 = BPF_ANY
        insn(0x85, 0, 0, 0, BPF_FUNC_MAP_UPDATE_ELEM), // r0 = update
        insn(0x55, 0, 0, 0, 0), // if r0 != 0 goto out (not tracked: leave it)
        insn(0x61, 1, 10, -32, 0), // r1 = record.ip
        insn(0x63, 6, 1, USER_IP4, 0), // ctx->user_ip4 = r1
        insn(0x61, 1, 10, -28, 0), // r1 = record.port
        insn(0x63, 6, 1, USER_PORT, 0), // ctx->user_port = r1
    ]);
    let out = p.len();
    p.extend([
        insn(0xb7, 0, 0, 0, 1), // out: r0 = 1 (let the connect go on)
        insn(0x95, 0, 0, 0, 0), // exit
    ]);
    // Every conditional jump above goes to `out`.
    for (i, ins) in p.iter_mut().enumerate().take(out) {
        if matches!(ins.code(), 0x55 | 0x15 | 0x5d) {
            *ins = ins.with_off((out - i - 1) as i16);
        }
    }
    p
}

/// The cookie of the router's network namespace (Linux 5.14).
fn netns_cookie() -> io::Result<u64> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let s = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(io::Error::from)?;
    sys::netns_cookie(&s)
}

/// An IPv4 address and port as `struct bpf_sock_addr` holds them (network byte order).
fn ctx_pair(a: SocketAddrV4) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&a.ip().octets());
    k[4..6].copy_from_slice(&a.port().to_be_bytes());
    k
}

fn from_ctx_pair(b: &[u8]) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::new(b[0], b[1], b[2], b[3]),
        u16::from_be_bytes([b[4], b[5]]),
    )
}

/// The cgroup v2 hierarchy's mount point, from `/proc/self/mountinfo`.
pub fn cgroup2_root() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next() == Some("cgroup2"))
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// Where local connects to each listener address go (`None`: left to the listener), as
/// `crate::table::routes_for` decides it.
pub type Routes = BTreeMap<SocketAddrV4, Option<SocketAddrV4>>;

/// Where one redirected socket went, and through which listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redirected {
    pub backend: SocketAddrV4,
    pub listener: SocketAddrV4,
}

/// The loaded program, its maps and its link.
pub struct Redirector {
    routes: Map,
    redirected: Map,
    _prog: OwnedFd,
    _link: OwnedFd,
    /// The routes last written, by listener address.
    current: Mutex<Routes>,
}

impl Redirector {
    /// Loads the program and links it to the cgroup at `cgroup` (every process below it).
    pub fn new(cgroup: &Path) -> io::Result<Redirector> {
        // Not preallocated: a replaced route is never reused under a reader, and the record
        // map costs memory only for the sessions it holds.
        let no_prealloc = sys::BPF_F_NO_PREALLOC;
        let routes = Map::create(sys::BPF_MAP_TYPE_HASH, 8, 8, ROUTES, no_prealloc)?;
        let redirected = Map::create(sys::BPF_MAP_TYPE_HASH, 8, 16, TRACKED, no_prealloc)?;
        let prog = super::bpf::load(
            BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            BPF_CGROUP_INET4_CONNECT,
            &program(routes.raw_fd(), redirected.raw_fd(), netns_cookie()?),
            "patrol_connect",
        )?;
        let dir = std::fs::File::open(cgroup)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", cgroup.display())))?;
        let link = sys::link_create(dir.as_fd(), prog.as_fd(), BPF_CGROUP_INET4_CONNECT)?;
        Ok(Redirector {
            routes,
            redirected,
            _prog: prog,
            _link: link,
            current: Mutex::new(BTreeMap::new()),
        })
    }

    /// Makes connects to each listener of `routes` go to its backend (none: left alone).
    /// Listeners not named keep no route.
    pub fn set_routes(&self, routes: &Routes) -> io::Result<()> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        for (listener, backend) in routes {
            if current.get(listener) == Some(backend) {
                continue;
            }
            match backend {
                None => self.routes.delete(&ctx_pair(*listener))?,
                Some(b) => self.routes.update(&ctx_pair(*listener), &ctx_pair(*b))?,
            }
        }
        for listener in current.keys() {
            if !routes.contains_key(listener) {
                self.routes.delete(&ctx_pair(*listener))?;
            }
        }
        *current = routes.clone();
        Ok(())
    }

    /// Removes every route (local clients reach the listeners, which relay them).
    pub fn clear(&self) -> io::Result<()> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        for k in self.routes.keys()? {
            self.routes.delete(&k)?;
        }
        current.clear();
        Ok(())
    }

    /// Whether the routes last written send `listener`'s connects to `backend` (they are
    /// written before the table naming them is swapped in, so a sweep working from the table
    /// before must not cut such a session).
    pub fn routed(&self, r: &Redirected) -> bool {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&r.listener)
            .is_some_and(|b| *b == Some(r.backend))
    }

    /// Every recorded socket, by cookie.
    pub fn recorded(&self) -> io::Result<HashMap<u64, Redirected>> {
        let mut all = HashMap::new();
        for k in self.redirected.keys()? {
            if let Some(v) = self.redirected.lookup(&k)? {
                let cookie = u64::from_ne_bytes(k[..8].try_into().unwrap_or_default());
                all.insert(
                    cookie,
                    Redirected {
                        backend: from_ctx_pair(&v[..8]),
                        listener: from_ctx_pair(&v[8..16]),
                    },
                );
            }
        }
        Ok(all)
    }

    pub fn forget(&self, cookie: u64) {
        let _ = self.redirected.delete(&cookie.to_ne_bytes());
    }
}

/// The IPv4 addresses a listener on `listen` accepts on, as clients on this host would name
/// them: itself, or every local IPv4 address for a wildcard (`0.0.0.0`). IPv6: none.
pub fn listener_addrs(listen: SocketAddr) -> Vec<SocketAddrV4> {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            let mut v: Vec<SocketAddrV4> = nix::ifaddrs::getifaddrs()
                .map(|ifs| {
                    ifs.filter_map(|i| {
                        i.address
                            .and_then(|a| a.as_sockaddr_in().map(|s| s.ip()))
                            .map(|ip| SocketAddrV4::new(ip, listen.port()))
                    })
                    .collect()
                })
                .unwrap_or_default();
            let lo = SocketAddrV4::new(Ipv4Addr::LOCALHOST, listen.port());
            if !v.contains(&lo) {
                v.push(lo);
            }
            v.sort();
            v.dedup();
            v
        }
        IpAddr::V4(ip) => vec![SocketAddrV4::new(ip, listen.port())],
        IpAddr::V6(_) => Vec::new(),
    }
}

/// Live redirected sessions by listener and backend.
pub type Tallies = BTreeMap<(SocketAddrV4, SocketAddrV4), usize>;

/// What one sweep did.
#[derive(Debug, Default)]
pub struct Swept {
    /// Sessions destroyed.
    pub killed: Vec<Redirected>,
    /// Sessions that should have been destroyed but could not be, and why.
    pub failed: Vec<(Redirected, String)>,
    pub tally: Tallies,
}

/// One pass over the host's sockets: destroys every recorded one `keep` rejects, tallies the
/// rest, and forgets cookies missing from the listings for [`FORGET_AFTER`] (`missing` holds
/// since when: a socket whose connect has begun may not be listed yet). A failed destroy is
/// reported and the sweep goes on.
pub fn sweep(
    r: &Redirector,
    diag: &mut Diag,
    missing: &mut HashMap<u64, Instant>,
    now: Instant,
    keep: impl Fn(&Redirected) -> bool,
) -> io::Result<Swept> {
    let recorded = r.recorded()?;
    let mut out = Swept::default();
    if recorded.is_empty() {
        missing.clear();
        return Ok(out);
    }
    let mut seen = HashSet::new();
    let mut ports: Vec<u16> = recorded.values().map(|r| r.backend.port()).collect();
    ports.sort_unstable();
    ports.dedup();
    for s in diag.tcp_sockets(&ports)? {
        let Some(rec) = recorded.get(&s.cookie) else {
            continue;
        };
        seen.insert(s.cookie);
        if !keep(rec) {
            match diag.destroy(&s) {
                Ok(()) => {
                    r.forget(s.cookie);
                    out.killed.push(*rec);
                }
                Err(e) => out.failed.push((*rec, e.to_string())),
            }
            continue;
        }
        *out.tally.entry((rec.listener, rec.backend)).or_default() += 1;
    }
    missing.retain(|c, _| recorded.contains_key(c) && !seen.contains(c));
    for c in recorded.keys().filter(|c| !seen.contains(c)) {
        let since = *missing.entry(*c).or_insert(now);
        if now.saturating_duration_since(since) >= FORGET_AFTER {
            r.forget(*c);
            missing.remove(c);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_of_the_program_lands_on_its_exit() {
        // Maps are not needed to check the shape: assemble with stand-in descriptors.
        // Conditional jumps are found by their class (BPF_JMP), not by the patcher's own list
        // of opcodes, so one it misses fails here.
        let p = program(100, 101, 1 << 40);
        let out = p.len() - 2;
        let mut jumps = 0;
        for (i, ins) in p.iter().enumerate() {
            let (class, op) = (ins.code() & 0x07, ins.code() & 0xf0);
            // BPF_JA, BPF_CALL and BPF_EXIT are in the class too, but are not conditions.
            if class == 0x05 && !matches!(op, 0x00 | 0x80 | 0x90) {
                jumps += 1;
                assert_eq!(i as i64 + 1 + ins.off() as i64, out as i64, "jump at {i}");
            }
        }
        assert_eq!(
            jumps, 5,
            "type, protocol, namespace, no route, record failed"
        );
    }

    #[test]
    fn addresses_are_kept_as_the_connect_hook_sees_them() {
        let a: SocketAddrV4 = "127.0.0.1:5432".parse().expect("addr");
        let k = ctx_pair(a);
        assert_eq!(k, [127, 0, 0, 1, 0x15, 0x38, 0, 0]);
        assert_eq!(from_ctx_pair(&k), a);
    }

    #[test]
    fn listeners_name_their_addresses() {
        let one = listener_addrs("127.0.0.2:5000".parse().expect("addr"));
        assert_eq!(one, vec!["127.0.0.2:5000".parse().expect("addr")]);
        let all = listener_addrs("0.0.0.0:5000".parse().expect("addr"));
        assert!(all.contains(&"127.0.0.1:5000".parse().expect("addr")));
        assert!(listener_addrs("[::1]:5000".parse().expect("addr")).is_empty());
    }

    /// Root only (loading the program needs it; CI runs as root): connects to a listener go to
    /// its backend while it has a route, a sweep tallies and destroys them, and none is
    /// redirected once the router's `Redirector` is gone.
    #[test]
    fn connects_are_redirected_tallied_and_destroyed() {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: loading the connect program needs root (CI runs as root)");
            return;
        }
        let v4 = |l: &TcpListener| match l.local_addr().expect("addr") {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("bound on IPv4"),
        };
        let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
        let backend = TcpListener::bind("127.0.0.1:0").expect("backend");
        let (la, ba) = (v4(&listener), v4(&backend));
        let root = cgroup2_root().expect("a cgroup2 hierarchy");
        let r = Redirector::new(&root).expect("program loaded and linked");
        r.set_routes(&Routes::from([(la, Some(ba))]))
            .expect("route");

        let mut client = TcpStream::connect(la).expect("connect");
        assert_eq!(
            client.peer_addr().expect("peer"),
            SocketAddr::V4(ba),
            "went to the backend"
        );
        let (mut server, _) = backend.accept().expect("the backend accepted it");
        client.write_all(b"ping").expect("write");
        let mut b = [0u8; 4];
        server.read_exact(&mut b).expect("read");
        assert_eq!(&b, b"ping");
        // Another network namespace (a container's) is another host: its 127.0.0.1 is left
        // alone. Here a listener on the same address there gets the connect.
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let up = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("ip");
            assert!(up.success());
            let there = TcpListener::bind(la).expect("listener in the other namespace");
            let c = TcpStream::connect(la).expect("connect in the other namespace");
            assert_eq!(c.peer_addr().expect("peer"), SocketAddr::V4(la));
            drop(there);
        })
        .join()
        .expect("the other namespace's connect is not redirected");
        // Other ports are left alone.
        let other = TcpStream::connect(ba).expect("direct");
        assert_eq!(other.peer_addr().expect("peer"), SocketAddr::V4(ba));

        let mut diag = Diag::open().expect("sock_diag");
        let mut missing = HashMap::new();
        let now = Instant::now();
        let swept = sweep(&r, &mut diag, &mut missing, now, |_| true).expect("sweep");
        let (killed, tally) = (swept.killed, swept.tally);
        assert!(killed.is_empty());
        assert_eq!(tally.get(&(la, ba)), Some(&1), "{tally:?}");

        // A record whose socket is never listed (its connect failed) is forgotten only after
        // FORGET_AFTER: one whose connect is under way is not listed yet either.
        let ghost = 0xdead_beef_u64;
        let rec = [&ctx_pair(ba)[..], &ctx_pair(la)[..]].concat();
        r.redirected
            .update(&ghost.to_ne_bytes(), &rec)
            .expect("record");
        sweep(&r, &mut diag, &mut missing, now, |_| true).expect("sweep");
        sweep(
            &r,
            &mut diag,
            &mut missing,
            now + Duration::from_secs(1),
            |_| true,
        )
        .expect("sweep");
        assert!(
            r.recorded().expect("records").contains_key(&ghost),
            "kept for a while"
        );
        sweep(&r, &mut diag, &mut missing, now + FORGET_AFTER, |_| true).expect("sweep");
        assert!(
            !r.recorded().expect("records").contains_key(&ghost),
            "then forgotten"
        );
        assert!(
            r.recorded().expect("records").len() == 1,
            "the live session stays recorded"
        );

        let killed = sweep(&r, &mut diag, &mut missing, now, |rec| rec.backend != ba)
            .expect("sweep")
            .killed;
        assert_eq!(
            killed,
            vec![Redirected {
                backend: ba,
                listener: la
            }]
        );
        let e = client.read(&mut b).expect_err("destroyed");
        assert_eq!(e.raw_os_error(), Some(libc::ECONNABORTED), "{e}");
        assert_eq!(
            server.read(&mut b).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );

        // No route: the connect reaches the listener.
        r.set_routes(&Routes::from([(la, None)])).expect("no route");
        let c = TcpStream::connect(la).expect("connect");
        assert_eq!(c.peer_addr().expect("peer"), SocketAddr::V4(la));
        r.set_routes(&Routes::from([(la, Some(ba))]))
            .expect("route");
        r.clear().expect("clear");
        let c = TcpStream::connect(la).expect("connect");
        assert_eq!(c.peer_addr().expect("peer"), SocketAddr::V4(la), "cleared");
        r.set_routes(&Routes::from([(la, Some(ba))]))
            .expect("route");
        let c = TcpStream::connect(la).expect("connect");
        assert_eq!(
            c.peer_addr().expect("peer"),
            SocketAddr::V4(ba),
            "routed again"
        );
        drop(r);
        // The link went with the router: connects reach the listener again.
        let c = TcpStream::connect(la).expect("connect");
        assert_eq!(c.peer_addr().expect("peer"), SocketAddr::V4(la));
    }
}
