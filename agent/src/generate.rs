//! `patrol --generate-sample-config` and `patrol --generate-config [--dsn DSN]`: the IO of
//! Patroni's configuration generator (the host's name and address, `postgres --version`, the
//! connection to the running server, its pg_hba.conf and pg_ident.conf, the postmaster's
//! executable) around the pure steps of [`patrol_config::generate`], in Patroni's order and
//! with its messages. Dangerous: the running instance's file holds the superuser's password,
//! so it is written with mode 0600.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::ToSocketAddrs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use patrol_config::generate::{self, HostAddress, Running, Superuser, NO_VALUE};
use patrol_config::PgUser;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::NoTls;

/// What to generate.
#[derive(Debug, Clone)]
pub enum Mode {
    /// A sample with Patroni's defaults (`--generate-sample-config`).
    Sample,
    /// The configuration of the running server `dsn` reaches (`--generate-config`).
    Running { dsn: Option<String> },
}

/// Generates the configuration and writes it to `output` (created with its directories,
/// mode 0600) or to stdout. `Err` is the message to print (Patroni's); the exit code is 1.
pub fn run(
    mode: &Mode,
    output: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<(), String> {
    let unexpected = |e: &dyn std::fmt::Display| format!("Unexpected exception: {e}");
    let env_config = generate::env_configuration(env).map_err(|e| unexpected(&e))?;
    let template = generate::template(&host_address(), &env_config);
    let config = match mode {
        Mode::Sample => {
            let major = postgres_major(&generate::sample_postgres_binary(&template))?;
            generate::sample(template, major)
        }
        Mode::Running { dsn } => {
            let running =
                Running::new(template, env_config, dsn.as_deref()).map_err(|e| e.to_string())?;
            from_running_instance(running, env)?
        }
    };
    let text = generate::render(&config);
    match output {
        Some(path) => write_file(path, &text).map_err(|e| unexpected(&e)),
        None => std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| unexpected(&e)),
    }
}

/// The host's name and its first address, IPv4 first (Patroni's `get_address`), `#FIXME`
/// with a warning when either cannot be had.
fn host_address() -> HostAddress {
    let found = nix::unistd::gethostname()
        .map_err(|e| e.to_string())
        .and_then(|h| {
            h.into_string()
                .map_err(|_| "the host name is not UTF-8".to_string())
        })
        .and_then(|hostname| {
            let addrs: Vec<std::net::SocketAddr> = (hostname.as_str(), 0)
                .to_socket_addrs()
                .map_err(|e| e.to_string())?
                .collect();
            let first = addrs
                .iter()
                .find(|a| a.is_ipv4())
                .or_else(|| addrs.first())
                .ok_or_else(|| format!("no address for {hostname}"))?;
            Ok(HostAddress {
                ip: first.ip().to_string(),
                hostname,
            })
        });
    found.unwrap_or_else(|e| {
        eprintln!("WARNING: Failed to obtain address: {e}");
        HostAddress {
            hostname: NO_VALUE.into(),
            ip: NO_VALUE.into(),
        }
    })
}

/// `<postgres> --version` as Patroni's `get_major_version` reads it (150000 for 15.x).
fn postgres_major(binary: &Path) -> Result<u32, String> {
    let out = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|e| format!("Failed to get postgres version: {}: {e}", binary.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    match generate::major_version_number(&text) {
        Some(v) if out.status.success() => Ok(v),
        _ => Err(format!(
            "Failed to get postgres version: {} --version printed {:?}",
            binary.display(),
            text.trim()
        )),
    }
}

/// Patroni's `RunningClusterConfigGenerator.generate`: the superuser (asking for a password
/// nobody gave), the server's settings, its pg_hba.conf and pg_ident.conf when they are the
/// default ones, and the postmaster's binary directory.
fn from_running_instance(
    mut running: Running,
    env: &BTreeMap<String, String>,
) -> Result<serde_json::Map<String, serde_json::Value>, String> {
    let mut su = running.superuser(env, &os_user(env));
    if su.password.is_none() {
        let typed = ask_password()?;
        running.set_password(&mut su, typed);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("Unexpected exception: cannot start the runtime: {e}"))?;
    rt.block_on(read_server(&mut running, &su, env))?;
    if let Some(path) = running.hba_file() {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("Failed to read pg_hba.conf: {}: {e}", path.display()))?;
        running.set_hba(&text);
    }
    if let Some(path) = running.ident_file() {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("Failed to read pg_ident.conf: {}: {e}", path.display()))?;
        running.set_ident(&text);
    }
    let data_dir = running.data_dir().unwrap_or_default().to_string();
    running.set_bin_dir(&postmaster_bin_dir(Path::new(&data_dir))?);
    Ok(running.finish())
}

