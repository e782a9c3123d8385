//! The typed walk over the merged document: builds [`Config`] from a `serde_json` mapping,
//! validating as it goes and collecting warnings for keys it does not know.
//!
//! Every error names the dotted key it is about. Nothing here panics on any input: every access
//! goes through the small accessors below, which turn a wrong type into `ConfigError::Invalid`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Map, Value};

use super::env::{parse_bool, PG_AUTH_PARAMETERS, PG_TOOLS};
use super::error::ConfigError;
use super::source::describe;
use super::{
    Authentication, Bootstrap, Config, Credentials, Ctl, Etcd, HostPort, PgUser, Postgresql,
    RestApi, Watchdog, WatchdogDriver, WatchdogMode,
};

type Result<T> = std::result::Result<T, ConfigError>;

/// Top-level DCS sections Patroni knows. Patrol talks to etcd v3 only.
pub(crate) const OTHER_DCS: &[&str] = &["consul", "zookeeper", "exhibitor", "kubernetes", "raft"];

/// Dynamic-configuration keys: Patroni ignores them in the local file (spec 4.1 point 3).
pub(crate) const DYNAMIC_ONLY: &[&str] = &[
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "maximum_lag_on_syncnode",
    "max_timelines_history",
    "primary_start_timeout",
    "primary_stop_timeout",
    "master_start_timeout",
    "master_stop_timeout",
    "synchronous_mode",
    "synchronous_mode_strict",
    "synchronous_node_count",
    "failsafe_mode",
    "check_timeline",
    "pause",
    "member_slots_ttl",
    "slots",
    "permanent_slots",
    "permanent_replication_slots",
    "ignore_slots",
    "standby_cluster",
];

/// PostgreSQL parameters Patroni always sets on the command line; ignored in the local
/// `postgresql.parameters` (Patroni's `ConfigHandler.CMDLINE_OPTIONS`, spec 4.3).
pub(crate) const CMDLINE_PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "cluster_name",
    "wal_level",
    "hot_standby",
    "max_connections",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
    "track_commit_timestamp",
    "max_replication_slots",
    "max_worker_processes",
    "wal_log_hints",
];

/// Top-level sections and keys of the local configuration (besides [`OTHER_DCS`] and the
/// dynamic-only keys).
pub(crate) const TOP_LEVEL_KEYS: &[&str] = &[
    "name",
    "scope",
    "namespace",
    "thread_pool_size",
    "thread_stack_size",
    "log",
    "restapi",
    "ctl",
    "bootstrap",
    "etcd",
    "etcd3",
    "citus",
    "postgresql",
    "watchdog",
    "tags",
];
/// `log` (Patroni's; read by `log::parse_log`).
pub(crate) const LOG_KEYS: &[&str] = &[
    "type",
    "level",
    "traceback_level",
    "format",
    "dateformat",
    "static_fields",
    "max_queue_size",
    "dir",
    "mode",
    "file_num",
    "file_size",
    "loggers",
    "deduplicate_heartbeat_logs",
];
/// `restapi`.
pub(crate) const RESTAPI_KEYS: &[&str] = &[
    "listen",
    "connect_address",
    "authentication",
    "certfile",
    "keyfile",
    "keyfile_password",
    "cafile",
    "ciphers",
    "verify_client",
    "allowlist",
    "allowlist_include_members",
    "http_extra_headers",
    "https_extra_headers",
    "request_queue_size",
    "server_tokens",
    "thread_pool_size",
];
/// `restapi.authentication`, `ctl.authentication`.
pub(crate) const CREDENTIALS: &[&str] = &["username", "password"];
/// `ctl` (read by patrolctl).
pub(crate) const CTL_KEYS: &[&str] = &[
    "authentication",
    "insecure",
    "cacert",
    "certfile",
    "keyfile",
    "keyfile_password",
];
/// `etcd3` (and `etcd`).
pub(crate) const ETCD_KEYS: &[&str] = &[
    "host",
    "hosts",
    "port",
    "url",
    "proxy",
    "srv",
    "srv_suffix",
    "protocol",
    "username",
    "password",
    "cacert",
    "cert",
    "key",
    "key_password",
    "use_proxies",
    "retry_timeout",
    "ttl",
    "loop_wait",
    "verify",
];
/// `bootstrap`, besides the section of a custom method.
pub(crate) const BOOTSTRAP_KEYS: &[&str] = &[
    "dcs",
    "method",
    "initdb",
    "pg_hba",
    "post_bootstrap",
    "post_init",
    "users",
];
/// `postgresql`, besides the sections of `create_replica_methods`.
pub(crate) const POSTGRESQL_KEYS: &[&str] = &[
    "listen",
    "connect_address",
    "proxy_address",
    "data_dir",
    "config_dir",
    "bin_dir",
    "bin_name",
    "pgpass",
    "database",
    "authentication",
    "parameters",
    "pg_hba",
    "pg_ident",
    "callbacks",
    "create_replica_methods",
    "create_replica_method",
    "basebackup",
    "recovery_conf",
    "custom_conf",
    "use_unix_socket",
    "use_unix_socket_repl",
    "pg_ctl_timeout",
    "use_pg_rewind",
    "remove_data_directory_on_rewind_failure",
    "remove_data_directory_on_diverged_timelines",
    "pre_promote",
    "before_stop",
    "config_base_name",
    "use_slots",
    "name",
    "superuser",
    "replication",
    "pg_rewind",
    "retry_timeout",
];
/// `postgresql.authentication`.
pub(crate) const PG_USERS: &[&str] = &["superuser", "replication", "rewind"];
/// `postgresql.callbacks`.
pub(crate) const CALLBACKS: &[&str] = &[
    "on_start",
    "on_stop",
    "on_restart",
    "on_reload",
    "on_role_change",
];
/// `watchdog`.
pub(crate) const WATCHDOG_KEYS: &[&str] = &["mode", "device", "safety_margin", "driver"];
/// The keys Patroni documents for the dynamic `postgresql` section (`bootstrap.dcs.postgresql`).
#[cfg(test)]
const DYNAMIC_POSTGRESQL_KEYS: &[&str] = &[
    "use_pg_rewind",
    "use_slots",
    "parameters",
    "recovery_conf",
    "pg_hba",
    "pg_ident",
];

