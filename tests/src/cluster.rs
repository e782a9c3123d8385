//! `Cluster`: n `patrol` agents (each managing a real PostgreSQL) sharing one etcd (a single
//! member, or several with [`Cluster::with_etcd_members`]), each node
//! on its own free ports under one temp root dir.
//!
//! Dangerous: `Drop` SIGKILLs every process whose working directory or command line lies under
//! a node's dir (agent, postmaster and backends, pg_basebackup, ...), so nothing outlives a test.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::errno::Errno;
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::{getpgrp, Pid};

use crate::bins::bin;
use crate::etcd::{Etcd, EtcdCluster};
use crate::ports::free_port;
use crate::process::Proc;
use crate::user::{as_agent_user, chown_to_agent, ensure_user, make_agent_dir};
use crate::util::{random_u64, tail_lines};

/// The DCS namespace every test cluster uses (Patroni's default), without trailing slash.
pub const NAMESPACE: &str = "/service";

/// PostgreSQL binaries the agents are configured with.
/// Where the PostgreSQL 15 binaries are.
pub const PG_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// Lines of each log printed when a test panics.
const DUMP_LINES: usize = 200;

type ConfigOverride = Box<dyn Fn(&mut String) + Send + Sync>;

struct Node {
    name: String,
    api_port: u16,
    pg_port: u16,
    dir: PathBuf,
    agent: Option<Proc>,
    config_override: Option<ConfigOverride>,
}

/// A test cluster: its own etcd, a temp root dir owned by the agent user, and n nodes
/// `pg0..pg{n-1}`. Agents are not started by [`Cluster::new`]; call [`Cluster::start_node`].
pub struct Cluster {
    // Field order matters: Drop::drop kills processes, then `root` is removed, then etcd.
    nodes: Vec<Node>,
    scope: String,
    root: tempfile::TempDir,
    etcd: EtcdCluster,
    /// [`Cluster::connect`] goes through each node's unix socket (in its node dir) instead
    /// of TCP, for clusters whose pg_hba allows TCP only with a client certificate.
    connect_by_socket: bool,
}

impl Cluster {
    /// Starts etcd and prepares `n` node dirs; starts no agent.
    pub fn new(n: usize) -> anyhow::Result<Cluster> {
        Self::with_etcd_members(n, 1)
    }