/// Connected as `su`: the server's version, whether `su` is a superuser, and its settings.
/// Every failure on the connection is Patroni's "Failed to establish PostgreSQL connection".
async fn read_server(
    running: &mut Running,
    su: &Superuser,
    env: &BTreeMap<String, String>,
) -> Result<(), String> {
    let failed =
        |e: &dyn std::fmt::Display| format!("Failed to establish PostgreSQL connection: {e}");
    let pg_failed = |e: tokio_postgres::Error| failed(&with_causes(&e));
    let (config, tls) = connection(running.dsn(), su, env).map_err(|e| failed(&e))?;
    let client = match tls.connector {
        Some(connector) => {
            let (client, conn) = config.connect(connector).await.map_err(pg_failed)?;
            tokio::spawn(conn);
            client
        }
        None => {
            let (client, conn) = config.connect(NoTls).await.map_err(pg_failed)?;
            tokio::spawn(conn);
            client
        }
    };
    let row = client
        .query_one(
            "SELECT pg_catalog.current_setting('server_version_num')::int, \
             pg_catalog.current_setting('is_superuser')",
            &[],
        )
        .await
        .map_err(pg_failed)?;
    let version: i32 = row.get(0);
    let is_superuser: String = row.get(1);
    running
        .connected(i64::from(version), is_superuser == "on")
        .map_err(|e| e.to_string())?;
    let rows = client
        .query(generate::SETTINGS_QUERY, &[&generate::required_settings()])
        .await
        .map_err(pg_failed)?;
    let settings: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    running.settings(&settings, env);
    Ok(())
}

/// The options libpq reads from these variables when the DSN does not give them (the
/// superuser's own options come through [`Running::superuser`]).
const LIBPQ_VARIABLES: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("application_name", "PGAPPNAME"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("options", "PGOPTIONS"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
];

/// Options the TLS setup ([`crate::postgres::client_tls`]) or the user takes, not given to
/// tokio-postgres's parser.
const NOT_PASSED: &[&str] = &[
    "user",
    "password",
    "sslmode",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslpassword",
    "sslcrl",
    "sslcrldir",
    "gssencmode",
];

/// Where libpq looks for a server's socket when no host is given (Debian's directory, then
/// PostgreSQL's own default).
const DEFAULT_SOCKET_DIRS: &[&str] = &["/var/run/postgresql", "/tmp"];

/// The connection `dsn` (parsed, with the libpq variables as fallbacks) describes, as `su`,
/// with `su`'s TLS options over TCP.
fn connection(
    dsn: &BTreeMap<String, String>,
    su: &Superuser,
    env: &BTreeMap<String, String>,
) -> Result<(tokio_postgres::Config, crate::postgres::ClientTls), String> {
    if let Some(mode) = su.options.get("gssencmode") {
        if mode == "require" {
            return Err("gssencmode=require: GSSAPI encryption is not supported".into());
        }
    }
    let mut options: BTreeMap<&str, &str> = dsn
        .iter()
        .filter(|(k, _)| !NOT_PASSED.contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    for (option, var) in LIBPQ_VARIABLES {
        if let Some(v) = env.get(*var).filter(|v| !v.is_empty()) {
            options.entry(option).or_insert(v);
        }
    }
    let keywords: Vec<String> = options
        .iter()
        .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect();
    let mut config =
        tokio_postgres::Config::from_str(&keywords.join(" ")).map_err(|e| with_causes(&e))?;
    config.user(&su.username);
    if let Some(pw) = su.password.as_deref().filter(|p| !p.is_empty()) {
        config.password(pw);
    }
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        for dir in DEFAULT_SOCKET_DIRS {
            config.host_path(dir);
        }
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    let user = PgUser {
        username: su.username.clone(),
        password: su.password.clone(),
        extra: su.options.clone(),
    };
    let only_sockets = config.get_hostaddrs().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|h| matches!(h, Host::Unix(_)));
    let tls = if only_sockets {
        crate::postgres::ClientTls {
            mode: SslMode::Disable,
            connector: None,
        }
    } else {
        crate::postgres::client_tls(&user)?
    };
    config.ssl_mode(tls.mode);
    Ok((config, tls))
}

/// An error and its causes, `: `-separated (tokio-postgres's own text names only the kind).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The user running this (Python's `getpass.getuser`: `LOGNAME`, `USER`, `LNAME`,
/// `USERNAME`, else the password database).
fn os_user(env: &BTreeMap<String, String>) -> String {
    ["LOGNAME", "USER", "LNAME", "USERNAME"]
        .iter()
        .find_map(|v| env.get(*v).filter(|u| !u.is_empty()).cloned())
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
        })
        .unwrap_or_default()
}

/// Asks for the superuser's password on the terminal (without echo), or reads a line from
/// stdin when there is no terminal, as Python's `getpass`.
fn ask_password() -> Result<String, String> {
    const PROMPT: &str = "Please enter the user password:";
    match rpassword::prompt_password(PROMPT) {
        Ok(p) => Ok(p),
        Err(_) => {
            eprint!("{PROMPT}");
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| format!("Unexpected exception: reading the password: {e}"))?;
            eprintln!();
            Ok(line.trim_end_matches(['\n', '\r']).to_string())
        }
    }
}