/// Every key this parser knows, as dotted paths: (local configuration, dynamic configuration).
/// For the test that keeps `docs/patroni-compatibility.md` complete.
#[cfg(test)]
pub(crate) fn known_keys() -> (Vec<String>, Vec<String>) {
    let under = |prefix: &str, keys: &[&str]| -> Vec<String> {
        keys.iter().map(|k| join(prefix, k)).collect()
    };
    let mut local = Vec::new();
    for (prefix, keys) in [
        ("", TOP_LEVEL_KEYS),
        ("", OTHER_DCS),
        ("log", LOG_KEYS),
        ("restapi", RESTAPI_KEYS),
        ("restapi.authentication", CREDENTIALS),
        ("ctl", CTL_KEYS),
        ("ctl.authentication", CREDENTIALS),
        ("etcd3", ETCD_KEYS),
        ("bootstrap", BOOTSTRAP_KEYS),
        ("postgresql", POSTGRESQL_KEYS),
        ("postgresql.authentication", PG_USERS),
        ("postgresql.bin_name", PG_TOOLS),
        ("postgresql.callbacks", CALLBACKS),
        ("watchdog", WATCHDOG_KEYS),
    ] {
        local.extend(under(prefix, keys));
    }
    for user in PG_USERS {
        local.extend(under(
            &format!("postgresql.authentication.{user}"),
            PG_AUTH_PARAMETERS,
        ));
    }
    let mut dynamic = under("", DYNAMIC_ONLY);
    dynamic.extend(under("postgresql", DYNAMIC_POSTGRESQL_KEYS));
    (local, dynamic)
}

/// Values PyYAML (YAML 1.1) reads as booleans when unquoted, while serde_yaml_ng (YAML 1.2)
/// keeps them as strings. Used to normalise booleans Patroni would have seen as `True`/`False`.
fn yaml11_bool(s: &str) -> Option<bool> {
    match s {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Present and not null.
pub(crate) fn get<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

pub(crate) fn wrong_type(key: String, expected: &str, found: &Value) -> ConfigError {
    ConfigError::invalid(
        key,
        format!("expected {expected}, found {}", describe(found)),
    )
}

fn opt_map<'a>(
    map: &'a Map<String, Value>,
    path: &str,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>> {
    match get(map, key) {
        None => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(wrong_type(join(path, key), "a mapping", other)),
    }
}

/// A string setting; numbers are accepted and written out (YAML `password: 1234`).
/// An empty string counts as unset.
fn opt_str(map: &Map<String, Value>, path: &str, key: &str) -> Result<Option<String>> {
    match get(map, key) {
        None => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(wrong_type(join(path, key), "a string", other)),
    }
}

fn req_str(map: &Map<String, Value>, path: &str, key: &str) -> Result<String> {
    opt_str(map, path, key)?.ok_or_else(|| ConfigError::missing(join(path, key)))
}

/// Only a YAML string (for addresses, where a number is surely a mistake).
fn opt_strict_str(map: &Map<String, Value>, path: &str, key: &str) -> Result<Option<String>> {
    match get(map, key) {
        None => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_string())),
        Some(other) => Err(wrong_type(join(path, key), "a string", other)),
    }
}

fn opt_path(map: &Map<String, Value>, path: &str, key: &str) -> Result<Option<PathBuf>> {
    Ok(opt_str(map, path, key)?.map(PathBuf::from))
}

/// Bool-ish: a boolean, one of on/true/yes/1/off/false/no/0 (any case), or the integers 0/1.
pub(crate) fn value_as_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(s) => parse_bool(s),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        _ => None,
    }
}

fn opt_bool(map: &Map<String, Value>, path: &str, key: &str) -> Result<Option<bool>> {
    match get(map, key) {
        None => Ok(None),
        Some(v) => value_as_bool(v)
            .map(Some)
            .ok_or_else(|| wrong_type(join(path, key), "a boolean (true/false)", v)),
    }
}

/// A non-negative integer, also from a string of digits (environment variables are strings).
fn opt_uint(map: &Map<String, Value>, path: &str, key: &str) -> Result<Option<u64>> {
    match get(map, key) {
        None => Ok(None),
        Some(v) => value_as_uint(v)
            .map(Some)
            .ok_or_else(|| wrong_type(join(path, key), "a non-negative integer", v)),
    }
}

fn value_as_uint(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn value_as_int(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A list of strings (numbers accepted and written out).
fn str_list(value: &Value, key: &str) -> Result<Vec<String>> {
    let Value::Array(items) = value else {
        return Err(wrong_type(key.to_string(), "a list", value));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            Value::Number(n) => Ok(n.to_string()),
            other => Err(ConfigError::invalid(
                key,
                format!(
                    "item {}: expected a string, found {}",
                    i + 1,
                    describe(other)
                ),
            )),
        })
        .collect()
}

/// `restapi.allowlist`: each entry a network (`10.0.0.0/8`), an address or a host name. An
/// entry that is none of these is an error: dropping it would widen the allowlist, and
/// dropping them all would remove the check.
fn allowlist(r: &Map<String, Value>) -> Result<Vec<String>> {
    let entries = opt_str_list(r, "restapi", "allowlist")?.unwrap_or_default();
    for (i, entry) in entries.iter().enumerate() {
        let e = entry.trim();
        let ok = if e.contains('/') {
            e.parse::<ipnet::IpNet>().is_ok()
        } else {
            e.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok()
                || is_host_name(e)
        };
        if !ok {
            return Err(ConfigError::invalid(
                format!("restapi.allowlist[{i}]"),
                format!("{entry:?} is not a network (10.0.0.0/8), an address or a host name"),
            ));
        }
    }
    Ok(entries)
}

/// A host name: dot-separated labels of letters, digits, hyphens and underscores (container
/// and service names use them; Patroni's resolver accepts them), not starting or ending with a
/// hyphen.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn opt_str_list(map: &Map<String, Value>, path: &str, key: &str) -> Result<Option<Vec<String>>> {
    match get(map, key) {
        None => Ok(None),
        Some(v) => str_list(v, &join(path, key)).map(Some),
    }
}

