//! The HA loop: observe (DCS snapshot + local PostgreSQL), decide (pure), execute the actions
//! in order, publish our member key, sleep until `loop_wait` or an earlier wake-up.
//!
//! Dangerous part: leadership. We act as leader only after a successful lease keep-alive and
//! leader-key transaction in this cycle; a failed refresh of a running primary demotes it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use patrol_dcs::{Cluster, ClusterConfig, Dcs, DcsError, MemberData, Role, Status};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::decide::{
    decide, Action, DataState, LocalPg, Observation, PeerStatus, Task, TaskResult, Upstream,
};
use super::state::{NodeState, Request, RestartFilters, SharedState};
use crate::config::Config;
use crate::postgres::{
    primary_conninfo, ConfigFiles, DataDir, LocalStatus, PgClient, Postgres, Recovery,
};

/// The version we publish: Patroni-compatible (4.x) so peers and tools take the 4.x paths.
pub const PATRONI_VERSION: &str = "4.1.4";

pub struct Ha<D: Dcs> {
    cfg: Arc<Config>,
    dcs: Arc<D>,
    pg: Postgres,
    client: Arc<PgClient>,
    shared: Arc<SharedState>,
    in_flight: Option<(Task, JoinHandle<Result<(), String>>)>,
    last_result: Option<TaskResult>,
    bootstrapping: bool,
    following: Option<String>,
    last_reason: String,
    last_member_json: Option<(String, i64)>,
    dynamic: ClusterConfig,
    lease_deadline: Option<Instant>,
    /// PostgreSQL was running under us and went away without our doing.
    was_running: bool,
    /// This data directory was a primary that another leader replaced (sticky until rewound).
    needs_rewind: bool,
    rewind_failed: bool,
    /// Since when we hold the key while our PostgreSQL is down.
    primary_down_since: Option<Instant>,
    requests: Option<tokio::sync::mpsc::UnboundedReceiver<Request>>,
    /// A restart scheduled through the REST API: filters, schedule text, due time (epoch ms).
    scheduled_restart: Option<(RestartFilters, String, i64)>,
    /// The next clone must come from the leader (`POST /reinitialize` with `from_leader`).
    clone_from_leader: bool,
    /// Where to re-read the local configuration from on reload.
    reload: Option<crate::ReloadSource>,
    /// As leader: when each member slot last had a member (`member_slots_ttl`), and what was
    /// last computed for `status.retain_slots`.
    slot_retention: super::slots::SlotRetention,
    retain_slots: Option<Vec<String>>,
    /// What the dynamic configuration asked for that Patrol does not do, last time it was logged.
    unsupported: crate::config::DynamicNotice,
    /// The revision of the DCS `config` key last refused as invalid (logged once per revision;
    /// `self.dynamic` keeps the last valid one).
    refused_config: Option<i64>,
    /// Members whose `conn_url` or `api_url` cannot be used, with why, as last logged.
    unusable_members: std::collections::BTreeMap<String, String>,
}

/// What ends the loop.
#[derive(Debug)]
pub enum Exit {
    Shutdown,
    Fatal(String),
}

impl<D: Dcs> Ha<D> {
    pub fn new(cfg: Arc<Config>, dcs: Arc<D>, shared: Arc<SharedState>) -> Ha<D> {
        let pg = Postgres::new(&cfg);
        let client = Arc::new(PgClient::new(pg.local_conn_config()));
        let dynamic = ClusterConfig::from_map(cfg.bootstrap.dcs.clone());
        // `bootstrap.dcs` passed the same check at load; the DCS `config` key replaces it once
        // read (`apply_dynamic`).
        shared.set_dynamic(dynamic.timing(), dynamic.pause());
        let requests = shared.take_requests();
        let mut ha = Ha {
            cfg,
            dcs,
            pg,
            client,
            shared,
            in_flight: None,
            last_result: None,
            bootstrapping: false,
            following: None,
            last_reason: String::new(),
            last_member_json: None,
            dynamic,
            lease_deadline: None,
            was_running: false,
            needs_rewind: false,
            rewind_failed: false,
            primary_down_since: None,
            requests: None,
            scheduled_restart: None,
            clone_from_leader: false,
            reload: None,
            slot_retention: Default::default(),
            retain_slots: None,
            unsupported: Default::default(),
            refused_config: None,
            unusable_members: Default::default(),
        };
        ha.requests = requests;
        ha
    }

    /// Enables `Request::Reload` (SIGHUP, `POST /reload`).
    pub fn with_reload(mut self, reload: crate::ReloadSource) -> Self {
        self.reload = Some(reload);
        self
    }

