//! The routing decision, pure: from the DCS view, the live probes and the previous pool state,
//! build the immutable routing table the connection path reads with one `ArcSwap::load()`;
//! and the rules read from a table: which sessions a backend keeps ([`keeps_read`], [`keeps`])
//! and where local clients are routed at connect time ([`routes_for`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use patrol_dcs::{Cluster, Role, SyncState, SynchronousMode};

use crate::config::{Config, ReadFallback};

/// Which listener a session came through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    Write,
    Read,
}

impl Port {
    pub fn as_str(self) -> &'static str {
        match self {
            Port::Write => "write",
            Port::Read => "read",
        }
    }
}

/// What a member's REST API (`GET /patroni`) said last.
#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub at: Instant,
    /// `false` when the API did not answer (member or host down).
    pub reachable: bool,
    /// PostgreSQL is running and not in recovery.
    pub primary: bool,
    pub running: bool,
    pub wal_position: u64,
    pub replayed: u64,
    pub streaming: bool,
    pub timeline: u64,
    /// Seconds since the last replayed transaction when it is behind what it received.
    pub replay_delay_seconds: f64,
    /// Consecutive probes that got no answer (0 when this one answered).
    pub failures: u32,
    /// The last probe found nothing listening on the agent's port (the agent is gone), as
    /// opposed to no answer in time.
    pub refused: bool,
    /// `failsafe_mode_is_active` in its `GET /patroni`.
    pub failsafe_active: bool,
}

/// Refused probes of the agent's port tolerated before its node counts as down (one can be a
/// restart of the agent).
pub const TOLERATED_REFUSALS: u32 = 1;

impl Probe {
    /// The agent is gone: its port refused, after more than [`TOLERATED_REFUSALS`] failed
    /// probes. Nothing will demote that node's PostgreSQL when its key expires, so its sessions
    /// are cut. (No answer in time is not evidence: a saturated or frozen host answers late,
    /// and its lease in etcd is the liveness proof.)
    pub fn agent_gone(&self) -> bool {
        self.refused && self.failures > TOLERATED_REFUSALS
    }
}

/// One backend a connection may go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
}

/// What a replica is to the current leader's commits, as the `sync` key and the `config` key's
/// `synchronous_mode` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncRole {
    /// Listed in the `sync` key with `synchronous_mode: on`.
    Sync,
    /// Listed in the `sync` key with `synchronous_mode: quorum` (a quorum voter).
    Quorum,
    Async,
}

impl SyncRole {
    pub const ALL: [SyncRole; 3] = [SyncRole::Sync, SyncRole::Quorum, SyncRole::Async];

    pub fn as_str(self) -> &'static str {
        match self {
            SyncRole::Sync => "sync",
            SyncRole::Quorum => "quorum",
            SyncRole::Async => "async",
        }
    }
}

/// The current leader's synchronous standbys: the `sync` key when synchronous mode is on and
/// the key is that leader's, or why no member is one.
enum Standbys<'a> {
    /// The key's standbys are synchronous (or quorum) standbys.
    Listed(&'a SyncState, SyncRole),
    /// No member is one, and why.
    Nobody(String),
}

