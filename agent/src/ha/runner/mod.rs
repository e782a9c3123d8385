//! The HA loop, a thin executor around the core (`patrol-ha`): observe (the DCS snapshot, the
//! local PostgreSQL, peers), decide (pure), execute the actions in order (one function per
//! action, each returning a typed [`Outcome`] the core's [`Memory`] learns from), publish our
//! member key, then wait for the next event: `loop_wait`, a watch event worth waking for, a
//! REST request, a finished task, the postmaster's exit, or shutdown.
//!
//! Dangerous part: leadership. We act as leader only after a successful lease keep-alive and
//! leader-key transaction in this cycle; what a failed one means is the core's
//! ([`after_setback`]), answered in the same cycle.

mod cache;
mod execute;
mod failsafe;
mod observe;
mod publish;
mod requests;
mod slots;

use std::sync::Arc;
use std::time::Duration;

use patrol_dcs::{Cluster, ClusterConfig, Dcs};
use patrol_ha::{
    after_setback, decide, DataState, DcsView, Decision, Memory, Observation, Outcome, Setback,
    Task, TaskResult,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::port::{LocalPostgres, Peers, StopMode};
use super::state::{NodeState, Request, RestartFilters, SharedState};
use crate::config::Config;

/// What a pending restart reason was computed from.
type PendingKey = (Option<String>, Vec<(String, String)>, bool);

/// The version we publish (the model's): Patroni-compatible so peers and tools take its paths.
pub use patrol_dcs::PATRONI_VERSION;

pub struct Ha<D: Dcs, P: LocalPostgres, Q: Peers> {
    cfg: Arc<Config>,
    dcs: Arc<D>,
    pg: P,
    peers: Q,
    shared: Arc<SharedState>,
    /// The origin of the monotonic `now` the core's clocks use.
    started: Instant,
    in_flight: Option<(Task, JoinHandle<TaskResult>)>,
    last_result: Option<TaskResult>,
    /// The decision memory (pure data, the core's).
    mem: Memory,
    last_reason: String,
    last_member_json: Option<(String, i64)>,
    dynamic: ClusterConfig,
    /// What `patroni.dynamic.json` holds, as far as this process knows (see `cache`).
    cached_dynamic: Option<ClusterConfig>,
    lease_deadline: Option<Instant>,
    /// PostgreSQL was running under us at the end of the last cycle.
    was_running: bool,
    requests: Option<tokio::sync::mpsc::UnboundedReceiver<Request>>,
    /// A restart scheduled through the REST API: filters, schedule text, due time (epoch ms).
    scheduled_restart: Option<(RestartFilters, String, i64)>,
    /// Where to re-read the local configuration from on reload.
    reload: Option<crate::ReloadSource>,
    /// As leader: when each member slot last had a member (`member_slots_ttl`), and what was
    /// last computed for `status.retain_slots`.
    slot_retention: patrol_ha::slots::SlotRetention,
    retain_slots: Option<Vec<String>>,
    /// As leader: what `status.slots` should say (permanent slots' positions, see `slots.rs`).
    published_slots: Option<serde_json::Map<String, serde_json::Value>>,
    /// Permanent slots: the standby's advances in flight and what they found.
    slot_work: slots::SlotWork,
    /// What the dynamic configuration asked for that Patrol does not do, last time it was logged.
    unsupported: crate::config::DynamicNotice,
    /// The revision of the DCS `config` key last refused as invalid (logged once per revision;
    /// `self.dynamic` keeps the last valid one).
    refused_config: Option<i64>,
    /// Members whose `conn_url` or `api_url` cannot be used, with why, as last logged.
    unusable_members: std::collections::BTreeMap<String, String>,
    /// `synchronous_standby_names` as synchronous replication set it (`None`: the user's own).
    sync_names: Option<String>,
    /// The `sync` key's revision for the next compare-and-swap of this cycle.
    sync_version: Option<i64>,
    /// The last decision asked for another cycle soon.
    recheck_soon: bool,
    /// Stopping or restarting as a synchronous standby: publish `nosync` (spec 5.7).
    disable_sync: bool,
    /// The dynamic `postgresql.parameters` or `pg_hba` changed, or the local configuration was
    /// reloaded while a task ran: rewrite PostgreSQL's configuration and reload it.
    dynamic_params_changed: bool,
    /// The pending restart reason last computed and what it was computed from (the
    /// postmaster's start, the parameters wanted, PostgreSQL's own flag): asked again only when
    /// one of them changes.
    pending_restart: Option<(PendingKey, serde_json::Map<String, serde_json::Value>)>,
    /// This cycle's pending restart reason (empty when PostgreSQL's state is not known).
    pending_now: serde_json::Map<String, serde_json::Value>,
    /// The role PostgreSQL ran in at the last cycle that knew it (for `on_role_change`).
    last_role: Option<patrol_dcs::Role>,
    /// Callback scripts (`postgresql.callbacks`, `before_stop`).
    callbacks: crate::ha::Callbacks,
    /// The `failsafe` key as last read (Patroni's `dcs.failsafe`): whom to ask while the DCS
    /// is unreachable.
    last_failsafe: Option<patrol_dcs::Failsafe>,
    /// When the last `POST /failsafe` round was sent.
    failsafe_asked: Option<Instant>,
    /// The last cycle held leadership on failsafe answers: the next one comes within
    /// `failsafe::hold_wait`.
    failsafe_holding: bool,
    /// The watchdog device (armed and disarmed as the core decides, fed after every refresh of
    /// the leader key).
    watchdog: crate::watchdog::Watchdog,
}

/// What ends the loop.
#[derive(Debug)]
pub enum Exit {
    Shutdown,
    Fatal(String),
}

/// How an action ended the cycle.
enum Step {
    /// Stop this cycle; the next one decides again.
    Stop(String),
    /// The core must answer at once ([`after_setback`]).
    Setback(Setback, String),
    /// Exit the process.
    Fatal(String),
}

impl<D: Dcs, P: LocalPostgres, Q: Peers> Ha<D, P, Q> {
    pub fn new(cfg: Arc<Config>, dcs: Arc<D>, pg: P, peers: Q, shared: Arc<SharedState>) -> Self {
        // `bootstrap.dcs` passed the same check at load, the cache is checked as it is read;
        // the DCS `config` key replaces either once read (`apply_dynamic`).
        let dynamic = cache::load(&cfg.postgresql.data_dir)
            .unwrap_or_else(|| ClusterConfig::from_map(cfg.bootstrap.dcs.clone()));
        shared.set_dynamic(dynamic.timing(), dynamic.pause());
        let requests = shared.take_requests();
        let callbacks = crate::ha::Callbacks::new(&cfg);
        let watchdog = crate::watchdog::Watchdog::new(&cfg.watchdog, dynamic.timing());
        Ha {
            cfg,
            dcs,
            pg,
            peers,
            shared,
            started: Instant::now(),
            in_flight: None,
            last_result: None,
            mem: Memory::default(),
            last_reason: String::new(),
            last_member_json: None,
            cached_dynamic: Some(dynamic.clone()),
            dynamic,
            lease_deadline: None,
            was_running: false,
            requests,
            scheduled_restart: None,
            reload: None,
            slot_retention: Default::default(),
            retain_slots: None,
            published_slots: None,
            slot_work: Default::default(),
            unsupported: Default::default(),
            refused_config: None,
            unusable_members: Default::default(),
            sync_names: None,
            sync_version: None,
            recheck_soon: false,
            disable_sync: false,
            dynamic_params_changed: false,
            pending_restart: None,
            pending_now: Default::default(),
            last_role: None,
            callbacks,
            last_failsafe: None,
            failsafe_asked: None,
            failsafe_holding: false,
            watchdog,
        }
    }

    /// Enables `Request::Reload` (SIGHUP, `POST /reload`).
    pub fn with_reload(mut self, reload: crate::ReloadSource) -> Self {
        self.reload = Some(reload);
        self
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
        // The DCS client was made with `bootstrap.dcs`'s timing; the configuration in effect
        // may be the cached one (`patroni.dynamic.json`), and `apply_dynamic` hands a timing
        // on only when the configuration changes.
        self.dcs.set_timing(self.timing()).await;
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
            let wait = if std::mem::take(&mut self.recheck_soon) {
                Duration::from_secs(1)
            } else if std::mem::take(&mut self.failsafe_holding) {
                patrol_ha::failsafe::hold_wait(self.timing())
            } else {
                self.timing().loop_wait()
            };
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
                    // In this order when several are ready (deterministic under a simulation).
                    biased;
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

    /// Monotonic time since this loop started, for the core's clocks.
    fn now(&self) -> Duration {
        Instant::now().saturating_duration_since(self.started)
    }

    async fn cycle(&mut self) -> Result<(), String> {
        if let Some(r) = self.collect_task().await {
            self.mem.record(&Outcome::TaskFinished(r.clone()));
            self.last_result = Some(r);
        }

        let mut cluster = match self.dcs.get_cluster().await {
            Ok(c) => {
                self.shared.dcs_seen();
                self.last_failsafe = c.failsafe.clone();
                Some(c)
            }
            Err(e) => {
                tracing::warn!("DCS is not accessible: {e}");
                None
            }
        };
        if let Some(c) = cluster.as_mut() {
            self.take_dynamic(c).await;
            self.report_unusable_members(c);
        }
        self.save_dynamic_cache();
        let (local, status) = self.observe_local(cluster.as_ref()).await;
        let i_lead = cluster
            .as_ref()
            .map(|c| c.leader_name() == Some(self.cfg.name.as_str()));
        let now = self.now();
        if let Some(note) = self
            .mem
            .observe(i_lead, &local, self.in_flight.is_some(), now)
        {
            tracing::info!("{note}");
        }
        self.mem
            .observe_replication(&self.cfg.name, cluster.as_ref(), &local, &self.dynamic, now);
        if let Some(c) = &cluster {
            self.apply_changed_parameters(c, &local).await;
        }
        self.sync_version = cluster
            .as_ref()
            .and_then(|c| c.sync.as_ref().map(|s| s.version));
        let peers = match &cluster {
            Some(c) if c.leader.is_none() && local.in_recovery == Some(true) => {
                self.probe_peers(c).await
            }
            _ => Vec::new(),
        };
        self.watchdog.set_timing(self.timing());
        let mut obs = Observation {
            me: self.cfg.name.clone(),
            dcs: match &cluster {
                Some(c) => DcsView::Reachable(c.clone()),
                None => DcsView::Unreachable,
            },
            local,
            dynamic: self.dynamic.clone(),
            timing: self.timing(),
            in_flight: self.in_flight.as_ref().map(|(t, _)| *t),
            last_result: self.last_result.take(),
            mem: self.mem.clone(),
            now,
            can_bootstrap: self.cfg.bootstrap.present,
            replica_without_leader: self
                .cfg
                .postgresql
                .create_replica_methods
                .iter()
                .filter_map(|m| self.cfg.postgresql.replica_methods.get(m))
                .any(|m| m.no_leader),
            nofailover: patrol_dcs::tags_nofailover(&self.cfg.tags),
            failover_priority: patrol_dcs::tags_failover_priority(&self.cfg.tags),
            replicatefrom: patrol_dcs::tags_replicatefrom(&self.cfg.tags),
            nostream: patrol_dcs::tags_nostream(&self.cfg.tags),
            peers,
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
            sync_names_managed: self.sync_names.is_some(),
            failsafe_check: None,
            failsafe_leader: self.shared.failsafe_leader(),
            watchdog: self.watchdog.view(),
        };
        let Some(cluster) = cluster else {
            // Row D-2: decided by the core; nothing is published without the DCS.
            self.check_failsafe(&mut obs).await;
            self.follow_failsafe_slots().await;
            let dec = decide(&obs);
            self.log_reason(&dec);
            self.run_actions(&obs, &Cluster::default(), &dec).await?;
            return Ok(());
        };
        self.run_scheduled_restart(&cluster, &mut obs).await;
        let dec = decide(&obs);
        self.log_reason(&dec);
        let leader_ok = self.run_actions(&obs, &cluster, &dec).await?;
        if let Some(held) = leader_ok {
            self.shared.set_leader(held, self.lease_deadline);
        } else if cluster.leader_name() != Some(self.cfg.name.as_str()) {
            self.shared.set_leader(false, None);
        }
        self.sync_permanent_slots(&cluster, status.as_ref()).await;
        let running = self.pg.is_running();
        let state = self.member_state(running);
        if let Err(setback) = self.publish(&cluster, status.as_ref(), &state).await {
            self.answer_setback(&obs, &cluster, setback).await?;
            return Ok(());
        }
        let role = self.role_now(&cluster, status.as_ref());
        if status.is_some() {
            self.observe_role(role.clone());
        }
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
            watchdog: self.watchdog.view(),
            pending_restart: self.pending_now.clone(),
        });
        self.was_running = running;
        Ok(())
    }

    fn log_reason(&mut self, dec: &Decision) {
        for note in &dec.notes {
            tracing::info!("{note}");
        }
        if dec.reason != self.last_reason {
            tracing::info!("{}", dec.reason);
            self.last_reason = dec.reason.clone();
        } else {
            tracing::debug!("{}", dec.reason);
        }
    }

    /// Collects a finished long operation.
    async fn collect_task(&mut self) -> Option<TaskResult> {
        let (task, handle) = self.in_flight.take_if(|(_, h)| h.is_finished())?;
        // A restarted synchronous standby may be chosen again.
        self.disable_sync = false;
        let r = match handle.await {
            Ok(r) => r,
            Err(e) => TaskResult::Failed(task, format!("task panicked: {e}")),
        };
        match &r {
            TaskResult::Succeeded(t) => tracing::info!("{t:?} finished"),
            TaskResult::Failed(t, e) => tracing::error!("{t:?} failed: {e}"),
            TaskResult::PrePromoteFailed(why) => {
                tracing::warn!("pre_promote script failed ({why}): PostgreSQL was not promoted")
            }
        }
        self.pg.reset().await;
        Some(r)
    }

    /// Executes the decision's actions in order until one fails. Returns the leader key's state
    /// when an action established it.
    async fn run_actions(
        &mut self,
        obs: &Observation,
        cluster: &Cluster,
        dec: &Decision,
    ) -> Result<Option<bool>, String> {
        let mut held = None;
        for action in &dec.actions {
            match self.execute(action, cluster).await {
                Ok(outcome) => {
                    match outcome {
                        Outcome::LeaderKey(h) => held = Some(h),
                        Outcome::Bootstrapped => held = Some(true),
                        _ => {}
                    }
                    self.mem.record(&outcome);
                }
                Err(Step::Stop(why)) => {
                    tracing::info!("{why}");
                    break;
                }
                Err(Step::Fatal(why)) => return Err(why),
                Err(Step::Setback(setback, why)) => {
                    tracing::warn!("{why}");
                    if gives_up_the_key(&setback) {
                        held = Some(false);
                    }
                    self.answer_setback(obs, cluster, setback).await?;
                    break;
                }
            }
        }
        Ok(held)
    }

    /// Rows D-1/D-2: asks the core what a setback means and does it now.
    async fn answer_setback(
        &mut self,
        obs: &Observation,
        cluster: &Cluster,
        setback: Setback,
    ) -> Result<(), String> {
        if gives_up_the_key(&setback) {
            self.lease_deadline = None;
            self.shared.set_leader(false, None);
        }
        let mut o = obs.clone();
        o.mem = self.mem.clone();
        if setback == Setback::DcsUnreachable {
            self.check_failsafe(&mut o).await;
        }
        let dec = after_setback(&o, &setback);
        tracing::warn!("{}", dec.reason);
        for action in &dec.actions {
            match self.execute(action, cluster).await {
                Ok(outcome) => self.mem.record(&outcome),
                Err(Step::Fatal(why)) => return Err(why),
                Err(Step::Stop(why)) | Err(Step::Setback(_, why)) => {
                    tracing::error!("{why}");
                    break;
                }
            }
        }
        Ok(())
    }

    fn spawn<F>(&mut self, task: Task, f: F)
    where
        F: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.spawn_task(task, async move {
            match f.await {
                Ok(()) => TaskResult::Succeeded(task),
                Err(e) => TaskResult::Failed(task, e),
            }
        });
    }

    /// As [`Self::spawn`], for a task that reports more than success or failure.
    fn spawn_task<F>(&mut self, task: Task, f: F)
    where
        F: std::future::Future<Output = TaskResult> + Send + 'static,
    {
        self.in_flight = Some((task, tokio::spawn(f)));
    }
}

