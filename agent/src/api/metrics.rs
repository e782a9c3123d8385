//! `GET /metrics` (spec 2.6): Patroni's `patroni_*` metrics in the Prometheus text format, each
//! with `# HELP` and `# TYPE` and the labels `scope` and `name`, rendered from one snapshot.

use std::fmt::Write;

use super::health::{role, snapshot_state};
use super::views::sync_modes;
use crate::config::Config;
use crate::ha::Snapshot;
use patrol_dcs::PATRONI_VERSION;

/// PostgreSQL states with their fixed codes and Patroni's enum names (the `# Values:` line).
pub const POSTGRES_STATES: &[(&str, &str)] = &[
    ("initializing new cluster", "initdb"),
    ("initdb failed", "initdb_failed"),
    ("running custom bootstrap script", "custom_bootstrap"),
    ("custom bootstrap failed", "custom_bootstrap_failed"),
    ("creating replica", "creating_replica"),
    ("running", "running"),
    ("starting", "starting"),
    ("starting after custom bootstrap", "bootstrap_starting"),
    ("start failed", "start_failed"),
    ("restarting", "restarting"),
    ("restart failed", "restart_failed"),
    ("stopping", "stopping"),
    ("stopped", "stopped"),
    ("stop failed", "stop_failed"),
    ("crashed", "crashed"),
];

/// The numeric code of a state string, -1 for anything else (`unknown`).
pub fn state_code(state: &str) -> i64 {
    POSTGRES_STATES
        .iter()
        .position(|(s, _)| *s == state)
        .map(|i| i as i64)
        .unwrap_or(-1)
}

/// `4.1.4` → `040104`.
pub fn padded_version(v: &str) -> String {
    v.split('.').map(|p| format!("{p:0>2}")).collect()
}

/// Seconds since the epoch of PostgreSQL's `YYYY-MM-DD HH:MM:SS.ffffff+00:00` (0 if unparsable).
fn epoch(ts: Option<&str>) -> f64 {
    let Some(ts) = ts else { return 0.0 };
    let t = ts.trim();
    for f in [
        "%Y-%m-%d %H:%M:%S%.f%:z",
        "%Y-%m-%d %H:%M:%S%.f%#z",
        "%Y-%m-%dT%H:%M:%S%.f%:z",
    ] {
        if let Ok(d) = chrono::DateTime::parse_from_str(t, f) {
            return d.timestamp_micros() as f64 / 1e6;
        }
    }
    0.0
}

