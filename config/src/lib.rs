//! The Patroni configuration reader: a Patroni YAML file (or a directory of them, or
//! `PATRONI_CONFIGURATION`), with the `PATRONI_*` environment overrides merged on top, checked
//! and turned into the agent's typed [`Config`], or read loosely into the [`CtlTarget`] that
//! `patrolctl` and the router need.
//!
//! Flow: YAML -> `serde_json::Value` (YAML types and key order kept) -> Patroni's merge of
//! directory files and environment (`source`, `env`) -> a validating walk (`parse`) that names the
//! dotted key of every error and turns unknown keys into warnings, never errors.
//!
//! Dangerous: the document holds passwords. [`Config`]'s `Debug` masks them; print
//! [`Config::redacted_raw`], never `raw`.
#![forbid(unsafe_code)]

pub mod compatibility_doc;
mod env;
mod error;
pub mod generate;
pub mod log;
mod methods;
mod parse;
pub mod pyfmt;
pub mod pyyaml;
mod source;
pub mod unsupported;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

pub use error::ConfigError;
pub use methods::{CustomBootstrap, ReplicaMethod};
#[cfg(test)]
pub(crate) use parse::known_keys;
pub use unsupported::{DynamicNotice, ALLOW_VAR};

/// Where the local configuration comes from.
#[derive(Debug, Clone, Copy)]
pub enum ConfigSource<'a> {
    /// A YAML file, or a directory whose `*.yml`/`*.yaml` files are merged in sorted name order
    /// (later files win). It must exist.
    File(&'a Path),
    /// No file: `PATRONI_CONFIGURATION` holds the whole YAML (other `PATRONI_*` variables are then
    /// ignored, as in Patroni); without it the configuration is built from `PATRONI_*` alone.
    EnvOnly,
}

/// A loaded configuration and the warnings to log (unknown keys, ignored sections, keys Patrol
/// does not implement yet, ...).
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
    /// Keys that ask for a guarantee Patrol does not give (see [`unsupported`]), one message
    /// each: the agent must not start with them. Empty when [`ALLOW_VAR`] is set (they are then
    /// among the warnings).
    pub refusals: Vec<String>,
}

impl Loaded {
    /// `Err` naming every refused key, if any: for callers that can only take a usable
    /// configuration (reload).
    pub fn usable(self) -> Result<Loaded, ConfigError> {
        if self.refusals.is_empty() {
            Ok(self)
        } else {
            Err(ConfigError::Unsupported {
                refusals: self.refusals,
            })
        }
    }
}

/// Load, merge and validate the local configuration.
///
/// `env` is the process environment as a map (`std::env::vars().collect()`); tests pass their
/// own. Only `PATRONI_*` variables, [`ALLOW_VAR`] and `HOME` (for the default `pgpass`) are
/// read. Patroni also
/// removes the `PATRONI_*` variables from its environment so that children (postgres, callbacks)
/// do not inherit secrets; that is the caller's job.
pub fn load(
    source: ConfigSource<'_>,
    env: &BTreeMap<String, String>,
) -> Result<Loaded, ConfigError> {
    let mut warnings = Vec::new();
    let configuration_var = env
        .get("PATRONI_CONFIGURATION")
        .filter(|v| !v.trim().is_empty());
    // What the `PATRONI_*` variables contributed, to say so in the messages about keys.
    let env_doc = match (source, configuration_var) {
        (ConfigSource::EnvOnly, Some(_)) => Map::new(),
        _ => env::from_env(env).doc,
    };
    let doc = match source {
        ConfigSource::File(path) => {
            let (mut doc, w) = source::read_path(path)?;
            warnings.extend(w);
            if configuration_var.is_some() {
                warnings.push(
                    "PATRONI_CONFIGURATION is ignored because a configuration file was given"
                        .to_string(),
                );
            }
            apply_env(&mut doc, env, &mut warnings);
            doc
        }
        ConfigSource::EnvOnly => match configuration_var {
            Some(text) => {
                let mut doc = Map::new();
                source::patch(
                    &mut doc,
                    source::parse_yaml_mapping(text, "PATRONI_CONFIGURATION")?,
                );
                doc
            }
            None => {
                let mut doc = Map::new();
                apply_env(&mut doc, env, &mut warnings);
                doc
            }
        },
    };
    let home = home_dir(env);
    let (mut config, w) = parse::build(&doc, &home)?;
    warnings.extend(w);

    config.allow_unsupported = unsupported::allowed(env);
    let mut findings = unsupported::check_local(&doc);
    unsupported::mark_env(&mut findings, &env_doc);
    let mut refusals = Vec::new();
    for f in findings {
        if f.effect == unsupported::Effect::Refuse && !config.allow_unsupported {
            refusals.push(f.refusal());
        } else {
            warnings.push(f.warning());
        }
    }
    Ok(Loaded {
        config,
        warnings,
        refusals,
    })
}