/// The key is not ours (row D-1), or the core gives it up (row W-4): from now on we do not
/// lead, whatever an earlier action of the cycle established.
fn gives_up_the_key(setback: &Setback) -> bool {
    matches!(setback, Setback::KeyNotOurs | Setback::WatchdogUnavailable)
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Row D-3, independent of the HA loop (which may be stuck waiting on etcd): while we hold the
/// key, once the lease deadline (send time of the last acknowledged keep-alive + ttl) comes
/// within `retry_timeout` without a successful refresh, PostgreSQL is stopped at once so that
/// no write is accepted after another node could have taken the key. The rule is the core's
/// (`patrol_ha::lease_guard`); the timing and the pause flag are read on every tick from
/// `SharedState`, where the HA loop puts the dynamic configuration in effect.
async fn lease_guard<P: LocalPostgres>(shared: Arc<SharedState>, pg: P) {
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
                    if let Err(e) = pg.stop(StopMode::Immediate, Duration::from_secs(10)).await {
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

async fn wait_task(t: &mut Option<(Task, JoinHandle<TaskResult>)>) {
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
        || (n.leader_name() == Some(me) && sync_inputs_changed(b, n))
}

/// For the leader in synchronous mode: a member came, went, or changed its state or tags (a
/// standby about to stop publishes `nosync`): the synchronous standbys may have to change now,
/// not a `loop_wait` later.
fn sync_inputs_changed(b: &Cluster, n: &Cluster) -> bool {
    let mode = n
        .config
        .as_ref()
        .map(|c| c.value.synchronous_mode())
        .unwrap_or(patrol_dcs::SynchronousMode::Off);
    if mode == patrol_dcs::SynchronousMode::Off {
        return false;
    }
    b.members.len() != n.members.len()
        || b.members.iter().zip(&n.members).any(|(x, y)| {
            x.name != y.name || x.data.state != y.data.state || x.data.tags != y.data.tags
        })
}
