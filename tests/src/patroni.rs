//! Patroni's own `patronictl`, installed from PyPI into a venv once per machine, to check that
//! Patroni's tools work against patrol clusters.
//!
//! Dangerous: the first call downloads Patroni and its dependencies with pip (a minute or so);
//! a file lock keeps parallel test processes from building the venv twice.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{bail, Context};
use nix::fcntl::{Flock, FlockArg};

use crate::bins::workspace_dir;
use crate::cluster::{Cluster, NAMESPACE};
use crate::util::tail_lines;

/// How long a patronictl command may run.
pub const PATRONICTL_LIMIT: std::time::Duration = std::time::Duration::from_secs(120);

/// Path to `patronictl` in the venv at `$PATROL_PATRONI_VENV` (default
/// `<workspace>/target/patroni-venv`), creating the venv with `python3 -m venv` and
/// `pip install 'patroni[etcd3]' psycopg2-binary` if `bin/patronictl` is missing.
pub fn patronictl() -> anyhow::Result<PathBuf> {
    let venv = std::env::var_os("PATROL_PATRONI_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_dir().join("target").join("patroni-venv"));
    let ctl = venv.join("bin").join("patronictl");
    if ctl.is_file() {
        return Ok(ctl);
    }
    if let Some(parent) = venv.parent() {
        std::fs::create_dir_all(parent).with_context(|| format!("mkdir {}", parent.display()))?;
    }
    let lock_path = venv.with_extension("lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .with_context(|| format!("locking {}", lock_path.display()))?;
    // Another process may have built it while we waited for the lock.
    if ctl.is_file() {
        return Ok(ctl);
    }
    build_venv(&venv)?;
    if !ctl.is_file() {
        bail!("pip finished but {} is missing", ctl.display());
    }
    Ok(ctl)
}

fn build_venv(venv: &Path) -> anyhow::Result<()> {
    if venv.exists() {
        // A half-built venv from an interrupted run.
        std::fs::remove_dir_all(venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    let log_path = venv.with_extension("log");
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let python = if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let steps: [(PathBuf, Vec<&str>); 2] = [
        (PathBuf::from(python), vec!["-m", "venv", path_str(venv)?]),
        (
            venv.join("bin").join("pip"),
            vec![
                "install",
                "--disable-pip-version-check",
                "patroni[etcd3]",
                "psycopg2-binary",
            ],
        ),
    ];
    for (program, args) in steps {
        let status = Command::new(&program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log.try_clone()?)
            .status()
            .with_context(|| format!("running {}", program.display()))?;
        if !status.success() {
            bail!(
                "{} {} failed ({status}); log {}:\n{}",
                program.display(),
                args.join(" "),
                log_path.display(),
                tail_lines(&log_path, 30)
            );
        }
    }
    Ok(())
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str()
        .with_context(|| format!("path is not UTF-8: {}", p.display()))
}

impl Cluster {
    /// Writes a minimal patronictl config for this cluster (`<root>/patronictl.yml`) and
    /// returns its path.
    pub fn patronictl_config(&self) -> anyhow::Result<PathBuf> {
        let path = self.root().join("patronictl.yml");
        let yaml = format!(
            "scope: {}\nnamespace: {NAMESPACE}/\netcd3:\n  hosts: [{}]\n",
            self.scope(),
            self.etcd_cluster().host_ports().join(", ")
        );
        std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Runs `patronictl -c <patronictl_config> <args>` as the current user, without any
    /// `PATRONI_*` variables and with stdin from /dev/null (so confirmation prompts fail
    /// instead of hanging: pass `--force`).
    pub fn run_patronictl(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.run_patronictl_with(args, &[], None)
    }

    /// [`Cluster::run_patronictl`] with extra environment variables and `stdin` as its input
    /// (answers to its prompts). patronictl has no timeout of its own (`demote-cluster` polls
    /// until it sees the result): it is killed after [`PATRONICTL_LIMIT`] and that is an error.
    pub fn run_patronictl_with(
        &self,
        args: &[&str],
        env: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> anyhow::Result<Output> {
        let ctl = patronictl()?;
        let config = self.patronictl_config()?;
        let mut cmd = Command::new(&ctl);
        cmd.arg("-c")
            .arg(&config)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PATRONI_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(env.iter().copied());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("running {} {args:?}", ctl.display()))?;
        if let Some(input) = stdin {
            use std::io::Write;
            let mut pipe = child.stdin.take().context("patronictl's stdin")?;
            pipe.write_all(input.as_bytes())
                .context("writing patronictl's stdin")?;
        }
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(PATRONICTL_LIMIT) {
            Ok(out) => out.with_context(|| format!("running patronictl {args:?}")),
            Err(_) => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
                bail!("patronictl {args:?} did not finish within {PATRONICTL_LIMIT:?}")
            }
        }
    }
}
