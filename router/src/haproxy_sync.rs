//! Keeps a running HAProxy (configured by `patrol-router haproxy-config`) in step with the
//! routing table, for users who keep HAProxy in front of the cluster.
//!
//! - **Leader and pool changes** (every routing-table swap): server states are flipped at once
//!   through HAProxy's runtime API, in one `;`-separated command line: in the `primary` listen
//!   every server but the writer is forced `health down` and its sessions are shut down, then
//!   the writer is forced `health up`; in the `replicas` listen the read pool is `state ready`
//!   and `health up`, members that are alive but out of the pool (lag, hold-down, the leader)
//!   are set to `state drain` (no new sessions, their sessions stay, as the router's own read
//!   port does with `read.keep_sessions_on_lag`), and dead, demoted or departed members are
//!   forced `health down` with their sessions shut down. HAProxy then follows a leader change
//!   within milliseconds of the router's decision instead of `inter x fall` seconds. HAProxy's
//!   own health checks keep running as the safety net: if the router is wrong or gone, the
//!   next failed or passed checks correct any forced health (a drain stays until the router,
//!   restarted, sets the server ready again). Only changes are sent, so the router does not
//!   fight the checks between swaps, and nothing is sent before the router has probed every
//!   member once (its first tables have no writer; acting on them would cut every session of
//!   a running HAProxy when the router restarts).
//! - **Members joining or leaving** (with `--haproxy-config`): only the `server` lines of the
//!   two listens are rewritten (everything else in the file stays the user's), the new file is
//!   checked with `haproxy -c`, `show servers state` is saved to the `server-state-file` the
//!   configuration names (so the new worker starts with the states the router set), and HAProxy
//!   is reloaded in master-worker mode (`haproxy -W -S <master socket>`: the master CLI's
//!   `reload`, or SIGUSR2 to the master in `--haproxy-pid-file`). The new worker takes the
//!   listening sockets over (`expose-fd listeners`), so no connection is refused, and the old
//!   worker keeps serving its sessions until they end: sessions to unaffected servers survive.
//!   Once the new worker answers, the state is applied to it again; old workers still serving
//!   sessions get the `primary` downs and session shutdowns through the master CLI (`@!<pid>`).
//!   A member that disappears from etcd keeps its (forced-down) server for `REMOVE_AFTER`, so
//!   an agent restart does not cost two reloads.
//!
//! Relative paths (socket, state file) are resolved from the router's working directory; give
//! absolute ones when HAProxy runs elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use patrol_dcs::Cluster;
use patrol_haproxy::{
    replace_servers, server_name, servers_in, set_health, shutdown_sessions, MasterCli, RuntimeApi,
    Server, PRIMARY, REPLICAS,
};
use tokio::sync::watch;

use crate::config::Config;
use crate::state::Shared;
use crate::table::{keeps_read, Table};

/// How long a member gone from etcd keeps its server line before the file is rewritten.
pub const REMOVE_AFTER: Duration = Duration::from_secs(30);

/// How often the worker answering on the runtime socket is checked (a restarted HAProxy gets
/// the current state again).
const RECHECK: Duration = Duration::from_secs(2);

/// How long a reload may take before it counts as failed.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(15);

/// What `patrol-router --haproxy-*` asked for (`main` passes it to [`crate::run`], which runs
/// the sync with it).
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Runtime API socket (`stats socket ... level admin`).
    pub socket: PathBuf,
    /// The configuration file to keep the server lines of (members joining or leaving).
    pub config: Option<PathBuf>,
    /// Master CLI socket (`haproxy -W -S <path>`): reloads and old workers.
    pub master_socket: Option<PathBuf>,
    /// Master pid file (`haproxy -W -p <path>`): reload with SIGUSR2 when there is no master
    /// socket.
    pub pid_file: Option<PathBuf>,
    /// The `haproxy` binary used to check a rewritten file (`haproxy -c`).
    pub haproxy_bin: PathBuf,
    pub remove_after: Duration,
}

impl Settings {
    pub fn new(socket: impl Into<PathBuf>) -> Settings {
        Settings {
            socket: socket.into(),
            config: None,
            master_socket: None,
            pid_file: None,
            haproxy_bin: "haproxy".into(),
            remove_after: REMOVE_AFTER,
        }
    }
}

