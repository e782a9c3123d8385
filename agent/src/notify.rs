//! systemd's readiness protocol for `Type=notify` units (`sd_notify(3)`): `READY=1` once the
//! agent serves its REST API and has completed a cycle with the DCS (its member key is
//! published, so units ordered after it, such as `patrol-router` on the same host, find it),
//! `STATUS=` lines when its role or PostgreSQL's state changes and while it waits for etcd,
//! `STOPPING=1` when a stop begins (SIGTERM, SIGINT).
//!
//! The socket is `NOTIFY_SOCKET`, taken by `main` before any thread starts and removed from
//! the environment: PostgreSQL built with systemd support would otherwise send its own
//! `READY=1` and `STOPPING=1` there, and the callback scripts would inherit it too. That is
//! why this is not the `sd-notify` crate, which reads the variable at every call. Without the
//! variable every call does nothing. `WATCHDOG=1` is not sent (see packaging/patrol.service).

use std::collections::BTreeMap;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;

use crate::ha::SharedState;

/// Where notifications go; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    target: Option<Arc<Target>>,
}

#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    socket: UnixDatagram,
}

impl Notifier {
    /// The variable systemd passes the socket in.
    pub const VAR: &'static str = "NOTIFY_SOCKET";

    /// From `NOTIFY_SOCKET` in `env`: a path, or `@name` for an abstract socket. `Err` says
    /// why a socket that is set cannot be used (the caller warns; nothing is sent then).
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Notifier, String> {
        let Some(path) = env.get(Self::VAR).filter(|p| !p.is_empty()) else {
            return Ok(Notifier::default());
        };
        let addr = match path.strip_prefix('@') {
            Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
            None if path.starts_with('/') => SocketAddr::from_pathname(path),
            None => {
                return Err(format!(
                    "{}={path}: neither an absolute path nor an abstract socket name",
                    Self::VAR
                ))
            }
        }
        .map_err(|e| format!("{}={path}: {e}", Self::VAR))?;
        let socket = UnixDatagram::unbound().map_err(|e| format!("{}: {e}", Self::VAR))?;
        // A full queue on the other side must not stall the agent: the message is dropped.
        socket
            .set_nonblocking(true)
            .map_err(|e| format!("{}: {e}", Self::VAR))?;
        Ok(Notifier {
            target: Some(Arc::new(Target { addr, socket })),
        })
    }

    /// Sends `lines` (`KEY=value` each) as one datagram; a failure is logged, never fatal
    /// (the agent's job does not depend on systemd hearing it).
    pub fn send(&self, lines: &[&str]) {
        let Some(t) = &self.target else { return };
        let mut msg = lines.join("\n");
        msg.push('\n');
        if let Err(e) = t.socket.send_to_addr(msg.as_bytes(), &t.addr) {
            tracing::warn!("cannot notify systemd ({}): {e}", Self::VAR);
        }
    }

    /// `STATUS=<text>`.
    pub fn status(&self, text: &str) {
        self.send(&[&format!("STATUS={text}")]);
    }

    /// `STOPPING=1`, with a status saying so.
    pub fn stopping(&self) {
        self.send(&["STOPPING=1", "STATUS=stopping"]);
    }

    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }
}

/// Sends `READY=1` after the first completed HA cycle, then a `STATUS=` line whenever the
/// role, PostgreSQL's state or maintenance mode changes. Runs until the process ends.
pub async fn report(notifier: Notifier, shared: Arc<SharedState>) {
    if !notifier.is_enabled() {
        return;
    }
    let mut cycles = shared.subscribe_cycles();
    let mut ready = false;
    let mut last = String::new();
    while cycles.changed().await.is_ok() {
        let node = shared.snapshot().node;
        let status = status_line(node.role.as_str(), &node.state, node.paused);
        if !ready {
            notifier.send(&["READY=1", &format!("STATUS={status}")]);
            ready = true;
        } else if status != last {
            notifier.status(&status);
        }
        last = status;
    }
}

/// `primary, PostgreSQL running`, with `, maintenance mode` while paused.
fn status_line(role: &str, state: &str, paused: bool) -> String {
    let mut s = format!("{role}, PostgreSQL {state}");
    if paused {
        s.push_str(", maintenance mode");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sends_to_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).expect("bind");
        let n = Notifier::from_env(&env(&[(Notifier::VAR, path.to_str().expect("utf-8"))]))
            .expect("notifier");
        n.send(&["READY=1", "STATUS=x"]);
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=x\n");

        let name = format!("patrol-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract name");
        let server = UnixDatagram::bind_addr(&addr).expect("bind abstract");
        let n =
            Notifier::from_env(&env(&[(Notifier::VAR, &format!("@{name}"))])).expect("notifier");
        n.stopping();
        let len = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"STOPPING=1\nSTATUS=stopping\n");
    }

    #[test]
    fn unset_does_nothing_and_bad_values_are_named() {
        let n = Notifier::from_env(&env(&[])).expect("unset");
        assert!(!n.is_enabled());
        n.send(&["READY=1"]);
        let e =
            Notifier::from_env(&env(&[(Notifier::VAR, "relative/path")])).expect_err("relative");
        assert!(e.starts_with("NOTIFY_SOCKET=relative/path"), "{e}");
    }

    #[test]
    fn status_lines() {
        assert_eq!(
            status_line("primary", "running", false),
            "primary, PostgreSQL running"
        );
        assert_eq!(
            status_line("replica", "starting", true),
            "replica, PostgreSQL starting, maintenance mode"
        );
    }
}
