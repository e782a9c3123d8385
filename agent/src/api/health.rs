//! Patroni's status JSON and health-check rules (spec 2.3, 2.4), as pure functions of the
//! configuration and one snapshot of the HA state.

use hyper::StatusCode;
use patrol_dcs::{lenient_bool, Role};
use serde_json::{json, Map, Value};

use crate::config::Config;
use crate::ha::Snapshot;
use patrol_dcs::PATRONI_VERSION;

fn code(ok: bool) -> StatusCode {
    if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// The role reported: from `pg_is_in_recovery` when the query answered, else the agent's; the
/// standby leader of a standby cluster reports `standby_leader`.
pub(crate) fn role(s: &Snapshot) -> String {
    match &s.status {
        Some(st) if st.in_recovery && s.node.role == Role::StandbyLeader => {
            Role::StandbyLeader.as_str().into()
        }
        Some(st) if st.in_recovery => "replica".into(),
        Some(_) => "primary".into(),
        None => s.node.role.as_str().to_string(),
    }
}

/// PostgreSQL's state as reported: `unknown` when it runs but the status query failed.
pub(crate) fn snapshot_state(s: &Snapshot) -> String {
    if s.node.state == "running" && s.status.is_none() {
        "unknown".to_string()
    } else {
        s.node.state.clone()
    }
}

/// The body of `GET /patroni` and of every health GET.
pub fn status_json(cfg: &Config, s: &Snapshot) -> Value {
    let mut o = Map::new();
    let state = snapshot_state(s);
    o.insert("state".into(), state.into());
    if let Some(st) = &s.status {
        if let Some(t) = &st.postmaster_start_time {
            o.insert("postmaster_start_time".into(), t.clone().into());
        }
    }
    o.insert("role".into(), role(s).into());
    if let Some(st) = &s.status {
        o.insert("server_version".into(), st.server_version.into());
        let xlog = if st.in_recovery {
            json!({
                "received_location": st.receive_lsn.or(st.replay_lsn),
                "replayed_location": st.replay_lsn,
                "replayed_timestamp": st.replayed_timestamp,
                "paused": st.replay_paused,
            })
        } else {
            json!({ "location": st.wal_position })
        };
        o.insert("xlog".into(), xlog);
        if st.in_recovery {
            if let Some(c) = s.node.cluster.as_deref() {
                let (sync_mode, quorum) = super::views::sync_modes(c);
                if sync_mode && c.sync.as_ref().is_some_and(|x| x.value.matches(&cfg.name)) {
                    let key = if quorum {
                        "quorum_standby"
                    } else {
                        "sync_standby"
                    };
                    o.insert(key.into(), true.into());
                }
            }
        }
        if s.node.paused {
            o.insert("pause".into(), true.into());
        }
        o.insert("timeline".into(), st.timeline.into());
        if let Some(rs) = &st.replication_state {
            o.insert("replication_state".into(), rs.clone().into());
        }
        if !st.replication.is_empty() {
            let rows: Vec<Value> = st
                .replication
                .iter()
                .map(|r| {
                    json!({
                        "usename": r.usename,
                        "application_name": r.application_name,
                        "client_addr": r.client_addr,
                        "state": r.state,
                        "sync_state": r.sync_state,
                        "sync_priority": r.sync_priority,
                    })
                })
                .collect();
            o.insert("replication".into(), Value::Array(rows));
        }
    } else if s.node.paused {
        o.insert("pause".into(), true.into());
    }
    let unlocked = s
        .node
        .cluster
        .as_ref()
        .map(|c| c.leader.is_none())
        .unwrap_or(true);
    if unlocked {
        o.insert("cluster_unlocked".into(), true.into());
    }
    if s.failsafe_active {
        o.insert("failsafe_mode_is_active".into(), true.into());
    }
    if let Some(t) = s.dcs_last_seen {
        if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
            o.insert("dcs_last_seen".into(), d.as_secs().into());
        }
    }
    let tags = patrol_dcs::publishable_tags(&cfg.tags);
    if !tags.is_empty() {
        o.insert("tags".into(), Value::Object(tags));
    }
    if let Some(id) = &s.node.sysid {
        o.insert("database_system_identifier".into(), id.clone().into());
    }
    if !s.node.pending_restart.is_empty() {
        o.insert("pending_restart".into(), true.into());
        o.insert(
            "pending_restart_reason".into(),
            Value::Object(s.node.pending_restart.clone()),
        );
    }
    o.insert(
        "patroni".into(),
        json!({"version": PATRONI_VERSION, "scope": cfg.scope, "name": cfg.name}),
    );
    // Row W-1: a required watchdog that cannot work (peers then leave us out of the race).
    if s.node.watchdog.failed {
        o.insert("watchdog_failed".into(), true.into());
    }
    Value::Object(o)
}

/// Parses `?a=b&c=d` (no percent-decoding beyond `+`; Patroni's values are plain).
fn query_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.replace('+', " ")),
            None => (p.to_string(), String::new()),
        })
        .collect()
}

/// Bytes from `1048576`, `16MB`, `1 kB`, ... (base 1024, as Patroni's `parse_int(.., 'B')`).
pub fn parse_lag(v: &str) -> Option<u64> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

fn leader_lsn(s: &Snapshot) -> u64 {
    let optime = s
        .node
        .cluster
        .as_ref()
        .and_then(|c| c.status.optime)
        .unwrap_or(0);
    let end = s
        .status
        .as_ref()
        .and_then(|x| x.latest_end_lsn)
        .unwrap_or(0);
    optime.max(end)
}

