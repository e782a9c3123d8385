//! What PostgreSQL's parameters (GUCs) take, and what a running server still needs a restart
//! for. Pure: the catalogue comes from `postgres --describe-config` (known before the server
//! runs), the settings from `pg_settings`.
//!
//! Values are checked as PostgreSQL parses them (`parse_bool`, `parse_int` and `parse_real`
//! with units) so that a value it would reject (`shared_buffers: lots`) is removed with a
//! warning before it reaches postgresql.conf, where it would keep PostgreSQL from starting.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// A parameter's type, as `--describe-config` and `pg_settings.vartype` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarType {
    Bool,
    Integer,
    Real,
    Enum,
    String,
}

impl VarType {
    fn parse(text: &str) -> Option<VarType> {
        match text.trim().to_ascii_lowercase().as_str() {
            "bool" | "boolean" => Some(VarType::Bool),
            "integer" => Some(VarType::Integer),
            "real" => Some(VarType::Real),
            "enum" => Some(VarType::Enum),
            "string" => Some(VarType::String),
            _ => None,
        }
    }
}

/// One parameter of the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct GucSpec {
    pub vartype: VarType,
    /// `postmaster`, `sighup`, `user`, ...
    pub context: String,
    /// The bounds in the parameter's base unit (numeric types only).
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// `postgres --describe-config`: tab-separated name, context, group, type, default, min, max,
/// descriptions. Names are lower case.
pub fn parse_describe_config(text: &str) -> HashMap<String, GucSpec> {
    text.lines()
        .filter_map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let name = cols.first()?.trim().to_ascii_lowercase();
            let vartype = VarType::parse(cols.get(3)?)?;
            let num = |i: usize| cols.get(i).and_then(|v| v.trim().parse::<f64>().ok());
            (!name.is_empty()).then(|| {
                (
                    name,
                    GucSpec {
                        vartype,
                        context: cols
                            .get(1)
                            .map(|c| c.trim().to_string())
                            .unwrap_or_default(),
                        min: num(5),
                        max: num(6),
                    },
                )
            })
        })
        .collect()
}

/// PostgreSQL's `parse_bool`: on/off, true/false, yes/no, 1/0 and their unique prefixes.
pub fn parse_bool(text: &str) -> Option<bool> {
    let t = text.trim().to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| t.len() >= min && word.starts_with(t.as_str());
    if prefix_of("true", 1) || prefix_of("yes", 1) || t == "1" || prefix_of("on", 2) {
        Some(true)
    } else if prefix_of("false", 1) || prefix_of("no", 1) || t == "0" || prefix_of("off", 2) {
        Some(false)
    } else {
        None
    }
}

/// Memory units in bytes and time units in microseconds, as PostgreSQL spells them (case
/// matters: `mb` is not a unit).
const MEMORY_UNITS: &[(&str, f64)] = &[
    ("B", 1.0),
    ("kB", 1024.0),
    ("MB", 1024.0 * 1024.0),
    ("GB", 1024.0 * 1024.0 * 1024.0),
    ("TB", 1024.0 * 1024.0 * 1024.0 * 1024.0),
];
const TIME_UNITS: &[(&str, f64)] = &[
    ("us", 1.0),
    ("ms", 1_000.0),
    ("s", 1_000_000.0),
    ("min", 60_000_000.0),
    ("h", 3_600_000_000.0),
    ("d", 86_400_000_000.0),
];

/// A number and its unit as PostgreSQL reads them: `128MB`, `1.5GB`, ` 30 s`, `0x10`, `-1`.
fn split_number(text: &str) -> Option<(f64, &str)> {
    let t = text.trim();
    let hex = t
        .strip_prefix("0x")
        .or_else(|| t.strip_prefix("0X"))
        .map(|h| {
            let digits = h.find(|c: char| !c.is_ascii_hexdigit()).unwrap_or(h.len());
            (i64::from_str_radix(&h[..digits], 16).ok(), &h[digits..])
        });
    if let Some((Some(n), rest)) = hex {
        return Some((n as f64, rest.trim()));
    }
    // Units never start with `e`, so the number is every leading digit, sign, point and
    // exponent mark.
    let end = t
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E')))
        .unwrap_or(t.len());
    let n: f64 = t[..end].parse().ok()?;
    n.is_finite().then_some((n, t[end..].trim()))
}