/// What the `replicas` listen should do with one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadState {
    /// In the read pool: `state ready`, `health up`.
    Up,
    /// Alive but out of the pool (lag, hold-down, `noloadbalance`, or the leader): `state
    /// drain`, so it takes no new sessions and keeps the ones it has (a forced `health down`
    /// would cut them through `on-marked-down shutdown-sessions`).
    Drain,
    /// Dead, demoted or gone: `health down`, sessions shut down, admin state back to ready so
    /// HAProxy's own checks decide about it from then on.
    Down,
}

/// The state the router wants HAProxy in, by HAProxy server name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub writer: Option<String>,
    pub read: BTreeMap<String, ReadState>,
}

impl Desired {
    /// The read pool is up; members out of it that keep their read sessions on the router's
    /// own read port ([`keeps_read`]) drain; the rest are down.
    pub fn from_table(t: &Table, cfg: &Config) -> Desired {
        Desired {
            writer: t.writer.as_ref().map(|w| server_name(&w.name)),
            read: t
                .members
                .iter()
                .map(|v| {
                    let st = if v.in_read_pool {
                        ReadState::Up
                    } else if keeps_read(cfg, v) {
                        ReadState::Drain
                    } else {
                        ReadState::Down
                    };
                    (server_name(&v.name), st)
                })
                .collect(),
        }
    }

    /// Servers HAProxy has but the cluster does not are down.
    pub fn read_state(&self, server: &str) -> ReadState {
        self.read.get(server).copied().unwrap_or(ReadState::Down)
    }
}

/// The servers HAProxy has, and the worker they were read from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    pub pid: u32,
    pub primary: BTreeSet<String>,
    pub replicas: BTreeSet<String>,
}

/// The runtime commands that take HAProxy from `prev` (what was applied last; `None`: unknown,
/// so everything) to `want`: every down and session shutdown first, then the ups, so the
/// `primary` listen never has two servers up at once.
pub fn commands(known: &Known, want: &Desired, prev: Option<&Desired>) -> Vec<String> {
    let mut downs = Vec::new();
    let mut ups = Vec::new();
    for s in &known.primary {
        let is_writer = want.writer.as_deref() == Some(s.as_str());
        let was_writer = prev.map(|p| p.writer.as_deref() == Some(s.as_str()));
        if is_writer {
            if was_writer != Some(true) {
                ups.push(set_health(PRIMARY, s, true));
            }
        } else if was_writer != Some(false) {
            downs.push(set_health(PRIMARY, s, false));
            downs.push(shutdown_sessions(PRIMARY, s));
        }
    }
    for s in &known.replicas {
        let st = want.read_state(s);
        let was = prev.map(|p| p.read_state(s));
        if was == Some(st) {
            continue;
        }
        match st {
            ReadState::Up => {
                ups.push(set_state(REPLICAS, s, "ready"));
                ups.push(set_health(REPLICAS, s, true));
            }
            ReadState::Drain => downs.push(set_state(REPLICAS, s, "drain")),
            ReadState::Down => {
                downs.push(set_health(REPLICAS, s, false));
                downs.push(shutdown_sessions(REPLICAS, s));
                if was != Some(ReadState::Up) {
                    downs.push(set_state(REPLICAS, s, "ready"));
                }
            }
        }
    }
    downs.extend(ups);
    downs
}

/// `set server <backend>/<server> state ready|drain|maint`.
fn set_state(backend: &str, server: &str, state: &str) -> String {
    format!("set server {backend}/{server} state {state}")
}

async fn learn(api: &RuntimeApi) -> anyhow::Result<Known> {
    let pid = api.worker_pid().await?;
    let names = |v: Vec<patrol_haproxy::ServerState>| v.into_iter().map(|s| s.name).collect();
    Ok(Known {
        pid,
        primary: names(api.servers(PRIMARY).await?),
        replicas: names(api.servers(REPLICAS).await?),
    })
}

/// `server-state-file <path>` of the global section, if any.
fn state_file_of(config: &str) -> Option<PathBuf> {
    config.lines().find_map(|l| {
        let mut w = l.split_whitespace();
        (w.next() == Some("server-state-file"))
            .then(|| w.next().map(PathBuf::from))
            .flatten()
    })
}

