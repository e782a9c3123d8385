//! `patrol --generate-sample-config` and `patrol --generate-config`: the configuration Patroni's
//! generator (`patroni/config_generator.py`) writes, built from facts the caller gathered (the
//! host's name and address, the server's version, its settings, its pg_hba.conf). Pure: the
//! agent does the IO (connecting, reading files, asking for a password) and calls in here
//! between its steps, in Patroni's order.
//!
//! The document starts from Patroni's template (its defaults, `#FIXME` where only the user can
//! know), takes the `PATRONI_*` variables (or `PATRONI_CONFIGURATION`) on top as Patroni does,
//! and is rendered in Patroni's layout: sections in a fixed order, keys sorted, the bootstrap
//! comments. Dangerous: the running-instance document holds the superuser's password.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::env::parse_bool;
use crate::error::ConfigError;
use crate::source;

/// What Patroni writes where only the user can know the value.
pub const NO_VALUE: &str = "#FIXME";

/// The host's name and its first address (Patroni's `get_address`: IPv4 preferred), each
/// [`NO_VALUE`] when it could not be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAddress {
    pub hostname: String,
    pub ip: String,
}

impl HostAddress {
    /// `ip:port`, the address bracketed when it is IPv6 (Patroni leaves it bare, which no
    /// reader of `host:port` can split).
    fn with_port(&self, port: u16) -> String {
        if self.ip.contains(':') {
            format!("[{}]:{port}", self.ip)
        } else {
            format!("{}:{port}", self.ip)
        }
    }
}

/// Why a configuration cannot be generated (the part decided here; the caller adds its IO
/// failures). The texts are Patroni's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    #[error("Failed to parse DSN string")]
    Dsn,
    #[error("The provided user does not have superuser privilege")]
    NotSuperuser,
}

/// The parameters PostgreSQL gets on Patroni's command line, with Patroni's defaults
/// (`ConfigHandler.CMDLINE_OPTIONS`; `None`: Patroni computes the value).
const CMDLINE_OPTIONS: &[(&str, Option<DefaultValue>)] = &[
    ("listen_addresses", None),
    ("port", None),
    ("cluster_name", None),
    ("wal_level", Some(DefaultValue::Text("hot_standby"))),
    ("hot_standby", Some(DefaultValue::Text("on"))),
    ("max_connections", Some(DefaultValue::Int(100))),
    ("max_wal_senders", Some(DefaultValue::Int(10))),
    ("wal_keep_segments", Some(DefaultValue::Int(8))),
    ("wal_keep_size", Some(DefaultValue::Text("128MB"))),
    ("max_prepared_transactions", Some(DefaultValue::Int(0))),
    ("max_locks_per_transaction", Some(DefaultValue::Int(64))),
    ("track_commit_timestamp", Some(DefaultValue::Text("off"))),
    ("max_replication_slots", Some(DefaultValue::Int(10))),
    ("max_worker_processes", Some(DefaultValue::Int(8))),
    ("wal_log_hints", Some(DefaultValue::Text("on"))),
];

