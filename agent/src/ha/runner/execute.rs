//! Executing: one function per action, each returning the typed [`Outcome`] the core's memory
//! learns from, or the [`Step`] that ends the cycle. Long operations run as tracked tasks.

use std::time::Duration;

use patrol_dcs::{Cluster, Dcs, DcsError, History};
use patrol_ha::{Action, Outcome, Setback, Task, TaskResult, Upstream};

use super::{Ha, Step};
use crate::ha::port::{LocalPostgres, Peers, StopMode};
use crate::postgres::{primary_conninfo, ConfigFiles, DataDir, PgError, Recovery};

type Done = Result<Outcome, Step>;

fn dcs_stop(e: DcsError) -> Step {
    Step::Stop(format!("DCS: {e}"))
}

fn pg_stop(e: PgError) -> Step {
    Step::Stop(e.to_string())
}

impl<D: Dcs, P: LocalPostgres, Q: Peers> Ha<D, P, Q> {
    /// Executes one action.
    pub(super) async fn execute(&mut self, action: &Action, cluster: &Cluster) -> Done {
        match action {
            Action::RaceInitialize => self.race_initialize().await,
            Action::Bootstrap => Ok(self.start_bootstrap()),
            Action::FinishBootstrap { sysid } => self.finish_bootstrap(sysid).await,
            Action::AbortBootstrap { reason } => self.abort_bootstrap(reason).await,
            Action::CreateReplica {
                from,
                basebackup_only,
            } => self.create_replica(from.as_ref(), *basebackup_only),
            Action::WriteInitialize { sysid } => self.write_initialize(sysid).await,
            Action::Start { standby_of } => self.start(standby_of),
            Action::AcquireLeaderKey => self.acquire_leader_key().await,
            Action::RefreshLeaderKey => self.refresh_leader_key(cluster).await,
            Action::ReleaseLeaderKey => self.release_leader_key().await,
            Action::Promote => Ok(self.promote()),
            Action::Demote { leader } => self.demote(leader.clone()).await.map_err(Step::Stop),
            Action::Rewind(up) => self.rewind(up),
            Action::RemoveDataDirectory { reason } => self.remove_data_directory(reason).await,
            Action::WriteHistory(h) => self.write_history(h).await,
            Action::GracefulDemote => Ok(self.graceful_demote()),
            Action::DemoteCluster(remote) => Ok(self.demote_cluster(remote)),
            Action::WriteConfig => self.write_config().await,
            Action::ClearFailover { version } => Ok(self.clear_failover(*version).await),
            Action::Follow(up) => self.follow(up).await,
            Action::Unfollow => self.unfollow().await,
            Action::EnsureSlots { names } => Ok(self.ensure_slots(names, cluster).await),
            Action::WriteSync {
                leader,
                voters,
                quorum,
            } => self.write_sync(leader, voters, *quorum).await,
            Action::DeleteSync => self.delete_sync().await,
            Action::SetSyncStandbyNames(v) => self.set_sync_names(v.clone(), cluster).await,
            Action::HoldAsFailsafe => Ok(self.hold_as_failsafe()),
            Action::ArmWatchdog => match self.watchdog.activate() {
                Ok(()) => Ok(Outcome::Done),
                Err(why) => Err(Step::Setback(Setback::WatchdogUnavailable, why)),
            },
            Action::DisarmWatchdog => {
                self.watchdog.disable();
                Ok(Outcome::Done)
            }
            Action::SkipRacesUntil(until) => Ok(Outcome::SkipRacesUntil(*until)),
            Action::RecheckSoon => {
                self.recheck_soon = true;
                Ok(Outcome::Done)
            }
            Action::Fatal { reason } => Err(Step::Fatal(reason.clone())),
        }
    }

    async fn race_initialize(&mut self) -> Done {
        let won = self.dcs.initialize(true, "").await.map_err(dcs_stop)?;
        if !won {
            return Err(Step::Stop("failed to acquire initialize lock".into()));
        }
        tracing::info!("won the initialize race: bootstrapping a new cluster");
        Ok(Outcome::WonInitialize)
    }

