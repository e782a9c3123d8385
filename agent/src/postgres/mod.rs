//! Everything that touches the local PostgreSQL: initdb, configuration files, pg_ctl,
//! pg_basebackup and the other replica creation methods, pg_controldata and the monitoring
//! query.
//!
//! Dangerous part: the data directory. Only `initdb`, `pg_basebackup` and the user's bootstrap
//! and replica creation commands create it, and only a failed bootstrap or clone removes it; nothing here runs as root, and passwords go through a passfile
//! or stdin-less pwfile, never a command line.

mod archive;
pub mod bootstrap;
mod conf;
mod error;
pub mod gucs;
mod query;
mod replica;
mod slots;
mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

pub use conf::{
    append_pg_hba, archive_command, is_valid_guc_name, libpq_quote, primary_conninfo,
    standby_settings, ConfigFiles, Recovery,
};
pub use error::PgError;
pub use query::{quote_ident, quote_literal, LocalConn, LocalStatus, PgClient, ReplicationRow};
pub use slots::{install_slot_state, read_slot_states, SlotState};
pub use tls::{client_tls, ClientTls};

use crate::config::Config;

/// What pg_controldata says about the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ControlData {
    pub sysid: String,
    /// `Database cluster state`, e.g. `in production`, `shut down`, `in archive recovery`.
    pub state: String,
    pub timeline: u64,
    pub fields: BTreeMap<String, String>,
}

impl ControlData {
    pub fn parse(text: &str) -> ControlData {
        let fields: BTreeMap<String, String> = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        ControlData {
            sysid: fields
                .get("Database system identifier")
                .cloned()
                .unwrap_or_default(),
            state: fields
                .get("Database cluster state")
                .cloned()
                .unwrap_or_default(),
            timeline: fields
                .get("Latest checkpoint's TimeLineID")
                .and_then(|t| t.parse().ok())
                .unwrap_or(0),
            fields,
        }
    }

    /// Where a stopped data directory's WAL ends, as (timeline, LSN): a standby's minimum
    /// recovery point (when set) on its timeline, else the latest checkpoint (a primary's
    /// shutdown checkpoint) on its timeline. What a start as a standby of a newer timeline
    /// must not have gone past (Patroni's `_get_local_timeline_lsn_from_controldata`).
    pub fn stopped_position(&self) -> Option<(u64, u64)> {
        let lsn = |k: &str| self.fields.get(k).and_then(|v| patrol_dcs::parse_lsn(v));
        let num = |k: &str| self.fields.get(k).and_then(|v| v.parse::<u64>().ok());
        match (
            lsn("Minimum recovery ending location").filter(|l| *l > 0),
            num("Min recovery ending loc's timeline").filter(|t| *t > 0),
        ) {
            (Some(l), Some(t)) => Some((t, l)),
            _ => Some((self.timeline, lsn("Latest checkpoint location")?)).filter(|(t, _)| *t > 0),
        }
    }
}

/// The state of the data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// Missing or empty: a node to bootstrap or clone.
    Empty,
    /// Has files but no readable pg_control (a half-written clone, or garbage).
    Invalid(String),
    Initialized(ControlData),
}

/// Handle on the local PostgreSQL, built from the local configuration.
#[derive(Debug, Clone)]
pub struct Postgres {
    pub data_dir: PathBuf,
    pub config_dir: PathBuf,
    cfg: crate::config::Postgresql,
    scope: String,
    name: String,
    facts: std::sync::Arc<BinaryFacts>,
}

/// How many `<data dir>.log-*` directories of removed data directories are kept.
const KEPT_LOG_DIRS: usize = 5;

/// What the installed binaries say about themselves, asked once.
#[derive(Debug, Default)]
struct BinaryFacts {
    major: std::sync::OnceLock<u32>,
    gucs: std::sync::OnceLock<Option<std::collections::HashMap<String, gucs::GucSpec>>>,
}

/// `postgres (PostgreSQL) 15.8 (Debian 15.8-1)` or `15` (PG_VERSION) -> 15; `9.6` -> 9.
fn parse_major(text: &str) -> Option<u32> {
    let version = text
        .split_whitespace()
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))?;
    version
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

impl Postgres {
    pub fn new(config: &Config) -> Postgres {
        Postgres {
            data_dir: config.postgresql.data_dir.clone(),
            config_dir: config.postgresql.config_dir.clone(),
            cfg: config.postgresql.clone(),
            scope: config.scope.clone(),
            name: config.name.clone(),
            facts: Default::default(),
        }
    }