#[derive(Debug, Clone, Copy)]
enum DefaultValue {
    Text(&'static str),
    Int(i64),
}

impl DefaultValue {
    fn value(self) -> Value {
        match self {
            DefaultValue::Text(s) => Value::from(s),
            DefaultValue::Int(i) => Value::from(i),
        }
    }
}

fn cmdline_default(name: &str) -> Value {
    CMDLINE_OPTIONS
        .iter()
        .find(|(n, _)| *n == name)
        .and_then(|(_, d)| *d)
        .map(DefaultValue::value)
        .unwrap_or(Value::Null)
}

/// Patroni's default dynamic configuration (`Config.get_default_config()`) without its
/// `standby_cluster` section, as the generator writes it into `bootstrap.dcs`.
fn default_dynamic() -> Map<String, Value> {
    let parameters: Map<String, Value> = CMDLINE_OPTIONS
        .iter()
        .filter(|(n, _)| *n != "wal_keep_segments" && *n != "wal_keep_size")
        .filter_map(|(n, d)| d.map(|d| (n.to_string(), d.value())))
        .collect();
    let mut dynamic = Map::new();
    dynamic.insert("ttl".into(), json!(30));
    dynamic.insert("loop_wait".into(), json!(10));
    dynamic.insert("retry_timeout".into(), json!(10));
    dynamic.insert(
        "postgresql".into(),
        json!({"use_slots": true, "parameters": parameters}),
    );
    dynamic
}

/// The local configuration the environment describes, as Patroni's `Config('')` reads it
/// without a file: the YAML of `PATRONI_CONFIGURATION` when set, else the `PATRONI_*`
/// variables.
pub fn env_configuration(
    env: &BTreeMap<String, String>,
) -> Result<Map<String, Value>, ConfigError> {
    match env
        .get("PATRONI_CONFIGURATION")
        .filter(|v| !v.trim().is_empty())
    {
        Some(text) => source::parse_yaml_mapping(text, "PATRONI_CONFIGURATION"),
        None => crate::load_ctl_doc(None, env),
    }
}

/// Patroni's template (`get_template_config`): its defaults, the host's name and address,
/// and `env_config` (from [`env_configuration`]) on top; `bootstrap.dcs` is always Patroni's
/// default dynamic configuration.
pub fn template(address: &HostAddress, env_config: &Map<String, Value>) -> Map<String, Value> {
    let mut config = json!({
        "scope": NO_VALUE,
        "name": address.hostname,
        "restapi": {
            "connect_address": address.with_port(8008),
            "listen": address.with_port(8008),
        },
        "log": {
            "type": "plain",
            "level": "INFO",
            "traceback_level": "ERROR",
            "format": "%(asctime)s %(levelname)s: %(message)s",
            "max_queue_size": 1000,
        },
        "postgresql": {
            "data_dir": NO_VALUE,
            "connect_address": address.with_port(5432),
            "listen": address.with_port(5432),
            "bin_dir": "",
            "authentication": {
                "superuser": {"username": "postgres", "password": NO_VALUE},
                "replication": {"username": "replicator", "password": NO_VALUE},
            },
        },
        "tags": {
            "failover_priority": 1,
            "sync_priority": 1,
            "noloadbalance": false,
            "clonefrom": true,
            "nosync": false,
            "nostream": false,
        },
    });
    let Value::Object(config) = &mut config else {
        unreachable!("a JSON object literal")
    };
    let mut local = env_config.clone();
    object_at(&mut local, &["bootstrap"]).insert("dcs".into(), Value::Object(default_dynamic()));
    object_at(&mut local, &["postgresql"]);
    source::patch(config, local);
    if !DCS_SECTIONS.iter().any(|s| config.contains_key(*s)) {
        // Patroni writes no DCS section then (and its own validation refuses the result);
        // Patrol names the local etcd, so that the file is valid as it is.
        config.insert("etcd3".into(), json!({"hosts": [DEFAULT_ETCD]}));
    }
    std::mem::take(config)
}

/// The DCS sections Patroni knows.
const DCS_SECTIONS: &[&str] = &[
    "consul",
    "etcd",
    "etcd3",
    "exhibitor",
    "kubernetes",
    "raft",
    "zookeeper",
];

/// The etcd a generated configuration names when the environment names no DCS.
pub const DEFAULT_ETCD: &str = "127.0.0.1:2379";

/// The mapping at `path` in `doc`, created (and a non-mapping replaced) on the way.
fn object_at<'a>(doc: &'a mut Map<String, Value>, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut at = doc;
    for key in path {
        let slot = at
            .entry(key.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        at = match slot {
            Value::Object(m) => m,
            _ => unreachable!("just made it a mapping"),
        };
    }
    at
}

fn text_at<'a>(doc: &'a Map<String, Value>, path: &[&str]) -> Option<&'a str> {
    let (last, parents) = path.split_last()?;
    let mut at = doc;
    for key in parents {
        at = at.get(*key)?.as_object()?;
    }
    at.get(*last)?.as_str()
}