/// The home directory, as Python's `os.path.expanduser('~')`: `HOME` when set and not empty,
/// else the user's entry in the password database; empty when neither gives one.
fn home_dir(env: &BTreeMap<String, String>) -> String {
    if let Some(h) = env.get("HOME").filter(|h| !h.trim().is_empty()) {
        return h.clone();
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir.display().to_string())
        .filter(|d| !d.is_empty() && d != "/nonexistent")
        .unwrap_or_default()
}

/// What a client (`patrolctl`) needs from a configuration file: the DCS, namespace and scope.
/// Like patronictl, it reads the file and `PATRONI_*` overrides without validating the rest.
#[derive(Debug, Clone)]
pub struct CtlTarget {
    pub endpoints: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: patrol_dcs::EtcdTls,
    pub namespace: String,
    pub scope: Option<String>,
}

pub fn load_ctl(
    source: ConfigSource<'_>,
    env: &BTreeMap<String, String>,
) -> Result<CtlTarget, ConfigError> {
    let doc = match source {
        ConfigSource::File(path) => load_ctl_doc(Some(path), env)?,
        ConfigSource::EnvOnly => load_ctl_doc(None, env)?,
    };
    ctl_target(&doc)
}

/// The merged document a client reads: the file (if any) with the `PATRONI_*` overrides, not
/// validated (patronictl's `Config(path, validator=None)`). `patrolctl` takes the REST API
/// credentials, TLS files and the superuser from it.
pub fn load_ctl_doc(
    path: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Map<String, Value>, ConfigError> {
    let mut warnings = Vec::new();
    let mut doc = match path {
        Some(p) => source::read_path(p)?.0,
        None => Map::new(),
    };
    apply_env(&mut doc, env, &mut warnings);
    Ok(doc)
}

/// The DCS, namespace and scope of a document from [`load_ctl_doc`].
pub fn ctl_target(doc: &Map<String, Value>) -> Result<CtlTarget, ConfigError> {
    let mut warnings = Vec::new();
    let etcd = parse::parse_dcs(doc, &mut warnings)?;
    let namespace = match doc.get("namespace") {
        Some(Value::String(ns)) => parse::normalise_namespace(ns),
        _ => "/service".to_string(),
    };
    let scope = match doc.get("scope") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    };
    Ok(CtlTarget {
        tls: etcd.tls(),
        endpoints: etcd.endpoints,
        username: etcd.username,
        password: etcd.password,
        namespace,
        scope,
    })
}

fn apply_env(
    doc: &mut Map<String, Value>,
    env: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) {
    let from_env = env::from_env(env);
    source::patch(doc, from_env.doc);
    for (section, key, value, var) in from_env.dcs_auth {
        match doc.get_mut(&section) {
            Some(Value::Object(m)) => {
                m.insert(key, Value::String(value));
            }
            _ => warnings.push(format!(
                "environment variable {var} ignored: there is no {section} section"
            )),
        }
    }
    warnings.extend(from_env.warnings);
}