    pub fn bin(&self, tool: &str) -> PathBuf {
        self.cfg.bin(tool)
    }

    pub fn settings(&self) -> &crate::config::Postgresql {
        &self.cfg
    }

    /// The cluster's name (`scope`).
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// Where the postmaster's own output goes (the server log unless `logging_collector` is on).
    pub fn log_file(&self) -> PathBuf {
        self.data_dir.join("log").join("postmaster.log")
    }

    pub fn data_dir_state(&self) -> DataDir {
        match std::fs::read_dir(&self.data_dir) {
            Err(_) => DataDir::Empty,
            Ok(mut it) => {
                if it.next().is_none() {
                    return DataDir::Empty;
                }
                if !self.data_dir.join("global").join("pg_control").exists() {
                    return DataDir::Invalid("no global/pg_control".into());
                }
                match self.controldata_sync() {
                    Ok(cd) if !cd.sysid.is_empty() => DataDir::Initialized(cd),
                    Ok(_) => DataDir::Invalid("pg_controldata printed no system identifier".into()),
                    Err(e) => DataDir::Invalid(e.to_string()),
                }
            }
        }
    }

    fn controldata_sync(&self) -> Result<ControlData, PgError> {
        let out = std::process::Command::new(self.bin("pg_controldata"))
            .arg(&self.data_dir)
            .env("LANG", "C")
            .env("LC_ALL", "C")
            .output()
            .map_err(|e| PgError::Spawn("pg_controldata".into(), e))?;
        if !out.status.success() {
            return Err(PgError::Failed {
                what: "pg_controldata".into(),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(ControlData::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    /// The postmaster pid if one is alive for this data directory.
    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        // A dead postmaster nobody reaped yet (a zombie) still answers kill(0): read its state.
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|st| {
                st.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('Z'))
            })
            .unwrap_or(false);
        // After a crash the pid in a stale postmaster.pid may belong to another program.
        let is_postgres = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim().starts_with("postgres") || c.trim().starts_with("postmaster"))
            .unwrap_or(true);
        (alive && !zombie && is_postgres).then_some(pid)
    }

    pub fn is_running(&self) -> bool {
        self.postmaster_pid().is_some()
    }

    async fn run(&self, what: &str, cmd: &mut Command, limit: Duration) -> Result<String, PgError> {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("LANG", "C")
            .env("LC_MESSAGES", "C")
            .kill_on_drop(true);
        tracing::debug!(?cmd, "running {what}");
        let child = cmd.spawn().map_err(|e| PgError::Spawn(what.into(), e))?;
        let out = match tokio::time::timeout(limit, child.wait_with_output()).await {
            Ok(r) => r.map_err(|e| PgError::Spawn(what.into(), e))?,
            Err(_) => return Err(PgError::Timeout(what.into(), limit)),
        };
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            return Err(PgError::Failed {
                what: what.into(),
                detail: format!("{} {}", stderr.trim(), stdout.trim())
                    .trim()
                    .to_string(),
            });
        }
        Ok(stdout)
    }

    /// `initdb` with the bootstrap options; the superuser password goes through a pwfile that is
    /// removed right after.
    pub async fn initdb(&self, options: &[String]) -> Result<(), PgError> {
        let su = &self.cfg.authentication.superuser;
        let mut cmd = Command::new(self.bin("initdb"));
        cmd.arg(format!("--pgdata={}", self.data_dir.display()));
        cmd.arg(format!("--username={}", su.username));
        let pwfile = self.data_dir.with_extension("pwfile");
        if let Some(pw) = &su.password {
            write_private(&pwfile, &format!("{pw}\n")).map_err(PgError::Io)?;
            cmd.arg(format!("--pwfile={}", pwfile.display()));
        }
        cmd.args(options);
        let r = self.run("initdb", &mut cmd, Duration::from_secs(600)).await;
        let _ = std::fs::remove_file(&pwfile);
        r.map(|_| ())
    }

    /// `pg_basebackup` from `conninfo` (a libpq keyword string without the password: it comes
    /// from the passfile).
    pub async fn basebackup(&self, conninfo: &str) -> Result<(), PgError> {
        self.write_pgpass()?;
        let mut cmd = Command::new(self.bin("pg_basebackup"));
        cmd.arg(format!("--pgdata={}", self.data_dir.display()))
            .arg("-X")
            .arg("stream")
            .arg(format!("--dbname={conninfo}"))
            .args(&self.cfg.basebackup)
            .env("PGPASSFILE", &self.cfg.pgpass);
        self.run("pg_basebackup", &mut cmd, Duration::from_secs(24 * 3600))
            .await
            .map(|_| ())
    }