/// The binary `--generate-sample-config` asks for its version: `postgresql.bin_dir` and
/// `postgresql.bin_name.postgres` of the template (from the environment), else `postgres`.
pub fn sample_postgres_binary(template: &Map<String, Value>) -> std::path::PathBuf {
    let name = text_at(template, &["postgresql", "bin_name", "postgres"])
        .filter(|n| !n.is_empty())
        .unwrap_or("postgres");
    match text_at(template, &["postgresql", "bin_dir"]).filter(|d| !d.is_empty()) {
        Some(dir) => std::path::Path::new(dir).join(name),
        None => std::path::PathBuf::from(name),
    }
}

/// The version number of `postgres --version` output's major release (Patroni's
/// `postgres_major_version_to_int(get_major_version())`: 150000 for 15.x, 90600 for 9.6.x).
pub fn major_version_number(version_output: &str) -> Option<u32> {
    let mut words = version_output.split_whitespace();
    let version = words.nth(2)?;
    let numeric: String = version
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = numeric.split('.').filter(|p| !p.is_empty());
    let major: u32 = parts.next()?.parse().ok()?;
    if major >= 10 {
        Some(major * 10_000)
    } else {
        let minor: u32 = parts.next()?.parse().ok()?;
        Some(major * 10_000 + minor * 100)
    }
}

/// `--generate-sample-config`: Patroni's `SampleConfigGenerator` for a server of
/// `pg_major` (from [`major_version_number`]).
pub fn sample(mut config: Map<String, Value>, pg_major: u32) -> Map<String, Value> {
    let auth = if pg_major >= 100_000 {
        "scram-sha-256"
    } else {
        "md5"
    };
    let replication_user = text_at(
        &config,
        &["postgresql", "authentication", "replication", "username"],
    )
    .unwrap_or("replicator")
    .to_string();
    let pg = object_at(&mut config, &["postgresql"]);
    pg.insert("parameters".into(), json!({"password_encryption": auth}));
    pg.insert(
        "pg_hba".into(),
        json!([
            format!("host all all all {auth}"),
            format!("host replication {replication_user} all {auth}"),
        ]),
    );
    if pg_major >= 110_000 {
        let rewind = object_at(&mut config, &["postgresql", "authentication", "rewind"]);
        if rewind.is_empty() {
            rewind.insert("username".into(), json!("rewind_user"));
        }
        rewind.entry("password").or_insert_with(|| json!(NO_VALUE));
    }
    let dcs_pg = object_at(&mut config, &["bootstrap", "dcs", "postgresql"]);
    let wal_log_hints = dcs_pg
        .get("parameters")
        .and_then(|p| p.get("wal_log_hints"))
        .map(python_str)
        .and_then(|v| parse_bool(&v));
    dcs_pg.insert("use_pg_rewind".into(), json!(wal_log_hints == Some(true)));
    let parameters = object_at(dcs_pg, &["parameters"]);
    let wal_keep = if pg_major < 130_000 {
        "wal_keep_segments"
    } else {
        "wal_keep_size"
    };
    parameters.insert(wal_keep.into(), cmdline_default(wal_keep));
    let wal_level = if pg_major < 90_600 {
        "hot_standby"
    } else {
        "replica"
    };
    parameters.insert("wal_level".into(), json!(wal_level));
    config
}