    fn start_bootstrap(&mut self) -> Outcome {
        let pg = self.pg.clone();
        let cfg = self.cfg.clone();
        let dynamic = self.dynamic.clone();
        self.spawn(Task::Bootstrap, async move {
            pg.bootstrap(cfg, dynamic)
                .await
                .map_err(|e| format!("{e:#}"))
        });
        Outcome::Done
    }

    async fn finish_bootstrap(&mut self, sysid: &str) -> Done {
        self.dcs.initialize(false, sysid).await.map_err(dcs_stop)?;
        self.dcs
            .set_config(&self.dynamic.to_json(), None)
            .await
            .map_err(dcs_stop)?;
        self.dcs.take_leader().await.map_err(dcs_stop)?;
        self.lease_deadline = self.dcs.lease_deadline().await;
        if self.dynamic.is_standby_cluster() {
            // Its clone already ran `on_start`; `on_role_change` follows with the new role.
            tracing::info!(sysid = %sysid, "initialized a new standby cluster");
        } else {
            tracing::info!(sysid = %sysid, "initialized a new cluster");
            self.callbacks.fire("on_start", "primary");
        }
        Ok(Outcome::Bootstrapped)
    }

    async fn abort_bootstrap(&mut self, reason: &str) -> Done {
        tracing::error!("bootstrap failed: {reason}; removing initialize key and data directory");
        let _ = self.dcs.delete_leader(None).await;
        let _ = self.dcs.cancel_initialization().await;
        let _ = self
            .pg
            .stop(StopMode::Immediate, Duration::from_secs(30))
            .await;
        if let Err(e) = self.pg.remove_data_dir() {
            tracing::error!("could not remove the data directory: {e}");
        }
        Err(Step::Fatal(format!("bootstrap failed: {reason}")))
    }

    /// Rows B-2.1/1.2 and B-2.3: create the data directory with the replica creation
    /// methods, then start as a standby of the source (or of nobody).
    fn create_replica(&mut self, from: Option<&Upstream>, basebackup_only: bool) -> Done {
        let conninfo = match from {
            Some(up) => self.upstream_conninfo(up).map_err(Step::Stop)?,
            None => None,
        };
        // Row SC-B: a standby cluster's own methods make the standby leader's directory.
        let methods = if basebackup_only {
            Some(vec!["basebackup".to_string()])
        } else {
            from.and_then(|up| up.remote.as_ref())
                .and_then(|r| r.create_replica_methods.clone())
        };
        let pg = self.pg.clone();
        let files = self.config_files(Some(from.cloned()));
        let params = self.pg.cmdline_params(&self.dynamic.parameters());
        let wait = self.pg_ctl_timeout();
        match from {
            Some(up) => tracing::info!("creating a replica from {}", up.name),
            None => tracing::info!("creating a replica without a leader (no_leader methods)"),
        }
        let cb = self.callbacks.clone();
        self.spawn(Task::Clone, async move {
            if let Err(e) = pg.create_replica(conninfo.as_deref(), methods).await {
                // A half-made directory is useless: remove it so the next cycle tries again.
                let _ = pg.remove_data_dir();
                return Err(e.to_string());
            }
            // pg_basebackup copies the source's server log too; it is not ours.
            pg.remove_copied_log();
            // A start that fails or takes long (a long archive recovery) keeps the data: the
            // next cycle starts it again or waits for it, as Patroni.
            pg.write_config(&files).map_err(|e| e.to_string())?;
            pg.start(&params, wait).await.map_err(|e| e.to_string())?;
            pg.reset().await;
            cb.fire("on_start", "replica");
            Ok(())
        });
        Ok(Outcome::Cloning(from.map(Upstream::key)))
    }

    async fn write_initialize(&mut self, sysid: &str) -> Done {
        let won = self.dcs.initialize(true, sysid).await.map_err(dcs_stop)?;
        if !won {
            return Err(Step::Stop(
                "initialize key was written by another node".into(),
            ));
        }
        Ok(Outcome::Done)
    }