/// The local configuration (Patroni's YAML sections, typed).
#[derive(Clone)]
pub struct Config {
    /// Member name, unique in the cluster (required).
    pub name: String,
    /// Cluster name (required).
    pub scope: String,
    /// Normalised: `/service` by default; `/service/`, `service` -> `/service`; empty or `/` -> `/`.
    pub namespace: String,
    pub restapi: RestApi,
    pub ctl: Ctl,
    pub etcd: Etcd,
    pub bootstrap: Bootstrap,
    pub postgresql: Postgresql,
    /// Tags as given (YAML types and key order), except that bool-ish strings in the boolean
    /// tags (`nofailover: "yes"`) become booleans and digit strings in the priority tags become
    /// integers, as PyYAML would have read them unquoted.
    pub tags: Map<String, Value>,
    /// The `watchdog` section (Patroni's defaults when absent: `automatic`, `/dev/watchdog`).
    pub watchdog: Watchdog,
    /// The `log` section (Patroni's defaults when absent).
    pub log: log::Log,
    /// The merged document (file(s) + environment). Holds secrets: print [`Config::redacted_raw`].
    pub raw: Value,
    /// [`ALLOW_VAR`] is set: keys asking for guarantees Patrol does not give were let through,
    /// and the REST API writes them into the dynamic configuration too.
    pub allow_unsupported: bool,
}

impl Config {
    /// The DCS base path: `<namespace>/<scope>`, e.g. `/service/batman` (Patroni's
    /// `re.sub('/+', '/', '/'.join(['', namespace, scope]))`).
    pub fn base_path(&self) -> String {
        let joined = format!("/{}/{}", self.namespace, self.scope);
        let mut out = String::with_capacity(joined.len());
        for c in joined.chars() {
            if !(c == '/' && out.ends_with('/')) {
                out.push(c);
            }
        }
        out
    }

    /// `raw` with every `*password` value replaced by `******` and the password in URLs with
    /// credentials (`http://user:pw@host`) masked.
    pub fn redacted_raw(&self) -> Value {
        let mut v = self.raw.clone();
        redact(&mut v);
        v
    }
}

const MASK: &str = "******";

fn redact(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let key = key.to_ascii_lowercase();
                if key.ends_with("password") && !v.is_null() {
                    *v = Value::String(MASK.to_string());
                } else if let Value::String(s) = v {
                    if let Some(masked) = mask_url_password(s) {
                        *s = masked;
                    }
                } else {
                    redact(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}

/// `scheme://user:secret@host...` -> `scheme://user:******@host...`; `None` if nothing to mask.
fn mask_url_password(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let (userinfo, host) = authority.rsplit_once('@')?;
    let (user, _) = userinfo.split_once(':')?;
    Some(format!("{scheme}://{user}:{MASK}@{host}{tail}"))
}

fn masked(secret: &Option<String>) -> Option<&'static str> {
    secret.as_ref().map(|_| MASK)
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .field("namespace", &self.namespace)
            .field("restapi", &self.restapi)
            .field("ctl", &self.ctl)
            .field("etcd", &self.etcd)
            .field("bootstrap", &self.bootstrap)
            .field("postgresql", &self.postgresql)
            .field("tags", &self.tags)
            .field("watchdog", &self.watchdog)
            .field("log", &self.log)
            .field("raw", &self.redacted_raw())
            .field("allow_unsupported", &self.allow_unsupported)
            .finish()
    }
}

/// `host:port`. Displayed as `host:port`, IPv6 hosts bracketed (`[::1]:8008`); parsed from
/// `host:port` or `[v6]:port` with [`str::parse`] (port 1..65535). The host may be empty
/// (`:8008`, all interfaces) as Patroni allows for `restapi.listen`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Username and password (REST API and patrolctl basic auth).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &MASK)
            .finish()
    }
}

