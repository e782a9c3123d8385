//! `PATRONI_*` environment variables turned into a configuration document (spec 4.5), following
//! Patroni's `Config._build_environment_configuration`.
//!
//! The result is merged over the file with [`super::source::patch`]. Values stay strings unless
//! Patroni converts them (bools, ints, YAML lists and dicts); the typed parser accepts bool-ish and
//! integer strings wherever it expects a bool or an integer, so `PATRONI_CTL_INSECURE=on` works.
//! Removing the variables from the process environment (so children do not inherit secrets) is
//! the caller's job: this module only reads the map it is given.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::source::parse_yaml;

const PREFIX: &str = "PATRONI_";

/// Credential keys accepted for PostgreSQL users (Patroni's `_AUTH_ALLOWED_PARAMETERS`).
pub(crate) const PG_AUTH_PARAMETERS: &[&str] = &[
    "username",
    "password",
    "sslmode",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "gssencmode",
    "channel_binding",
    "sslnegotiation",
];

/// Tools whose binary name can be overridden with `postgresql.bin_name.<tool>`.
pub(crate) const PG_TOOLS: &[&str] = &[
    "pg_ctl",
    "initdb",
    "pg_controldata",
    "pg_basebackup",
    "postgres",
    "pg_isready",
    "pg_rewind",
];

const GENERIC_DCS_SUFFIXES: &[&str] = &[
    "HOST",
    "HOSTS",
    "PORT",
    "USE_PROXIES",
    "PROTOCOL",
    "SRV",
    "SRV_SUFFIX",
    "URL",
    "PROXY",
    "CACERT",
    "CERT",
    "KEY",
    "VERIFY",
    "TOKEN",
    "CHECKS",
    "DC",
    "CONSISTENCY",
    "REGISTER_SERVICE",
    "SERVICE_CHECK_INTERVAL",
    "SERVICE_CHECK_TLS_SERVER_NAME",
    "SERVICE_TAGS",
    "NAMESPACE",
    "CONTEXT",
    "USE_ENDPOINTS",
    "SCOPE_LABEL",
    "ROLE_LABEL",
    "POD_IP",
    "PORTS",
    "LABELS",
    "BYPASS_API_SERVICE",
    "RETRIABLE_HTTP_CODES",
    "KEY_PASSWORD",
    "USE_SSL",
    "SET_ACLS",
    "GROUP",
    "DATABASE",
    "LEADER_LABEL_VALUE",
    "FOLLOWER_LABEL_VALUE",
    "STANDBY_LEADER_LABEL_VALUE",
    "TMP_ROLE_LABEL",
    "AUTH_DATA",
    "BOOTSTRAP_LABELS",
];

/// What the environment contributes.
#[derive(Debug, Default)]
pub(crate) struct EnvConfig {
    /// The document to merge over the file.
    pub doc: Map<String, Value>,
    /// `PATRONI_ETCD[3]_{USERNAME,PASSWORD}`: (section, key, value, variable). Patroni applies
    /// them only to an etcd section that exists, so they are applied after the merge.
    pub dcs_auth: Vec<(String, String, String, String)>,
    pub warnings: Vec<String>,
}

/// Patroni's `parse_bool`.
pub(crate) fn parse_bool(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
    }
}

/// Patroni's `parse_int` (without units): C's `strtol` with base 0 (`0x1A` hex, `0640`
/// octal), else a decimal number rounded half to even (`2.5` -> 2, `1e3` -> 1000).
pub(crate) fn parse_int(value: &str) -> Option<i64> {
    let s = value.trim();
    let (negative, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let magnitude = if let Some(hex) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        i64::from_str_radix(hex, 16).ok()?
    } else if body.len() > 1 && body.starts_with('0') && body.bytes().all(|b| b.is_ascii_digit()) {
        i64::from_str_radix(&body[1..], 8).ok()?
    } else if let Ok(n) = body.parse::<i64>() {
        n
    } else if body.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        let f = body
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())?
            .round_ties_even();
        if f >= i64::MAX as f64 {
            return None;
        }
        f as i64
    } else {
        return None;
    };
    Some(if negative { -magnitude } else { magnitude })
}

struct Builder {
    vars: BTreeMap<String, String>,
    out: EnvConfig,
}

impl Builder {
    /// Take `PATRONI_<NAME>` out of the set; empty values count as unset (as in Patroni).
    fn pop(&mut self, name: &str) -> Option<String> {
        let var = format!("{PREFIX}{}", name.to_ascii_uppercase());
        self.vars.remove(&var).filter(|v| !v.is_empty())
    }