/// A mapping whose values are strings.
fn str_map(map: &Map<String, Value>, path: &str, key: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    if let Some(m) = opt_map(map, path, key)? {
        let sub = join(path, key);
        for k in m.keys() {
            if let Some(v) = opt_str(m, &sub, k)? {
                out.insert(k.clone(), v);
            }
        }
    }
    Ok(out)
}

pub(crate) fn warn_unknown(
    map: &Map<String, Value>,
    path: &str,
    known: &[&str],
    extra_known: &[String],
    warnings: &mut Vec<String>,
) {
    for key in map.keys() {
        if !known.contains(&key.as_str()) && !extra_known.iter().any(|k| k == key) {
            warnings.push(format!(
                "unknown configuration key {} ignored",
                join(path, key)
            ));
        }
    }
}

/// Patroni's `unquote`: strip one layer of matching quotes around a single token.
fn unquote(s: &str) -> String {
    for q in ['\'', '"'] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) && !s[1..s.len() - 1].contains(q) {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

fn scalar_option_value(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(unquote(s)),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// How a disallowed option is treated: initdb refuses to start (Patroni raises), pg_basebackup
/// logs and skips it.
#[derive(Clone, Copy, PartialEq)]
enum Disallowed {
    Reject,
    Skip,
}

/// Patroni's `process_user_options`: a list of `flag` / `{opt: value}` or a mapping `{opt: value}`
/// becomes `--flag` / `--opt=value`.
fn format_options(
    value: Option<&Value>,
    key: &str,
    tool: &str,
    not_allowed: &[&str],
    disallowed: Disallowed,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let allowed = |name: &str, warnings: &mut Vec<String>| -> Result<bool> {
        if !not_allowed.contains(&name) {
            return Ok(true);
        }
        let msg = format!("option '{name}' is not allowed for {tool} (Patrol sets it itself)");
        match disallowed {
            Disallowed::Reject => Err(ConfigError::invalid(key, msg)),
            Disallowed::Skip => {
                warnings.push(format!("{key}: {msg}; ignored"));
                Ok(false)
            }
        }
    };
    let pair = |name: &str, v: &Value, what: &str| -> Result<Option<String>> {
        match v {
            Value::Bool(true) => Ok(Some(format!("--{name}"))),
            Value::Bool(false) | Value::Null => Ok(None),
            other => match scalar_option_value(other) {
                Some(s) => Ok(Some(format!("--{name}={s}"))),
                None => Err(ConfigError::invalid(
                    key,
                    format!(
                        "{what}: the value of '{name}' must be a string, found {}",
                        describe(other)
                    ),
                )),
            },
        }
    };
    match value {
        None => {}
        Some(Value::Object(m)) => {
            for (name, v) in m {
                if name.is_empty() || (v.is_string() && v.as_str() == Some("")) {
                    continue;
                }
                if allowed(name, warnings)? {
                    out.extend(pair(name, v, "option")?);
                }
            }
        }
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let what = format!("item {}", i + 1);
                match item {
                    Value::String(flag) if !flag.is_empty() => {
                        if allowed(flag, warnings)? {
                            out.push(format!("--{flag}"));
                        }
                    }
                    Value::Object(m) if m.len() == 1 => {
                        if let Some((name, v)) = m.iter().next() {
                            if allowed(name, warnings)? {
                                out.extend(pair(name, v, &what)?);
                            }
                        }
                    }
                    other => {
                        return Err(ConfigError::invalid(
                            key,
                            format!(
                                "{what}: expected an option name or a single `option: value` pair, found {}",
                                describe(other)
                            ),
                        ))
                    }
                }
            }
        }
        Some(other) => return Err(wrong_type(key.to_string(), "a list or a mapping", other)),
    }
    Ok(out)
}

/// Normalise a namespace to `/name` form: `/service/`, `service` and `service/` all give
/// `/service`; empty or `/` gives `/` (keys then live directly under `/<scope>`).
pub(crate) fn normalise_namespace(ns: &str) -> String {
    let parts: Vec<&str> = ns.split('/').filter(|p| !p.is_empty()).collect();
    format!("/{}", parts.join("/"))
}

/// `host:port` with a default port when no `:` is present (Patroni's `split_host_port`). The host
/// part may be a comma-separated list (`a,b:5432`, for `postgresql.listen`); each host loses
/// its IPv6 brackets.
fn split_host_port(
    value: &str,
    default_port: Option<u16>,
) -> std::result::Result<(String, u16), String> {
    let value = value.trim();
    let not_host_port = || format!("'{value}' is not host:port");
    let (host, port) = match value.rsplit_once(':') {
        Some((h, p)) if !value.ends_with(']') => (h, Some(p)),
        _ => (value, None),
    };
    let port = match (port, default_port) {
        (Some(p), _) => {
            let n: u64 = p.trim().parse().map_err(|_| not_host_port())?;
            if !(1..=65535).contains(&n) {
                return Err(format!("port {n} in '{value}' is out of range 1..65535"));
            }
            n as u16
        }
        (None, Some(d)) => d,
        (None, None) => return Err(not_host_port()),
    };
    let hosts: Vec<&str> = host
        .split(',')
        .map(|h| {
            let h = h.trim();
            h.strip_prefix('[')
                .and_then(|x| x.strip_suffix(']'))
                .unwrap_or(h)
        })
        .collect();
    if hosts
        .iter()
        .any(|h| h.contains(['[', ']']) || h.contains(char::is_whitespace))
    {
        return Err(not_host_port());
    }
    Ok((hosts.join(","), port))
}

impl std::str::FromStr for HostPort {
    type Err = String;

    /// `host:port`, `[v6]:port`; the port must be in 1..65535. The host may be empty (`:8008`,
    /// all interfaces) but must not be a list.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (host, port) = split_host_port(s, None)?;
        if host.contains(',') {
            return Err(format!("'{}' is not host:port", s.trim()));
        }
        Ok(HostPort { host, port })
    }
}

