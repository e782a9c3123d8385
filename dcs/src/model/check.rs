//! Validation of the dynamic configuration (the `config` key), as Patroni's validator and its
//! `set_dynamic_configuration` do: types, ranges, and a bound on every duration. Anyone who can
//! write to etcd can put anything in that key and every agent reads it, so what fails here is
//! refused by `PATCH`/`PUT /config` and ignored (the last valid configuration kept) by the HA
//! loop. Values below the timing minimums are not errors: Patroni raises them, and so does
//! [`Timing::adjusted`].

use serde_json::{Map, Value};

use super::{lenient_bool, lenient_i64, ClusterConfig, MAX_SECONDS, MAX_TTL};

/// A dynamic configuration that cannot be used: the dotted key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {problem}")]
pub struct InvalidConfig {
    pub key: String,
    pub problem: String,
}

/// Integer keys at the top level, with their range.
const INTS: &[(&str, i64, i64)] = &[
    ("ttl", 1, MAX_TTL as i64),
    ("loop_wait", 1, MAX_TTL as i64),
    ("retry_timeout", 1, MAX_TTL as i64),
    ("maximum_lag_on_failover", 0, i64::MAX),
    ("maximum_lag_on_syncnode", -1, i64::MAX),
    ("max_timelines_history", 0, u32::MAX as i64),
    ("primary_start_timeout", 0, MAX_SECONDS as i64),
    ("master_start_timeout", 0, MAX_SECONDS as i64),
    ("primary_stop_timeout", 0, MAX_SECONDS as i64),
    ("master_stop_timeout", 0, MAX_SECONDS as i64),
    ("synchronous_node_count", 1, u16::MAX as i64),
];

const BOOLS: &[&str] = &[
    "pause",
    "check_timeline",
    "failsafe_mode",
    "synchronous_mode_strict",
];

const OBJECTS: &[&str] = &[
    "standby_cluster",
    "slots",
    "permanent_slots",
    "permanent_replication_slots",
];

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> InvalidConfig {
    InvalidConfig {
        key: key.into(),
        problem: problem.into(),
    }
}

/// The value as it appears in a message: JSON, cut short.
fn shown(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}...", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

fn int_in(map: &Map<String, Value>, prefix: &str, key: &str, min: i64, max: i64) -> Check {
    let Some(v) = map.get(key).filter(|v| !v.is_null()) else {
        return Ok(());
    };
    match lenient_i64(Some(v)) {
        Some(i) if (min..=max).contains(&i) => Ok(()),
        _ => Err(invalid(
            format!("{prefix}{key}"),
            format!("must be an integer from {min} to {max}, not {}", shown(v)),
        )),
    }
}

fn boolean(map: &Map<String, Value>, prefix: &str, key: &str) -> Check {
    match map.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(v) if lenient_bool(Some(v)).is_some() => Ok(()),
        Some(v) => Err(invalid(
            format!("{prefix}{key}"),
            format!("must be a boolean, not {}", shown(v)),
        )),
    }
}

fn object<'a>(
    map: &'a Map<String, Value>,
    prefix: &str,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, InvalidConfig> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(v) => Err(invalid(
            format!("{prefix}{key}"),
            format!("must be a mapping, not {}", shown(v)),
        )),
    }
}

fn list(map: &Map<String, Value>, prefix: &str, key: &str, strings: bool) -> Check {
    match map.get(key) {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(a)) if !strings || a.iter().all(Value::is_string) => Ok(()),
        Some(v) => Err(invalid(
            format!("{prefix}{key}"),
            if strings {
                format!("must be a list of strings, not {}", shown(v))
            } else {
                format!("must be a list, not {}", shown(v))
            },
        )),
    }
}

type Check = Result<(), InvalidConfig>;

/// A key from the configuration as it may appear in a log line: quoted and escaped when it has
/// a control character or a space.
fn printable(name: &str) -> String {
    if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        format!("{name:?}")
    } else {
        name.to_string()
    }
}

/// A duration in seconds as Patroni's `parse_int(value, 's')` reads it: an integer, or a
/// number with one of the units `ms`, `s`, `min`, `h`, `d` (`30min`), rounded to seconds.
pub fn seconds_with_unit(v: &Value) -> Option<i64> {
    if let Some(i) = lenient_i64(Some(v)) {
        return Some(i);
    }
    let s = v.as_str()?.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "min" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return None,
    };
    let secs = (number * factor).round();
    (secs.is_finite() && secs.abs() < 9.0e15).then_some(secs as i64)
}

impl ClusterConfig {
    /// Whether the agent may act on this configuration; the error names the first key that is
    /// wrong. Parameter names in `postgresql.parameters` are checked where they are written
    /// (`patrol_agent::postgres::conf::server_parameters` removes a bad one with a warning).
    pub fn check(&self) -> Result<(), InvalidConfig> {
        let d = &self.data;
        for (key, min, max) in INTS {
            int_in(d, "", key, *min, *max)?;
        }
        for key in BOOLS {
            boolean(d, "", key)?;
        }
        match d.get("synchronous_mode") {
            Some(Value::String(s)) if s.eq_ignore_ascii_case("quorum") => {}
            _ => boolean(d, "", "synchronous_mode")?,
        }
        if let Some(v) = d.get("member_slots_ttl").filter(|v| !v.is_null()) {
            match seconds_with_unit(v) {
                Some(s) if (0..=MAX_SECONDS as i64).contains(&s) => {}
                _ => {
                    return Err(invalid(
                        "member_slots_ttl",
                        format!(
                            "must be a duration from 0 to {MAX_SECONDS} seconds (e.g. 1800 or 30min), not {}",
                            shown(v)
                        ),
                    ))
                }
            }
        }
        for key in OBJECTS {
            object(d, "", key)?;
        }
        list(d, "", "ignore_slots", false)?;
        if let Some(sc) = object(d, "", "standby_cluster")? {
            let port_set = sc
                .get("port")
                .is_some_and(|p| !p.is_null() && p.as_str() != Some(""));
            if port_set {
                int_in(sc, "standby_cluster.", "port", 1, 65_535)?;
            }
        }
        if let Some(pg) = object(d, "", "postgresql")? {
            const P: &str = "postgresql.";
            boolean(pg, P, "use_slots")?;
            boolean(pg, P, "use_pg_rewind")?;
            list(pg, P, "pg_hba", true)?;
            list(pg, P, "pg_ident", true)?;
            object(pg, P, "recovery_conf")?;
            int_in(pg, P, "pg_ctl_timeout", 0, MAX_SECONDS as i64)?;
            if let Some(params) = object(pg, P, "parameters")? {
                for (name, v) in params {
                    if matches!(v, Value::Array(_) | Value::Object(_)) {
                        return Err(invalid(
                            format!("postgresql.parameters.{}", printable(name)),
                            format!("must be a string, a number or a boolean, not {}", shown(v)),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}
