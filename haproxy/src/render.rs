//! Rendering `haproxy.cfg` from the cluster's members (pure), and rewriting only the `server`
//! lines of an existing file when members join or leave.

use std::fmt::Write;

use patrol_dcs::Cluster;

/// The two listens the configuration defines (and `patrol-router` drives).
pub const PRIMARY: &str = "primary";
pub const REPLICAS: &str = "replicas";

/// One PostgreSQL node as HAProxy sees it: its address and its agent's REST port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Server {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub api_host: String,
    pub api_port: u16,
}

impl Server {
    /// The servers of a cluster from its member keys (`conn_url`, `api_url`), sorted by name.
    /// Members without a usable `conn_url` or `api_url` are left out.
    pub fn from_cluster(c: &Cluster) -> Vec<Server> {
        Server::from_cluster_checked(c).0
    }

    /// [`Server::from_cluster`], and one line per member left out, naming it and why. A host
    /// or port goes into the configuration only after `patrol_dcs::parse_conn_url` or
    /// `parse_api_url` accepted it (an address or a DNS name, a port from 1 to 65535): a
    /// member key is written by whoever can write to etcd, and a newline in a host would add
    /// directives to haproxy.cfg.
    pub fn from_cluster_checked(c: &Cluster) -> (Vec<Server>, Vec<String>) {
        let mut skipped = Vec::new();
        let mut out: Vec<Server> = c
            .members
            .iter()
            .filter_map(|m| {
                let addresses = m
                    .data
                    .host_port()
                    .zip(patrol_dcs::parse_api_url(&m.data.api_url));
                let Some(((host, port), (api_host, api_port))) = addresses else {
                    let why = patrol_dcs::member_address_problem(&m.data)
                        .unwrap_or_else(|| "api_url is missing".into());
                    skipped.push(format!("member {:?} is skipped: its {why}", m.name));
                    return None;
                };
                Some(Server {
                    name: server_name(&m.name),
                    host,
                    port,
                    api_host,
                    api_port,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        (out, skipped)
    }

    /// The `server` line (without indentation); options come from `default-server`.
    pub fn line(&self) -> String {
        format!(
            "server {} {}:{} check addr {} port {}",
            self.name,
            bracket(&self.host),
            self.port,
            bracket(&self.api_host),
            self.api_port
        )
    }

    /// Parses a line written by [`Server::line`] (leading whitespace allowed).
    pub fn parse_line(line: &str) -> Option<Server> {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() != 8 || w[0] != "server" || w[3] != "check" || w[4] != "addr" || w[6] != "port" {
            return None;
        }
        let (host, port) = split_host_port(w[2])?;
        Some(Server {
            name: w[1].to_string(),
            host,
            port,
            api_host: w[5]
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            api_port: w[7].parse().ok()?,
        })
    }
}

/// A member name as an HAProxy server name (letters, digits, `-`, `_`, `.`, `:`; anything
/// else becomes `_`). The router uses the same mapping when it drives the runtime API.
pub fn server_name(member: &str) -> String {
    let s: String = member
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "_".into()
    } else {
        s
    }
}

/// `host:port` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    if let Some(v6) = s.strip_prefix('[') {
        let (h, p) = v6.split_once("]:")?;
        return Some((h.to_string(), p.parse().ok()?));
    }
    let (h, p) = s.rsplit_once(':')?;
    Some((h.to_string(), p.parse().ok()?))
}

fn bracket(h: &str) -> String {
    if h.contains(':') {
        format!("[{h}]")
    } else {
        h.to_string()
    }
}

/// What the generated configuration listens on and how it checks.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub write_bind: String,
    pub read_bind: String,
    pub stats_bind: String,
    pub stats_user: String,
    pub stats_password: String,
    /// Runtime API socket (`stats socket ... level admin expose-fd listeners`), which
    /// `patrol-router --haproxy-socket` drives.
    pub admin_socket: Option<String>,
    /// `server-state-file`: saved before a reload and loaded by the new worker, so servers the
    /// router marked down stay down across the reload.
    pub server_state_file: Option<String>,
    /// `bind` of a Prometheus exporter frontend (HAProxy built with PROMEX).
    pub prometheus_bind: Option<String>,
    /// `/replica?lag=`: a replica further behind (bytes) fails its check.
    pub max_lag_bytes: u64,
    pub check_inter_ms: u64,
    /// Check interval while a server is changing state (after one failure or success).
    pub check_fastinter_ms: u64,
    pub check_timeout_ms: u64,
    pub fall: u32,
    pub rise: u32,
    /// Per server.
    pub maxconn: u32,
    pub global_maxconn: u32,
}