/// A value as Python's `str()` would print it (for `parse_bool` of YAML values).
fn python_str(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

/// libpq options of the superuser and the variable libpq reads each from (Patroni's
/// `_AUTH_ALLOWED_PARAMETERS_MAPPING`; `sslpassword` has none).
const SUPERUSER_OPTIONS: &[(&str, Option<&str>)] = &[
    ("user", Some("PGUSER")),
    ("password", Some("PGPASSWORD")),
    ("sslmode", Some("PGSSLMODE")),
    ("sslcert", Some("PGSSLCERT")),
    ("sslkey", Some("PGSSLKEY")),
    ("sslpassword", None),
    ("sslrootcert", Some("PGSSLROOTCERT")),
    ("sslcrl", Some("PGSSLCRL")),
    ("sslcrldir", Some("PGSSLCRLDIR")),
    ("gssencmode", Some("PGGSSENCMODE")),
    ("channel_binding", Some("PGCHANNELBINDING")),
    ("sslnegotiation", Some("PGSSLNEGOTIATION")),
];

/// The first server version that knows each libpq option (Patroni's
/// `AUTH_ALLOWED_PARAMETERS_VERSIONS`): an older server's configuration leaves it out.
const OPTION_VERSIONS: &[(&str, i64)] = &[
    ("gssencmode", 120_000),
    ("channel_binding", 130_000),
    ("sslpassword", 130_000),
    ("sslcrldir", 140_000),
    ("sslnegotiation", 170_000),
];

/// The settings `--generate-config` reads (Patroni's query): those set in a configuration
/// file, on the command line or by an environment variable, except internal ones, recovery
/// targets and disabled values, and always the ones named by `$1` ([`required_settings`]).
pub const SETTINGS_QUERY: &str =
    "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings \
WHERE context <> 'internal' \
AND source IN ('configuration file', 'command line', 'environment variable') \
AND category <> 'Write-Ahead Log / Recovery Target' \
AND setting <> '(disabled)' \
OR name = ANY($1)";

/// Settings the generated configuration always names: the files and the data directory, and
/// every parameter Patroni passes on the command line.
pub fn required_settings() -> Vec<String> {
    ["hba_file", "ident_file", "config_file", "data_directory"]
        .into_iter()
        .chain(CMDLINE_OPTIONS.iter().map(|(n, _)| *n))
        .map(String::from)
        .collect()
}

/// Settings that stay in the local `postgresql.parameters` (commands, for their security
/// implications; the file locations, so that they are not removed later); every other one
/// read goes to `bootstrap.dcs`.
const LOCAL_SETTINGS: &[&str] = &[
    "archive_command",
    "restore_command",
    "archive_cleanup_command",
    "recovery_end_command",
    "ssl_passphrase_command",
    "hba_file",
    "ident_file",
    "config_file",
];

/// `--generate-config`: Patroni's `RunningClusterConfigGenerator`, one step per method; the
/// caller connects, reads the files the steps name, and finishes with [`Running::finish`].
#[derive(Debug, Clone)]
pub struct Running {
    config: Map<String, Value>,
    /// What the environment gave (for the superuser's name and password).
    env_config: Map<String, Value>,
    dsn: BTreeMap<String, String>,
    pg_major: i64,
}

/// Who `--generate-config` connects as: the options for `postgresql.authentication.superuser`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superuser {
    pub username: String,
    /// `None`: nobody gave one; the caller asks for it ([`Running::set_password`]).
    pub password: Option<String>,
    /// The other libpq options (`sslmode`, `sslrootcert`, ...).
    pub options: BTreeMap<String, String>,
}

impl Running {
    /// Starts from [`template`]; `dsn` as given with `--dsn` (empty: none).
    pub fn new(
        template: Map<String, Value>,
        env_config: Map<String, Value>,
        dsn: Option<&str>,
    ) -> Result<Running, GenerateError> {
        let dsn = match dsn.filter(|d| !d.is_empty()) {
            Some(d) => parse_dsn(d).ok_or(GenerateError::Dsn)?,
            None => BTreeMap::new(),
        };
        Ok(Running {
            config: template,
            env_config,
            dsn,
            pg_major: 0,
        })
    }

    /// The parsed `--dsn` (with Patroni's defaults for `sslmode` and the like).
    pub fn dsn(&self) -> &BTreeMap<String, String> {
        &self.dsn
    }