fn host_port(map: &Map<String, Value>, path: &str, key: &str) -> Result<Option<HostPort>> {
    match opt_strict_str(map, path, key)? {
        None => Ok(None),
        Some(s) => s
            .parse::<HostPort>()
            .map(Some)
            .map_err(|m| ConfigError::invalid(join(path, key), m)),
    }
}

fn is_wildcard(host: &str) -> bool {
    matches!(host.trim(), "" | "*" | "0.0.0.0" | "::" | "[::]")
}

fn credentials(
    map: &Map<String, Value>,
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<Credentials>> {
    let Some(auth) = opt_map(map, path, "authentication")? else {
        return Ok(None);
    };
    let sub = join(path, "authentication");
    warn_unknown(auth, &sub, CREDENTIALS, &[], warnings);
    Ok(Some(Credentials {
        username: req_str(auth, &sub, "username")?,
        password: req_str(auth, &sub, "password")?,
    }))
}

pub(crate) fn build(doc: &Map<String, Value>, home: &str) -> Result<(Config, Vec<String>)> {
    let mut w = Vec::new();

    for key in doc.keys() {
        let k = key.as_str();
        if DYNAMIC_ONLY.contains(&k) {
            w.push(format!(
                "{k} is a dynamic configuration setting: set it in bootstrap.dcs or with `patrolctl edit-config`; the local value is ignored"
            ));
        } else if !TOP_LEVEL_KEYS.contains(&k) && !OTHER_DCS.contains(&k) {
            w.push(format!("unknown configuration key {k} ignored"));
        }
    }

    // Patroni also accepts the member name under postgresql.name (very old configs).
    let name = match opt_str(doc, "", "name")? {
        Some(n) => n,
        None => match opt_map(doc, "", "postgresql")?.map(|pg| opt_str(pg, "postgresql", "name")) {
            Some(Ok(Some(n))) => n,
            Some(Err(e)) => return Err(e),
            _ => return Err(ConfigError::missing("name")),
        },
    };
    let scope = req_str(doc, "", "scope")?;
    // An empty namespace is the root (Patroni joins it as is), unlike other empty strings.
    let namespace = match get(doc, "namespace") {
        None => "/service".to_string(),
        Some(Value::String(s)) => normalise_namespace(s),
        Some(_) => normalise_namespace(&req_str(doc, "", "namespace")?),
    };

    let restapi = parse_restapi(doc, &mut w)?;
    let ctl = parse_ctl(doc, &mut w)?;
    let etcd = parse_dcs(doc, &mut w)?;
    let bootstrap = parse_bootstrap(doc, &mut w)?;
    let postgresql = parse_postgresql(doc, home, &mut w)?;
    let tags = parse_tags(doc, &mut w)?;

    let watchdog = parse_watchdog(doc, &mut w)?;
    let log = super::log::parse_log(doc, &mut w)?;

    let config = Config {
        name,
        scope,
        namespace,
        restapi,
        ctl,
        etcd,
        bootstrap,
        postgresql,
        tags,
        watchdog,
        log,
        raw: Value::Object(doc.clone()),
        allow_unsupported: false,
    };
    Ok((config, w))
}

/// The `watchdog` section, read as Patroni's `WatchdogConfig`: a mode it does not know is
/// `off` with a warning, an unknown driver means no watchdog can be used.
fn parse_watchdog(doc: &Map<String, Value>, w: &mut Vec<String>) -> Result<Watchdog> {
    const P: &str = "watchdog";
    let mut wd = Watchdog::default();
    // Patroni reads a null or empty section as `{mode: automatic}`.
    let Some(section) = opt_map(doc, "", P)? else {
        return Ok(wd);
    };
    warn_unknown(section, P, WATCHDOG_KEYS, &[], w);
    if let Some(mode) = get(section, "mode") {
        wd.mode = WatchdogMode::parse(mode).unwrap_or_else(|| {
            w.push(format!(
                "watchdog.mode {} is not recognized: the watchdog is off (as in Patroni)",
                describe(mode)
            ));
            WatchdogMode::Off
        });
    }
    if let Some(device) = opt_path(section, P, "device")? {
        wd.device = device;
    }
    if let Some(v) = get(section, "safety_margin") {
        wd.safety_margin = value_as_int(v).filter(|m| *m >= -1).ok_or_else(|| {
            ConfigError::invalid(
                "watchdog.safety_margin",
                format!(
                    "expected an integer of at least -1 (seconds; -1: half the ttl), found {}",
                    describe(v)
                ),
            )
        })?;
    }
    if let Some(driver) = opt_str(section, P, "driver")? {
        wd.driver = match driver.as_str() {
            "default" => WatchdogDriver::Default,
            "testing" => WatchdogDriver::Testing,
            other => {
                w.push(format!(
                    "watchdog.driver {other:?} is not known (default, testing): no watchdog can be used"
                ));
                WatchdogDriver::Unknown
            }
        };
    }
    if wd.mode == WatchdogMode::Required && wd.driver == WatchdogDriver::Unknown {
        // Patroni exits: "Configuration requires a watchdog, but watchdog is not supported".
        return Err(ConfigError::invalid(
            "watchdog.driver",
            "watchdog.mode is required, but this driver gives no watchdog (use default or testing)",
        ));
    }
    Ok(wd)
}

fn parse_restapi(doc: &Map<String, Value>, w: &mut Vec<String>) -> Result<RestApi> {
    const P: &str = "restapi";
    let empty = Map::new();
    let r = opt_map(doc, "", P)?.unwrap_or(&empty);
    warn_unknown(r, P, RESTAPI_KEYS, &[], w);
    let listen =
        host_port(r, P, "listen")?.ok_or_else(|| ConfigError::missing("restapi.listen"))?;
    let connect_address = match host_port(r, P, "connect_address")? {
        Some(c) => c,
        None => {
            if is_wildcard(&listen.host) {
                w.push(format!(
                    "restapi.connect_address is not set and restapi.listen ({listen}) is a wildcard address: other members and patrolctl cannot reach this REST API; set restapi.connect_address"
                ));
            }
            listen.clone()
        }
    };
    let verify_client = opt_str(r, P, "verify_client")?;
    if let Some(v) = &verify_client {
        if !matches!(v.as_str(), "none" | "optional" | "required") {
            return Err(ConfigError::invalid(
                "restapi.verify_client",
                format!("'{v}' is not one of none, optional, required"),
            ));
        }
    }
    let headers = |key: &str| -> Result<Map<String, Value>> {
        Ok(opt_map(r, P, key)?.cloned().unwrap_or_default())
    };
    Ok(RestApi {
        listen,
        connect_address,
        authentication: credentials(r, P, w)?,
        certfile: opt_path(r, P, "certfile")?,
        keyfile: opt_path(r, P, "keyfile")?,
        keyfile_password: opt_str(r, P, "keyfile_password")?,
        cafile: opt_path(r, P, "cafile")?,
        ciphers: opt_str(r, P, "ciphers")?,
        verify_client,
        allowlist: allowlist(r)?,
        allowlist_include_members: opt_bool(r, P, "allowlist_include_members")?.unwrap_or(false),
        http_extra_headers: headers("http_extra_headers")?,
        https_extra_headers: headers("https_extra_headers")?,
        request_queue_size: opt_uint(r, P, "request_queue_size")?.unwrap_or(5),
        server_tokens: opt_str(r, P, "server_tokens")?,
    })
}

fn parse_ctl(doc: &Map<String, Value>, w: &mut Vec<String>) -> Result<Ctl> {
    const P: &str = "ctl";
    let empty = Map::new();
    let c = opt_map(doc, "", P)?.unwrap_or(&empty);
    warn_unknown(c, P, CTL_KEYS, &[], w);
    Ok(Ctl {
        authentication: credentials(c, P, w)?,
        insecure: opt_bool(c, P, "insecure")?.unwrap_or(false),
        cacert: opt_path(c, P, "cacert")?,
        certfile: opt_path(c, P, "certfile")?,
        keyfile: opt_path(c, P, "keyfile")?,
        keyfile_password: opt_str(c, P, "keyfile_password")?,
    })
}

pub(crate) fn parse_dcs(doc: &Map<String, Value>, w: &mut Vec<String>) -> Result<Etcd> {
    let has = |k: &str| doc.contains_key(k);
    let others: Vec<&str> = OTHER_DCS.iter().copied().filter(|k| has(k)).collect();
    let section = if has("etcd3") {
        if has("etcd") {
            w.push(
                "both etcd and etcd3 sections are present: Patrol uses etcd3 and ignores etcd"
                    .to_string(),
            );
        }
        "etcd3"
    } else if has("etcd") {
        w.push(
            "the etcd (v2) section is used as if it were etcd3: Patrol speaks the etcd v3 API only, so the cluster keys live in the etcd v3 keyspace (Patroni nodes using the etcd v2 API will not see them); rename the section to etcd3".to_string(),
        );
        "etcd"
    } else if let Some(first) = others.first() {
        return Err(ConfigError::invalid(
            *first,
            format!("Patrol supports only etcd (v3 API) as DCS, not {first}: replace the {first} section with an etcd3 section with host/hosts/url"),
        ));
    } else {
        return Err(ConfigError::invalid(
            "etcd3",
            "no DCS configured: add an etcd3 section with host/hosts/url",
        ));
    };
    for other in others {
        w.push(format!(
            "the {other} section is ignored: Patrol supports only etcd3 as DCS"
        ));
    }
    let empty = Map::new();
    let e = opt_map(doc, "", section)?.unwrap_or(&empty);
    parse_etcd(e, section, w)
}

fn parse_etcd(e: &Map<String, Value>, p: &str, w: &mut Vec<String>) -> Result<Etcd> {
    warn_unknown(e, p, ETCD_KEYS, &[], w);
    let protocol = opt_str(e, p, "protocol")?.unwrap_or_else(|| "http".to_string());
    if protocol != "http" && protocol != "https" {
        return Err(ConfigError::invalid(
            join(p, "protocol"),
            format!("'{protocol}' is not http or https"),
        ));
    }
    let default_port = match get(e, "port") {
        None => 2379,
        Some(v) => match value_as_uint(v) {
            Some(n @ 1..=65535) => n as u16,
            _ => {
                return Err(ConfigError::invalid(
                    join(p, "port"),
                    format!("expected a port number 1..65535, found {}", describe(v)),
                ))
            }
        },
    };
    let endpoint = |host_port: &str, key: &str| -> Result<String> {
        let (host, port) = split_host_port(host_port, Some(default_port))
            .map_err(|m| ConfigError::invalid(join(p, key), m))?;
        if host.is_empty() || host.contains(',') {
            return Err(ConfigError::invalid(
                join(p, key),
                format!("'{}' is not host:port", host_port.trim()),
            ));
        }
        Ok(format!("{protocol}://{}", HostPort { host, port }))
    };

    let mut username = opt_str(e, p, "username")?;
    let mut password = opt_str(e, p, "password")?;
    let mut endpoints = Vec::new();
    let url_key = if get(e, "proxy").is_some() {
        "proxy"
    } else {
        "url"
    };
    if let Some(url) = opt_strict_str(e, p, url_key)? {
        if url_key == "proxy" {
            w.push(format!("{p}.proxy is used as a plain etcd endpoint"));
        }
        let (endpoint, user, pass) =
            parse_url(&url).map_err(|m| ConfigError::invalid(join(p, url_key), m))?;
        endpoints.push(endpoint);
        username = username.or(user);
        password = password.or(pass);
    } else if let Some(hosts) = get(e, "hosts") {
        let key = join(p, "hosts");
        let items: Vec<String> = match hosts {
            Value::String(s) => s.split(',').map(str::to_string).collect(),
            other => str_list(other, &key)?,
        };
        for item in items.iter().filter(|i| !i.trim().is_empty()) {
            endpoints.push(endpoint(item, "hosts")?);
        }
        if endpoints.is_empty() {
            return Err(ConfigError::invalid(key, "the list of hosts is empty"));
        }
    } else if let Some(host) = opt_strict_str(e, p, "host")? {
        let ep = endpoint(&host, "host")?;
        // An explicit `port` overrides the one in `host` (Patroni).
        let ep = match get(e, "port") {
            Some(_) => {
                let (h, _) = split_host_port(&host, Some(default_port))
                    .map_err(|m| ConfigError::invalid(join(p, "host"), m))?;
                format!(
                    "{protocol}://{}",
                    HostPort {
                        host: h,
                        port: default_port
                    }
                )
            }
            None => ep,
        };
        endpoints.push(ep);
    } else if get(e, "srv").is_some() {
        return Err(ConfigError::invalid(
            join(p, "srv"),
            "DNS SRV discovery is not supported by Patrol; list the endpoints with host, hosts or url",
        ));
    } else {
        return Err(ConfigError::invalid(
            p,
            "no etcd endpoints: set host, hosts or url",
        ));
    }
    Ok(Etcd {
        endpoints,
        username,
        password,
        cacert: opt_path(e, p, "cacert")?,
        cert: opt_path(e, p, "cert")?,
        key: opt_path(e, p, "key")?,
    })
}

/// `scheme://[user[:password]@]host[:port][/path]` -> (`scheme://host:port`, user, password).
fn parse_url(url: &str) -> std::result::Result<(String, Option<String>, Option<String>), String> {
    let bad = || format!("'{url}' is not a URL like http://host:2379");
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(format!("'{url}': the scheme must be http or https"));
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, pass) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((a, b)) => (Some(a.to_string()), Some(b.to_string())),
            None => (Some(u.to_string()), None),
        },
    };
    let (host, port) = split_host_port(hostport, Some(2379)).map_err(|_| bad())?;
    if host.is_empty() || host.contains(',') {
        return Err(bad());
    }
    Ok((
        format!("{scheme}://{}", HostPort { host, port }),
        user.filter(|s| !s.is_empty()),
        pass.filter(|s| !s.is_empty()),
    ))
}

