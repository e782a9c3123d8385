//! Connect-time routing of clients on the router's host as the router runs it
//! (`redirect_local: true`): the kernel's connect program and socket sweeps
//! (`kernel::redirect`) pointed where the routing table says (`table::routes_for`,
//! `table::keeps`), and what the last sweep found for the stats page. `control` calls
//! [`Local::route`] before each table swap and runs the sweeps.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use crate::config::Config;
use crate::kernel::redirect::{cgroup2_root, listener_addrs, sweep, Redirected, Redirector, Swept};
use crate::kernel::sock_diag::{destroy_works, Diag};
use crate::metrics::Metrics;
use crate::table::{keeps, port_of, routes_for, Port, Table};

/// The program, a `sock_diag` socket (with when each recorded socket was first missing from
/// its listings), and what the last sweep found for the stats page.
pub struct Local {
    redirector: Redirector,
    diag: Mutex<(Diag, HashMap<u64, Instant>)>,
    /// Live redirected sessions by port and member, from the last sweep.
    tallies: Mutex<BTreeMap<(Port, String), usize>>,
}

impl Local {
    /// Loads and links the program for the processes under `cgroup` (default: the cgroup v2
    /// root) and opens the `sock_diag` socket that cuts sessions: both or neither.
    pub fn new(cgroup: Option<&Path>) -> io::Result<Local> {
        let root;
        let cgroup = match cgroup {
            Some(c) => c,
            None => {
                root = cgroup2_root().ok_or_else(|| {
                    io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 hierarchy is mounted")
                })?;
                &root
            }
        };
        let mut diag = Diag::open()?;
        destroy_works(&mut diag)?;
        Ok(Local {
            redirector: Redirector::new(cgroup)?,
            diag: Mutex::new((diag, HashMap::new())),
            tallies: Mutex::new(BTreeMap::new()),
        })
    }

    /// Points local connects where table `t` routes (before the table is swapped in, so a
    /// connect never goes where the router's own listeners would not send it). If the routes
    /// cannot be written, every route is removed: fail closed.
    pub fn route(&self, cfg: &Config, t: &Table) -> io::Result<()> {
        let routes = routes_for(
            cfg,
            t,
            &listener_addrs(cfg.write_listen),
            &listener_addrs(cfg.read_listen),
        );
        let Err(e) = self.redirector.set_routes(&routes) else {
            return Ok(());
        };
        // A route that could not be changed must not keep sending clients to a backend that
        // lost its pool.
        let cleared = match self.redirector.clear() {
            Ok(()) => "local clients reach the listeners until it works".to_string(),
            Err(c) => format!("clearing them failed too: {c}"),
        };
        Err(io::Error::new(
            e.kind(),
            format!("updating the routes failed ({e}); {cleared}"),
        ))
    }

    /// The live redirected sessions of `member` on `port`, from the last sweep.
    pub fn sessions(&self, port: Port, member: &str) -> usize {
        self.tallies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(port, member.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// One sweep against table `t`: destroys every redirected session it does not keep, and
    /// records the live ones by port and member (for [`Local::sessions`] and the
    /// `redirected_sessions` gauge). Returns how many sessions it destroyed on each port.
    pub fn sweep(
        &self,
        cfg: &Config,
        t: &Table,
        metrics: &Metrics,
    ) -> io::Result<BTreeMap<Port, usize>> {
        let mut g = self.diag.lock().unwrap_or_else(|p| p.into_inner());
        let (diag, missing) = &mut *g;
        // Where the routes written for a newer table send a session is fine too.
        let kept = |rec: &Redirected| {
            keeps(cfg, t, rec.listener, rec.backend) || self.redirector.routed(rec)
        };
        let swept = match sweep(&self.redirector, diag, missing, Instant::now(), kept) {
            Ok(s) => s,
            Err(e) => {
                // A dump broken off may still be answering: start the next sweep on a new
                // socket.
                if let Ok(fresh) = Diag::open() {
                    *diag = fresh;
                }
                return Err(e);
            }
        };
        drop(g);
        let Swept {
            killed,
            failed,
            tally,
        } = swept;
        if let Some((rec, why)) = failed.first() {
            tracing::error!(
                "redirect_local: could not close {} redirected session(s) whose backend left \
                 the pool (e.g. to {}: {why}); retrying",
                failed.len(),
                rec.backend
            );
        }
        let name_of = |b: SocketAddrV4| {
            t.members
                .iter()
                .find(|m| m.addr == Some(SocketAddr::V4(b)))
                .map_or_else(|| b.to_string(), |m| m.name.clone())
        };
        let mut by_member: BTreeMap<(Port, String), usize> = BTreeMap::new();
        for ((listener, backend), n) in tally {
            let Some(port) = port_of(cfg, listener) else {
                continue;
            };
            *by_member.entry((port, name_of(backend))).or_default() += n;
        }
        metrics.redirected_sessions.reset();
        for ((port, member), n) in &by_member {
            metrics
                .redirected_sessions
                .with_label_values(&[port.as_str(), member])
                .set(*n as i64);
        }
        *self.tallies.lock().unwrap_or_else(|p| p.into_inner()) = by_member;
        let mut destroyed = BTreeMap::new();
        for rec in &killed {
            if let Some(port) = port_of(cfg, rec.listener) {
                *destroyed.entry(port).or_default() += 1;
            }
        }
        Ok(destroyed)
    }

    /// Destroys every redirected session (the router is stopping: like relayed sessions, they
    /// end with it, so none is left that no router would cut on the next failover).
    pub fn cut_all(&self) {
        let _ = self.redirector.clear();
        let mut g = self.diag.lock().unwrap_or_else(|p| p.into_inner());
        let (diag, missing) = &mut *g;
        match sweep(&self.redirector, diag, missing, Instant::now(), |_| false) {
            Ok(s) if !s.killed.is_empty() => tracing::info!(
                "redirect_local: closed {} redirected session(s) on the way out",
                s.killed.len()
            ),
            Ok(_) => {}
            Err(e) => tracing::error!("redirect_local: closing redirected sessions: {e}"),
        }
    }
}