    fn start(&mut self, standby_of: &Option<Option<Upstream>>) -> Done {
        let files = self.config_files(standby_of.clone());
        let following = standby_of.clone().flatten().map(|u| u.key());
        let pg = self.pg.clone();
        let params = self.pg.cmdline_params(&self.dynamic.parameters());
        let wait = self.pg_ctl_timeout();
        if let Err(e) = self.pg.write_pgpass() {
            return Err(Step::Stop(format!("could not write the passfile: {e}")));
        }
        let task = if standby_of.is_none() {
            Task::StartPrimary
        } else {
            Task::Start
        };
        let cb = self.callbacks.clone();
        let role = crate::ha::Callbacks::role(task == Task::StartPrimary);
        self.spawn(task, async move {
            pg.write_config(&files).map_err(|e| e.to_string())?;
            pg.start(&params, wait).await.map_err(|e| e.to_string())?;
            pg.reset().await;
            cb.fire("on_start", role);
            Ok(())
        });
        Ok(Outcome::Streaming(following))
    }

    async fn acquire_leader_key(&mut self) -> Done {
        let won = self
            .dcs
            .attempt_to_acquire_leader()
            .await
            .map_err(dcs_stop)?;
        if !won {
            // Row U-2.2/1.2: the race is lost; the next cycle follows the winner.
            return Err(Step::Stop("failed to acquire the leader key".into()));
        }
        self.lease_deadline = self.dcs.lease_deadline().await;
        tracing::info!("acquired the leader key");
        Ok(Outcome::LeaderKey(true))
    }

    /// Row H-2.1/1.1: the lease keep-alive and the leader-key transaction, then `status`. The
    /// watchdog is fed as soon as the key is confirmed ours (Patroni's `update_lock`).
    async fn refresh_leader_key(&mut self, cluster: &Cluster) -> Done {
        match self.dcs.update_leader().await {
            Ok((true, lease)) => {
                self.lease_deadline = Some(lease.deadline);
                self.shared.set_leader(true, self.lease_deadline);
                self.write_failsafe_key(cluster).await;
                self.watchdog.keepalive();
                if let Err(e) = self.maybe_write_status(cluster).await {
                    return Err(Step::Setback(
                        Setback::DcsUnreachable,
                        format!("etcd did not take our status: {e}"),
                    ));
                }
                Ok(Outcome::LeaderKey(true))
            }
            // Row D-2F'': the key vanished with a lease that expired while etcd was away, but
            // every member accepted our failsafe round less than `ttl` ago, so none of them may
            // have taken it: race for it again at once instead of demoting (the next cycle
            // sees who holds it; the hold and the lease guard still bound how long we stay).
            Ok((false, _)) if self.shared.failsafe_hold_in_effect() => {
                self.recheck_soon = true;
                Err(Step::Stop(
                    "the leader key expired during the failsafe hold: racing for it again".into(),
                ))
            }
            Ok((false, _)) => Err(Step::Setback(
                Setback::KeyNotOurs,
                "lost the leader key".into(),
            )),
            Err(e) => Err(Step::Setback(
                Setback::DcsUnreachable,
                format!("could not refresh the leader key: {e}"),
            )),
        }
    }

    async fn release_leader_key(&mut self) -> Done {
        self.dcs.delete_leader(None).await.map_err(dcs_stop)?;
        self.shared.set_leader(false, None);
        Ok(Outcome::LeaderKey(false))
    }

    /// The promotion task: `pre_promote` first (row PP-1: a failure ends the task with
    /// `PrePromoteFailed` and PostgreSQL untouched), then `pg_ctl promote`.
    fn promote(&mut self) -> Outcome {
        let pg = self.pg.clone();
        let wait = self.pg_ctl_timeout();
        let files = self.config_files(None);
        let cb = self.callbacks.clone();
        tracing::info!("promoting PostgreSQL");
        self.spawn_task(Task::Promote, async move {
            if let Err(why) = cb.pre_promote().await {
                return TaskResult::PrePromoteFailed(why);
            }
            let r = async {
                // A paused standby would end recovery without replaying what it received.
                if let Err(e) = pg.resume_replay().await {
                    tracing::warn!("could not resume WAL replay before promoting: {e}");
                }
                pg.promote(wait).await.map_err(|e| e.to_string())?;
                pg.write_config(&files).map_err(|e| e.to_string())?;
                pg.reset().await;
                // Update pg_control with the new timeline so peers can pg_rewind from us.
                if let Err(e) = pg.checkpoint().await {
                    tracing::warn!("CHECKPOINT after promote failed: {e}");
                }
                Ok::<_, String>(())
            }
            .await;
            match r {
                Ok(()) => TaskResult::Succeeded(Task::Promote),
                Err(e) => TaskResult::Failed(Task::Promote, e),
            }
        });
        Outcome::Streaming(None)
    }