const DCS_INT_KEYS: &[&str] = &[
    "ttl",
    "loop_wait",
    "retry_timeout",
    "maximum_lag_on_failover",
    "maximum_lag_on_syncnode",
    "max_timelines_history",
    "primary_start_timeout",
    "primary_stop_timeout",
    "master_start_timeout",
    "master_stop_timeout",
    "synchronous_node_count",
];

const DCS_BOOL_KEYS: &[&str] = &[
    "synchronous_mode_strict",
    "failsafe_mode",
    "check_timeline",
    "pause",
];

/// Check a bool-ish dynamic setting and normalise YAML 1.1 words (`on`, `yes`...) to booleans
/// so that the DCS gets what Patroni would have written.
fn normalise_bool(
    map: &mut Map<String, Value>,
    path: &str,
    key: &str,
    extra_ok: &[&str],
) -> Result<()> {
    let Some(v) = map.get_mut(key) else {
        return Ok(());
    };
    match v {
        Value::Null | Value::Bool(_) => {}
        Value::String(s) if extra_ok.contains(&s.as_str()) => {}
        Value::String(s) => match (yaml11_bool(s), parse_bool(s)) {
            (Some(b), _) => *v = Value::Bool(b),
            (None, Some(_)) => {}
            (None, None) => {
                let expected = if extra_ok.is_empty() {
                    "a boolean".to_string()
                } else {
                    format!("a boolean or '{}'", extra_ok.join("', '"))
                };
                return Err(wrong_type(join(path, key), &expected, v));
            }
        },
        Value::Number(n) if matches!(n.as_i64(), Some(0 | 1)) => {}
        other => return Err(wrong_type(join(path, key), "a boolean", other)),
    }
    Ok(())
}

