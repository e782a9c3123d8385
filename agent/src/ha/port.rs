//! The ports of the HA loop: besides the DCS ([`patrol_dcs::Dcs`]), the local PostgreSQL
//! ([`LocalPostgres`]) and the other members' REST APIs ([`Peers`]). The agent plugs in the
//! real ones ([`Local`], [`HttpPeers`]); the simulation (crate `patrol-sim`) plugs in an
//! in-memory DCS and simulated PostgreSQL servers and runs the same loop, and its fleet
//! benchmark the real etcd client beside simulated PostgreSQL servers.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use patrol_dcs::ClusterConfig;
use patrol_ha::PeerStatus;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::postgres::gucs::PgSetting;
use crate::postgres::{ConfigFiles, DataDir, LocalStatus, PgClient, PgError, Postgres, SlotState};
use patrol_ha::permanent_slots::ExistingSlot;

/// How PostgreSQL is stopped (`pg_ctl stop -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Clients disconnected, a shutdown checkpoint (sent to standbys) written.
    Fast,
    /// At once, no checkpoint: crash recovery at the next start.
    Immediate,
}

impl StopMode {
    pub fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// The local PostgreSQL as the HA loop drives it: what it observes and the primitives its
/// actions are made of. Cheap to clone (long operations run on clones in their own tasks).
pub trait LocalPostgres: Clone + Send + Sync + 'static {
    /// The same server under a reloaded local configuration.
    fn reconfigured(&self, cfg: &Arc<Config>) -> Self;
    fn data_dir_state(&self) -> DataDir;
    /// The postmaster of our data directory is alive.
    fn is_running(&self) -> bool;
    /// The highest timeline of the WAL files in `pg_wal`.
    fn newest_wal_timeline(&self) -> Option<u64>;
    /// `pg_wal/<timeline>.history` and its modification time.
    fn timeline_history(&self, timeline: u64) -> Option<(String, SystemTime)>;
    fn write_pgpass(&self) -> Result<(), PgError>;
    fn write_config(&self, files: &ConfigFiles) -> Result<(), PgError>;
    fn remove_data_dir(&self) -> Result<(), PgError>;
    /// Removes the server log a clone copied from its source.
    fn remove_copied_log(&self);
    /// The parameters passed on the command line at start.
    fn cmdline_params(&self, dynamic: &Map<String, Value>) -> Vec<(String, String)>;
    /// Every parameter PostgreSQL is asked to run with, as text: `files`' parameters as they
    /// are written, then the command line's (which win).
    fn wanted_parameters(
        &self,
        files: &ConfigFiles,
        dynamic: &Map<String, Value>,
    ) -> Vec<(String, String)>;
    /// Restart-only settings among `names` and those PostgreSQL flags `pending_restart`
    /// (the simulation has none).
    fn restart_settings(
        &self,
        names: &[String],
    ) -> impl Future<Output = Result<Vec<PgSetting>, PgError>> + Send {
        let _ = names;
        async { Ok(Vec::new()) }
    }
    /// The errors PostgreSQL found in its configuration files at the last reload.
    fn config_file_errors(&self) -> impl Future<Output = Result<Vec<String>, PgError>> + Send {
        async { Ok(Vec::new()) }
    }
    fn start(
        &self,
        params: &[(String, String)],
        wait: Duration,
    ) -> impl Future<Output = Result<(), PgError>> + Send;
    fn stop(
        &self,
        mode: StopMode,
        wait: Duration,
    ) -> impl Future<Output = Result<(), PgError>> + Send;
    fn reload(&self) -> impl Future<Output = Result<(), PgError>> + Send;
    fn promote(&self, wait: Duration) -> impl Future<Output = Result<(), PgError>> + Send;
    /// Creates the data directory of a replica with `create_replica_methods` (or `methods`
    /// instead: `basebackup` alone for `POST /reinitialize` with `from_leader`, a standby
    /// cluster's own list) from `conninfo` (`None`: without a leader, the `no_leader` methods
    /// only); the name of the method that worked.
    fn create_replica(
        &self,
        conninfo: Option<&str>,
        methods: Option<Vec<String>>,
    ) -> impl Future<Output = Result<String, PgError>> + Send;
    /// Runs `archive_command` for the WAL segment of the stopped data directory's last
    /// checkpoint (row SC-2); the segment's name.
    fn archive_shutdown_checkpoint_wal(
        &self,
        archive_command: &str,
    ) -> impl Future<Output = Result<String, PgError>> + Send;
    /// Crash recovery in single-user mode (before `pg_rewind` of an unclean directory).
    fn single_user_recovery(&self) -> impl Future<Output = Result<(), PgError>> + Send;
    /// `pg_rewind` from `conninfo`; its output.
    fn rewind(&self, conninfo: &str) -> impl Future<Output = Result<String, PgError>> + Send;
    /// Flow ② 1.5: initdb (or the custom bootstrap method), pg_hba, configuration, start as
    /// primary, roles, `post_bootstrap`.
    fn bootstrap(
        &self,
        cfg: Arc<Config>,
        dynamic: ClusterConfig,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// The monitoring query.
    fn status(&self) -> impl Future<Output = Result<LocalStatus, PgError>> + Send;
    /// Drops the cached connection (after a restart).
    fn reset(&self) -> impl Future<Output = ()> + Send;
    fn checkpoint(&self) -> impl Future<Output = Result<(), PgError>> + Send;
    fn resume_replay(&self) -> impl Future<Output = Result<(), PgError>> + Send;
    /// Physical replication slots: name, active.
    fn physical_slots(&self) -> impl Future<Output = Result<Vec<(String, bool)>, PgError>> + Send;
    fn create_physical_slot(&self, name: &str) -> impl Future<Output = Result<(), PgError>> + Send;
    /// `false` when it did not exist.
    fn drop_physical_slot(&self, name: &str) -> impl Future<Output = Result<bool, PgError>> + Send;
    /// Every (non-temporary) replication slot, physical and logical.
    fn replication_slots(&self) -> impl Future<Output = Result<Vec<ExistingSlot>, PgError>> + Send;
    /// Drops a slot of any type unless it is in use; `false` when it was not dropped.
    fn drop_slot(&self, name: &str) -> impl Future<Output = Result<bool, PgError>> + Send;
    fn create_logical_slot(
        &self,
        database: &str,
        name: &str,
        plugin: &str,
    ) -> impl Future<Output = Result<(), PgError>> + Send;
    fn advance_physical_slot(
        &self,
        name: &str,
        lsn: u64,
    ) -> impl Future<Output = Result<(), PgError>> + Send;
    fn advance_logical_slot(
        &self,
        database: &str,
        name: &str,
        lsn: u64,
    ) -> impl Future<Output = Result<(), PgError>> + Send;
    /// The state files of the logical slots `names` on the primary at `host:port`.
    fn read_member_slots(
        &self,
        host: &str,
        port: u16,
        names: &[String],
    ) -> impl Future<Output = Result<Vec<SlotState>, PgError>> + Send;
    /// Puts a slot's state file in the (stopped) data directory.
    fn install_slot_state(&self, name: &str, data: &[u8]) -> Result<(), PgError>;
}

/// The other members' REST APIs, asked during the leader race.
pub trait Peers: Send + Sync + 'static {
    /// Asks each `(name, api_url)` for `GET /patroni`, in parallel, within `limit`;
    /// unreachable members are left out.
    fn probe(
        &self,
        cfg: &Arc<Config>,
        members: Vec<(String, String)>,
        limit: Duration,
    ) -> impl Future<Output = Vec<PeerStatus>> + Send;
    /// Failsafe mode (row D-2F): `POST /failsafe` with `body` to each `(name, api_url)`, in
    /// parallel, within `limit`.
    fn post_failsafe(
        &self,
        cfg: &Arc<Config>,
        members: Vec<(String, String)>,
        body: Value,
        limit: Duration,
    ) -> impl Future<Output = FailsafeAnswers> + Send;
}

