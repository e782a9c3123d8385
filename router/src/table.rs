//! The routing decision, pure: from the DCS view, the live probes and the previous pool state,
//! build the immutable routing table the connection path reads with one `ArcSwap::load()`;
//! and the rules read from a table: which sessions a backend keeps ([`keeps_read`], [`keeps`])
//! and where local clients are routed at connect time ([`routes_for`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use patrol_dcs::{Cluster, Role};

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
    if dcs_healthy {
        match &leader {
            Some(l) if confirmed(l) => {
                t.writer = c
                    .member(l)
                    .and_then(|m| addr_of(&m.data.conn_url, cfg.backend_port, resolved))
                    .map(|addr| Backend {
                        name: l.clone(),
                        addr,
                    });
                if t.writer.is_none() {
                    t.writer_reason = format!("leader {l} has no usable conn_url");
                }
            }
            Some(l) => t.writer_reason = format!("leader {l} is not confirmed primary yet"),
            None => t.writer_reason = "no leader".into(),
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

    // Leader position for lag: live when we have it, else the DCS status.
    let leader_pos = leader
        .as_deref()
        .and_then(|l| fresh(probes.get(l), now, max_age))
        .filter(|p| p.reachable && p.primary)
        .map(|p| p.wal_position)
        .into_iter()
        .chain(c.status.optime)
        .max();

    for m in &c.members {
        let addr = addr_of(&m.data.conn_url, cfg.backend_port, resolved);
        let probe = fresh(probes.get(&m.name), now, max_age);
        let prev_view = prev.members.iter().find(|v| v.name == m.name);
        let is_writer = t.writer.as_ref().is_some_and(|w| w.name == m.name);
        let is_leader = leader.as_deref() == Some(m.name.as_str());
        let mut v = MemberView {
            name: m.name.clone(),
            addr,
            role: if is_leader {
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
            reason: String::new(),
            alive_replica: false,
            pool_changed_at: prev_view.and_then(|p| p.pool_changed_at),
            last_exit: prev_view.and_then(|p| p.last_exit),
            flaps: prev_view.map(|p| p.flaps).unwrap_or(0),
        };
        let was_in = prev_view.is_some_and(|p| p.in_read_pool);
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
                if is_leader {
                    Some("leader (promoting)".into())
                } else if noload {
                    Some("tagged noloadbalance".into())
                } else if !p.streaming {
                    Some("not streaming".into())
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
            if was_in {
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
mod tests_support {
    pub use super::*;
    pub use crate::config::{Config, Overrides};
    pub use patrol_dcs::Kv;

    /// [`super::build`] for members whose `conn_url`s are addresses (no host names to resolve).
    pub fn build(
        cfg: &Config,
        cluster: Option<&Cluster>,
        dcs_healthy: bool,
        probes: &BTreeMap<String, Probe>,
        prev: &Table,
        now: Instant,
    ) -> Table {
        super::build(
            cfg,
            cluster,
            dcs_healthy,
            probes,
            &Resolved::new(),
            prev,
            now,
        )
    }

    pub fn cfg() -> Config {
        let o = Overrides {
            scope: Some("c".into()),
            ..Overrides::default()
        };
        let mut c = Config::load(None, &o).expect("valid");
        c.hold_down = Duration::from_secs(30);
        c
    }

    pub fn cluster(leader: Option<&str>, roles: &[(&str, &str)]) -> Cluster {
        let mut kvs = vec![];
        if let Some(l) = leader {
            kvs.push(Kv {
                key: "leader".into(),
                value: l.into(),
                mod_revision: 1,
                lease: 1,
            });
        }
        for (i, (n, r)) in roles.iter().enumerate() {
            kvs.push(Kv {
                key: format!("members/{n}"),
                value: format!(
                    r#"{{"conn_url":"postgres://127.0.0.1:{}/postgres","api_url":"http://127.0.0.1:{}/patroni","state":"running","role":"{r}","version":"4.1.4"}}"#,
                    5432 + i,
                    8008 + i
                ),
                mod_revision: 1,
                lease: 1,
            });
        }
        Cluster::from_kvs(1, &kvs)
    }

    pub fn probe(now: Instant, primary: bool, wal: u64, replayed: u64) -> Probe {
        Probe {
            at: now,
            reachable: true,
            primary,
            running: true,
            wal_position: wal,
            replayed,
            streaming: !primary,
            timeline: 1,
            replay_delay_seconds: 0.0,
            failures: 0,
            refused: false,
        }
    }

    #[test]
    fn writer_is_the_confirmed_leader_readers_are_streaming_replicas() {
        let now = Instant::now();
        let c = cluster(
            Some("a"),
            &[("a", "primary"), ("b", "replica"), ("c", "replica")],
        );
        let mut p = BTreeMap::new();
        p.insert("a".into(), probe(now, true, 1000, 0));
        p.insert("b".into(), probe(now, false, 1000, 1000));
        p.insert("c".into(), probe(now, false, 1000, 900));
        let t = build(&cfg(), Some(&c), true, &p, &Table::default(), now);
        assert_eq!(t.writer.as_ref().map(|w| w.name.as_str()), Some("a"));
        let r: Vec<_> = t.readers.iter().map(|b| b.name.as_str()).collect();
        assert_eq!(r, ["b", "c"]);
    }

    #[test]
    fn backend_port_replaces_the_conn_url_port_on_the_same_host() {
        let now = Instant::now();
        let c = cluster(Some("a"), &[("a", "primary"), ("b", "replica")]);
        let mut p = BTreeMap::new();
        p.insert("a".into(), probe(now, true, 1000, 0));
        p.insert("b".into(), probe(now, false, 1000, 1000));
        let direct = build(&cfg(), Some(&c), true, &p, &Table::default(), now);
        let mut pooled_cfg = cfg();
        pooled_cfg.backend_port = Some(6432);
        let pooled = build(&pooled_cfg, Some(&c), true, &p, &Table::default(), now);
        let (d, w) = (
            direct.writer.expect("writer"),
            pooled.writer.expect("writer"),
        );
        assert_eq!(w.addr.ip(), d.addr.ip());
        assert_ne!(d.addr.port(), 6432);
        assert_eq!(w.addr.port(), 6432);
        assert_eq!(pooled.readers[0].addr.port(), 6432);
    }

    #[test]
    fn host_names_route_once_resolved() {
        let now = Instant::now();
        let mut c = cluster(Some("a"), &[("a", "primary")]);
        c.members[0].data.conn_url = "postgres://db-a.internal:5433/postgres".into();
        let mut p = BTreeMap::new();
        p.insert("a".into(), probe(now, true, 1000, 0));
        let unresolved = build(&cfg(), Some(&c), true, &p, &Table::default(), now);
        assert!(unresolved.writer.is_none());
        let mut r = Resolved::new();
        r.insert("db-a.internal".into(), "10.1.2.3".parse().expect("ip"));
        let t = super::build(&cfg(), Some(&c), true, &p, &r, &Table::default(), now);
        let w = t.writer.expect("writer");
        assert_eq!(w.addr, "10.1.2.3:5433".parse().expect("addr"));
    }

    #[test]
    fn a_promoting_leader_is_not_a_writer_yet() {
        let now = Instant::now();
        let c = cluster(Some("b"), &[("a", "replica"), ("b", "replica")]);
        let mut p = BTreeMap::new();
        p.insert("b".into(), probe(now, false, 1000, 1000));
        let t = build(&cfg(), Some(&c), true, &p, &Table::default(), now);
        assert!(t.writer.is_none());
        assert!(
            t.writer_reason.contains("not confirmed"),
            "{}",
            t.writer_reason
        );
    }

    #[test]
    fn lock_holder_without_probe_is_confirmed_by_its_member_key() {
        let now = Instant::now();
        let c = cluster(Some("a"), &[("a", "primary")]);
        let t = build(
            &cfg(),
            Some(&c),
            true,
            &BTreeMap::new(),
            &Table::default(),
            now,
        );
        assert_eq!(t.writer.map(|w| w.name), Some("a".into()));
    }

    #[test]
    fn dcs_outage_keeps_the_writer_only_while_it_confirms_primary() {
        let now = Instant::now();
        let c = cluster(Some("a"), &[("a", "primary"), ("b", "replica")]);
        let mut p = BTreeMap::new();
        p.insert("a".into(), probe(now, true, 1000, 0));
        let t1 = build(&cfg(), Some(&c), true, &p, &Table::default(), now);
        let t2 = build(&cfg(), Some(&c), false, &p, &t1, now);
        assert_eq!(t2.writer.as_ref().map(|w| w.name.as_str()), Some("a"));
        // The agent demoted it (lost its lease): no writer.
        p.insert("a".into(), probe(now, false, 1000, 1000));
        let t3 = build(&cfg(), Some(&c), false, &p, &t2, now);
        assert!(t3.writer.is_none());
    }

    #[test]
    fn lag_hysteresis_and_hold_down() {
        let cfg = cfg();
        let t0 = Instant::now();
        let c = cluster(Some("a"), &[("a", "primary"), ("b", "replica")]);
        let mut p = BTreeMap::new();
        let lim = cfg.max_lag_bytes;
        let at = |t: Instant, lag: u64, p: &mut BTreeMap<String, Probe>| {
            p.insert("a".into(), probe(t, true, 10 * lim, 0));
            p.insert("b".into(), probe(t, false, 10 * lim, 10 * lim - lag));
        };
        at(t0, 0, &mut p);
        let t = build(&cfg, Some(&c), true, &p, &Table::default(), t0);
        assert_eq!(t.readers.len(), 1);
        // Just over the limit: out at once.
        let t1 = t0 + Duration::from_secs(1);
        at(t1, lim + 1, &mut p);
        let t = build(&cfg, Some(&c), true, &p, &t, t1);
        assert!(t.readers.is_empty());
        // Back under the limit but above the enter threshold: stays out.
        let t2 = t1 + Duration::from_secs(5);
        at(t2, lim - 1, &mut p);
        let t = build(&cfg, Some(&c), true, &p, &t, t2);
        assert!(t.readers.is_empty(), "{:?}", t.members);
        // Under the enter threshold but within the hold-down: out.
        let t3 = t1 + Duration::from_secs(10);
        at(t3, 0, &mut p);
        let t = build(&cfg, Some(&c), true, &p, &t, t3);
        assert!(t.readers.is_empty());
        assert!(t.members[1].reason.contains("hold-down"));
        // After the hold-down: in.
        let t4 = t1 + Duration::from_secs(31);
        at(t4, 0, &mut p);
        let t = build(&cfg, Some(&c), true, &p, &t, t4);
        assert_eq!(t.readers.len(), 1);
    }

    #[test]
    fn oscillating_lag_changes_membership_at_most_twice_per_hold_down() {
        let cfg = cfg();
        let c = cluster(Some("a"), &[("a", "primary"), ("b", "replica")]);
        let lim = cfg.max_lag_bytes;
        let start = Instant::now();
        let mut t = Table::default();
        let mut transitions = 0;
        let mut was = None;
        // 30 minutes of lag oscillating around the limit with a 10 s period, sampled every 500 ms.
        for i in 0..3600u64 {
            let now = start + Duration::from_millis(500 * i);
            let phase = (i % 20) as f64 / 20.0 * std::f64::consts::TAU;
            let lag = (lim as f64 * (1.0 + 0.3 * phase.sin())) as u64;
            let mut p = BTreeMap::new();
            p.insert("a".into(), probe(now, true, 10 * lim, 0));
            p.insert("b".into(), probe(now, false, 10 * lim, 10 * lim - lag));
            t = build(&cfg, Some(&c), true, &p, &t, now);
            let inn = !t.readers.is_empty();
            if was.is_some_and(|w| w != inn) {
                transitions += 1;
            }
            was = Some(inn);
        }
        // Patroni + HAProxy flapped 300 times in 22 minutes (patroni#3491). Target T8: at most
        // one transition per 30 s hold-down window on average.
        assert!(transitions <= 30 * 60 / 30, "{transitions} transitions");
        assert!(
            transitions >= 2,
            "it must still leave the pool: {transitions}"
        );
    }

    #[test]
    fn replay_delay_over_max_lag_seconds_is_out() {
        let now = Instant::now();
        let mut cfg = cfg();
        cfg.max_lag_seconds = Some(5.0);
        let c = cluster(Some("a"), &[("a", "primary"), ("b", "replica")]);
        let mut p = BTreeMap::new();
        p.insert("a".into(), probe(now, true, 100, 0));
        let mut b = probe(now, false, 100, 100);
        b.replay_delay_seconds = 10.0;
        p.insert("b".into(), b);
        let t = build(&cfg, Some(&c), true, &p, &Table::default(), now);
        assert!(t.readers.is_empty());
        assert!(t.members[1].reason.contains("10.0 s"), "{:?}", t.members[1]);
    }

    #[test]
    fn down_or_not_streaming_replicas_are_out() {
        let now = Instant::now();
        let c = cluster(
            Some("a"),
            &[("a", "primary"), ("b", "replica"), ("c", "replica")],
        );
        let mut p = BTreeMap::new();
        p.insert("a".into(), probe(now, true, 100, 0));
        let mut b = probe(now, false, 100, 100);
        b.reachable = false;
        p.insert("b".into(), b);
        let mut cc = probe(now, false, 100, 100);
        cc.streaming = false;
        p.insert("c".into(), cc);
        let t = build(&cfg(), Some(&c), true, &p, &Table::default(), now);
        assert!(t.readers.is_empty());
        assert!(t.members[1].reason.contains("down"));
        assert!(t.members[2].reason.contains("not streaming"));
    }
}

#[cfg(test)]
mod probe_tolerance {
    use super::tests_support::*;

    #[test]
    fn unanswered_probes_keep_the_lock_holder_an_answer_or_the_key_decides() {
        let now = Instant::now();
        let c = cluster(Some("a"), &[("a", "primary"), ("b", "replica")]);
        let mut p = BTreeMap::new();
        p.insert("a".to_string(), probe(now, true, 100, 0));
        p.insert("b".to_string(), probe(now, false, 100, 100));
        let t1 = build(&cfg(), Some(&c), true, &p, &Table::default(), now);
        assert!(t1.writer.is_some());
        assert!(t1.members[1].alive_replica);
        // A saturated host: its API stops answering for a while, the key stays held.
        let mut miss = probe(now, false, 0, 0);
        miss.reachable = false;
        miss.failures = 5;
        p.insert("a".to_string(), miss.clone());
        p.insert("b".to_string(), miss.clone());
        let t2 = build(&cfg(), Some(&c), true, &p, &t1, now);
        assert_eq!(t2.writer.as_ref().map(|w| w.name.as_str()), Some("a"));
        assert!(
            t2.readers.is_empty(),
            "an unanswering replica takes no new sessions"
        );
        assert!(t2.members[1].alive_replica, "but keeps the ones it has");
        // The agent's port refuses (its process is gone): once is tolerated, twice removes it
        // and cuts the replica's sessions too.
        let mut refused = miss.clone();
        refused.refused = true;
        refused.failures = 1;
        p.insert("a".to_string(), refused.clone());
        p.insert("b".to_string(), refused.clone());
        let r1 = build(&cfg(), Some(&c), true, &p, &t2, now);
        assert!(r1.writer.is_some() && r1.members[1].alive_replica);
        refused.failures = 2;
        p.insert("a".to_string(), refused.clone());
        p.insert("b".to_string(), refused);
        let r2 = build(&cfg(), Some(&c), true, &p, &r1, now);
        assert!(r2.writer.is_none() && !r2.members[1].alive_replica);
        p.insert("a".to_string(), miss.clone());
        p.insert("b".to_string(), miss.clone());
        // The key moves (expired, taken by b): a is not the writer any more.
        let moved = cluster(Some("b"), &[("a", "primary"), ("b", "replica")]);
        let t3 = build(&cfg(), Some(&moved), true, &p, &t2, now);
        assert!(t3.writer.is_none());
        // An answer saying "not primary" removes it at once.
        p.insert("a".to_string(), probe(now, false, 0, 100));
        let t4 = build(&cfg(), Some(&c), true, &p, &t2, now);
        assert!(t4.writer.is_none());
        // Without etcd there is no lease to rely on: only a fresh "primary" answer keeps it.
        p.insert("a".to_string(), miss);
        let t5 = build(&cfg(), Some(&c), false, &p, &t2, now);
        assert!(t5.writer.is_none());
    }
}

#[cfg(test)]
mod session_rules {
    use super::tests_support::*;
    use std::net::Ipv4Addr;

    fn table() -> (Config, Table) {
        let mut cfg = cfg();
        cfg.write_listen = "127.0.0.1:5000".parse().expect("addr");
        cfg.read_listen = "127.0.0.1:5001".parse().expect("addr");
        let b = |name: &str, port: u16| Backend {
            name: name.into(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        let view = |name: &str, port: u16, write: bool, read: bool, alive: bool| MemberView {
            name: name.into(),
            addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            in_write_pool: write,
            in_read_pool: read,
            alive_replica: alive,
            ..Default::default()
        };
        let t = Table {
            writer: Some(b("a", 5432)),
            readers: vec![b("b", 5433)],
            members: vec![
                view("a", 5432, true, false, false),
                view("b", 5433, false, true, true),
                // Out of the read pool for lag, still a live replica.
                view("c", 5434, false, false, true),
                // Dead.
                view("d", 5435, false, false, false),
            ],
            ..Default::default()
        };
        (cfg, t)
    }

    fn at(port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::LOCALHOST, port)
    }

    #[test]
    fn routes_follow_the_table() {
        let (mut cfg, mut t) = table();
        let routes = |cfg: &Config, t: &Table| routes_for(cfg, t, &[at(5000)], &[at(5001)]);
        let r = routes(&cfg, &t);
        assert_eq!(r[&at(5000)], Some(at(5432)));
        assert_eq!(r[&at(5001)], Some(at(5433)));
        // Two replicas: a cancel could reach the wrong one, so the listener keeps the port.
        t.readers.push(Backend {
            name: "c".into(),
            addr: SocketAddr::from(([127, 0, 0, 1], 5434)),
        });
        assert_eq!(routes(&cfg, &t)[&at(5001)], None);
        // No replica qualifies: no route (the listener refuses), or the writer with fallback.
        t.readers.clear();
        assert_eq!(routes(&cfg, &t)[&at(5001)], None);
        cfg.read_fallback = ReadFallback::Leader;
        assert_eq!(routes(&cfg, &t)[&at(5001)], Some(at(5432)));
        // No writer: no route, so connects reach the listener and are held.
        t.writer = None;
        assert_eq!(routes(&cfg, &t)[&at(5000)], None);
        // An IPv6 listener has no IPv4 address to redirect.
        assert_eq!(routes_for(&cfg, &t, &[at(5000)], &[]).len(), 1);
        // An IPv6 writer gets no route.
        t.writer = Some(Backend {
            name: "a".into(),
            addr: "[::1]:5432".parse().expect("addr"),
        });
        assert_eq!(routes(&cfg, &t)[&at(5000)], None);
    }

    #[test]
    fn redirected_sessions_are_kept_by_the_relayed_sessions_rule() {
        let (mut cfg, t) = table();
        let kept =
            |cfg: &Config, listener: u16, backend: u16| keeps(cfg, &t, at(listener), at(backend));
        assert!(kept(&cfg, 5000, 5432), "writer");
        assert!(!kept(&cfg, 5000, 5433), "write session off the writer");
        assert!(kept(&cfg, 5001, 5433), "reader in the pool");
        assert!(kept(&cfg, 5001, 5434), "left for lag, kept by default");
        assert!(!kept(&cfg, 5001, 5435), "dead replica");
        assert!(kept(&cfg, 5001, 5432), "read fallback on the writer");
        assert!(!kept(&cfg, 5999, 5432), "not one of our listeners");
        cfg.keep_sessions_on_lag = false;
        assert!(!kept(&cfg, 5001, 5434), "left for lag, cut when configured");
        // A wildcard listener owns its port on every address.
        cfg.write_listen = "0.0.0.0:5000".parse().expect("addr");
        let other = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 5), 5000);
        assert!(keeps(&cfg, &t, other, at(5432)));
    }
}