    /// The superuser to connect as (Patroni's `_set_su_params`), written into
    /// `postgresql.authentication` with `#FIXME` for the replication user: each option from
    /// the DSN, else its libpq variable; the name from the DSN or `PGUSER`, else
    /// `PATRONI_SUPERUSER_USERNAME`, else `os_user`; the password likewise (`PGPASSWORD`,
    /// `PATRONI_SUPERUSER_PASSWORD`), else `None`.
    pub fn superuser(&mut self, env: &BTreeMap<String, String>, os_user: &str) -> Superuser {
        let mut options = BTreeMap::new();
        for (option, var) in SUPERUSER_OPTIONS {
            let value = self
                .dsn
                .get(*option)
                .or_else(|| var.and_then(|v| env.get(v)))
                .filter(|v| !v.is_empty());
            if let Some(v) = value {
                options.insert(option.to_string(), v.clone());
            }
        }
        let from_env = |key: &str| {
            text_at(
                &self.env_config,
                &["postgresql", "authentication", "superuser", key],
            )
            .filter(|v| !v.is_empty())
            .map(String::from)
        };
        let username = options
            .remove("user")
            .or_else(|| from_env("username"))
            .unwrap_or_else(|| os_user.to_string());
        let password = options.remove("password").or_else(|| from_env("password"));
        let su = Superuser {
            username,
            password,
            options,
        };
        self.write_superuser(&su);
        su
    }

    /// The password the user typed for `su`.
    pub fn set_password(&mut self, su: &mut Superuser, password: String) {
        su.password = Some(password);
        self.write_superuser(su);
    }

    fn write_superuser(&mut self, su: &Superuser) {
        let mut map: Map<String, Value> = su
            .options
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        map.insert("username".into(), json!(su.username));
        if let Some(p) = &su.password {
            map.insert("password".into(), json!(p));
        }
        object_at(&mut self.config, &["postgresql"]).insert(
            "authentication".into(),
            json!({
                "superuser": map,
                "replication": {"username": NO_VALUE, "password": NO_VALUE},
            }),
        );
    }

    /// Connected to a server of `server_version` (`server_version_num`): drops the superuser
    /// options that server does not know; refuses a user that is not a superuser.
    pub fn connected(
        &mut self,
        server_version: i64,
        is_superuser: bool,
    ) -> Result<(), GenerateError> {
        self.pg_major = server_version;
        let su = object_at(
            &mut self.config,
            &["postgresql", "authentication", "superuser"],
        );
        for (option, since) in OPTION_VERSIONS {
            if server_version < *since {
                su.remove(*option);
            }
        }
        if is_superuser {
            Ok(())
        } else {
            Err(GenerateError::NotSuperuser)
        }
    }

    /// The rows of [`SETTINGS_QUERY`] (Patroni's `_set_pg_params`): the data directory,
    /// `scope` from `cluster_name`, commands and file locations locally, `listen` and
    /// `connect_address` from `listen_addresses` and `port` (the connect port from the DSN or
    /// `PGPORT` first), everything else into `bootstrap.dcs`.
    pub fn settings(&mut self, rows: &[(String, String)], env: &BTreeMap<String, String>) {
        let mut port = String::new();
        let mut listen_addresses = String::new();
        object_at(&mut self.config, &["postgresql", "parameters"]);
        for (name, value) in rows {
            match name.as_str() {
                "data_directory" => {
                    object_at(&mut self.config, &["postgresql"])
                        .insert("data_dir".into(), json!(value));
                }
                "cluster_name" if !value.is_empty() => {
                    self.config.insert("scope".into(), json!(value));
                }
                n if LOCAL_SETTINGS.contains(&n) => {
                    object_at(&mut self.config, &["postgresql", "parameters"])
                        .insert(n.into(), json!(value));
                }
                "port" => port = value.clone(),
                "listen_addresses" => listen_addresses = value.clone(),
                n => {
                    object_at(
                        &mut self.config,
                        &["bootstrap", "dcs", "postgresql", "parameters"],
                    )
                    .insert(n.into(), json!(value));
                }
            }
        }
        let connect_host = text_at(&self.config, &["postgresql", "connect_address"])
            .map(|a| match a.rsplit_once(':') {
                Some((host, _)) => host.to_string(),
                None => a.to_string(),
            })
            .unwrap_or_default();
        let connect_port = self
            .dsn
            .get("port")
            .or_else(|| env.get("PGPORT"))
            .cloned()
            .unwrap_or_else(|| port.clone());
        let pg = object_at(&mut self.config, &["postgresql"]);
        pg.insert(
            "connect_address".into(),
            json!(format!("{connect_host}:{connect_port}")),
        );
        pg.insert("listen".into(), json!(format!("{listen_addresses}:{port}")));
    }

