//! `Proc`: a child process in its own process group, output appended to a log file, killed
//! (whole group, SIGKILL) on drop so a failed test leaves nothing running.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use crate::util::tail_lines;

/// Waits until every thread of `pid` is stopped. `kill(SIGSTOP)` only queues the signal: one
/// thread takes it and then stops the others, and until it has, another thread (woken by a
/// request on another core) can still answer. A test that freezes a process relies on it being
/// frozen when the call returns.
pub fn wait_stopped(pid: Pid, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("listing the threads of {name}"))?;
        let mut all_stopped = true;
        for task in tasks.flatten() {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("");
            // T: stopped by a signal; t: stopped by a tracer; Z/X: gone.
            if !matches!(state, "T" | "t" | "Z" | "X" | "") {
                all_stopped = false;
                break;
            }
        }
        if all_stopped {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} (pid {pid}) was sent SIGSTOP but is not stopped after 5 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A spawned child process with a name label and a log file.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log_path: PathBuf,
    status: Option<ExitStatus>,
    group_killed: bool,
}

impl Proc {
    /// Spawns `cmd` in a new process group (its pid is the group id), stdin from /dev/null,
    /// stdout and stderr appended to `log_path` (created if missing) after a header line.
    pub fn spawn(
        name: impl Into<String>,
        mut cmd: Command,
        log_path: impl Into<PathBuf>,
    ) -> anyhow::Result<Proc> {
        let name = name.into();
        let log_path = log_path.into();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening log {}", log_path.display()))?;
        writeln!(log, "--- harness: starting {name}: {cmd:?}")?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        Ok(Proc {
            name,
            child,
            log_path,
            status: None,
            group_killed: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Sends `sig` to the process itself (not its group). Fails once it has been reaped (its
    /// pid may then belong to someone else); until then the pid is ours, even as a zombie.
    pub fn signal(&self, sig: Signal) -> anyhow::Result<()> {
        if let Some(st) = self.status {
            bail!("{} has exited ({st}); not sending {sig}", self.name);
        }
        kill(self.pid(), sig).with_context(|| format!("sending {sig} to {}", self.name))?;
        if sig == Signal::SIGSTOP {
            wait_stopped(self.pid(), &self.name)?;
        }
        Ok(())
    }

    /// Sends `sig` to the whole process group (the process and children that stayed in it).
    pub fn signal_group(&self, sig: Signal) -> anyhow::Result<()> {
        match killpg(self.pid(), sig) {
            Ok(()) | Err(Errno::ESRCH) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("sending {sig} to group of {}", self.name)),
        }
    }

    /// SIGKILLs the process group and reaps the process (waits up to 5 s).
    pub fn kill(&mut self) {
        if !self.group_killed {
            let _ = killpg(self.pid(), Signal::SIGKILL);
            self.group_killed = true;
        }
        if self.status.is_none() {
            let _ = self.child.kill();
            self.wait_exit(Duration::from_secs(5));
        }
    }

    /// True until the process has exited (a stopped process counts as running).
    pub fn is_running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(st)) => {
                self.status = Some(st);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// The exit status if the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.is_running();
        self.status
    }

    /// Blocks up to `timeout` for the process to exit. Blocks the thread: in async tests
    /// prefer [`Proc::wait_exit_async`].
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() || Instant::now() >= deadline {
                return self.status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like [`Proc::wait_exit`], but sleeps with tokio.
    pub async fn wait_exit_async(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() || Instant::now() >= deadline {
                return self.status;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The whole log file (lossy UTF-8; empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the log file.
    pub fn log_tail(&self, n: usize) -> String {
        tail_lines(&self.log_path, n)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
