//! The pure rules of the mutating endpoints (spec 2.7): Patroni's config merge, schedule
//! parsing, restart filters and the switchover/failover validation, each returning Patroni's
//! code and text for a client's mistake. No IO here.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime, Timelike};
use patrol_dcs::{lenient_bool, Cluster};
use serde_json::{Map, Value};

use super::views::sync_modes;
use crate::ha::RestartFilters;

/// A refused request: HTTP code and Patroni's text.
pub type Refusal = (u16, String);

fn refuse(code: u16, text: impl Into<String>) -> Refusal {
    (code, text.into())
}

/// Python's `str()` of a JSON value as Patroni's config code sees it (`True`, `None`, `1.0`,
/// lists and dicts as reprs). Patroni compares values by these strings.
pub fn py_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => py_repr(other),
    }
}

fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => {
            if n.is_f64() {
                let f = n.as_f64().unwrap_or(0.0);
                if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
                    format!("{f:.1}")
                } else {
                    format!("{f}")
                }
            } else {
                n.to_string()
            }
        }
        Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("'{k}': {}", py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Patroni's `patch_config`: `null` deletes, objects merge into objects (replace anything
/// else), other values replace when their string forms differ, new keys are added. Returns
/// whether `config` changed.
pub fn patch_config(config: &mut Map<String, Value>, data: &Map<String, Value>) -> bool {
    let mut changed = false;
    for (name, value) in data {
        if value.is_null() {
            if config.remove(name).is_some_and(|old| !old.is_null()) {
                changed = true;
            }
        } else if let Some(current) = config.get_mut(name) {
            match (value, current) {
                (Value::Object(patch), Value::Object(cur)) => {
                    if patch_config(cur, patch) {
                        changed = true;
                    }
                }
                (Value::Object(_), cur) => {
                    *cur = value.clone();
                    changed = true;
                }
                (_, cur) => {
                    if py_str(cur) != py_str(value) {
                        *cur = value.clone();
                        changed = true;
                    }
                }
            }
        } else {
            config.insert(name.clone(), value.clone());
            changed = true;
        }
    }
    changed
}

/// A change of the dynamic configuration (`before` -> `after`) that turns on a key asking for
/// a guarantee Patrol does not give (synchronous replication, a standby cluster, ...): 400 with
/// one line per key, unless the agent runs with `PATROL_ALLOW_UNSUPPORTED`. Writing it would be
/// ignoring it without a word; keys that were already on are left alone.
pub fn unsupported_change(
    before: &Map<String, Value>,
    after: &Map<String, Value>,
    allow: bool,
) -> Result<(), (u16, String)> {
    let refused = crate::config::unsupported::newly_refused(before, after);
    if allow || refused.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = refused.iter().map(|f| f.rejection()).collect();
    Err((400, lines.join("\n")))
}

/// The dynamic configuration a `PATCH` or `PUT /config` would write, checked as the HA loop
/// checks what it reads from etcd (`ClusterConfig::check`: types, ranges, bounds on every
/// duration), plus the names of `postgresql.parameters` (which would otherwise be written into
/// postgresql.conf): 400 naming the key. Patroni writes anything; an agent that reads a value
/// it cannot use keeps its last valid configuration, so refusing here is the only way the
/// caller learns of it.
pub fn invalid_config(after: &Map<String, Value>) -> Result<(), (u16, String)> {
    let cfg = patrol_dcs::ClusterConfig::from_map(after.clone());
    if let Err(e) = cfg.check() {
        return Err((400, format!("invalid dynamic configuration: {e}")));
    }
    if let Some(bad) = cfg
        .parameters()
        .keys()
        .find(|k| !crate::postgres::is_valid_guc_name(k))
    {
        return Err((
            400,
            format!("invalid dynamic configuration: postgresql.parameters: {bad:?} is not a parameter name"),
        ));
    }
    Ok(())
}

/// Patroni's `deep_compare`: same keys, objects compared recursively, other values by their
/// string forms.
pub fn deep_compare(a: &Map<String, Value>, b: &Map<String, Value>) -> bool {
    if a.len() != b.len() || a.keys().any(|k| !b.contains_key(k)) {
        return false;
    }
    a.iter().all(|(k, v)| match (v, &b[k]) {
        (Value::Object(x), Value::Object(y)) => deep_compare(x, y),
        (Value::Object(_), _) => false,
        (x, y) => py_str(x) == py_str(y),
    })
}

/// Python's truthiness of a JSON value.
pub fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// A timestamp as Python's `datetime.isoformat()` writes it (`2024-05-01T10:00:00+02:00`,
/// microseconds only when not zero).
pub fn isoformat(t: &DateTime<FixedOffset>) -> String {
    if t.nanosecond() / 1000 == 0 {
        t.format("%Y-%m-%dT%H:%M:%S%:z").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6f%:z").to_string()
    }
}

const WITH_ZONE: &[&str] = &[
    "%Y-%m-%dT%H:%M:%S%.f%:z",
    "%Y-%m-%dT%H:%M:%S%.f%z",
    "%Y-%m-%d %H:%M:%S%.f%:z",
    "%Y-%m-%d %H:%M:%S%.f%z",
    "%Y-%m-%dT%H:%M%:z",
    "%Y-%m-%dT%H:%M%z",
    "%Y-%m-%d %H:%M%:z",
    "%Y-%m-%d %H:%M%z",
    "%Y-%m-%dT%H:%M:%S%.f %:z",
    "%Y-%m-%d %H:%M:%S%.f %:z",
    "%Y-%m-%d %H:%M:%S%.f %z",
];

const WITHOUT_ZONE: &[&str] = &[
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
];

/// Parsed, but maybe without a zone.
enum Parsed {
    Zoned(DateTime<FixedOffset>),
    Naive,
    Invalid,
}

fn parse_time(s: &str) -> Parsed {
    let mut t = s.trim().to_string();
    // `Z`, ` UTC`, ` GMT` as dateutil reads them.
    for suffix in [" UTC", " GMT", "UTC", "GMT", "Z", "z"] {
        if let Some(head) = t.strip_suffix(suffix) {
            if head.chars().last().is_some_and(|c| c.is_ascii_digit()) {
                t = format!("{}+00:00", head.trim_end());
                break;
            }
        }
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(&t) {
        return Parsed::Zoned(d);
    }
    for f in WITH_ZONE {
        if let Ok(d) = DateTime::parse_from_str(&t, f) {
            return Parsed::Zoned(d);
        }
    }
    let naive = WITHOUT_ZONE
        .iter()
        .any(|f| NaiveDateTime::parse_from_str(&t, f).is_ok())
        || NaiveDate::parse_from_str(&t, "%Y-%m-%d").is_ok();
    if naive {
        Parsed::Naive
    } else {
        Parsed::Invalid
    }
}

/// Patroni's `parse_schedule`: a timestamp with a zone, not in the past. No zone → 400;
/// unparsable or past → 422.
pub fn parse_schedule(
    value: &Value,
    action: &str,
    now_ms: i64,
) -> Result<DateTime<FixedOffset>, Refusal> {
    let unparsable = || {
        refuse(
            422,
            "Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601",
        )
    };
    let Value::String(s) = value else {
        return Err(unparsable());
    };
    match parse_time(s) {
        Parsed::Zoned(t) if t.timestamp_millis() < now_ms => {
            Err(refuse(422, format!("Cannot schedule {action} in the past")))
        }
        Parsed::Zoned(t) => Ok(t),
        Parsed::Naive => Err(refuse(
            400,
            format!("Timezone information is mandatory for the scheduled {action}"),
        )),
        Parsed::Invalid => Err(unparsable()),
    }
}

/// Patroni's `postgres_version_to_int`: `X.Y` (X >= 10) or `X.Y.Z` → e.g. `150004`.
pub fn postgres_version_to_int(v: &str) -> Result<i32, String> {
    let parts: Result<Vec<i32>, _> = v.split('.').map(|p| p.trim().parse::<i32>()).collect();
    let Ok(mut parts) = parts else {
        return Err(format!("Invalid PostgreSQL version: {v}"));
    };
    if parts.len() < 2 || (parts.len() == 2 && parts[0] < 10) || parts.len() > 3 {
        return Err(format!(
            "Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: {v}"
        ));
    }
    if parts.iter().any(|p| *p < 0 || *p > 99) {
        return Err(format!("Invalid PostgreSQL version: {v}"));
    }
    if parts.len() == 2 {
        parts.insert(1, 0);
    }
    Ok(parts[0] * 10_000 + parts[1] * 100 + parts[2])
}

/// Patroni's `parse_int(value, 's')`: an integer number of seconds, or a number with a time
/// unit (`us`, `ms`, `s`, `min`, `h`, `d`), rounded to seconds.
pub fn parse_seconds(v: &Value) -> Option<i64> {
    let text = match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Some(i);
            }
            return n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64);
        }
        Value::String(s) => s.trim().to_string(),
        _ => return None,
    };
    let split = text
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_digit() || c == '.' || (i == 0 && (c == '-' || c == '+'))))
        .map(|(i, _)| i)
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor = match unit {
        "" | "s" => 1.0,
        "us" => 1e-6,
        "ms" => 1e-3,
        "min" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        _ => return None,
    };
    if unit.is_empty() && num.contains('.') {
        // Patroni's parse_int reads an integer prefix only; a bare fraction is not an int.
        return None;
    }
    Some((n * factor).round() as i64)
}