/// Python's `str(float)` for the two float metrics: `0` stays an int as Patroni prints it.
fn float_text(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.fract() == 0.0 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out {
    text: String,
    labels: String,
}

impl Out {
    fn metric(&mut self, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        let _ = writeln!(self.text, "{name}{} {value}", self.labels);
    }
}

fn flag(b: bool) -> u8 {
    u8::from(b)
}

/// The whole `/metrics` body.
pub fn render(cfg: &Config, s: &Snapshot) -> String {
    let mut out = Out {
        text: String::new(),
        labels: format!(
            "{{scope=\"{}\",name=\"{}\"}}",
            escape(&cfg.scope),
            escape(&cfg.name)
        ),
    };
    let state = snapshot_state(s);
    let role = role(s);
    let st = s.status.as_ref();
    let standby = st.filter(|x| x.in_recovery);
    let cluster = s.node.cluster.as_deref();
    let (sync_mode, quorum) = cluster.map(sync_modes).unwrap_or((false, false));
    let listed = cluster
        .and_then(|c| c.sync.as_ref())
        .is_some_and(|x| x.value.matches(&cfg.name));
    let sync_member = role == "replica" && sync_mode && listed;

    out.metric(
        "patroni_version",
        "gauge",
        "Patroni semver without periods.",
        padded_version(PATRONI_VERSION),
    );
    out.metric(
        "patroni_postgres_running",
        "gauge",
        "Value is 1 if Postgres is running, 0 otherwise.",
        flag(state == "running"),
    );
    out.metric(
        "patroni_postmaster_start_time",
        "gauge",
        "Epoch seconds since Postgres started.",
        float_text(epoch(st.and_then(|x| x.postmaster_start_time.as_deref()))),
    );
    out.metric(
        "patroni_primary",
        "gauge",
        "Value is 1 if this node is the leader, 0 otherwise.",
        flag(role == "primary"),
    );
    out.metric(
        "patroni_xlog_location",
        "counter",
        "Current location of the Postgres transaction log, 0 if this node is not the leader.",
        st.filter(|x| !x.in_recovery)
            .and_then(|x| x.wal_position)
            .unwrap_or(0),
    );
    out.metric(
        "patroni_standby_leader",
        "gauge",
        "Value is 1 if this node is the standby_leader, 0 otherwise.",
        flag(role == "standby_leader"),
    );
    out.metric(
        "patroni_replica",
        "gauge",
        "Value is 1 if this node is a replica, 0 otherwise.",
        flag(role == "replica"),
    );
    out.metric(
        "patroni_sync_standby",
        "gauge",
        "Value is 1 if this node is a sync standby, 0 otherwise.",
        flag(sync_member && !quorum),
    );
    out.metric(
        "patroni_quorum_standby",
        "gauge",
        "Value is 1 if this node is a quorum standby, 0 otherwise.",
        flag(sync_member && quorum),
    );
    out.metric(
        "patroni_xlog_received_location",
        "counter",
        "Current location of the received Postgres transaction log, 0 if this node is not a replica.",
        standby
            .and_then(|x| x.receive_lsn.or(x.replay_lsn))
            .unwrap_or(0),
    );
    out.metric(
        "patroni_xlog_replayed_location",
        "counter",
        "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.",
        standby.and_then(|x| x.replay_lsn).unwrap_or(0),
    );
    out.metric(
        "patroni_xlog_replayed_timestamp",
        "gauge",
        "Current timestamp of the replayed Postgres transaction log, 0 if null.",
        float_text(epoch(standby.and_then(|x| x.replayed_timestamp.as_deref()))),
    );
    out.metric(
        "patroni_xlog_paused",
        "gauge",
        "Value is 1 if the Postgres xlog is paused, 0 otherwise.",
        flag(standby.is_some_and(|x| x.replay_paused)),
    );
    let server_version = st.map(|x| x.server_version).unwrap_or(0);
    if server_version >= 90600 {
        let rs = st.and_then(|x| x.replication_state.as_deref());
        out.metric(
            "patroni_postgres_streaming",
            "gauge",
            "Value is 1 if Postgres is streaming, 0 otherwise.",
            flag(rs == Some("streaming")),
        );
        out.metric(
            "patroni_postgres_in_archive_recovery",
            "gauge",
            "Value is 1 if Postgres is replicating from archive, 0 otherwise.",
            flag(rs == Some("in archive recovery")),
        );
    }
    out.metric(
        "patroni_postgres_server_version",
        "gauge",
        "Version of Postgres (if running), 0 otherwise.",
        server_version,
    );
    out.metric(
        "patroni_cluster_unlocked",
        "gauge",
        "Value is 1 if the cluster is unlocked, 0 if locked.",
        flag(cluster.is_none_or(|c| c.leader.is_none())),
    );
    out.metric(
        "patroni_failsafe_mode_is_active",
        "gauge",
        "Value is 1 if failsafe mode is active, 0 if inactive.",
        flag(s.failsafe_active),
    );
    out.metric(
        "patroni_postgres_timeline",
        "gauge",
        "Postgres timeline of this node (if running), 0 otherwise.",
        st.map(|x| x.timeline).unwrap_or(0),
    );
    out.metric(
        "patroni_dcs_last_seen",
        "gauge",
        "Epoch timestamp when DCS was last contacted successfully by Patroni.",
        s.dcs_last_seen
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs())
            .unwrap_or(0),
    );
    out.metric(
        "patroni_pending_restart",
        "gauge",
        "Value is 1 if the node needs a restart, 0 otherwise.",
        flag(!s.node.pending_restart.is_empty()),
    );
    out.metric(
        "patroni_is_paused",
        "gauge",
        "Value is 1 if auto failover is disabled, 0 otherwise.",
        flag(s.node.paused),
    );
    out.metric(
        "patrol_watchdog_armed",
        "gauge",
        "Value is 1 if the watchdog is armed (this node leads and feeds it), 0 otherwise.",
        flag(s.node.watchdog.armed),
    );
    out.metric(
        "patrol_watchdog_failed",
        "gauge",
        "Value is 1 if watchdog.mode is required but the watchdog cannot work (watchdog_failed in GET /patroni), 0 otherwise.",
        flag(s.node.watchdog.failed),
    );
    let values: Vec<String> = POSTGRES_STATES
        .iter()
        .enumerate()
        .map(|(i, (_, n))| format!("{i}={n}"))
        .collect();
    let _ = writeln!(
        out.text,
        "# HELP patroni_postgres_state Numeric representation of Postgres state."
    );
    let _ = writeln!(out.text, "# Values: {}", values.join(", "));
    let _ = writeln!(out.text, "# TYPE patroni_postgres_state gauge");
    let _ = writeln!(
        out.text,
        "patroni_postgres_state{} {}",
        out.labels,
        state_code(&state)
    );
    out.text
}

/// Metric names in a rendered body.
#[cfg(test)]
pub fn names(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}