/// The `restapi` section.
#[derive(Clone)]
pub struct RestApi {
    pub listen: HostPort,
    /// Defaults to `listen` (kept as is even if it is a wildcard address; a warning says so).
    pub connect_address: HostPort,
    pub authentication: Option<Credentials>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub keyfile_password: Option<String>,
    pub cafile: Option<PathBuf>,
    pub ciphers: Option<String>,
    /// `none`, `optional` or `required` (checked).
    pub verify_client: Option<String>,
    pub allowlist: Vec<String>,
    pub allowlist_include_members: bool,
    pub http_extra_headers: Map<String, Value>,
    pub https_extra_headers: Map<String, Value>,
    /// Default 5.
    pub request_queue_size: u64,
    pub server_tokens: Option<String>,
}

impl fmt::Debug for RestApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RestApi")
            .field("listen", &self.listen)
            .field("connect_address", &self.connect_address)
            .field("authentication", &self.authentication)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("keyfile_password", &masked(&self.keyfile_password))
            .field("cafile", &self.cafile)
            .field("ciphers", &self.ciphers)
            .field("verify_client", &self.verify_client)
            .field("allowlist", &self.allowlist)
            .field("allowlist_include_members", &self.allowlist_include_members)
            .field("http_extra_headers", &self.http_extra_headers)
            .field("https_extra_headers", &self.https_extra_headers)
            .field("request_queue_size", &self.request_queue_size)
            .field("server_tokens", &self.server_tokens)
            .finish()
    }
}

/// The `ctl` section (used by patrolctl).
#[derive(Clone, Default)]
pub struct Ctl {
    pub authentication: Option<Credentials>,
    pub insecure: bool,
    pub cacert: Option<PathBuf>,
    pub certfile: Option<PathBuf>,
    pub keyfile: Option<PathBuf>,
    pub keyfile_password: Option<String>,
}

impl fmt::Debug for Ctl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctl")
            .field("authentication", &self.authentication)
            .field("insecure", &self.insecure)
            .field("cacert", &self.cacert)
            .field("certfile", &self.certfile)
            .field("keyfile", &self.keyfile)
            .field("keyfile_password", &masked(&self.keyfile_password))
            .finish()
    }
}

/// The DCS: etcd, always spoken to through the v3 API.
#[derive(Clone, PartialEq, Eq)]
pub struct Etcd {
    /// Endpoints as `http(s)://host:port`, from `etcd3` (or, with a warning, `etcd`):
    /// `url` (or `proxy`), else `hosts` (list or comma string), else `host`; default port 2379
    /// (or `port`), scheme from `protocol` (default `http`). Never empty.
    pub endpoints: Vec<String>,
    /// Also taken from the userinfo of `url`.
    pub username: Option<String>,
    pub password: Option<String>,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Etcd {
    /// The TLS files for the etcd client.
    pub fn tls(&self) -> patrol_dcs::EtcdTls {
        patrol_dcs::EtcdTls {
            cacert: self.cacert.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }
    }
}

impl fmt::Debug for Etcd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Etcd")
            .field("endpoints", &self.endpoints)
            .field("username", &self.username)
            .field("password", &masked(&self.password))
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

/// `watchdog.mode`, as Patroni's `parse_mode` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogMode {
    /// `off` (also `false`, `disable`, `disabled`, and anything not recognized, with a warning).
    Off,
    /// `automatic` (also `auto`; the default): used when it can be activated.
    Automatic,
    /// `required` (also `require`): no leader key without an armed watchdog.
    Required,
}