fn check_dcs(dcs: &mut Map<String, Value>) -> Result<()> {
    const P: &str = "bootstrap.dcs";
    for key in DCS_INT_KEYS {
        if let Some(v) = get(dcs, key) {
            if value_as_int(v).is_none() {
                return Err(wrong_type(join(P, key), "an integer", v));
            }
        }
    }
    for key in DCS_BOOL_KEYS {
        normalise_bool(dcs, P, key, &[])?;
    }
    normalise_bool(dcs, P, "synchronous_mode", &["quorum"])?;
    for key in [
        "standby_cluster",
        "slots",
        "permanent_slots",
        "permanent_replication_slots",
    ] {
        opt_map(dcs, P, key)?;
    }
    if let Some(v) = get(dcs, "ignore_slots") {
        if !v.is_array() {
            return Err(wrong_type(join(P, "ignore_slots"), "a list", v));
        }
    }
    if let Some(pg) = dcs.get_mut("postgresql") {
        let key = "bootstrap.dcs.postgresql";
        match pg {
            Value::Null => {}
            Value::Object(pg) => {
                normalise_bool(pg, key, "use_pg_rewind", &[])?;
                normalise_bool(pg, key, "use_slots", &[])?;
                opt_map(pg, key, "parameters")?;
                opt_map(pg, key, "recovery_conf")?;
                opt_str_list(pg, key, "pg_hba")?;
                opt_str_list(pg, key, "pg_ident")?;
            }
            other => return Err(wrong_type(key.to_string(), "a mapping", other)),
        }
    }
    // Ranges and bounds, as the HA loop checks the DCS `config` key this becomes.
    patrol_dcs::ClusterConfig::from_map(dcs.clone())
        .check()
        .map_err(|e| ConfigError::invalid(join(P, &e.key), e.problem))
}

fn parse_bootstrap(doc: &Map<String, Value>, w: &mut Vec<String>) -> Result<Bootstrap> {
    const P: &str = "bootstrap";
    let present = doc.contains_key(P);
    let empty = Map::new();
    let b = opt_map(doc, "", P)?.unwrap_or(&empty);

    let mut dcs = opt_map(b, P, "dcs")?.cloned().unwrap_or_default();
    check_dcs(&mut dcs)?;

    let configured = opt_str(b, P, "method")?.unwrap_or_else(|| "initdb".to_string());
    let mut method = configured.clone();
    let mut custom = None;
    if configured != "initdb" {
        match opt_map(b, P, &configured)? {
            Some(section) if get(section, "command").is_some() => {
                let path = join(P, &configured);
                custom = Some(
                    crate::CustomBootstrap::parse(&configured, section)
                        .map_err(|e| ConfigError::invalid(path, e))?,
                );
            }
            _ => {
                w.push(format!(
                    "bootstrap.method is '{configured}' but bootstrap.{configured}.command is not set: initdb will be used"
                ));
                method = "initdb".to_string();
            }
        }
    }
    if get(b, "users").is_some() {
        w.push("bootstrap.users was removed in Patroni 3.0 and is ignored; create users in post_bootstrap".to_string());
    }
    warn_unknown(b, P, BOOTSTRAP_KEYS, &[configured], w);

    let initdb = format_options(
        get(b, "initdb"),
        "bootstrap.initdb",
        "initdb",
        &["pgdata", "nosync", "pwfile", "sync-only", "version"],
        Disallowed::Reject,
        w,
    )?;
    let post_bootstrap = match opt_str(b, P, "post_bootstrap")? {
        Some(s) => Some(s),
        None => opt_str(b, P, "post_init")?,
    };
    Ok(Bootstrap {
        dcs,
        method,
        custom,
        initdb,
        pg_hba: opt_str_list(b, P, "pg_hba")?.unwrap_or_default(),
        post_bootstrap,
        present,
    })
}