/// The multiplier of `unit` (memory or time), if it is one.
fn unit_factor(unit: &str) -> Option<(f64, bool)> {
    MEMORY_UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .map(|(_, f)| (*f, true))
        .or_else(|| {
            TIME_UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, f)| (*f, false))
        })
}

/// A base unit as `pg_settings.unit` gives it (`8kB`, `kB`, `ms`, `min`, `16MB`): (its size in
/// bytes or microseconds, whether it is memory).
fn base_unit(unit: &str) -> Option<(f64, bool)> {
    let digits = unit
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(unit.len());
    let count: f64 = if digits == 0 {
        1.0
    } else {
        unit[..digits].parse().ok()?
    };
    let (f, memory) = unit_factor(&unit[digits..])?;
    Some((count * f, memory))
}

/// Whether PostgreSQL would take `value` for a parameter of `spec` (enum values are not in the
/// catalogue and are left to the server). The error says why not.
pub fn check_value(spec: &GucSpec, value: &str) -> Result<(), String> {
    match spec.vartype {
        VarType::Bool => parse_bool(value)
            .map(|_| ())
            .ok_or_else(|| "requires a Boolean value (on or off)".to_string()),
        VarType::Integer | VarType::Real => {
            let what = if spec.vartype == VarType::Integer {
                "an integer"
            } else {
                "a number"
            };
            let (n, unit) = split_number(value)
                .ok_or_else(|| format!("requires {what}, optionally with a unit"))?;
            if unit.is_empty() {
                let out = spec.min.is_some_and(|m| n < m) || spec.max.is_some_and(|m| n > m);
                if out {
                    return Err(format!(
                        "{value} is outside the valid range ({} .. {})",
                        spec.min.map(|m| m.to_string()).unwrap_or_default(),
                        spec.max.map(|m| m.to_string()).unwrap_or_default()
                    ));
                }
                Ok(())
            } else if unit_factor(unit).is_some() {
                Ok(())
            } else {
                Err(format!(
                    "{unit:?} is not a unit (B, kB, MB, GB, TB, us, ms, s, min, h, d)"
                ))
            }
        }
        VarType::Enum | VarType::String => Ok(()),
    }
}

/// One row of `pg_settings` for a parameter that needs a restart to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgSetting {
    pub name: String,
    /// `current_setting(name)`: the value as PostgreSQL shows it (`128MB`).
    pub shown: String,
    /// `setting`: the value in the base unit (`16384`).
    pub setting: String,
    pub unit: Option<String>,
    pub vartype: String,
    /// `pending_restart`: postgresql.conf changed it and the server has not restarted.
    pub pending_restart: bool,
    /// The value postgresql.conf asks for, when `pending_restart` (`pg_file_settings`).
    pub file_value: Option<String>,
}

/// Whether `wanted` (as written in the configuration) is the value `setting` (base units)
/// already is, as Patroni's `compare_values`.
fn same_value(s: &PgSetting, wanted: &str) -> bool {
    match VarType::parse(&s.vartype) {
        Some(VarType::Bool) => parse_bool(&s.setting) == parse_bool(wanted),
        Some(VarType::Integer) | Some(VarType::Real) => {
            let Some((current, _)) = split_number(&s.setting) else {
                return false;
            };
            let Some((n, unit)) = split_number(wanted) else {
                return false;
            };
            let wanted_base = if unit.is_empty() {
                Some(n)
            } else {
                match (unit_factor(unit), s.unit.as_deref().and_then(base_unit)) {
                    (Some((f, m1)), Some((b, m2))) if m1 == m2 => Some(n * f / b),
                    _ => None,
                }
            };
            wanted_base.is_some_and(|w| {
                if VarType::parse(&s.vartype) == Some(VarType::Integer) {
                    w.round() == current.round()
                } else {
                    (w - current).abs() <= 1e-9 * current.abs().max(1.0)
                }
            })
        }
        Some(VarType::Enum) => s.setting.eq_ignore_ascii_case(wanted.trim()),
        _ => s.setting == wanted,
    }
}