    /// Writes the passfile with the replication (and rewind) credentials, mode 0600.
    pub fn write_pgpass(&self) -> Result<(), PgError> {
        let esc = |s: &str| s.replace('\\', "\\\\").replace(':', "\\:");
        let mut text = String::new();
        let auth = &self.cfg.authentication;
        for user in [
            Some(&auth.replication),
            auth.rewind.as_ref(),
            Some(&auth.superuser),
        ]
        .into_iter()
        .flatten()
        {
            if let Some(pw) = &user.password {
                text.push_str(&format!("*:*:*:{}:{}\n", esc(&user.username), esc(pw)));
            }
        }
        write_private(&self.cfg.pgpass, &text).map_err(PgError::Io)
    }

    /// Removes the data directory (after a failed bootstrap or clone, a failed rewind, a
    /// reinitialize). Its `log` directory (the postmaster's own output, and the server log when
    /// `log_directory` is the default) is first moved beside it as
    /// `<data dir>.log-<UTC time>`, so that what explains a failure survives; if it cannot be,
    /// its last lines go to the agent's log.
    pub fn remove_data_dir(&self) -> Result<(), PgError> {
        let logs = self.data_dir.join("log");
        let has_logs = std::fs::read_dir(&logs)
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if has_logs {
            let mut kept = self.data_dir.clone().into_os_string();
            kept.push(format!(
                ".log-{}",
                chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
            ));
            let kept = PathBuf::from(kept);
            match std::fs::rename(&logs, &kept) {
                Ok(()) => {
                    tracing::warn!(
                        "the server logs of the removed data directory are kept in {}",
                        kept.display()
                    );
                    self.prune_kept_logs();
                }
                Err(e) => {
                    let tail = log_tail(&self.log_file(), 0, 40);
                    tracing::warn!(
                        "could not keep the server logs in {} ({e}); the postmaster log ended with:\n{tail}",
                        kept.display()
                    );
                }
            }
        }
        match std::fs::remove_dir_all(&self.data_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PgError::Io(e)),
        }
    }

    /// Writes postgresql.conf, pg_hba.conf and the recovery signal for the given role. The
    /// parameters are first made fit for the installed server ([`conf::server_parameters`]:
    /// `wal_keep_segments` to `wal_keep_size` on 13+, unknown ones removed with a warning).
    pub fn write_config(&self, files: &ConfigFiles) -> Result<(), PgError> {
        let (parameters, warnings) = conf::server_parameters(
            &files.parameters,
            self.major_version(),
            self.available_gucs(),
        );
        for w in warnings {
            tracing::warn!("{w}");
        }
        let files = ConfigFiles {
            parameters,
            ..files.clone()
        };
        files
            .write(&self.data_dir, &self.config_dir)
            .map_err(PgError::Io)
    }

    /// `files`' parameters as [`Postgres::write_config`] writes them, as text (no warnings:
    /// those are logged when they are written).
    pub fn file_parameters(&self, files: &ConfigFiles) -> Vec<(String, String)> {
        let (parameters, _) = conf::server_parameters(
            &files.parameters,
            self.major_version(),
            self.available_gucs(),
        );
        parameters
            .iter()
            .filter_map(|(k, v)| conf::value_text(v).map(|t| (k.clone(), t)))
            .collect()
    }

    /// Keeps the newest [`KEPT_LOG_DIRS`] of the `<data dir>.log-*` directories, so that a
    /// bootstrap failing again and again does not fill the disk.
    fn prune_kept_logs(&self) {
        let (Some(parent), Some(name)) = (self.data_dir.parent(), self.data_dir.file_name()) else {
            return;
        };
        let prefix = format!("{}.log-", name.to_string_lossy());
        let Ok(entries) = std::fs::read_dir(parent) else {
            return;
        };
        let mut kept: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        // The names end in a UTC time stamp, so they sort by age.
        kept.sort();
        let excess = kept.len().saturating_sub(KEPT_LOG_DIRS);
        for old in &kept[..excess] {
            let _ = std::fs::remove_dir_all(old);
        }
    }

    /// The major version of the installed server binaries (`postgres -V`; 15 for 15.x), or of
    /// the data directory (`PG_VERSION`) when the binary cannot be run. 0 if neither is known.
    pub fn major_version(&self) -> u32 {
        *self.facts.major.get_or_init(|| {
            let from_binary = std::process::Command::new(self.bin("postgres"))
                .arg("-V")
                .output()
                .ok()
                .and_then(|o| parse_major(&String::from_utf8_lossy(&o.stdout)));
            from_binary
                .or_else(|| {
                    std::fs::read_to_string(self.data_dir.join("PG_VERSION"))
                        .ok()
                        .and_then(|t| parse_major(&t))
                })
                .unwrap_or(0)
        })
    }

    /// Every parameter the installed server knows, by lower-case name, with its type and
    /// bounds (`postgres --describe-config`, as Patroni reads it); `None` if that could not be
    /// run.
    pub fn available_gucs(&self) -> Option<&std::collections::HashMap<String, gucs::GucSpec>> {
        self.facts
            .gucs
            .get_or_init(|| {
                let out = std::process::Command::new(self.bin("postgres"))
                    .arg("--describe-config")
                    .stderr(Stdio::null())
                    .output()
                    .ok()
                    .filter(|o| o.status.success())?;
                let specs = gucs::parse_describe_config(&String::from_utf8_lossy(&out.stdout));
                (!specs.is_empty()).then_some(specs)
            })
            .as_ref()
    }

    /// The parameters Patroni controls, passed on the command line (spec 4.3).
    pub fn cmdline_params(
        &self,
        dynamic: &serde_json::Map<String, serde_json::Value>,
    ) -> Vec<(String, String)> {
        conf::cmdline_params(&self.cfg, &self.scope, dynamic)
    }

    /// `pg_ctl start -w` with the controlled parameters on the command line.
    pub async fn start(&self, params: &[(String, String)], wait: Duration) -> Result<(), PgError> {
        // A postmaster killed with SIGKILL leaves postmaster.pid behind, and if nobody reaped it
        // yet its pid still answers kill(0), so PostgreSQL would refuse to start ("another server
        // might be running"). `postmaster_pid` has already checked it is not a live postgres.
        let pidfile = self.data_dir.join("postmaster.pid");
        if pidfile.exists() && self.postmaster_pid().is_none() {
            tracing::info!("removing the stale lock files of a dead postmaster");
            // Lines: pid, data dir, start time, port, first socket directory, ...
            if let Ok(text) = std::fs::read_to_string(&pidfile) {
                let lines: Vec<&str> = text.lines().collect();
                if let (Some(pid), Some(port), Some(dir)) =
                    (lines.first(), lines.get(3), lines.get(4))
                {
                    let lock = Path::new(dir.trim()).join(format!(".s.PGSQL.{}.lock", port.trim()));
                    let same_owner = std::fs::read_to_string(&lock)
                        .map(|l| l.lines().next().map(str::trim) == Some(pid.trim()))
                        .unwrap_or(false);
                    if same_owner {
                        let _ = std::fs::remove_file(&lock);
                    }
                }
            }
            let _ = std::fs::remove_file(&pidfile);
        }
        let log = self.log_file();
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(PgError::Io)?;
        }
        let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let started = std::time::SystemTime::now();
        let mut params = params.to_vec();
        if self.data_dir.join("standby.signal").exists() {
            // A hot standby refuses to start below the primary's values of these (Patroni's
            // `effective_configuration`); the configured value waits for a later restart.
            if let Ok(cd) = self.controldata_sync() {
                for name in gucs::raise_to_controldata(&mut params, &cd.fields) {
                    tracing::info!(
                        "starting with {name} from pg_controldata, higher than configured: pending restart"
                    );
                }
            }
        }
        let mut opts = format!(
            "--config-file={}",
            shell_quote(
                &self
                    .config_dir
                    .join("postgresql.conf")
                    .display()
                    .to_string()
            )
        );
        for (k, v) in &params {
            opts.push_str(&format!(" --{}={}", k, shell_quote(v)));
        }
        let mut cmd = Command::new(self.bin("pg_ctl"));
        cmd.arg("start")
            .arg("-w")
            .arg("-t")
            .arg(wait.as_secs().max(1).to_string())
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(opts);
        // pg_ctl returns once the server accepts connections (or fails). When it fails it only
        // says "Examine the log output": the reason is in the postmaster's log, so take it from
        // there (its FATAL and PANIC lines, else its last lines) into the error.
        match self
            .run("pg_ctl start", &mut cmd, wait + Duration::from_secs(5))
            .await
        {
            Ok(_) => Ok(()),
            Err(PgError::Failed { what, detail }) => {
                let mut detail = format!(
                    "{detail}\nthe postmaster log ({}) says:\n{}",
                    log.display(),
                    log_tail(&log, log_start, 20)
                );
                // With `logging_collector` on, the reason went to the collector's files.
                if let Some((dir, lines)) = collector_fatal_lines(&log, log_start, started) {
                    detail.push_str(&format!(
                        "\nthe server log in {} says:\n{lines}",
                        dir.display()
                    ));
                }
                Err(PgError::Failed { what, detail })
            }
            Err(e) => Err(e),
        }
    }

    /// `pg_ctl stop -m <mode> -w`. Stopping a stopped server is success.
    pub async fn stop(&self, mode: &str, wait: Duration) -> Result<(), PgError> {
        if !self.is_running() {
            return Ok(());
        }
        let mut cmd = Command::new(self.bin("pg_ctl"));
        cmd.arg("stop")
            .arg("-m")
            .arg(mode)
            .arg("-w")
            .arg("-t")
            .arg(wait.as_secs().max(1).to_string())
            .arg("-D")
            .arg(&self.data_dir);
        match self
            .run("pg_ctl stop", &mut cmd, wait + Duration::from_secs(5))
            .await
        {
            Ok(_) => Ok(()),
            Err(_) if !self.is_running() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `pg_ctl reload`.
    pub async fn reload(&self) -> Result<(), PgError> {
        let mut cmd = Command::new(self.bin("pg_ctl"));
        cmd.arg("reload").arg("-D").arg(&self.data_dir);
        self.run("pg_ctl reload", &mut cmd, Duration::from_secs(30))
            .await
            .map(|_| ())
    }

    /// `pg_ctl promote -w`.
    pub async fn promote(&self, wait: Duration) -> Result<(), PgError> {
        let mut cmd = Command::new(self.bin("pg_ctl"));
        cmd.arg("promote")
            .arg("-w")
            .arg("-t")
            .arg(wait.as_secs().max(1).to_string())
            .arg("-D")
            .arg(&self.data_dir);
        self.run("pg_ctl promote", &mut cmd, wait + Duration::from_secs(5))
            .await
            .map(|_| ())
    }

    /// Crash recovery in single-user mode, so that pg_control says "shut down" (pg_rewind needs
    /// a cleanly stopped target).
    pub async fn single_user_recovery(&self) -> Result<(), PgError> {
        let mut cmd = Command::new(self.bin("postgres"));
        cmd.arg("--single")
            .arg("-D")
            .arg(&self.data_dir)
            .arg(format!(
                "--config-file={}",
                self.config_dir.join("postgresql.conf").display()
            ))
            .arg("-c")
            .arg("archive_mode=off")
            .arg("-c")
            .arg("hot_standby=off")
            .arg(&self.cfg.database);
        self.run("postgres --single", &mut cmd, Duration::from_secs(3600))
            .await
            .map(|_| ())
    }

    /// `pg_rewind` from the leader (`conninfo` without a password: it comes from the passfile).
    pub async fn rewind(&self, conninfo: &str) -> Result<String, PgError> {
        self.write_pgpass()?;
        let mut cmd = Command::new(self.bin("pg_rewind"));
        cmd.arg("-D")
            .arg(&self.data_dir)
            .arg(format!("--source-server={conninfo}"))
            .env("PGPASSFILE", &self.cfg.pgpass)
            .env("PGOPTIONS", "-c statement_timeout=0");
        self.run("pg_rewind", &mut cmd, Duration::from_secs(3600))
            .await
    }

    /// The highest timeline among the WAL segment files in pg_wal (`00000002000000000000000A`,
    /// also `.partial`): the timeline of the newest WAL this node holds. A standby's SQL view
    /// of its timeline lags without a WAL receiver (it falls back to the last restartpoint's,
    /// which can be minutes old after a promotion); its segment files do not.
    pub fn newest_wal_timeline(&self) -> Option<u64> {
        std::fs::read_dir(self.data_dir.join("pg_wal"))
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let base = name.strip_suffix(".partial").unwrap_or(name);
                (base.len() == 24 && base.chars().all(|c| c.is_ascii_hexdigit()))
                    .then(|| u64::from_str_radix(&base[..8], 16).ok())
                    .flatten()
            })
            .max()
    }

    /// The timeline history file of `timeline` from pg_wal, with its modification time.
    pub fn timeline_history(&self, timeline: u64) -> Option<(String, std::time::SystemTime)> {
        let path = self
            .data_dir
            .join("pg_wal")
            .join(format!("{timeline:08X}.history"));
        let text = std::fs::read_to_string(&path).ok()?;
        let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
        Some((text, mtime))
    }

    /// Where the agent reaches its own PostgreSQL, as Patroni chooses: the first absolute
    /// directory of `unix_socket_directories` when `use_unix_socket` is on (the server's built-in
    /// default directory when that parameter is not set), else TCP to the first listen address.
    pub fn local_address(&self) -> LocalAddress {
        local_address(&self.cfg, self.cfg.use_unix_socket)
    }

    /// Connection settings for the agent's own superuser connection: over TCP with the
    /// superuser's TLS options ([`tls::client_tls`]), none over a unix socket.
    pub fn local_conn_config(&self) -> LocalConn {
        let su = &self.cfg.authentication.superuser;
        let mut c = tokio_postgres::Config::new();
        let tls = match self.local_address() {
            LocalAddress::Socket(dir) => {
                c.host_path(dir);
                Ok(ClientTls {
                    mode: tokio_postgres::config::SslMode::Disable,
                    connector: None,
                })
            }
            LocalAddress::Tcp(host) => {
                c.host(&host);
                client_tls(su).map_err(|e| format!("postgresql.authentication.superuser.{e}"))
            }
        };
        if let Ok(t) = &tls {
            c.ssl_mode(t.mode);
        }
        c.port(self.cfg.port)
            .user(&su.username)
            .dbname(&self.cfg.database)
            .application_name("Patrol")
            .connect_timeout(Duration::from_secs(3));
        if let Some(pw) = &su.password {
            c.password(pw.as_bytes());
        }
        LocalConn { config: c, tls }
    }

    /// A connection to another member's PostgreSQL at `host:port` as the rewind user (else the
    /// superuser), the user Patroni reads the leader's files with; TLS from that user's options.
    pub fn member_conn_config(&self, host: &str, port: u16) -> LocalConn {
        let auth = &self.cfg.authentication;
        let (user, key) = match &auth.rewind {
            Some(r) => (r, "rewind"),
            None => (&auth.superuser, "superuser"),
        };
        let mut c = tokio_postgres::Config::new();
        let tls = client_tls(user).map_err(|e| format!("postgresql.authentication.{key}.{e}"));
        if let Ok(t) = &tls {
            c.ssl_mode(t.mode);
        }
        c.host(host)
            .port(port)
            .user(&user.username)
            .dbname(&self.cfg.database)
            .application_name("Patrol")
            .connect_timeout(Duration::from_secs(3));
        if let Some(pw) = &user.password {
            c.password(pw.as_bytes());
        }
        LocalConn { config: c, tls }
    }

    /// The superuser's local connection as a libpq keyword string without the password (it
    /// is in the passfile), with the user's `ssl*` options: what Patroni appends to
    /// `post_bootstrap` and `post_init` as their last argument.
    pub fn local_dsn(&self) -> String {
        let su = &self.cfg.authentication.superuser;
        let host = match self.local_address() {
            LocalAddress::Socket(dir) => dir.display().to_string(),
            LocalAddress::Tcp(host) => host,
        };
        let mut parts = vec![
            format!("dbname={}", libpq_quote(&self.cfg.database)),
            format!("user={}", libpq_quote(&su.username)),
            format!("host={}", libpq_quote(&host)),
            format!("port={}", self.cfg.port),
        ];
        for (k, v) in &su.extra {
            if k != "password" {
                parts.push(format!("{k}={}", libpq_quote(v)));
            }
        }
        parts.join(" ")
    }

    pub fn member_name(&self) -> &str {
        &self.name
    }
}

