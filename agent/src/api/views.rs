//! Read-only views built from a cluster snapshot (spec 2.5): `GET /cluster` and `GET /history`
//! bodies, as pure functions.

use patrol_dcs::{format_lsn, Cluster, Member};
use serde_json::{json, Map, Value};

/// (synchronous mode on, quorum mode) as Patroni's global config reads them.
pub fn sync_modes(cluster: &Cluster) -> (bool, bool) {
    match cluster.synchronous_mode() {
        patrol_dcs::SynchronousMode::Off => (false, false),
        patrol_dcs::SynchronousMode::On => (true, false),
        patrol_dcs::SynchronousMode::Quorum => (true, true),
    }
}

fn role_of(cluster: &Cluster, m: &Member) -> &'static str {
    let standby_cluster = cluster
        .config
        .as_ref()
        .is_some_and(|c| c.value.is_standby_cluster());
    let (sync_mode, quorum) = sync_modes(cluster);
    if cluster.leader_name() == Some(m.name.as_str()) {
        if standby_cluster {
            "standby_leader"
        } else {
            "leader"
        }
    } else if sync_mode
        && cluster
            .sync
            .as_ref()
            .is_some_and(|s| s.value.matches(&m.name))
    {
        if quorum {
            "quorum_standby"
        } else {
            "sync_standby"
        }
    } else {
        "replica"
    }
}

/// The body of `GET /cluster` (Patroni's `cluster_as_json` plus `scope`).
pub fn cluster_json(cluster: &Cluster, scope: &str) -> Value {
    let leader = cluster.leader_name();
    let cluster_lsn = cluster.status.optime.unwrap_or(0);
    let mut members: Vec<Value> = Vec::with_capacity(cluster.members.len());
    for m in &cluster.members {
        let role = role_of(cluster, m);
        let d = &m.data;
        let state = if role != "leader" {
            d.replication_state
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| d.state.clone())
        } else {
            d.state.clone()
        };
        let mut o = Map::new();
        o.insert("name".into(), m.name.clone().into());
        o.insert("role".into(), role.into());
        o.insert("state".into(), state.into());
        o.insert("api_url".into(), d.api_url.clone().into());
        if let Some((host, port)) = d.host_port() {
            if !host.is_empty() {
                o.insert("host".into(), host.into());
                o.insert("port".into(), port.into());
            }
        }
        if let Some(tl) = d.timeline {
            o.insert("timeline".into(), tl.into());
        }
        if d.pending_restart {
            o.insert("pending_restart".into(), true.into());
        }
        if let Some(r) = &d.pending_restart_reason {
            o.insert("pending_restart_reason".into(), r.clone());
        }
        if let Some(r) = &d.scheduled_restart {
            o.insert("scheduled_restart".into(), r.clone());
        }
        if !d.tags.is_empty() {
            o.insert("tags".into(), Value::Object(d.tags.clone()));
        }
        if Some(m.name.as_str()) != leader {
            for (prefix, lsn) in [
                ("receive_", d.receive_lsn),
                ("replay_", d.replay_lsn),
                ("", d.xlog_location),
            ] {
                let (lsn_key, lag_key) = (format!("{prefix}lsn"), format!("{prefix}lag"));
                match lsn.filter(|l| *l > 0) {
                    None => {
                        o.insert(lsn_key, "unknown".into());
                        o.insert(lag_key, "unknown".into());
                    }
                    Some(l) => {
                        o.insert(lag_key, cluster_lsn.saturating_sub(l).into());
                        o.insert(lsn_key, format_lsn(l).into());
                    }
                }
            }
        }
        members.push(Value::Object(o));
    }
    members.sort_by(|a, b| {
        let n = |v: &Value| v["name"].as_str().unwrap_or_default().to_string();
        n(a).cmp(&n(b))
    });
    let mut out = Map::new();
    out.insert("members".into(), Value::Array(members));
    out.insert("scope".into(), scope.into());
    if cluster.is_paused() {
        out.insert("pause".into(), true.into());
    }
    if let Some(f) = &cluster.failover {
        if let Some(at) = &f.value.scheduled_at {
            let mut s = Map::new();
            s.insert("at".into(), at.clone().into());
            if let Some(l) = &f.value.leader {
                s.insert("from".into(), l.clone().into());
            }
            if let Some(c) = &f.value.member {
                s.insert("to".into(), c.clone().into());
            }
            out.insert("scheduled_switchover".into(), Value::Object(s));
        }
    }
    Value::Object(out)
}

/// The body of `GET /history`: the `history` key's lines, `[]` when there are none.
pub fn history_json(cluster: &Cluster) -> Value {
    match &cluster.history {
        Some(h) => serde_json::from_str(&h.to_json()).unwrap_or_else(|_| json!([])),
        None => json!([]),
    }
}