    fn section(&mut self, section: &str) -> &mut Map<String, Value> {
        let entry = self
            .out
            .doc
            .entry(section.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        match entry {
            Value::Object(map) => map,
            _ => unreachable!("just made it an object"),
        }
    }

    fn set(&mut self, section: &str, key: &str, value: Value) {
        self.section(section).insert(key.to_string(), value);
    }

    fn set_section_values(&mut self, section: &str, params: &[&str]) {
        for param in params {
            if let Some(value) = self.pop(&format!("{section}_{param}")) {
                let converted = self.convert(section, param, value);
                if let Some(v) = converted {
                    self.set(section, param, v);
                }
            }
        }
    }

    fn warn_ignored(&mut self, var: &str, value: &str, what: &str) {
        self.out.warnings.push(format!(
            "environment variable {var}: '{value}' is not {what}; ignored"
        ));
    }

    /// Type conversions Patroni applies to section values.
    fn convert(&mut self, section: &str, param: &str, value: String) -> Option<Value> {
        let var = format!("{PREFIX}{}_{}", section, param).to_ascii_uppercase();
        match (section, param) {
            ("restapi", "allowlist_include_members")
            | ("ctl", "insecure")
            | ("log", "deduplicate_heartbeat_logs") => match parse_bool(&value) {
                Some(b) => Some(Value::Bool(b)),
                None => {
                    self.warn_ignored(&var, &value, "a boolean");
                    None
                }
            },
            ("restapi", "request_queue_size")
            | ("log", "max_queue_size" | "file_size" | "file_num" | "mode") => {
                match parse_int(&value) {
                    Some(i) => Some(Value::from(i)),
                    None => {
                        self.warn_ignored(&var, &value, "an integer");
                        None
                    }
                }
            }
            ("raft", "partner_addrs") | ("restapi", "allowlist") => self.parse_list(&var, &value),
            ("log", "format") if !has_percent_placeholder(&value) => {
                // Patroni: a log format without `%(name)` placeholders is a YAML list of fields.
                self.parse_list(&var, &value)
            }
            ("restapi", "http_extra_headers" | "https_extra_headers")
            | ("log", "static_fields" | "loggers") => self.parse_dict(&var, &value),
            _ => Some(Value::String(value)),
        }
    }

    /// Patroni's `_parse_list`: wrap in `[...]` unless it already looks like a YAML list.
    fn parse_list(&mut self, var: &str, value: &str) -> Option<Value> {
        let text = if value.trim_start().starts_with('-') || value.contains('[') {
            value.to_string()
        } else {
            format!("[{value}]")
        };
        self.parse_yaml_value(var, value, &text, "a YAML list")
    }

    /// Patroni's `_parse_dict`: wrap in `{...}` unless it already starts with `{`.
    fn parse_dict(&mut self, var: &str, value: &str) -> Option<Value> {
        let text = if value.trim_start().starts_with('{') {
            value.to_string()
        } else {
            format!("{{{value}}}")
        };
        self.parse_yaml_value(var, value, &text, "a YAML mapping")
    }

    fn parse_yaml_value(&mut self, var: &str, raw: &str, text: &str, what: &str) -> Option<Value> {
        match parse_yaml(text, var) {
            Ok(v) if patrol_dcs::python_truthy(&v) => Some(v),
            Ok(_) => None,
            Err(_) => {
                self.warn_ignored(var, raw, what);
                None
            }
        }
    }

    fn get_auth(&mut self, name: &str, params: &[&str]) -> Map<String, Value> {
        let mut auth = Map::new();
        for param in params {
            if let Some(value) = self.pop(&format!("{name}_{param}")) {
                auth.insert((*param).to_string(), Value::String(value));
            }
        }
        auth
    }
}

fn has_percent_placeholder(value: &str) -> bool {
    // Equivalent of Python's re.search(r'%\(\w+\)', value).
    let bytes = value.as_bytes();
    let mut i = 0;
    while i + 1 < bytes.len() {
        if bytes[i] == b'%' && bytes[i + 1] == b'(' {
            let rest = &value[i + 2..];
            let word_len = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            if word_len > 0 && rest[word_len..].starts_with(')') {
                return true;
            }
        }
        i += 1;
    }
    false
}

/// Build the configuration document from the `PATRONI_*` variables of `env`.
/// `PATRONI_CONFIGURATION` is not handled here (see [`super::load`]).
pub(crate) fn from_env(env: &BTreeMap<String, String>) -> EnvConfig {
    let vars = env
        .iter()
        .filter(|(k, _)| k.starts_with(PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut b = Builder {
        vars,
        out: EnvConfig::default(),
    };

    for param in ["name", "namespace", "scope"] {
        if let Some(value) = b.pop(param) {
            b.out.doc.insert(param.to_string(), Value::String(value));
        }
    }
    // Known but unused by Patrol.
    for param in ["configuration", "thread_pool_size", "thread_stack_size"] {
        b.pop(param);
    }

    // Legacy log variable names; the new name wins when both are set.
    for (name, old) in [
        ("LEVEL", "LOGLEVEL"),
        ("FORMAT", "LOGFORMAT"),
        ("DATEFORMAT", "LOG_DATEFMT"),
    ] {
        if let Some(value) = b.pop(old) {
            let new = format!("{PREFIX}LOG_{name}");
            b.vars.entry(new).or_insert(value);
        }
    }

    b.set_section_values(
        "restapi",
        &[
            "listen",
            "connect_address",
            "certfile",
            "keyfile",
            "keyfile_password",
            "cafile",
            "ciphers",
            "verify_client",
            "http_extra_headers",
            "https_extra_headers",
            "allowlist",
            "allowlist_include_members",
            "request_queue_size",
            "server_tokens",
        ],
    );
    b.set_section_values(
        "ctl",
        &[
            "insecure",
            "cacert",
            "certfile",
            "keyfile",
            "keyfile_password",
        ],
    );
    b.set_section_values(
        "postgresql",
        &[
            "listen",
            "connect_address",
            "proxy_address",
            "config_dir",
            "data_dir",
            "pgpass",
            "bin_dir",
        ],
    );
    b.set_section_values(
        "log",
        &[
            "type",
            "level",
            "traceback_level",
            "format",
            "dateformat",
            "static_fields",
            "max_queue_size",
            "dir",
            "mode",
            "file_size",
            "file_num",
            "loggers",
            "deduplicate_heartbeat_logs",
        ],
    );
    b.set_section_values(
        "raft",
        &[
            "data_dir",
            "self_addr",
            "partner_addrs",
            "password",
            "bind_addr",
        ],
    );

    for tool in PG_TOOLS {
        if let Some(value) = b.pop(&format!("postgresql_bin_{tool}")) {
            let pg = b.section("postgresql");
            let bin_name = pg
                .entry("bin_name")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = bin_name {
                m.insert((*tool).to_string(), Value::String(value));
            }
        }
    }

    for section in ["ctl", "restapi"] {
        let auth = b.get_auth(section, &["username", "password"]);
        if !auth.is_empty() {
            b.set(section, "authentication", Value::Object(auth));
        }
    }

    let mut authentication = Map::new();
    for user in ["replication", "superuser", "rewind"] {
        let entry = b.get_auth(user, PG_AUTH_PARAMETERS);
        if !entry.is_empty() {
            authentication.insert(user.to_string(), Value::Object(entry));
        }
    }
    if !authentication.is_empty() {
        b.set(
            "postgresql",
            "authentication",
            Value::Object(authentication),
        );
    }

    // Generic DCS rule: PATRONI_<SECTION>_<SUFFIX> -> <section>.<suffix>.
    let names: Vec<String> = b.vars.keys().cloned().collect();
    for var in names {
        let rest = &var[PREFIX.len()..];
        let Some((name, suffix)) = rest.split_once('_') else {
            continue;
        };
        if name.is_empty() || !GENERIC_DCS_SUFFIXES.contains(&suffix) {
            continue;
        }
        let Some(value) = b.vars.remove(&var) else {
            continue;
        };
        let converted = if name == "CITUS" {
            match suffix {
                "GROUP" => match parse_int(&value) {
                    Some(i) => Some(Value::from(i)),
                    None => {
                        b.warn_ignored(&var, &value, "an integer");
                        None
                    }
                },
                "DATABASE" => Some(Value::String(value.clone())),
                _ => continue,
            }
        } else {
            match suffix {
                "PORT" if value.is_empty() => None,
                "PORT" => match parse_int(&value) {
                    Some(i) => Some(Value::from(i)),
                    None => {
                        b.warn_ignored(&var, &value, "an integer");
                        None
                    }
                },
                "HOSTS" | "PORTS" | "CHECKS" | "SERVICE_TAGS" | "RETRIABLE_HTTP_CODES" => {
                    if value.is_empty() {
                        None
                    } else {
                        b.parse_list(&var, &value)
                    }
                }
                "LABELS" | "SET_ACLS" | "AUTH_DATA" | "BOOTSTRAP_LABELS" => {
                    b.parse_dict(&var, &value)
                }
                "USE_PROXIES" | "REGISTER_SERVICE" | "USE_ENDPOINTS" | "BYPASS_API_SERVICE"
                | "VERIFY" => match parse_bool(&value) {
                    Some(v) => Some(Value::Bool(v)),
                    None => {
                        b.warn_ignored(&var, &value, "a boolean");
                        None
                    }
                },
                _ => Some(Value::String(value.clone())),
            }
        };
        if let Some(v) = converted {
            b.set(&name.to_ascii_lowercase(), &suffix.to_ascii_lowercase(), v);
        }
    }

    for dcs in ["etcd", "etcd3"] {
        for param in ["username", "password"] {
            let var = format!("{PREFIX}{}_{}", dcs, param).to_ascii_uppercase();
            if let Some(value) = b.pop(&format!("{dcs}_{param}")) {
                b.out
                    .dcs_auth
                    .push((dcs.to_string(), param.to_string(), value, var));
            }
        }
    }

    let leftovers: Vec<String> = b.vars.keys().cloned().collect();
    for var in leftovers {
        b.out.warnings.push(format!(
            "environment variable {var} is not a Patroni setting; ignored"
        ));
    }
    b.out
}
