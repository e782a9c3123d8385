//! Generating PostgreSQL's configuration: `postgresql.conf` (including `postgresql.base.conf`),
//! `pg_hba.conf`, `standby.signal` and the recovery settings, and the parameters Patroni
//! controls on the command line.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::gucs::GucSpec;
use crate::config::Postgresql;

/// Recovery settings (PostgreSQL 12+: in postgresql.conf plus a signal file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// `None` = no upstream yet (a read-only node waiting for a leader).
    pub primary_conninfo: Option<String>,
    pub primary_slot_name: Option<String>,
    /// The other settings, in order: a standby's from `postgresql.recovery_conf`
    /// ([`standby_settings`]), a custom bootstrap's from its `recovery_conf`.
    pub settings: Vec<(String, String)>,
    /// `standby.signal`, and every recovery target cleared: a standby, whose recovery never
    /// ends on its own. `false`: `recovery.signal` and the targets as `settings` give them, an
    /// archive recovery that ends in a promotion (a custom bootstrap).
    pub standby: bool,
}

impl Recovery {
    /// A standby of `primary_conninfo` (or of nobody) with the user's `recovery_conf`.
    pub fn standby(
        primary_conninfo: Option<String>,
        primary_slot_name: Option<String>,
        recovery_conf: &Map<String, Value>,
    ) -> Recovery {
        Recovery {
            primary_conninfo,
            primary_slot_name,
            settings: standby_settings(recovery_conf),
            standby: true,
        }
    }

    /// Sets each of `settings`, replacing the value it had.
    pub fn set_all(&mut self, settings: Vec<(String, String)>) {
        for (k, v) in settings {
            self.settings.retain(|(n, _)| !n.eq_ignore_ascii_case(&k));
            self.settings.push((k, v));
        }
    }

    /// The archive recovery after a custom bootstrap: `recovery_conf` as given (Patroni's
    /// `pause_at_recovery_target` becomes `recovery_target_action`), with `recovery.signal`.
    pub fn archive(recovery_conf: &Map<String, Value>) -> Recovery {
        let mut settings: Vec<(String, String)> = Vec::new();
        let mut pause = None;
        for (k, v) in recovery_conf {
            let k = k.to_ascii_lowercase();
            match k.as_str() {
                "standby_mode" => {}
                "pause_at_recovery_target" => {
                    pause = value_text(v).map(|t| {
                        matches!(t.to_ascii_lowercase().as_str(), "on" | "true" | "yes" | "1")
                    })
                }
                _ if is_valid_guc_name(&k) => settings.extend(value_text(v).map(|t| (k, t))),
                _ => {}
            }
        }
        if let Some(pause) = pause {
            if !settings.iter().any(|(k, _)| k == "recovery_target_action") {
                let action = if pause { "pause" } else { "promote" };
                settings.push(("recovery_target_action".into(), action.into()));
            }
        }
        Recovery {
            primary_conninfo: None,
            primary_slot_name: None,
            settings,
            standby: false,
        }
    }
}

/// A standby's settings from `postgresql.recovery_conf`, as Patroni's `build_recovery_params`:
/// without `primary_conninfo`, `primary_slot_name` and the recovery targets (the agent sets
/// them), `standby_mode` (a signal file now) and names that cannot be a setting.
pub fn standby_settings(recovery_conf: &Map<String, Value>) -> Vec<(String, String)> {
    recovery_conf
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .filter(|(k, _)| !is_recovery_param(k) && k != "standby_mode" && is_valid_guc_name(k))
        .filter_map(|(k, v)| value_text(v).map(|t| (k, t)))
        .collect()
}

/// Everything written before PostgreSQL starts or reloads.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigFiles {
    /// User parameters (local over dynamic), without the command-line ones.
    pub parameters: Map<String, Value>,
    /// Full pg_hba.conf content when managed (`postgresql.pg_hba`), else left alone.
    pub pg_hba: Option<Vec<String>>,
    pub pg_ident: Option<Vec<String>>,
    /// `Some` = start in recovery (a standby, or a custom bootstrap's archive recovery).
    pub recovery: Option<Recovery>,
    /// Leave the recovery settings and signal files a custom bootstrap's tool wrote alone
    /// (`keep_existing_recovery_conf`): no signal file is created or removed and
    /// `postgresql.auto.conf` keeps its recovery settings.
    pub keep_recovery: bool,
}

