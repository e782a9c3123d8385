//! `patrolctl list` / `topology`: patronictl 4.1's `output_members` over Patroni's
//! `cluster_as_json` (title with cluster name and system identifier; Member, Host, Role, State,
//! TL, Receive LSN, Lag, Replay LSN, Lag, then Pending restart, Pending restart reason,
//! Scheduled restart and Tags when extended or when any member has them), in pretty, topology,
//! tsv, json and yaml formats, with the maintenance-mode and scheduled-switchover footer.

use patrol_dcs::{format_lsn, parse_conn_url, Cluster};
use serde_json::{Map, Value};

use super::pyfmt::py_str;
use super::table::{is_falsy, print_output, Format};
use super::time::python_isoformat;

/// Whether the dynamic config asks for synchronous (or quorum) replication, as Patroni's
/// `global_config.is_synchronous_mode` decides (never in a standby cluster).
pub fn is_synchronous_mode(cluster: &Cluster) -> bool {
    let Some(cfg) = &cluster.config else {
        return false;
    };
    let v = cfg.value.data.get("synchronous_mode");
    let quorum = v
        .map(|v| py_str(v).to_lowercase() == "quorum")
        .unwrap_or(false);
    let on = patrol_dcs::lenient_bool(v).unwrap_or(false);
    (on || quorum) && !cfg.value.is_standby_cluster()
}

fn is_quorum_mode(cluster: &Cluster) -> bool {
    cluster
        .config
        .as_ref()
        .and_then(|c| c.value.data.get("synchronous_mode"))
        .is_some_and(|v| py_str(v).to_lowercase() == "quorum")
}

/// Patroni's `cluster_as_json` (the `GET /cluster` body): members sorted by name with role,
/// state, api_url, host/port, optional attributes and LSN/lag fields; `pause` and
/// `scheduled_switchover` when applicable.
pub fn cluster_as_json(cluster: &Cluster) -> Value {
    let leader = cluster.leader_name();
    let cluster_lsn = cluster.status.optime.unwrap_or(0);
    let standby = cluster
        .config
        .as_ref()
        .is_some_and(|c| c.value.is_standby_cluster());
    let sync_role = if is_quorum_mode(cluster) {
        "quorum_standby"
    } else {
        "sync_standby"
    };
    let sync_on = is_synchronous_mode(cluster);
    let mut members = Vec::new();
    for m in &cluster.members {
        let is_leader = Some(m.name.as_str()) == leader;
        let role = if is_leader {
            if standby {
                "standby_leader"
            } else {
                "leader"
            }
        } else if sync_on
            && cluster
                .sync
                .as_ref()
                .is_some_and(|s| s.value.leader.is_some() && s.value.matches(&m.name))
        {
            sync_role
        } else {
            "replica"
        };
        let data = m.data.to_value();
        let repl = if role != "leader" {
            m.data.replication_state.clone().unwrap_or_default()
        } else {
            String::new()
        };
        let state = if repl.is_empty() {
            m.data.state.clone()
        } else {
            repl
        };
        let mut o = Map::new();
        o.insert("name".into(), m.name.clone().into());
        o.insert("role".into(), role.into());
        o.insert("state".into(), state.into());
        o.insert("api_url".into(), m.data.api_url.clone().into());
        if let Some((host, port)) = parse_conn_url(&m.data.conn_url) {
            if !host.is_empty() {
                o.insert("host".into(), host.to_lowercase().into());
                o.insert("port".into(), port.into());
            }
        }
        for k in [
            "timeline",
            "pending_restart",
            "pending_restart_reason",
            "scheduled_restart",
            "tags",
        ] {
            if let Some(v) = data.get(k) {
                o.insert(k.into(), v.clone());
            }
        }
        if !is_leader {
            for (prefix, lsn) in [
                ("receive_", m.data.receive_lsn),
                ("replay_", m.data.replay_lsn),
                ("", m.data.xlog_location),
            ] {
                let (lk, gk) = (format!("{prefix}lsn"), format!("{prefix}lag"));
                match lsn.filter(|l| *l != 0) {
                    None => {
                        o.insert(lk, "unknown".into());
                        o.insert(gk, "unknown".into());
                    }
                    Some(l) => {
                        o.insert(gk, cluster_lsn.saturating_sub(l).into());
                        o.insert(lk, format_lsn(l).into());
                    }
                }
            }
        }
        members.push(Value::Object(o));
    }
    let mut ret = Map::new();
    ret.insert("members".into(), Value::Array(members));
    if cluster.is_paused() {
        ret.insert("pause".into(), true.into());
    }
    if let Some(f) = cluster.failover.as_ref().map(|f| &f.value) {
        if let Some(at) = f.scheduled_at.as_deref().filter(|s| !s.is_empty()) {
            let mut s = Map::new();
            s.insert("at".into(), python_isoformat(at).into());
            if let Some(l) = f.leader.as_deref().filter(|s| !s.is_empty()) {
                s.insert("from".into(), l.into());
            }
            if let Some(c) = f.member.as_deref().filter(|s| !s.is_empty()) {
                s.insert("to".into(), c.into());
            }
            ret.insert("scheduled_switchover".into(), Value::Object(s));
        }
    }
    Value::Object(ret)
}