/// What the members asked in a failsafe round answered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FailsafeAnswers {
    /// Those that did not answer 200 `Accepted`.
    pub refused: Vec<String>,
    /// The received/replayed position each accepting standby sent in its `lsn` header (the
    /// leader advances its copies of cascading members' slots to them while etcd is away).
    pub lsn: std::collections::BTreeMap<String, u64>,
}

/// The real local PostgreSQL: its binaries and data directory, and a connection to it.
#[derive(Clone)]
pub struct Local {
    pub pg: Postgres,
    pub client: Arc<PgClient>,
}

impl Local {
    pub fn new(cfg: &Config) -> Local {
        let pg = Postgres::new(cfg);
        let client = Arc::new(PgClient::new(pg.local_conn_config()));
        Local { pg, client }
    }
}

impl LocalPostgres for Local {
    fn reconfigured(&self, cfg: &Arc<Config>) -> Self {
        Local::new(cfg)
    }
    fn data_dir_state(&self) -> DataDir {
        self.pg.data_dir_state()
    }
    fn is_running(&self) -> bool {
        self.pg.is_running()
    }
    fn newest_wal_timeline(&self) -> Option<u64> {
        self.pg.newest_wal_timeline()
    }
    fn timeline_history(&self, timeline: u64) -> Option<(String, SystemTime)> {
        self.pg.timeline_history(timeline)
    }
    fn write_pgpass(&self) -> Result<(), PgError> {
        self.pg.write_pgpass()
    }
    fn write_config(&self, files: &ConfigFiles) -> Result<(), PgError> {
        self.pg.write_config(files)
    }
    fn remove_data_dir(&self) -> Result<(), PgError> {
        self.pg.remove_data_dir()
    }
    fn remove_copied_log(&self) {
        let _ = std::fs::remove_file(self.pg.log_file());
    }
    fn cmdline_params(&self, dynamic: &Map<String, Value>) -> Vec<(String, String)> {
        self.pg.cmdline_params(dynamic)
    }
    fn wanted_parameters(
        &self,
        files: &ConfigFiles,
        dynamic: &Map<String, Value>,
    ) -> Vec<(String, String)> {
        let mut out = self.pg.file_parameters(files);
        out.extend(self.pg.cmdline_params(dynamic));
        out
    }
    async fn restart_settings(&self, names: &[String]) -> Result<Vec<PgSetting>, PgError> {
        self.client.restart_settings(names).await
    }
    async fn config_file_errors(&self) -> Result<Vec<String>, PgError> {
        self.client.config_file_errors().await
    }
    async fn start(&self, params: &[(String, String)], wait: Duration) -> Result<(), PgError> {
        self.pg.start(params, wait).await
    }
    async fn stop(&self, mode: StopMode, wait: Duration) -> Result<(), PgError> {
        self.pg.stop(mode.as_str(), wait).await
    }
    async fn reload(&self) -> Result<(), PgError> {
        self.pg.reload().await
    }
    async fn promote(&self, wait: Duration) -> Result<(), PgError> {
        self.pg.promote(wait).await
    }
    async fn create_replica(
        &self,
        conninfo: Option<&str>,
        methods: Option<Vec<String>>,
    ) -> Result<String, PgError> {
        self.pg.create_replica(conninfo, methods).await
    }
    async fn archive_shutdown_checkpoint_wal(
        &self,
        archive_command: &str,
    ) -> Result<String, PgError> {
        self.pg
            .archive_shutdown_checkpoint_wal(archive_command)
            .await
    }
    async fn single_user_recovery(&self) -> Result<(), PgError> {
        self.pg.single_user_recovery().await
    }
    async fn rewind(&self, conninfo: &str) -> Result<String, PgError> {
        self.pg.rewind(conninfo).await
    }
    async fn bootstrap(&self, cfg: Arc<Config>, dynamic: ClusterConfig) -> anyhow::Result<()> {
        crate::postgres::bootstrap::bootstrap(&self.pg, &self.client, &cfg, &dynamic).await
    }
    async fn status(&self) -> Result<LocalStatus, PgError> {
        self.client.status().await
    }
    async fn reset(&self) {
        self.client.reset().await
    }
    async fn checkpoint(&self) -> Result<(), PgError> {
        self.client.checkpoint().await
    }
    async fn resume_replay(&self) -> Result<(), PgError> {
        self.client.resume_replay().await
    }
    async fn physical_slots(&self) -> Result<Vec<(String, bool)>, PgError> {
        self.client.physical_slots().await
    }
    async fn create_physical_slot(&self, name: &str) -> Result<(), PgError> {
        self.client.create_physical_slot(name).await
    }
    async fn drop_physical_slot(&self, name: &str) -> Result<bool, PgError> {
        self.client.drop_physical_slot(name).await
    }
    async fn replication_slots(&self) -> Result<Vec<ExistingSlot>, PgError> {
        self.client.replication_slots().await
    }
    async fn drop_slot(&self, name: &str) -> Result<bool, PgError> {
        self.client.drop_slot(name).await
    }
    async fn create_logical_slot(
        &self,
        database: &str,
        name: &str,
        plugin: &str,
    ) -> Result<(), PgError> {
        self.client
            .create_logical_slot(database, name, plugin)
            .await
    }
    async fn advance_physical_slot(&self, name: &str, lsn: u64) -> Result<(), PgError> {
        self.client.advance_physical_slot(name, lsn).await
    }
    async fn advance_logical_slot(
        &self,
        database: &str,
        name: &str,
        lsn: u64,
    ) -> Result<(), PgError> {
        self.client.advance_logical_slot(database, name, lsn).await
    }
    async fn read_member_slots(
        &self,
        host: &str,
        port: u16,
        names: &[String],
    ) -> Result<Vec<SlotState>, PgError> {
        crate::postgres::read_slot_states(&self.pg.member_conn_config(host, port), names).await
    }
    fn install_slot_state(&self, name: &str, data: &[u8]) -> Result<(), PgError> {
        crate::postgres::install_slot_state(&self.pg.data_dir, name, data).map_err(PgError::Io)
    }
}

