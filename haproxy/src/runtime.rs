//! HAProxy's runtime API (the `stats socket`) and its master CLI (`haproxy -W -S <socket>`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot reach the HAProxy socket {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("HAProxy socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("HAProxy did not answer within {0:?}")]
    Timeout(Duration),
    #[error("HAProxy refused {command:?}: {answer}")]
    Refused { command: String, answer: String },
    #[error("cannot signal HAProxy: {0}")]
    Signal(String),
}

/// Answers of the CLI that mean a command failed (the CLI has no status codes).
fn error_line(answer: &str) -> Option<&str> {
    const MARKERS: &[&str] = &[
        "No such",
        "Unknown command",
        "Require ",
        "Permission denied",
        "Can't find",
        "Invalid",
        "Unexpected",
        "'set server",
    ];
    answer
        .lines()
        .map(str::trim)
        .find(|l| MARKERS.iter().any(|m| l.starts_with(m)))
}

/// Sends `line` (newline appended) and reads until HAProxy closes the connection.
async fn exchange(socket: &Path, line: &str, timeout: Duration) -> Result<String, RuntimeError> {
    let run = async {
        let mut s = UnixStream::connect(socket)
            .await
            .map_err(|e| RuntimeError::Connect(socket.display().to_string(), e))?;
        s.write_all(format!("{line}\n").as_bytes()).await?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await?;
        Ok::<_, RuntimeError>(String::from_utf8_lossy(&out).into_owned())
    };
    tokio::time::timeout(timeout, run)
        .await
        .map_err(|_| RuntimeError::Timeout(timeout))?
}

/// One server of a backend as `show servers state` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerState {
    pub name: String,
    pub addr: String,
    pub port: u16,
    /// `srv_op_state` 2 (running) or 3 (stopping): HAProxy may send it traffic.
    pub up: bool,
    /// `srv_admin_state` (0 = ready; maintenance/drain flags otherwise).
    pub admin_state: u32,
}

/// Parses `show servers state [<backend>]` (format version 1) into (backend, server) rows.
pub fn parse_servers_state(text: &str) -> Vec<(String, ServerState)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 19 {
            continue;
        }
        let (Ok(op), Ok(admin), Ok(port)) = (
            w[5].parse::<u32>(),
            w[6].parse::<u32>(),
            w[18].parse::<u16>(),
        ) else {
            continue;
        };
        out.push((
            w[1].to_string(),
            ServerState {
                name: w[3].to_string(),
                addr: w[4].to_string(),
                port,
                up: op == 2 || op == 3,
                admin_state: admin,
            },
        ));
    }
    out
}

/// A client for one HAProxy runtime socket (`stats socket ... level admin`). Each call is one
/// connection; several commands in one call are sent as one `;`-separated line, which HAProxy
/// runs in order.
#[derive(Debug, Clone)]
pub struct RuntimeApi {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl RuntimeApi {
    pub fn new(socket: impl Into<PathBuf>) -> RuntimeApi {
        RuntimeApi {
            socket: socket.into(),
            timeout: Duration::from_secs(2),
        }
    }

    /// Sends one command and returns HAProxy's answer; an error answer is an `Err`.
    pub async fn command(&self, cmd: &str) -> Result<String, RuntimeError> {
        let out = exchange(&self.socket, cmd, self.timeout).await?;
        if let Some(e) = error_line(&out) {
            return Err(RuntimeError::Refused {
                command: cmd.to_string(),
                answer: e.to_string(),
            });
        }
        Ok(out)
    }

    /// Runs `cmds` in order over one connection. HAProxy runs every command even if one fails;
    /// the first failure is returned.
    pub async fn batch(&self, cmds: &[String]) -> Result<String, RuntimeError> {
        if cmds.is_empty() {
            return Ok(String::new());
        }
        self.command(&cmds.join("; ")).await
    }

    /// Forces a server's health (`up`/`down`); HAProxy's own checks keep running and correct
    /// it if we are wrong.
    pub async fn set_health(
        &self,
        backend: &str,
        server: &str,
        up: bool,
    ) -> Result<(), RuntimeError> {
        self.command(&set_health(backend, server, up))
            .await
            .map(|_| ())
    }

    /// Closes every session on a server (the old leader after a switch).
    pub async fn shutdown_sessions(&self, backend: &str, server: &str) -> Result<(), RuntimeError> {
        self.command(&shutdown_sessions(backend, server))
            .await
            .map(|_| ())
    }

    /// `show servers state` for a backend, raw.
    pub async fn servers_state(&self, backend: &str) -> Result<String, RuntimeError> {
        self.command(&format!("show servers state {backend}")).await
    }

    /// The servers of a backend and whether HAProxy considers each up.
    pub async fn servers(&self, backend: &str) -> Result<Vec<ServerState>, RuntimeError> {
        let text = self.servers_state(backend).await?;
        Ok(parse_servers_state(&text)
            .into_iter()
            .filter(|(b, _)| b == backend)
            .map(|(_, s)| s)
            .collect())
    }

    /// `show servers state` for every backend: the format `server-state-file` loads.
    pub async fn dump_state(&self) -> Result<String, RuntimeError> {
        self.command("show servers state").await
    }