    /// Immediate stop: the primary stops accepting writes now. The data directory may have
    /// diverged (the outcome marks it for a rewind); the next cycle rewinds it from the new
    /// leader. Without a leader (etcd unreachable) it restarts read-only, following nobody.
    pub(super) async fn demote(&mut self, leader: Option<Upstream>) -> Result<Outcome, String> {
        tracing::info!("demoting PostgreSQL (immediate stop)");
        self.shared.set_leader(false, None);
        // A promotion or start still running must not finish after this.
        if let Some((task, h)) = self.in_flight.take() {
            tracing::warn!("aborting {task:?} in progress");
            h.abort();
        }
        let was_running = self.pg.is_running();
        self.pg
            .stop(StopMode::Immediate, Duration::from_secs(30))
            .await
            .map_err(|e| e.to_string())?;
        self.pg.reset().await;
        if was_running {
            self.callbacks.fire("on_stop", "primary");
        }
        if leader.is_some() {
            return Ok(Outcome::Demoted);
        }
        let files = self.config_files(Some(None));
        let pg = self.pg.clone();
        let params = self.pg.cmdline_params(&self.dynamic.parameters());
        let wait = self.pg_ctl_timeout();
        let cb = self.callbacks.clone();
        self.spawn(Task::Demote, async move {
            pg.write_config(&files).map_err(|e| e.to_string())?;
            pg.start(&params, wait).await.map_err(|e| e.to_string())?;
            pg.reset().await;
            cb.fire("on_start", "replica");
            Ok(())
        });
        Ok(Outcome::Demoted)
    }

    fn rewind(&mut self, up: &Upstream) -> Done {
        let source = self.rewind_conninfo(up).map_err(Step::Stop)?;
        let pg = self.pg.clone();
        let files = self.config_files(Some(Some(up.clone())));
        let params = self.pg.cmdline_params(&self.dynamic.parameters());
        let wait = self.pg_ctl_timeout();
        tracing::info!("rewinding from {} (pg_rewind)", up.name);
        let cb = self.callbacks.clone();
        self.spawn(Task::Rewind, async move {
            let r = async {
                if pg.is_running() {
                    cb.before_stop().await;
                    pg.stop(StopMode::Fast, wait).await?;
                    cb.fire("on_stop", "replica");
                }
                pg.reset().await;
                let clean = matches!(
                    pg.data_dir_state(),
                    DataDir::Initialized(cd) if patrol_ha::ControlState::parse(&cd.state).is_clean_shutdown()
                );
                if !clean {
                    tracing::info!("running crash recovery in single-user mode before pg_rewind");
                    pg.single_user_recovery().await?;
                }
                let out = pg.rewind(&source).await?;
                tracing::info!("pg_rewind: {}", out.lines().last().unwrap_or("done"));
                pg.write_config(&files)?;
                pg.start(&params, wait).await?;
                pg.reset().await;
                cb.fire("on_start", "replica");
                Ok::<_, PgError>(())
            }
            .await;
            r.map_err(|e| e.to_string())
        });
        Ok(Outcome::Streaming(Some(up.name.clone())))
    }

    async fn remove_data_directory(&mut self, reason: &str) -> Done {
        tracing::warn!("removing the data directory: {reason}");
        self.pg
            .stop(StopMode::Immediate, Duration::from_secs(30))
            .await
            .map_err(pg_stop)?;
        self.pg.remove_data_dir().map_err(pg_stop)?;
        Ok(Outcome::DataDirectoryRemoved)
    }

    /// Row H-1.6: the missing `config` key gets the dynamic configuration in effect (created
    /// only if still absent).
    async fn write_config(&mut self) -> Done {
        self.dcs
            .set_config(&self.dynamic.to_json(), Some(0))
            .await
            .map_err(dcs_stop)?;
        tracing::info!("wrote the dynamic configuration to the DCS (its config key was missing)");
        Ok(Outcome::Done)
    }

