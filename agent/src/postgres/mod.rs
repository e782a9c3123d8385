//! Everything that touches the local PostgreSQL: initdb, configuration files, pg_ctl,
//! pg_basebackup, pg_controldata and the monitoring query.
//!
//! Dangerous part: the data directory. Only `initdb`/`pg_basebackup` create it and only a failed
//! bootstrap or clone removes it; nothing here runs as root, and passwords go through a passfile
//! or stdin-less pwfile, never a command line.

mod conf;
mod error;
mod query;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

pub use conf::{append_pg_hba, libpq_quote, primary_conninfo, ConfigFiles, Recovery};
pub use error::PgError;
pub use query::{quote_ident, quote_literal, LocalStatus, PgClient, ReplicationRow};

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
}

impl Postgres {
    pub fn new(config: &Config) -> Postgres {
        Postgres {
            data_dir: config.postgresql.data_dir.clone(),
            config_dir: config.postgresql.config_dir.clone(),
            cfg: config.postgresql.clone(),
            scope: config.scope.clone(),
            name: config.name.clone(),
        }
    }

    pub fn bin(&self, tool: &str) -> PathBuf {
        self.cfg.bin(tool)
    }

    pub fn settings(&self) -> &crate::config::Postgresql {
        &self.cfg
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

    /// Removes the data directory (after a failed bootstrap or clone).
    pub fn remove_data_dir(&self) -> Result<(), PgError> {
        match std::fs::remove_dir_all(&self.data_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PgError::Io(e)),
        }
    }

    /// Writes postgresql.conf, pg_hba.conf and the recovery signal for the given role.
    pub fn write_config(&self, files: &ConfigFiles) -> Result<(), PgError> {
        files
            .write(&self.data_dir, &self.config_dir)
            .map_err(PgError::Io)
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
        for (k, v) in params {
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
        // pg_ctl returns once the server accepts connections (or fails).
        self.run("pg_ctl start", &mut cmd, wait + Duration::from_secs(5))
            .await
            .map(|_| ())
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

    /// Connection settings for the agent's own superuser connection.
    pub fn local_conn_config(&self) -> tokio_postgres::Config {
        let su = &self.cfg.authentication.superuser;
        let mut c = tokio_postgres::Config::new();
        let host = local_host(&self.cfg.listen_addresses);
        c.host(&host)
            .port(self.cfg.port)
            .user(&su.username)
            .dbname(&self.cfg.database)
            .application_name("Patrol")
            .connect_timeout(Duration::from_secs(3));
        if let Some(pw) = &su.password {
            c.password(pw.as_bytes());
        }
        c
    }

    pub fn member_name(&self) -> &str {
        &self.name
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

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Writes a file readable only by its owner.
pub fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
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
    fn shell_quoting() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
