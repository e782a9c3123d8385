//! The ports of the HA loop: besides the DCS ([`patrol_dcs::Dcs`]), the local PostgreSQL
//! ([`LocalPostgres`]) and the other members' REST APIs ([`Peers`]). The agent plugs in the
//! real ones ([`Local`], [`HttpPeers`]); the simulation (`agent/tests/simulation`) plugs in an
//! in-memory DCS and simulated PostgreSQL servers and runs the same loop.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use patrol_dcs::ClusterConfig;
use patrol_ha::PeerStatus;
use serde_json::{Map, Value};

use crate::config::Config;
use crate::postgres::{ConfigFiles, DataDir, LocalStatus, PgClient, PgError, Postgres};

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
    /// Creates the data directory of a replica with `create_replica_methods` from `conninfo`
    /// (`None`: without a leader, the `no_leader` methods only; `basebackup_only`: as
    /// `POST /reinitialize` with `from_leader`); the name of the method that worked.
    fn create_replica(
        &self,
        conninfo: Option<&str>,
        basebackup_only: bool,
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
        basebackup_only: bool,
    ) -> Result<String, PgError> {
        self.pg.create_replica(conninfo, basebackup_only).await
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
}