    async fn write_history(&mut self, h: &History) -> Done {
        self.dcs.set_history(&h.to_json()).await.map_err(dcs_stop)?;
        tracing::info!(
            timeline = h.cluster_timeline(),
            "published the timeline history"
        );
        Ok(Outcome::Done)
    }

    /// Planned switchover on the leader: CHECKPOINT, fast stop, release the key once stopped
    /// (the standbys have the shutdown checkpoint), restart as a standby.
    fn graceful_demote(&mut self) -> Outcome {
        let pg = self.pg.clone();
        let dcs = self.dcs.clone();
        let shared = self.shared.clone();
        let files = self.config_files(Some(None));
        let params = self.pg.cmdline_params(&self.dynamic.parameters());
        let wait = self.pg_ctl_timeout();
        tracing::info!("switchover: checkpoint, fast stop, release the leader key");
        let stopped_role = if self.dynamic.is_standby_cluster() {
            "standby_leader"
        } else {
            "primary"
        };
        let cb = self.callbacks.clone();
        self.spawn(Task::Demote, async move {
            if let Err(e) = pg.checkpoint().await {
                tracing::warn!("CHECKPOINT before switchover failed: {e}");
            }
            cb.before_stop().await;
            pg.stop(StopMode::Fast, wait)
                .await
                .map_err(|e| e.to_string())?;
            pg.reset().await;
            cb.fire("on_stop", stopped_role);
            shared.set_leader(false, None);
            // A fast shutdown sends the shutdown checkpoint to connected standbys before the
            // postmaster exits, so the candidate has everything once we are stopped.
            match dcs.delete_leader(checkpoint_lsn(&pg)).await {
                Ok(_) => tracing::info!("released the leader key for the switchover"),
                Err(e) => tracing::warn!("could not release the leader key: {e}"),
            }
            pg.write_config(&files).map_err(|e| e.to_string())?;
            pg.start(&params, wait).await.map_err(|e| e.to_string())?;
            pg.reset().await;
            cb.fire("on_start", "replica");
            Ok(())
        });
        Outcome::Streaming(None)
    }

    /// Row SC-2 (Patroni's `demote('demote-cluster')`): fast stop keeping the leader key,
    /// archive the segment of the shutdown checkpoint when archiving is on, start as the
    /// standby leader following the remote source.
    fn demote_cluster(&mut self, remote: &Upstream) -> Outcome {
        let archive = crate::postgres::archive_command(&self.config_files(None).parameters);
        let files = self.config_files(Some(Some(remote.clone())));
        let pg = self.pg.clone();
        let params = self.pg.cmdline_params(&self.dynamic.parameters());
        let wait = self.pg_ctl_timeout();
        let cb = self.callbacks.clone();
        tracing::info!(
            "Demoting self (demote-cluster): fast stop, then following {}",
            remote.name
        );
        self.spawn(Task::Demote, async move {
            cb.before_stop().await;
            pg.stop(StopMode::Fast, wait)
                .await
                .map_err(|e| e.to_string())?;
            pg.reset().await;
            cb.fire("on_stop", "primary");
            match archive {
                Some(command) => match pg.archive_shutdown_checkpoint_wal(&command).await {
                    Ok(wal) => {
                        tracing::info!("archived {wal}, which holds the shutdown checkpoint")
                    }
                    Err(e) => {
                        tracing::error!(
                            "Failed to archive WAL file with the shutdown checkpoint: {e}"
                        )
                    }
                },
                None => tracing::info!(
                    "Not archiving latest checkpoint WAL file. Archiving is not configured."
                ),
            }
            pg.write_config(&files).map_err(|e| e.to_string())?;
            pg.start(&params, wait).await.map_err(|e| e.to_string())?;
            pg.reset().await;
            Ok(())
        });
        Outcome::Streaming(Some(remote.key()))
    }

    async fn clear_failover(&mut self, version: i64) -> Outcome {
        match self.dcs.set_failover("{}", Some(version)).await {
            Ok(true) => {}
            Ok(false) => tracing::info!("failover key changed meanwhile; not cleared"),
            Err(e) => tracing::warn!("could not clear the failover key: {e}"),
        }
        Outcome::Done
    }