/// The directory of the running postmaster's executable, from `postmaster.pid`.
fn postmaster_bin_dir(data_dir: &Path) -> Result<String, String> {
    let pid_file = data_dir.join("postmaster.pid");
    let text = std::fs::read_to_string(&pid_file).map_err(|e| {
        format!(
            "Error while reading postmaster.pid file: {}: {e}",
            pid_file.display()
        )
    })?;
    let pid: u32 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or("Failed to obtain postmaster pid from postmaster.pid file")?;
    let exe: PathBuf = match std::fs::read_link(format!("/proc/{pid}/exe")) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err("Obtained postmaster pid doesn't exist.".into())
        }
        Err(e) => {
            return Err(format!(
            "Unexpected exception: cannot read the executable of the postmaster (pid {pid}): {e}"
        ))
        }
    };
    Ok(exe
        .parent()
        .map(|d| d.display().to_string())
        .unwrap_or_default())
}

/// Writes `text` to `path` (mode 0600: it may hold passwords), creating its directory.
fn write_file(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn su(options: &[(&str, &str)]) -> Superuser {
        Superuser {
            username: "admin".into(),
            password: Some("it's \\ secret".into()),
            options: map(options),
        }
    }

    #[test]
    fn connection_from_dsn_and_variables() {
        let dsn = generate::parse_dsn("host=db1 dbname=postgres sslmode=disable").expect("dsn");
        let env = map(&[
            ("PGPORT", "5433"),
            // The DSN's host wins over the environment's.
            ("PGHOST", "db-from-environment"),
            ("PGAPPNAME", "gen"),
        ]);
        let (c, tls) = connection(&dsn, &su(&[("sslmode", "disable")]), &env).expect("connection");
        assert_eq!(c.get_hosts(), &[Host::Tcp("db1".into())]);
        assert_eq!(c.get_ports(), &[5433]);
        assert_eq!(c.get_dbname(), Some("postgres"));
        assert_eq!(c.get_user(), Some("admin"));
        assert_eq!(c.get_password(), Some("it's \\ secret".as_bytes()));
        assert_eq!(c.get_application_name(), Some("gen"));
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(10)));
        assert!(tls.connector.is_none());
    }

    #[test]
    fn connection_defaults_to_the_sockets_without_tls() {
        let (c, tls) = connection(&BTreeMap::new(), &su(&[("sslmode", "require")]), &map(&[]))
            .expect("connection");
        assert_eq!(
            c.get_hosts(),
            &[
                Host::Unix("/var/run/postgresql".into()),
                Host::Unix("/tmp".into())
            ]
        );
        assert!(tls.connector.is_none());
    }

    #[test]
    fn connection_errors() {
        let dsn = generate::parse_dsn("host=h bogus_option=1").expect("dsn");
        let e = connection(&dsn, &su(&[]), &map(&[])).expect_err("unknown option");
        assert!(e.contains("bogus_option"), "{e}");
        let dsn = generate::parse_dsn("host=h").expect("dsn");
        let e = connection(&dsn, &su(&[("gssencmode", "require")]), &map(&[])).expect_err("gss");
        assert!(e.starts_with("gssencmode=require"), "{e}");
        let e = connection(&dsn, &su(&[("sslmode", "verify-full")]), &map(&[]))
            .expect_err("no root certificate");
        assert!(e.starts_with("sslrootcert"), "{e}");
    }

    #[test]
    fn postmaster_pid_errors() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = postmaster_bin_dir(dir.path()).expect_err("no file");
        assert!(
            e.starts_with("Error while reading postmaster.pid file"),
            "{e}"
        );
        std::fs::write(dir.path().join("postmaster.pid"), "\n").expect("write");
        assert_eq!(
            postmaster_bin_dir(dir.path()),
            Err("Failed to obtain postmaster pid from postmaster.pid file".into())
        );
        // A pid no process has (beyond the kernel's pid_max).
        std::fs::write(dir.path().join("postmaster.pid"), "2147483647\n").expect("write");
        assert_eq!(
            postmaster_bin_dir(dir.path()),
            Err("Obtained postmaster pid doesn't exist.".into())
        );
        std::fs::write(
            dir.path().join("postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .expect("write");
        let own = std::env::current_exe().expect("current exe");
        assert_eq!(
            postmaster_bin_dir(dir.path()),
            Ok(own.parent().expect("dir").display().to_string())
        );
    }

    #[test]
    fn written_file_is_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("new/dir/patroni.yml");
        write_file(&path, "scope: x\n").expect("write");
        let mode = std::fs::metadata(&path).expect("metadata").permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "scope: x\n");
    }
}
