//! The router's configuration: a YAML file (or flags), validated before any port is bound. The
//! agent's own Patroni-style YAML can supply etcd, namespace and scope.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

/// How the read port spreads new connections over the replicas in its pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// The replica with the fewest open read sessions (ties rotate): long-lived sessions and
    /// a replica returning to the pool even out.
    LeastConnections,
    /// Each replica in turn, whatever it already carries (HAProxy's `roundrobin`).
    RoundRobin,
}

/// What to do with a read-port connection when no replica qualifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFallback {
    /// Answer with an ErrorResponse.
    Refuse,
    /// Send it to the leader.
    Leader,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub endpoints: Vec<String>,
    pub etcd_username: Option<String>,
    pub etcd_password: Option<String>,
    /// TLS to etcd (`etcd.cacert`, `cert`, `key`, or the agent config's `etcd3` ones).
    pub etcd_tls: patrol_dcs::EtcdTls,
    pub namespace: String,
    pub scope: String,
    pub write_listen: SocketAddr,
    pub read_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub admin_auth: Option<(String, String)>,
    /// Connections the admin port serves at once; more are closed when accepted.
    pub admin_max_connections: usize,
    /// An admin request's headers must arrive within this long (an idle kept-alive connection
    /// is closed after it too), so a client sending a byte a second cannot hold a slot.
    pub admin_header_timeout: Duration,
    /// A replica leaves the read pool above this lag (bytes).
    pub max_lag_bytes: u64,
    /// ... or above this replay delay, when set.
    pub max_lag_seconds: Option<f64>,
    /// It re-enters only at or below `enter_ratio * max_lag_*`.
    pub enter_ratio: f64,
    /// ... and not before this long after it left.
    pub hold_down: Duration,
    pub read_fallback: ReadFallback,
    /// The read pool holds only the synchronous (or quorum) standbys the `sync` key lists for
    /// the current leader; the others are out with a reason.
    pub read_sync_only: bool,
    pub balance: Balance,
    /// A replica leaving the pool for lag keeps its sessions (a demoted or dead one never does).
    pub keep_sessions_on_lag: bool,
    /// New write connections wait this long for a leader before they get an error.
    pub hold: Duration,
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    /// Connecting to a backend (a client connection, or a forwarded `CancelRequest`).
    pub connect_timeout: Duration,
    /// The client's first packet (startup, SSL/GSSENC request, cancel) and, after declining
    /// encryption, its startup packet; also bounds every write to a client before the relay.
    pub startup_timeout: Duration,
    /// A backend's first answer: the byte answering a forwarded SSL/GSSENC request, and the
    /// first message after a forwarded startup packet. A backend whose postmaster hangs answers
    /// neither; the client then gets an `ErrorResponse`.
    pub backend_answer_timeout: Duration,
    pub max_connections: usize,
    /// Data-path threads, each with its own single-threaded event loop accepting on the same
    /// listeners (a connection stays on the thread that accepted it). Default: one per CPU,
    /// at most 16.
    pub threads: usize,
    /// Connect to each member's host at this port instead of its `conn_url` port (a PgBouncer
    /// or other pooler running beside every PostgreSQL).
    pub backend_port: Option<u16>,
    /// After each relayed message, keep the data thread polling for this long instead of
    /// sleeping (0: off, the default).
    pub busy_poll: Duration,
    /// Relay established sessions in the kernel (BPF sockhash redirect; needs root).
    pub splice: bool,
    /// Route clients on this host at `connect()` time, straight to the backend (a cgroup BPF
    /// program; needs root and cgroup v2).
    pub redirect_local: bool,
    /// The cgroup whose processes are redirected (default: the cgroup v2 root, every process).
    pub redirect_cgroup: Option<std::path::PathBuf>,
}

/// One data-path thread per CPU (as HAProxy's `nbthread`), at most 16.
fn default_threads() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(16)
}