/// Patroni's `pending_restart_reason`: every restart-only parameter whose wanted value is not
/// the one the server runs with (`{"old_value": ..., "new_value": ...}`), and those PostgreSQL
/// itself flags `pending_restart` (postgresql.conf or `ALTER SYSTEM` changed them).
pub fn pending_restart_reason(
    wanted: &[(String, String)],
    settings: &[PgSetting],
) -> Map<String, Value> {
    let diff = |old: &str, new: &str| {
        let mut o = Map::new();
        o.insert("old_value".into(), old.into());
        o.insert("new_value".into(), new.into());
        Value::Object(o)
    };
    let mut out = Map::new();
    for s in settings {
        let asked = wanted
            .iter()
            .rev()
            .find(|(n, _)| n.eq_ignore_ascii_case(&s.name));
        match asked {
            Some((_, v)) if !same_value(s, v) => {
                out.insert(s.name.clone(), diff(&s.shown, v));
            }
            // Set on the command line: what a file says does not matter.
            Some(_) => {}
            None if s.pending_restart => {
                out.insert(
                    s.name.clone(),
                    diff(&s.shown, s.file_value.as_deref().unwrap_or("?")),
                );
            }
            None => {}
        }
    }
    out
}

/// The parameters a standby must run with at least at the primary's values (PostgreSQL
/// refuses to start a hot standby below them), with pg_controldata's names.
const CONTROLDATA_FLOORS: &[(&str, &str)] = &[
    ("max_connections", "max_connections setting"),
    ("max_prepared_transactions", "max_prepared_xacts setting"),
    ("max_locks_per_transaction", "max_locks_per_xact setting"),
    ("max_worker_processes", "max_worker_processes setting"),
    ("max_wal_senders", "max_wal_senders setting"),
];