/// The real peers: HTTP(S) `GET /patroni` with the member client of [`crate::peer`].
pub struct HttpPeers;

impl Peers for HttpPeers {
    async fn probe(
        &self,
        cfg: &Arc<Config>,
        members: Vec<(String, String)>,
        limit: Duration,
    ) -> Vec<PeerStatus> {
        let client = crate::peer::member_client(cfg, limit);
        let mut set = tokio::task::JoinSet::new();
        for (name, url) in members {
            let client = client.clone();
            set.spawn(async move {
                let body: Value = client.get(&url).send().await.ok()?.json().await.ok()?;
                Some(PeerStatus::from_status(&name, &body))
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

    async fn post_failsafe(
        &self,
        cfg: &Arc<Config>,
        members: Vec<(String, String)>,
        body: Value,
        limit: Duration,
    ) -> FailsafeAnswers {
        let client = crate::peer::member_client(cfg, limit);
        let auth = cfg
            .ctl
            .authentication
            .clone()
            .or_else(|| cfg.restapi.authentication.clone());
        // Whoever is not positively accepted counts as refused (a failed task too).
        let mut refused: std::collections::BTreeSet<String> =
            members.iter().map(|(n, _)| n.clone()).collect();
        let mut set = tokio::task::JoinSet::new();
        for (name, url) in members {
            let client = client.clone();
            let body = body.clone();
            let auth = auth.clone();
            set.spawn(async move {
                let accepted = async {
                    let mut url = reqwest::Url::parse(&url).ok()?;
                    url.set_path("/failsafe");
                    let mut req = client.post(url).json(&body);
                    if let Some(a) = &auth {
                        req = req.basic_auth(&a.username, Some(&a.password));
                    }
                    let resp = req.send().await.ok()?;
                    let ok = resp.status() == reqwest::StatusCode::OK;
                    let lsn = resp
                        .headers()
                        .get("lsn")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    let text = resp.text().await.ok()?;
                    if !ok || text != "Accepted" {
                        tracing::warn!("POST /failsafe to {name}: {text:?}");
                    }
                    Some((ok && text == "Accepted", lsn))
                }
                .await;
                if accepted.is_none() {
                    tracing::warn!("POST /failsafe to {name} ({url}) failed");
                }
                (name, accepted)
            });
        }
        let mut out = FailsafeAnswers::default();
        while let Some(r) = set.join_next().await {
            if let Ok((name, Some((true, lsn)))) = r {
                refused.remove(&name);
                if let Some(lsn) = lsn {
                    out.lsn.insert(name, lsn);
                }
            }
        }
        out.refused = refused.into_iter().collect();
        out
    }
}