/// How the agent reaches its own PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalAddress {
    /// A unix socket directory.
    Socket(PathBuf),
    /// A TCP host.
    Tcp(String),
}

/// Debian's (and PostgreSQL's usual packaged) default `unix_socket_directories`.
const DEFAULT_SOCKET_DIR: &str = "/var/run/postgresql";

fn local_address(cfg: &crate::config::Postgresql, unix: bool) -> LocalAddress {
    if !unix {
        return LocalAddress::Tcp(local_host(&cfg.listen_addresses));
    }
    let dirs = cfg
        .parameters
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("unix_socket_directories"))
        .map(|(_, v)| match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        });
    match dirs {
        None => LocalAddress::Socket(PathBuf::from(DEFAULT_SOCKET_DIR)),
        // Only an absolute path can be connected to; with none, TCP (as Patroni falls back).
        Some(dirs) => dirs
            .split(',')
            .map(str::trim)
            .find(|d| d.starts_with('/'))
            .map(|d| LocalAddress::Socket(PathBuf::from(d)))
            .unwrap_or_else(|| LocalAddress::Tcp(local_host(&cfg.listen_addresses))),
    }
}

/// The host the agent uses to reach its own PostgreSQL: the first listen address, with
/// wildcards mapped to loopback.
pub fn local_host(listen_addresses: &str) -> String {
    let first = listen_addresses
        .split(',')
        .map(str::trim)
        .find(|s| !s.is_empty())
        .unwrap_or("127.0.0.1");
    match first {
        "*" | "0.0.0.0" => "127.0.0.1".into(),
        "::" => "::1".into(),
        other => other.to_string(),
    }
}

