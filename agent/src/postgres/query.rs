//! The agent's own connection to its PostgreSQL and the monitoring query.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use super::PgError;

/// What the monitoring query returns (one round trip per HA cycle).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LocalStatus {
    pub in_recovery: bool,
    pub server_version: i32,
    pub timeline: u64,
    /// Primary: current WAL flush position.
    pub wal_position: Option<u64>,
    pub receive_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
    pub replayed_timestamp: Option<String>,
    pub replay_paused: bool,
    /// `streaming` / `in archive recovery` (standby only).
    pub replication_state: Option<String>,
    /// Upstream end position seen by the WAL receiver (`latest_end_lsn`).
    pub latest_end_lsn: Option<u64>,
    pub postmaster_start_time: Option<String>,
    pub replication: Vec<ReplicationRow>,
    /// PostgreSQL flags some setting `pending_restart` (`pg_settings`). Not what the member
    /// publishes: the HA loop's pending restart reason decides (`NodeState`).
    pub pending_restart: bool,
    /// `synchronous_standby_names` in effect.
    pub synchronous_standby_names: String,
    /// `synchronous_commit` in effect (which position a synchronous standby confirms).
    pub synchronous_commit: String,
}

/// One walsender, from `pg_stat_replication`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplicationRow {
    pub usename: String,
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: String,
    pub sync_state: String,
    pub sync_priority: i32,
    pub pid: i32,
    pub write_lsn: Option<u64>,
    pub flush_lsn: Option<u64>,
    pub replay_lsn: Option<u64>,
}

impl ReplicationRow {
    /// The position this standby confirmed as `synchronous_commit` counts it (Patroni's
    /// choice: replay for `remote_apply`, write for `remote_write`, else flush).
    pub fn confirmed_lsn(&self, synchronous_commit: &str) -> Option<u64> {
        match synchronous_commit {
            "remote_apply" => self.replay_lsn,
            "remote_write" => self.write_lsn,
            _ => self.flush_lsn,
        }
    }
}

/// How to reach the local PostgreSQL: the connection settings and the TLS to use over TCP
/// (an error naming the option when the superuser's TLS options cannot be used: every connect
/// then fails with it, rather than falling back to an unencrypted connection).
#[derive(Debug, Clone)]
pub struct LocalConn {
    pub config: tokio_postgres::Config,
    pub tls: Result<super::ClientTls, String>,
}

/// A lazily (re)connected client.
pub struct PgClient {
    pub(super) conn: LocalConn,
    client: Mutex<Option<Client>>,
}