impl<'a> Standbys<'a> {
    fn of(c: &'a Cluster, leader: Option<&str>) -> Standbys<'a> {
        if is_standby_cluster(c) {
            return Standbys::Nobody("a standby cluster has no synchronous standbys".into());
        }
        let role = match c.synchronous_mode() {
            SynchronousMode::Off => return Standbys::Nobody("synchronous_mode is off".into()),
            SynchronousMode::On => SyncRole::Sync,
            SynchronousMode::Quorum => SyncRole::Quorum,
        };
        let Some(sync) = c.sync.as_ref().map(|v| &v.value) else {
            return Standbys::Nobody("no sync key".into());
        };
        match leader {
            None => Standbys::Nobody("no leader".into()),
            Some(l) if sync.leader_matches(l) => Standbys::Listed(sync, role),
            Some(l) => Standbys::Nobody(format!(
                "the sync key is for leader {}, not {l}",
                sync.leader.as_deref().unwrap_or("none")
            )),
        }
    }

    fn role_of(&self, name: &str) -> SyncRole {
        match self {
            Standbys::Listed(sync, role) if sync.matches(name) => *role,
            _ => SyncRole::Async,
        }
    }

    /// Why `name` is not one of them (`None` when it is).
    fn why_not(&self, name: &str) -> Option<String> {
        let why = match self {
            Standbys::Listed(sync, _) if sync.matches(name) => return None,
            Standbys::Listed(..) => "not listed in the sync key",
            Standbys::Nobody(why) => why,
        };
        Some(format!("asynchronous ({why})"))
    }
}

/// Per member, for the stats page and the pool hysteresis.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemberView {
    pub name: String,
    pub addr: Option<SocketAddr>,
    pub role: String,
    pub state: String,
    pub timeline: Option<u64>,
    pub lag_bytes: Option<u64>,
    pub lag_seconds: Option<f64>,
    pub in_write_pool: bool,
    pub in_read_pool: bool,
    /// What it is to the leader's commits (`None` for the leader itself).
    pub sync_role: Option<SyncRole>,
    /// Why it is not in a pool ("" when it is).
    pub reason: String,
    /// Alive as a replica (running, in recovery, API answering): read sessions survive.
    pub alive_replica: bool,
    /// When its read-pool membership last changed.
    pub pool_changed_at: Option<Instant>,
    /// When it last left the read pool, and how many times in a row it left again soon after
    /// coming back (flap damping: each doubles the hold-down, up to 16x).
    pub last_exit: Option<Instant>,
    pub flaps: u32,
}

impl MemberView {
    /// The hold-down before re-entry, grown by recent flaps.
    pub fn hold_down(&self, base: Duration) -> Duration {
        base * 2u32.pow(self.flaps.min(4))
    }
}

/// The table: immutable, swapped whole.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Table {
    pub generation: u64,
    pub leader: Option<String>,
    pub writer: Option<Backend>,
    pub writer_reason: String,
    pub readers: Vec<Backend>,
    pub members: Vec<MemberView>,
    pub dcs_healthy: bool,
    /// The `config` key makes the cluster a standby cluster: it has no writer by design.
    pub standby_cluster: bool,
}

/// Whether the `config` key makes `c` a standby cluster (spec 5.9): its leader is a read-only
/// *standby leader* replicating from a remote primary, and the other members replicate from it.
pub fn is_standby_cluster(c: &Cluster) -> bool {
    c.config
        .as_ref()
        .is_some_and(|v| v.value.is_standby_cluster())
}

/// Host names of members' `conn_url`s and the address each last resolved to (the probes
/// resolve them; the table is built without I/O).
pub type Resolved = BTreeMap<String, std::net::IpAddr>;

/// Where to connect for a member: the host (an address, or a name as last resolved) and port of
/// its `conn_url`, or the same host at `backend_port` when one is configured (a pooler beside
/// each PostgreSQL).
fn addr_of(conn_url: &str, backend_port: Option<u16>, resolved: &Resolved) -> Option<SocketAddr> {
    let (host, port) = patrol_dcs::parse_conn_url(conn_url)?;
    let ip: std::net::IpAddr = match host.parse() {
        Ok(ip) => ip,
        Err(_) => *resolved.get(&host)?,
    };
    Some(SocketAddr::new(ip, backend_port.unwrap_or(port)))
}

fn fresh(p: Option<&Probe>, now: Instant, max_age: Duration) -> Option<&Probe> {
    p.filter(|p| now.saturating_duration_since(p.at) <= max_age)
}

