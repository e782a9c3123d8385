//! Permanent slots (rows H-1.5p, H-1.2p): each cycle, with PostgreSQL running and no long
//! operation in flight, the leader and every standby that follows it list their slots and do
//! what [`patrol_ha::permanent_slots::plan`] says. The leader remembers the positions it
//! publishes in `status.slots`. A standby advances its logical slots on a task of its own (the
//! decoding can take a while) and copies the logical slots it lacks from the leader as a
//! restart (`Task::Restart`): the state files are read from the leader first, then PostgreSQL
//! is stopped, the files put in `pg_replslot`, and PostgreSQL started again.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use patrol_dcs::{Cluster, Dcs};
use patrol_ha::permanent_slots::{
    self as ps, ExistingSlot, PermanentSlot, SlotInput, SlotKind, SlotPlan,
};
use patrol_ha::Task;

use super::Ha;
use crate::ha::port::{LocalPostgres, Peers, StopMode};
use crate::postgres::LocalStatus;

/// The standby's logical slot advances in flight, and what they found.
#[derive(Default)]
pub(super) struct SlotWork {
    advancing: Option<tokio::task::JoinHandle<Vec<String>>>,
    /// Logical slots whose advance failed because their WAL is gone or they are invalid: copy
    /// them from the leader again.
    recopy: BTreeSet<String>,
    /// The problems of the `slots` configuration last logged.
    problems: Vec<String>,
    /// Every member slot name seen while a standby (members, `status.retain_slots`): a slot of
    /// one of them that is no longer kept is dropped, even once its name left the cluster.
    member_names: BTreeSet<String>,
}

impl<D: Dcs, P: LocalPostgres, Q: Peers> Ha<D, P, Q> {
    /// The permanent slots this member keeps under the dynamic configuration in effect.
    pub(super) fn my_permanent_slots(&self, cluster: &Cluster) -> Vec<PermanentSlot> {
        let all = ps::permanent_slots(&self.dynamic);
        let nostream = patrol_dcs::tags_nostream(&self.cfg.tags);
        ps::for_member(
            &all,
            &self.dynamic,
            patrol_dcs::tags_nofailover(&self.cfg.tags),
            nostream,
            &patrol_dcs::slot_name_from_member_name(&self.cfg.name),
            &member_slot_names(cluster),
        )
    }

    /// A standby that keeps permanent logical slots runs with `hot_standby_feedback`, so the
    /// primary keeps the catalog rows their decoding needs (Patroni enforces it too).
    pub(super) fn needs_hot_standby_feedback(&self) -> bool {
        self.dynamic.use_slots()
            && !patrol_dcs::tags_nofailover(&self.cfg.tags)
            && ps::permanent_slots(&self.dynamic).has_logical()
    }

    /// One cycle's work on the permanent slots (see the module's documentation).
    pub(super) async fn sync_permanent_slots(
        &mut self,
        cluster: &Cluster,
        status: Option<&LocalStatus>,
    ) {
        let Some(s) = status else { return };
        if self.in_flight.is_some() || !self.pg.is_running() || !self.dynamic.use_slots() {
            return;
        }
        let me = self.cfg.name.as_str();
        // The standby leader of a standby cluster keeps the slots as a leader does (row SC-1):
        // its members' and the permanent physical ones; it drops the others.
        let primary = cluster.leader_name() == Some(me)
            && (!s.in_recovery || self.dynamic.is_standby_cluster());
        let follows = s.in_recovery && cluster.leader_name().is_some_and(|l| l != me);
        if !primary && !follows {
            return;
        }
        let all = ps::permanent_slots(&self.dynamic);
        if all.problems != self.slot_work.problems {
            for p in &all.problems {
                tracing::error!("slots: {p}");
            }
            self.slot_work.problems = all.problems.clone();
        }
        let published = ps::published_positions(&cluster.status.slots);
        self.apply_slot_plan(cluster, s, primary, &published, true)
            .await;
    }

    /// The positions of the slots the leader publishes in `status`: its permanent slots', its
    /// members' (when they are retained) and its own, as `existing` and `wal_position` say.
    pub(super) fn slots_to_publish(
        &self,
        cluster: &Cluster,
        existing: &[ExistingSlot],
        wal_position: Option<u64>,
    ) -> serde_json::Map<String, serde_json::Value> {
        ps::to_publish(
            existing,
            &self.my_permanent_slots(cluster),
            &member_slot_names(cluster),
            &patrol_dcs::slot_name_from_member_name(&self.cfg.name),
            wal_position,
            patrol_ha::slots::member_slots_ttl_ms(&self.dynamic) > 0,
        )
    }