    /// The data directory the server reported.
    pub fn data_dir(&self) -> Option<&str> {
        text_at(&self.config, &["postgresql", "data_dir"])
    }

    /// The server's `<file>` (`pg_hba.conf`, `pg_ident.conf`) when it is the default one in
    /// the data directory; Patroni takes the rules only from there (a file elsewhere may not
    /// be Patroni's to write).
    fn default_file(&self, setting: &str, file: &str) -> Option<std::path::PathBuf> {
        let path = std::path::Path::new(self.data_dir()?).join(file);
        let set = text_at(&self.config, &["postgresql", "parameters", setting])?;
        (std::path::Path::new(set) == path).then_some(path)
    }

    /// pg_hba.conf to read into `postgresql.pg_hba`, if it is the default one.
    pub fn hba_file(&self) -> Option<std::path::PathBuf> {
        self.default_file("hba_file", "pg_hba.conf")
    }

    /// pg_ident.conf to read into `postgresql.pg_ident`, if it is the default one.
    pub fn ident_file(&self) -> Option<std::path::PathBuf> {
        self.default_file("ident_file", "pg_ident.conf")
    }

    /// pg_hba.conf's text: its rules (lines starting with a connection type; from
    /// PostgreSQL 16 also the `include` directives) become `postgresql.pg_hba`.
    pub fn set_hba(&mut self, text: &str) {
        let mut types = vec![
            "local",
            "host",
            "hostssl",
            "hostnossl",
            "hostgssenc",
            "hostnogssenc",
        ];
        if self.pg_major >= 160_000 {
            types.extend(["include", "include_if_exists", "include_dir"]);
        }
        let rules: Vec<Value> = text
            .lines()
            .map(str::trim)
            .filter(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|t| types.contains(&t))
            })
            .map(|l| json!(l))
            .collect();
        object_at(&mut self.config, &["postgresql"]).insert("pg_hba".into(), Value::Array(rules));
    }

    /// pg_ident.conf's text: its lines that are neither empty nor comments become
    /// `postgresql.pg_ident` (left out when there are none).
    pub fn set_ident(&mut self, text: &str) {
        let lines: Vec<Value> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| json!(l))
            .collect();
        let pg = object_at(&mut self.config, &["postgresql"]);
        if lines.is_empty() {
            pg.remove("pg_ident");
        } else {
            pg.insert("pg_ident".into(), Value::Array(lines));
        }
    }

    /// The directory of the running postmaster's executable.
    pub fn set_bin_dir(&mut self, dir: &str) {
        object_at(&mut self.config, &["postgresql"]).insert("bin_dir".into(), json!(dir));
    }

    pub fn finish(self) -> Map<String, Value> {
        self.config
    }
}