/// What `POST /restart` asks for once its body is valid.
#[derive(Debug, Clone, PartialEq)]
pub enum RestartPlan {
    Now(RestartFilters),
    /// `schedule` is the ISO 8601 text Patroni would publish; `at_ms` the due time.
    At {
        filters: RestartFilters,
        schedule: String,
        at_ms: i64,
    },
}

/// Validates a `POST /restart` body in Patroni's order (the first bad key decides).
pub fn restart_plan(
    body: &Map<String, Value>,
    paused: bool,
    now_ms: i64,
) -> Result<RestartPlan, Refusal> {
    if paused && body.contains_key("schedule") {
        return Err(refuse(500, "Can't schedule restart in the paused state"));
    }
    let mut filters = RestartFilters::default();
    let mut schedule = None;
    for (k, v) in body {
        match k.as_str() {
            "schedule" => schedule = Some(parse_schedule(v, "restart", now_ms)?),
            "role" => match v.as_str() {
                Some(r @ ("primary" | "standby_leader" | "replica")) => {
                    filters.role = Some(r.to_string())
                }
                _ => {
                    return Err(refuse(
                        400,
                        "PostgreSQL role should be either primary, standby_leader, or replica",
                    ))
                }
            },
            "postgres_version" => {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => py_str(other),
                };
                let n = postgres_version_to_int(&text).map_err(|e| refuse(400, e))?;
                filters.postgres_version = Some((text, n));
            }
            "timeout" => match parse_seconds(v) {
                Some(t) if t > 0 => filters.timeout = Some(t as u64),
                _ => {
                    return Err(refuse(
                        400,
                        "Timeout should be a positive number of seconds",
                    ))
                }
            },
            "restart_pending" => filters.restart_pending = truthy(v),
            other => {
                return Err(refuse(
                    400,
                    format!("Unknown filter for the scheduled restart: {other}"),
                ))
            }
        }
    }
    Ok(match schedule {
        None => RestartPlan::Now(filters),
        Some(t) => RestartPlan::At {
            filters,
            schedule: isoformat(&t),
            at_ms: t.timestamp_millis(),
        },
    })
}