    /// Re-reads the local configuration; applies what can change at run time (PostgreSQL
    /// parameters and pg_hba, followed by a reload of PostgreSQL; tags; authentication used for
    /// replication and rewind) and names what needs a restart of the agent.
    async fn reload_config(&mut self, cluster: &Cluster) -> (u16, String) {
        let Some(src) = &self.reload else {
            return (503, "reload is not available".into());
        };
        let loaded = match src.load() {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("reload: keeping the running configuration: {e}");
                return (400, format!("configuration not reloaded: {e}"));
            }
        };
        for w in &loaded.warnings {
            tracing::warn!("{w}");
        }
        let new = loaded.config;
        let old = &self.cfg;
        let mut needs_restart = Vec::new();
        if new.name != old.name || new.scope != old.scope || new.namespace != old.namespace {
            needs_restart.push("name/scope/namespace");
        }
        if new.restapi.listen != old.restapi.listen || new.etcd.endpoints != old.etcd.endpoints {
            needs_restart.push("restapi.listen/etcd");
        }
        if new.postgresql.data_dir != old.postgresql.data_dir
            || new.postgresql.listen != old.postgresql.listen
        {
            needs_restart.push("postgresql.data_dir/listen");
        }
        if !needs_restart.is_empty() {
            tracing::warn!(
                "reload: {} changed; these take effect when the agent restarts",
                needs_restart.join(", ")
            );
        }
        self.cfg = Arc::new(new);
        self.pg = Postgres::new(&self.cfg);
        self.client = Arc::new(PgClient::new(self.pg.local_conn_config()));
        self.last_member_json = None;
        if self.pg.is_running() && self.in_flight.is_none() {
            let primary = self
                .client
                .status()
                .await
                .map(|s| !s.in_recovery)
                .unwrap_or(false);
            let files = if primary {
                self.config_files(None)
            } else {
                let up = cluster
                    .leader_member()
                    .filter(|m| m.name != self.cfg.name)
                    .map(|m| Upstream {
                        name: m.name.clone(),
                        conn_url: m.data.conn_url.clone(),
                    });
                self.config_files(Some(up))
            };
            if let Err(e) = self.pg.write_pgpass() {
                return (503, format!("reload failed: {e}"));
            }
            if let Err(e) = self.pg.write_config(&files) {
                return (503, format!("reload failed: {e}"));
            }
            if let Err(e) = self.pg.reload().await {
                return (503, format!("reload failed: {e}"));
            }
        }
        tracing::info!("reloaded the local configuration");
        (202, "reload scheduled".into())
    }

    /// The one current timing (also what the lease guard, the etcd client and the REST API use).
    fn timing(&self) -> patrol_dcs::Timing {
        self.shared.timing()
    }

    /// Runs cycles until shutdown or a fatal condition.
    pub async fn run(
        mut self,
        mut cluster_rx: watch::Receiver<Option<Arc<Cluster>>>,
        shutdown: CancellationToken,
    ) -> Exit {
        let guard = tokio::spawn(lease_guard(self.shared.clone(), self.pg.clone()));
        let _guard = AbortOnDrop(guard);
        let mut cycle: u64 = 0;
        loop {
            cycle += 1;
            let started = Instant::now();
            // What the watch had shown before this cycle read the DCS: a change that arrives
            // while the cycle runs must still wake the next one.
            let before = cluster_rx.borrow_and_update().clone();
            let span = tracing::info_span!("cycle", member = %self.cfg.name, cycle);
            let result = {
                let _e = span.enter();
                self.cycle().await
            };
            if let Err(reason) = result {
                return Exit::Fatal(reason);
            }
            let wait = self.timing().loop_wait();
            let deadline = started + wait;
            if wake_worthy(
                before.as_deref(),
                cluster_rx.borrow().as_deref(),
                &self.cfg.name,
            ) {
                continue;
            }
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => {
                        self.shutdown().await;
                        return Exit::Shutdown;
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = wait_task(&mut self.in_flight) => break,
                    _ = self.shared.wakeup.notified() => break,
                    Some(req) = next_request(&mut self.requests) => {
                        self.handle_request(req).await;
                        break;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(250)), if self.was_running => {
                        // Notice a PostgreSQL crash within a second, not a full loop_wait.
                        if !self.pg.is_running() && self.in_flight.is_none() { break; }
                    }
                    changed = cluster_rx.changed() => {
                        if changed.is_err() { tokio::time::sleep_until(deadline).await; break; }
                        let now = cluster_rx.borrow().clone();
                        if wake_worthy(before.as_deref(), now.as_deref(), &self.cfg.name) { break; }
                    }
                }
            }
        }
    }

    async fn cycle(&mut self) -> Result<(), String> {
        // Collect a finished long operation.
        if let Some((task, handle)) = &self.in_flight {
            if handle.is_finished() {
                let task = *task;
                let (_, handle) = self.in_flight.take().expect("checked above");
                let r = match handle.await {
                    Ok(Ok(())) => TaskResult::Succeeded(task),
                    Ok(Err(e)) => TaskResult::Failed(task, e),
                    Err(e) => TaskResult::Failed(task, format!("task panicked: {e}")),
                };
                match &r {
                    TaskResult::Succeeded(t) => tracing::info!("{t:?} finished"),
                    TaskResult::Failed(t, e) => tracing::error!("{t:?} failed: {e}"),
                }
                match &r {
                    TaskResult::Succeeded(Task::Rewind) => {
                        self.needs_rewind = false;
                        self.rewind_failed = false;
                    }
                    TaskResult::Failed(Task::Rewind, _) => {
                        if self.cfg.postgresql.remove_data_directory_on_rewind_failure {
                            tracing::warn!("removing the data directory after the failed rewind; it will be cloned again");
                            if let Err(e) = self.pg.remove_data_dir() {
                                tracing::error!("could not remove the data directory: {e}");
                            }
                            self.needs_rewind = false;
                        } else {
                            self.rewind_failed = true;
                        }
                    }
                    _ => {}
                }
                self.client.reset().await;
                self.last_result = Some(r);
            }
        }

        let mut cluster = match self.dcs.get_cluster().await {
            Ok(c) => c,
            Err(e) => {
                self.handle_dcs_error(&e).await;
                return Ok(());
            }
        };
        self.shared.dcs_seen();
        self.take_dynamic(&mut cluster).await;
        self.report_unusable_members(&cluster);

        let (local, status) = self.observe_local(&cluster).await;
        self.track_rewind_and_downtime(&cluster, &local);
        let peers = if cluster.leader.is_none() && local.in_recovery == Some(true) {
            self.probe_peers(&cluster).await
        } else {
            Vec::new()
        };
        let mut obs = Observation {
            me: self.cfg.name.clone(),
            cluster: cluster.clone(),
            local,
            dynamic: self.dynamic.clone(),
            in_flight: self.in_flight.as_ref().map(|(t, _)| *t),
            last_result: self.last_result.take(),
            bootstrapping: self.bootstrapping,
            can_bootstrap: self.cfg.bootstrap.present,
            nofailover: patrol_dcs::tags_nofailover(&self.cfg.tags),
            failover_priority: patrol_dcs::tags_failover_priority(&self.cfg.tags),
            peers,
            primary_down_for: self.primary_down_since.map(|t| t.elapsed()),
            needs_rewind: self.needs_rewind,
            rewind_failed: self.rewind_failed,
            use_pg_rewind: self
                .cfg
                .postgresql
                .use_pg_rewind
                .or(self.dynamic.use_pg_rewind())
                .unwrap_or(false),
            remove_data_directory_on_rewind_failure: self
                .cfg
                .postgresql
                .remove_data_directory_on_rewind_failure,
            remove_data_directory_on_diverged_timelines: self
                .cfg
                .postgresql
                .remove_data_directory_on_diverged_timelines,
            now_epoch_ms: chrono::Utc::now().timestamp_millis(),
            clone_from_leader: self.clone_from_leader,
        };
        if let Some((filters, _, at)) = self.scheduled_restart.clone() {
            if obs.now_epoch_ms >= at && self.in_flight.is_none() {
                self.scheduled_restart = None;
                match self.restart(&filters, &cluster, None).await {
                    Some((code, text)) => tracing::info!("scheduled restart: {code} {text}"),
                    // Running as a task now: this cycle decides with it in flight.
                    None => obs.in_flight = self.in_flight.as_ref().map(|(t, _)| *t),
                }
            }
        }
        let dec = decide(&obs);
        if dec.reason != self.last_reason {
            tracing::info!("{}", dec.reason);
            self.last_reason = dec.reason.clone();
        } else {
            tracing::debug!("{}", dec.reason);
        }
        let mut leader_ok = None;
        for action in &dec.actions {
            match self.execute(action, &cluster).await {
                Ok(Some(held)) => leader_ok = Some(held),
                Ok(None) => {}
                Err(Step::Stop(why)) => {
                    tracing::info!("{why}");
                    break;
                }
                Err(Step::Fatal(why)) => return Err(why),
            }
        }
        if let Some(held) = leader_ok {
            self.shared.set_leader(held, self.lease_deadline);
        } else if cluster.leader_name() != Some(self.cfg.name.as_str()) {
            self.shared.set_leader(false, None);
        }
        let running = self.pg.is_running();
        let state = self.member_state(running);
        self.publish(&cluster, status.as_ref(), &state).await;
        let role = self.role_now(status.as_ref());
        self.shared.update(NodeState {
            cluster: Some(Arc::new(cluster)),
            status,
            state,
            role,
            sysid: match &obs.local.data {
                DataState::Initialized { sysid, .. } => Some(sysid.clone()),
                _ => None,
            },
            paused: self.dynamic.pause(),
            maximum_lag_on_failover: self.dynamic.maximum_lag_on_failover(),
        });
        self.was_running = running;
        Ok(())
    }

    /// The dynamic configuration this cycle acts on: the `config` key if it is valid, else the
    /// last valid one, which then stands in for it in `cluster` (so `decide` reads `pause` and
    /// the rest from what is in effect).
    async fn take_dynamic(&mut self, cluster: &mut Cluster) {
        if let Some(cfg) = cluster.config.as_mut() {
            if !self.apply_dynamic(cfg).await {
                cfg.value = self.dynamic.clone();
            }
            // Names what Patrol ignores or cannot guarantee, when that changes.
            self.unsupported
                .observe(&self.dynamic.data, self.cfg.allow_unsupported);
        }
        if let Some(rev) = cluster.config_unreadable {
            if self.refused_config != Some(rev) {
                tracing::error!(
                    "the dynamic configuration in the DCS (config key, revision {rev}) is not a JSON object; keeping the last valid one"
                );
                self.refused_config = Some(rev);
            }
            cluster.config = Some(patrol_dcs::Versioned {
                version: rev,
                value: self.dynamic.clone(),
            });
        }
    }

    /// Takes the DCS `config` key as the dynamic configuration in effect if it is valid, and
    /// hands its timing to everything that reads one (the etcd client, the lease guard, this
    /// loop, the REST API) before anything acts on it. An invalid one (anyone who can write to
    /// etcd can put anything there) is refused with an error naming the key, once per revision,
    /// and the last valid one stays in effect, as Patroni keeps its previous configuration when
    /// `set_dynamic_configuration` fails. Returns whether `cfg` is in effect.
    async fn apply_dynamic(&mut self, cfg: &patrol_dcs::Versioned<ClusterConfig>) -> bool {
        if cfg.value == self.dynamic {
            self.refused_config = None;
            return true;
        }
        if let Err(e) = cfg.value.check() {
            if self.refused_config != Some(cfg.version) {
                tracing::error!(
                    "the dynamic configuration in the DCS (config key, revision {}) is not valid: {e}; keeping the last valid one",
                    cfg.version
                );
                self.refused_config = Some(cfg.version);
            }
            return false;
        }
        self.refused_config = None;
        let old = self.timing();
        self.dynamic = cfg.value.clone();
        let new = self.dynamic.timing();
        self.shared.set_dynamic(new, self.dynamic.pause());
        if old != new {
            tracing::info!(
                ttl = new.ttl,
                loop_wait = new.loop_wait,
                retry_timeout = new.retry_timeout,
                "timing changed"
            );
            let asked = |k: &str| patrol_dcs::lenient_i64(self.dynamic.data.get(k));
            let (ttl, lw, rt) = (asked("ttl"), asked("loop_wait"), asked("retry_timeout"));
            if ttl.is_some_and(|v| v as u64 != new.ttl)
                || lw.is_some_and(|v| v as u64 != new.loop_wait)
                || rt.is_some_and(|v| v as u64 != new.retry_timeout)
            {
                tracing::warn!(
                    "the dynamic configuration asks for ttl={ttl:?} loop_wait={lw:?} retry_timeout={rt:?}; adjusted to ttl={} loop_wait={} retry_timeout={} (minimums and loop_wait + 2*retry_timeout <= ttl)",
                    new.ttl,
                    new.loop_wait,
                    new.retry_timeout
                );
            }
            self.dcs.set_timing(new).await;
        }
        true
    }

    /// Logs an error naming each member whose `conn_url` or `api_url` cannot be used (a host
    /// that is not an address or a DNS name, a bad port), once per change. Such a member is
    /// never cloned from, followed or probed: every reader of those URLs goes through
    /// `patrol_dcs::parse_conn_url`/`parse_api_url`, which refuse them.
    fn report_unusable_members(&mut self, cluster: &Cluster) {
        let now: std::collections::BTreeMap<String, String> = cluster
            .members
            .iter()
            .filter_map(|m| {
                patrol_dcs::member_address_problem(&m.data).map(|why| (m.name.clone(), why))
            })
            .collect();
        for (name, why) in &now {
            if self.unusable_members.get(name) != Some(why) {
                tracing::error!("member {name:?} is skipped: its {why}");
            }
        }
        self.unusable_members = now;
    }

    /// DCS unreachable: a running primary that cannot prove its lease steps down before the
    /// lease can expire (spec 5.4, `demote('offline')`); others just wait.
    async fn handle_dcs_error(&mut self, e: &DcsError) {
        tracing::warn!("DCS is not accessible: {e}");
        let primary = self.pg.is_running()
            && self
                .client
                .status()
                .await
                .map(|s| !s.in_recovery)
                .unwrap_or(false);
        if primary && !self.dynamic.pause() {
            tracing::warn!("demoted self because DCS is not accessible and I was a leader");
            self.shared.set_leader(false, None);
            if let Err(e) = self.demote(None).await {
                tracing::error!("demotion failed: {e}");
            }
        }
    }

    async fn observe_local(&mut self, cluster: &Cluster) -> (LocalPg, Option<LocalStatus>) {
        let data = match self.pg.data_dir_state() {
            DataDir::Empty => DataState::Empty,
            DataDir::Invalid(why) => DataState::Invalid(why),
            DataDir::Initialized(cd) => DataState::Initialized {
                sysid: cd.sysid,
                cluster_state: cd.state,
            },
        };
        let running = self.pg.is_running();
        let status = if running && self.in_flight.is_none() {
            match self.client.status().await {
                Ok(mut s) => {
                    if s.in_recovery {
                        // Without a WAL receiver the SQL view gives the last restartpoint's
                        // timeline; the WAL files say which timeline the node really holds.
                        if let Some(tl) = self.pg.newest_wal_timeline() {
                            s.timeline = s.timeline.max(tl);
                        }
                    }
                    Some(s)
                }
                Err(e) => {
                    tracing::debug!("status query failed: {e}");
                    None
                }
            }
        } else {
            None
        };
        let local = LocalPg {
            data,
            running,
            in_recovery: status.as_ref().map(|s| s.in_recovery),
            wal_position: status.as_ref().and_then(|s| {
                if s.in_recovery {
                    s.receive_lsn.max(s.replay_lsn)
                } else {
                    s.wal_position
                }
            }),
            timeline: status.as_ref().map(|s| s.timeline),
            replay_position: status.as_ref().and_then(|s| s.replay_lsn),
            replay_paused: status.as_ref().is_some_and(|s| s.replay_paused),
            following: self.following.clone(),
            history: None,
        };
        if cluster.leader_name() != Some(self.cfg.name.as_str()) {
            // Slot retention is the leader's: a later leadership starts again from the DCS.
            self.slot_retention = Default::default();
            self.retain_slots = None;
        }
        let mut local = local;
        if let Some(s) = &status {
            let i_lead = cluster.leader_name() == Some(self.cfg.name.as_str());
            if i_lead && !s.in_recovery && s.timeline > 1 && cluster.timeline() < s.timeline {
                local.history = self.read_history(s.timeline);
            }
        }
        (local, status)
    }

    /// Marks a data directory that was a primary, now replaced by another leader, as needing a
    /// rewind; tracks how long the leader's PostgreSQL has been down.
    fn track_rewind_and_downtime(&mut self, cluster: &Cluster, local: &LocalPg) {
        let i_lead = cluster.leader_name() == Some(self.cfg.name.as_str());
        if let DataState::Initialized { cluster_state, .. } = &local.data {
            let was_primary = cluster_state == "in production" || cluster_state == "shut down";
            if was_primary && !local.running && !i_lead && self.in_flight.is_none() {
                if !self.needs_rewind {
                    tracing::info!("the data directory was a primary ({cluster_state}); it will be rewound before following");
                }
                self.needs_rewind = true;
            }
        }
        if i_lead && local.running && local.in_recovery == Some(false) {
            self.needs_rewind = false;
            self.rewind_failed = false;
        }
        if i_lead && !local.running {
            self.primary_down_since.get_or_insert_with(Instant::now);
        } else if local.running {
            self.primary_down_since = None;
        }
    }

    /// The timeline history of our (promoted) primary, the last line stamped with the history
    /// file's time and our name.
    fn read_history(&self, timeline: u64) -> Option<patrol_dcs::History> {
        let (text, mtime) = self.pg.timeline_history(timeline)?;
        let mut lines = patrol_dcs::History::from_timeline_file(&text);
        if let Some(last) = lines.last_mut() {
            let ts: chrono::DateTime<chrono::Local> = mtime.into();
            last.timestamp = Some(ts.to_rfc3339_opts(chrono::SecondsFormat::Micros, false));
            last.new_leader = Some(self.cfg.name.clone());
        }
        Some(patrol_dcs::History { lines })
    }

    /// Asks every other member's REST API for its state, in parallel, with a short deadline.
    async fn probe_peers(&self, cluster: &Cluster) -> Vec<PeerStatus> {
        let limit = Duration::from_secs(self.timing().retry_timeout.clamp(1, 2));
        let client = crate::api::member_client(&self.cfg, limit);
        let mut set = tokio::task::JoinSet::new();
        for m in cluster.members.iter().filter(|m| m.name != self.cfg.name) {
            if m.data.api_url.is_empty() {
                continue;
            }
            let (client, url, name) = (client.clone(), m.data.api_url.clone(), m.name.clone());
            set.spawn(async move {
                let body: serde_json::Value =
                    client.get(&url).send().await.ok()?.json().await.ok()?;
                Some(peer_from_status(&name, &body))
            });
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            if let Ok(Some(p)) = r {
                out.push(p);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    async fn handle_request(&mut self, req: Request) {
        let cluster = self.shared.snapshot().node.cluster;
        let cluster = cluster.as_deref().cloned().unwrap_or_default();
        match req {
            Request::Restart { filters, reply } => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                match self.restart(&filters, &cluster, Some(tx)).await {
                    Some(r) => {
                        let _ = reply.send(r);
                    }
                    // The restart runs as a task; it answers when it is done (or, aborted
                    // because the leader key was lost meanwhile, with a 503).
                    None => {
                        tokio::spawn(async move {
                            let r = rx.await.unwrap_or((
                                503,
                                "restart aborted: the leader key was lost while restarting".into(),
                            ));
                            let _ = reply.send(r);
                        });
                    }
                }
            }
            Request::ScheduleRestart {
                filters,
                schedule,
                at_ms,
                reply,
            } => {
                let r = if self.scheduled_restart.is_some() {
                    (409, "Another restart is already scheduled".to_string())
                } else {
                    self.scheduled_restart = Some((filters, schedule, at_ms));
                    self.last_member_json = None;
                    (202, "Restart scheduled".to_string())
                };
                let _ = reply.send(r);
            }
            Request::Reload { reply } => {
                let r = self.reload_config(&cluster).await;
                let _ = reply.send(r);
            }
            Request::CancelRestart { reply } => {
                let r = if self.scheduled_restart.take().is_some() {
                    self.last_member_json = None;
                    (200, "scheduled restart deleted".to_string())
                } else {
                    (404, "no restarts are scheduled".to_string())
                };
                let _ = reply.send(r);
            }
            Request::Reinitialize {
                force,
                from_leader,
                reply,
            } => {
                let r = self.reinitialize(force, from_leader, &cluster).await;
                let _ = reply.send(r);
            }
        }
    }

    /// `POST /restart` (and a scheduled restart): restart PostgreSQL in its current role if
    /// the filters allow it. The restart runs as a tracked task (`Task::Restart`, or
    /// `Task::RestartPrimary` on the leader), so the loop goes on refreshing the leader key
    /// while a slow stop or start takes its time, and `decide` demotes (aborting the task) if
    /// the key is lost meanwhile. A primary is only started while we hold the key at that
    /// moment. `Some(answer)` when it did not start; otherwise `reply` gets the outcome.
    async fn restart(
        &mut self,
        f: &RestartFilters,
        cluster: &Cluster,
        reply: Option<tokio::sync::oneshot::Sender<(u16, String)>>,
    ) -> Option<(u16, String)> {
        if let Some((task, _)) = &self.in_flight {
            return Some((503, format!("{} already in progress", task_name(*task))));
        }
        let status = self.client.status().await.ok();
        let i_lead = cluster.leader_name() == Some(self.cfg.name.as_str());
        let role = match &status {
            Some(s) if !s.in_recovery => "primary",
            _ => "replica",
        };
        let role_ok = match f.role.as_deref() {
            None | Some("any") => true,
            Some("primary") | Some("master") | Some("leader") => role == "primary",
            Some("replica") | Some("standby") => role == "replica",
            Some("standby_leader") | Some("standby-leader") => false,
            Some(_) => false,
        };
        let version_ok = match (&f.postgres_version, &status) {
            (Some((_, want)), Some(s)) => s.server_version < *want,
            (Some(_), None) => false,
            _ => true,
        };
        let pending_ok = !f.restart_pending || status.as_ref().is_some_and(|s| s.pending_restart);
        if !(role_ok && version_ok && pending_ok) {
            return Some((503, "restart conditions are not satisfied".into()));
        }
        let as_primary = i_lead || role == "primary";
        if as_primary && !i_lead {
            // A primary without the key is the HA loop's to demote, not ours to restart.
            return Some((
                503,
                "restart refused: running as primary without the leader key".into(),
            ));
        }
        let wait = Duration::from_secs(f.timeout.unwrap_or(self.cfg.postgresql.pg_ctl_timeout));
        tracing::info!("restarting PostgreSQL on request");
        let standby_of = if as_primary {
            None
        } else {
            Some(cluster.leader_member().map(|m| Upstream {
                name: m.name.clone(),
                conn_url: m.data.conn_url.clone(),
            }))
        };
        let files = self.config_files(standby_of);
        let params = self.pg.cmdline_params(&self.dynamic.parameters());
        let pg = self.pg.clone();
        let client = self.client.clone();
        let shared = self.shared.clone();
        self.last_member_json = None;
        let task = if as_primary {
            Task::RestartPrimary
        } else {
            Task::Restart
        };
        self.spawn(task, async move {
            let r = async {
                pg.stop("fast", wait)
                    .await
                    .map_err(|e| format!("restart failed: {e}"))?;
                client.reset().await;
                pg.write_config(&files)
                    .map_err(|e| format!("restart failed: {e}"))?;
                // Held, and not within the lease guard's margin of its end (the guard would
                // stop it again at once).
                let held = shared.snapshot().is_leader
                    && matches!(
                        shared.lease_guard(Instant::now()),
                        super::state::Guard::Idle
                    );
                if as_primary && !held {
                    return Err(
                        "restart stopped: the leader key was lost while PostgreSQL was stopped; not starting it as primary"
                            .to_string(),
                    );
                }
                pg.start(&params, wait)
                    .await
                    .map_err(|e| format!("restart failed: {e}"))?;
                client.reset().await;
                Ok(())
            }
            .await;
            if let Some(reply) = reply {
                let _ = reply.send(match &r {
                    Ok(()) => (200, "restarted successfully".to_string()),
                    Err(e) => (503, e.clone()),
                });
            }
            r
        });
        None
    }

    /// `POST /reinitialize`: wipe the data directory; the next cycle clones it again.
    async fn reinitialize(
        &mut self,
        force: bool,
        from_leader: bool,
        cluster: &Cluster,
    ) -> (u16, String) {
        match cluster.leader_name() {
            None => return (503, "Cluster has no leader, can not reinitialize".into()),
            Some(l) if l == self.cfg.name => {
                return (503, "I am the leader, can not reinitialize".into())
            }
            _ => {}
        }
        if let Some((task, h)) = &self.in_flight {
            if !force {
                return (503, format!("{} already in progress", task_name(*task)));
            }
            h.abort();
            self.in_flight = None;
        }
        tracing::info!("reinitializing on request: removing the data directory");
        if let Err(e) = self.pg.stop("immediate", Duration::from_secs(30)).await {
            return (503, format!("reinitialize failed: {e}"));
        }
        self.client.reset().await;
        if let Err(e) = self.pg.remove_data_dir() {
            return (503, format!("reinitialize failed: {e}"));
        }
        self.needs_rewind = false;
        self.rewind_failed = false;
        self.following = None;
        self.clone_from_leader = from_leader;
        (200, "reinitialize started".into())
    }

    fn member_state(&self, running: bool) -> String {
        match self.in_flight.as_ref().map(|(t, _)| *t) {
            Some(Task::Bootstrap) => "initializing new cluster".into(),
            Some(Task::Clone) => "creating replica".into(),
            Some(Task::Start) | Some(Task::StartPrimary) => "starting".into(),
            Some(Task::Rewind) => "starting".into(),
            Some(Task::Promote) | Some(Task::Demote) if running => "running".into(),
            Some(_) => "starting".into(),
            None if running => "running".into(),
            None if self.was_running => "crashed".into(),
            None => "stopped".into(),
        }
    }

    /// The role from this cycle's status query; without one (PostgreSQL stopped, crashed or not
    /// answering) never "primary", so peers do not take a dead primary for a live one.
    fn role_now(&self, status: Option<&LocalStatus>) -> Role {
        match self.pg.data_dir_state() {
            DataDir::Initialized(_) => {}
            _ => return Role::Uninitialized,
        }
        match status {
            Some(s) if !s.in_recovery => Role::Primary,
            _ => Role::Replica,
        }
    }

    /// Publishes our member key when its content (or the lease) changed.
    async fn publish(&mut self, cluster: &Cluster, status: Option<&LocalStatus>, state: &str) {
        let api = &self.cfg.restapi;
        let pgc = &self.cfg.postgresql;
        let conn_url = format!("postgres://{}/{}", pgc.connect_address, pgc.database);
        let api_url = format!(
            "{}://{}/patroni",
            api_scheme(&self.cfg),
            api.connect_address
        );
        let role = match (self.pg.data_dir_state(), status) {
            (DataDir::Initialized(_), Some(s)) if !s.in_recovery => Role::Primary,
            (DataDir::Initialized(_), _) => Role::Replica,
            _ => Role::Uninitialized,
        };
        let mut m = MemberData::new(conn_url, api_url, state, role, PATRONI_VERSION);
        m.proxy_url = pgc
            .proxy_address
            .as_ref()
            .map(|p| format!("postgres://{}/{}", p, pgc.database));
        m.tags = publishable_tags(&self.cfg.tags);
        m.pause = self.dynamic.pause();
        m.pending_restart = status.is_some_and(|s| s.pending_restart);
        if let Some((f, schedule, _)) = &self.scheduled_restart {
            let mut o = serde_json::Map::new();
            o.insert("schedule".into(), schedule.clone().into());
            if let Some(t) = status.and_then(|s| s.postmaster_start_time.clone()) {
                o.insert("postmaster_start_time".into(), t.into());
            }
            if let Some(r) = &f.role {
                o.insert("role".into(), r.clone().into());
            }
            if let Some((v, _)) = &f.postgres_version {
                o.insert("postgres_version".into(), v.clone().into());
            }
            if f.restart_pending {
                o.insert("restart_pending".into(), true.into());
            }
            if let Some(t) = f.timeout {
                o.insert("timeout".into(), t.into());
            }
            m.scheduled_restart = Some(serde_json::Value::Object(o));
        }
        if let Some(s) = status {
            if s.in_recovery {
                m.xlog_location = s.receive_lsn.max(s.replay_lsn);
                m.replay_lsn = s.replay_lsn;
                m.receive_lsn = s.receive_lsn;
                m.replication_state = s.replication_state.clone();
            } else {
                m.xlog_location = s.wal_position;
            }
            m.timeline = Some(s.timeline);
        }
        let json = m.to_json();
        let session = cluster
            .member(&self.cfg.name)
            .map(|mm| mm.session)
            .unwrap_or(0);
        let unchanged = self
            .last_member_json
            .as_ref()
            .is_some_and(|(j, s)| *j == json && *s == session && session != 0)
            && cluster.member(&self.cfg.name).is_some();
        // Keep the lease alive every cycle (the member key lives on it).
        if let Err(e) = self.dcs.refresh_lease().await {
            tracing::warn!("lease keep-alive failed: {e}");
            if self.shared.leader_until().is_some() {
                // The leader must not spend more time on etcd calls that each wait
                // retry_timeout: treat etcd as unreachable now.
                self.handle_dcs_error(&e).await;
                return;
            }
        }
        if unchanged {
            return;
        }
        match self.dcs.touch_member(&json).await {
            Ok(()) => self.last_member_json = Some((json, session)),
            Err(e) => tracing::warn!("failed to update member key: {e}"),
        }
    }

    /// Executes one action. `Ok(Some(held))` reports the leader key state.
    async fn execute(&mut self, action: &Action, cluster: &Cluster) -> Result<Option<bool>, Step> {
        match action {
            Action::RaceInitialize => {
                let won = self.dcs.initialize(true, "").await.map_err(dcs_stop)?;
                if !won {
                    return Err(Step::Stop("failed to acquire initialize lock".into()));
                }
                tracing::info!("won the initialize race: bootstrapping a new cluster");
                self.bootstrapping = true;
                Ok(None)
            }
            Action::Bootstrap => {
                let pg = self.pg.clone();
                let client = self.client.clone();
                let cfg = self.cfg.clone();
                let dynamic = self.dynamic.clone();
                self.spawn(Task::Bootstrap, async move {
                    bootstrap(&pg, &client, &cfg, &dynamic)
                        .await
                        .map_err(|e| format!("{e:#}"))
                });
                Ok(None)
            }
            Action::FinishBootstrap { sysid } => {
                self.dcs.initialize(false, sysid).await.map_err(dcs_stop)?;
                self.dcs
                    .set_config(&self.dynamic.to_json(), None)
                    .await
                    .map_err(dcs_stop)?;
                self.dcs.take_leader().await.map_err(dcs_stop)?;
                self.lease_deadline = self.dcs.lease_deadline().await;
                self.bootstrapping = false;
                tracing::info!(sysid = %sysid, "initialized a new cluster");
                Ok(Some(true))
            }
            Action::AbortBootstrap { reason } => {
                tracing::error!(
                    "bootstrap failed: {reason}; removing initialize key and data directory"
                );
                let _ = self.dcs.delete_leader(None).await;
                let _ = self.dcs.cancel_initialization().await;
                let _ = self.pg.stop("immediate", Duration::from_secs(30)).await;
                if let Err(e) = self.pg.remove_data_dir() {
                    tracing::error!("could not remove the data directory: {e}");
                }
                Err(Step::Fatal(format!("bootstrap failed: {reason}")))
            }
            Action::CloneFrom(up) => {
                let conninfo = self.upstream_conninfo(up).map_err(Step::Stop)?;
                let pg = self.pg.clone();
                let client = self.client.clone();
                let files = self.config_files(Some(Some(up.clone())));
                let params = self.pg.cmdline_params(&self.dynamic.parameters());
                let wait = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
                self.following = Some(up.name.clone());
                self.clone_from_leader = false;
                tracing::info!("cloning from {} with pg_basebackup", up.name);
                self.spawn(Task::Clone, async move {
                    let r = async {
                        pg.basebackup(&conninfo).await?;
                        // pg_basebackup copies the source's server log too; it is not ours.
                        let _ = std::fs::remove_file(pg.log_file());
                        pg.write_config(&files)?;
                        pg.start(&params, wait).await?;
                        client.reset().await;
                        Ok::<_, crate::postgres::PgError>(())
                    }
                    .await;
                    if let Err(e) = &r {
                        // A half-copied directory is useless: remove it so the next cycle
                        // clones again.
                        let _ = pg.stop("immediate", Duration::from_secs(10)).await;
                        let _ = pg.remove_data_dir();
                        return Err(e.to_string());
                    }
                    Ok(())
                });
                Ok(None)
            }
            Action::WriteInitialize { sysid } => {
                let won = self.dcs.initialize(true, sysid).await.map_err(dcs_stop)?;
                if !won {
                    return Err(Step::Stop(
                        "initialize key was written by another node".into(),
                    ));
                }
                Ok(None)
            }
            Action::Start { standby_of } => {
                let files = self.config_files(standby_of.clone());
                self.following = standby_of.clone().flatten().map(|u| u.name);
                let pg = self.pg.clone();
                let client = self.client.clone();
                let params = self.pg.cmdline_params(&self.dynamic.parameters());
                let wait = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
                if let Err(e) = self.pg.write_pgpass() {
                    return Err(Step::Stop(format!("could not write the passfile: {e}")));
                }
                let task = if standby_of.is_none() {
                    Task::StartPrimary
                } else {
                    Task::Start
                };
                self.spawn(task, async move {
                    pg.write_config(&files).map_err(|e| e.to_string())?;
                    pg.start(&params, wait).await.map_err(|e| e.to_string())?;
                    client.reset().await;
                    Ok(())
                });
                Ok(None)
            }
            Action::AcquireLeaderKey => {
                let won = self
                    .dcs
                    .attempt_to_acquire_leader()
                    .await
                    .map_err(dcs_stop)?;
                if !won {
                    return Err(Step::Stop("failed to acquire the leader key".into()));
                }
                self.lease_deadline = self.dcs.lease_deadline().await;
                tracing::info!("acquired the leader key");
                Ok(Some(true))
            }
            Action::RefreshLeaderKey => match self.dcs.update_leader().await {
                Ok((true, lease)) => {
                    self.lease_deadline = Some(lease.deadline);
                    self.shared.set_leader(true, self.lease_deadline);
                    if let Err(e) = self.maybe_write_status(cluster).await {
                        self.handle_dcs_error(&e).await;
                        return Err(Step::Stop(format!("etcd did not take our status: {e}")));
                    }
                    Ok(Some(true))
                }
                Ok((false, _)) => {
                    self.lease_deadline = None;
                    self.shared.set_leader(false, None);
                    if self.is_primary_now().await {
                        if self.dynamic.pause() {
                            // As Patroni: no demotion in maintenance mode.
                            return Err(Step::Stop(
                                "continue to run as primary after failing to update leader lock in DCS".into(),
                            ));
                        }
                        tracing::warn!("demoting self because failed to update leader lock in DCS");
                        let leader = cluster.leader_member().map(|m| Upstream {
                            name: m.name.clone(),
                            conn_url: m.data.conn_url.clone(),
                        });
                        self.demote(leader).await.map_err(Step::Stop)?;
                    }
                    Err(Step::Stop("lost the leader key".into()))
                }
                Err(e) => {
                    self.handle_dcs_error(&e).await;
                    Err(Step::Stop(format!("could not refresh the leader key: {e}")))
                }
            },
            Action::ReleaseLeaderKey => {
                self.dcs.delete_leader(None).await.map_err(dcs_stop)?;
                self.shared.set_leader(false, None);
                Ok(Some(false))
            }
            Action::Promote => {
                let pg = self.pg.clone();
                let client = self.client.clone();
                let wait = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
                self.following = None;
                let files = self.config_files(None);
                tracing::info!("promoting PostgreSQL");
                self.spawn(Task::Promote, async move {
                    // A paused standby would end recovery without replaying what it received.
                    if let Err(e) = client.resume_replay().await {
                        tracing::warn!("could not resume WAL replay before promoting: {e}");
                    }
                    pg.promote(wait).await.map_err(|e| e.to_string())?;
                    pg.write_config(&files).map_err(|e| e.to_string())?;
                    client.reset().await;
                    // Update pg_control with the new timeline so peers can pg_rewind from us.
                    if let Err(e) = client.checkpoint().await {
                        tracing::warn!("CHECKPOINT after promote failed: {e}");
                    }
                    Ok(())
                });
                Ok(None)
            }
            Action::Demote { leader } => {
                self.demote(leader.clone()).await.map_err(Step::Stop)?;
                Ok(None)
            }
            Action::Rewind(up) => {
                let source = self.rewind_conninfo(up).map_err(Step::Stop)?;
                let pg = self.pg.clone();
                let client = self.client.clone();
                let files = self.config_files(Some(Some(up.clone())));
                let params = self.pg.cmdline_params(&self.dynamic.parameters());
                let wait = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
                self.following = Some(up.name.clone());
                tracing::info!("rewinding from {} (pg_rewind)", up.name);
                self.spawn(Task::Rewind, async move {
                    let r = async {
                        pg.stop("fast", wait).await?;
                        client.reset().await;
                        let clean = matches!(
                            pg.data_dir_state(),
                            DataDir::Initialized(cd) if cd.state == "shut down" || cd.state == "shut down in recovery"
                        );
                        if !clean {
                            tracing::info!("running crash recovery in single-user mode before pg_rewind");
                            pg.single_user_recovery().await?;
                        }
                        let out = pg.rewind(&source).await?;
                        tracing::info!("pg_rewind: {}", out.lines().last().unwrap_or("done"));
                        pg.write_config(&files)?;
                        pg.start(&params, wait).await?;
                        client.reset().await;
                        Ok::<_, crate::postgres::PgError>(())
                    }
                    .await;
                    r.map_err(|e| e.to_string())
                });
                Ok(None)
            }
            Action::RemoveDataDirectory { reason } => {
                tracing::warn!("removing the data directory: {reason}");
                self.pg
                    .stop("immediate", Duration::from_secs(30))
                    .await
                    .map_err(|e| Step::Stop(e.to_string()))?;
                self.pg
                    .remove_data_dir()
                    .map_err(|e| Step::Stop(e.to_string()))?;
                self.needs_rewind = false;
                self.following = None;
                Ok(None)
            }
            Action::GracefulDemote => {
                let pg = self.pg.clone();
                let client = self.client.clone();
                let dcs = self.dcs.clone();
                let shared = self.shared.clone();
                let files = self.config_files(Some(None));
                let params = self.pg.cmdline_params(&self.dynamic.parameters());
                let wait = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
                self.following = None;
                tracing::info!("switchover: checkpoint, fast stop, release the leader key");
                self.spawn(Task::Demote, async move {
                    if let Err(e) = client.checkpoint().await {
                        tracing::warn!("CHECKPOINT before switchover failed: {e}");
                    }
                    pg.stop("fast", wait).await.map_err(|e| e.to_string())?;
                    client.reset().await;
                    shared.set_leader(false, None);
                    // A fast shutdown sends the shutdown checkpoint to connected standbys before
                    // the postmaster exits, so the candidate has everything once we are stopped.
                    let lsn = match pg.data_dir_state() {
                        DataDir::Initialized(cd) => cd
                            .fields
                            .get("Latest checkpoint location")
                            .and_then(|s| patrol_dcs::parse_lsn(s)),
                        _ => None,
                    };
                    match dcs.delete_leader(lsn).await {
                        Ok(_) => tracing::info!("released the leader key for the switchover"),
                        Err(e) => tracing::warn!("could not release the leader key: {e}"),
                    }
                    pg.write_config(&files).map_err(|e| e.to_string())?;
                    pg.start(&params, wait).await.map_err(|e| e.to_string())?;
                    client.reset().await;
                    Ok(())
                });
                Ok(None)
            }
            Action::ClearFailover { version } => {
                match self.dcs.set_failover("{}", Some(*version)).await {
                    Ok(true) => {}
                    Ok(false) => tracing::info!("failover key changed meanwhile; not cleared"),
                    Err(e) => tracing::warn!("could not clear the failover key: {e}"),
                }
                Ok(None)
            }
            Action::WriteHistory(h) => {
                self.dcs.set_history(&h.to_json()).await.map_err(dcs_stop)?;
                tracing::info!(
                    timeline = h.cluster_timeline(),
                    "published the timeline history"
                );
                Ok(None)
            }
            Action::Follow(up) => {
                if self.following.as_deref() == Some(up.name.as_str()) {
                    return Ok(None);
                }
                // A leader whose conn_url cannot be used is not followed (the error naming it
                // is logged by `report_unusable_members`): PostgreSQL keeps what it has.
                self.upstream_conninfo(up).map_err(Step::Stop)?;
                tracing::info!("following a new leader: {}", up.name);
                let files = self.config_files(Some(Some(up.clone())));
                self.pg
                    .write_config(&files)
                    .map_err(|e| Step::Stop(e.to_string()))?;
                self.pg
                    .reload()
                    .await
                    .map_err(|e| Step::Stop(e.to_string()))?;
                self.following = Some(up.name.clone());
                self.drop_member_slots_as_replica(cluster).await;
                Ok(None)
            }
            Action::EnsureSlots { names } => {
                let existing = match self.client.physical_slots().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("could not list replication slots: {e}");
                        return Ok(None);
                    }
                };
                for n in names
                    .iter()
                    .filter(|n| !existing.iter().any(|(e, _)| e == *n))
                {
                    match self.client.create_physical_slot(n).await {
                        Ok(()) => tracing::info!("created physical replication slot {n}"),
                        Err(e) => tracing::warn!("could not create replication slot {n}: {e}"),
                    }
                }
                self.retire_member_slots(cluster, &existing).await;
                Ok(None)
            }
            Action::Fatal { reason } => Err(Step::Fatal(reason.clone())),
        }
    }

    /// A replica (a demoted former leader above all) drops the members' slots it still has:
    /// nothing streams from them here and their frozen `restart_lsn` would retain WAL on this
    /// node until its disk is full (Patroni drops the slots it does not expect on replicas).
    /// Only member slots (a member's name, or in `status.retain_slots`), never a permanent or
    /// any other slot, and never one in use.
    async fn drop_member_slots_as_replica(&mut self, cluster: &Cluster) {
        let Ok(existing) = self.client.physical_slots().await else {
            return;
        };
        let permanent = super::slots::permanent_slot_names(&self.dynamic);
        let member_slots: std::collections::BTreeSet<String> = cluster
            .members
            .iter()
            .map(|m| patrol_dcs::slot_name_from_member_name(&m.name))
            .chain(cluster.status.retain_slots.iter().cloned())
            .collect();
        for (name, active) in existing {
            if active || permanent.contains(&name) || !member_slots.contains(&name) {
                continue;
            }
            match self.client.drop_physical_slot(&name).await {
                Ok(true) => tracing::info!(
                    "dropped replication slot {name}: a replica does not keep the members' slots"
                ),
                Ok(false) => {}
                Err(e) => tracing::warn!("could not drop replication slot {name}: {e}"),
            }
        }
    }

    /// `member_slots_ttl` (spec 5.12): drops the slots of members gone longer than the ttl
    /// (never one something streams from) and remembers what `status.retain_slots` should say.
    async fn retire_member_slots(&mut self, cluster: &Cluster, existing: &[(String, bool)]) {
        let members: std::collections::BTreeSet<String> = cluster
            .members
            .iter()
            .filter(|m| !patrol_dcs::lenient_bool(m.data.tags.get("nostream")).unwrap_or(false))
            .map(|m| m.name.as_str())
            .chain(std::iter::once(self.cfg.name.as_str()))
            .map(patrol_dcs::slot_name_from_member_name)
            .collect();
        let ttl = super::slots::member_slots_ttl_ms(&self.dynamic);
        let permanent = super::slots::permanent_slot_names(&self.dynamic);
        let now = chrono::Utc::now().timestamp_millis();
        let out = self.slot_retention.update(
            &members,
            &cluster.status.retain_slots,
            &permanent,
            now,
            ttl,
        );
        for name in &out.expired {
            match existing.iter().find(|(n, _)| n == name) {
                None => {}
                Some((_, true)) => tracing::warn!(
                    "not dropping replication slot {name}: its member left more than member_slots_ttl ago, but something streams from it"
                ),
                Some((_, false)) => match self.client.drop_physical_slot(name).await {
                    Ok(true) => tracing::info!(
                        "dropped replication slot {name}: its member has been gone longer than member_slots_ttl ({} s)",
                        ttl / 1000
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::warn!("could not drop replication slot {name}: {e}"),
                },
            }
        }
        self.retain_slots = Some(out.retain);
    }

    /// The leader writes `status` (its WAL position) when it changed.
    /// Returns an error when etcd did not take the write (the caller, the leader, must then
    /// treat etcd as unreachable rather than go on with more calls that each wait).
    async fn maybe_write_status(&self, cluster: &Cluster) -> Result<(), DcsError> {
        let Ok(s) = self.client.status().await else {
            return Ok(());
        };
        if s.in_recovery {
            return Ok(());
        }
        let Some(pos) = s.wal_position else {
            return Ok(());
        };
        let retain = self
            .retain_slots
            .clone()
            .unwrap_or_else(|| cluster.status.retain_slots.clone());
        if cluster.status.optime == Some(pos) && cluster.status.retain_slots == retain {
            return Ok(());
        }
        let status = Status {
            optime: Some(pos),
            retain_slots: retain,
            ..cluster.status.clone()
        };
        self.dcs.set_status(&status.to_json()).await.map_err(|e| {
            tracing::warn!("could not write status: {e}");
            e
        })
    }

    async fn is_primary_now(&self) -> bool {
        self.pg.is_running()
            && self
                .client
                .status()
                .await
                .map(|s| !s.in_recovery)
                .unwrap_or(true)
    }

    /// Immediate stop: the primary stops accepting writes now. The data directory may have
    /// diverged, so it is marked for a rewind; the next cycle rewinds it from the new leader.
    /// Without a leader (etcd unreachable) it restarts read-only, following nobody.
    async fn demote(&mut self, leader: Option<Upstream>) -> Result<(), String> {
        tracing::info!("demoting PostgreSQL (immediate stop)");
        // A promotion or start still running must not finish after this.
        if let Some((task, h)) = self.in_flight.take() {
            tracing::warn!("aborting {task:?} in progress");
            h.abort();
        }
        self.pg
            .stop("immediate", Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        self.client.reset().await;
        self.needs_rewind = true;
        self.following = None;
        if leader.is_some() {
            return Ok(());
        }
        let files = self.config_files(Some(None));
        let pg = self.pg.clone();
        let client = self.client.clone();
        let params = self.pg.cmdline_params(&self.dynamic.parameters());
        let wait = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
        self.spawn(Task::Demote, async move {
            pg.write_config(&files).map_err(|e| e.to_string())?;
            pg.start(&params, wait).await.map_err(|e| e.to_string())?;
            client.reset().await;
            Ok(())
        });
        Ok(())
    }

    fn spawn<F>(&mut self, task: Task, f: F)
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.in_flight = Some((task, tokio::spawn(f)));
    }

    fn upstream_conninfo(&self, up: &Upstream) -> Result<String, String> {
        let (host, port) = patrol_dcs::parse_conn_url(&up.conn_url)
            .ok_or_else(|| format!("member {} has no usable conn_url", up.name))?;
        let repl = &self.cfg.postgresql.authentication.replication;
        Ok(primary_conninfo(
            &host,
            port,
            &repl.username,
            &self.cfg.postgresql.pgpass,
            &self.cfg.name,
            &repl.extra,
        ))
    }

    /// Connection string for pg_rewind's source: the rewind user (else the superuser), a normal
    /// database connection, password from the passfile.
    fn rewind_conninfo(&self, up: &Upstream) -> Result<String, String> {
        let (host, port) = patrol_dcs::parse_conn_url(&up.conn_url)
            .ok_or_else(|| format!("member {} has no usable conn_url", up.name))?;
        let auth = &self.cfg.postgresql.authentication;
        let user = auth.rewind.as_ref().unwrap_or(&auth.superuser);
        let q = crate::postgres::libpq_quote;
        let mut conninfo = format!(
            "host={} port={} user={} dbname={} passfile={} sslmode={} target_session_attrs=read-write",
            q(&host),
            port,
            q(&user.username),
            q(&self.cfg.postgresql.database),
            q(&self.cfg.postgresql.pgpass.display().to_string()),
            q(user.extra.get("sslmode").map(String::as_str).unwrap_or("prefer")),
        );
        // The user's other libpq options (client certificate, CA, CRL, gssencmode, ...).
        for (k, v) in &user.extra {
            if k != "sslmode" && k != "password" {
                conninfo.push_str(&format!(" {k}={}", q(v)));
            }
        }
        Ok(conninfo)
    }

    /// The configuration files for a role: `None` = primary, `Some(up)` = standby of `up`.
    fn config_files(&self, standby_of: Option<Option<Upstream>>) -> ConfigFiles {
        let mut parameters = self.dynamic.parameters();
        for (k, v) in &self.cfg.postgresql.parameters {
            parameters.insert(k.clone(), v.clone());
        }
        let recovery = standby_of.map(|up| Recovery {
            primary_conninfo: up.as_ref().and_then(|u| self.upstream_conninfo(u).ok()),
            primary_slot_name: (self.dynamic.use_slots() && up.is_some())
                .then(|| patrol_dcs::slot_name_from_member_name(&self.cfg.name)),
        });
        ConfigFiles {
            parameters,
            pg_hba: self
                .cfg
                .postgresql
                .pg_hba
                .clone()
                .or_else(|| self.dynamic.pg_hba()),
            pg_ident: self.cfg.postgresql.pg_ident.clone(),
            recovery,
        }
    }

    /// SIGTERM: stop PostgreSQL (fast) and release the leader key (unless paused).
    async fn shutdown(&mut self) {
        if let Some((_, h)) = self.in_flight.take() {
            h.abort();
        }
        if self.dynamic.pause() {
            tracing::info!("paused: leaving PostgreSQL and the leader key alone");
            return;
        }
        let was_leader = self.shared.snapshot().is_leader;
        tracing::info!("shutting down: stopping PostgreSQL");
        let wait = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
        if let Err(e) = self.pg.stop("fast", wait).await {
            tracing::error!("could not stop PostgreSQL: {e}");
        }
        if was_leader {
            let lsn = match self.pg.data_dir_state() {
                DataDir::Initialized(cd) => cd
                    .fields
                    .get("Latest checkpoint location")
                    .and_then(|s| patrol_dcs::parse_lsn(s)),
                _ => None,
            };
            match self.dcs.delete_leader(lsn).await {
                Ok(true) => tracing::info!("released the leader key"),
                Ok(false) => {}
                Err(e) => tracing::warn!("could not release the leader key: {e}"),
            }
        }
        let mut m = self.last_member_json.clone();
        if let Some((json, _)) = m.take() {
            let mut d = MemberData::parse(&json);
            d.state = "stopped".into();
            d.xlog_location = None;
            d.replay_lsn = None;
            d.receive_lsn = None;
            d.replication_state = None;
            let _ = self.dcs.touch_member(&d.to_json()).await;
        }
    }
}