/// A libpq connection string, keyword/value or URI (`postgres[ql]://`), as Patroni's
/// `parse_dsn` reads it: `None` if it cannot be parsed; `requiressl` becomes `sslmode`, and
/// `sslmode`, `gssencmode`, `channel_binding` default to `prefer`, `sslnegotiation` to
/// `postgres`. Keywords are not checked here (connecting does that).
pub fn parse_dsn(dsn: &str) -> Option<BTreeMap<String, String>> {
    let mut ret = if dsn.starts_with("postgres://") || dsn.starts_with("postgresql://") {
        parse_dsn_uri(dsn)?
    } else {
        parse_dsn_keywords(dsn)?
    };
    if ret.is_empty() {
        return None;
    }
    if !ret.contains_key("sslmode") {
        match ret.remove("requiressl").as_deref() {
            Some("1") => {
                ret.insert("sslmode".into(), "require".into());
            }
            Some(_) => {
                ret.insert("sslmode".into(), "prefer".into());
            }
            None => {}
        }
    }
    for (key, default) in [
        ("sslmode", "prefer"),
        ("gssencmode", "prefer"),
        ("channel_binding", "prefer"),
        ("sslnegotiation", "postgres"),
    ] {
        ret.entry(key.into()).or_insert_with(|| default.into());
    }
    Some(ret)
}

/// `key = value ...`: keys of lower-case letters and `_`, values bare (up to white space) or
/// single-quoted, `\` escaping the next character.
fn parse_dsn_keywords(dsn: &str) -> Option<BTreeMap<String, String>> {
    let chars: Vec<char> = dsn.chars().collect();
    let mut ret = BTreeMap::new();
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_lowercase() || chars[i] == '_') {
            i += 1;
        }
        if i == start {
            return None;
        }
        let key: String = chars[start..i].iter().collect();
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if chars.get(i) != Some(&'=') {
            return None;
        }
        i += 1;
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= chars.len() {
            return None;
        }
        let quoted = chars[i] == '\'';
        if quoted {
            i += 1;
        }
        let mut value = String::new();
        let mut closed = false;
        while i < chars.len() {
            let c = chars[i];
            if quoted && c == '\'' {
                i += 1;
                closed = true;
                break;
            }
            if !quoted && c.is_whitespace() {
                break;
            }
            if c == '\\' {
                i += 1;
                match chars.get(i) {
                    Some(&next) => value.push(next),
                    None => break,
                }
            } else {
                value.push(c);
            }
            i += 1;
        }
        if quoted && !closed {
            return None;
        }
        ret.insert(key, value);
    }
    Some(ret)
}

/// `postgres[ql]://[user[:password]@][host[:port][,...]][/dbname][?key=value&...]`, every
/// part percent-decoded, hosts and ports joined with commas, `ssl=true` read as
/// `sslmode=require`.
fn parse_dsn_uri(dsn: &str) -> Option<BTreeMap<String, String>> {
    let rest = dsn.split_once("://")?.1;
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let (netloc, path) = match before_query.split_once('/') {
        Some((n, p)) => (n, Some(p)),
        None => (before_query, None),
    };
    let mut ret = BTreeMap::new();
    let (userinfo, hostlist) = match netloc.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, netloc),
    };
    if let Some(userinfo) = userinfo {
        let (user, password) = match userinfo.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (userinfo, None),
        };
        if !user.is_empty() {
            ret.insert("user".into(), percent_decode(user)?);
        }
        if let Some(p) = password.filter(|p| !p.is_empty()) {
            ret.insert("password".into(), percent_decode(p)?);
        }
    }
    if let Some(db) = path.filter(|p| !p.is_empty()) {
        ret.insert("dbname".into(), percent_decode(db)?);
    }
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for entry in hostlist.split(',') {
        let (host, port) = if let Some(v6) = entry.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            (host, after.strip_prefix(':').unwrap_or(""))
        } else {
            match entry.rsplit_once(':') {
                Some((h, p)) => (h, p),
                None => (entry, ""),
            }
        };
        hosts.push(percent_decode(host)?);
        ports.push(percent_decode(port)?);
    }
    if hosts.iter().any(|h| !h.is_empty()) {
        ret.insert("host".into(), hosts.join(","));
    }
    if ports.iter().any(|p| !p.is_empty()) {
        ret.insert("port".into(), ports.join(","));
    }
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=')?;
        let k = percent_decode(&k.replace('+', " "))?;
        let v = percent_decode(&v.replace('+', " "))?;
        ret.insert(k, v);
    }
    if ret.get("ssl").map(String::as_str) == Some("true") {
        ret.remove("ssl");
        ret.insert("sslmode".into(), "require".into());
    }
    Some(ret)
}