    /// The pid of the worker answering on this socket (changes on every reload or restart).
    pub async fn worker_pid(&self) -> Result<u32, RuntimeError> {
        let info = self.command("show info").await?;
        info.lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| RuntimeError::Refused {
                command: "show info".into(),
                answer: "no Pid line".into(),
            })
    }
}

/// `set server <backend>/<server> health up|down`.
pub fn set_health(backend: &str, server: &str, up: bool) -> String {
    let state = if up { "up" } else { "down" };
    format!("set server {backend}/{server} health {state}")
}

/// `shutdown sessions server <backend>/<server>`.
pub fn shutdown_sessions(backend: &str, server: &str) -> String {
    format!("shutdown sessions server {backend}/{server}")
}

/// The worker processes the master CLI lists (`show proc`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workers {
    /// The worker(s) of the current configuration.
    pub current: Vec<u32>,
    /// Workers of earlier configurations still finishing their sessions after a reload.
    pub old: Vec<u32>,
}

/// Parses the master CLI's `show proc`.
pub fn parse_show_proc(text: &str) -> Workers {
    let mut w = Workers::default();
    let mut old = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('#') {
            old = t.contains("old workers");
            if t.contains("programs") {
                break;
            }
            continue;
        }
        let mut f = t.split_whitespace();
        let (Some(pid), Some(kind)) = (f.next(), f.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if kind == "worker" {
            if old {
                w.old.push(pid);
            } else {
                w.current.push(pid);
            }
        }
    }
    w
}

/// HAProxy's master CLI (`haproxy -W -S <socket>`): reloads, and reaches old workers that
/// still serve sessions after a reload (`@!<pid> <command>`).
#[derive(Debug, Clone)]
pub struct MasterCli {
    pub socket: PathBuf,
    pub timeout: Duration,
}

impl MasterCli {
    pub fn new(socket: impl Into<PathBuf>) -> MasterCli {
        MasterCli {
            socket: socket.into(),
            timeout: Duration::from_secs(5),
        }
    }

    /// Runs one master CLI line; the master keeps connections open, so `quit` ends it.
    pub async fn command(&self, cmd: &str) -> Result<String, RuntimeError> {
        let out = exchange(&self.socket, &format!("{cmd}; quit"), self.timeout).await?;
        if let Some(e) = error_line(&out) {
            return Err(RuntimeError::Refused {
                command: cmd.to_string(),
                answer: e.to_string(),
            });
        }
        Ok(out)
    }

    pub async fn workers(&self) -> Result<Workers, RuntimeError> {
        Ok(parse_show_proc(&self.command("show proc").await?))
    }

    /// Asks the master to reload: it re-reads the configuration and starts a new worker,
    /// which takes the listening sockets over (no refused connection); the old worker keeps
    /// serving its sessions until they end.
    pub async fn reload(&self) -> Result<(), RuntimeError> {
        self.command("reload").await.map(|_| ())
    }

    /// Runs `cmds` on the worker `pid` through the master (`@!<pid>`).
    pub async fn on_worker(&self, pid: u32, cmds: &[String]) -> Result<String, RuntimeError> {
        let line: Vec<String> = cmds.iter().map(|c| format!("@!{pid} {c}")).collect();
        self.command(&line.join("; ")).await
    }
}

/// Reloads a master-worker HAProxy by sending SIGUSR2 to the master whose pid is in
/// `pid_file` (`haproxy -W -p <pid_file>`).
pub fn reload_by_signal(pid_file: &Path) -> Result<(), RuntimeError> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| RuntimeError::Signal(format!("{}: {e}", pid_file.display())))?;
    let pid: i32 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .filter(|p| *p > 1)
        .ok_or_else(|| RuntimeError::Signal(format!("{}: no pid", pid_file.display())))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGUSR2,
    )
    .map_err(|e| RuntimeError::Signal(format!("SIGUSR2 to {pid}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_servers_state_and_show_proc() {
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n4 primary 1 pg0 127.0.0.1 2 0 1 1 0 8 2 3 6 0 0 0 - 5432 - 0 8008 127.0.0.1 127.0.0.1 8008\n4 primary 2 pg1 127.0.0.1 0 0 1 1 2 8 2 0 6 0 0 0 - 5433 - 0 8009 127.0.0.1 127.0.0.1 8009\n\n";
        let s = parse_servers_state(text);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].0, "primary");
        assert_eq!(
            s[0].1,
            ServerState {
                name: "pg0".into(),
                addr: "127.0.0.1".into(),
                port: 5432,
                up: true,
                admin_state: 0
            }
        );
        assert!(!s[1].1.up);
        let proc_text = "#<PID>          <type>          <reloads>       <uptime>        <version>\n31989           master          1 [failed: 0]   0d00h10m20s     2.6.12\n# workers\n32051           worker          0               0d00h00m01s     2.6.12\n# old workers\n31992           worker          1               0d00h10m20s     2.6.12\n# programs\n\n";
        assert_eq!(
            parse_show_proc(proc_text),
            Workers {
                current: vec![32051],
                old: vec![31992]
            }
        );
        assert_eq!(error_line("\n\n"), None);
        assert_eq!(error_line("\nNo such server.\n\n"), Some("No such server."));
    }
}