/// How an action ended the cycle.
enum Step {
    /// Stop this cycle; the next one decides again.
    Stop(String),
    /// Exit the process.
    Fatal(String),
}

fn dcs_stop(e: DcsError) -> Step {
    Step::Stop(format!("DCS: {e}"))
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Independent of the HA loop (which may be stuck waiting on etcd): while we hold the key, if
/// the lease deadline (send time of the last acknowledged keep-alive + ttl) comes within
/// `retry_timeout` without a successful refresh, stop PostgreSQL at once so that no write is
/// accepted after another node could have taken the key. The timing and the pause flag are
/// read on every tick from `SharedState`, where the HA loop puts the dynamic configuration in
/// effect (`state::lease_guard_verdict` has the rule).
async fn lease_guard(shared: Arc<SharedState>, pg: Postgres) {
    let mut warned_paused = false;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match shared.lease_guard(Instant::now()) {
            super::state::Guard::Idle => warned_paused = false,
            super::state::Guard::KeepPaused { left } => {
                if !warned_paused && pg.is_running() {
                    tracing::warn!(
                        "the leader lease expires in {left:?} without a successful refresh: not stopping PostgreSQL in maintenance mode"
                    );
                }
                warned_paused = true;
            }
            super::state::Guard::Stop { left } => {
                shared.set_leader(false, None);
                if pg.is_running() {
                    tracing::error!(
                        "the leader lease expires in {left:?} without a successful refresh: stopping PostgreSQL now"
                    );
                    if let Err(e) = pg.stop("immediate", Duration::from_secs(10)).await {
                        tracing::error!("could not stop PostgreSQL: {e}");
                    }
                }
            }
        }
    }
}