fn parse_pg_user(
    auth: &Map<String, Value>,
    path: &str,
    user: &str,
    w: &mut Vec<String>,
) -> Result<Option<PgUser>> {
    let Some(u) = opt_map(auth, path, user)? else {
        return Ok(None);
    };
    let sub = join(path, user);
    warn_unknown(u, &sub, PG_AUTH_PARAMETERS, &[], w);
    let mut extra = BTreeMap::new();
    for key in PG_AUTH_PARAMETERS.iter().skip(2) {
        if let Some(v) = opt_str(u, &sub, key)? {
            extra.insert((*key).to_string(), v);
        }
    }
    Ok(Some(PgUser {
        username: req_str(u, &sub, "username")?,
        password: opt_str(u, &sub, "password")?,
        extra,
    }))
}

fn parse_postgresql(
    doc: &Map<String, Value>,
    home: &str,
    w: &mut Vec<String>,
) -> Result<Postgresql> {
    const P: &str = "postgresql";
    let pg = opt_map(doc, "", P)?.ok_or_else(|| ConfigError::missing(P))?;

    // Patroni reads the old singular name too.
    let create_replica_methods = match opt_str_list(pg, P, "create_replica_methods")? {
        Some(m) if !m.is_empty() => m,
        _ => opt_str_list(pg, P, "create_replica_method")?
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| vec!["basebackup".to_string()]),
    };
    warn_unknown(pg, P, POSTGRESQL_KEYS, &create_replica_methods, w);
    if get(pg, "use_slots").is_some() {
        w.push("postgresql.use_slots is a dynamic configuration setting: set it in bootstrap.dcs.postgresql; the local value is ignored".to_string());
    }

    let listen = opt_strict_str(pg, P, "listen")?
        .ok_or_else(|| ConfigError::missing("postgresql.listen"))?;
    let (listen_addresses, port) = split_host_port(&listen, Some(5432))
        .map_err(|m| ConfigError::invalid("postgresql.listen", m))?;

    let connect_address = match host_port(pg, P, "connect_address")? {
        Some(c) => c,
        None => {
            let first = listen_addresses
                .split(',')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            if is_wildcard(&first) {
                w.push(format!(
                    "postgresql.connect_address is not set and postgresql.listen ({listen}) starts with a wildcard address: using 127.0.0.1:{port}, which other members cannot reach; set postgresql.connect_address"
                ));
                HostPort {
                    host: "127.0.0.1".to_string(),
                    port,
                }
            } else {
                HostPort { host: first, port }
            }
        }
    };

    let data_dir =
        opt_path(pg, P, "data_dir")?.ok_or_else(|| ConfigError::missing("postgresql.data_dir"))?;
    let config_dir = opt_path(pg, P, "config_dir")?.unwrap_or_else(|| data_dir.clone());

    let bin_name = str_map(pg, P, "bin_name")?;
    for tool in bin_name.keys() {
        if !PG_TOOLS.contains(&tool.as_str()) {
            w.push(format!(
                "unknown configuration key postgresql.bin_name.{tool} ignored"
            ));
        }
    }

    // Authentication; very old Patroni configs had superuser/replication directly under postgresql.
    let auth_path = "postgresql.authentication";
    let legacy;
    let auth = match opt_map(pg, P, "authentication")? {
        Some(a) => a,
        None if get(pg, "superuser").is_some() || get(pg, "replication").is_some() => {
            w.push("postgresql.superuser/replication are deprecated: move them under postgresql.authentication".to_string());
            let mut m = Map::new();
            for key in ["superuser", "replication"] {
                if let Some(v) = pg.get(key) {
                    m.insert(key.to_string(), v.clone());
                }
            }
            legacy = m;
            &legacy
        }
        None => return Err(ConfigError::missing("postgresql.authentication.superuser")),
    };
    warn_unknown(auth, auth_path, PG_USERS, &[], w);
    let superuser = parse_pg_user(auth, auth_path, "superuser", w)?
        .ok_or_else(|| ConfigError::missing("postgresql.authentication.superuser"))?;
    let replication = parse_pg_user(auth, auth_path, "replication", w)?
        .ok_or_else(|| ConfigError::missing("postgresql.authentication.replication"))?;
    let rewind = parse_pg_user(auth, auth_path, "rewind", w)?;

    let mut parameters = opt_map(pg, P, "parameters")?.cloned().unwrap_or_default();
    for name in CMDLINE_PARAMETERS {
        if parameters.remove(*name).is_some() {
            w.push(format!(
                "postgresql.parameters.{name} is ignored in the local configuration (Patrol sets it; change it in the dynamic configuration, bootstrap.dcs.postgresql.parameters)"
            ));
        }
    }

    let mut basebackup = format_options(
        get(pg, "basebackup"),
        "postgresql.basebackup",
        "pg_basebackup",
        &[
            "pgdata",
            "format",
            "wal-method",
            "xlog-method",
            "gzip",
            "version",
            "dbname",
            "host",
            "port",
            "username",
            "password",
        ],
        Disallowed::Skip,
        w,
    )?;
    // As Patroni on PostgreSQL 15+: only server-side compression (a plain-format backup
    // cannot be compressed by the client).
    basebackup.retain(|o| {
        let client_side = o.starts_with("--compress") && !o.starts_with("--compress=server");
        if client_side {
            w.push(format!(
                "postgresql.basebackup: {o}: only server-side compression (server-gzip, server-lz4, server-zstd) is allowed; ignored"
            ));
        }
        !client_side
    });

    let mut replica_methods = BTreeMap::new();
    for method in &create_replica_methods {
        if method == "basebackup" {
            continue;
        }
        let section = opt_map(pg, P, method)?;
        if section.and_then(|s| get(s, "command")).is_none() {
            w.push(format!(
                "postgresql.create_replica_methods lists '{method}' but postgresql.{method}.command is not set: '{method}' itself is run as the command"
            ));
        }
        let m = crate::ReplicaMethod::parse(method, section)
            .map_err(|e| ConfigError::invalid(join(P, method), e))?;
        replica_methods.insert(method.clone(), m);
    }

    let callbacks = str_map(pg, P, "callbacks")?;
    for cb in callbacks.keys() {
        if !CALLBACKS.contains(&cb.as_str()) {
            w.push(format!(
                "unknown configuration key postgresql.callbacks.{cb} ignored"
            ));
        }
    }

    Ok(Postgresql {
        listen: listen.clone(),
        listen_addresses,
        port,
        connect_address,
        proxy_address: opt_strict_str(pg, P, "proxy_address")?,
        data_dir,
        config_dir,
        bin_dir: opt_path(pg, P, "bin_dir")?,
        bin_name,
        pgpass: match opt_path(pg, P, "pgpass")? {
            Some(p) => p,
            // Never a shared directory such as /tmp: the file holds passwords.
            None if home.is_empty() => {
                return Err(ConfigError::invalid(
                    "postgresql.pgpass",
                    "not set, and there is no home directory to put it in (HOME is empty and the user has none): set postgresql.pgpass",
                ))
            }
            None => PathBuf::from(home).join("pgpass"),
        },
        database: opt_str(pg, P, "database")?.unwrap_or_else(|| "postgres".to_string()),
        authentication: Authentication {
            superuser,
            replication,
            rewind,
        },
        parameters,
        pg_hba: opt_str_list(pg, P, "pg_hba")?,
        pg_ident: opt_str_list(pg, P, "pg_ident")?,
        basebackup,
        create_replica_methods,
        replica_methods,
        use_unix_socket: opt_bool(pg, P, "use_unix_socket")?.unwrap_or(false),
        use_unix_socket_repl: opt_bool(pg, P, "use_unix_socket_repl")?.unwrap_or(false),
        pg_ctl_timeout: opt_uint(pg, P, "pg_ctl_timeout")?.unwrap_or(60),
        use_pg_rewind: opt_bool(pg, P, "use_pg_rewind")?,
        remove_data_directory_on_rewind_failure: opt_bool(
            pg,
            P,
            "remove_data_directory_on_rewind_failure",
        )?
        .unwrap_or(false),
        remove_data_directory_on_diverged_timelines: opt_bool(
            pg,
            P,
            "remove_data_directory_on_diverged_timelines",
        )?
        .unwrap_or(false),
        callbacks,
        recovery_conf: opt_map(pg, P, "recovery_conf")?
            .cloned()
            .unwrap_or_default(),
        custom_conf: opt_path(pg, P, "custom_conf")?,
        pre_promote: opt_str(pg, P, "pre_promote")?,
        before_stop: opt_str(pg, P, "before_stop")?,
        config_base_name: opt_str(pg, P, "config_base_name")?
            .unwrap_or_else(|| "postgresql".to_string()),
    })
}

