//! Observing: the dynamic configuration in effect, the local PostgreSQL, the peers.

use std::time::Duration;

use patrol_dcs::{Cluster, ClusterConfig, Dcs};
use patrol_ha::{DataState, LocalPg, PeerStatus};

use super::Ha;
use crate::ha::port::{LocalPostgres, Peers};
use crate::postgres::{DataDir, LocalStatus};

impl<D: Dcs, P: LocalPostgres, Q: Peers> Ha<D, P, Q> {
    /// The dynamic configuration this cycle acts on: the `config` key if it is valid, else the
    /// last valid one, which then stands in for it in `cluster` (so `decide` reads `pause` and
    /// the rest from what is in effect).
    pub(super) async fn take_dynamic(&mut self, cluster: &mut Cluster) {
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
        if self.dynamic.parameters() != cfg.value.parameters()
            || self.dynamic.pg_hba() != cfg.value.pg_hba()
            || has_logical_slots(&self.dynamic) != has_logical_slots(&cfg.value)
        {
            self.dynamic_params_changed = true;
        }
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

    /// Changed dynamic `postgresql.parameters` (or `pg_hba`) reach a running PostgreSQL with a
    /// reload (those that need a restart wait for one, as Patroni). Written for the role the
    /// status query says PostgreSQL runs in; a standby whose upstream this process has not
    /// configured yet gets them with its `Follow`, which writes the whole configuration.
    pub(super) async fn apply_changed_parameters(&mut self, cluster: &Cluster, local: &LocalPg) {
        if !self.dynamic_params_changed || self.in_flight.is_some() || !local.running {
            return;
        }
        match local.in_recovery {
            None => return, // not known yet: next cycle
            Some(true) if self.mem.following.is_none() => {}
            Some(_) => {
                tracing::info!(
                    "the dynamic configuration's PostgreSQL parameters changed: reloading"
                );
                match self.rewrite_config_and_reload(cluster).await {
                    Ok(()) => self.callbacks.fire(
                        "on_reload",
                        crate::ha::Callbacks::role(local.in_recovery == Some(false)),
                    ),
                    Err(e) => tracing::warn!("could not apply the changed parameters: {e}"),
                }
            }
        }
        self.dynamic_params_changed = false;
    }

    /// Patroni's pending restart: each restart-only parameter the server runs with another
    /// value than the configuration asks for (a changed `max_connections`; a standby kept at
    /// the primary's higher value), and those PostgreSQL flags itself; published in the member
    /// key, `GET /patroni` and the metrics, cleared by the restart that applies them.
    async fn pending_restart(&mut self, s: &crate::postgres::LocalStatus) {
        let files = self.config_files(None);
        let wanted = self
            .pg
            .wanted_parameters(&files, &self.dynamic.parameters());
        let key = (s.postmaster_start_time.clone(), wanted, s.pending_restart);
        let fresh = match &self.pending_restart {
            Some((k, reason)) if *k == key => Some(reason.clone()),
            _ => None,
        };
        let reason = match fresh {
            Some(r) => r,
            None => {
                let names: Vec<String> =
                    key.1.iter().map(|(n, _)| n.to_ascii_lowercase()).collect();
                match self.pg.restart_settings(&names).await {
                    Ok(rows) => {
                        let reason = crate::postgres::gucs::pending_restart_reason(&key.1, &rows);
                        if !reason.is_empty() {
                            let names: Vec<&String> = reason.keys().collect();
                            tracing::info!("PostgreSQL needs a restart to apply {names:?}");
                        }
                        self.pending_restart = Some((key, reason.clone()));
                        reason
                    }
                    Err(e) => {
                        tracing::warn!("could not read the settings pending a restart: {e}");
                        Default::default()
                    }
                }
            }
        };
        // The reason decides, not PostgreSQL's own flag alone: after a reload PostgreSQL flags a
        // parameter set on the command line whenever a file (initdb's postgresql.base.conf)
        // names another value, although a restart would change nothing.
        self.pending_now = reason;
    }

    /// Logs an error naming each member whose `conn_url` or `api_url` cannot be used (a host
    /// that is not an address or a DNS name, a bad port), once per change. Such a member is
    /// never cloned from, followed or probed: every reader of those URLs goes through
    /// `patrol_dcs::parse_conn_url`/`parse_api_url`, which refuse them.
    pub(super) fn report_unusable_members(&mut self, cluster: &Cluster) {
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

    pub(super) async fn observe_local(
        &mut self,
        cluster: Option<&Cluster>,
    ) -> (LocalPg, Option<LocalStatus>) {
        let mut stopped_at = None;
        let data = match self.pg.data_dir_state() {
            DataDir::Empty => DataState::Empty,
            DataDir::Invalid(why) => DataState::Invalid(why),
            DataDir::Initialized(cd) => {
                stopped_at = cd.stopped_position();
                DataState::Initialized {
                    sysid: cd.sysid,
                    cluster_state: cd.state.as_str().into(),
                }
            }
        };
        let running = self.pg.is_running();
        let stopped_at = stopped_at.filter(|_| !running);
        self.pending_now.clear();
        let status = if running && self.in_flight.is_none() {
            match self.pg.status().await {
                Ok(mut s) => {
                    self.pending_restart(&s).await;
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
            history: None,
            walsenders: status
                .as_ref()
                .filter(|s| !s.in_recovery)
                .map(|s| {
                    s.replication
                        .iter()
                        .map(|r| patrol_ha::sync::Walsender {
                            pid: r.pid,
                            application_name: r.application_name.clone(),
                            sync_state: r.sync_state.clone(),
                            lsn: r.confirmed_lsn(&s.synchronous_commit),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            standby_names: status.as_ref().map(|s| s.synchronous_standby_names.clone()),
            stopped_at,
            switches: Vec::new(),
        };
        let Some(cluster) = cluster else {
            return (local, status);
        };
        if cluster.leader_name() != Some(self.cfg.name.as_str()) {
            // Slot retention is the leader's: a later leadership starts again from the DCS.
            self.slot_retention = Default::default();
            self.retain_slots = None;
            self.published_slots = None;
        }
        let mut local = local;
        if let Some(s) = &status {
            let i_lead = cluster.leader_name() == Some(self.cfg.name.as_str());
            if i_lead && !s.in_recovery && s.timeline > 1 && cluster.timeline() < s.timeline {
                local.history = self.read_history(s.timeline);
            }
            // Row R-2': a standby's own history, to compare with the cluster's.
            if s.in_recovery && s.timeline > 1 && cluster.history.is_some() {
                if let Some((text, _)) = self.pg.timeline_history(s.timeline) {
                    local.switches = patrol_dcs::History::from_timeline_file(&text)
                        .iter()
                        .map(|l| (l.timeline, l.lsn))
                        .collect();
                }
            }
        }
        (local, status)
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
    pub(super) async fn probe_peers(&self, cluster: &Cluster) -> Vec<PeerStatus> {
        let limit = Duration::from_secs(self.timing().retry_timeout.clamp(1, 2));
        let mut members: Vec<(String, String)> = cluster
            .members
            .iter()
            .filter(|m| m.name != self.cfg.name && !m.data.api_url.is_empty())
            .map(|m| (m.name.clone(), m.data.api_url.clone()))
            .collect();
        // Row U-2F: in failsafe mode the members of the `failsafe` key are asked too (one gone
        // from the DCS may still be alive, and a primary).
        if self.dynamic.failsafe_mode() {
            for (name, url) in cluster.failsafe.iter().flatten() {
                let url = url.as_str().unwrap_or_default();
                if name != &self.cfg.name
                    && !url.is_empty()
                    && !members.iter().any(|(n, _)| n == name)
                {
                    members.push((name.clone(), url.to_string()));
                }
            }
        }
        self.peers.probe(&self.cfg, members, limit).await
    }
}

/// Permanent logical slots are configured (standbys then run with `hot_standby_feedback`).
fn has_logical_slots(dynamic: &patrol_dcs::ClusterConfig) -> bool {
    patrol_ha::permanent_slots::permanent_slots(dynamic).has_logical()
}