struct Sync {
    settings: Settings,
    shared: Arc<Shared>,
    api: RuntimeApi,
    master: Option<MasterCli>,
    known: Option<Known>,
    applied: Option<Desired>,
    checked_at: Instant,
    gone_since: BTreeMap<String, Instant>,
    /// The target server set of a rewrite that failed (not retried until it changes).
    failed_target: Option<Vec<Server>>,
    /// Members left out of the configuration (unusable `conn_url` or `api_url`), as last logged.
    skipped: Vec<String>,
}

impl Sync {
    /// Brings HAProxy's server states to the table's.
    async fn apply(&mut self, table: &Table) -> anyhow::Result<()> {
        if self.known.is_none() {
            self.known = Some(learn(&self.api).await?);
            self.applied = None;
            self.checked_at = Instant::now();
        }
        let known = self.known.clone().unwrap_or_default();
        let want = Desired::from_table(table, &self.shared.cfg);
        if self.applied.as_ref() == Some(&want) {
            return Ok(());
        }
        let started = Instant::now();
        let cmds = commands(&known, &want, self.applied.as_ref());
        if let Err(e) = self.api.batch(&cmds).await {
            self.known = None;
            self.applied = None;
            return Err(e).context("applying server states through the runtime API");
        }
        let writer_changed = self.applied.as_ref().map(|a| &a.writer) != Some(&want.writer);
        if writer_changed {
            self.shared.event(format!(
                "haproxy: primary -> {} (runtime API, {:.1} ms)",
                want.writer.as_deref().unwrap_or("none"),
                started.elapsed().as_secs_f64() * 1000.0
            ));
            self.old_workers(&known, &want).await;
        }
        tracing::debug!(?cmds, "haproxy: applied");
        self.applied = Some(want);
        Ok(())
    }

    /// Old workers still serving sessions after a reload: the `primary` downs and session
    /// shutdowns, best effort (they may lack a newer server).
    async fn old_workers(&self, known: &Known, want: &Desired) {
        let Some(m) = &self.master else { return };
        let old = match m.workers().await {
            Ok(w) => w.old,
            Err(e) => {
                tracing::debug!("haproxy: show proc: {e}");
                return;
            }
        };
        let cmds: Vec<String> = known
            .primary
            .iter()
            .filter(|s| want.writer.as_deref() != Some(s.as_str()))
            .flat_map(|s| [set_health(PRIMARY, s, false), shutdown_sessions(PRIMARY, s)])
            .collect();
        for pid in old {
            if let Err(e) = m.on_worker(pid, &cmds).await {
                tracing::debug!("haproxy: old worker {pid}: {e}");
            }
        }
    }

    /// A restarted or reloaded HAProxy (new worker pid) gets everything again.
    async fn recheck(&mut self) -> anyhow::Result<()> {
        if self.checked_at.elapsed() < RECHECK {
            return Ok(());
        }
        self.checked_at = Instant::now();
        let Some(k) = &self.known else { return Ok(()) };
        let pid = self.api.worker_pid().await?;
        if pid != k.pid {
            self.shared.event(format!(
                "haproxy: worker {} replaced by {pid}: applying the routing state again",
                k.pid
            ));
            self.known = None;
            self.applied = None;
        }
        Ok(())
    }

    /// Rewrites the server lines when members joined or left, and reloads. Returns whether it
    /// reloaded.
    async fn membership(&mut self, cluster: &Cluster) -> anyhow::Result<bool> {
        let Some(path) = self.settings.config.clone() else {
            return Ok(false);
        };
        let (members, skipped) = Server::from_cluster_checked(cluster);
        if skipped != self.skipped {
            for why in skipped.iter().filter(|w| !self.skipped.contains(w)) {
                tracing::error!("haproxy: {why}");
            }
            self.skipped = skipped;
        }
        if members.is_empty() {
            return Ok(false);
        }
        let text = tokio::fs::read_to_string(&path)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        let in_file = servers_in(&text);
        let now = Instant::now();
        let names: BTreeSet<&str> = members.iter().map(|s| s.name.as_str()).collect();
        self.gone_since.retain(|n, _| !names.contains(n.as_str()));
        let mut target = members.clone();
        for s in &in_file {
            if names.contains(s.name.as_str()) {
                continue;
            }
            let since = *self.gone_since.entry(s.name.clone()).or_insert(now);
            if now.saturating_duration_since(since) < self.settings.remove_after {
                target.push(s.clone());
            }
        }
        target.sort();
        if self.failed_target.as_ref() == Some(&target) {
            return Ok(false);
        }
        let new = replace_servers(&text, &target).map_err(|e| anyhow::anyhow!(e))?;
        if new == text {
            return Ok(false);
        }
        match self.rewrite_and_reload(&path, &new, &target).await {
            Ok(()) => {
                self.failed_target = None;
                Ok(true)
            }
            Err(e) => {
                self.failed_target = Some(target);
                Err(e)
            }
        }
    }