/// Python's `%s` of a tag value, for Patroni's warning text.
fn python_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".to_string(),
        Value::Bool(true) => "True".to_string(),
        Value::Bool(false) => "False".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse_tags(doc: &Map<String, Value>, w: &mut Vec<String>) -> Result<Map<String, Value>> {
    const P: &str = "tags";
    let mut tags = opt_map(doc, "", P)?.cloned().unwrap_or_default();
    for key in [
        "nofailover",
        "noloadbalance",
        "clonefrom",
        "nosync",
        "nostream",
    ] {
        let Some(v) = tags.get_mut(key) else { continue };
        match v {
            Value::Null | Value::Bool(_) => {}
            Value::String(s) => match parse_bool(s) {
                // PyYAML reads unquoted yes/no/on/off as booleans; publish real booleans so that
                // Patroni peers (which test truthiness) read them right.
                Some(b) => *v = Value::Bool(b),
                None => return Err(wrong_type(join(P, key), "a boolean", v)),
            },
            Value::Number(n) if matches!(n.as_i64(), Some(0 | 1)) => {}
            other => return Err(wrong_type(join(P, key), "a boolean", other)),
        }
    }
    for key in ["failover_priority", "sync_priority"] {
        let Some(v) = tags.get_mut(key) else { continue };
        match v {
            Value::Null => {}
            Value::Number(n) if n.as_u64().is_some() => {}
            // Kept as written (Patroni publishes the tag as configured), read as a number.
            Value::String(s) if s.trim().parse::<u64>().is_ok() => {}
            other => return Err(wrong_type(join(P, key), "a non-negative integer", other)),
        }
    }
    if let Some(v) = tags.get("replicatefrom") {
        if !(v.is_null() || v.is_string()) {
            return Err(wrong_type(join(P, "replicatefrom"), "a member name", v));
        }
    }
    for (flag, priority) in [
        ("nofailover", "failover_priority"),
        ("nosync", "sync_priority"),
    ] {
        let Some(flag_value) = tags.get(flag) else {
            continue;
        };
        let Some(prio) = tags.get(priority).and_then(|v| match v {
            Value::String(s) => s.trim().parse::<u64>().ok(),
            other => other.as_u64(),
        }) else {
            continue;
        };
        let set = patrol_dcs::python_truthy(flag_value);
        if (set && prio > 0) || (!set && prio == 0) {
            let shown = python_repr(flag_value);
            w.push(format!(
                "Conflicting configuration between {flag}: {shown} and {priority}: {prio}. Defaulting to {flag}: {shown}"
            ));
        }
    }
    Ok(tags)
}