/// `POST /reinitialize` options (`force`, `from_leader`, parsed as Patroni's `parse_bool`).
pub fn reinitialize_options(body: &Map<String, Value>) -> (bool, bool) {
    let flag = |k: &str| lenient_bool(body.get(k)).unwrap_or(false);
    (flag("force"), flag("from_leader"))
}

/// `switchover` or `failover`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Switchover,
    Failover,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Switchover => "switchover",
            Action::Failover => "failover",
        }
    }

    /// `Switchover` / `Failover`.
    pub fn title(self) -> &'static str {
        match self {
            Action::Switchover => "Switchover",
            Action::Failover => "Failover",
        }
    }

    /// `switched` / `failed` (Patroni's `action[:-4] + 'ed'`).
    pub fn past(self) -> &'static str {
        match self {
            Action::Switchover => "switched",
            Action::Failover => "failed",
        }
    }
}

/// A valid switchover/failover request.
#[derive(Debug, Clone, PartialEq)]
pub struct SwitchoverPlan {
    /// After rule 4 (a failover naming a leader is a switchover).
    pub action: Action,
    pub leader: Option<String>,
    pub candidate: Option<String>,
    pub scheduled_at: Option<DateTime<FixedOffset>>,
    /// Members whose `GET /patroni` decides "no good candidates" (empty when scheduled).
    pub probe: Vec<(String, String)>,
}

impl SwitchoverPlan {
    /// The `failover` key value (`{"leader":..,"member":..,"scheduled_at":..}`).
    pub fn failover_key(&self) -> patrol_dcs::Failover {
        patrol_dcs::Failover {
            leader: self.leader.clone(),
            member: self.candidate.clone(),
            scheduled_at: self.scheduled_at.as_ref().map(isoformat),
        }
    }
}