impl WatchdogMode {
    /// Patroni's `parse_mode`: `false` is off; any other value is read as lower-case text;
    /// `None` when it is none of the known words (Patroni then warns and turns it off).
    pub fn parse(value: &Value) -> Option<WatchdogMode> {
        let text = match value {
            Value::Bool(false) => return Some(WatchdogMode::Off),
            // Python's str(True) is "True", which is no mode.
            Value::Bool(true) => "true".to_string(),
            Value::String(s) => s.trim().to_ascii_lowercase(),
            other => other.to_string().to_ascii_lowercase(),
        };
        match text.as_str() {
            "require" | "required" => Some(WatchdogMode::Required),
            "auto" | "automatic" => Some(WatchdogMode::Automatic),
            "off" | "disable" | "disabled" => Some(WatchdogMode::Off),
            _ => None,
        }
    }
}

/// `watchdog.driver`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogDriver {
    /// `default`: the Linux watchdog device (`ioctl`s on `device`).
    Default,
    /// `testing`: Patroni's test driver, plain writes to a file or FIFO (`1` keepalive, `V`
    /// magic close, `Ctimeout=N\n` set the timeout).
    Testing,
    /// Any other name: no watchdog can be used (as Patroni's `NullWatchdog`).
    Unknown,
}

/// The `watchdog` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watchdog {
    pub mode: WatchdogMode,
    /// `device`, default `/dev/watchdog`.
    pub device: PathBuf,
    /// Seconds before the leader key expires that the watchdog fires; `-1`: at half the ttl.
    /// Default 5.
    pub safety_margin: i64,
    pub driver: WatchdogDriver,
}

impl Default for Watchdog {
    fn default() -> Self {
        Watchdog {
            mode: WatchdogMode::Automatic,
            device: PathBuf::from("/dev/watchdog"),
            safety_margin: 5,
            driver: WatchdogDriver::Default,
        }
    }
}

impl Watchdog {
    /// The watchdog timeout for a leader `ttl` (Patroni's `WatchdogConfig.timeout`):
    /// `ttl - safety_margin`, or `ttl / 2` with a safety margin of `-1`.
    pub fn timeout(&self, ttl: u64) -> i64 {
        let ttl = i64::try_from(ttl).unwrap_or(i64::MAX);
        if self.safety_margin == -1 {
            ttl / 2
        } else {
            ttl.saturating_sub(self.safety_margin)
        }
    }

    /// How much later than one `loop_wait` the keepalive may come before the watchdog fires
    /// (Patroni's `timing_slack`); negative: the watchdog cannot be used safely.
    pub fn timing_slack(&self, ttl: u64, loop_wait: u64) -> i64 {
        self.timeout(ttl)
            .saturating_sub(i64::try_from(loop_wait).unwrap_or(i64::MAX))
    }
}

/// The `bootstrap` section.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// `bootstrap.dcs` as given (may be empty); integer keys (`ttl`, `loop_wait`, ...) are checked
    /// and YAML 1.1 boolean words (`on`, `yes`) in boolean keys normalised to booleans.
    pub dcs: Map<String, Value>,
    /// `initdb` (default), or the name of a custom method whose section has a `command`
    /// (a custom method without `command` falls back to `initdb` with a warning, as in Patroni).
    pub method: String,
    /// The custom method `method` names, when it is not `initdb`.
    pub custom: Option<CustomBootstrap>,
    /// initdb arguments: `--flag` / `--opt=value`.
    pub initdb: Vec<String>,
    pub pg_hba: Vec<String>,
    /// `post_bootstrap`, or its old name `post_init`.
    pub post_bootstrap: Option<String>,
    /// Whether a `bootstrap` key exists at all: Patroni only bootstraps a new cluster if it does.
    pub present: bool,
}