    /// Like [`Cluster::new`] on an etcd cluster of `etcd_members` members; every agent is
    /// given all of them (`etcd3.hosts`, in member order).
    pub fn with_etcd_members(n: usize, etcd_members: usize) -> anyhow::Result<Cluster> {
        ensure_user()?;
        let etcd = EtcdCluster::start(etcd_members)?;
        let root = tempfile::Builder::new()
            .prefix("patrol-test-")
            .tempdir()
            .context("creating cluster temp dir")?;
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o700))?;
        chown_to_agent(root.path())?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let name = format!("pg{i}");
            let dir = root.path().join(&name);
            make_agent_dir(&dir)?;
            nodes.push(Node {
                name,
                api_port: free_port(),
                pg_port: free_port(),
                dir,
                agent: None,
                config_override: None,
            });
        }
        Ok(Cluster {
            nodes,
            scope: format!("c{:08x}", random_u64() as u32),
            root,
            etcd,
            connect_by_socket: false,
        })
    }

    /// Makes [`Cluster::connect`] use each node's unix socket (`<node dir>`, which must be its
    /// `unix_socket_directories`, as in the default config) with `local ... trust`.
    pub fn connect_by_socket(&mut self, yes: bool) {
        self.connect_by_socket = yes;
    }

    fn node(&self, i: usize) -> &Node {
        assert!(i < self.nodes.len(), "node {i} of {}", self.nodes.len());
        &self.nodes[i]
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        assert!(i < self.nodes.len(), "node {i} of {}", self.nodes.len());
        &mut self.nodes[i]
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// `/service` (no trailing slash); keys live under `/service/<scope>/`.
    pub fn namespace(&self) -> &'static str {
        NAMESPACE
    }

    /// The DCS key prefix of this cluster: `/service/<scope>/`.
    pub fn prefix(&self) -> String {
        format!("{NAMESPACE}/{}/", self.scope)
    }

    /// The first etcd member (the only one unless [`Cluster::with_etcd_members`]).
    pub fn etcd(&self) -> &Etcd {
        self.etcd.member(0)
    }

    pub fn etcd_mut(&mut self) -> &mut Etcd {
        self.etcd.member_mut(0)
    }

    /// All etcd members.
    pub fn etcd_cluster(&self) -> &EtcdCluster {
        &self.etcd
    }

    pub fn etcd_cluster_mut(&mut self) -> &mut EtcdCluster {
        &mut self.etcd
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Member name of node `i`: `pg<i>`.
    pub fn name(&self, i: usize) -> &str {
        &self.node(i).name
    }

    /// Node `i`'s dir (`<root>/pg<i>`): config, agent.log, pgpass, unix sockets, data dir.
    pub fn node_dir(&self, i: usize) -> &Path {
        &self.node(i).dir
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.node(i).dir.join("data")
    }

    pub fn config_path(&self, i: usize) -> PathBuf {
        self.node(i).dir.join("patrol.yml")
    }

    pub fn agent_log_path(&self, i: usize) -> PathBuf {
        self.node(i).dir.join("agent.log")
    }

    /// Everything node `i`'s agents wrote so far (all runs; each starts with a
    /// `--- harness: starting` line).
    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read(self.agent_log_path(i))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    pub fn api_port(&self, i: usize) -> u16 {
        self.node(i).api_port
    }

    /// `http://127.0.0.1:<api port>`.
    pub fn api_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.node(i).api_port)
    }

    pub fn pg_port(&self, i: usize) -> u16 {
        self.node(i).pg_port
    }

    /// Makes [`Cluster::config_yaml`] (and so [`Cluster::start_node`]) pass node `i`'s
    /// generated YAML through `f` (e.g. a `replace` or an appended section).
    pub fn set_config_override(
        &mut self,
        i: usize,
        f: impl Fn(&mut String) + Send + Sync + 'static,
    ) {
        self.node_mut(i).config_override = Some(Box::new(f));
    }

    /// Node `i`'s Patroni-format YAML config, after its override if any.
    pub fn config_yaml(&self, i: usize) -> String {
        let n = self.node(i);
        let dir = n.dir.display();
        let mut yaml = format!(
            "\
scope: {scope}
namespace: {NAMESPACE}/
name: {name}
restapi: {{listen: 127.0.0.1:{api}, connect_address: 127.0.0.1:{api}}}
etcd3: {{hosts: [{etcd}]}}
bootstrap:
  dcs: {{ttl: 10, loop_wait: 1, retry_timeout: 3, maximum_lag_on_failover: 1048576, postgresql: {{use_pg_rewind: true, use_slots: true, parameters: {{wal_keep_size: 128MB}}}}}}
  initdb: [{{encoding: UTF8}}, data-checksums, {{auth-host: scram-sha-256}}]
  pg_hba: [local all all trust, host replication replicator 127.0.0.1/32 scram-sha-256, host all all 127.0.0.1/32 scram-sha-256]
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: {dir}/data
  pgpass: {dir}/pgpass
  authentication: {{superuser: {{username: postgres, password: supersecret}}, replication: {{username: replicator, password: replsecret}}, rewind: {{username: rewinder, password: rewindsecret}}}}
  parameters: {{unix_socket_directories: {dir}, shared_buffers: 16MB, max_connections: 50, fsync: off}}
  bin_dir: {PG_BIN_DIR}
tags: {{}}
",
            scope = self.scope,
            name = n.name,
            api = n.api_port,
            etcd = self.etcd.host_ports().join(", "),
            pg = n.pg_port,
        );
        if let Some(f) = &n.config_override {
            f(&mut yaml);
        }
        yaml
    }

    /// Starts node `i`'s agent with [`Cluster::config_yaml`].
    pub fn start_node(&mut self, i: usize) -> anyhow::Result<()> {
        let yaml = self.config_yaml(i);
        self.start_node_with(i, &yaml, &[])
    }

    /// Starts node `i`'s agent with the given config text.
    pub fn start_node_with_config(&mut self, i: usize, yaml: &str) -> anyhow::Result<()> {
        self.start_node_with(i, yaml, &[])
    }

    /// Starts node `i`'s agent: writes `yaml` to `<node dir>/patrol.yml` (0600, owned by the
    /// agent user) and runs `patrol <config>` as the agent user in the node dir, output
    /// appended to `agent.log`. The environment is cleared except `PATH`, `RUST_LOG`
    /// (default `info`) and `RUST_BACKTRACE`; `HOME` is the node dir; `env` is added last
    /// (e.g. `PATRONI_*` variables under test). Fails if the node's agent is still running.
    pub fn start_node_with(
        &mut self,
        i: usize,
        yaml: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let user = ensure_user()?;
        let node = self.node_mut(i);
        if let Some(agent) = node.agent.as_mut() {
            if agent.is_running() {
                bail!("agent {} is still running (pid {})", node.name, agent.pid());
            }
        }
        let config = node.dir.join("patrol.yml");
        std::fs::write(&config, yaml).with_context(|| format!("writing {}", config.display()))?;
        std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600))?;
        chown_to_agent(&config)?;

        let user_name = match &user {
            Some(u) => u.name.clone(),
            None => nix::unistd::User::from_uid(nix::unistd::getuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_default(),
        };
        let mut cmd = Command::new(bin("patrol"));
        cmd.arg(&config)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", &node.dir)
            .env("USER", &user_name)
            .env("LOGNAME", &user_name)
            .env(
                "RUST_LOG",
                std::env::var_os("RUST_LOG").unwrap_or_else(|| "info".into()),
            )
            .current_dir(&node.dir);
        if let Some(bt) = std::env::var_os("RUST_BACKTRACE") {
            cmd.env("RUST_BACKTRACE", bt);
        }
        cmd.envs(env.iter().copied());
        as_agent_user(&mut cmd)?;
        let log = node.dir.join("agent.log");
        node.agent = Some(Proc::spawn(format!("agent {}", node.name), cmd, log)?);
        Ok(())
    }

    /// Sends `sig` to node `i`'s agent process only (SIGTERM: clean stop; SIGKILL: crash that
    /// leaves PostgreSQL running; SIGSTOP/SIGCONT: freeze).
    pub fn stop_node(&self, i: usize, sig: Signal) -> anyhow::Result<()> {
        let node = self.node(i);
        match &node.agent {
            Some(agent) => agent.signal(sig),
            None => bail!("agent {} was never started", node.name),
        }
    }

    /// SIGKILLs node `i`'s agent process group and reaps it. PostgreSQL survives if it runs
    /// in its own session (as when started through `pg_ctl`).
    pub fn kill_node(&mut self, i: usize) {
        if let Some(agent) = self.node_mut(i).agent.as_mut() {
            agent.kill();
        }
    }

    /// Whether node `i`'s agent is running.
    pub fn is_node_running(&mut self, i: usize) -> bool {
        self.node_mut(i)
            .agent
            .as_mut()
            .is_some_and(|a| a.is_running())
    }

    /// Waits up to `timeout` for node `i`'s agent to exit; `None` if it is still running
    /// (or was never started).
    pub async fn wait_node_exit(&mut self, i: usize, timeout: Duration) -> Option<ExitStatus> {
        match self.node_mut(i).agent.as_mut() {
            Some(agent) => agent.wait_exit_async(timeout).await,
            None => None,
        }
    }

    /// Node `i`'s current (or last) agent process.
    pub fn agent(&self, i: usize) -> Option<&Proc> {
        self.node(i).agent.as_ref()
    }

    pub fn agent_mut(&mut self, i: usize) -> Option<&mut Proc> {
        self.node_mut(i).agent.as_mut()
    }

    /// The postmaster's pid from `<data dir>/postmaster.pid`, if that file exists and the
    /// process is alive with its working directory in the data dir (so a stale file whose
    /// pid was reused is ignored).
    pub fn postmaster_pid(&self, i: usize) -> Option<Pid> {
        let data_dir = self.data_dir(i);
        let text = std::fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        let pid = Pid::from_raw(pid);
        proc_cwd(pid)
            .filter(|cwd| cwd.starts_with(&data_dir))
            .map(|_| pid)
    }

    /// Sends `sig` to node `i`'s postmaster (SIGKILL: crash; SIGSTOP/SIGCONT: freeze of the
    /// postmaster only).
    pub fn signal_postgres(&self, i: usize, sig: Signal) -> anyhow::Result<()> {
        let pid = self
            .postmaster_pid(i)
            .with_context(|| format!("no running postmaster for {}", self.name(i)))?;
        kill(pid, sig).with_context(|| format!("sending {sig} to postmaster {pid}"))?;
        if sig == Signal::SIGSTOP {
            crate::process::wait_stopped(pid, "postmaster")?;
        }
        Ok(())
    }

    /// A superuser connection (TCP, password auth; or the unix socket after
    /// [`Cluster::connect_by_socket`]) to node `i`'s PostgreSQL; the connection
    /// task is spawned on the current runtime.
    pub async fn connect(&self, i: usize) -> anyhow::Result<tokio_postgres::Client> {
        let mut cfg = tokio_postgres::Config::new();
        if self.connect_by_socket {
            cfg.host_path(self.node_dir(i));
        } else {
            cfg.host("127.0.0.1");
        }
        cfg.port(self.pg_port(i))
            .user("postgres")
            .password("supersecret")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(5));
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.with_context(|| {
            format!("connecting to {} on port {}", self.name(i), self.pg_port(i))
        })?;
        tokio::spawn(async move {
            // The error (if any) surfaces on the client's next query.
            let _ = conn.await;
        });
        Ok(client)
    }

    /// All keys under `/service/<scope>/` with their values, sorted by key.
    pub async fn etcd_get_prefix(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut client = self.etcd.client().await?;
        let resp = client
            .get(
                self.prefix(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .context("etcd get prefix")?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect())
    }

    /// The value of `/service/<scope>/<key>` (e.g. `leader`, `config`, `members/pg0`).
    pub async fn etcd_get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let mut client = self.etcd.client().await?;
        let full = format!("{}{key}", self.prefix());
        let resp = client
            .get(full.as_str(), None)
            .await
            .with_context(|| format!("etcd get {full}"))?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// The member name in the leader key, if any.
    pub async fn leader(&self) -> anyhow::Result<Option<String>> {
        self.etcd_get("leader").await
    }

    /// A planned switchover from leader `from` to `to` through `from`'s REST API (`POST
    /// /switchover`, as patronictl does); fails unless the agent accepts it.
    pub async fn switchover(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let body = serde_json::json!({"leader": self.name(from), "candidate": self.name(to)});
        let r = reqwest::Client::new()
            .post(format!("{}/switchover", self.api_url(from)))
            .json(&body)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .context("POST /switchover")?;
        let status = r.status();
        anyhow::ensure!(
            status.is_success(),
            "switchover refused ({status}): {}",
            r.text().await?
        );
        Ok(())
    }

    /// `GET <api_url(i)><path>`: status code and body text (5 s timeout).
    pub async fn api_get(&self, i: usize, path: &str) -> anyhow::Result<(u16, String)> {
        let url = format!("{}{path}", self.api_url(i));
        crate::util::http_get(&url).await
    }

    /// Prints to stderr the tails of every node's logs (agent.log, other `*.log` in the node
    /// dir, `*.log` in the data dir's `log/`) and of etcd's log.
    pub fn dump_logs(&self) {
        for node in &self.nodes {
            let mut logs = vec![node.dir.join("agent.log")];
            logs.extend(
                log_files(&node.dir)
                    .into_iter()
                    .filter(|p| !p.ends_with("agent.log")),
            );
            logs.extend(log_files(&node.dir.join("data").join("log")));
            for path in logs {
                if path.exists() {
                    eprintln!(
                        "===== {} {} (last {DUMP_LINES} lines) =====\n{}",
                        node.name,
                        path.display(),
                        tail_lines(&path, DUMP_LINES)
                    );
                }
            }
        }
        for m in self.etcd.members() {
            eprintln!(
                "===== etcd {} {} (last {DUMP_LINES} lines) =====\n{}",
                m.name(),
                m.log_path().display(),
                m.log_tail(DUMP_LINES)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(agent) = node.agent.as_mut() {
                agent.kill();
            }
        }
        for i in 0..self.nodes.len() {
            if let Some(pid) = self.postmaster_pid(i) {
                kill_with_group(pid);
            }
        }
        let dirs: Vec<PathBuf> = self.nodes.iter().map(|n| n.dir.clone()).collect();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = processes_under(&dirs);
            if left.is_empty() || Instant::now() >= deadline {
                if !left.is_empty() {
                    eprintln!("harness: processes still alive under {dirs:?}: {left:?}");
                }
                break;
            }
            for pid in left {
                kill_with_group(pid);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.etcd.kill_all();
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

/// `*.log` files directly in `dir`, sorted by name.
fn log_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "log"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn proc_cwd(pid: Pid) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// The process group of `pid` from `/proc/<pid>/stat` (field 5, after the `(comm)`).
fn proc_pgid(pid: Pid) -> Option<Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let pgid: i32 = after_comm.split_whitespace().nth(2)?.parse().ok()?;
    Some(Pid::from_raw(pgid))
}

/// SIGKILLs `pid` and, unless it is ours or init's, its process group.
fn kill_with_group(pid: Pid) {
    let pgid = proc_pgid(pid);
    let _ = kill(pid, Signal::SIGKILL);
    if let Some(pgid) = pgid {
        if pgid.as_raw() > 1 && pgid != getpgrp() {
            match killpg(pgid, Signal::SIGKILL) {
                Ok(()) | Err(Errno::ESRCH) | Err(Errno::EPERM) => {}
                Err(e) => eprintln!("harness: killpg {pgid}: {e}"),
            }
        }
    }
}

/// Live processes (not this one) whose working directory is under one of `dirs` or whose
/// command line mentions one of them. Zombies have neither, so they do not count.
fn processes_under(dirs: &[PathBuf]) -> Vec<Pid> {
    let me = std::process::id() as i32;
    let needles: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || pid <= 1 {
            continue;
        }
        let pid = Pid::from_raw(pid);
        let cwd_match = proc_cwd(pid).is_some_and(|cwd| dirs.iter().any(|d| cwd.starts_with(d)));
        let cmd_match = || {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|raw| {
                let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
                needles.iter().any(|n| cmdline.contains(n.as_str()))
            })
        };
        if cwd_match || cmd_match() {
            found.push(pid);
        }
    }
    found
}