/// The footer lines: ` Maintenance mode: on` and the scheduled switchover.
pub fn service_info(cj: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if cj.get("pause").is_some_and(|p| !is_falsy(p)) {
        out.push("Maintenance mode: on".to_string());
    }
    if let Some(s) = cj.get("scheduled_switchover") {
        let mut info = format!(
            "Switchover scheduled at: {}",
            s.get("at").map(py_str).unwrap_or_default()
        );
        for name in ["from", "to"] {
            if let Some(v) = s.get(name) {
                info.push_str(&format!("\n{:>24}: {}", name, py_str(v)));
            }
        }
        out.push(info);
    }
    out
}

/// Patroni's `topology_sort`: the leader first, then replicas as a tree by `replicatefrom`,
/// names prefixed with `+ ` indented two spaces per level.
fn topology_sort(members: Vec<Map<String, Value>>) -> Vec<Map<String, Value>> {
    let is_leader = |m: &Map<String, Value>| {
        m.get("role")
            .and_then(Value::as_str)
            .is_some_and(|r| r.ends_with("leader"))
    };
    let name_of = |m: &Map<String, Value>| {
        m.get("name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let leader = members.iter().find(|m| is_leader(m)).cloned();
    let leader_name = leader.as_ref().map(name_of);
    let replicas: Vec<String> = members
        .iter()
        .filter(|m| !is_leader(m))
        .map(name_of)
        .collect();
    let mut children: Vec<(Option<String>, Map<String, Value>)> = Vec::new();
    for m in &members {
        if is_leader(m) {
            continue;
        }
        let parent = m
            .get("tags")
            .and_then(|t| t.get("replicatefrom"))
            .map(py_str)
            .filter(|p| !p.is_empty() && *p != name_of(m) && replicas.contains(p))
            .or_else(|| leader_name.clone());
        children.push((parent, m.clone()));
    }
    fn walk(
        level: usize,
        mut member: Map<String, Value>,
        children: &[(Option<String>, Map<String, Value>)],
        out: &mut Vec<Map<String, Value>>,
    ) {
        let name = member.get("name").map(py_str);
        if level > 0 {
            let shown = format!(
                "{}+ {}",
                " ".repeat((level - 1) * 2),
                name.clone().unwrap_or_default()
            );
            member.insert("name".into(), shown.into());
        }
        if member.get("name").is_some_and(|n| !is_falsy(n)) {
            out.push(member);
        }
        for (p, c) in children {
            if p.is_some() && p.as_ref() == name.as_ref() {
                walk(level + 1, c.clone(), children, out);
            }
        }
    }
    let mut out = Vec::new();
    let root = leader.unwrap_or_default();
    if root.is_empty() {
        // No leader: Patroni's root is {'name': None}; its children are those whose parent is
        // None (every replica without a valid replicatefrom).
        for (p, c) in &children {
            if p.is_none() {
                walk(1, c.clone(), &children, &mut out);
            }
        }
    } else {
        walk(0, root, &children, &mut out);
    }
    out
}

const COLUMNS: [&str; 10] = [
    "Cluster",
    "Member",
    "Host",
    "Role",
    "State",
    "TL",
    "Receive LSN",
    "Receive Lag",
    "Replay LSN",
    "Replay Lag",
];

/// The title: ` Cluster: <name> (<sysid>) ` (`uninitialized` / `initializing`).
pub fn title(name: &str, cluster: &Cluster) -> String {
    let init = match cluster.initialize.as_deref() {
        None => "uninitialized",
        Some("") => "initializing",
        Some(s) => s,
    };
    format!(" Cluster: {name} ({init}) ")
}

fn title_case(s: &str) -> String {
    let mut out = String::new();
    let mut prev_alpha = false;
    for c in s.chars() {
        if c.is_alphabetic() {
            if prev_alpha {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            prev_alpha = true;
        } else {
            out.push(c);
            prev_alpha = false;
        }
    }
    out
}

fn lag_mb(v: Option<&Value>) -> Value {
    match v {
        Some(Value::Number(n)) if n.is_u64() || n.is_i64() => {
            let b = n.as_f64().unwrap_or(0.0);
            // Python's round(): banker's rounding of bytes/1024/1024.
            let x = b / 1024.0 / 1024.0;
            let r = x.round();
            let r = if (x - x.trunc()).abs() == 0.5 && (r as i64) % 2 != 0 {
                r - x.signum()
            } else {
                r
            };
            Value::from(r as i64)
        }
        Some(Value::String(s)) if s == "unknown" => Value::String(String::new()),
        Some(v) => v.clone(),
        None => Value::String(String::new()),
    }
}

/// patronictl's `output_members`: the whole text printed for one cluster.
pub fn output_members(cluster: &Cluster, name: &str, extended: bool, fmt: Format) -> String {
    let cj = cluster_as_json(cluster);
    let members: Vec<Map<String, Value>> = cj["members"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m.as_object().cloned()).collect())
        .unwrap_or_default();
    let mut columns: Vec<String> = COLUMNS.iter().map(|s| s.to_string()).collect();
    let with_host: Vec<&Map<String, Value>> =
        members.iter().filter(|m| m.contains_key("host")).collect();
    for c in [
        "Pending restart",
        "Pending restart reason",
        "Scheduled restart",
        "Tags",
    ] {
        let key = c.to_lowercase().replace(' ', "_");
        if extended
            || with_host
                .iter()
                .any(|m| m.get(&key).is_some_and(|v| !is_falsy(v)))
        {
            columns.push(c.to_string());
        }
    }
    let append_port = with_host.iter().any(|m| {
        m.get("port")
            .and_then(Value::as_u64)
            .is_some_and(|p| p != 5432)
    }) || {
        let mut hosts: Vec<String> = with_host
            .iter()
            .map(|m| m.get("host").map(py_str).unwrap_or_default())
            .collect();
        let n = hosts.len();
        hosts.sort();
        hosts.dedup();
        hosts.len() < n
    };
    let ordered = if fmt == Format::Topology {
        topology_sort(members)
    } else {
        members
    };
    let pretty = matches!(fmt, Format::Pretty | Format::Topology);
    let mut rows = Vec::new();
    for mut m in ordered {
        let reason = match m.get("pending_restart_reason") {
            Some(Value::Object(r)) => r
                .iter()
                .map(|(k, v)| {
                    let old = v.get("old_value").map(py_str).unwrap_or_default();
                    let new = v.get("new_value").map(py_str).unwrap_or_default();
                    let full = format!("{k}: {old}->{new}");
                    if pretty && full.chars().count() > 50 {
                        format!("{k}: [hidden - too long]")
                    } else {
                        full
                    }
                })
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        };
        let (mut receive_lag, mut replay_lag) = (
            m.get("receive_lag").cloned().unwrap_or("".into()),
            m.get("replay_lag").cloned().unwrap_or("".into()),
        );
        let (mut receive_lsn, mut replay_lsn) = (
            m.get("receive_lsn").cloned().unwrap_or("".into()),
            m.get("replay_lsn").cloned().unwrap_or("".into()),
        );
        let lsn = m.get("lsn").cloned().unwrap_or("".into());
        if receive_lsn == "unknown"
            && replay_lsn == "unknown"
            && !is_falsy(&lsn)
            && lsn != "unknown"
        {
            let lag = m.get("lag").cloned().unwrap_or("".into());
            if m.get("state").and_then(Value::as_str) == Some("streaming") {
                receive_lag = lag;
                receive_lsn = lsn;
            } else {
                replay_lag = lag;
                replay_lsn = lsn;
            }
        }
        let role = m.get("role").map(py_str).unwrap_or_default();
        let mut host = m.get("host").map(py_str).unwrap_or_default();
        if append_port && !host.is_empty() {
            if let Some(p) = m.get("port").filter(|p| !is_falsy(p)) {
                host = format!("{host}:{}", py_str(p));
            }
        }
        if let Some(Value::Object(s)) = m.get("scheduled_restart") {
            let mut v = s.get("schedule").map(py_str).unwrap_or_default();
            if let Some(pv) = s.get("postgres_version") {
                v.push_str(&format!(" if version < {}", py_str(pv)));
            }
            m.insert("scheduled_restart".into(), v.into());
        }
        let get = |k: &str| m.get(k).cloned().unwrap_or(Value::String(String::new()));
        let mut row = Vec::new();
        for c in &columns {
            row.push(match c.as_str() {
                "Cluster" => Value::String(name.to_string()),
                "Member" => get("name"),
                "Host" => Value::String(host.clone()),
                "Role" => Value::String(title_case(&role.replace('_', " "))),
                "State" => get("state"),
                "TL" => get("timeline"),
                "Receive LSN" => receive_lsn.clone(),
                "Receive Lag" => lag_mb(Some(&receive_lag)),
                "Replay LSN" => replay_lsn.clone(),
                "Replay Lag" => lag_mb(Some(&replay_lag)),
                "Pending restart" => {
                    Value::String(if m.get("pending_restart").is_some_and(|v| !is_falsy(v)) {
                        "*".into()
                    } else {
                        String::new()
                    })
                }
                "Pending restart reason" => Value::String(reason.clone()),
                "Scheduled restart" => get("scheduled_restart"),
                "Tags" => get("tags"),
                _ => Value::String(String::new()),
            });
        }
        rows.push(row);
    }
    if pretty {
        for c in columns.iter_mut() {
            if c == "Receive Lag" || c == "Replay Lag" {
                *c = "Lag".into();
            }
        }
    }
    let mut out = print_output(
        &columns,
        &rows,
        &["Group", "Receive LSN", "Replay LSN", "Lag", "TL"],
        fmt,
        &title(name, cluster),
        "\t",
    );
    if pretty {
        let info = service_info(&cj);
        if !info.is_empty() {
            out.push(' ');
            out.push_str(&info.join("\n "));
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests;
