//! Tests of the routing decision ([`super::build`]) and of the rules read from a table.

use super::*;
use crate::config::{Config, Overrides};
use patrol_dcs::Kv;

/// [`super::build`] for members whose `conn_url`s are addresses (no host names to resolve).
fn build(
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

fn cfg() -> Config {
    let o = Overrides {
        scope: Some("c".into()),
        ..Overrides::default()
    };
    let mut c = Config::load(None, &o).expect("valid");
    c.hold_down = Duration::from_secs(30);
    c
}

fn cluster(leader: Option<&str>, roles: &[(&str, &str)]) -> Cluster {
    Cluster::from_kvs(1, &kvs(leader, roles))
}

/// The keys of [`cluster`].
fn kvs(leader: Option<&str>, roles: &[(&str, &str)]) -> Vec<Kv> {
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
    kvs
}

fn probe(now: Instant, primary: bool, wal: u64, replayed: u64) -> Probe {
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
        failsafe_active: false,
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
fn a_leader_key_gone_keeps_the_writer_only_while_its_agent_holds_it_in_failsafe_mode() {
    let now = Instant::now();
    let c = cluster(Some("a"), &[("a", "primary"), ("b", "replica")]);
    let mut p = BTreeMap::new();
    p.insert("a".into(), probe(now, true, 1000, 0));
    let t1 = build(&cfg(), Some(&c), true, &p, &Table::default(), now);
    assert_eq!(t1.writer.as_ref().map(|w| w.name.as_str()), Some("a"));
    // Its lease expired while it was cut off from etcd: without failsafe mode, no writer.
    let gone = cluster(None, &[("a", "primary"), ("b", "replica")]);
    let t2 = build(&cfg(), Some(&gone), true, &p, &t1, now);
    assert!(t2.writer.is_none(), "{}", t2.writer_reason);
    // Its agent holds it on failsafe answers: kept.
    p.get_mut("a").expect("probe").failsafe_active = true;
    let t3 = build(&cfg(), Some(&gone), true, &p, &t1, now);
    assert_eq!(
        t3.writer.as_ref().map(|w| w.name.as_str()),
        Some("a"),
        "{}",
        t3.writer_reason
    );
    // It takes its key back before its member key: still the writer.
    let back = cluster(Some("a"), &[("b", "replica")]);
    let t4 = build(&cfg(), Some(&back), true, &p, &t3, now);
    assert_eq!(
        t4.writer.as_ref().map(|w| w.name.as_str()),
        Some("a"),
        "{}",
        t4.writer_reason
    );
    // Never a member that was not the writer, nor one no longer primary.
    assert!(build(&cfg(), Some(&gone), true, &p, &Table::default(), now)
        .writer
        .is_none());
    p.insert("a".into(), probe(now, false, 1000, 1000));
    p.get_mut("a").expect("probe").failsafe_active = true;
    assert!(build(&cfg(), Some(&gone), true, &p, &t3, now)
        .writer
        .is_none());
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

mod probe_tolerance {
    use super::*;

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

mod session_rules {
    use super::*;
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

/// `read.sync_only`: the read pool holds only the current leader's synchronous standbys.
mod sync_only {
    use super::*;

    /// Leader `a`, replicas `b` and `c`, with the `config` key's `synchronous_mode` (JSON) and
    /// the `sync` key (`None`: absent).
    fn cluster(mode: &str, sync: Option<&str>) -> Cluster {
        let mut kvs = kvs(
            Some("a"),
            &[("a", "primary"), ("b", "replica"), ("c", "replica")],
        );
        let key = |key: &str, value: String| Kv {
            key: key.into(),
            value,
            mod_revision: 2,
            lease: 0,
        };
        kvs.push(key("config", format!(r#"{{"synchronous_mode":{mode}}}"#)));
        if let Some(s) = sync {
            kvs.push(key("sync", s.into()));
        }
        Cluster::from_kvs(2, &kvs)
    }

    fn probes(now: Instant) -> BTreeMap<String, Probe> {
        let mut p = BTreeMap::new();
        p.insert("a".into(), probe(now, true, 1000, 0));
        p.insert("b".into(), probe(now, false, 1000, 1000));
        p.insert("c".into(), probe(now, false, 1000, 1000));
        p
    }

    fn sync_cfg() -> Config {
        let mut c = cfg();
        c.read_sync_only = true;
        c
    }

    fn readers(t: &Table) -> Vec<&str> {
        t.readers.iter().map(|b| b.name.as_str()).collect()
    }

    fn roles(t: &Table) -> Vec<Option<SyncRole>> {
        t.members.iter().map(|m| m.sync_role).collect()
    }

    fn reason<'t>(t: &'t Table, name: &str) -> &'t str {
        let m = t.members.iter().find(|m| m.name == name).expect("member");
        &m.reason
    }

    #[test]
    fn only_the_listed_standbys_of_the_current_leader_read() {
        let now = Instant::now();
        // Names match case-insensitively, the leader's too.
        let c = cluster(
            "true",
            Some(r#"{"leader":"A","quorum":0,"sync_standby":"B"}"#),
        );
        let t = build(
            &sync_cfg(),
            Some(&c),
            true,
            &probes(now),
            &Table::default(),
            now,
        );
        assert_eq!(readers(&t), ["b"]);
        assert_eq!(
            roles(&t),
            [None, Some(SyncRole::Sync), Some(SyncRole::Async)]
        );
        assert_eq!(reason(&t, "c"), "asynchronous (not listed in the sync key)");
        // Without sync_only both replicas read; the roles are shown all the same.
        let t = build(&cfg(), Some(&c), true, &probes(now), &Table::default(), now);
        assert_eq!(readers(&t), ["b", "c"]);
        assert_eq!(
            roles(&t),
            [None, Some(SyncRole::Sync), Some(SyncRole::Async)]
        );
    }

    #[test]
    fn quorum_mode_reads_from_the_quorum_standbys() {
        let now = Instant::now();
        let c = cluster(
            r#""quorum""#,
            Some(r#"{"leader":"a","quorum":1,"sync_standby":"b,c"}"#),
        );
        let t = build(
            &sync_cfg(),
            Some(&c),
            true,
            &probes(now),
            &Table::default(),
            now,
        );
        assert_eq!(readers(&t), ["b", "c"]);
        assert_eq!(
            roles(&t),
            [None, Some(SyncRole::Quorum), Some(SyncRole::Quorum)]
        );
    }

    #[test]
    fn no_qualifying_standby_empties_the_pool_and_the_fallback_decides() {
        let now = Instant::now();
        for (mode, sync, why) in [
            (
                "false",
                Some(r#"{"leader":"a","sync_standby":"b"}"#),
                "synchronous_mode is off",
            ),
            (r#""on""#, None, "no sync key"),
            (
                r#""on""#,
                Some(r#"{"leader":"a","sync_standby":null}"#),
                "not listed",
            ),
            // A stale key, written for the leader before the last failover.
            (
                r#""on""#,
                Some(r#"{"leader":"b","sync_standby":"c"}"#),
                "the sync key is for leader b, not a",
            ),
        ] {
            let c = cluster(mode, sync);
            let mut cfg = sync_cfg();
            let t = build(&cfg, Some(&c), true, &probes(now), &Table::default(), now);
            assert!(t.readers.is_empty(), "{mode} {sync:?}: {:?}", t.readers);
            assert_eq!(
                roles(&t)[1..],
                [Some(SyncRole::Async); 2],
                "{mode} {sync:?}"
            );
            assert!(reason(&t, "c").contains(why), "{:?}", reason(&t, "c"));
            let at = |port| SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
            cfg.read_listen = "127.0.0.1:5001".parse().expect("addr");
            assert_eq!(routes_for(&cfg, &t, &[], &[at(5001)])[&at(5001)], None);
            cfg.read_fallback = ReadFallback::Leader;
            assert_eq!(
                routes_for(&cfg, &t, &[], &[at(5001)])[&at(5001)],
                Some(at(5432)),
                "read.fallback: leader sends reads to the writer"
            );
        }
    }

    #[test]
    fn a_listed_standby_still_needs_to_stream_within_the_lag_limit() {
        let now = Instant::now();
        let c = cluster("true", Some(r#"{"leader":"a","sync_standby":"b,c"}"#));
        let mut p = probes(now);
        p.insert("a".into(), probe(now, true, 10 << 20, 0));
        p.insert("b".into(), probe(now, false, 10 << 20, 0));
        p.get_mut("c").expect("c").streaming = false;
        let t = build(&sync_cfg(), Some(&c), true, &p, &Table::default(), now);
        assert!(t.readers.is_empty());
        assert!(reason(&t, "b").contains("lag"), "{}", reason(&t, "b"));
        assert_eq!(reason(&t, "c"), "not streaming");
    }

    #[test]
    fn a_new_sync_standby_enters_at_once_and_the_old_keeps_its_sessions() {
        let cfg = sync_cfg();
        let t0 = Instant::now();
        let on = |s: &str| cluster("true", Some(s));
        let b = on(r#"{"leader":"a","sync_standby":"b"}"#);
        let c = on(r#"{"leader":"a","sync_standby":"c"}"#);
        let t = build(&cfg, Some(&b), true, &probes(t0), &Table::default(), t0);
        assert_eq!(readers(&t), ["b"]);
        // The leader picks c instead: c reads now, b is out but alive, so it keeps its
        // sessions as a replica out for lag does (keep_sessions_on_lag).
        let t1 = t0 + Duration::from_secs(1);
        let t = build(&cfg, Some(&c), true, &probes(t1), &t, t1);
        assert_eq!(readers(&t), ["c"]);
        let old = t.members.iter().find(|m| m.name == "b").expect("b");
        assert!(keeps_read(&cfg, old));
        let mut cut = cfg.clone();
        cut.keep_sessions_on_lag = false;
        assert!(!keeps_read(&cut, old));
        // Leaving the sync set is the leader's choice, not a flap: back in at once, with no
        // hold-down.
        assert_eq!((old.last_exit, old.flaps), (None, 0));
        let t2 = t1 + Duration::from_secs(1);
        let t = build(&cfg, Some(&b), true, &probes(t2), &t, t2);
        assert_eq!(readers(&t), ["b"]);
    }
}

/// A standby cluster (spec 5.9): the `config` key's `standby_cluster` makes the leader a
/// read-only standby leader; the write port has no backend, the read port serves reads.
mod standby_cluster {
    use super::*;

    const STANDBY: &str = r#"{"standby_cluster":{"host":"10.9.9.9","port":5432}}"#;

    /// Leader `leader` among `roles`, with the `config` key `config` (`None`: absent).
    fn cluster(config: Option<&str>, leader: Option<&str>, roles: &[(&str, &str)]) -> Cluster {
        let mut kvs = kvs(leader, roles);
        if let Some(value) = config {
            kvs.push(Kv {
                key: "config".into(),
                value: value.into(),
                mod_revision: 2,
                lease: 0,
            });
        }
        Cluster::from_kvs(2, &kvs)
    }

    /// Standby leader `a` (in recovery, as its API says) and replicas `b` and `c`.
    fn standby(config: &str) -> Cluster {
        cluster(
            Some(config),
            Some("a"),
            &[("a", "standby_leader"), ("b", "replica"), ("c", "replica")],
        )
    }

    fn readers(t: &Table) -> Vec<&str> {
        t.readers.iter().map(|b| b.name.as_str()).collect()
    }

    fn member<'t>(t: &'t Table, name: &str) -> &'t MemberView {
        t.members.iter().find(|m| m.name == name).expect("member")
    }

    #[test]
    fn no_writer_and_the_reason_names_the_standby_leader() {
        let now = Instant::now();
        let mut p = BTreeMap::new();
        p.insert("a".into(), probe(now, false, 1000, 1000));
        p.insert("b".into(), probe(now, false, 1000, 1000));
        let t = build(
            &cfg(),
            Some(&standby(STANDBY)),
            true,
            &p,
            &Table::default(),
            now,
        );
        assert!(t.writer.is_none());
        assert!(t.standby_cluster);
        assert_eq!(
            t.writer_reason,
            "cluster is a standby cluster: no writable primary \
             (standby leader a replicates from a remote primary)"
        );
        assert_eq!(member(&t, "a").role, "standby_leader");
        assert!(!member(&t, "a").in_write_pool);

        // No leader key: still no writer, and the reason says why.
        let c = cluster(Some(STANDBY), None, &[("a", "replica"), ("b", "replica")]);
        let t = build(&cfg(), Some(&c), true, &p, &Table::default(), now);
        assert!(t.writer.is_none());
        assert!(
            t.writer_reason.starts_with("cluster is a standby cluster"),
            "{}",
            t.writer_reason
        );
        // With etcd unreachable too (the last view says standby cluster).
        let t = build(&cfg(), Some(&standby(STANDBY)), false, &p, &t, now);
        assert!(t.writer.is_none());
        assert!(
            t.writer_reason.contains("standby leader a"),
            "{}",
            t.writer_reason
        );
    }

    #[test]
    fn the_standby_leader_reads_and_replicas_lag_behind_it() {
        let cfg = cfg();
        let lim = cfg.max_lag_bytes;
        let now = Instant::now();
        let mut p = BTreeMap::new();
        p.insert("a".into(), probe(now, false, 10 * lim, 10 * lim));
        p.insert(
            "b".into(),
            probe(now, false, 10 * lim - 100, 10 * lim - 100),
        );
        p.insert("c".into(), probe(now, false, 8 * lim, 8 * lim));
        let t = build(
            &cfg,
            Some(&standby(STANDBY)),
            true,
            &p,
            &Table::default(),
            now,
        );
        assert_eq!(readers(&t), ["a", "b"], "{:?}", t.members);
        assert_eq!(member(&t, "a").lag_bytes, Some(0));
        assert_eq!(member(&t, "b").lag_bytes, Some(100));
        assert_eq!(member(&t, "c").lag_bytes, Some(2 * lim));
        assert!(member(&t, "c").reason.contains("lag"), "{:?}", t.members);
        assert_eq!(member(&t, "a").sync_role, None);
        assert_eq!(member(&t, "b").sync_role, Some(SyncRole::Async));

        // Without a probe of the standby leader, replicas are measured against the `status`
        // key's optime (here absent: lag unknown, out).
        p.remove("a");
        let t = build(&cfg, Some(&standby(STANDBY)), true, &p, &t, now);
        assert!(readers(&t).is_empty(), "{:?}", t.members);
        assert!(
            member(&t, "b").reason.contains("unknown"),
            "{:?}",
            t.members
        );
    }

    #[test]
    fn the_read_pool_rules_still_apply() {
        let now = Instant::now();
        let mut p = BTreeMap::new();
        // Restoring from an archive, the standby leader does not stream: still in the pool.
        let mut a = probe(now, false, 1000, 1000);
        a.streaming = false;
        p.insert("a".into(), a);
        let mut b = probe(now, false, 1000, 1000);
        b.streaming = false;
        p.insert("b".into(), b);
        p.insert("c".into(), probe(now, false, 1000, 1000));
        let archive = r#"{"standby_cluster":{"restore_command":"cp /arch/%f %p"}}"#;
        let t = build(
            &cfg(),
            Some(&standby(archive)),
            true,
            &p,
            &Table::default(),
            now,
        );
        assert_eq!(readers(&t), ["a", "c"], "{:?}", t.members);
        assert!(member(&t, "b").reason.contains("not streaming"));

        // Replay far behind what it received (max_lag_seconds), or tagged noloadbalance: out.
        let mut seconds = cfg();
        seconds.max_lag_seconds = Some(5.0);
        let mut a = probe(now, false, 1000, 1000);
        a.replay_delay_seconds = 10.0;
        p.insert("a".into(), a);
        let t = build(
            &seconds,
            Some(&standby(STANDBY)),
            true,
            &p,
            &Table::default(),
            now,
        );
        assert_eq!(readers(&t), ["c"], "{:?}", t.members);
        let mut c = standby(STANDBY);
        c.members[0]
            .data
            .tags
            .insert("noloadbalance".into(), serde_json::json!(true));
        let t = build(&cfg(), Some(&c), true, &p, &Table::default(), now);
        assert_eq!(readers(&t), ["c"], "{:?}", t.members);
        assert!(member(&t, "a").reason.contains("noloadbalance"));

        // `read.sync_only`: a standby cluster has no synchronous standbys; its leader reads.
        let mut sync_only = cfg();
        sync_only.read_sync_only = true;
        p.insert("a".into(), probe(now, false, 1000, 1000));
        let t = build(
            &sync_only,
            Some(&standby(STANDBY)),
            true,
            &p,
            &Table::default(),
            now,
        );
        assert_eq!(readers(&t), ["a"], "{:?}", t.members);
        assert!(
            member(&t, "c").reason.contains("standby cluster"),
            "{:?}",
            t.members
        );
    }

    #[test]
    fn demotion_removes_the_writer_and_promotion_brings_it_back() {
        let now = Instant::now();
        let roles = [("a", "primary"), ("b", "replica")];
        let mut p = BTreeMap::new();
        p.insert("a".into(), probe(now, true, 1000, 0));
        p.insert("b".into(), probe(now, false, 1000, 1000));
        let normal = cluster(Some("{}"), Some("a"), &roles);
        let t = build(&cfg(), Some(&normal), true, &p, &Table::default(), now);
        assert_eq!(t.writer.as_ref().map(|w| w.name.as_str()), Some("a"));

        // The section is added: no writer at once, even while `a` still says primary.
        let demoting = cluster(Some(STANDBY), Some("a"), &roles);
        let t = build(&cfg(), Some(&demoting), true, &p, &t, now);
        assert!(t.writer.is_none());
        assert!(t.writer_reason.contains("standby cluster"));
        assert!(!member(&t, "a").in_read_pool, "{:?}", t.members);
        let demoted = standby(STANDBY);
        p.insert("a".into(), probe(now, false, 1000, 1000));
        let t = build(&cfg(), Some(&demoted), true, &p, &t, now);
        assert!(t.writer.is_none());
        assert_eq!(readers(&t), ["a", "b"], "{:?}", t.members);

        // The section is removed (`standby_cluster: null`): a writer once `a` is primary.
        let promoting = cluster(Some(r#"{"standby_cluster":null}"#), Some("a"), &roles);
        let t = build(&cfg(), Some(&promoting), true, &p, &t, now);
        assert!(!t.standby_cluster);
        assert!(t.writer.is_none());
        assert!(
            t.writer_reason.contains("not confirmed primary"),
            "{}",
            t.writer_reason
        );
        p.insert("a".into(), probe(now, true, 1000, 0));
        let t = build(&cfg(), Some(&promoting), true, &p, &t, now);
        assert_eq!(t.writer.as_ref().map(|w| w.name.as_str()), Some("a"));
        assert!(member(&t, "a").in_write_pool && !member(&t, "a").in_read_pool);
        assert_eq!(member(&t, "a").role, "leader");
    }

    #[test]
    fn odd_standby_cluster_values_do_not_make_a_standby_cluster() {
        let now = Instant::now();
        let mut p = BTreeMap::new();
        p.insert("a".into(), probe(now, true, 1000, 0));
        let roles = [("a", "primary")];
        for config in [
            r#"{"standby_cluster":"yes"}"#,
            r#"{"standby_cluster":[1,2]}"#,
            r#"{"standby_cluster":{}}"#,
            r#"{"standby_cluster":{"host":null,"port":"","primary_slot_name":"s"}}"#,
            r#""not an object""#,
        ] {
            let c = cluster(Some(config), Some("a"), &roles);
            let t = build(&cfg(), Some(&c), true, &p, &Table::default(), now);
            assert!(!t.standby_cluster, "{config}");
            assert_eq!(
                t.writer.as_ref().map(|w| w.name.as_str()),
                Some("a"),
                "{config}"
            );
        }
        for config in [
            r#"{"standby_cluster":{"port":5433}}"#,
            r#"{"standby_cluster":{"host":"remote","port":"not a number"}}"#,
        ] {
            let c = cluster(Some(config), Some("a"), &roles);
            let t = build(&cfg(), Some(&c), true, &p, &Table::default(), now);
            assert!(t.standby_cluster, "{config}");
            assert!(t.writer.is_none(), "{config}");
        }
    }
}