/// Builds the next table. `prev` supplies the last writer (kept through a DCS outage while its
/// own agent confirms it is primary) and each member's pool state (hysteresis).
pub fn build(
    cfg: &Config,
    cluster: Option<&Cluster>,
    dcs_healthy: bool,
    probes: &BTreeMap<String, Probe>,
    resolved: &Resolved,
    prev: &Table,
    now: Instant,
) -> Table {
    let max_age = cfg.probe_interval * 4 + cfg.probe_timeout;
    let mut t = Table {
        generation: prev.generation + 1,
        dcs_healthy,
        ..Table::default()
    };
    let Some(c) = cluster else {
        t.writer_reason = "no cluster view from etcd yet".into();
        return t;
    };
    let leader = c.leader_name().map(String::from);
    t.leader = leader.clone();
    let standby = is_standby_cluster(c);
    t.standby_cluster = standby;

    // Writer: the lock holder, confirmed primary by its own API (fresh probe) or, without a
    // probe, by its member key. A holder still promoting is not a writer yet.
    let was_writer = |name: &str| prev.writer.as_ref().is_some_and(|w| w.name == name);
    let confirmed = |name: &str| -> bool {
        let m = c.member(name);
        match fresh(probes.get(name), now, max_age) {
            Some(p) if p.reachable => p.primary,
            // No answer in time is not evidence: a saturated host answers late, and the lease
            // in etcd is the liveness proof (a frozen host loses the key after ttl, and that
            // event cuts the sessions). An answer saying "not primary", or the agent's port
            // refusing twice (the agent is gone and nothing will demote this PostgreSQL when the
            // key expires), removes it.
            Some(p) => was_writer(name) && !p.agent_gone(),
            None => m.is_some_and(|m| m.data.role == Role::Primary && m.data.state == "running"),
        }
    };
    if standby {
        // No writer by design, whatever the leader's probe says (an old primary being demoted
        // to standby leader is still primary for a moment: its write sessions end now).
        let who = match &leader {
            Some(l) => format!("standby leader {l} replicates from a remote primary"),
            None => "no standby leader: the leader key is not held".into(),
        };
        t.writer_reason = format!("cluster is a standby cluster: no writable primary ({who})");
    } else if dcs_healthy {
        match &leader {
            Some(l) if confirmed(l) => {
                t.writer = c
                    .member(l)
                    .and_then(|m| addr_of(&m.data.conn_url, cfg.backend_port, resolved))
                    .map(|addr| Backend {
                        name: l.clone(),
                        addr,
                    })
                    // Its member key is not back yet (a leader that re-took its key after
                    // its lease expired writes it next): the writer it was stays.
                    .or_else(|| {
                        c.member(l)
                            .is_none()
                            .then(|| prev.writer.clone().filter(|w| &w.name == l))
                            .flatten()
                    });
                if t.writer.is_none() {
                    t.writer_reason = format!("leader {l} has no usable conn_url");
                }
            }
            Some(l) => t.writer_reason = format!("leader {l} is not confirmed primary yet"),
            // Failsafe mode: the lease of a leader cut off from etcd expired, but every member
            // accepted its `POST /failsafe`, none may promote, and its agent holds it primary
            // (until it can renew the key or its hold ends and it demotes): keep it.
            None => match &prev.writer {
                Some(w)
                    if fresh(probes.get(&w.name), now, max_age)
                        .is_some_and(|p| p.reachable && p.primary && p.failsafe_active) =>
                {
                    t.writer = Some(w.clone());
                    t.writer_reason =
                        "no leader key: last leader kept while its agent holds it in failsafe mode"
                            .into();
                }
                _ => t.writer_reason = "no leader".into(),
            },
        }
    } else {
        // etcd unreachable: keep the last writer only while its own API says it is primary
        // (its agent demotes it when it loses the lease).
        match &prev.writer {
            Some(w)
                if fresh(probes.get(&w.name), now, max_age)
                    .is_some_and(|p| p.reachable && p.primary) =>
            {
                t.writer = Some(w.clone());
                t.writer_reason =
                    "etcd unreachable: last leader kept while its agent confirms it is primary"
                        .into();
            }
            Some(w) => {
                t.writer_reason =
                    format!("etcd unreachable and {} is not confirmed primary", w.name)
            }
            None => t.writer_reason = "etcd unreachable and no known leader".into(),
        }
    }

    // Leader position for lag: live when we have it (a primary's, or in a standby cluster the
    // standby leader's received position), else the DCS status.
    let leader_pos = leader
        .as_deref()
        .and_then(|l| fresh(probes.get(l), now, max_age))
        .filter(|p| p.reachable && (p.primary || (standby && p.running)))
        .map(|p| p.wal_position)
        .into_iter()
        .chain(c.status.optime)
        .max();
    let standbys = Standbys::of(c, leader.as_deref());

    for m in &c.members {
        let addr = addr_of(&m.data.conn_url, cfg.backend_port, resolved);
        let probe = fresh(probes.get(&m.name), now, max_age);
        let prev_view = prev.members.iter().find(|v| v.name == m.name);
        let is_writer = t.writer.as_ref().is_some_and(|w| w.name == m.name);
        let is_leader = leader.as_deref() == Some(m.name.as_str());
        let mut v = MemberView {
            name: m.name.clone(),
            addr,
            role: if is_leader && standby {
                Role::StandbyLeader.as_str().into()
            } else if is_leader {
                "leader".into()
            } else {
                m.data.role.as_str().to_string()
            },
            state: m.data.state.clone(),
            timeline: probe
                .map(|p| p.timeline)
                .filter(|t| *t > 0)
                .or(m.data.timeline),
            lag_bytes: None,
            lag_seconds: None,
            in_write_pool: is_writer,
            in_read_pool: false,
            sync_role: (!is_leader).then(|| standbys.role_of(&m.name)),
            reason: String::new(),
            alive_replica: false,
            pool_changed_at: prev_view.and_then(|p| p.pool_changed_at),
            last_exit: prev_view.and_then(|p| p.last_exit),
            flaps: prev_view.map(|p| p.flaps).unwrap_or(0),
        };
        let was_in = prev_view.is_some_and(|p| p.in_read_pool);
        // Left because the leader chose other synchronous standbys: not a flap of its own.
        let mut left_for_sync = false;
        let why_not: Option<String> = match probe {
            _ if addr.is_none() => {
                Some("no usable conn_url (or its host name did not resolve)".into())
            }
            None => Some("no recent probe".into()),
            Some(p) if !p.reachable => {
                // Out of the pool for new sessions; existing ones are kept unless the agent is
                // gone (refused twice): a late answer is not evidence of death, its member key
                // (kept alive by its agent) is.
                v.alive_replica = prev_view.is_some_and(|pv| pv.alive_replica) && !p.agent_gone();
                Some("down (API not answering)".into())
            }
            Some(p) if !p.running => Some("PostgreSQL not running".into()),
            Some(p) if p.primary => Some(if is_writer {
                String::new()
            } else {
                "primary".into()
            }),
            Some(p) => {
                v.alive_replica = true;
                let lag = leader_pos.map(|lp| lp.saturating_sub(p.replayed));
                v.lag_bytes = lag;
                v.lag_seconds = Some(p.replay_delay_seconds);
                let noload = m.data.noloadbalance();
                // A standby cluster's leader reads like a replica, but it is the source of the
                // cluster's data: it may follow the remote primary through an archive (not
                // streaming), and no member is closer to the commits than it is.
                if is_leader && !standby {
                    Some("leader (promoting)".into())
                } else if noload {
                    Some("tagged noloadbalance".into())
                } else if !p.streaming && !is_leader && !m.data.nostream() {
                    // A `nostream` member never streams: its lag alone decides.
                    Some("not streaming".into())
                } else if let Some(why) = (cfg.read_sync_only && !is_leader)
                    .then(|| standbys.why_not(&m.name))
                    .flatten()
                {
                    left_for_sync = true;
                    Some(why)
                } else {
                    let limit = cfg.max_lag_bytes;
                    let over = |ratio: f64| {
                        let l = lag.unwrap_or(u64::MAX);
                        let bytes_over = (l as f64) > (limit as f64) * ratio;
                        let secs_over = cfg
                            .max_lag_seconds
                            .is_some_and(|s| p.replay_delay_seconds > s * ratio);
                        bytes_over || secs_over
                    };
                    // The replay delay matters only when a limit in seconds is set.
                    let describe = || {
                        let bytes = lag
                            .map(|l| l.to_string())
                            .unwrap_or_else(|| "unknown".into());
                        match cfg.max_lag_seconds {
                            Some(_) => {
                                format!("lag {bytes} bytes, {:.1} s", p.replay_delay_seconds)
                            }
                            None => format!("lag {bytes} bytes"),
                        }
                    };
                    if was_in {
                        over(1.0).then(|| format!("{} over the limit", describe()))
                    } else if over(cfg.enter_ratio) {
                        Some(format!(
                            "{} (re-enters at {:.0} bytes{})",
                            describe(),
                            limit as f64 * cfg.enter_ratio,
                            cfg.max_lag_seconds
                                .map(|s| format!(", {:.1} s", s * cfg.enter_ratio))
                                .unwrap_or_default()
                        ))
                    } else if v.last_exit.is_some_and(|at| {
                        now.saturating_duration_since(at) < v.hold_down(cfg.hold_down)
                    }) {
                        Some(format!(
                            "hold-down after leaving the pool ({} s)",
                            v.hold_down(cfg.hold_down).as_secs()
                        ))
                    } else {
                        None
                    }
                }
            }
        };
        match why_not {
            None => {
                v.in_read_pool = true;
            }
            Some(r) => v.reason = r,
        }
        if v.in_read_pool != was_in && prev_view.is_some() {
            v.pool_changed_at = Some(now);
            if was_in && !left_for_sync {
                // Left again soon after the last exit's hold-down ended: a flap.
                let recent = v.last_exit.is_some_and(|at| {
                    now.saturating_duration_since(at) < v.hold_down(cfg.hold_down) * 2
                });
                v.flaps = if recent { v.flaps + 1 } else { 0 };
                v.last_exit = Some(now);
            }
        }
        if v.in_read_pool {
            if let Some(a) = addr {
                t.readers.push(Backend {
                    name: m.name.clone(),
                    addr: a,
                });
            }
        }
        t.members.push(v);
    }
    t
}

