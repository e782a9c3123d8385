//! Creating a replica's data directory, as Patroni's `create_replica`: the methods of
//! `create_replica_methods` in order until one succeeds, `basebackup` (pg_basebackup, tried
//! twice) built in, any other one a user's command (a restore from pgBackRest, WAL-G, a copy of
//! a base backup) run with Patroni's arguments.
//!
//! Dangerous part: a method that fails leaves a partial data directory, which is removed unless
//! the method says `keep_data`.

use std::time::Duration;

use tokio::process::Command;

use super::{DataDir, PgError, Postgres};
use crate::config::ReplicaMethod;

/// How long one method may run (a restore of a large backup takes hours).
const METHOD_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// How many times pg_basebackup is tried, and the pause between tries (Patroni's).
const BASEBACKUP_TRIES: usize = 2;
const BASEBACKUP_PAUSE: Duration = Duration::from_secs(5);

impl Postgres {
    /// Creates the data directory with the first method of `create_replica_methods` that
    /// succeeds (only `basebackup` when `basebackup_only`: `POST /reinitialize` with
    /// `from_leader`), from `conninfo` (the source's replication connection, without the
    /// password: it is in the passfile). Without a source only the methods marked `no_leader`
    /// are tried. Returns the name of the method that worked.
    pub async fn create_replica(
        &self,
        conninfo: Option<&str>,
        methods: Option<Vec<String>>,
    ) -> Result<String, PgError> {
        let configured = methods.unwrap_or_else(|| self.cfg.create_replica_methods.clone());
        let methods: Vec<String> = configured
            .into_iter()
            .filter(|m| conninfo.is_some() || self.replica_method(m).is_some_and(|r| r.no_leader))
            .collect();
        if methods.is_empty() {
            return Err(PgError::Failed {
                what: "replica creation".into(),
                detail: "no replica creation method can work without a leader (none has no_leader)"
                    .into(),
            });
        }
        self.write_pgpass()?;
        let mut failures = Vec::new();
        for name in &methods {
            let r = match (name.as_str(), conninfo) {
                ("basebackup", Some(c)) => self.basebackup_tries(c).await,
                _ => match self.replica_method(name) {
                    Some(m) => self.run_replica_method(m, conninfo.unwrap_or("")).await,
                    None => Err(PgError::Failed {
                        what: name.clone(),
                        detail: "not a replica creation method".into(),
                    }),
                },
            };
            match r {
                Ok(()) => {
                    tracing::info!("replica has been created using {name}");
                    // A trigger file in the copy would promote the new standby at once.
                    let _ = std::fs::remove_file(self.data_dir.join("promote"));
                    return Ok(name.clone());
                }
                Err(e) => {
                    tracing::error!("Error creating replica using method {name}: {e}");
                    failures.push(format!("{name}: {e}"));
                }
            }
        }
        Err(PgError::Failed {
            what: "replica creation".into(),
            detail: format!("every method failed: {}", failures.join("; ")),
        })
    }

    fn replica_method(&self, name: &str) -> Option<&ReplicaMethod> {
        self.cfg.replica_methods.get(name)
    }

    fn data_dir_is_empty(&self) -> bool {
        matches!(self.data_dir_state(), DataDir::Empty)
    }

    /// pg_basebackup, a second time after a pause if it fails; the directory is emptied
    /// before each try and after the last failure.
    async fn basebackup_tries(&self, conninfo: &str) -> Result<(), PgError> {
        let mut last = None;
        for attempt in 1..=BASEBACKUP_TRIES {
            if !self.data_dir_is_empty() {
                self.remove_data_dir()?;
            }
            match self.basebackup(conninfo).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    if attempt < BASEBACKUP_TRIES {
                        tracing::warn!(
                            "pg_basebackup failed ({e}); trying again in {} seconds",
                            BASEBACKUP_PAUSE.as_secs()
                        );
                        tokio::time::sleep(BASEBACKUP_PAUSE).await;
                    }
                    last = Some(e);
                }
            }
        }
        if !self.data_dir_is_empty() {
            self.remove_data_dir()?;
        }
        Err(last.expect("at least one try"))
    }

    /// A user's method: its command with Patroni's arguments, `PGPASSFILE` naming the passfile,
    /// from the agent's working directory (relative paths mean what they mean to Patroni).
    async fn run_replica_method(&self, m: &ReplicaMethod, connstring: &str) -> Result<(), PgError> {
        if !self.data_dir_is_empty() {
            if m.keep_data {
                tracing::info!(
                    "leaving the data directory uncleaned for {} (keep_data)",
                    m.name
                );
            } else {
                self.remove_data_dir()?;
            }
        }
        let datadir = self.data_dir.display().to_string();
        let (prog, first) = m
            .command
            .split_first()
            .expect("a method's command is never empty (config)");
        let mut cmd = Command::new(prog);
        cmd.args(first)
            .args(m.args(&self.scope, &datadir, connstring))
            .env("PGPASSFILE", &self.cfg.pgpass);
        tracing::info!(
            "creating the replica with {}: {}",
            m.name,
            m.command.join(" ")
        );
        let r = self
            .run(
                &format!("replica method {}", m.name),
                &mut cmd,
                METHOD_LIMIT,
            )
            .await
            .map(|_| ());
        if r.is_err() && !m.keep_data && !self.data_dir_is_empty() {
            self.remove_data_dir()?;
        }
        r
    }
}