/// The `postgresql` section.
#[derive(Debug, Clone)]
pub struct Postgresql {
    /// As given, e.g. `127.0.0.1,127.0.0.2:5432` or `*:5432` (required).
    pub listen: String,
    /// Host part of `listen` (`listen_addresses` GUC), IPv6 brackets removed.
    pub listen_addresses: String,
    /// Port part of `listen` (5432 when absent).
    pub port: u16,
    /// Defaults to the first listen address and `port`; a wildcard gives 127.0.0.1 (warning).
    pub connect_address: HostPort,
    pub proxy_address: Option<String>,
    pub data_dir: PathBuf,
    /// Defaults to `data_dir`.
    pub config_dir: PathBuf,
    pub bin_dir: Option<PathBuf>,
    /// Overrides from `postgresql.bin_name.{pg_ctl,initdb,...}`.
    pub bin_name: BTreeMap<String, String>,
    /// Default `$HOME/pgpass`, Patroni's default (`os.path.join(os.path.expanduser('~'), 'pgpass')`).
    pub pgpass: PathBuf,
    /// Default `postgres`.
    pub database: String,
    pub authentication: Authentication,
    /// Local GUCs, without the ones Patroni controls on the command line (`port`, `wal_level`,
    /// `max_connections`, ...: dropped with a warning, as Patroni ignores them locally).
    pub parameters: Map<String, Value>,
    pub pg_hba: Option<Vec<String>>,
    pub pg_ident: Option<Vec<String>>,
    /// pg_basebackup arguments `--flag` / `--opt=value` (disallowed ones dropped with a warning).
    pub basebackup: Vec<String>,
    /// `create_replica_methods` (or `create_replica_method`), in order; default `["basebackup"]`.
    pub create_replica_methods: Vec<String>,
    /// The methods of `create_replica_methods` other than `basebackup`, by name, from their
    /// `postgresql.<method>` sections.
    pub replica_methods: BTreeMap<String, ReplicaMethod>,
    pub use_unix_socket: bool,
    pub use_unix_socket_repl: bool,
    /// Seconds, default 60.
    pub pg_ctl_timeout: u64,
    /// Local value if any (dynamic configuration may also set it).
    pub use_pg_rewind: Option<bool>,
    pub remove_data_directory_on_rewind_failure: bool,
    pub remove_data_directory_on_diverged_timelines: bool,
    /// `on_start`, `on_stop`, `on_restart`, `on_reload`, `on_role_change` -> command.
    pub callbacks: BTreeMap<String, String>,
    /// Recovery settings of a standby (`restore_command`, `archive_cleanup_command`,
    /// `recovery_min_apply_delay`, ...).
    pub recovery_conf: Map<String, Value>,
    pub custom_conf: Option<PathBuf>,
    pub pre_promote: Option<String>,
    pub before_stop: Option<String>,
    /// Default `postgresql` (-> `postgresql.conf`).
    pub config_base_name: String,
}

impl Postgresql {
    /// Path of a PostgreSQL tool: `bin_dir/<bin_name[tool] or tool>`, or just the name (found
    /// through `PATH`) without `bin_dir`.
    pub fn bin(&self, tool: &str) -> PathBuf {
        let name = self.bin_name.get(tool).map(String::as_str).unwrap_or(tool);
        match &self.bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }
}

/// `postgresql.authentication`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authentication {
    pub superuser: PgUser,
    pub replication: PgUser,
    pub rewind: Option<PgUser>,
}

/// A PostgreSQL user Patroni connects as.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUser {
    pub username: String,
    pub password: Option<String>,
    /// libpq options: `sslmode`, `sslcert`, `sslkey`, `sslpassword`, `sslrootcert`, `sslcrl`,
    /// `sslcrldir`, `gssencmode`, `channel_binding`, `sslnegotiation` (as strings).
    pub extra: BTreeMap<String, String>,
}

impl fmt::Debug for PgUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let extra: BTreeMap<&str, &str> = self
            .extra
            .iter()
            .map(|(k, v)| {
                let v = if k.ends_with("password") {
                    MASK
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        f.debug_struct("PgUser")
            .field("username", &self.username)
            .field("password", &masked(&self.password))
            .field("extra", &extra)
            .finish()
    }
}