    async fn rewrite_and_reload(
        &mut self,
        path: &Path,
        new: &str,
        target: &[Server],
    ) -> anyhow::Result<()> {
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".patrol-new");
        let tmp = PathBuf::from(tmp);
        tokio::fs::write(&tmp, new)
            .await
            .with_context(|| format!("writing {}", tmp.display()))?;
        let check = tokio::process::Command::new(&self.settings.haproxy_bin)
            .arg("-c")
            .arg("-f")
            .arg(&tmp)
            .output()
            .await;
        match check {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                bail!(
                    "haproxy -c rejects the rewritten configuration (left unchanged): {}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            Err(e) => tracing::warn!(
                "haproxy: cannot run {} -c ({e}); reloading unchecked",
                self.settings.haproxy_bin.display()
            ),
        }
        if let Some(state) = state_file_of(new) {
            match self.api.dump_state().await {
                Ok(dump) => {
                    if let Err(e) = tokio::fs::write(&state, dump).await {
                        tracing::warn!("haproxy: cannot write {}: {e}", state.display());
                    }
                }
                Err(e) => tracing::warn!("haproxy: show servers state: {e}"),
            }
        }
        tokio::fs::rename(&tmp, path)
            .await
            .with_context(|| format!("replacing {}", path.display()))?;
        let old_pid = match &self.known {
            Some(k) => k.pid,
            None => self.api.worker_pid().await.unwrap_or(0),
        };
        let names: Vec<&str> = target.iter().map(|s| s.name.as_str()).collect();
        if let Some(m) = &self.master {
            m.reload().await.context("reload through the master CLI")?;
        } else if let Some(p) = &self.settings.pid_file {
            patrol_haproxy::reload_by_signal(p)?;
        } else {
            self.shared.event(format!(
                "haproxy: servers now {} in {}; reload HAProxy to apply it (no master socket or pid file given)",
                names.join(", "),
                path.display()
            ));
            return Ok(());
        }
        // The new worker answers on the runtime socket with the new server set.
        let deadline = Instant::now() + RELOAD_TIMEOUT;
        let want: BTreeSet<String> = names.iter().map(|s| s.to_string()).collect();
        loop {
            if let Ok(k) = learn(&self.api).await {
                if k.pid != old_pid && k.primary == want && k.replicas == want {
                    self.shared.event(format!(
                        "haproxy: servers now {} (configuration rewritten, reloaded: worker {old_pid} -> {})",
                        names.join(", "),
                        k.pid
                    ));
                    self.known = Some(k);
                    self.applied = None;
                    self.checked_at = Instant::now();
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                self.known = None;
                self.applied = None;
                bail!(
                    "HAProxy did not come back with servers {} within {RELOAD_TIMEOUT:?} after the reload",
                    names.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs until the process ends (a failure is logged and retried, never fatal: HAProxy's own
/// checks keep routing meanwhile).
pub async fn run(
    settings: Settings,
    shared: Arc<Shared>,
    mut cluster_rx: watch::Receiver<Option<Arc<Cluster>>>,
) {
    let mut table_rx = shared.table_tx.subscribe();
    let mut s = Sync {
        api: RuntimeApi::new(&settings.socket),
        master: settings.master_socket.as_ref().map(MasterCli::new),
        settings,
        shared: shared.clone(),
        known: None,
        applied: None,
        checked_at: Instant::now(),
        gone_since: BTreeMap::new(),
        failed_target: None,
        skipped: Vec::new(),
    };
    shared.event(format!(
        "haproxy: driving {} (config {})",
        s.settings.socket.display(),
        s.settings
            .config
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "not managed".into())
    ));
    let mut failing: Option<String> = None;
    let started = Instant::now();
    let grace = shared.cfg.probe_interval * 4 + shared.cfg.probe_timeout;
    let mut settled = false;
    loop {
        let table = shared.table.load_full();
        let cluster = cluster_rx.borrow_and_update().clone();
        // Nothing is sent before the router has a considered view (etcd read and every member
        // probed once): the first tables have no writer yet, and forcing servers down from
        // them would cut every session of a running HAProxy when the router (re)starts.
        settled = settled || started.elapsed() >= grace || {
            let probes = shared.probes.lock().unwrap_or_else(|p| p.into_inner());
            table.dcs_healthy
                && !table.members.is_empty()
                && table.members.iter().all(|m| probes.contains_key(&m.name))
        };
        let r: anyhow::Result<()> = async {
            if !settled || table.generation == 0 {
                return Ok(());
            }
            s.apply(&table).await?;
            if let (Some(c), true) = (cluster.as_deref(), table.dcs_healthy) {
                if s.membership(c).await? {
                    let table = shared.table.load_full();
                    s.apply(&table).await?;
                }
            }
            s.recheck().await
        }
        .await;
        match r {
            Ok(()) => {
                if failing.take().is_some() {
                    shared.event("haproxy: in sync again");
                }
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if failing.as_deref() != Some(msg.as_str()) {
                    shared.event(format!("haproxy: {msg}"));
                }
                failing = Some(msg);
            }
        }
        let pause = if !settled {
            Duration::from_millis(100)
        } else if failing.is_some() {
            Duration::from_secs(1)
        } else {
            RECHECK
        };
        tokio::select! {
            r = table_rx.changed() => if r.is_err() { std::future::pending::<()>().await },
            r = cluster_rx.changed() => if r.is_err() { std::future::pending::<()>().await },
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn commands_put_downs_before_ups_and_send_only_changes() {
        use ReadState::*;
        let known = Known {
            pid: 1,
            primary: set(&["pg0", "pg1", "pg2"]),
            replicas: set(&["pg0", "pg1", "pg2"]),
        };
        let read = |v: &[(&str, ReadState)]| -> BTreeMap<String, ReadState> {
            v.iter().map(|(n, s)| (n.to_string(), *s)).collect()
        };
        let a = Desired {
            writer: Some("pg0".into()),
            read: read(&[("pg0", Drain), ("pg1", Up), ("pg2", Up)]),
        };
        let all = commands(&known, &a, None);
        assert_eq!(
            all,
            [
                "set server primary/pg1 health down",
                "shutdown sessions server primary/pg1",
                "set server primary/pg2 health down",
                "shutdown sessions server primary/pg2",
                "set server replicas/pg0 state drain",
                "set server primary/pg0 health up",
                "set server replicas/pg1 state ready",
                "set server replicas/pg1 health up",
                "set server replicas/pg2 state ready",
                "set server replicas/pg2 health up",
            ]
        );
        assert!(commands(&known, &a, Some(&a)).is_empty());
        // pg0 dies, pg1 takes over, pg2 lags.
        let b = Desired {
            writer: Some("pg1".into()),
            read: read(&[("pg1", Drain), ("pg2", Drain)]),
        };
        assert_eq!(
            commands(&known, &b, Some(&a)),
            [
                "set server primary/pg0 health down",
                "shutdown sessions server primary/pg0",
                "set server replicas/pg0 health down",
                "shutdown sessions server replicas/pg0",
                "set server replicas/pg0 state ready",
                "set server replicas/pg1 state drain",
                "set server replicas/pg2 state drain",
                "set server primary/pg1 health up",
            ]
        );
    }

    #[test]
    fn state_file_is_read_from_the_global_section() {
        assert_eq!(
            state_file_of("global\n    server-state-file /var/lib/haproxy/state\n"),
            Some(PathBuf::from("/var/lib/haproxy/state"))
        );
        assert_eq!(state_file_of("global\n    maxconn 1\n"), None);
    }
}