impl Default for Options {
    /// For an HAProxy driven by `patrol-router` (runtime API): the router flips server states
    /// within milliseconds of the etcd event; the checks are the safety net and still react in
    /// about a second on their own.
    fn default() -> Self {
        Options {
            write_bind: "*:5000".into(),
            read_bind: "*:5001".into(),
            stats_bind: "*:7000".into(),
            stats_user: "admin".into(),
            stats_password: "admin".into(),
            admin_socket: None,
            server_state_file: None,
            prometheus_bind: None,
            max_lag_bytes: 1_048_576,
            check_inter_ms: 1000,
            check_fastinter_ms: 250,
            check_timeout_ms: 2000,
            fall: 2,
            rise: 2,
            maxconn: 1000,
            global_maxconn: 4096,
        }
    }
}

impl Options {
    /// For users who keep HAProxy alone (no runtime driving): the timings of Patroni's own
    /// template (`inter 3s fall 3 rise 2`, `timeout check 5s`, `maxconn 100` per server).
    pub fn standalone() -> Options {
        Options {
            check_inter_ms: 3000,
            check_fastinter_ms: 3000,
            check_timeout_ms: 5000,
            fall: 3,
            rise: 2,
            maxconn: 100,
            global_maxconn: 1000,
            ..Options::default()
        }
    }
}

fn ms(v: u64) -> String {
    if (v / 1000) * 1000 == v {
        format!("{}s", v / 1000)
    } else {
        format!("{v}ms")
    }
}

/// The server lines of one listen, indented.
fn server_lines(servers: &[Server]) -> String {
    let mut s = String::new();
    for srv in servers {
        let _ = writeln!(s, "    {}", srv.line());
    }
    s
}

/// The configuration: `primary` (write) and `replicas` (read) listens with every member as a
/// server, checked against its agent's REST API (`/primary`;
/// `/replica?lag=<limit>&replication_state=streaming`), sessions shut down when a server goes
/// down, a stats listen with a login, and optionally the runtime socket, a server-state file
/// and a Prometheus frontend.
pub fn render(scope: &str, servers: &[Server], o: &Options) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# Generated by Patrol for cluster {scope}: `patrol-router haproxy-config`.\n\
         # patrol-router (--haproxy-config) rewrites only the `server` lines of the two listens."
    );
    let _ = writeln!(s, "global\n    maxconn {}", o.global_maxconn);
    s.push_str("    log stdout format raw local0 notice\n");
    if let Some(sock) = &o.admin_socket {
        // A relative path needs the `unix@` prefix (else HAProxy parses it as host:port).
        let addr = if sock.starts_with('/') || sock.contains('@') {
            sock.clone()
        } else {
            format!("unix@{sock}")
        };
        let _ = writeln!(
            s,
            "    stats socket {addr} mode 600 level admin expose-fd listeners"
        );
    }
    if let Some(f) = &o.server_state_file {
        let _ = writeln!(s, "    server-state-file {f}");
    }
    s.push_str("\ndefaults\n    mode tcp\n    log global\n");
    if o.server_state_file.is_some() {
        s.push_str("    load-server-state-from-file global\n");
    }
    let _ = write!(
        s,
        "    retries 2\n    timeout queue 5s\n    timeout connect 4s\n    timeout client 30m\n    timeout server 30m\n    timeout check {}\n",
        ms(o.check_timeout_ms)
    );
    let _ = write!(
        s,
        "\nlisten stats\n    mode http\n    bind {}\n    stats enable\n    stats uri /\n    stats refresh 5s\n    stats auth {}:{}\n",
        o.stats_bind, o.stats_user, o.stats_password
    );
    if let Some(b) = &o.prometheus_bind {
        let _ = write!(
            s,
            "\nfrontend prometheus\n    mode http\n    bind {b}\n    http-request use-service prometheus-exporter if {{ path /metrics }}\n    no log\n"
        );
    }
    let fastinter = if o.check_fastinter_ms != o.check_inter_ms {
        format!(" fastinter {}", ms(o.check_fastinter_ms))
    } else {
        String::new()
    };
    let default_server = format!(
        "    default-server inter {}{fastinter} fall {} rise {} on-marked-down shutdown-sessions maxconn {}\n",
        ms(o.check_inter_ms),
        o.fall,
        o.rise,
        o.maxconn
    );
    let _ = write!(
        s,
        "\nlisten {PRIMARY}\n    bind {}\n    option httpchk OPTIONS /primary\n    http-check expect status 200\n{default_server}{}",
        o.write_bind,
        server_lines(servers)
    );
    let _ = write!(
        s,
        "\nlisten {REPLICAS}\n    bind {}\n    balance leastconn\n    option httpchk OPTIONS /replica?lag={}&replication_state=streaming\n    http-check expect status 200\n{default_server}{}",
        o.read_bind,
        o.max_lag_bytes,
        server_lines(servers)
    );
    s
}