/// What a failed start left in the postmaster log after byte `from`: its FATAL and PANIC lines
/// if there are any, else its last `max` lines.
fn log_tail(log: &Path, from: u64, max: usize) -> String {
    let text = match read_from(log, from) {
        Ok(text) => text,
        Err(e) => return format!("(cannot read it: {e})"),
    };
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let severe: Vec<&str> = lines.iter().copied().filter(|l| is_severe(l)).collect();
    let chosen = if severe.is_empty() { &lines } else { &severe };
    let skip = chosen.len().saturating_sub(max);
    if chosen.is_empty() {
        return "(nothing)".into();
    }
    chosen[skip..].join("\n")
}

/// How much of a log file is read to explain a failed start (its end).
const READ_AT_MOST: u64 = 1 << 20;

/// The text of `path` from byte `from` on, at most its last [`READ_AT_MOST`] bytes (a log
/// without the logging collector can grow to gigabytes).
fn read_from(path: &Path, from: u64) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let start = from.min(len).max(len.saturating_sub(READ_AT_MOST));
    f.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    f.take(READ_AT_MOST).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A severe line in PostgreSQL's plain (`FATAL:  ...`) or csvlog (`...,FATAL,...`) format.
fn is_severe(line: &str) -> bool {
    ["FATAL:", "PANIC:", ",FATAL,", ",PANIC,"]
        .iter()
        .any(|m| line.contains(m))
}

