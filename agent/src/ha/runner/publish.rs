//! Publishing: our member key (and the lease it lives on), the leader's `status`, and the
//! members' replication slots the leader keeps.

use patrol_dcs::{Cluster, Dcs, DcsError, MemberData, Role, Status};
use patrol_ha::{Outcome, Setback, Task};

use super::{Ha, PATRONI_VERSION};
use crate::config::Config;
use crate::ha::port::{LocalPostgres, Peers};
use crate::postgres::{DataDir, LocalStatus};

impl<D: Dcs, P: LocalPostgres, Q: Peers> Ha<D, P, Q> {
    pub(super) fn member_state(&self, running: bool) -> String {
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
    /// answering) never "primary", so peers do not take a dead primary for a live one. The
    /// lock holder of a standby cluster running in recovery is its `standby_leader` (row SC-1).
    pub(super) fn role_now(&self, cluster: &Cluster, status: Option<&LocalStatus>) -> Role {
        match self.pg.data_dir_state() {
            DataDir::Initialized(_) => {}
            _ => return Role::Uninitialized,
        }
        match status {
            Some(s) if !s.in_recovery => Role::Primary,
            Some(_)
                if self.dynamic.is_standby_cluster()
                    && cluster.leader_name() == Some(self.cfg.name.as_str()) =>
            {
                Role::StandbyLeader
            }
            _ => Role::Replica,
        }
    }

    /// Notes the role PostgreSQL runs in this cycle and runs `on_role_change` when it changed
    /// since the last cycle that knew it.
    pub(super) fn observe_role(&mut self, role: Role) {
        if role == Role::Uninitialized {
            return;
        }
        let before = self.last_role.replace(role.clone());
        if before.is_some_and(|b| b != role) {
            self.callbacks.fire("on_role_change", role.as_str());
        }
    }

    /// Our PostgreSQL's `conn_url` as published in the member key.
    pub(super) fn conn_url(&self) -> String {
        let pgc = &self.cfg.postgresql;
        format!("postgres://{}/{}", pgc.connect_address, pgc.database)
    }

    /// Our REST API's `api_url` as published in the member key.
    pub(super) fn api_url(&self) -> String {
        format!(
            "{}://{}/patroni",
            api_scheme(&self.cfg),
            self.cfg.restapi.connect_address
        )
    }

    /// Publishes our member key when its content (or the lease) changed.
    pub(super) async fn publish(
        &mut self,
        cluster: &Cluster,
        status: Option<&LocalStatus>,
        state: &str,
    ) -> Result<(), Setback> {
        let pgc = &self.cfg.postgresql;
        let conn_url = self.conn_url();
        let api_url = self.api_url();
        let role = self.role_now(cluster, status);
        let mut m = MemberData::new(conn_url, api_url, state, role, PATRONI_VERSION);
        m.proxy_url = pgc
            .proxy_address
            .as_ref()
            .map(|p| format!("postgres://{}/{}", p, pgc.database));
        m.tags = patrol_dcs::publishable_tags(&self.cfg.tags);
        if self.disable_sync {
            m.tags.insert("nosync".into(), true.into());
            m.tags.insert("sync_priority".into(), 0.into());
        }
        m.pause = self.dynamic.pause();
        m.pending_restart = !self.pending_now.is_empty();
        m.pending_restart_reason = m
            .pending_restart
            .then(|| serde_json::Value::Object(self.pending_now.clone()));
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
                // retry_timeout: treat etcd as unreachable now (row D-2).
                return Err(Setback::DcsUnreachable);
            }
        }
        if unchanged {
            return Ok(());
        }
        match self.dcs.touch_member(&json).await {
            Ok(()) => self.last_member_json = Some((json, session)),
            Err(e) => tracing::warn!("failed to update member key: {e}"),
        }
        Ok(())
    }

    /// Row H-1.5: the leader's physical slot for every other member, and the retirement of
    /// those of members gone longer than `member_slots_ttl`.
    pub(super) async fn ensure_slots(&mut self, names: &[String], cluster: &Cluster) -> Outcome {
        let existing = match self.pg.physical_slots().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("could not list replication slots: {e}");
                return Outcome::Done;
            }
        };
        for n in names
            .iter()
            .filter(|n| !existing.iter().any(|(e, _)| e == *n))
        {
            match self.pg.create_physical_slot(n).await {
                Ok(()) => tracing::info!("created physical replication slot {n}"),
                Err(e) => tracing::warn!("could not create replication slot {n}: {e}"),
            }
        }
        self.retire_member_slots(cluster, &existing).await;
        Outcome::Done
    }

    /// `member_slots_ttl` (spec 5.12): drops the slots of members gone longer than the ttl
    /// (never one something streams from) and remembers what `status.retain_slots` should say.
    async fn retire_member_slots(&mut self, cluster: &Cluster, existing: &[(String, bool)]) {
        let members: std::collections::BTreeSet<String> = cluster
            .members
            .iter()
            .filter(|m| !m.data.nostream())
            .map(|m| m.name.as_str())
            .chain(std::iter::once(self.cfg.name.as_str()))
            .map(patrol_dcs::slot_name_from_member_name)
            .collect();
        let ttl = patrol_ha::slots::member_slots_ttl_ms(&self.dynamic);
        let permanent = patrol_ha::slots::permanent_slot_names(&self.dynamic);
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
                Some((_, false)) => match self.pg.drop_physical_slot(name).await {
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

    /// The leader writes `status` (its WAL position, the positions of the slots it keeps)
    /// when it changed.
    /// Returns an error when etcd did not take the write (the caller, the leader, must then
    /// treat etcd as unreachable rather than go on with more calls that each wait).
    pub(super) async fn maybe_write_status(&self, cluster: &Cluster) -> Result<(), DcsError> {
        let Ok(s) = self.pg.status().await else {
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
        // The slot positions as they are now, read with the position above: those of the last
        // slot pass (after this cycle's actions) would lag the position by a cycle, and every
        // change of position would be written twice.
        let slots = match &self.published_slots {
            Some(last) => match self.pg.replication_slots().await {
                Ok(existing) => self.slots_to_publish(cluster, &existing, Some(pos)),
                Err(_) => last.clone(),
            },
            None => cluster.status.slots.clone(),
        };
        if cluster.status.optime == Some(pos)
            && cluster.status.retain_slots == retain
            && cluster.status.slots == slots
        {
            return Ok(());
        }
        let status = Status {
            optime: Some(pos),
            retain_slots: retain,
            slots,
        };
        self.dcs.set_status(&status.to_json()).await.map_err(|e| {
            tracing::warn!("could not write status: {e}");
            e
        })
    }
}

fn api_scheme(cfg: &Config) -> &'static str {
    if cfg.restapi.certfile.is_some() {
        "https"
    } else {
        "http"
    }
}