/// Section keywords that start a new block in `haproxy.cfg`.
const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "listen",
    "frontend",
    "backend",
    "peers",
    "resolvers",
    "userlist",
    "program",
    "mailers",
    "cache",
    "http-errors",
    "ring",
    "log-forward",
    "fcgi-app",
];

/// The section a line starts (`("listen", "primary")`), if it starts one.
fn section_of(line: &str) -> Option<(&str, &str)> {
    if line.starts_with(char::is_whitespace) {
        return None;
    }
    let mut w = line.split_whitespace();
    let kw = w.next()?;
    SECTIONS.contains(&kw).then(|| (kw, w.next().unwrap_or("")))
}

fn is_managed(section: Option<(&str, &str)>) -> bool {
    matches!(section, Some(("listen" | "backend", n)) if n == PRIMARY || n == REPLICAS)
}

/// The servers of the `primary` listen of a configuration (as written by [`render`]).
pub fn servers_in(config: &str) -> Vec<Server> {
    let mut section = None;
    let mut out = Vec::new();
    for line in config.lines() {
        if let Some(s) = section_of(line) {
            section = Some(s);
            continue;
        }
        if matches!(section, Some(("listen" | "backend", n)) if n == PRIMARY) {
            if let Some(s) = Server::parse_line(line) {
                out.push(s);
            }
        }
    }
    out
}