    /// For failsafe mode, while etcd is away: the leader sent the positions of its slots;
    /// advance this standby's copies of the permanent slots to them (nothing is copied).
    pub(super) async fn advance_slots_to(
        &mut self,
        cluster: &Cluster,
        positions: &BTreeMap<String, u64>,
    ) {
        let Ok(s) = self.pg.status().await else {
            return;
        };
        if s.in_recovery && self.in_flight.is_none() {
            self.apply_slot_plan(cluster, &s, false, positions, false)
                .await;
        }
    }

    async fn apply_slot_plan(
        &mut self,
        cluster: &Cluster,
        s: &LocalStatus,
        primary: bool,
        published: &BTreeMap<String, u64>,
        may_copy: bool,
    ) {
        let existing = match self.pg.replication_slots().await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("could not list replication slots: {e}");
                return;
            }
        };
        let mine = self.my_permanent_slots(cluster);
        let members = member_slot_names(cluster);
        let ignore = ps::ignore_rules(&self.dynamic);
        let wanted = patrol_ha::slots::member_slots(&patrol_ha::slots::MemberSlotsInput {
            cluster,
            dynamic: &self.dynamic,
            me: &self.cfg.name,
            leader: primary,
            nofailover: patrol_dcs::tags_nofailover(&self.cfg.tags),
            published,
        });
        // The leader drops only the slots of members with a key that it does not keep (gone
        // members' are `member_slots_ttl`'s business); a standby also those of names seen
        // before (a demoted leader's, a member's that expired).
        let member_names: BTreeSet<String> = if primary {
            cluster
                .members
                .iter()
                .map(|m| patrol_dcs::slot_name_from_member_name(&m.name))
                .collect()
        } else {
            self.slot_work.member_names.extend(members.iter().cloned());
            self.slot_work.member_names.clone()
        };
        let mut plan = ps::plan(&SlotInput {
            primary,
            permanent: &mine,
            member_slots: &members,
            existing: &existing,
            published,
            replay_lsn: s.replay_lsn,
            ignore: &ignore,
            paused: self.dynamic.pause(),
            drop_stray_logical: s.server_version < 160_000,
            standby_leader: primary && s.in_recovery,
            leader_elsewhere: !primary,
            members: &wanted,
            member_names: &member_names,
        });
        if primary {
            self.published_slots = Some(self.slots_to_publish(cluster, &existing, s.wal_position));
        }
        self.collect_advances().await;
        for name in std::mem::take(&mut self.slot_work.recopy) {
            if !plan.copy.contains(&name) {
                plan.copy.push(name);
            }
        }
        self.run_slot_plan(cluster, &mine, plan, may_copy).await;
    }

    /// Notes the logical slots a finished advance asks to copy again.
    async fn collect_advances(&mut self) {
        if let Some(h) = self.slot_work.advancing.take_if(|h| h.is_finished()) {
            if let Ok(recopy) = h.await {
                self.slot_work.recopy.extend(recopy);
            }
        }
    }

    async fn run_slot_plan(
        &mut self,
        cluster: &Cluster,
        mine: &[PermanentSlot],
        plan: SlotPlan,
        may_copy: bool,
    ) {
        for (name, why) in &plan.drop {
            match self.pg.drop_slot(name).await {
                Ok(true) => tracing::info!("dropped replication slot {name}: {why}"),
                Ok(false) => {
                    tracing::warn!("could not drop replication slot {name} ({why}): it is in use")
                }
                Err(e) => tracing::error!("could not drop replication slot {name}: {e}"),
            }
        }
        for name in &plan.create_physical {
            match self.pg.create_physical_slot(name).await {
                Ok(()) => tracing::info!("created physical replication slot {name}"),
                Err(e) => tracing::error!("could not create physical replication slot {name}: {e}"),
            }
        }
        for (name, database, plugin) in &plan.create_logical {
            match self.pg.create_logical_slot(database, name, plugin).await {
                Ok(()) => tracing::info!(
                    "created permanent logical replication slot {name} (database {database}, plugin {plugin})"
                ),
                Err(e) => tracing::error!(
                    "could not create logical replication slot {name} (database {database}, plugin {plugin}): {e}"
                ),
            }
        }
        for (name, lsn) in &plan.advance_physical {
            if let Err(e) = self.pg.advance_physical_slot(name, *lsn).await {
                tracing::error!(
                    "could not advance replication slot {name} to {}: {e}",
                    patrol_dcs::format_lsn(*lsn)
                );
            }
        }
        if !plan.advance_logical.is_empty() && self.slot_work.advancing.is_none() {
            let pg = self.pg.clone();
            let work = plan.advance_logical.clone();
            self.slot_work.advancing = Some(tokio::spawn(async move {
                let mut recopy = Vec::new();
                for (database, name, lsn) in work {
                    if let Err(e) = pg.advance_logical_slot(&database, &name, lsn).await {
                        tracing::error!("could not advance logical replication slot {name}: {e}");
                        // The WAL it needs is gone, or the slot is invalid: copy it again.
                        if matches!(e.sqlstate(), Some("58P01") | Some("55000")) {
                            recopy.push(name);
                        }
                    }
                }
                recopy
            }));
        }
        if may_copy && !plan.copy.is_empty() {
            self.copy_logical_slots(cluster, mine, &plan.copy).await;
        }
    }

    /// Copies the logical slots `names` from the leader: reads their state files there, then,
    /// as a restart, stops PostgreSQL, installs them and starts it again.
    async fn copy_logical_slots(
        &mut self,
        cluster: &Cluster,
        mine: &[PermanentSlot],
        names: &[String],
    ) {
        let Some((host, port)) = cluster
            .leader_member()
            .and_then(|l| patrol_dcs::parse_conn_url(&l.data.conn_url))
        else {
            return;
        };
        let leader = cluster.leader_name().unwrap_or_default().to_string();
        let states = match self.pg.read_member_slots(&host, port, names).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(
                    "could not read logical slots {names:?} from the leader {leader}: {e}"
                );
                return;
            }
        };
        let states: Vec<_> = states
            .into_iter()
            .filter(|st| {
                let wanted = mine.iter().any(|p| {
                    p.name == st.name
                        && p.kind
                            == SlotKind::Logical {
                                database: st.database.clone(),
                                plugin: st.plugin.clone(),
                            }
                });
                if !wanted {
                    tracing::warn!(
                        "not copying logical slot {}: on the leader it has database {} and plugin {}, unlike the configuration",
                        st.name, st.database, st.plugin
                    );
                }
                wanted
            })
            .collect();
        if states.is_empty() {
            return;
        }
        let list: Vec<String> = states.iter().map(|s| s.name.clone()).collect();
        tracing::info!(
            "copying logical slots {list:?} from the leader {leader}: restarting PostgreSQL"
        );
        if let Some(h) = self.slot_work.advancing.take() {
            h.abort();
        }
        let pg = self.pg.clone();
        let params = self.pg.cmdline_params(&self.dynamic.parameters());
        let wait = Duration::from_secs(self.cfg.postgresql.pg_ctl_timeout);
        let cb = self.callbacks.clone();
        self.last_member_json = None;
        self.spawn(Task::Restart, async move {
            pg.stop(StopMode::Fast, wait)
                .await
                .map_err(|e| format!("copying logical slots: {e}"))?;
            pg.reset().await;
            cb.fire("on_stop", "replica");
            for st in &states {
                pg.install_slot_state(&st.name, &st.data)
                    .map_err(|e| format!("copying logical slot {}: {e}", st.name))?;
            }
            pg.start(&params, wait)
                .await
                .map_err(|e| format!("copying logical slots: {e}"))?;
            pg.reset().await;
            cb.fire("on_start", "replica");
            tracing::info!("copied logical slots {list:?} from the leader");
            Ok(())
        });
    }
}

/// The slot names of the members with a key and of `status.retain_slots`.
fn member_slot_names(cluster: &Cluster) -> BTreeSet<String> {
    cluster
        .members
        .iter()
        .map(|m| patrol_dcs::slot_name_from_member_name(&m.name))
        .chain(cluster.status.retain_slots.iter().cloned())
        .collect()
}