/// When the postmaster handed its output to the logging collector (`Future log output will
/// appear in directory "..."`), the FATAL and PANIC lines written to that directory's files
/// since `since`, with the directory.
fn collector_fatal_lines(
    postmaster_log: &Path,
    from: u64,
    since: std::time::SystemTime,
) -> Option<(PathBuf, String)> {
    let text = read_from(postmaster_log, from).ok()?;
    let marker = "Future log output will appear in directory \"";
    let at = text.rfind(marker)? + marker.len();
    let end = text[at..].find('"')?;
    let mut dir = PathBuf::from(&text[at..at + end]);
    if dir.is_relative() {
        // Relative to the data directory: the postmaster log lives in <data dir>/log.
        dir = postmaster_log.parent()?.parent()?.join(dir);
    }
    let mut lines = Vec::new();
    for entry in std::fs::read_dir(&dir).ok()?.flatten() {
        let recent = entry
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| t + Duration::from_secs(1) >= since)
            .unwrap_or(false);
        if !recent || entry.path() == postmaster_log {
            continue;
        }
        // Only the end of the file: the failed start wrote last, and a server log can be large.
        let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
        if let Ok(content) = read_from(&entry.path(), size.saturating_sub(READ_AT_MOST)) {
            lines.extend(content.lines().filter(|l| is_severe(l)).map(str::to_owned));
        }
    }
    let skip = lines.len().saturating_sub(20);
    (!lines.is_empty()).then(|| (dir, lines[skip..].join("\n")))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Writes a file readable only by its owner (a passfile, initdb's pwfile). The text goes to a
/// new file created beside it with `O_CREAT|O_EXCL|O_NOFOLLOW` and mode 0600, so a symbolic
/// link or a file planted at that name is never written through, then it is renamed over
/// `path` (a rename replaces a link at `path` itself, never its target).
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // A name of its own per write, so two writers (a reload and a clone) never share one.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".patrol-new.{}.{seq}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    // A leftover of an interrupted write (or something planted): remove the name, not what
    // it may point to.
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controldata_parses() {
        let cd = ControlData::parse(
            "pg_control version number:            1300\nDatabase system identifier:           7277694203142172922\nDatabase cluster state:               in production\nLatest checkpoint's TimeLineID:       3\n",
        );
        assert_eq!(cd.sysid, "7277694203142172922");
        assert_eq!(cd.state, "in production");
        assert_eq!(cd.timeline, 3);
    }

    #[test]
    fn local_host_maps_wildcards() {
        assert_eq!(local_host("*"), "127.0.0.1");
        assert_eq!(local_host("0.0.0.0,10.0.0.1"), "127.0.0.1");
        assert_eq!(local_host("10.0.0.1, 10.0.0.2"), "10.0.0.1");
    }

    #[test]
    fn a_failed_start_is_explained_by_its_fatal_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("postmaster.log");
        std::fs::write(&log, "old FATAL: from an earlier start\n").expect("write");
        let from = std::fs::metadata(&log).expect("meta").len();
        std::fs::write(
            &log,
            "old FATAL: from an earlier start\n2026-01-01 LOG:  starting\n2026-01-01 FATAL:  could not create lock file \"/var/run/postgresql/.s.PGSQL.5432.lock\": Permission denied\n2026-01-01 LOG:  database system is shut down\n",
        )
        .expect("write");
        let tail = log_tail(&log, from, 20);
        assert!(tail.contains("could not create lock file"), "{tail}");
        assert!(!tail.contains("earlier"), "{tail}");
        assert!(!tail.contains("shut down"), "{tail}");
        // Without a FATAL line, the last lines.
        std::fs::write(&log, "a\nb\nc\n").expect("write");
        assert_eq!(log_tail(&log, 0, 2), "b\nc");
    }

    #[test]
    fn a_failed_start_with_the_logging_collector_is_explained_from_its_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data_log = dir.path().join("data").join("log");
        std::fs::create_dir_all(&data_log).expect("mkdir");
        let collector = dir.path().join("server-logs");
        std::fs::create_dir_all(&collector).expect("mkdir");
        let since = std::time::SystemTime::now();
        let log = data_log.join("postmaster.log");
        std::fs::write(
            &log,
            format!(
                "LOG:  redirecting log output to logging collector process\nHINT:  Future log output will appear in directory \"{}\".\n",
                collector.display()
            ),
        )
        .expect("write");
        std::fs::write(
            collector.join("pg.csv"),
            "2026-12-05 06:25:22.816 UTC,,,1484,,6b13ae52.5cc,5,,2026-12-05 06:25:22 UTC,,0,FATAL,XX000,\"could not create any TCP/IP sockets\",,,,,,,,,\"\",\"postmaster\",,0\n2026-12-05 LOG,\"ok\"\n",
        )
        .expect("write");
        let (found, lines) = collector_fatal_lines(&log, 0, since).expect("lines");
        assert_eq!(found, collector);
        assert!(
            lines.contains("could not create any TCP/IP sockets"),
            "{lines}"
        );
        assert!(!lines.contains("ok"), "{lines}");
        // A relative log_directory is taken from the data directory.
        std::fs::write(
            &log,
            "HINT:  Future log output will appear in directory \"log\".\n",
        )
        .expect("write");
        std::fs::write(data_log.join("postgresql.log"), "x FATAL:  boom\n").expect("write");
        let (found, lines) = collector_fatal_lines(&log, 0, since).expect("lines");
        assert_eq!(found, data_log);
        assert_eq!(lines, "x FATAL:  boom");
    }

    #[test]
    fn private_files_are_0600_and_never_written_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").expect("write");
        let path = dir.path().join("pgpass");
        // Links planted at the final name and at the temporary name.
        std::os::unix::fs::symlink(&victim, &path).expect("symlink");
        // At every temporary name this process could pick next, too.
        for seq in 0..64 {
            let mut planted = path.as_os_str().to_owned();
            planted.push(format!(".patrol-new.{}.{seq}", std::process::id()));
            let _ = std::os::unix::fs::symlink(&victim, PathBuf::from(planted));
        }
        write_private(&path, "*:*:*:u:secret\n").expect("write");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "untouched");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "*:*:*:u:secret\n"
        );
        let meta = std::fs::symlink_metadata(&path).expect("meta");
        assert!(
            meta.file_type().is_file(),
            "the link was replaced by a file"
        );
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_large_log_is_read_from_its_end_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("postmaster.log");
        let mut text = "LOG:  filler line\n".repeat(200_000);
        text.insert_str(0, "FATAL:  an old failure far back\n");
        text.push_str("FATAL:  could not bind IPv4 address\n");
        std::fs::write(&log, &text).expect("write");
        let tail = log_tail(&log, 0, 20);
        assert_eq!(tail, "FATAL:  could not bind IPv4 address");
    }

    #[test]
    fn major_versions() {
        assert_eq!(
            parse_major("postgres (PostgreSQL) 15.8 (Debian 15.8-1.pgdg120+1)\n"),
            Some(15)
        );
        assert_eq!(parse_major("15\n"), Some(15));
        assert_eq!(parse_major("9.6\n"), Some(9));
        assert_eq!(parse_major("garbage"), None);
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