/// Replaces the `server` lines of the `primary` and `replicas` listens with `servers`, keeping
/// everything else (binds, checks, timeouts, other sections) as it is. Fails if either listen
/// is missing.
pub fn replace_servers(config: &str, servers: &[Server]) -> Result<String, String> {
    let lines = server_lines(servers);
    let mut out = String::with_capacity(config.len() + lines.len());
    let mut section: Option<(&str, &str)> = None;
    let mut found = Vec::new();
    // Pending insertion for the current managed section: lines are inserted at its first
    // `server` line, or after its last non-blank line when it has none.
    let mut inserted = false;
    let mut held_blank = String::new();
    let close = |out: &mut String, inserted: &mut bool, section: Option<(&str, &str)>| {
        if is_managed(section) && !*inserted {
            out.push_str(&lines);
            *inserted = true;
        }
    };
    for line in config.split_inclusive('\n') {
        if let Some(next) = section_of(line.trim_end_matches('\n')) {
            close(&mut out, &mut inserted, section);
            out.push_str(&held_blank);
            held_blank.clear();
            section = Some(next);
            inserted = false;
            if is_managed(section) {
                found.push(next.1.to_string());
            }
            out.push_str(line);
            continue;
        }
        if !is_managed(section) {
            out.push_str(line);
            continue;
        }
        let t = line.trim_start();
        if t.starts_with("server ") || t.starts_with("server\t") {
            if !inserted {
                out.push_str(&held_blank);
                held_blank.clear();
                out.push_str(&lines);
                inserted = true;
            }
            continue;
        }
        if t.trim().is_empty() || t.starts_with('#') {
            // Blank lines and comments between sections stay with the next section.
            held_blank.push_str(line);
            continue;
        }
        out.push_str(&held_blank);
        held_blank.clear();
        out.push_str(line);
    }
    if !config.ends_with('\n') && !config.is_empty() && held_blank.is_empty() {
        out.push('\n');
    }
    close(&mut out, &mut inserted, section);
    out.push_str(&held_blank);
    for want in [PRIMARY, REPLICAS] {
        if !found.iter().any(|f| f == want) {
            return Err(format!("the configuration has no `listen {want}` section"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use patrol_dcs::Kv;

    fn kv(n: &str, pg: u16, api: u16) -> Kv {
        Kv {
            key: format!("members/{n}"),
            value: format!(
                r#"{{"conn_url":"postgres://127.0.0.1:{pg}/postgres","api_url":"http://127.0.0.1:{api}/patroni","state":"running","role":"replica","version":"4.1.4"}}"#
            ),
            mod_revision: 1,
            lease: 1,
        }
    }

    #[test]
    fn renders_both_listens_with_every_member() {
        let c = Cluster::from_kvs(1, &[kv("pg1", 5433, 8009), kv("pg0", 5432, 8008)]);
        let servers = Server::from_cluster(&c);
        assert_eq!(servers[0].name, "pg0");
        let cfg = render(
            "demo",
            &servers,
            &Options {
                admin_socket: Some("/run/h.sock".into()),
                ..Options::default()
            },
        );
        assert!(cfg.contains("listen primary\n    bind *:5000\n    option httpchk OPTIONS /primary\n    http-check expect status 200\n    default-server inter 1s fastinter 250ms fall 2 rise 2 on-marked-down shutdown-sessions maxconn 1000\n    server pg0 127.0.0.1:5432 check addr 127.0.0.1 port 8008\n    server pg1 127.0.0.1:5433 check addr 127.0.0.1 port 8009\n"), "{cfg}");
        assert!(
            cfg.contains("option httpchk OPTIONS /replica?lag=1048576&replication_state=streaming")
        );
        assert!(cfg.contains("stats socket /run/h.sock mode 600 level admin"));
        assert!(cfg.contains("stats auth admin:admin"));
        assert!(!cfg.contains("server-state"));
        let sa = render("demo", &servers, &Options::standalone());
        assert!(sa.contains(
            "default-server inter 3s fall 3 rise 2 on-marked-down shutdown-sessions maxconn 100\n"
        ));
        assert!(sa.contains("timeout check 5s\n"));
        assert!(!sa.contains("stats socket"));
    }

    #[test]
    fn server_lines_round_trip_and_names_are_sanitized() {
        let s = Server {
            name: server_name("node 1/a"),
            host: "::1".into(),
            port: 5432,
            api_host: "::1".into(),
            api_port: 8008,
        };
        assert_eq!(s.name, "node_1_a");
        assert_eq!(
            s.line(),
            "server node_1_a [::1]:5432 check addr [::1] port 8008"
        );
        assert_eq!(Server::parse_line(&format!("    {}", s.line())), Some(s));
        assert_eq!(
            patrol_dcs::parse_api_url("https://u:p@db1.example:8443/patroni"),
            Some(("db1.example".into(), 8443))
        );
    }

    #[test]
    fn members_with_hostile_hosts_are_skipped_and_named() {
        let hostile = |name: &str, conn: &str, api: &str| Kv {
            key: format!("members/{name}"),
            // Rust's `{:?}` of these strings (only `\n` and `\t` to escape) is valid JSON.
            value: format!(
                r#"{{"conn_url":{conn:?},"api_url":{api:?},"state":"running","role":"replica"}}"#
            ),
            mod_revision: 1,
            lease: 0,
        };
        let c = Cluster::from_kvs(
            1,
            &[
                kv("pg0", 5432, 8008),
                hostile(
                    "evil1",
                    "postgres://127.0.0.1\n    server injected 10.9.9.9:5432/postgres",
                    "http://127.0.0.1:8009/patroni",
                ),
                hostile(
                    "evil2",
                    "postgres://127.0.0.1:5433/postgres",
                    "http://x\n    stats admin if TRUE\n    server y 10.9.9.9:1/patroni",
                ),
                hostile(
                    "evil3",
                    "postgres://127.0.0.1\tsslmode=disable:5434/postgres",
                    "http://127.0.0.1:8010/patroni",
                ),
                hostile(
                    "evil4",
                    "postgres://127.0.0.1:0/postgres",
                    "http://127.0.0.1:8011/patroni",
                ),
            ],
        );
        let (servers, skipped) = Server::from_cluster_checked(&c);
        assert_eq!(
            servers.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
            ["pg0"]
        );
        assert_eq!(skipped.len(), 4, "{skipped:?}");
        for (line, name) in skipped.iter().zip(["evil1", "evil2", "evil3", "evil4"]) {
            assert!(
                line.starts_with(&format!("member \"{name}\" is skipped: its ")),
                "{line}"
            );
            assert!(!line.contains('\n') && !line.contains('\t'), "{line:?}");
        }
        let cfg = render("demo", &servers, &Options::default());
        assert!(!cfg.contains("injected") && !cfg.contains("stats admin if TRUE"));
        assert!(!cfg.contains("10.9.9.9"), "{cfg}");
    }

    #[test]
    fn replace_servers_touches_only_server_lines() {
        let c = Cluster::from_kvs(1, &[kv("pg0", 5432, 8008), kv("pg1", 5433, 8009)]);
        let two = Server::from_cluster(&c);
        let mut cfg = render("demo", &two, &Options::default());
        // A user's own edit elsewhere survives.
        cfg = cfg.replace("timeout queue 5s", "timeout queue 7s");
        assert_eq!(replace_servers(&cfg, &two).expect("listens exist"), cfg);
        let c3 = Cluster::from_kvs(
            1,
            &[
                kv("pg0", 5432, 8008),
                kv("pg1", 5433, 8009),
                kv("pg2", 5434, 8010),
            ],
        );
        let three = Server::from_cluster(&c3);
        let grown = replace_servers(&cfg, &three).expect("listens exist");
        assert_eq!(
            grown,
            render("demo", &three, &Options::default())
                .replace("timeout queue 5s", "timeout queue 7s")
        );
        assert_eq!(servers_in(&grown), three);
        // Down to none and back.
        let none = replace_servers(&grown, &[]).expect("listens exist");
        assert!(servers_in(&none).is_empty());
        assert!(none.contains("listen replicas\n"));
        assert_eq!(
            replace_servers(&none, &three).expect("listens exist"),
            grown
        );
        assert!(replace_servers("global\n    maxconn 1\n", &three).is_err());
    }
}