fn tag_filters_match(cfg: &Config, pairs: &[(String, String)]) -> bool {
    pairs
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("tag_").map(|t| (t, v)))
        .all(|(tag, want)| match cfg.tags.get(tag) {
            None => false,
            Some(Value::String(s)) => s == want,
            Some(other) => other.to_string().to_lowercase() == want.to_lowercase(),
        })
}

fn replica_ok(cfg: &Config, s: &Snapshot, pairs: &[(String, String)]) -> bool {
    let noloadbalance = lenient_bool(cfg.tags.get("noloadbalance")).unwrap_or(false);
    let Some(st) = &s.status else { return false };
    if !st.in_recovery || s.node.state != "running" || noloadbalance {
        return false;
    }
    if let Some((_, v)) = pairs.iter().find(|(k, _)| k == "lag") {
        let Some(lag) = parse_lag(v) else {
            return false;
        };
        let replayed = st.replay_lsn.unwrap_or(0);
        if leader_lsn(s) > replayed.saturating_add(lag) {
            return false;
        }
    }
    if let Some((_, want)) = pairs.iter().find(|(k, _)| k == "replication_state") {
        if st.replication_state.as_deref() != Some(want.as_str()) {
            return false;
        }
    }
    tag_filters_match(cfg, pairs)
}

/// The code of a health GET for `path` (substring rules in Patroni's order).
pub fn health_code(cfg: &Config, s: &Snapshot, path: &str, query: &str) -> StatusCode {
    let pairs = query_pairs(query);
    let standby_cluster = s
        .node
        .cluster
        .as_ref()
        .and_then(|c| c.config.as_ref())
        .is_some_and(|c| c.value.is_standby_cluster());
    let r = role(s);
    let leader = s.is_leader;
    let primary = leader && !standby_cluster;
    let standby_leader =
        leader && standby_cluster && (r == "replica" || r == Role::StandbyLeader.as_str());
    if path.contains("standby_leader") || path.contains("standby-leader") {
        return code(standby_leader);
    }
    if path.contains("leader") {
        return code(leader);
    }
    if path == "/"
        || path.contains("master")
        || path.contains("primary")
        || path.contains("read-write")
    {
        return code(primary);
    }
    if path.contains("replica") {
        return code(replica_ok(cfg, s, &pairs));
    }
    if path.contains("read-only") && !path.contains("sync") && !path.contains("quorum") {
        return code(primary || standby_leader || replica_ok(cfg, s, &pairs));
    }
    if path.contains("health") {
        return code(s.node.state == "running");
    }
    let Some(cluster) = s.node.cluster.as_ref() else {
        return StatusCode::SERVICE_UNAVAILABLE;
    };
    let sync = cluster.sync.as_ref().map(|v| &v.value);
    let quorum_mode = cluster
        .config
        .as_ref()
        .and_then(|c| c.value.data.get("synchronous_mode"))
        .and_then(Value::as_str)
        == Some("quorum");
    let listed = sync.is_some_and(|v| v.matches(&cfg.name));
    let is_sync = listed && !quorum_mode;
    let is_quorum = listed && quorum_mode;
    match path {
        "/sync" | "/synchronous" => code(is_sync && replica_ok(cfg, s, &pairs)),
        "/quorum" => code(is_quorum && replica_ok(cfg, s, &pairs)),
        "/async" | "/asynchronous" => code(!is_sync && !is_quorum && replica_ok(cfg, s, &pairs)),
        "/read-only-quorum" => {
            code(primary || standby_leader || (is_quorum && replica_ok(cfg, s, &pairs)))
        }
        "/read-only-sync" | "/read-only-synchronous" => {
            code(primary || standby_leader || (is_sync && replica_ok(cfg, s, &pairs)))
        }
        _ => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// `/liveness`: the HA loop completed a cycle recently (ttl for a primary, 2*ttl otherwise).
pub fn liveness(s: &Snapshot) -> StatusCode {
    if s.node.paused {
        return StatusCode::OK;
    }
    let limit = if role(s) == "primary" {
        s.timing.ttl()
    } else {
        2 * s.timing.ttl()
    };
    code(s.last_cycle.is_some_and(|t| t.elapsed() < limit))
}

/// `/readiness[?lag=..&mode=apply|write]`.
pub fn readiness(s: &Snapshot, query: &str) -> StatusCode {
    if s.is_leader {
        return StatusCode::OK;
    }
    let pairs = query_pairs(query);
    let Some(st) = &s.status else {
        return StatusCode::SERVICE_UNAVAILABLE;
    };
    if s.node.state != "running" || st.replication_state.as_deref() != Some("streaming") {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let lag = pairs
        .iter()
        .find(|(k, _)| k == "lag")
        .and_then(|(_, v)| parse_lag(v))
        .unwrap_or(s.node.maximum_lag_on_failover.max(0) as u64);
    let write_mode = pairs.iter().any(|(k, v)| k == "mode" && v == "write");
    let pos = if write_mode {
        st.receive_lsn
    } else {
        st.replay_lsn
    }
    .unwrap_or(0);
    code(leader_lsn(s).saturating_sub(pos) <= lag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_units() {
        assert_eq!(parse_lag("1048576"), Some(1_048_576));
        assert_eq!(parse_lag("16MB"), Some(16 << 20));
        assert_eq!(parse_lag("1kB"), Some(1024));
        assert_eq!(parse_lag("1 GB"), Some(1 << 30));
        assert_eq!(parse_lag("abc"), None);
        assert_eq!(parse_lag("1XB"), None);
    }
}