fn name_field(body: &Map<String, Value>, key: &str) -> Option<String> {
    match body.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn sync_listed(cluster: &Cluster, name: &str) -> bool {
    cluster.sync.as_ref().is_some_and(|s| s.value.matches(name))
}

/// Validates a `POST /switchover` / `POST /failover` body against a fresh cluster view, in
/// Patroni's order (spec 2.7 steps 1-6, without the probe of the chosen members).
pub fn switchover_plan(
    requested: Action,
    body: &Map<String, Value>,
    cluster: &Cluster,
    now_ms: i64,
) -> Result<SwitchoverPlan, Refusal> {
    let leader = name_field(body, "leader");
    let candidate = name_field(body, "candidate").or_else(|| name_field(body, "member"));
    let scheduled = body.get("scheduled_at").filter(|v| truthy(v));
    let paused = cluster.is_paused();
    let mut action = requested;

    if action == Action::Failover && candidate.is_none() {
        return Err(refuse(
            400,
            "Failover could be performed only to a specific candidate",
        ));
    }
    if action == Action::Switchover && leader.is_none() {
        return Err(refuse(
            400,
            "Switchover could be performed only from a specific leader",
        ));
    }
    let mut scheduled_at = None;
    if let Some(v) = scheduled {
        if action == Action::Failover {
            return Err(refuse(400, "Failover can't be scheduled"));
        }
        if paused {
            return Err(refuse(400, "Can't schedule switchover in the paused state"));
        }
        scheduled_at = Some(parse_schedule(v, action.name(), now_ms)?);
    }
    if paused && candidate.is_none() {
        return Err(refuse(
            400,
            "Switchover is possible only to a specific candidate in a paused state",
        ));
    }
    if action == Action::Failover && leader.is_some() {
        tracing::warn!(
            "received failover request with leader specified - performing switchover instead"
        );
        action = Action::Switchover;
    }
    if leader == candidate {
        return Err(refuse(400, "Switchover target and source are the same"));
    }
    let mut probe = Vec::new();
    if scheduled_at.is_none() {
        probe = feasibility(cluster, leader.as_deref(), candidate.as_deref(), action)
            .map_err(|t| refuse(412, t))?;
    }
    Ok(SwitchoverPlan {
        action,
        leader,
        candidate,
        scheduled_at,
        probe,
    })
}

/// Patroni's `is_failover_possible` up to the probe: the members to ask, or the reason.
fn feasibility(
    cluster: &Cluster,
    leader: Option<&str>,
    candidate: Option<&str>,
    action: Action,
) -> Result<Vec<(String, String)>, String> {
    let (sync_mode, quorum) = sync_modes(cluster);
    if let Some(l) = leader {
        if cluster.leader_name() != Some(l) {
            return Err("leader name does not match".into());
        }
    }
    let members: Vec<_> = if let Some(c) = candidate {
        if action == Action::Switchover && sync_mode && !quorum && !sync_listed(cluster, c) {
            return Err("candidate name does not match with sync_standby".into());
        }
        let m: Vec<_> = cluster.members.iter().filter(|m| m.name == c).collect();
        if m.is_empty() {
            return Err("candidate does not exists".into());
        }
        m
    } else if sync_mode && !quorum {
        let m: Vec<_> = cluster
            .members
            .iter()
            .filter(|m| sync_listed(cluster, &m.name))
            .collect();
        if m.is_empty() {
            return Err(format!(
                "{} is not possible: can not find sync_standby",
                action.name()
            ));
        }
        m
    } else {
        let leader_name = cluster.leader_name();
        let m: Vec<_> = cluster
            .members
            .iter()
            .filter(|m| {
                leader_name.is_none()
                    || (Some(m.name.as_str()) != leader_name && !m.data.api_url.is_empty())
            })
            .collect();
        if m.is_empty() {
            return Err(format!(
                "{} is not possible: cluster does not have members except leader",
                action.name()
            ));
        }
        m
    };
    Ok(members
        .into_iter()
        .map(|m| (m.name.clone(), m.data.api_url.clone()))
        .collect())
}

/// The text when none of the probed members can take over.
pub fn no_good_candidates(action: Action) -> String {
    format!(
        "{} is not possible: no good candidates have been found",
        action.name()
    )
}

/// How a switchover ended, from one poll of the DCS: `Some((code, text))` when decided.
pub fn switchover_outcome(
    cluster: &Cluster,
    leader_before: Option<&str>,
    candidate: Option<&str>,
    action: Action,
) -> Option<Refusal> {
    if let Some(now) = cluster.leader_name() {
        if Some(now) != leader_before {
            return Some(match candidate {
                Some(c) if c != now => (
                    200,
                    format!(
                        "{}ed over to \"{now}\" instead of \"{c}\"",
                        match action {
                            Action::Switchover => "Switch",
                            Action::Failover => "Fail",
                        }
                    ),
                ),
                _ => (
                    200,
                    format!("Successfully {} over to \"{now}\"", action.past()),
                ),
            });
        }
    }
    let pending = cluster
        .failover
        .as_ref()
        .is_some_and(|f| f.value.leader.is_some() || f.value.member.is_some());
    if !pending {
        return Some((503, format!("{} failed", action.title())));
    }
    None
}
