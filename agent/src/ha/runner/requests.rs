//! Requests from the REST API and signals: restart (now or scheduled), reinitialize, reload,
//! and the shutdown on SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use patrol_dcs::{Cluster, Dcs, MemberData};
use patrol_ha::{Observation, Outcome, Task, Upstream};
use tokio::time::Instant;

use super::execute::checkpoint_lsn;
use super::{task_name, Ha};
use crate::ha::port::{LocalPostgres, Peers, StopMode};
use crate::ha::state::{Request, RestartFilters};

impl<D: Dcs, P: LocalPostgres, Q: Peers> Ha<D, P, Q> {
    /// A restart scheduled through the REST API that is due now.
    pub(super) async fn run_scheduled_restart(&mut self, cluster: &Cluster, obs: &mut Observation) {
        let Some((filters, _, at)) = self.scheduled_restart.clone() else {
            return;
        };
        if obs.now_epoch_ms >= at && self.in_flight.is_none() {
            self.scheduled_restart = None;
            match self.restart(&filters, cluster, None).await {
                Some((code, text)) => tracing::info!("scheduled restart: {code} {text}"),
                // Running as a task now: this cycle decides with it in flight.
                None => obs.in_flight = self.in_flight.as_ref().map(|(t, _)| *t),
            }
        }
    }