const STATUS_SQL: &str = "SELECT pg_is_in_recovery(), current_setting('server_version_num')::int,
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint END,
  CASE WHEN pg_is_in_recovery() THEN (GREATEST(pg_last_wal_receive_lsn(), r.written_lsn) - '0/0'::pg_lsn)::bigint END,
  CASE WHEN pg_is_in_recovery() THEN (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint END,
  to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00:00',
  CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
  r.status, (r.latest_end_lsn - '0/0'::pg_lsn)::bigint, r.received_tli,
  CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())::bigint
       ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint END,
  to_char(pg_postmaster_start_time() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00:00',
  EXISTS (SELECT 1 FROM pg_settings WHERE pending_restart),
  current_setting('synchronous_standby_names'), current_setting('synchronous_commit')
FROM (SELECT 1) one LEFT JOIN pg_stat_wal_receiver r ON true";

const REPLICATION_SQL: &str =
    "SELECT usename::text, application_name, host(client_addr), state, sync_state, sync_priority,
  pid, (write_lsn - '0/0'::pg_lsn)::bigint, (flush_lsn - '0/0'::pg_lsn)::bigint,
  (replay_lsn - '0/0'::pg_lsn)::bigint
FROM pg_stat_replication ORDER BY application_name";

fn to_u64(v: Option<i64>) -> Option<u64> {
    v.and_then(|n| u64::try_from(n).ok())
}

impl PgClient {
    pub fn new(conn: LocalConn) -> PgClient {
        PgClient {
            conn,
            client: Mutex::new(None),
        }
    }

    pub(super) async fn client(
        &self,
    ) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, PgError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_some_and(|c| c.is_closed()) {
            *guard = None;
        }
        if guard.is_none() {
            *guard = Some(connect(&self.conn).await?);
        }
        Ok(guard)
    }

    /// Drops the cached connection (after a restart).
    pub async fn reset(&self) {
        *self.client.lock().await = None;
    }

    pub async fn status(&self) -> Result<LocalStatus, PgError> {
        let run = async {
            let guard = self.client().await?;
            let c = guard.as_ref().expect("client() fills the slot");
            let row = c.query_one(STATUS_SQL, &[]).await?;
            let rows = c.query(REPLICATION_SQL, &[]).await?;
            Ok::<_, PgError>((row, rows))
        };
        let (row, rows) = match tokio::time::timeout(Duration::from_secs(5), run).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                self.reset().await;
                return Err(e);
            }
            Err(_) => {
                self.reset().await;
                return Err(PgError::Timeout(
                    "status query".into(),
                    Duration::from_secs(5),
                ));
            }
        };
        let in_recovery: bool = row.try_get(0)?;
        let receiver_status: Option<String> = row.try_get(7)?;
        let received_tli: Option<i32> = row.try_get(9)?;
        let checkpoint_tli: Option<i64> = row.try_get(10)?;
        let timeline = if in_recovery {
            received_tli
                .map(|t| t as i64)
                .or(checkpoint_tli)
                .unwrap_or(0)
        } else {
            checkpoint_tli.unwrap_or(0)
        };
        Ok(LocalStatus {
            in_recovery,
            server_version: row.try_get(1)?,
            wal_position: to_u64(row.try_get(2)?),
            receive_lsn: to_u64(row.try_get(3)?),
            replay_lsn: to_u64(row.try_get(4)?),
            replayed_timestamp: row.try_get(5)?,
            replay_paused: row.try_get(6)?,
            replication_state: in_recovery.then(|| {
                if receiver_status.as_deref() == Some("streaming") {
                    "streaming".to_string()
                } else {
                    "in archive recovery".to_string()
                }
            }),
            latest_end_lsn: to_u64(row.try_get(8)?),
            timeline: u64::try_from(timeline).unwrap_or(0),
            postmaster_start_time: row.try_get(11)?,
            pending_restart: row.try_get(12)?,
            synchronous_standby_names: row.try_get(13)?,
            synchronous_commit: row.try_get(14)?,
            replication: rows
                .iter()
                .map(|r| ReplicationRow {
                    usename: r.get::<_, Option<String>>(0).unwrap_or_default(),
                    application_name: r.get::<_, Option<String>>(1).unwrap_or_default(),
                    client_addr: r.get(2),
                    state: r.get::<_, Option<String>>(3).unwrap_or_default(),
                    sync_state: r.get::<_, Option<String>>(4).unwrap_or_default(),
                    sync_priority: r.get::<_, Option<i32>>(5).unwrap_or(0),
                    pid: r.get::<_, Option<i32>>(6).unwrap_or(0),
                    write_lsn: to_u64(r.get(7)),
                    flush_lsn: to_u64(r.get(8)),
                    replay_lsn: to_u64(r.get(9)),
                })
                .collect(),
        })
    }

    /// The restart-only (`postmaster`) parameters among `names` (lower case), and those
    /// PostgreSQL flags `pending_restart`, with the value postgresql.conf now asks for.
    pub async fn restart_settings(
        &self,
        names: &[String],
    ) -> Result<Vec<super::gucs::PgSetting>, PgError> {
        let r = async {
            let guard = self.client().await?;
            let c = guard.as_ref().expect("client() fills the slot");
            let rows = c
                .query(
                    "SELECT s.name::text, pg_catalog.current_setting(s.name)::text, s.setting::text, \
                       s.unit::text, s.vartype::text, s.pending_restart, \
                       (SELECT f.setting FROM pg_catalog.pg_file_settings f WHERE f.name = s.name \
                        ORDER BY f.seqno DESC LIMIT 1)::text \
                     FROM pg_catalog.pg_settings s \
                     WHERE s.context = 'postmaster' AND s.name <> 'hot_standby' \
                       AND (pg_catalog.lower(s.name) = ANY($1) OR s.pending_restart)",
                    &[&names],
                )
                .await?;
            Ok::<_, PgError>(
                rows.iter()
                    .map(|r| super::gucs::PgSetting {
                        name: r.get(0),
                        shown: r.get::<_, Option<String>>(1).unwrap_or_default(),
                        setting: r.get::<_, Option<String>>(2).unwrap_or_default(),
                        unit: r.get(3),
                        vartype: r.get::<_, Option<String>>(4).unwrap_or_default(),
                        pending_restart: r.get::<_, Option<bool>>(5).unwrap_or(false),
                        file_value: r.get(6),
                    })
                    .collect(),
            )
        }
        .await;
        if r.is_err() {
            self.reset().await;
        }
        r
    }

    /// The errors PostgreSQL found in its configuration files at the last reload
    /// (`pg_file_settings.error`, but not "could not be applied": those wait for a restart).
    pub async fn config_file_errors(&self) -> Result<Vec<String>, PgError> {
        let guard = self.client().await?;
        let c = guard.as_ref().expect("client() fills the slot");
        let rows = c
            .query(
                "SELECT coalesce(name, '')::text, coalesce(setting, '')::text, error::text, \
                   coalesce(sourcefile, '')::text, coalesce(sourceline, 0)::int \
                 FROM pg_catalog.pg_file_settings \
                 WHERE error IS NOT NULL AND error <> 'setting could not be applied'",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                format!(
                    "{}={:?} ({}:{}): {}",
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, String>(3),
                    r.get::<_, i32>(4),
                    r.get::<_, String>(2)
                )
            })
            .collect())
    }

    /// Runs statements (no parameters) in one simple-query round trip.
    pub async fn execute(&self, sql: &str) -> Result<(), PgError> {
        let r = async {
            let guard = self.client().await?;
            let c = guard.as_ref().expect("client() fills the slot");
            c.batch_execute(sql).await?;
            Ok::<_, PgError>(())
        }
        .await;
        if r.is_err() {
            self.reset().await;
        }
        r
    }

    /// Runs `sql` (statements holding secrets, e.g. `ALTER ROLE ... PASSWORD`) with the
    /// server's statement logging off for this session, as Patroni does: `log_statement: all`,
    /// `log_min_duration_statement`, a failing statement, pg_stat_statements and pgaudit would
    /// otherwise write the password to the server log. The settings go in a query of their own
    /// first (a multi-statement query is logged whole before any of it runs), on the same
    /// connection, and are reset afterwards.
    pub async fn execute_unlogged(&self, sql: &str) -> Result<(), PgError> {
        const QUIET: &str = "SET log_statement TO none; SET log_min_duration_statement TO -1; \
            SET log_min_duration_sample TO -1; SET log_transaction_sample_rate TO 0; \
            SET log_min_error_statement TO panic; SET debug_print_parse TO off; \
            SET debug_print_rewritten TO off; SET debug_print_plan TO off; \
            SET pg_stat_statements.track_utility TO off; SET pgaudit.log TO none";
        const LOUD: &str = "RESET log_statement; RESET log_min_duration_statement; \
            RESET log_min_duration_sample; RESET log_transaction_sample_rate; \
            RESET log_min_error_statement; RESET debug_print_parse; RESET debug_print_rewritten; \
            RESET debug_print_plan; RESET pg_stat_statements.track_utility; RESET pgaudit.log";
        let r = async {
            let guard = self.client().await?;
            let c = guard.as_ref().expect("client() fills the slot");
            c.batch_execute(QUIET).await?;
            let r = c.batch_execute(sql).await;
            let reset = c.batch_execute(LOUD).await;
            r?;
            reset?;
            Ok::<_, PgError>(())
        }
        .await;
        if r.is_err() {
            self.reset().await;
        }
        r
    }

    /// The physical replication slots that exist, each with whether something streams from it.
    pub async fn physical_slots(&self) -> Result<Vec<(String, bool)>, PgError> {
        let guard = self.client().await?;
        let c = guard.as_ref().expect("client() fills the slot");
        let rows = c
            .query(
                "SELECT slot_name::text, active FROM pg_replication_slots WHERE slot_type = 'physical'",
                &[],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Drops a physical slot unless something streams from it; `false` if it was not dropped.
    pub async fn drop_physical_slot(&self, name: &str) -> Result<bool, PgError> {
        let guard = self.client().await?;
        let c = guard.as_ref().expect("client() fills the slot");
        let rows = c
            .query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND slot_type = 'physical' AND NOT active",
                &[&name],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    /// Creates a physical slot that reserves WAL at once (as Patroni does: a slot without a
    /// `restart_lsn` could not be advanced).
    pub async fn create_physical_slot(&self, name: &str) -> Result<(), PgError> {
        let guard = self.client().await?;
        let c = guard.as_ref().expect("client() fills the slot");
        c.execute(
            "SELECT pg_create_physical_replication_slot($1, true) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&name],
        )
        .await?;
        Ok(())
    }

    /// Resumes WAL replay if it is paused (before a promotion, so nothing received is lost).
    pub async fn resume_replay(&self) -> Result<(), PgError> {
        self.execute(
            "SELECT pg_wal_replay_resume() WHERE pg_is_in_recovery() AND pg_is_wal_replay_paused()",
        )
        .await
    }

    /// `CHECKPOINT` (after promote, before rewind by peers).
    pub async fn checkpoint(&self) -> Result<(), PgError> {
        self.execute("CHECKPOINT").await
    }
}

/// A new connection with `conn`'s settings (its connection task spawned).
pub(super) async fn connect(conn: &LocalConn) -> Result<Client, PgError> {
    let tls = conn.tls.as_ref().map_err(|e| PgError::Tls(e.clone()))?;
    let client = match &tls.connector {
        Some(connector) => {
            let (client, c) = conn.config.connect(connector.clone()).await?;
            tokio::spawn(async move {
                if let Err(e) = c.await {
                    tracing::debug!("PostgreSQL connection ended: {e}");
                }
            });
            client
        }
        None => {
            let (client, c) = conn.config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = c.await {
                    tracing::debug!("PostgreSQL connection ended: {e}");
                }
            });
            client
        }
    };
    Ok(client)
}

/// Quotes an identifier for SQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}