    /// Row Y-1: the `sync` key, compared with the revision this cycle last saw or wrote.
    async fn write_sync(&mut self, leader: &str, voters: &[String], quorum: usize) -> Done {
        let state = patrol_dcs::SyncState {
            leader: Some(leader.to_string()),
            sync_standby: voters.to_vec(),
            quorum: quorum as i64,
        };
        match self
            .dcs
            .set_sync(&state.to_json(), self.sync_version)
            .await
            .map_err(dcs_stop)?
        {
            Some(v) => {
                self.sync_version = Some(v);
                Ok(Outcome::Done)
            }
            None => Err(Step::Stop(
                "Synchronous replication key updated by someone else".into(),
            )),
        }
    }

    async fn delete_sync(&mut self) -> Done {
        if self
            .dcs
            .delete_sync(self.sync_version)
            .await
            .map_err(dcs_stop)?
        {
            self.sync_version = None;
            Ok(Outcome::Done)
        } else {
            Err(Step::Stop(
                "Synchronous replication key updated by someone else".into(),
            ))
        }
    }

    /// Row Y-1: `synchronous_standby_names` (`None`: the user's own value), written to the
    /// configuration and reloaded when it changes.
    async fn set_sync_names(&mut self, value: Option<String>, cluster: &Cluster) -> Done {
        if value == self.sync_names && value.is_some() {
            // Already ours in the file; PostgreSQL may not have reloaded it yet.
            self.pg.reload().await.map_err(pg_stop)?;
            return Ok(Outcome::Done);
        }
        self.sync_names = value;
        self.rewrite_config_and_reload(cluster)
            .await
            .map_err(pg_stop)?;
        Ok(Outcome::Done)
    }

    /// Rewrites PostgreSQL's configuration for the role it runs in now (a standby keeps its
    /// recovery settings) and reloads it.
    pub(super) async fn rewrite_config_and_reload(
        &mut self,
        cluster: &Cluster,
    ) -> Result<(), crate::postgres::PgError> {
        let standby_of = match self.mem.last_seen_primary {
            Some(true) => None,
            _ => Some(self.mem.following.as_deref().and_then(|key| {
                self.dynamic
                    .standby_cluster()
                    .map(|s| Upstream::remote(&s))
                    .filter(|u| u.key() == key)
                    .or_else(|| {
                        cluster
                            .members
                            .iter()
                            .find(|m| m.name == key)
                            .map(Upstream::of)
                    })
            })),
        };
        let files = self.config_files(standby_of);
        self.pg.write_config(&files)?;
        self.pg.reload().await?;
        // PostgreSQL keeps its old value of a setting it cannot parse: say so (the view reads
        // the files again, so the reload need not have been processed yet).
        match self.pg.config_file_errors().await {
            Ok(errors) => {
                for e in errors {
                    tracing::warn!("PostgreSQL refused a configuration setting: {e}");
                }
            }
            Err(e) => tracing::debug!("could not read pg_file_settings: {e}"),
        }
        Ok(())
    }

    /// Row H-1.2: point the standby at the leader (rewrite its configuration and reload).
    async fn follow(&mut self, up: &Upstream) -> Done {
        // A leader whose conn_url cannot be used is not followed (the error naming it is
        // logged by `report_unusable_members`): PostgreSQL keeps what it has.
        self.upstream_conninfo(up).map_err(Step::Stop)?;
        match &up.remote {
            Some(_) => tracing::info!("following {} as the standby leader", up.name),
            None => tracing::info!("following a new leader: {}", up.name),
        }
        let files = self.config_files(Some(Some(up.clone())));
        self.pg.write_config(&files).map_err(pg_stop)?;
        self.pg.reload().await.map_err(pg_stop)?;
        Ok(Outcome::Streaming(Some(up.key())))
    }

    /// Row H-1.2n: stop streaming; recovery goes on from the archive (`restore_command`).
    async fn unfollow(&mut self) -> Done {
        tracing::info!("nostream: no longer streaming; recovering from the archive only");
        let files = self.config_files(Some(None));
        self.pg.write_config(&files).map_err(pg_stop)?;
        self.pg.reload().await.map_err(pg_stop)?;
        Ok(Outcome::Streaming(None))
    }

