//! Failures of local PostgreSQL operations.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("could not run {0}: {1}")]
    Spawn(String, #[source] std::io::Error),
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("{0} did not finish within {1:?}")]
    Timeout(String, Duration),
    #[error("PostgreSQL is not running")]
    NotRunning,
    #[error("query failed: {}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error("TLS for the connection to the local PostgreSQL: {0}")]
    Tls(String),
    #[error(transparent)]
    Io(std::io::Error),
}

impl PgError {
    /// The server's SQLSTATE, when the server answered with an error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Query(e) => e.code().map(|c| c.code()),
            _ => None,
        }
    }
}

/// tokio-postgres prints only "db error"; include the server's message.
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => match std::error::Error::source(e) {
            Some(src) => format!("{e}: {src}"),
            None => e.to_string(),
        },
    }
}