/// The file format. Every key is optional except the cluster's identity.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// An agent (Patroni) config to take etcd3/namespace/scope from.
    agent_config: Option<String>,
    etcd: Option<EtcdSection>,
    namespace: Option<String>,
    scope: Option<String>,
    listen: Option<ListenSection>,
    admin: Option<AdminSection>,
    read: Option<ReadSection>,
    write: Option<WriteSection>,
    probe_interval_ms: Option<u64>,
    probe_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    startup_timeout_ms: Option<u64>,
    backend_answer_timeout_ms: Option<u64>,
    max_connections: Option<usize>,
    threads: Option<usize>,
    backend_port: Option<u16>,
    busy_poll_us: Option<u64>,
    splice: Option<bool>,
    redirect_local: Option<bool>,
    redirect_cgroup: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EtcdSection {
    hosts: Option<Vec<String>>,
    username: Option<String>,
    password: Option<String>,
    cacert: Option<std::path::PathBuf>,
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenSection {
    write: Option<String>,
    read: Option<String>,
    admin: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    username: Option<String>,
    password: Option<String>,
    max_connections: Option<usize>,
    header_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadSection {
    max_lag_bytes: Option<u64>,
    max_lag_seconds: Option<f64>,
    enter_ratio: Option<f64>,
    hold_down_ms: Option<u64>,
    fallback: Option<ReadFallback>,
    sync_only: Option<bool>,
    keep_sessions_on_lag: Option<bool>,
    balance: Option<Balance>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteSection {
    hold_ms: Option<u64>,
}

/// Overrides from the command line.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub etcd_hosts: Option<String>,
    pub namespace: Option<String>,
    pub scope: Option<String>,
    pub write: Option<String>,
    pub read: Option<String>,
    pub admin: Option<String>,
    pub agent_config: Option<String>,
}

fn invalid(key: &str, msg: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("invalid configuration: {key}: {msg}")
}

fn addr(key: &str, v: &str) -> anyhow::Result<SocketAddr> {
    v.parse()
        .map_err(|_| invalid(key, format!("{v:?} is not an address:port")))
}

/// `host:port` as an endpoint URL: `https` when TLS is configured, else `http`; a URL given
/// with its scheme is kept.
fn endpoint(h: &str, tls: bool) -> String {
    if h.starts_with("http://") || h.starts_with("https://") {
        h.to_string()
    } else if tls {
        format!("https://{h}")
    } else {
        format!("http://{h}")
    }
}

/// Reads etcd (endpoints with `protocol`, credentials, TLS files), namespace and scope from an
/// agent (Patroni) configuration, as `patrolctl` does (the file only: no `PATRONI_*` overrides).
fn from_agent_config(path: &Path) -> anyhow::Result<patrol_config::CtlTarget> {
    patrol_config::load_ctl(patrol_config::ConfigSource::File(path), &Default::default())
        .map_err(|e| invalid("agent_config", format!("{}: {e}", path.display())))
}

impl Config {
    /// How to reach the cluster's keys in etcd (read only: no member name).
    pub fn etcd_settings(&self) -> patrol_dcs::EtcdSettings {
        patrol_dcs::EtcdSettings {
            endpoints: self.endpoints.clone(),
            username: self.etcd_username.clone(),
            password: self.etcd_password.clone(),
            tls: self.etcd_tls.clone(),
            prefix: patrol_dcs::cluster_prefix(&self.namespace, &self.scope),
            member_name: String::new(),
        }
    }

    /// Loads `path` (if any) and applies the overrides; every error names its key.
    pub fn load(path: Option<&Path>, o: &Overrides) -> anyhow::Result<Config> {
        let file: File = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", p.display()))?;
                if text.trim().is_empty() {
                    File::default()
                } else {
                    serde_yaml_ng::from_str(&text).map_err(|e| {
                        anyhow::anyhow!("invalid configuration in {}: {e}", p.display())
                    })?
                }
            }
            None => File::default(),
        };
        let agent = match o.agent_config.as_deref().or(file.agent_config.as_deref()) {
            Some(a) => Some(from_agent_config(Path::new(a))?),
            None => None,
        };
        let (agent_tls, agent_username, agent_password) = match &agent {
            Some(a) => (a.tls.clone(), a.username.clone(), a.password.clone()),
            None => Default::default(),
        };
        let etcd = file.etcd.unwrap_or_default();
        // The router's own `etcd` section wins over the agent config, key by key.
        let tls = patrol_dcs::EtcdTls {
            cacert: etcd.cacert.or(agent_tls.cacert),
            cert: etcd.cert.or(agent_tls.cert),
            key: etcd.key.or(agent_tls.key),
        };
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(invalid(
                "etcd",
                "cert and key go together: give both or neither",
            ));
        }
        let agent_endpoints = agent
            .as_ref()
            .map(|a| a.endpoints.clone())
            .unwrap_or_default();
        let https = agent_endpoints.iter().any(|e| e.starts_with("https://"))
            || tls != patrol_dcs::EtcdTls::default();
        let mut endpoints = agent_endpoints;
        if let Some(h) = &etcd.hosts {
            endpoints = h.iter().map(|x| endpoint(x, https)).collect();
        }
        if let Some(h) = &o.etcd_hosts {
            endpoints = h.split(',').map(|x| endpoint(x.trim(), https)).collect();
        }
        let (namespace, scope) = match agent {
            Some(a) => (Some(a.namespace), a.scope),
            None => (None, None),
        };
        if endpoints.is_empty() {
            endpoints.push("http://127.0.0.1:2379".into());
        }
        let namespace = o.namespace.clone().or(file.namespace).or(namespace);
        let scope = o.scope.clone().or(file.scope).or(scope);
        let scope = scope
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| invalid("scope", "missing (the cluster name; or give agent_config)"))?;
        let listen = file.listen.unwrap_or_default();
        let write = o
            .write
            .clone()
            .or(listen.write)
            .unwrap_or("127.0.0.1:5000".into());
        let read = o
            .read
            .clone()
            .or(listen.read)
            .unwrap_or("127.0.0.1:5001".into());
        let admin = o
            .admin
            .clone()
            .or(listen.admin)
            .unwrap_or("127.0.0.1:8080".into());
        let r = file.read.unwrap_or_default();
        let enter_ratio = r.enter_ratio.unwrap_or(0.8);
        if !(0.0..=1.0).contains(&enter_ratio) || enter_ratio == 0.0 {
            return Err(invalid("read.enter_ratio", "must be in (0, 1]"));
        }
        if let Some(s) = r.max_lag_seconds {
            if !s.is_finite() || s <= 0.0 {
                return Err(invalid("read.max_lag_seconds", "must be a positive number"));
            }
        }
        let admin_section = file.admin.unwrap_or_default();
        let admin_auth = match (admin_section.username, admin_section.password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => {
                return Err(invalid(
                    "admin",
                    "give both username and password, or neither",
                ))
            }
        };
        let ms = |v: Option<u64>, d: u64| Duration::from_millis(v.unwrap_or(d));
        let cfg = Config {
            endpoints,
            etcd_username: etcd.username.or(agent_username),
            etcd_password: etcd.password.or(agent_password),
            etcd_tls: tls,
            namespace: namespace.unwrap_or_else(|| "/service".into()),
            scope,
            write_listen: addr("listen.write", &write)?,
            read_listen: addr("listen.read", &read)?,
            admin_listen: addr("listen.admin", &admin)?,
            admin_auth,
            admin_max_connections: admin_section.max_connections.unwrap_or(64),
            admin_header_timeout: ms(admin_section.header_timeout_ms, 10_000),
            max_lag_bytes: r.max_lag_bytes.unwrap_or(1_048_576),
            max_lag_seconds: r.max_lag_seconds,
            enter_ratio,
            hold_down: ms(r.hold_down_ms, 30_000),
            read_fallback: r.fallback.unwrap_or(ReadFallback::Refuse),
            read_sync_only: r.sync_only.unwrap_or(false),
            balance: r.balance.unwrap_or(Balance::LeastConnections),
            keep_sessions_on_lag: r.keep_sessions_on_lag.unwrap_or(true),
            hold: ms(file.write.and_then(|w| w.hold_ms), 10_000),
            probe_interval: ms(file.probe_interval_ms, 500),
            probe_timeout: ms(file.probe_timeout_ms, 400),
            connect_timeout: ms(file.connect_timeout_ms, 2_000),
            startup_timeout: ms(file.startup_timeout_ms, 10_000),
            backend_answer_timeout: ms(file.backend_answer_timeout_ms, 5_000),
            max_connections: file.max_connections.unwrap_or(10_000),
            threads: file.threads.unwrap_or_else(default_threads),
            backend_port: file.backend_port,
            busy_poll: Duration::from_micros(file.busy_poll_us.unwrap_or(0)),
            splice: file.splice.unwrap_or(false),
            redirect_local: file.redirect_local.unwrap_or(false),
            redirect_cgroup: file.redirect_cgroup,
        };
        if cfg.redirect_cgroup.is_some() && !cfg.redirect_local {
            return Err(invalid(
                "redirect_cgroup",
                "only means something with redirect_local: true",
            ));
        }
        if cfg.busy_poll > Duration::from_millis(10) {
            return Err(invalid("busy_poll_us", "must be at most 10000"));
        }
        if cfg.backend_port == Some(0) {
            return Err(invalid("backend_port", "must be a port number (1-65535)"));
        }
        if !(1..=256).contains(&cfg.threads) {
            return Err(invalid("threads", "must be between 1 and 256"));
        }
        if cfg.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if cfg.admin_max_connections == 0 {
            return Err(invalid("admin.max_connections", "must be at least 1"));
        }
        for (key, d) in [
            ("connect_timeout_ms", cfg.connect_timeout),
            ("startup_timeout_ms", cfg.startup_timeout),
            ("backend_answer_timeout_ms", cfg.backend_answer_timeout),
            ("admin.header_timeout_ms", cfg.admin_header_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        if cfg.probe_interval.is_zero() {
            return Err(invalid("probe_interval_ms", "must be at least 1"));
        }
        let ports = [cfg.write_listen, cfg.read_listen, cfg.admin_listen];
        if ports[0] == ports[1] || ports[0] == ports[2] || ports[1] == ports[2] {
            return Err(invalid(
                "listen",
                "write, read and admin need distinct addresses",
            ));
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(text: &str) -> anyhow::Result<Config> {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(text.as_bytes()).expect("write");
        Config::load(Some(f.path()), &Overrides::default())
    }

    #[test]
    fn defaults_and_overrides() {
        let c = load("scope: demo\netcd: {hosts: [127.0.0.1:2379]}\n").expect("valid");
        assert_eq!(c.write_listen.port(), 5000);
        assert_eq!(c.read_listen.port(), 5001);
        assert_eq!(c.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(c.namespace, "/service");
        assert_eq!(c.read_fallback, ReadFallback::Refuse);
        assert_eq!(c.balance, Balance::LeastConnections);
        assert!(
            !c.read_sync_only,
            "every streaming replica reads unless asked otherwise"
        );
        assert!((1..=16).contains(&c.threads), "{}", c.threads);
        assert_eq!(c.backend_port, None);
        let c = load("scope: demo\nthreads: 3\nbackend_port: 6432\n").expect("valid");
        assert_eq!((c.threads, c.backend_port), (3, Some(6432)));
        assert!(
            c.busy_poll.is_zero(),
            "busy polling is off unless asked for"
        );
        assert!(!c.splice, "kernel splicing is off unless asked for");
        assert_eq!(c.backend_answer_timeout, Duration::from_secs(5));
        assert_eq!(c.admin_max_connections, 64);
        assert_eq!(c.admin_header_timeout, Duration::from_secs(10));
        let c = load(
            "scope: demo\nbackend_answer_timeout_ms: 1500\n\
             admin: {max_connections: 8, header_timeout_ms: 2000, username: a, password: b}\n",
        )
        .expect("valid");
        assert_eq!(c.backend_answer_timeout, Duration::from_millis(1500));
        assert_eq!(c.admin_max_connections, 8);
        assert_eq!(c.admin_header_timeout, Duration::from_secs(2));
        assert_eq!(c.admin_auth, Some(("a".into(), "b".into())));
        let c = load("scope: demo\nread: {balance: round_robin}\n").expect("valid");
        assert_eq!(c.balance, Balance::RoundRobin);
        let c = load("scope: demo\nread: {sync_only: true, fallback: leader}\n").expect("valid");
        assert!(c.read_sync_only);
        assert_eq!(c.read_fallback, ReadFallback::Leader);
        assert!(load("scope: demo\nsplice: true\n").expect("valid").splice);
        assert!(
            !c.redirect_local,
            "connect-time redirection is off unless asked for"
        );
        let c = load("scope: demo\nredirect_local: true\nredirect_cgroup: /sys/fs/cgroup/app\n")
            .expect("valid");
        assert!(c.redirect_local);
        assert_eq!(c.redirect_cgroup, Some("/sys/fs/cgroup/app".into()));
    }

    #[test]
    fn errors_name_the_key() {
        for (text, key) in [
            ("etcd: {hosts: [a]}\n", "scope"),
            ("scope: x\nlisten: {write: nonsense}\n", "listen.write"),
            ("scope: x\nread: {enter_ratio: 2}\n", "read.enter_ratio"),
            ("scope: x\nadmin: {username: a}\n", "admin"),
            (
                "scope: x\nadmin: {max_connections: 0}\n",
                "admin.max_connections",
            ),
            (
                "scope: x\nadmin: {header_timeout_ms: 0}\n",
                "admin.header_timeout_ms",
            ),
            (
                "scope: x\nbackend_answer_timeout_ms: 0\n",
                "backend_answer_timeout_ms",
            ),
            ("scope: x\nconnect_timeout_ms: 0\n", "connect_timeout_ms"),
            ("scope: x\nthreads: 0\n", "threads"),
            ("scope: x\nbackend_port: 0\n", "backend_port"),
            ("scope: x\nbusy_poll_us: 20000\n", "busy_poll_us"),
            ("scope: x\nsplice: yes please\n", "splice"),
            (
                "scope: x\nredirect_cgroup: /sys/fs/cgroup\n",
                "redirect_cgroup",
            ),
            ("scope: x\nredirect_local: 1\n", "redirect_local"),
            ("scope: x\nread: {balance: random}\n", "balance"),
            ("scope: x\nread: {sync_only: yes}\n", "read.sync_only"),
            ("scope: x\nread: {sync_only: 1}\n", "read.sync_only"),
            ("scope: x\nbackend_port: 70000\n", "backend_port"),
            (
                "scope: x\nlisten: {write: '127.0.0.1:1', read: '127.0.0.1:1'}\n",
                "listen",
            ),
        ] {
            let e = load(text).expect_err(text).to_string();
            assert!(e.contains(key), "{text}: {e}");
        }
        let e = load("scope: x\nbogus: 1\n")
            .expect_err("unknown key")
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn agent_config_supplies_the_cluster() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(
            b"scope: batman\nnamespace: /svc/\netcd3: {hosts: [10.0.0.1:2379, 10.0.0.2:2379]}\n",
        )
        .expect("write");
        let o = Overrides {
            agent_config: Some(f.path().display().to_string()),
            ..Overrides::default()
        };
        let c = Config::load(None, &o).expect("valid");
        assert_eq!(c.scope, "batman");
        assert_eq!(c.namespace, "/svc");
        assert_eq!(c.endpoints.len(), 2);
        assert_eq!(c.etcd_tls, patrol_dcs::EtcdTls::default());
    }

    #[test]
    fn etcd_tls_and_credentials_from_the_agent_config_or_the_router_file() {
        let mut f = tempfile::NamedTempFile::new().expect("temp file");
        f.write_all(
            b"scope: s\netcd3: {hosts: [10.0.0.1:2379], protocol: https, username: u, password: p, \
              cacert: /etc/ca.pem, cert: /etc/c.pem, key: /etc/k.pem}\n",
        )
        .expect("write");
        let agent = f.path().display().to_string();
        let c = load(&format!("agent_config: {agent}\n")).expect("valid");
        assert_eq!(c.endpoints, ["https://10.0.0.1:2379"]);
        assert_eq!(
            (c.etcd_username.as_deref(), c.etcd_password.as_deref()),
            (Some("u"), Some("p"))
        );
        assert_eq!(c.etcd_tls.cacert.as_deref(), Some(Path::new("/etc/ca.pem")));
        assert_eq!(c.etcd_tls.key.as_deref(), Some(Path::new("/etc/k.pem")));
        // The router's own etcd section wins, key by key; a CA alone means https.
        let c = load("scope: s\netcd: {hosts: ['127.0.0.1:2379'], cacert: /r/ca.pem}\n")
            .expect("valid");
        assert_eq!(c.endpoints, ["https://127.0.0.1:2379"]);
        assert_eq!(c.etcd_tls.cacert.as_deref(), Some(Path::new("/r/ca.pem")));
        let e = load("scope: s\netcd: {cert: /r/c.pem}\n").expect_err("cert without key");
        assert!(e.to_string().contains("etcd"), "{e}");
    }
}
