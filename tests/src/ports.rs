//! Free loopback TCP ports. A process-wide set guarantees that parallel tests in one process
//! never get the same port; random choice makes clashes between test processes unlikely.

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::sync::{Mutex, OnceLock};

use crate::util::random_u64;

/// Lowest port we hand out.
const LOW: u16 = 20000;

/// The port range to pick from: below the kernel's ephemeral range (so an outgoing
/// connection's local port cannot take a port between our check and the server's bind), or
/// 20000-60000 if the ephemeral range leaves too little room.
fn range() -> (u16, u16) {
    static RANGE: OnceLock<(u16, u16)> = OnceLock::new();
    *RANGE.get_or_init(|| {
        let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok());
        match ephemeral_low {
            Some(low) if low > LOW + 2000 => (LOW, low - 1),
            _ => (LOW, 60000),
        }
    })
}

/// A TCP port on 127.0.0.1 that was free when checked and was never handed out before in this
/// process.
///
/// # Panics
/// If no free port is found after many tries (the machine is out of ports).
pub fn free_port() -> u16 {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let (low, high) = range();
    let span = u64::from(high - low) + 1;
    let mut used = USED.lock().unwrap_or_else(|p| p.into_inner());
    let used = used.get_or_insert_with(HashSet::new);
    for _ in 0..10_000 {
        let port = low + (random_u64() % span) as u16;
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
    panic!("no free TCP port on 127.0.0.1 in {low}-{high} after 10000 tries");
}
