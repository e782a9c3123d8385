//! Decision-table tests: each case cites its row in docs/ha-decision-table.md (`S-` start-up
//! flow ①, `B-` bootstrap flow ②, `H-` healthy flow ③, `U-` unhealthy flow ④).

use patrol_dcs::{Cluster, ClusterConfig, History, Kv};

use crate::*;

/// The monotonic `now` of every case.
pub(super) const NOW: std::time::Duration = std::time::Duration::from_secs(1_000);

pub(super) const SYSID: &str = "7277694203142172922";

pub(super) fn member_json(role: &str, port: u16, tags: &str) -> String {
    format!(
        r#"{{"conn_url":"postgres://127.0.0.1:{port}/postgres","api_url":"http://127.0.0.1:{}/patroni","state":"running","role":"{role}","version":"4.1.4"{tags}}}"#,
        port + 1000
    )
}

/// A cluster from compact key specs: `leader=pg0`, `initialize=<sysid>`, `member=pg1:replica`,
/// `member=pg2:replica:clonefrom`, `optime=<n>`, `config=<json>`, `sync=<json>`,
/// `failsafe=<json>`, `no-config` (no `config` key; else `config` is `{}` unless given).
pub(super) fn cluster(specs: &[&str]) -> Cluster {
    let mut kvs = Vec::new();
    if !specs
        .iter()
        .any(|s| s.starts_with("config=") || *s == "no-config")
    {
        kvs.push(Kv {
            key: "config".into(),
            value: "{}".into(),
            mod_revision: 1,
            lease: 0,
        });
    }
    let mut port = 5432;
    for s in specs.iter().filter(|s| **s != "no-config") {
        let (k, v) = s.split_once('=').expect("spec is key=value");
        let kv = |key: &str, value: String| Kv {
            key: key.to_string(),
            value,
            mod_revision: 1,
            lease: 0,
        };
        match k {
            "leader" => kvs.push(kv("leader", v.into())),
            "initialize" => kvs.push(kv("initialize", v.into())),
            "optime" => kvs.push(kv("status", format!(r#"{{"optime":{v}}}"#))),
            "config" => kvs.push(kv("config", v.into())),
            "sync" => kvs.push(kv("sync", v.into())),
            "failsafe" => kvs.push(kv("failsafe", v.into())),
            "member" => {
                let mut parts = v.split(':');
                let name = parts.next().expect("member name");
                let role = parts.next().unwrap_or("replica");
                let tags = match parts.next() {
                    Some(t) => format!(r#","tags":{{"{t}":true}}"#),
                    None => String::new(),
                };
                port += 1;
                kvs.push(kv(
                    &format!("members/{name}"),
                    member_json(role, port, &tags),
                ));
            }
            other => panic!("unknown spec {other}"),
        }
    }
    Cluster::from_kvs(10, &kvs)
}

pub(super) fn initialized() -> DataState {
    DataState::Initialized {
        sysid: SYSID.into(),
        cluster_state: "in production".into(),
    }
}

pub(super) fn running(in_recovery: bool, pos: u64) -> LocalPg {
    LocalPg {
        data: initialized(),
        running: true,
        in_recovery: Some(in_recovery),
        wal_position: Some(pos),
        timeline: Some(1),
        replay_position: in_recovery.then_some(pos),
        replay_paused: false,
        history: None,
        walsenders: Vec::new(),
        standby_names: None,
        stopped_at: None,
        switches: Vec::new(),
    }
}

pub(super) fn stopped(data: DataState) -> LocalPg {
    LocalPg {
        data,
        running: false,
        in_recovery: None,
        wal_position: None,
        timeline: None,
        replay_position: None,
        replay_paused: false,
        history: None,
        walsenders: Vec::new(),
        standby_names: None,
        stopped_at: None,
        switches: Vec::new(),
    }
}

pub(super) fn obs(me: &str, cluster: Cluster, local: LocalPg) -> Observation {
    Observation {
        me: me.into(),
        dcs: DcsView::Reachable(cluster),
        local,
        dynamic: ClusterConfig::default(),
        timing: patrol_dcs::Timing::default(),
        in_flight: None,
        last_result: None,
        mem: Memory::default(),
        now: NOW,
        can_bootstrap: true,
        replica_without_leader: false,
        nofailover: false,
        failover_priority: 1,
        replicatefrom: None,
        nostream: false,
        peers: Vec::new(),
        use_pg_rewind: true,
        remove_data_directory_on_rewind_failure: false,
        remove_data_directory_on_diverged_timelines: false,
        now_epoch_ms: 1_700_000_000_000,
        sync_names_managed: false,
        failsafe_check: None,
        failsafe_leader: None,
        watchdog: Default::default(),
    }
}

pub(super) fn up(name: &str, port: u16) -> Upstream {
    Upstream {
        name: name.into(),
        conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
        remote: None,
    }
}

/// The one helper every case uses: the decision's actions must equal `expected`.
pub(super) fn check(o: &Observation, expected: &[Action]) -> Decision {
    let d = decide(o);
    assert_eq!(d.actions, expected, "reason: {}", d.reason);
    assert!(!d.reason.is_empty());
    d
}

pub(super) fn peer(name: &str, pos: u64) -> PeerStatus {
    PeerStatus {
        name: name.into(),
        primary: false,
        wal_position: pos,
        replay_position: pos,
        paused: false,
        nofailover: false,
        failover_priority: 1,
        watchdog_failed: false,
        timeline: 1,
    }
}

pub(super) fn no_leader() -> Cluster {
    cluster(&[
        &format!("initialize={SYSID}"),
        "member=pg1:replica",
        "member=pg2:replica",
        "optime=100",
    ])
}

pub(super) fn with_failover(mut c: Cluster, json: &str) -> Cluster {
    c.failover = Some(patrol_dcs::Versioned {
        version: 7,
        value: patrol_dcs::Failover::parse(json),
    });
    c
}

pub(super) fn healthy3() -> Cluster {
    let mut c = cluster(&[
        &format!("initialize={SYSID}"),
        "leader=pg0",
        "member=pg0:primary",
        "member=pg1:replica",
        "member=pg2:replica",
        "optime=100",
    ]);
    for m in c.members.iter_mut() {
        m.data.xlog_location = Some(100);
    }
    c
}

pub(super) fn unlocked_after_switchover(json: &str) -> Cluster {
    let mut c = healthy3();
    c.leader = None;
    with_failover(c, json)
}

/// A cluster without a leader whose history says timeline 1 ended (so the cluster is on 2).
pub(super) fn no_leader_on_timeline_2() -> Cluster {
    let mut c = cluster(&[
        &format!("initialize={SYSID}"),
        "member=pg0:primary",
        "member=pg1:replica",
    ]);
    c.history = Some(History {
        lines: vec![hline(1, Some("t1"), Some("pg1"))],
    });
    c
}

pub(super) fn leader_pg0() -> Cluster {
    cluster(&[
        &format!("initialize={SYSID}"),
        "leader=pg0",
        "member=pg0:primary",
        "member=pg1:replica",
        "optime=100",
    ])
}

pub(super) fn hline(tl: u64, ts: Option<&str>, who: Option<&str>) -> patrol_dcs::HistoryLine {
    patrol_dcs::HistoryLine {
        timeline: tl,
        lsn: tl * 1000,
        reason: "no recovery target specified".into(),
        timestamp: ts.map(String::from),
        new_leader: who.map(String::from),
    }
}

mod bootstrap;
mod failsafe;
mod healthy;
mod manual;
mod pre_promote;
mod recovery;
mod setbacks;
mod standby_cluster;
mod startup;
mod sync;
mod unhealthy;
mod watchdog;