/// Whether a member keeps its read sessions: it is in the read pool, or it left only for lag
/// (and `keep_sessions_on_lag`), or it is the writer (read fallback). A dead or demoted replica
/// does not.
pub fn keeps_read(cfg: &Config, v: &MemberView) -> bool {
    v.in_read_pool || (cfg.keep_sessions_on_lag && v.alive_replica) || v.in_write_pool
}

/// Which of the router's ports `listener` is.
pub fn port_of(cfg: &Config, listener: SocketAddrV4) -> Option<Port> {
    let is = |l: SocketAddr| {
        l.port() == listener.port()
            && (l.ip().is_unspecified() || l.ip() == IpAddr::V4(*listener.ip()))
    };
    if is(cfg.write_listen) {
        Some(Port::Write)
    } else if is(cfg.read_listen) {
        Some(Port::Read)
    } else {
        None
    }
}

fn v4(a: SocketAddr) -> Option<SocketAddrV4> {
    match a {
        SocketAddr::V4(a) => Some(a),
        SocketAddr::V6(_) => None,
    }
}

/// Where local connects to each listener address go under table `t` (`None`: left to the
/// listener): the writer; the read pool's one member (or the writer, with `read.fallback:
/// leader`); nowhere when the port has no backend, only IPv6 ones, or, for the read port,
/// several.
/// `write` and `read` are the IPv4 addresses clients on this host reach each listener at
/// (`kernel::redirect::listener_addrs`).
///
/// A client cancels a query by opening a new connection to the same port with a
/// `CancelRequest`. The program cannot see it, so with several replicas it could send the
/// cancel to another one than the session's, where it is silently ignored (and a JDBC query
/// timeout, say, would never fire). The listener can route it: to the session's backend when
/// the relay saw the session's key, else to every backend that may hold it (the pool, and the
/// members with redirected sessions, whose keys it never sees); so a read port with more than
/// one backend is left to it.
pub fn routes_for(
    cfg: &Config,
    t: &Table,
    write: &[SocketAddrV4],
    read: &[SocketAddrV4],
) -> BTreeMap<SocketAddrV4, Option<SocketAddrV4>> {
    let writer = t.writer.as_ref().and_then(|w| v4(w.addr));
    let reader = match t.readers.as_slice() {
        [] if cfg.read_fallback == ReadFallback::Leader => writer,
        [one] => v4(one.addr),
        _ => None,
    };
    let mut routes = BTreeMap::new();
    for l in write {
        routes.insert(*l, writer);
    }
    for l in read {
        routes.insert(*l, reader);
    }
    routes
}

/// Whether a session a local client's connect to `listener` was redirected into, to
/// `backend`, may stay there under table `t`: the rule relayed sessions follow (the writer
/// keeps the write port's, [`keeps_read`] decides the read port's).
pub fn keeps(cfg: &Config, t: &Table, listener: SocketAddrV4, backend: SocketAddrV4) -> bool {
    let backend = SocketAddr::V4(backend);
    match port_of(cfg, listener) {
        Some(Port::Write) => t.writer.as_ref().is_some_and(|w| w.addr == backend),
        Some(Port::Read) => t
            .members
            .iter()
            .any(|m| m.addr == Some(backend) && keeps_read(cfg, m)),
        None => false,
    }
}

#[cfg(test)]
mod tests;
