//! `patrolctl`: patronictl's commands over the same DCS and REST API. Rendering is pure (these
//! modules); `client` is the thin IO layer (REST calls, prompts) and the binary in
//! `src/bin/patrolctl.rs` runs the commands.

pub mod client;
pub mod config_edit;
pub mod difflib;
pub mod list;
pub mod members;
pub mod pyfmt;
pub mod table;
pub mod time;

/// `patrolctl`'s subcommands, in the order of its `--help`: patronictl 4.1's commands, its older
/// `configure` and `scaffold`, and `haproxy-config` and `completion` of our own. A test of the
/// binary checks this list against its clap definition, and the compatibility document's test
/// checks that `docs/patroni-compatibility.md` describes each.
pub const COMMANDS: &[&str] = &[
    "list",
    "topology",
    "switchover",
    "failover",
    "restart",
    "reinit",
    "reload",
    "pause",
    "resume",
    "edit-config",
    "show-config",
    "history",
    "flush",
    "dsn",
    "query",
    "remove",
    "haproxy-config",
    "version",
    "demote-cluster",
    "promote-cluster",
    "configure",
    "scaffold",
    "completion",
];

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
