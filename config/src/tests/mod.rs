//! Tests of the configuration loader: the seed's example, a Patroni `postgres0.yml`, every
//! environment family, directory sources, validation messages, and garbage input. This module
//! holds the example documents and the helpers; one module per area.

mod env;
mod examples;
mod fields;
mod garbage;
mod generate;
mod sources;
mod unsupported;
mod validation;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::*;

/// The seed's example configuration (seed file lines 285-330), unchanged.
const SEED: &str = r#"scope: batman
namespace: /service/
name: postgresql3
restapi:
  listen: 192.168.137.108:8008
  connect_address: 192.168.137.108:8008
etcd:
  host: 192.168.137.108:2379
bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
  pg_hba:
    - host replication replicator 192.168.137.0/24 md5
    - host all all 0.0.0.0/0 md5
postgresql:
  listen: 192.168.137.108:5432
  connect_address: 192.168.137.108:5432
  data_dir: /home/postgres/data
  bin_dir: /home/postgres/bin
  pgpass: /tmp/pgpass
  authentication:
    replication:
      username: replicator
      password: zalando
    superuser:
      username: postgres
      password: zalando
    rewind:
      username: rewind
      password: zalando
  parameters:
    unix_socket_directories: '.'
    wal_level: hot_standby
    max_wal_senders: 10
    max_replication_slots: 10
  basebackup:
    - max-rate: 100M
"#;

/// In the style of Patroni's `postgres0.yml`, with etcd3.
const POSTGRES0: &str = r#"scope: batman
namespace: /service/
name: postgresql0

restapi:
  listen: 127.0.0.1:8008
  connect_address: 127.0.0.1:8008
  authentication:
    username: username
    password: password

ctl:
  insecure: false

etcd3:
  host: 127.0.0.1:2379

bootstrap:
  dcs:
    ttl: 30
    loop_wait: 10
    retry_timeout: 10
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      pg_hba:
      - host replication replicator 127.0.0.1/32 md5
      - host all all 0.0.0.0/0 md5
      parameters:
        wal_level: hot_standby
        hot_standby: "on"
        max_connections: 100
        max_worker_processes: 8
        wal_keep_segments: 8
        max_wal_senders: 10
        max_replication_slots: 10
        max_prepared_transactions: 0
        max_locks_per_transaction: 64
        wal_log_hints: "on"
        track_commit_timestamp: "off"
        archive_mode: "on"
        archive_timeout: 1800s
        archive_command: mkdir -p ../wal_archive && test ! -f ../wal_archive/%f && cp %p ../wal_archive/%f
      recovery_conf:
        restore_command: cp ../wal_archive/%f %p

  initdb:
  - encoding: UTF8
  - data-checksums

  pg_hba:
  - host replication replicator 127.0.0.1/32 md5
  - host all all 0.0.0.0/0 md5

postgresql:
  listen: 127.0.0.1:5432
  connect_address: 127.0.0.1:5432
  data_dir: data/postgresql0
  pgpass: /tmp/pgpass0
  authentication:
    replication:
      username: replicator
      password: rep-pass
    superuser:
      username: postgres
      password: zalando
    rewind:
      username: rewind_user
      password: rewind_password
  parameters:
    unix_socket_directories: '..'

tags:
    nofailover: false
    noloadbalance: false
    clonefrom: false
    nosync: false
"#;

/// The smallest valid configuration, for tests that add one thing to it.
const MINIMAL: &str = r#"name: m1
scope: s
restapi:
  listen: 127.0.0.1:8008
etcd3:
  host: 127.0.0.1:2379
postgresql:
  listen: 127.0.0.1:5432
  data_dir: /data
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
"#;

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn no_env() -> BTreeMap<String, String> {
    env(&[("HOME", "/home/tester")])
}

/// Load `yaml` from a temporary file with the environment `pairs`.
fn load_yaml(yaml: &str, pairs: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("patroni.yml");
    std::fs::write(&path, yaml).expect("write config");
    load(ConfigSource::File(&path), &env(pairs))
}

fn load_ok(yaml: &str, pairs: &[(&str, &str)]) -> Loaded {
    match load_yaml(yaml, pairs) {
        Ok(l) => l,
        Err(e) => panic!("expected the configuration to load, got: {e}"),
    }
}

fn load_err(yaml: &str, pairs: &[(&str, &str)]) -> String {
    match load_yaml(yaml, pairs) {
        Ok(l) => panic!("expected an error, loaded {:?}", l.config),
        Err(e) => e.to_string(),
    }
}

/// `MINIMAL` with `path` (dotted) set to the YAML value `value` (`~` deletes the key).
fn minimal_with(path: &str, value: &str) -> String {
    let mut doc: Value = serde_yaml_ng::from_str(MINIMAL).expect("MINIMAL parses");
    let value: Value = serde_yaml_ng::from_str(value).expect("test value parses");
    set_path(&mut doc, path, value);
    serde_yaml_ng::to_string(&doc).expect("serialise")
}

fn set_path(doc: &mut Value, path: &str, value: Value) {
    let mut parts: Vec<&str> = path.split('.').collect();
    let last = parts.pop().expect("non-empty path");
    let mut cur = doc;
    for p in parts {
        if !cur.get(p).is_some_and(Value::is_object) {
            cur[p] = json!({});
        }
        cur = cur.get_mut(p).expect("just inserted");
    }
    let map = cur.as_object_mut().expect("parent is a mapping");
    if value.is_null() {
        map.remove(last);
    } else {
        map.insert(last.to_string(), value);
    }
}

fn has_warning(loaded: &Loaded, needle: &str) -> bool {
    loaded.warnings.iter().any(|w| w.contains(needle))
}

#[track_caller]
fn assert_warning(loaded: &Loaded, needle: &str) {
    assert!(
        has_warning(loaded, needle),
        "no warning containing {needle:?} in {:#?}",
        loaded.warnings
    );
}