async fn next_request(
    rx: &mut Option<tokio::sync::mpsc::UnboundedReceiver<Request>>,
) -> Option<Request> {
    match rx {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// Patroni's names for long operations in "<action> already in progress".
fn task_name(t: Task) -> &'static str {
    match t {
        Task::Bootstrap => "bootstrap",
        Task::Clone => "replica creation",
        Task::Start | Task::StartPrimary => "starting",
        Task::Promote => "promote",
        Task::Demote => "demote",
        Task::Rewind => "rewind",
        Task::Restart | Task::RestartPrimary => "restart",
    }
}

async fn wait_task(t: &mut Option<(Task, JoinHandle<Result<(), String>>)>) {
    match t {
        Some((_, h)) => {
            while !h.is_finished() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Wake the loop early when what the decision depends on changed: the leader key, config,
/// initialize, failover, or (for followers) status.
fn wake_worthy(before: Option<&Cluster>, now: Option<&Cluster>, me: &str) -> bool {
    let (Some(b), Some(n)) = (before, now) else {
        return now.is_some();
    };
    b.leader != n.leader
        || b.config != n.config
        || b.initialize != n.initialize
        || b.failover.as_ref().map(|f| &f.value) != n.failover.as_ref().map(|f| &f.value)
        || (n.leader_name() != Some(me) && b.status != n.status)
}

fn api_scheme(cfg: &Config) -> &'static str {
    if cfg.restapi.certfile.is_some() {
        "https"
    } else {
        "http"
    }
}

/// Reads a peer's `GET /patroni` answer as Patroni's leader race does (spec 2.4): in recovery
/// unless `xlog.location` is set or the role is primary; position = max(received, replayed).
pub fn peer_from_status(name: &str, body: &serde_json::Value) -> PeerStatus {
    let s = patrol_dcs::NodeStatus::from_json(body);
    PeerStatus {
        name: name.to_string(),
        primary: s.primary,
        wal_position: s.wal_position,
        replay_position: s.replayed,
        paused: s.paused,
        nofailover: patrol_dcs::tags_nofailover(&s.tags),
        failover_priority: patrol_dcs::tags_failover_priority(&s.tags),
        watchdog_failed: s.watchdog_failed,
        timeline: s.timeline,
    }
}

/// Tags as Patroni publishes them: boolean built-ins omitted when false (except `nofailover`
/// when `failover_priority` is set, `nosync` when `sync_priority` is set).
pub fn publishable_tags(
    tags: &serde_json::Map<String, serde_json::Value>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut out = serde_json::Map::new();
    for (k, v) in tags {
        let builtin_bool = [
            "clonefrom",
            "nofailover",
            "noloadbalance",
            "nosync",
            "nostream",
        ]
        .contains(&k.as_str());
        if builtin_bool && patrol_dcs::lenient_bool(Some(v)) == Some(false) {
            let keep = (k == "nofailover" && tags.contains_key("failover_priority"))
                || (k == "nosync" && tags.contains_key("sync_priority"));
            if !keep {
                continue;
            }
        }
        out.insert(k.clone(), v.clone());
    }
    out
}

/// The bootstrap long operation (flow ② 1.5): initdb, pg_hba, configuration, start as primary,
/// roles. Writing `initialize`, `config` and the leader key is `FinishBootstrap`.
async fn bootstrap(
    pg: &Postgres,
    client: &PgClient,
    cfg: &Config,
    dynamic: &ClusterConfig,
) -> anyhow::Result<()> {
    if cfg.bootstrap.method != "initdb" {
        anyhow::bail!(
            "bootstrap method {:?} is not supported yet (only initdb)",
            cfg.bootstrap.method
        );
    }
    pg.initdb(&cfg.bootstrap.initdb).await.context("initdb")?;
    if cfg.postgresql.pg_hba.is_none() && !cfg.bootstrap.pg_hba.is_empty() {
        crate::postgres::append_pg_hba(&pg.config_dir, &cfg.bootstrap.pg_hba)
            .context("writing pg_hba.conf")?;
    }
    let mut parameters = dynamic.parameters();
    for (k, v) in &cfg.postgresql.parameters {
        parameters.insert(k.clone(), v.clone());
    }
    let files = ConfigFiles {
        parameters,
        pg_hba: cfg.postgresql.pg_hba.clone().or_else(|| dynamic.pg_hba()),
        pg_ident: cfg.postgresql.pg_ident.clone(),
        recovery: None,
    };
    pg.write_config(&files).context("writing configuration")?;
    pg.write_pgpass().context("writing the passfile")?;
    let params = pg.cmdline_params(&dynamic.parameters());
    pg.start(&params, Duration::from_secs(cfg.postgresql.pg_ctl_timeout))
        .await
        .context("starting PostgreSQL")?;
    client.reset().await;
    client
        .execute_unlogged(&roles_sql(cfg))
        .await
        .context("creating roles")?;
    if let Some(script) = &cfg.bootstrap.post_bootstrap {
        run_post_bootstrap(script, pg).await?;
    }
    Ok(())
}

/// Superuser password, replication role and rewind role (spec 5.3).
fn roles_sql(cfg: &Config) -> String {
    use crate::postgres::{quote_ident, quote_literal};
    let auth = &cfg.postgresql.authentication;
    let mut sql = String::from("SET synchronous_commit = 'local';\n");
    let ensure = |sql: &mut String, user: &str, pw: Option<&str>, opts: &str| {
        let pw = pw
            .map(|p| format!(" PASSWORD {}", quote_literal(p)))
            .unwrap_or_default();
        sql.push_str(&format!(
            "DO $$BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = {lit}) THEN CREATE ROLE {id} {opts}; END IF; END$$;\nALTER ROLE {id} WITH {opts}{pw};\n",
            lit = quote_literal(user),
            id = quote_ident(user),
        ));
    };
    ensure(
        &mut sql,
        &auth.superuser.username,
        auth.superuser.password.as_deref(),
        "SUPERUSER LOGIN",
    );
    if auth.replication.username != auth.superuser.username {
        ensure(
            &mut sql,
            &auth.replication.username,
            auth.replication.password.as_deref(),
            "REPLICATION LOGIN",
        );
    }
    if let Some(rw) = &auth.rewind {
        if rw.username != auth.superuser.username {
            ensure(&mut sql, &rw.username, rw.password.as_deref(), "LOGIN");
            let id = quote_ident(&rw.username);
            for f in [
                "pg_catalog.pg_ls_dir(text, boolean, boolean)",
                "pg_catalog.pg_stat_file(text, boolean)",
                "pg_catalog.pg_read_binary_file(text)",
                "pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)",
            ] {
                sql.push_str(&format!("GRANT EXECUTE ON FUNCTION {f} TO {id};\n"));
            }
        }
    }
    sql
}

/// `post_bootstrap` (or `post_init`) as Patroni runs it: the command split as a shell would
/// (`psql -w -c "SELECT 1"`), the superuser's local connection string (no password: it is in
/// the passfile that `PGPASSFILE` names) appended as the last argument.
async fn run_post_bootstrap(script: &str, pg: &Postgres) -> anyhow::Result<()> {
    let argv = shlex::split(script)
        .with_context(|| format!("post_bootstrap {script:?}: unbalanced quotes"))?;
    let (prog, args) = argv.split_first().context("post_bootstrap is empty")?;
    pg.write_pgpass().context("writing the passfile")?;
    let out = tokio::process::Command::new(prog)
        .args(args)
        .arg(pg.local_dsn())
        .env("PGPASSFILE", &pg.settings().pgpass)
        .env(
            "PGOPTIONS",
            "-c synchronous_commit=local -c statement_timeout=0",
        )
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running post_bootstrap {script:?}"))?;
    let output = format!(
        "{} {}",
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    if !out.status.success() {
        anyhow::bail!(
            "post_bootstrap {script:?} exited with {}: {}",
            out.status,
            output.trim()
        );
    }
    Ok(())
}