/// `%XX` decoded; `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Sections in the order Patroni writes them before `bootstrap`.
const SECTIONS_BEFORE_BOOTSTRAP: &[&str] = &[
    "scope",
    "namespace",
    "name",
    "log",
    "restapi",
    "ctl",
    "citus",
    "consul",
    "etcd",
    "etcd3",
    "exhibitor",
    "kubernetes",
    "raft",
    "zookeeper",
];

const SECTIONS_AFTER_BOOTSTRAP: &[&str] = &["postgresql", "watchdog", "tags"];

/// The YAML text of a generated configuration, in Patroni's layout: the sections in its
/// order, each mapping after an empty line, keys sorted, the bootstrap section explained and
/// `loop_wait`, `retry_timeout`, `ttl` first in `bootstrap.dcs`. Sections Patroni does not
/// know are left out, as Patroni does.
pub fn render(config: &Map<String, Value>) -> String {
    let mut out: Vec<String> = Vec::new();
    let section = |out: &mut Vec<String>, name: &str| {
        if let Some(value) = config.get(name) {
            if value.is_object() {
                out.push(String::new());
            }
            out.push(block(name, value, ""));
        }
    };
    for name in SECTIONS_BEFORE_BOOTSTRAP {
        section(&mut out, name);
    }
    if let Some(bootstrap) = config.get("bootstrap").and_then(Value::as_object) {
        out.push(
            "\n# The bootstrap configuration. Works only when the cluster is not yet initialized."
                .into(),
        );
        out.push("# If the cluster is already initialized, all changes in the `bootstrap` section are ignored!".into());
        out.push("bootstrap:".into());
        if let Some(dcs) = bootstrap.get("dcs").and_then(Value::as_object) {
            out.push("  # This section will be written into <dcs>:/<namespace>/<scope>/config after initializing".into());
            out.push("  # new cluster and all other cluster members will use it as a `global configuration`.".into());
            out.push(
                "  # WARNING! If you want to change any of the parameters that were set up".into(),
            );
            out.push(
                "  # via `bootstrap.dcs` section, please use `patronictl edit-config`!".into(),
            );
            out.push("  dcs:".into());
            let first = ["loop_wait", "retry_timeout", "ttl"];
            for name in first {
                if let Some(v) = dcs.get(name) {
                    out.push(block(name, v, "    "));
                }
            }
            for (name, v) in dcs.iter().filter(|(k, _)| !first.contains(&k.as_str())) {
                out.push(block(name, v, "    "));
            }
        }
        for (name, v) in bootstrap.iter().filter(|(k, _)| *k != "dcs") {
            out.push(block(name, v, "  "));
        }
    }
    for name in SECTIONS_AFTER_BOOTSTRAP {
        section(&mut out, name);
    }
    let mut text = out.join("\n");
    text.push('\n');
    text
}

/// `{name: value}` as PyYAML's `safe_dump` writes it (block style, keys sorted, strings that
/// YAML 1.1 would read as something else quoted), every line after the first prefixed.
fn block(name: &str, value: &Value, prefix: &str) -> String {
    let mut one = Map::new();
    one.insert(name.to_string(), value.clone());
    let yaml = crate::pyyaml::yaml_dump(&Value::Object(one), false);
    format!(
        "{prefix}{}",
        yaml.trim().replace('\n', &format!("\n{prefix}"))
    )
}
