//! `patrolctl`: patronictl 4.1's commands (and its older `configure`/`scaffold`) against a
//! Patrol (or Patroni) cluster: the DCS is read and written directly, members are driven
//! through their REST API (`api_url` in their member keys). Texts, prompts and exit codes
//! follow patronictl.
//!
//! [`cli`] is the command line, `cmd` runs each command group, `context` loads the
//! configuration. Rendering is pure (`list`, `table`, `pyfmt`, `config_edit`, `difflib`,
//! `members`, `time`); `client` is the thin IO layer (REST calls, prompts) and `term` the
//! terminal.
#![forbid(unsafe_code)]

pub mod cli;
mod client;
mod cmd;
mod config_edit;
mod context;
mod difflib;
mod error;
mod list;
mod members;
mod pyfmt;
mod table;
mod term;
mod time;

pub use cli::{Args, COMMANDS};
pub use client::Aborted;
pub use cmd::run;
pub use error::CtlError;

#[cfg(test)]
pub(crate) mod testutil {
    use patrol_dcs::{Cluster, Kv};

    /// A cluster from a JSON object of relative key -> value (as stored in etcd).
    pub fn cluster_from(keys: &str) -> Cluster {
        let m: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(keys).expect("test keys are a JSON object");
        let kvs: Vec<Kv> = m
            .into_iter()
            .enumerate()
            .map(|(i, (k, v))| Kv {
                key: k,
                value: match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                },
                mod_revision: i as i64 + 1,
                lease: 0,
            })
            .collect();
        Cluster::from_kvs(100, &kvs)
    }
}
