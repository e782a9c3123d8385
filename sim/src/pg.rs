//! The `LocalPostgres` and `Peers` ports over the simulated world. Each primitive takes
//! simulated time and then does to the simulated PostgreSQL what the real one would:
//! `pg_ctl start` without `standby.signal` makes a primary on the timeline it has, `promote`
//! starts a new timeline, an immediate stop leaves pg_control "in production", pg_basebackup
//! copies a running source, pg_rewind takes the source's WAL history.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use patrol_agent::config::Config;
use patrol_agent::ha::{FailsafeAnswers, LocalPostgres, Peers, StopMode};
use patrol_agent::postgres::{ConfigFiles, ControlData, DataDir, LocalStatus, PgError, SlotState};
use patrol_dcs::ClusterConfig;
use patrol_ha::failsafe::FailsafeLeader;
use patrol_ha::permanent_slots::ExistingSlot;
use patrol_ha::PeerStatus;
use serde_json::{Map, Value};

use crate::world::{lock, Agent, Branch, PgData, Shared, Wal};

/// Waits while the agent process is frozen; never returns for a dead process (its tasks die
/// with it).
pub async fn gate(w: &Shared, i: usize, epoch: u64) {
    loop {
        let (agent, now_epoch) = {
            let w = lock(w);
            (w.nodes[i].agent, w.nodes[i].epoch)
        };
        if now_epoch != epoch {
            std::future::pending::<()>().await;
        }
        match agent {
            Agent::Live => return,
            Agent::Frozen | Agent::Down => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn failed(what: &str, detail: impl Into<String>) -> PgError {
    PgError::Failed {
        what: what.into(),
        detail: detail.into(),
    }
}

/// The node `conninfo` (`host=... port=N ...`) points at.
fn target(w: &crate::world::World, conninfo: &str) -> Option<usize> {
    let port = conninfo
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))?
        .trim_matches('\'')
        .parse()
        .ok()?;
    w.by_port(port)
}

#[derive(Clone)]
pub struct SimPostgres {
    pub w: Shared,
    pub i: usize,
    pub epoch: u64,
}

impl SimPostgres {
    /// One primitive: waits `lo..=hi` ms of simulated time (as the agent process), then applies
    /// `f` to the world unless the process died meanwhile.
    async fn op<T>(
        &self,
        lo: u64,
        hi: u64,
        f: impl FnOnce(&mut crate::world::World, usize) -> T,
    ) -> T {
        gate(&self.w, self.i, self.epoch).await;
        let d = lock(&self.w).rng.range(lo, hi);
        tokio::time::sleep(Duration::from_millis(d)).await;
        gate(&self.w, self.i, self.epoch).await;
        let mut w = lock(&self.w);
        f(&mut w, self.i)
    }

    fn log(w: &mut crate::world::World, i: usize, what: &str) {
        let names = w.names();
        let line = format!("{}: {what} -> {}", names[i], w.nodes[i].pg.describe(&names));
        w.log(line);
    }
}

impl LocalPostgres for SimPostgres {
    fn reconfigured(&self, _cfg: &Arc<Config>) -> Self {
        self.clone()
    }

    fn data_dir_state(&self) -> DataDir {
        let w = lock(&self.w);
        match &w.nodes[self.i].pg.data {
            None => DataDir::Empty,
            Some(d) => {
                let mut fields = std::collections::BTreeMap::new();
                fields.insert(
                    "Latest checkpoint location".to_string(),
                    patrol_dcs::format_lsn(d.wal.pos),
                );
                DataDir::Initialized(ControlData {
                    sysid: d.sysid.clone(),
                    state: d.state.to_string(),
                    timeline: d.wal.timeline(),
                    fields,
                })
            }
        }
    }

    fn is_running(&self) -> bool {
        lock(&self.w).nodes[self.i].pg.running
    }

    fn newest_wal_timeline(&self) -> Option<u64> {
        let w = lock(&self.w);
        w.nodes[self.i].pg.data.as_ref().map(|d| d.wal.timeline())
    }

    fn timeline_history(&self, timeline: u64) -> Option<(String, SystemTime)> {
        let w = lock(&self.w);
        let d = w.nodes[self.i].pg.data.as_ref()?;
        if d.wal.history.is_empty() || d.wal.timeline() != timeline {
            return None;
        }
        let text: String = d
            .wal
            .history
            .iter()
            .map(|(tl, lsn)| {
                format!(
                    "{tl}\t{}\tno recovery target specified\n",
                    patrol_dcs::format_lsn(*lsn)
                )
            })
            .collect();
        Some((
            text,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        ))
    }

    fn write_pgpass(&self) -> Result<(), PgError> {
        Ok(())
    }

    fn write_config(&self, files: &ConfigFiles) -> Result<(), PgError> {
        let mut w = lock(&self.w);
        let recovery = files
            .recovery
            .as_ref()
            .map(|r| r.primary_conninfo.as_deref().and_then(|c| target(&w, c)));
        w.nodes[self.i].pg.recovery = recovery;
        w.nodes[self.i].pg.ssn_file = files
            .parameters
            .get("synchronous_standby_names")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Ok(())
    }

    fn remove_data_dir(&self) -> Result<(), PgError> {
        let mut w = lock(&self.w);
        let pg = &mut w.nodes[self.i].pg;
        if pg.running {
            return Err(failed(
                "removing the data directory",
                "PostgreSQL is running",
            ));
        }
        pg.data = None;
        pg.slots.clear();
        Self::log(&mut w, self.i, "data directory removed");
        Ok(())
    }

    fn remove_copied_log(&self) {}

    fn cmdline_params(&self, _dynamic: &Map<String, Value>) -> Vec<(String, String)> {
        Vec::new()
    }
    fn wanted_parameters(
        &self,
        _files: &ConfigFiles,
        _dynamic: &Map<String, Value>,
    ) -> Vec<(String, String)> {
        Vec::new()
    }

    async fn start(&self, _params: &[(String, String)], _wait: Duration) -> Result<(), PgError> {
        self.op(200, 2_000, |w, i| {
            let branch = w.id();
            // PostgreSQL would do it (end recovery without a new timeline), but the agent must
            // never: new WAL on the old timeline beside what the other members have cannot be
            // told apart by timeline.
            let standby_as_primary = {
                let pg = &w.nodes[i].pg;
                !pg.running
                    && pg.recovery.is_none()
                    && pg
                        .data
                        .as_ref()
                        .is_some_and(|d| d.wal.current().owner != d.instance)
            };
            if standby_as_primary {
                let name = w.nodes[i].name.clone();
                w.fail(&format!(
                    "{name}: a standby's data directory was started as a primary without a promotion"
                ));
            }
            let pg = &mut w.nodes[i].pg;
            if pg.running {
                return Ok(());
            }
            let Some(d) = pg.data.as_mut() else {
                return Err(failed("pg_ctl start", "no data directory"));
            };
            match pg.recovery {
                None => {
                    // A standby's data directory started without `standby.signal` ends
                    // recovery on the timeline it has and writes its own WAL from here.
                    if d.wal.current().owner != d.instance {
                        let timeline = d.wal.timeline();
                        d.wal.branches.push(Branch {
                            id: branch,
                            timeline,
                            start: d.wal.pos,
                            owner: d.instance,
                        });
                    }
                    d.state = "in production";
                    pg.in_recovery = false;
                    pg.upstream = None;
                }
                Some(up) => {
                    d.state = "in archive recovery";
                    pg.in_recovery = true;
                    pg.upstream = up;
                }
            }
            pg.running = true;
            pg.ssn = pg.ssn_file.clone();
            pg.start_id = branch;
            Self::log(w, i, "started");
            Ok(())
        })
        .await
    }

    async fn stop(&self, mode: StopMode, _wait: Duration) -> Result<(), PgError> {
        let (lo, hi) = match mode {
            StopMode::Immediate => (1, 20),
            StopMode::Fast => (50, 500),
        };
        self.op(lo, hi, |w, i| {
            let pg = &mut w.nodes[i].pg;
            if !pg.running {
                return Ok(());
            }
            pg.running = false;
            if mode == StopMode::Fast {
                if let Some(d) = pg.data.as_mut() {
                    d.state = if pg.in_recovery {
                        "shut down in recovery"
                    } else {
                        "shut down"
                    };
                }
            }
            Self::log(w, i, &format!("stopped ({})", mode.as_str()));
            Ok(())
        })
        .await
    }

    async fn reload(&self) -> Result<(), PgError> {
        self.op(1, 50, |w, i| {
            let pg = &mut w.nodes[i].pg;
            if !pg.running {
                return Err(PgError::NotRunning);
            }
            if let (true, Some(up)) = (pg.in_recovery, pg.recovery) {
                pg.upstream = up;
            }
            pg.ssn = pg.ssn_file.clone();
            Ok(())
        })
        .await
    }

    async fn promote(&self, _wait: Duration) -> Result<(), PgError> {
        self.op(100, 1_500, |w, i| {
            let branch = w.id();
            let pg = &mut w.nodes[i].pg;
            if !pg.running {
                return Err(failed("pg_ctl promote", "server is not running"));
            }
            if !pg.in_recovery {
                return Err(failed("pg_ctl promote", "server is not in standby mode"));
            }
            let d = pg.data.as_mut().expect("a running server has data");
            let old = d.wal.timeline();
            d.wal.history.push((old, d.wal.pos));
            d.wal.branches.push(Branch {
                id: branch,
                timeline: old + 1,
                start: d.wal.pos,
                owner: d.instance,
            });
            d.state = "in production";
            pg.in_recovery = false;
            pg.upstream = None;
            w.stats.promotions += 1;
            Self::log(w, i, "promoted");
            Ok(())
        })
        .await
    }

    async fn create_replica(
        &self,
        conninfo: Option<&str>,
        _methods: Option<Vec<String>>,
    ) -> Result<String, PgError> {
        // The simulated members have pg_basebackup only, which needs a source.
        let Some(conninfo) = conninfo.map(str::to_string) else {
            return Err(failed(
                "replica creation",
                "no method works without a leader",
            ));
        };
        self.op(1_000, 5_000, move |w, i| {
            let src = target(w, &conninfo).map(|s| &w.nodes[s].pg);
            let copy = src.filter(|s| s.running).and_then(|s| s.data.clone());
            let instance = w.id();
            let Some(mut d) = copy else {
                return Err(failed("pg_basebackup", "the source is not running"));
            };
            d.instance = instance;
            d.state = "in archive recovery";
            let pg = &mut w.nodes[i].pg;
            pg.data = Some(d);
            pg.running = false;
            w.stats.clones += 1;
            Self::log(w, i, "cloned");
            Ok("basebackup".to_string())
        })
        .await
    }

    async fn archive_shutdown_checkpoint_wal(&self, _command: &str) -> Result<String, PgError> {
        // The simulation runs no standby cluster.
        Err(failed("archive_command", "not simulated"))
    }

    async fn single_user_recovery(&self) -> Result<(), PgError> {
        self.op(100, 1_000, |w, i| {
            if let Some(d) = w.nodes[i].pg.data.as_mut() {
                d.state = "shut down";
            }
            Ok(())
        })
        .await
    }

    async fn rewind(&self, conninfo: &str) -> Result<String, PgError> {
        let conninfo = conninfo.to_string();
        self.op(500, 3_000, move |w, i| {
            let src = target(w, &conninfo)
                .map(|s| &w.nodes[s].pg)
                .filter(|s| s.writable())
                .and_then(|s| s.data.as_ref())
                .map(|d| (d.sysid.clone(), d.wal.clone()));
            let pg = &mut w.nodes[i].pg;
            let Some(d) = pg.data.as_mut() else {
                return Err(failed("pg_rewind", "no data directory"));
            };
            match src {
                Some((sysid, wal)) if sysid == d.sysid => {
                    d.wal = wal;
                    d.state = "in archive recovery";
                    w.stats.rewinds += 1;
                    Self::log(w, i, "rewound");
                    Ok("pg_rewind: Done!".to_string())
                }
                _ => Err(failed("pg_rewind", "the source is not a running primary")),
            }
        })
        .await
    }

    async fn bootstrap(&self, _cfg: Arc<Config>, _dynamic: ClusterConfig) -> anyhow::Result<()> {
        self.op(500, 3_000, |w, i| {
            let instance = w.id();
            let branch = w.id();
            let sysid = format!("{}", 7_000_000_000_000_000_000 + w.rng.below(1 << 60));
            let pg = &mut w.nodes[i].pg;
            pg.data = Some(PgData {
                sysid,
                state: "in production",
                instance,
                wal: Wal {
                    branches: vec![Branch {
                        id: branch,
                        timeline: 1,
                        start: 0,
                        owner: instance,
                    }],
                    pos: 0x0100_0000,
                    history: Vec::new(),
                },
            });
            pg.running = true;
            pg.in_recovery = false;
            pg.upstream = None;
            Self::log(w, i, "bootstrapped");
        })
        .await;
        Ok(())
    }

    async fn status(&self) -> Result<LocalStatus, PgError> {
        self.op(1, 5, |w, i| status_of(w, i)).await
    }

    async fn reset(&self) {}

    async fn checkpoint(&self) -> Result<(), PgError> {
        self.op(10, 500, |_, _| Ok(())).await
    }

    async fn resume_replay(&self) -> Result<(), PgError> {
        Ok(())
    }

    async fn physical_slots(&self) -> Result<Vec<(String, bool)>, PgError> {
        self.op(1, 5, |w, i| {
            let pg = &w.nodes[i].pg;
            if !pg.running {
                return Err(PgError::NotRunning);
            }
            Ok(pg.slots.iter().map(|s| (s.clone(), false)).collect())
        })
        .await
    }

    async fn create_physical_slot(&self, name: &str) -> Result<(), PgError> {
        let name = name.to_string();
        self.op(1, 5, move |w, i| {
            w.nodes[i].pg.slots.insert(name);
            Ok(())
        })
        .await
    }

    async fn drop_physical_slot(&self, name: &str) -> Result<bool, PgError> {
        let name = name.to_string();
        self.op(1, 5, move |w, i| Ok(w.nodes[i].pg.slots.remove(&name)))
            .await
    }

    // Permanent slots are not simulated (the e2e suite runs them on real servers): the
    // simulated servers have member slots only.
    async fn replication_slots(&self) -> Result<Vec<ExistingSlot>, PgError> {
        Ok(self
            .physical_slots()
            .await?
            .into_iter()
            .map(|(name, active)| ExistingSlot {
                name,
                active,
                restart_lsn: Some(1),
                ..Default::default()
            })
            .collect())
    }

    async fn drop_slot(&self, name: &str) -> Result<bool, PgError> {
        self.drop_physical_slot(name).await
    }

    async fn create_logical_slot(&self, _: &str, _: &str, _: &str) -> Result<(), PgError> {
        Ok(())
    }

    async fn advance_physical_slot(&self, _: &str, _: u64) -> Result<(), PgError> {
        Ok(())
    }

    async fn advance_logical_slot(&self, _: &str, _: &str, _: u64) -> Result<(), PgError> {
        Ok(())
    }

    async fn read_member_slots(
        &self,
        _: &str,
        _: u16,
        _: &[String],
    ) -> Result<Vec<SlotState>, PgError> {
        Ok(Vec::new())
    }

    fn install_slot_state(&self, _: &str, _: &[u8]) -> Result<(), PgError> {
        Ok(())
    }
}

/// What the status query of node `i`'s PostgreSQL answers now.
fn status_of(w: &crate::world::World, i: usize) -> Result<LocalStatus, PgError> {
    let pg = &w.nodes[i].pg;
    let d = pg
        .data
        .as_ref()
        .filter(|_| pg.running)
        .ok_or(PgError::NotRunning)?;
    let pos = Some(d.wal.pos);
    let replication = if pg.in_recovery {
        Vec::new()
    } else {
        crate::world::walsenders(w, i)
    };
    Ok(LocalStatus {
        synchronous_standby_names: pg.ssn.clone(),
        synchronous_commit: "on".into(),
        replication,
        in_recovery: pg.in_recovery,
        server_version: 150_000,
        timeline: d.wal.timeline(),
        wal_position: (!pg.in_recovery).then_some(d.wal.pos),
        receive_lsn: pos.filter(|_| pg.in_recovery),
        replay_lsn: pos.filter(|_| pg.in_recovery),
        replication_state: (pg.in_recovery && pg.upstream.is_some())
            .then(|| "streaming".to_string()),
        ..LocalStatus::default()
    })
}

/// The other members' REST APIs: a live agent answers `GET /patroni` from its shared state
/// with a fresh status query, as the agent's handler does, through the agent's own rendering
/// of the answer.
pub struct SimPeers {
    pub w: Shared,
    pub i: usize,
    pub epoch: u64,
}

impl Peers for SimPeers {
    async fn probe(
        &self,
        _cfg: &Arc<Config>,
        members: Vec<(String, String)>,
        _limit: Duration,
    ) -> Vec<PeerStatus> {
        gate(&self.w, self.i, self.epoch).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
        gate(&self.w, self.i, self.epoch).await;
        let w = lock(&self.w);
        let mut out: Vec<PeerStatus> = members
            .iter()
            .filter_map(|(name, _)| {
                let n = &w.nodes[w.index(name)?];
                if n.agent != Agent::Live {
                    return None;
                }
                let mut snap = n.shared.snapshot();
                if snap.status.is_some() || snap.node.state == "running" {
                    if let Ok(fresh) = status_of(&w, w.index(name)?) {
                        snap.status = Some(fresh);
                    }
                }
                let body = patrol_agent::api::status_json(&n.cfg, &snap);
                Some(PeerStatus::from_status(name, &body))
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// As the agent's `POST /failsafe` handler: a live member whose PostgreSQL is not a
    /// primary accepts and records the caller as its leader.
    async fn post_failsafe(
        &self,
        _cfg: &Arc<Config>,
        members: Vec<(String, String)>,
        body: Value,
        _limit: Duration,
    ) -> FailsafeAnswers {
        gate(&self.w, self.i, self.epoch).await;
        tokio::time::sleep(Duration::from_millis(3)).await;
        gate(&self.w, self.i, self.epoch).await;
        let w = lock(&self.w);
        let field = |k: &str| {
            body.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        let refused = members
            .into_iter()
            .filter_map(|(name, _)| {
                let accepted = w.index(&name).is_some_and(|i| {
                    let n = &w.nodes[i];
                    let standby = status_of(&w, i).is_ok_and(|s| s.in_recovery);
                    if n.agent == Agent::Live && standby {
                        n.shared.failsafe_called_by(FailsafeLeader {
                            name: field("name"),
                            conn_url: field("conn_url"),
                            api_url: field("api_url"),
                            slots: Default::default(),
                        });
                        true
                    } else {
                        false
                    }
                });
                (!accepted).then_some(name)
            })
            .collect();
        FailsafeAnswers {
            refused,
            lsn: Default::default(),
        }
    }
}