/// Patroni's `effective_configuration`: a standby starts with pg_controldata's value of each
/// of [`CONTROLDATA_FLOORS`] when it is higher than the configured one (the primary ran with
/// it); the configured value then waits for a restart (the caller sees it in the pending
/// restart reason). Returns the names raised.
pub fn raise_to_controldata(
    params: &mut [(String, String)],
    controldata: &std::collections::BTreeMap<String, String>,
) -> Vec<String> {
    let mut raised = Vec::new();
    for (name, field) in CONTROLDATA_FLOORS {
        let control = controldata
            .get(*field)
            .or_else(|| controldata.get(&format!("Current {field}")))
            .and_then(|v| v.trim().parse::<i64>().ok());
        let Some(control) = control else { continue };
        if let Some((_, v)) = params.iter_mut().find(|(n, _)| n == name) {
            if v.trim().parse::<i64>().is_ok_and(|c| c < control) {
                *v = control.to_string();
                raised.push(name.to_string());
            }
        }
    }
    raised
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(vartype: VarType, min: Option<f64>, max: Option<f64>) -> GucSpec {
        GucSpec {
            vartype,
            context: "postmaster".into(),
            min,
            max,
        }
    }

    #[test]
    fn describe_config_lines_become_specs() {
        let text = "shared_buffers\tpostmaster\tResource Usage / Memory\tINTEGER\t0\t16\t1073741823\tSets the number.\t\n\
                    enable_seqscan\tuser\tQuery Tuning\tBOOLEAN\tFALSE\t\t\tEnables.\t\n\
                    wal_level\tpostmaster\tWAL\tENUM\treplica\t\t\tSets.\t\n";
        let m = parse_describe_config(text);
        assert_eq!(
            m["shared_buffers"],
            spec(VarType::Integer, Some(16.0), Some(1073741823.0))
        );
        assert_eq!(m["enable_seqscan"].vartype, VarType::Bool);
        assert_eq!(m["enable_seqscan"].context, "user");
        assert_eq!(m["wal_level"].vartype, VarType::Enum);
    }

    #[test]
    fn values_are_checked_as_postgresql_parses_them() {
        let int = spec(VarType::Integer, Some(16.0), Some(1073741823.0));
        for ok in ["128MB", "1.5GB", "16384", " 64 kB", "0x4000", "1TB"] {
            assert_eq!(check_value(&int, ok), Ok(()), "{ok}");
        }
        for bad in ["lots", "", "128mb", "12 apples", "8"] {
            assert!(check_value(&int, bad).is_err(), "{bad}");
        }
        let real = spec(VarType::Real, Some(0.0), Some(1e308));
        assert_eq!(check_value(&real, "1.1"), Ok(()));
        assert_eq!(check_value(&real, "2e3"), Ok(()));
        assert!(check_value(&real, "fast").is_err());
        let b = spec(VarType::Bool, None, None);
        for ok in ["on", "OFF", "true", "f", "yes", "n", "1", "0"] {
            assert_eq!(check_value(&b, ok), Ok(()), "{ok}");
        }
        for bad in ["o", "maybe", "2", ""] {
            assert!(check_value(&b, bad).is_err(), "{bad}");
        }
        assert_eq!(
            check_value(&spec(VarType::Enum, None, None), "whatever"),
            Ok(())
        );
    }

    fn setting(
        name: &str,
        shown: &str,
        setting: &str,
        unit: Option<&str>,
        vartype: &str,
    ) -> PgSetting {
        PgSetting {
            name: name.into(),
            shown: shown.into(),
            setting: setting.into(),
            unit: unit.map(Into::into),
            vartype: vartype.into(),
            pending_restart: false,
            file_value: None,
        }
    }

    #[test]
    fn the_pending_restart_reason_names_what_differs_in_patroni_s_shape() {
        let settings = vec![
            setting("max_connections", "100", "100", None, "integer"),
            setting("shared_buffers", "128MB", "16384", Some("8kB"), "integer"),
            setting("wal_log_hints", "on", "on", None, "bool"),
            setting("wal_level", "replica", "replica", None, "enum"),
            PgSetting {
                pending_restart: true,
                file_value: Some("pg_stat_statements".into()),
                ..setting("shared_preload_libraries", "", "", None, "string")
            },
        ];
        let wanted: Vec<(String, String)> = [
            ("max_connections", "123"),
            ("shared_buffers", "128MB"),
            ("wal_log_hints", "true"),
            ("wal_level", "REPLICA"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        let reason = pending_restart_reason(&wanted, &settings);
        assert_eq!(
            Value::Object(reason),
            serde_json::json!({
                "max_connections": {"old_value": "100", "new_value": "123"},
                "shared_preload_libraries": {"old_value": "", "new_value": "pg_stat_statements"},
            })
        );
        let wanted = vec![("shared_buffers".to_string(), "256MB".to_string())];
        let reason = pending_restart_reason(&wanted, &settings[1..2]);
        assert_eq!(
            reason["shared_buffers"],
            serde_json::json!({"old_value": "128MB", "new_value": "256MB"})
        );
    }

    #[test]
    fn a_standby_starts_with_the_primary_s_higher_values() {
        let mut params = vec![
            ("max_connections".to_string(), "80".to_string()),
            ("max_wal_senders".to_string(), "10".to_string()),
            ("port".to_string(), "5432".to_string()),
        ];
        let control: std::collections::BTreeMap<String, String> = [
            ("max_connections setting", "100"),
            ("max_wal_senders setting", "5"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(
            raise_to_controldata(&mut params, &control),
            vec!["max_connections"]
        );
        assert_eq!(params[0].1, "100");
        assert_eq!(params[1].1, "10");
    }
}