    pub(super) async fn handle_request(&mut self, req: Request) {
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
        let status = self.pg.status().await.ok();
        let i_lead = cluster.leader_name() == Some(self.cfg.name.as_str());
        let role = match &status {
            Some(s) if !s.in_recovery => "primary",
            Some(_) if i_lead => "standby_leader",
            _ => "replica",
        };
        let role_ok = match f.role.as_deref() {
            None | Some("any") => true,
            Some("primary") | Some("master") | Some("leader") => role == "primary",
            Some("replica") | Some("standby") => role == "replica",
            Some("standby_leader") | Some("standby-leader") => role == "standby_leader",
            Some(_) => false,
        };
        let version_ok = match (&f.postgres_version, &status) {
            (Some((_, want)), Some(s)) => s.server_version < *want,
            (Some(_), None) => false,
            _ => true,
        };
        let pending_ok = !f.restart_pending || !self.pending_now.is_empty();
        if !(role_ok && version_ok && pending_ok) {
            return Some((503, "restart conditions are not satisfied".into()));
        }
        // A standby cluster's leader restarts as its standby leader, following the remote source.
        let standby_leader = i_lead && self.dynamic.standby_cluster().is_some();
        let as_primary = (i_lead && !standby_leader) || role == "primary";
        if as_primary && !i_lead {
            // A primary without the key is the HA loop's to demote, not ours to restart.
            return Some((
                503,
                "restart refused: running as primary without the leader key".into(),
            ));
        }
        let wait = Duration::from_secs(f.timeout.unwrap_or(self.cfg.postgresql.pg_ctl_timeout));
        if !as_primary {
            self.leave_sync_standbys().await;
        }
        tracing::info!("restarting PostgreSQL on request");
        let standby_of = if as_primary {
            None
        } else if standby_leader {
            Some(self.dynamic.standby_cluster().map(|s| Upstream::remote(&s)))
        } else {
            Some(cluster.leader_member().map(Upstream::of))
        };
        let files = self.config_files(standby_of);
        let params = self.pg.cmdline_params(&self.dynamic.parameters());
        let pg = self.pg.clone();
        let shared = self.shared.clone();
        self.last_member_json = None;
        let task = if as_primary {
            Task::RestartPrimary
        } else {
            Task::Restart
        };
        let cb = self.callbacks.clone();
        let role = crate::ha::Callbacks::role(as_primary);
        self.spawn(task, async move {
            let r = async {
                cb.before_stop().await;
                pg.stop(StopMode::Fast, wait)
                    .await
                    .map_err(|e| format!("restart failed: {e}"))?;
                pg.reset().await;
                pg.write_config(&files)
                    .map_err(|e| format!("restart failed: {e}"))?;
                // Held, and not within the lease guard's margin of its end (the guard would
                // stop it again at once).
                let held = shared.snapshot().is_leader
                    && matches!(
                        shared.lease_guard(Instant::now()),
                        crate::ha::state::Guard::Idle
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
                pg.reset().await;
                cb.fire("on_restart", role);
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
        if let Err(e) = self
            .pg
            .stop(StopMode::Immediate, Duration::from_secs(30))
            .await
        {
            return (503, format!("reinitialize failed: {e}"));
        }
        self.pg.reset().await;
        if let Err(e) = self.pg.remove_data_dir() {
            return (503, format!("reinitialize failed: {e}"));
        }
        self.mem.record(&Outcome::Reinitialized { from_leader });
        (200, "reinitialize started".into())
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
        crate::logging::reload(&new.log);
        self.cfg = Arc::new(new);
        self.watchdog.reload(&self.cfg.watchdog);
        self.pg = self.pg.reconfigured(&self.cfg);
        self.callbacks = self.callbacks.reconfigured(&self.cfg);
        self.last_member_json = None;
        if self.pg.is_running() && self.in_flight.is_none() {
            let primary = self
                .pg
                .status()
                .await
                .map(|s| !s.in_recovery)
                .unwrap_or(false);
            if let Err(e) = self.pg.write_pgpass() {
                return (503, format!("reload failed: {e}"));
            }
            // Written for the role and upstream PostgreSQL has now (a cascading replica's
            // member, a standby leader's remote source).
            if let Err(e) = self.rewrite_config_and_reload(cluster).await {
                return (503, format!("reload failed: {e}"));
            }
            self.callbacks
                .fire("on_reload", crate::ha::Callbacks::role(primary));
        } else {
            // A task (start, restart, promotion...) is running: PostgreSQL gets the new
            // configuration with a reload once it is done.
            self.dynamic_params_changed = true;
        }
        tracing::info!("reloaded the local configuration");
        (202, "reload scheduled".into())
    }

    /// SIGTERM: stop PostgreSQL (fast) and release the leader key (unless paused).
    pub(super) async fn shutdown(&mut self) {
        if let Some((_, h)) = self.in_flight.take() {
            h.abort();
        }
        if self.dynamic.pause() {
            tracing::info!("paused: leaving PostgreSQL and the leader key alone");
            self.watchdog.disable();
            return;
        }
        let was_leader = self.shared.snapshot().is_leader;
        if !was_leader {
            self.leave_sync_standbys().await;
        }
        tracing::info!("shutting down: stopping PostgreSQL");
        let wait = self.pg_ctl_timeout();
        let was_running = self.pg.is_running();
        if was_running {
            self.callbacks.before_stop().await;
        }
        // Row W-3: the watchdog is disarmed once PostgreSQL is stopped; if it could not be
        // stopped, the watchdog is left running (it resets the host).
        match self.pg.stop(StopMode::Fast, wait).await {
            Ok(()) => {
                self.watchdog.disable();
                if was_running {
                    self.callbacks
                        .fire("on_stop", crate::ha::Callbacks::role(was_leader));
                }
            }
            Err(e) => {
                let left = if self.watchdog.view().armed {
                    " Leaving watchdog running."
                } else {
                    ""
                };
                tracing::error!("could not stop PostgreSQL: {e}.{left}");
            }
        }
        if was_leader {
            match self.dcs.delete_leader(checkpoint_lsn(&self.pg)).await {
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

    /// Spec 5.7: a synchronous standby about to stop (shutdown, restart) publishes `nosync`
    /// and waits up to `2 * loop_wait` for the leader to name another one, so that commits do
    /// not wait for it meanwhile. Only a hint: without the DCS it goes on at once.
    async fn leave_sync_standbys(&mut self) {
        if self.dynamic.synchronous_mode() == patrol_dcs::SynchronousMode::Off
            || patrol_dcs::tags_nosync(&self.cfg.tags)
        {
            return;
        }
        let listed = |c: &Cluster| {
            c.leader_name().is_some_and(|l| {
                c.sync
                    .as_ref()
                    .is_some_and(|s| s.value.leader.as_deref() == Some(l))
            }) && c
                .sync
                .as_ref()
                .is_some_and(|s| s.value.matches(&self.cfg.name))
        };
        match self.dcs.get_cluster().await {
            Ok(c) if listed(&c) => {}
            _ => return,
        }
        self.disable_sync = true;
        let Some((json, _)) = self.last_member_json.clone() else {
            return;
        };
        let mut d = MemberData::parse(&json);
        d.tags.insert("nosync".into(), true.into());
        d.tags.insert("sync_priority".into(), 0.into());
        if let Err(e) = self.dcs.touch_member(&d.to_json()).await {
            tracing::info!("Updating member state failed, skipping wait: {e}");
            return;
        }
        let deadline = Instant::now() + self.timing().loop_wait() * 2;
        while Instant::now() < deadline {
            tracing::info!("Waiting for master to release us from synchronous standby");
            tokio::time::sleep(Duration::from_millis(500)).await;
            match self.dcs.get_cluster().await {
                Ok(c) if listed(&c) => {}
                _ => break,
            }
        }
    }
}