/// Parameters always passed on the command line, with Patroni's defaults and minimums.
const CMDLINE: &[(&str, &str, i64)] = &[
    ("max_connections", "100", 25),
    ("max_wal_senders", "10", 3),
    ("max_prepared_transactions", "0", 0),
    ("max_locks_per_transaction", "64", 32),
    ("max_replication_slots", "10", 4),
    ("max_worker_processes", "8", 2),
];

const CMDLINE_OTHER: &[&str] = &[
    "listen_addresses",
    "port",
    "cluster_name",
    "wal_level",
    "hot_standby",
    "track_commit_timestamp",
    "wal_log_hints",
];

pub fn is_cmdline_param(name: &str) -> bool {
    CMDLINE.iter().any(|(n, _, _)| *n == name) || CMDLINE_OTHER.contains(&name)
}

pub(super) fn value_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "on".into() } else { "off".into() }),
        _ => None,
    }
}

/// `archive_command` when `parameters` turn archiving on (`archive_mode` on or always), as
/// Patroni's `get_archive_command`.
pub fn archive_command(parameters: &Map<String, Value>) -> Option<String> {
    let mode = parameters.get("archive_mode").and_then(value_text)?;
    let command = parameters.get("archive_command").and_then(value_text)?;
    (matches!(mode.trim().to_ascii_lowercase().as_str(), "on" | "always")
        && !command.trim().is_empty())
    .then_some(command)
}

/// The controlled parameters: listen address and port from the local config, `cluster_name` =
/// scope, and the rest from the dynamic config (values below the minimum fall back to the
/// default), never from the local `parameters`.
pub fn cmdline_params(
    pg: &Postgresql,
    scope: &str,
    dynamic: &Map<String, Value>,
) -> Vec<(String, String)> {
    let mut out = vec![
        ("listen_addresses".to_string(), pg.listen_addresses.clone()),
        ("port".to_string(), pg.port.to_string()),
        ("cluster_name".to_string(), scope.to_string()),
    ];
    let wal_level = dynamic
        .get("wal_level")
        .and_then(value_text)
        .map(|w| match w.as_str() {
            "logical" => "logical",
            _ => "replica",
        })
        .unwrap_or("replica");
    out.push(("wal_level".into(), wal_level.into()));
    out.push(("hot_standby".into(), "on".into()));
    for (name, default, min) in CMDLINE {
        let v = dynamic
            .get(*name)
            .and_then(value_text)
            .and_then(|s| s.trim().parse::<i64>().ok())
            .filter(|v| *v >= *min)
            .map(|v| v.to_string())
            .unwrap_or_else(|| default.to_string());
        out.push((name.to_string(), v));
    }
    let onoff = |name: &str, default: &str| {
        dynamic
            .get(name)
            .and_then(value_text)
            .map(|s| match s.to_ascii_lowercase().as_str() {
                "on" | "true" | "yes" | "1" => "on".to_string(),
                _ => "off".to_string(),
            })
            .unwrap_or_else(|| default.to_string())
    };
    out.push((
        "track_commit_timestamp".into(),
        onoff("track_commit_timestamp", "off"),
    ));
    out.push(("wal_log_hints".into(), onoff("wal_log_hints", "on")));
    out
}

/// Whether `name` can be a GUC name: letters, digits, `_` and `$`, not starting with a digit or
/// `$`, with `.` separating an extension's namespace (`pg_stat_statements.max`). Anything else
/// (a newline, `=`, a quote) would let a value written to etcd add lines to postgresql.conf.
pub fn is_valid_guc_name(name: &str) -> bool {
    !name.is_empty()
        && name.split('.').all(|part| {
            let mut chars = part.chars();
            chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        })
}