    pub(super) fn pg_ctl_timeout(&self) -> Duration {
        Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout)
    }

    /// The `primary_conninfo` to stream from `up`: `None` for a standby cluster's source that
    /// is an archive only (no `host` or `port`).
    pub(super) fn upstream_conninfo(&self, up: &Upstream) -> Result<Option<String>, String> {
        let repl = &self.cfg.postgresql.authentication.replication;
        let mut extra = repl.extra.clone();
        let (host, port) = match &up.remote {
            Some(r) if r.host.is_none() && r.port.is_none() => return Ok(None),
            Some(r) => {
                let host = r.host.clone().unwrap_or_else(|| "localhost".into());
                // Several remote hosts: only the writable one is the source (as Patroni).
                if host.contains(',') {
                    extra.insert("target_session_attrs".into(), "read-write".into());
                }
                (host, r.port.unwrap_or(5432))
            }
            None => patrol_dcs::parse_conn_url(&up.conn_url)
                .ok_or_else(|| format!("member {} has no usable conn_url", up.name))?,
        };
        Ok(Some(primary_conninfo(
            &host,
            port,
            &repl.username,
            &self.cfg.postgresql.pgpass,
            &self.cfg.name,
            &extra,
        )))
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
    pub(super) fn config_files(&self, standby_of: Option<Option<Upstream>>) -> ConfigFiles {
        let mut parameters = self.dynamic.parameters();
        for (k, v) in &self.cfg.postgresql.parameters {
            parameters.insert(k.clone(), v.clone());
        }
        if let Some(names) = &self.sync_names {
            parameters.insert(
                "synchronous_standby_names".into(),
                serde_json::Value::String(names.clone()),
            );
        }
        if standby_of.is_some() && self.needs_hot_standby_feedback() {
            parameters.insert("hot_standby_feedback".into(), "on".into());
        }
        let recovery = standby_of.map(|up| {
            let conninfo = up
                .as_ref()
                .and_then(|u| self.upstream_conninfo(u).ok().flatten());
            let slot = match up.as_ref().and_then(|u| u.remote.as_ref()) {
                // Row SC-1: the standby leader uses the section's slot on the remote primary.
                Some(r) => r
                    .primary_slot_name
                    .as_deref()
                    .filter(|_| conninfo.is_some())
                    .map(patrol_dcs::slot_name_from_member_name),
                None => (self.dynamic.use_slots() && up.is_some())
                    .then(|| patrol_dcs::slot_name_from_member_name(&self.cfg.name)),
            };
            let mut r = Recovery::standby(conninfo, slot, &self.recovery_conf());
            r.set_all(standby_cluster_settings(
                self.dynamic.standby_cluster().as_ref(),
                up.as_ref().is_some_and(|u| u.remote.is_some()),
            ));
            r
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
            keep_recovery: false,
        }
    }

    /// `postgresql.recovery_conf`: the dynamic one, each setting of the local one winning.
    fn recovery_conf(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut rc = self.dynamic.recovery_conf();
        for (k, v) in &self.cfg.postgresql.recovery_conf {
            rc.insert(k.clone(), v.clone());
        }
        rc
    }
}

/// Spec 5.9: in a standby cluster every member restores from the section's archive
/// (`restore_command`, `archive_cleanup_command`); the standby leader also applies its
/// `recovery_min_apply_delay`. They win over `recovery_conf` and the parameters.
fn standby_cluster_settings(
    source: Option<&patrol_dcs::StandbySource>,
    leader: bool,
) -> Vec<(String, String)> {
    let Some(s) = source else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut put = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            out.push((k.to_string(), v.clone()));
        }
    };
    put("restore_command", &s.restore_command);
    put("archive_cleanup_command", &s.archive_cleanup_command);
    if leader {
        put("recovery_min_apply_delay", &s.recovery_min_apply_delay);
    }
    out
}

/// The shutdown checkpoint of a cleanly stopped primary (what `status.optime` says when the
/// leader key is released).
pub(super) fn checkpoint_lsn<P: LocalPostgres>(pg: &P) -> Option<u64> {
    match pg.data_dir_state() {
        DataDir::Initialized(cd) => cd
            .fields
            .get("Latest checkpoint location")
            .and_then(|s| patrol_dcs::parse_lsn(s)),
        _ => None,
    }
}