/// The parameters as PostgreSQL `major` (e.g. 15) takes them, as Patroni prepares them
/// (`ConfigHandler.get_server_parameters` and the validator): `wal_keep_segments` and
/// `wal_keep_size` converted into each other at 16 MB a segment (on 13+ only `wal_keep_size`
/// exists; the default is 8 segments, 128MB), `wal_level: hot_standby` renamed `replica`, and
/// every parameter this server does not know (`available`, from `postgres --describe-config`;
/// `None` = not known, keep all) removed with a warning, except extension parameters (with a
/// dot). A name that cannot be a GUC is removed too, and so is a value PostgreSQL would
/// refuse for its parameter's type ([`gucs::check_value`]: it would keep the server from
/// starting). Returns the warnings to log.
pub fn server_parameters(
    params: &Map<String, Value>,
    major: u32,
    available: Option<&HashMap<String, GucSpec>>,
) -> (Map<String, Value>, Vec<String>) {
    let mut out = Map::new();
    let mut warnings = Vec::new();
    let lower = |m: &Map<String, Value>, k: &str| {
        m.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    for (name, value) in params {
        if !is_valid_guc_name(name) {
            warnings.push(format!(
                "removing parameter {name:?}: not a valid PostgreSQL parameter name"
            ));
            continue;
        }
        let lname = name.to_ascii_lowercase();
        if lname == "wal_keep_segments" || lname == "wal_keep_size" {
            continue;
        }
        out.insert(name.clone(), value.clone());
    }
    if major >= 13 {
        let size = match lower(params, "wal_keep_size") {
            Some(v) => Some(v),
            None => lower(params, "wal_keep_segments")
                .and_then(|v| value_text(&v))
                .and_then(|t| t.trim().parse::<i64>().ok())
                .map(|segments| Value::String(format!("{}MB", segments.max(0) * 16))),
        };
        out.insert(
            "wal_keep_size".into(),
            size.unwrap_or_else(|| Value::String("128MB".into())),
        );
    } else if major == 0 {
        // Version unknown: leave both as given (Patroni converts only with a known version).
        for (name, value) in params {
            let lname = name.to_ascii_lowercase();
            if lname == "wal_keep_segments" || lname == "wal_keep_size" {
                out.insert(name.clone(), value.clone());
            }
        }
    } else {
        let segments = match lower(params, "wal_keep_segments") {
            Some(v) => Some(v),
            None => lower(params, "wal_keep_size")
                .and_then(|v| value_text(&v))
                .and_then(|t| parse_megabytes(&t))
                .map(|mb| Value::from((mb + 8) / 16)),
        };
        out.insert(
            "wal_keep_segments".into(),
            segments.unwrap_or_else(|| Value::from(8)),
        );
    }
    if let Some(key) = out
        .keys()
        .find(|k| k.eq_ignore_ascii_case("wal_level"))
        .cloned()
    {
        if out.get(&key).and_then(value_text).as_deref() == Some("hot_standby") {
            out.insert(key, Value::String("replica".into()));
        }
    }
    if let Some(available) = available {
        out.retain(|name, value| {
            let spec = available.get(&name.to_ascii_lowercase());
            if let Some(spec) = spec {
                let text = value_text(value).unwrap_or_default();
                if let Err(why) = super::gucs::check_value(spec, &text) {
                    warnings.push(format!(
                        "removing parameter {name}={text:?}: PostgreSQL would refuse it: {why}"
                    ));
                    return false;
                }
            }
            let keep = name.contains('.')
                || spec.is_some()
                || SETTABLE_NOT_DESCRIBED.contains(&name.to_ascii_lowercase().as_str())
                || is_cmdline_param(name)
                || is_recovery_param(name);
            if !keep {
                warnings.push(format!(
                    "removing parameter {name}={:?}: PostgreSQL {major} does not know it",
                    value_text(value).unwrap_or_default()
                ));
            }
            keep
        });
    }
    (out, warnings)
}

/// Parameters a user may set in postgresql.conf that `postgres --describe-config` does not
/// list (it leaves out developer options and those not in the sample file). Read-only ones
/// (`block_size`, `server_version`, ...) are not here: PostgreSQL refuses to start with them.
const SETTABLE_NOT_DESCRIBED: &[&str] = &[
    "allow_in_place_tablespaces",
    "allow_system_table_mods",
    "application_name",
    "backtrace_functions",
    "debug_discard_caches",
    "debug_parallel_query",
    "force_parallel_mode",
    "ignore_checksum_failure",
    "ignore_invalid_pages",
    "ignore_system_indexes",
    "jit_debugging_support",
    "jit_dump_bitcode",
    "jit_expressions",
    "jit_profiling_support",
    "jit_tuple_deforming",
    "post_auth_delay",
    "pre_auth_delay",
    "remove_temp_files_after_crash",
    "restrict_nonsystem_relation_kind",
    "trace_notify",
    "trace_recovery_messages",
    "trace_sort",
    "transaction_deferrable",
    "transaction_isolation",
    "transaction_read_only",
    "wal_consistency_checking",
    "zero_damaged_pages",
];

/// `128MB`, `1GB`, `2048kB`, a bare number (MB, `wal_keep_size`'s unit) -> megabytes.
fn parse_megabytes(text: &str) -> Option<i64> {
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(digits);
    let n: i64 = n.parse().ok()?;
    let mb = match unit.trim() {
        "" | "MB" => n,
        "kB" => n / 1024,
        "GB" => n * 1024,
        "TB" => n * 1024 * 1024,
        _ => return None,
    };
    Some(mb)
}

/// Quotes a value for postgresql.conf: `'` doubled, `\` and control characters escaped as
/// PostgreSQL's configuration lexer reads them back (`\n`, `\t`, octal), so that no value,
/// whatever it holds, can end the line it is written on.
fn conf_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => out.push_str(&format!("\\{:03o}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Quotes a value for a libpq connection string: always in single quotes, with `\` and `'`
/// escaped, so that no value (a host from a member key in etcd, a user, a file name) can add
/// keywords, whatever whitespace or control characters it holds.
pub fn libpq_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The `primary_conninfo` for following `host:port` as `application_name` = our member name,
/// with the password in the passfile (never in the string).
pub fn primary_conninfo(
    host: &str,
    port: u16,
    user: &str,
    passfile: &Path,
    application_name: &str,
    extra: &std::collections::BTreeMap<String, String>,
) -> String {
    let mut parts = vec![
        format!("user={}", libpq_quote(user)),
        format!("passfile={}", libpq_quote(&passfile.display().to_string())),
        format!("host={}", libpq_quote(host)),
        format!("port={port}"),
    ];
    let sslmode = extra.get("sslmode").map(String::as_str).unwrap_or("prefer");
    parts.push(format!("sslmode={}", libpq_quote(sslmode)));
    for (k, v) in extra {
        if k != "sslmode" && k != "password" {
            parts.push(format!("{}={}", k, libpq_quote(v)));
        }
    }
    parts.push(format!(
        "application_name={}",
        libpq_quote(application_name)
    ));
    parts.push("gssencmode=prefer".into());
    parts.push("channel_binding=prefer".into());
    parts.join(" ")
}

impl ConfigFiles {
    pub fn render_postgresql_conf(&self, config_dir: &Path) -> String {
        let mut s = String::from(
            "# Do not edit this file manually!\n# It will be overwritten by Patrol!\ninclude 'postgresql.base.conf'\n\n",
        );
        let mut params: Vec<(&String, &Value)> = self.parameters.iter().collect();
        params.sort_by(|a, b| a.0.cmp(b.0));
        let mut has_hba = false;
        let mut has_ident = false;
        let in_recovery = |k: &str| {
            self.recovery
                .as_ref()
                .is_some_and(|r| r.settings.iter().any(|(n, _)| n.eq_ignore_ascii_case(k)))
        };
        for (k, v) in params {
            // A recovery setting given in `recovery_conf` wins over the same parameter.
            if is_cmdline_param(k) || is_recovery_param(k) || in_recovery(k) {
                continue;
            }
            has_hba |= k == "hba_file";
            has_ident |= k == "ident_file";
            if let Some(t) = value_text(v) {
                s.push_str(&format!("{k} = {}\n", conf_quote(&t)));
            }
        }
        if !has_hba {
            s.push_str(&format!(
                "hba_file = {}\n",
                conf_quote(&config_dir.join("pg_hba.conf").display().to_string())
            ));
        }
        if !has_ident {
            s.push_str(&format!(
                "ident_file = {}\n",
                conf_quote(&config_dir.join("pg_ident.conf").display().to_string())
            ));
        }
        if let Some(r) = &self.recovery {
            s.push_str("\n# recovery\n");
            if let Some(ci) = &r.primary_conninfo {
                s.push_str(&format!("primary_conninfo = {}\n", conf_quote(ci)));
            }
            if let Some(slot) = &r.primary_slot_name {
                s.push_str(&format!("primary_slot_name = {}\n", conf_quote(slot)));
            }
            for (k, v) in &r.settings {
                s.push_str(&format!("{k} = {}\n", conf_quote(v)));
            }
            if r.standby {
                // Nothing included elsewhere may pause, promote or stop a standby.
                s.push_str("recovery_target_timeline = 'latest'\n");
                for k in [
                    "recovery_target",
                    "recovery_target_lsn",
                    "recovery_target_name",
                    "recovery_target_time",
                    "recovery_target_xid",
                ] {
                    s.push_str(&format!("{k} = ''\n"));
                }
            }
        }
        s
    }

    /// Writes the files. The original `postgresql.conf` from initdb/basebackup is kept as
    /// `postgresql.base.conf` (created empty when absent).
    pub fn write(&self, data_dir: &Path, config_dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(config_dir)?;
        let conf = config_dir.join("postgresql.conf");
        let base = config_dir.join("postgresql.base.conf");
        if !base.exists() {
            if conf.exists() && !is_ours(&conf) {
                std::fs::rename(&conf, &base)?;
            } else {
                std::fs::write(&base, "")?;
            }
        }
        write_atomic(&conf, &self.render_postgresql_conf(config_dir))?;
        if let Some(hba) = &self.pg_hba {
            write_atomic(&config_dir.join("pg_hba.conf"), &(hba.join("\n") + "\n"))?;
        }
        if let Some(ident) = &self.pg_ident {
            write_atomic(
                &config_dir.join("pg_ident.conf"),
                &(ident.join("\n") + "\n"),
            )?;
        }
        let ident = config_dir.join("pg_ident.conf");
        if !ident.exists() {
            std::fs::write(&ident, "")?;
        }
        if self.keep_recovery {
            return Ok(());
        }
        let wanted = self.recovery.as_ref().map(|r| {
            if r.standby {
                "standby.signal"
            } else {
                "recovery.signal"
            }
        });
        for name in ["standby.signal", "recovery.signal"] {
            let path = data_dir.join(name);
            if Some(name) == wanted {
                if !path.exists() {
                    std::fs::write(&path, "")?;
                }
            } else if path.exists() {
                std::fs::remove_file(&path)?;
            }
        }
        sanitize_auto_conf(data_dir)
    }
}

/// Removes recovery settings from `postgresql.auto.conf` (a restored backup's tool, or `ALTER
/// SYSTEM`, may have put them there), so that the agent's own win, as Patroni does.
fn sanitize_auto_conf(data_dir: &Path) -> std::io::Result<()> {
    let path = data_dir.join("postgresql.auto.conf");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let name = l.trim_start().split(['=', ' ', '\t']).next().unwrap_or("");
            !is_recovery_setting(&name.to_ascii_lowercase())
        })
        .collect();
    if kept.len() == text.lines().count() {
        return Ok(());
    }
    write_atomic(&path, &(kept.join("\n") + "\n"))
}

/// PostgreSQL's recovery settings (those `recovery.conf` held before 12).
fn is_recovery_setting(k: &str) -> bool {
    is_recovery_param(k)
        || matches!(
            k,
            "restore_command"
                | "archive_cleanup_command"
                | "recovery_end_command"
                | "recovery_min_apply_delay"
                | "promote_trigger_file"
                | "standby_mode"
        )
}

fn is_recovery_param(k: &str) -> bool {
    k == "primary_conninfo" || k == "primary_slot_name" || k.starts_with("recovery_target")
}

fn is_ours(conf: &Path) -> bool {
    std::fs::read_to_string(conf)
        .map(|s| s.contains("It will be overwritten by Patrol!"))
        .unwrap_or(false)
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("patrol-tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Appends lines to pg_hba.conf (bootstrap.pg_hba after initdb, as Patroni does).
pub fn append_pg_hba(config_dir: &Path, lines: &[String]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(config_dir.join("pg_hba.conf"))?;
    for l in lines {
        writeln!(f, "{l}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_has_no_password_and_names_us() {
        let ci = primary_conninfo(
            "10.0.0.1",
            5432,
            "replicator",
            Path::new("/tmp/my pass"),
            "pg1",
            &Default::default(),
        );
        assert_eq!(
            ci,
            "user='replicator' passfile='/tmp/my pass' host='10.0.0.1' port=5432 sslmode='prefer' application_name='pg1' gssencmode=prefer channel_binding=prefer"
        );
    }

    /// The whitespace-separated `keyword=` words of a libpq connection string, outside quotes.
    fn keywords(ci: &str) -> Vec<String> {
        let mut out = Vec::new();
        let (mut quoted, mut escaped, mut word_start) = (false, false, true);
        for (i, c) in ci.char_indices() {
            if escaped {
                escaped = false;
            } else if quoted && c == '\\' {
                escaped = true;
            } else if c == '\'' {
                quoted = !quoted;
                word_start = false;
            } else if !quoted && c.is_whitespace() {
                word_start = true;
            } else if !quoted && word_start {
                word_start = false;
                out.push(ci[i..].split('=').next().unwrap_or("").to_string());
            }
        }
        out
    }

    #[test]
    fn libpq_values_cannot_add_keywords() {
        // A tab, a newline or a space ends an unquoted value: every value is quoted.
        assert_eq!(libpq_quote("a\tsslmode=disable"), "'a\tsslmode=disable'");
        assert_eq!(libpq_quote("a\nb"), "'a\nb'");
        assert_eq!(libpq_quote(""), "''");
        assert_eq!(libpq_quote(r"it's a\b"), r"'it\'s a\\b'");
        let mut extra = std::collections::BTreeMap::new();
        extra.insert(
            "sslrootcert".to_string(),
            "/ca\tsslmode=disable".to_string(),
        );
        let ci = primary_conninfo(
            "h\tservice=evil",
            5432,
            "u\x0bx user=postgres",
            Path::new("/p"),
            "pg1",
            &extra,
        );
        assert_eq!(
            keywords(&ci),
            [
                "user",
                "passfile",
                "host",
                "port",
                "sslmode",
                "sslrootcert",
                "application_name",
                "gssencmode",
                "channel_binding"
            ],
            "{ci}"
        );
    }

    #[test]
    fn conf_values_cannot_end_their_line() {
        let mut p = Map::new();
        p.insert(
            "application_name".into(),
            "x'\nshared_preload_libraries = 'evil".into(),
        );
        p.insert("search_path".into(), "a\r\tb\u{1}c\\".into());
        let f = ConfigFiles {
            parameters: p,
            pg_hba: None,
            pg_ident: None,
            recovery: Some(Recovery::standby(
                Some("host='a\nb'".into()),
                None,
                &Map::new(),
            )),
            keep_recovery: false,
        };
        let s = f.render_postgresql_conf(Path::new("/d"));
        assert!(
            s.contains("application_name = 'x''\\nshared_preload_libraries = ''evil'\n"),
            "{s}"
        );
        assert!(s.contains("search_path = 'a\\r\\tb\\001c\\\\'\n"), "{s}");
        assert!(s.contains("primary_conninfo = 'host=''a\\nb'''\n"), "{s}");
        assert!(!s.lines().any(|l| l.starts_with("shared_preload_libraries")));
    }

    #[test]
    fn conf_skips_cmdline_and_quotes() {
        let mut p = Map::new();
        p.insert("max_connections".into(), 5.into());
        p.insert("work_mem".into(), "4MB".into());
        p.insert("search_path".into(), "'$user', public".into());
        let f = ConfigFiles {
            parameters: p,
            pg_hba: None,
            pg_ident: None,
            recovery: Some(Recovery::standby(
                Some("host=a".into()),
                Some("pg1".into()),
                &Map::new(),
            )),
            keep_recovery: false,
        };
        let s = f.render_postgresql_conf(Path::new("/d"));
        assert!(!s.contains("max_connections"));
        assert!(s.contains("work_mem = '4MB'\n"));
        assert!(s.contains("search_path = '''$user'', public'\n"));
        assert!(s.contains("primary_conninfo = 'host=a'\n"));
        assert!(s.contains("primary_slot_name = 'pg1'\n"));
        assert!(s.contains("hba_file = '/d/pg_hba.conf'\n"));
    }

    #[test]
    fn a_standby_gets_recovery_conf_without_the_agent_s_own_settings() {
        let rc = map(&[
            ("restore_command", "cp /a/%f %p".into()),
            ("recovery_min_apply_delay", 0.into()),
            ("primary_conninfo", "host=evil".into()),
            ("recovery_target_time", "2020-01-01".into()),
            ("standby_mode", "on".into()),
        ]);
        let mut p = map(&[("restore_command", "cp /old/%f %p".into())]);
        p.insert("work_mem".into(), "4MB".into());
        let f = ConfigFiles {
            parameters: p,
            pg_hba: None,
            pg_ident: None,
            recovery: Some(Recovery::standby(Some("host=a".into()), None, &rc)),
            keep_recovery: false,
        };
        let s = f.render_postgresql_conf(Path::new("/d"));
        assert!(s.contains("restore_command = 'cp /a/%f %p'\n"), "{s}");
        assert!(!s.contains("/old/"), "{s}");
        assert!(s.contains("recovery_min_apply_delay = '0'\n"), "{s}");
        assert!(!s.contains("evil") && !s.contains("2020") && !s.contains("standby_mode"));
        assert!(s.contains("recovery_target_time = ''\n"), "{s}");

        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("postgresql.auto.conf"),
            "# Do not edit\nwork_mem = '8MB'\nrestore_command = 'pgbackrest archive-get %f \"%p\"'\nrecovery_target = 'immediate'\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("recovery.signal"), "").expect("write");
        f.write(dir.path(), dir.path()).expect("write");
        assert!(dir.path().join("standby.signal").exists());
        assert!(!dir.path().join("recovery.signal").exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).expect("read"),
            "# Do not edit\nwork_mem = '8MB'\n"
        );
    }

    #[test]
    fn a_custom_bootstrap_recovers_from_the_archive_then_promotes() {
        let rc = map(&[
            ("restore_command", "cp /a/%f %p".into()),
            ("recovery_target_action", "promote".into()),
            ("recovery_target_timeline", "latest".into()),
        ]);
        let f = ConfigFiles {
            parameters: Map::new(),
            pg_hba: None,
            pg_ident: None,
            recovery: Some(Recovery::archive(&rc)),
            keep_recovery: false,
        };
        let s = f.render_postgresql_conf(Path::new("/d"));
        assert!(s.contains("recovery_target_action = 'promote'\n"), "{s}");
        assert!(!s.contains("recovery_target = ''"), "{s}");
        assert!(!s.contains("primary_conninfo"), "{s}");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("standby.signal"), "").expect("write");
        f.write(dir.path(), dir.path()).expect("write");
        assert!(dir.path().join("recovery.signal").exists());
        assert!(!dir.path().join("standby.signal").exists());
        // Patroni's old spelling.
        let r = Recovery::archive(&map(&[("pause_at_recovery_target", false.into())]));
        assert_eq!(
            r.settings,
            vec![("recovery_target_action".to_string(), "promote".to_string())]
        );
        // keep_existing_recovery_conf: the tool's files stay.
        let keep = ConfigFiles {
            recovery: None,
            keep_recovery: true,
            ..f
        };
        keep.write(dir.path(), dir.path()).expect("write");
        assert!(dir.path().join("recovery.signal").exists());
        // A primary has neither.
        let primary = ConfigFiles {
            keep_recovery: false,
            ..keep
        };
        primary.write(dir.path(), dir.path()).expect("write");
        assert!(!dir.path().join("recovery.signal").exists());
    }

    fn map(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn wal_keep_segments_becomes_wal_keep_size_on_13_and_later() {
        let (p, w) = server_parameters(&map(&[("wal_keep_segments", 100.into())]), 15, None);
        assert_eq!(p.get("wal_keep_size"), Some(&Value::from("1600MB")));
        assert!(!p.contains_key("wal_keep_segments"));
        assert!(w.is_empty());
        // An explicit wal_keep_size wins.
        let (p, _) = server_parameters(
            &map(&[
                ("wal_keep_segments", 100.into()),
                ("wal_keep_size", "1GB".into()),
            ]),
            15,
            None,
        );
        assert_eq!(p.get("wal_keep_size"), Some(&Value::from("1GB")));
        // Neither: Patroni's default of 8 segments.
        let (p, _) = server_parameters(&Map::new(), 15, None);
        assert_eq!(p.get("wal_keep_size"), Some(&Value::from("128MB")));
    }

    #[test]
    fn wal_keep_size_becomes_segments_before_13() {
        let (p, _) = server_parameters(&map(&[("wal_keep_size", "1GB".into())]), 12, None);
        assert_eq!(p.get("wal_keep_segments"), Some(&Value::from(64)));
        assert!(!p.contains_key("wal_keep_size"));
        let (p, _) = server_parameters(&Map::new(), 12, None);
        assert_eq!(p.get("wal_keep_segments"), Some(&Value::from(8)));
    }

    #[test]
    fn unknown_and_malformed_parameters_are_removed_with_a_warning() {
        let available = specs(&["work_mem", "wal_keep_size"]);
        let (p, w) = server_parameters(
            &map(&[
                ("work_mem", "4MB".into()),
                ("Work_Mem2", "1".into()),
                ("pg_stat_statements.max", 100.into()),
                ("evil\nshared_preload_libraries", "x".into()),
                ("wal_level", "hot_standby".into()),
            ]),
            15,
            Some(&available),
        );
        assert!(p.contains_key("work_mem"));
        assert!(p.contains_key("pg_stat_statements.max"));
        assert!(!p.contains_key("Work_Mem2"));
        assert_eq!(p.get("wal_level"), Some(&Value::from("replica")));
        assert_eq!(p.len(), 4, "{p:?}");
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w.iter().any(|w| w.contains("Work_Mem2")), "{w:?}");
        // A value cannot add lines to the agent's log either.
        let (_, w) = server_parameters(
            &map(&[("nope", "x\n2026-01-01 00:00:00,000 INFO: forged".into())]),
            15,
            Some(&available),
        );
        assert_eq!(
            w,
            [
                r#"removing parameter nope="x\n2026-01-01 00:00:00,000 INFO: forged": PostgreSQL 15 does not know it"#
            ]
        );
    }

    #[test]
    fn settable_parameters_describe_config_leaves_out_are_kept() {
        let available = specs(&["work_mem", "wal_keep_size"]);
        let (p, w) = server_parameters(
            &map(&[
                ("application_name", "x".into()),
                ("jit_expressions", "on".into()),
                ("block_size", "8192".into()),
            ]),
            15,
            Some(&available),
        );
        assert!(p.contains_key("application_name"));
        assert!(p.contains_key("jit_expressions"));
        assert!(
            !p.contains_key("block_size"),
            "read-only: PostgreSQL would not start"
        );
        assert_eq!(w.len(), 1, "{w:?}");
    }

    fn specs(names: &[&str]) -> HashMap<String, GucSpec> {
        names
            .iter()
            .map(|n| {
                let spec = GucSpec {
                    vartype: super::super::gucs::VarType::Integer,
                    context: "user".into(),
                    min: Some(64.0),
                    max: None,
                };
                (n.to_string(), spec)
            })
            .collect()
    }

    #[test]
    fn values_postgresql_would_refuse_are_removed_with_a_warning() {
        let available = specs(&["work_mem", "shared_buffers", "wal_keep_size"]);
        let (p, w) = server_parameters(
            &map(&[
                ("work_mem", "8MB".into()),
                ("shared_buffers", "lots".into()),
            ]),
            15,
            Some(&available),
        );
        assert!(p.contains_key("work_mem"));
        assert!(!p.contains_key("shared_buffers"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("shared_buffers=\"lots\""), "{w:?}");
    }

    #[test]
    fn guc_names() {
        for ok in ["work_mem", "pg_stat_statements.max", "_x$1", "a.b.c"] {
            assert!(is_valid_guc_name(ok), "{ok}");
        }
        for bad in ["", "1abc", "a b", "a\nb", "a=b", "a.", ".a", "a'b"] {
            assert!(!is_valid_guc_name(bad), "{bad}");
        }
    }
}
