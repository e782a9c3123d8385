//! Tests of the configuration loader: the seed's example, a Patroni `postgres0.yml`, every
//! environment family, directory sources, validation messages, and garbage input.

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

// ---------------------------------------------------------------------------------------------
// Example files

#[test]
fn seed_example_loads_with_v2_warning() {
    let loaded = load_ok(SEED, &[("HOME", "/home/postgres")]);
    let c = &loaded.config;
    assert_eq!(c.name, "postgresql3");
    assert_eq!(c.scope, "batman");
    assert_eq!(c.namespace, "/service");
    assert_eq!(c.base_path(), "/service/batman");
    assert_eq!(c.restapi.listen.to_string(), "192.168.137.108:8008");
    assert_eq!(
        c.restapi.connect_address.to_string(),
        "192.168.137.108:8008"
    );
    assert_eq!(c.etcd.endpoints, vec!["http://192.168.137.108:2379"]);
    assert_warning(&loaded, "etcd v3 API only");
    assert_warning(&loaded, "v3 keyspace");

    assert!(c.bootstrap.present);
    assert_eq!(c.bootstrap.method, "initdb");
    assert!(c.bootstrap.initdb.is_empty());
    assert_eq!(c.bootstrap.dcs["ttl"], json!(30));
    assert_eq!(c.bootstrap.dcs["maximum_lag_on_failover"], json!(1048576));
    assert_eq!(c.bootstrap.dcs["postgresql"]["use_pg_rewind"], json!(true));
    assert_eq!(
        c.bootstrap.pg_hba,
        vec![
            "host replication replicator 192.168.137.0/24 md5",
            "host all all 0.0.0.0/0 md5"
        ]
    );

    let pg = &c.postgresql;
    assert_eq!(pg.listen, "192.168.137.108:5432");
    assert_eq!(pg.listen_addresses, "192.168.137.108");
    assert_eq!(pg.port, 5432);
    assert_eq!(pg.connect_address.to_string(), "192.168.137.108:5432");
    assert_eq!(pg.data_dir, PathBuf::from("/home/postgres/data"));
    assert_eq!(pg.config_dir, PathBuf::from("/home/postgres/data"));
    assert_eq!(pg.bin("pg_ctl"), PathBuf::from("/home/postgres/bin/pg_ctl"));
    assert_eq!(pg.pgpass, PathBuf::from("/tmp/pgpass"));
    assert_eq!(pg.authentication.superuser.username, "postgres");
    assert_eq!(
        pg.authentication.superuser.password.as_deref(),
        Some("zalando")
    );
    assert_eq!(pg.authentication.replication.username, "replicator");
    assert_eq!(
        pg.authentication
            .rewind
            .as_ref()
            .map(|r| r.username.as_str()),
        Some("rewind")
    );
    assert_eq!(pg.basebackup, vec!["--max-rate=100M"]);
    assert_eq!(pg.create_replica_methods, vec!["basebackup"]);
    assert_eq!(pg.database, "postgres");
    assert_eq!(pg.pg_ctl_timeout, 60);

    // Patroni ignores command-line GUCs in the local parameters; so do we, with a warning.
    assert_eq!(
        Value::Object(pg.parameters.clone()),
        json!({"unix_socket_directories": "."})
    );
    assert_warning(&loaded, "postgresql.parameters.wal_level is ignored");
    assert_warning(&loaded, "postgresql.parameters.max_wal_senders is ignored");
    // ...but the raw document is the file as written.
    assert_eq!(
        c.raw["postgresql"]["parameters"]["wal_level"],
        json!("hot_standby")
    );
    assert!(c.tags.is_empty());
}

#[test]
fn postgres0_style_config_loads() {
    let loaded = load_ok(POSTGRES0, &[]);
    let c = &loaded.config;
    assert_eq!(c.name, "postgresql0");
    assert_eq!(c.namespace, "/service");
    assert_eq!(c.etcd.endpoints, vec!["http://127.0.0.1:2379"]);
    assert_eq!(
        c.restapi.authentication,
        Some(Credentials {
            username: "username".into(),
            password: "password".into()
        })
    );
    assert!(!c.ctl.insecure);
    assert_eq!(
        c.bootstrap.initdb,
        vec!["--encoding=UTF8", "--data-checksums"]
    );
    assert_eq!(c.bootstrap.pg_hba.len(), 2);
    assert_eq!(c.bootstrap.dcs["loop_wait"], json!(10));
    assert_eq!(
        c.bootstrap.dcs["postgresql"]["parameters"]["archive_timeout"],
        json!("1800s")
    );
    assert_eq!(c.postgresql.pgpass, PathBuf::from("/tmp/pgpass0"));
    assert_eq!(c.postgresql.data_dir, PathBuf::from("data/postgresql0"));
    assert_eq!(c.postgresql.bin("initdb"), PathBuf::from("initdb"));
    assert_eq!(
        c.postgresql
            .authentication
            .rewind
            .as_ref()
            .map(|r| r.username.as_str()),
        Some("rewind_user")
    );
    assert_eq!(
        Value::Object(c.tags.clone()),
        json!({"nofailover": false, "noloadbalance": false, "clonefrom": false, "nosync": false})
    );
    // Patroni's own example restores WAL from an archive, which Patrol does not do yet.
    assert_eq!(
        loaded.warnings,
        vec!["bootstrap.dcs.postgresql.recovery_conf: not implemented by Patrol yet, ignored: these recovery settings (e.g. restore_command) are not written, so replicas cannot restore WAL from an archive".to_string()]
    );
    assert!(loaded.refusals.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Warnings for unknown and unsupported keys

#[test]
fn unknown_keys_produce_warnings_naming_them() {
    let mut yaml = MINIMAL.to_string();
    yaml.push_str("frobnicate: 1\nrestapi_typo: {}\n");
    let yaml = yaml
        .replace(
            "  listen: 127.0.0.1:8008\n",
            "  listen: 127.0.0.1:8008\n  lisen: x\n",
        )
        .replace(
            "  data_dir: /data\n",
            "  data_dir: /data\n  datadir: /x\n  callbacks:\n    on_strat: /bin/true\n",
        )
        .replace(
            "      username: replicator\n",
            "      username: replicator\n      passwrod: x\n",
        );
    let loaded = load_ok(&yaml, &[]);
    for key in [
        "frobnicate",
        "restapi_typo",
        "restapi.lisen",
        "postgresql.datadir",
        "postgresql.callbacks.on_strat",
        "postgresql.authentication.replication.passwrod",
    ] {
        assert_warning(&loaded, &format!("unknown configuration key {key} ignored"));
    }
}

#[test]
fn known_unsupported_sections_are_accepted() {
    let yaml = format!(
        "{MINIMAL}log:\n  level: DEBUG\n  dir: /var/log\nconsul:\n  host: x:8500\ncitus:\n  group: 0\n  database: citus\nwatchdog:\n  mode: required\n  device: /dev/watchdog\nthread_pool_size: 5\nttl: 40\n"
    );
    let loaded = load_ok(&yaml, &[]);
    assert_warning(&loaded, "the consul section is ignored");
    assert_warning(&loaded, "citus is not supported");
    assert_warning(&loaded, "ttl is a dynamic configuration setting");
    assert_warning(
        &loaded,
        "log.dir: not implemented by Patrol yet, ignored: logs go to stderr only",
    );
    assert!(!has_warning(&loaded, "log.level"), "{:#?}", loaded.warnings);
    assert!(!has_warning(&loaded, "thread_pool_size"));
    assert_eq!(loaded.refusals.len(), 1, "{:#?}", loaded.refusals);
    assert!(
        loaded.refusals[0].starts_with("watchdog.mode = required: Patrol has no watchdog support")
    );

    let off = load_ok(&format!("{MINIMAL}watchdog:\n  mode: off\n"), &[]);
    assert!(off.warnings.is_empty(), "{:#?}", off.warnings);
    let unknown = load_ok(&format!("{MINIMAL}watchdog:\n  mode: sometimes\n  device: /dev/watchdog\n  typo: 1\nlog:\n  levle: DEBUG\n"), &[]);
    assert_warning(
        &unknown,
        "watchdog.mode 'sometimes' is not recognized: the watchdog is off",
    );
    assert_warning(&unknown, "unknown configuration key watchdog.typo ignored");
    assert_warning(&unknown, "unknown configuration key log.levle ignored");
    assert!(unknown.refusals.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Environment

#[test]
fn env_global_overrides() {
    let loaded = load_ok(
        MINIMAL,
        &[
            ("PATRONI_NAME", "from-env"),
            ("PATRONI_SCOPE", "envscope"),
            ("PATRONI_NAMESPACE", "team/"),
        ],
    );
    assert_eq!(loaded.config.name, "from-env");
    assert_eq!(loaded.config.scope, "envscope");
    assert_eq!(loaded.config.namespace, "/team");
    assert_eq!(loaded.config.base_path(), "/team/envscope");
    assert_eq!(loaded.config.raw["name"], json!("from-env"));
}

#[test]
fn env_restapi_overrides() {
    let c = load_ok(
        MINIMAL,
        &[
            ("PATRONI_RESTAPI_LISTEN", "0.0.0.0:8009"),
            ("PATRONI_RESTAPI_CONNECT_ADDRESS", "10.0.0.1:8009"),
            ("PATRONI_RESTAPI_USERNAME", "admin"),
            ("PATRONI_RESTAPI_PASSWORD", "secret"),
            ("PATRONI_RESTAPI_CERTFILE", "/etc/cert.pem"),
            ("PATRONI_RESTAPI_KEYFILE", "/etc/key.pem"),
            ("PATRONI_RESTAPI_KEYFILE_PASSWORD", "kp"),
            ("PATRONI_RESTAPI_CAFILE", "/etc/ca.pem"),
            ("PATRONI_RESTAPI_CIPHERS", "HIGH"),
            ("PATRONI_RESTAPI_VERIFY_CLIENT", "optional"),
            ("PATRONI_RESTAPI_ALLOWLIST", "127.0.0.1,10.0.0.0/8"),
            ("PATRONI_RESTAPI_ALLOWLIST_INCLUDE_MEMBERS", "on"),
            ("PATRONI_RESTAPI_REQUEST_QUEUE_SIZE", "7"),
            (
                "PATRONI_RESTAPI_HTTP_EXTRA_HEADERS",
                "X-Frame-Options: SAMEORIGIN",
            ),
            (
                "PATRONI_RESTAPI_HTTPS_EXTRA_HEADERS",
                "{Strict-Transport-Security: max-age=3}",
            ),
            ("PATRONI_RESTAPI_SERVER_TOKENS", "Minimal"),
        ],
    )
    .config;
    let r = &c.restapi;
    assert_eq!(
        r.listen,
        HostPort {
            host: "0.0.0.0".into(),
            port: 8009
        }
    );
    assert_eq!(r.connect_address.to_string(), "10.0.0.1:8009");
    assert_eq!(
        r.authentication,
        Some(Credentials {
            username: "admin".into(),
            password: "secret".into()
        })
    );
    assert_eq!(r.certfile.as_deref(), Some(Path::new("/etc/cert.pem")));
    assert_eq!(r.keyfile.as_deref(), Some(Path::new("/etc/key.pem")));
    assert_eq!(r.keyfile_password.as_deref(), Some("kp"));
    assert_eq!(r.cafile.as_deref(), Some(Path::new("/etc/ca.pem")));
    assert_eq!(r.ciphers.as_deref(), Some("HIGH"));
    assert_eq!(r.verify_client.as_deref(), Some("optional"));
    assert_eq!(r.allowlist, vec!["127.0.0.1", "10.0.0.0/8"]);
    assert!(r.allowlist_include_members);
    assert_eq!(r.request_queue_size, 7);
    assert_eq!(
        Value::Object(r.http_extra_headers.clone()),
        json!({"X-Frame-Options": "SAMEORIGIN"})
    );
    assert_eq!(
        Value::Object(r.https_extra_headers.clone()),
        json!({"Strict-Transport-Security": "max-age=3"})
    );
    assert_eq!(r.server_tokens.as_deref(), Some("Minimal"));
}

#[test]
fn env_ctl_overrides() {
    let c = load_ok(
        MINIMAL,
        &[
            ("PATRONI_CTL_INSECURE", "true"),
            ("PATRONI_CTL_CACERT", "/ca"),
            ("PATRONI_CTL_CERTFILE", "/cert"),
            ("PATRONI_CTL_KEYFILE", "/key"),
            ("PATRONI_CTL_KEYFILE_PASSWORD", "kp"),
            ("PATRONI_CTL_USERNAME", "u"),
            ("PATRONI_CTL_PASSWORD", "p"),
        ],
    )
    .config;
    assert!(c.ctl.insecure);
    assert_eq!(c.ctl.cacert.as_deref(), Some(Path::new("/ca")));
    assert_eq!(c.ctl.certfile.as_deref(), Some(Path::new("/cert")));
    assert_eq!(c.ctl.keyfile.as_deref(), Some(Path::new("/key")));
    assert_eq!(c.ctl.keyfile_password.as_deref(), Some("kp"));
    assert_eq!(
        c.ctl.authentication,
        Some(Credentials {
            username: "u".into(),
            password: "p".into()
        })
    );
}

#[test]
fn env_postgresql_overrides() {
    let c = load_ok(
        MINIMAL,
        &[
            ("PATRONI_POSTGRESQL_LISTEN", "127.0.0.1,127.0.0.2:5433"),
            ("PATRONI_POSTGRESQL_CONNECT_ADDRESS", "10.0.0.2:5433"),
            ("PATRONI_POSTGRESQL_PROXY_ADDRESS", "10.0.0.2:6432"),
            ("PATRONI_POSTGRESQL_DATA_DIR", "/pg/data"),
            ("PATRONI_POSTGRESQL_CONFIG_DIR", "/pg/conf"),
            ("PATRONI_POSTGRESQL_PGPASS", "/pg/pgpass"),
            ("PATRONI_POSTGRESQL_BIN_DIR", "/usr/lib/postgresql/16/bin"),
            ("PATRONI_POSTGRESQL_BIN_PG_CTL", "pg_ctl.wrapper"),
            ("PATRONI_POSTGRESQL_BIN_POSTGRES", "postgres16"),
        ],
    )
    .config;
    let pg = &c.postgresql;
    assert_eq!(pg.listen, "127.0.0.1,127.0.0.2:5433");
    assert_eq!(pg.listen_addresses, "127.0.0.1,127.0.0.2");
    assert_eq!(pg.port, 5433);
    assert_eq!(pg.connect_address.to_string(), "10.0.0.2:5433");
    assert_eq!(pg.proxy_address.as_deref(), Some("10.0.0.2:6432"));
    assert_eq!(pg.data_dir, PathBuf::from("/pg/data"));
    assert_eq!(pg.config_dir, PathBuf::from("/pg/conf"));
    assert_eq!(pg.pgpass, PathBuf::from("/pg/pgpass"));
    assert_eq!(
        pg.bin("pg_ctl"),
        PathBuf::from("/usr/lib/postgresql/16/bin/pg_ctl.wrapper")
    );
    assert_eq!(
        pg.bin("postgres"),
        PathBuf::from("/usr/lib/postgresql/16/bin/postgres16")
    );
    assert_eq!(
        pg.bin("initdb"),
        PathBuf::from("/usr/lib/postgresql/16/bin/initdb")
    );
}

#[test]
fn env_credentials_overrides() {
    let c = load_ok(
        MINIMAL,
        &[
            ("PATRONI_SUPERUSER_USERNAME", "admin"),
            ("PATRONI_SUPERUSER_PASSWORD", "supw"),
            ("PATRONI_SUPERUSER_SSLMODE", "verify-full"),
            ("PATRONI_REPLICATION_PASSWORD", "reppw"),
            ("PATRONI_REPLICATION_SSLROOTCERT", "/root.crt"),
            ("PATRONI_REWIND_USERNAME", "rewinder"),
            ("PATRONI_REWIND_PASSWORD", "rwpw"),
            ("PATRONI_REWIND_CHANNEL_BINDING", "require"),
        ],
    )
    .config;
    let a = &c.postgresql.authentication;
    assert_eq!(a.superuser.username, "admin");
    assert_eq!(a.superuser.password.as_deref(), Some("supw"));
    assert_eq!(
        a.superuser.extra.get("sslmode").map(String::as_str),
        Some("verify-full")
    );
    // The file's username stays; the environment adds the password.
    assert_eq!(a.replication.username, "replicator");
    assert_eq!(a.replication.password.as_deref(), Some("reppw"));
    assert_eq!(
        a.replication.extra.get("sslrootcert").map(String::as_str),
        Some("/root.crt")
    );
    let rewind = a.rewind.as_ref().expect("rewind from env");
    assert_eq!(rewind.username, "rewinder");
    assert_eq!(
        rewind.extra.get("channel_binding").map(String::as_str),
        Some("require")
    );
}

#[test]
fn env_etcd3_overrides() {
    let c = load_ok(
        MINIMAL,
        &[
            ("PATRONI_ETCD3_HOSTS", "'10.0.0.1:2379','10.0.0.2'"),
            ("PATRONI_ETCD3_PROTOCOL", "https"),
            ("PATRONI_ETCD3_CACERT", "/ca.pem"),
            ("PATRONI_ETCD3_CERT", "/cert.pem"),
            ("PATRONI_ETCD3_KEY", "/key.pem"),
            ("PATRONI_ETCD3_USERNAME", "root"),
            ("PATRONI_ETCD3_PASSWORD", "etcdpw"),
        ],
    )
    .config;
    // `host` from the file is still there, but `hosts` wins (Patroni's order: url, hosts, host).
    assert_eq!(
        c.etcd.endpoints,
        vec!["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
    );
    assert_eq!(c.etcd.cacert.as_deref(), Some(Path::new("/ca.pem")));
    assert_eq!(c.etcd.cert.as_deref(), Some(Path::new("/cert.pem")));
    assert_eq!(c.etcd.key.as_deref(), Some(Path::new("/key.pem")));
    assert_eq!(c.etcd.username.as_deref(), Some("root"));
    assert_eq!(c.etcd.password.as_deref(), Some("etcdpw"));

    // Unquoted comma list, and a YAML list.
    for hosts in [
        "10.0.0.1:2379,10.0.0.2:2380",
        "- 10.0.0.1:2379\n- 10.0.0.2:2380",
        "[10.0.0.1:2379, 10.0.0.2:2380]",
    ] {
        let c = load_ok(MINIMAL, &[("PATRONI_ETCD3_HOSTS", hosts)]).config;
        assert_eq!(
            c.etcd.endpoints,
            vec!["http://10.0.0.1:2379", "http://10.0.0.2:2380"],
            "PATRONI_ETCD3_HOSTS={hosts:?}"
        );
    }

    let c = load_ok(
        MINIMAL,
        &[("PATRONI_ETCD3_URL", "https://u:p@etcd.local:2381/v3")],
    )
    .config;
    assert_eq!(c.etcd.endpoints, vec!["https://etcd.local:2381"]);
    assert_eq!(c.etcd.username.as_deref(), Some("u"));
    assert_eq!(c.etcd.password.as_deref(), Some("p"));

    let c = load_ok(
        MINIMAL,
        &[
            ("PATRONI_ETCD3_HOST", "etcd.local"),
            ("PATRONI_ETCD3_PORT", "2390"),
        ],
    )
    .config;
    assert_eq!(c.etcd.endpoints, vec!["http://etcd.local:2390"]);
}

#[test]
fn env_etcd_v2_section_is_used_with_warning() {
    let yaml = MINIMAL.replace("etcd3:\n  host: 127.0.0.1:2379\n", "");
    let loaded = load_ok(
        &yaml,
        &[
            ("PATRONI_ETCD_HOST", "10.1.1.1:2379"),
            ("PATRONI_ETCD_USERNAME", "v2user"),
        ],
    );
    assert_eq!(loaded.config.etcd.endpoints, vec!["http://10.1.1.1:2379"]);
    assert_eq!(loaded.config.etcd.username.as_deref(), Some("v2user"));
    assert_warning(&loaded, "etcd v3 API only");
}

#[test]
fn env_etcd_auth_without_section_is_ignored_with_warning() {
    let loaded = load_ok(MINIMAL, &[("PATRONI_ETCD_PASSWORD", "x")]);
    assert_warning(
        &loaded,
        "PATRONI_ETCD_PASSWORD ignored: there is no etcd section",
    );
    assert!(loaded.config.etcd.password.is_none());
}

#[test]
fn env_bad_typed_values_and_unknown_variables_warn() {
    let loaded = load_ok(
        MINIMAL,
        &[
            ("PATRONI_CTL_INSECURE", "maybe"),
            ("PATRONI_RESTAPI_REQUEST_QUEUE_SIZE", "many"),
            ("PATRONI_ETCD3_PORT", "x"),
            ("PATRONI_POSTGRESQL_DATADIR", "/typo"),
            ("PATRONI_RESTAPI_LISTEN", ""),
        ],
    );
    assert_warning(&loaded, "PATRONI_CTL_INSECURE: 'maybe' is not a boolean");
    assert_warning(
        &loaded,
        "PATRONI_RESTAPI_REQUEST_QUEUE_SIZE: 'many' is not an integer",
    );
    assert_warning(&loaded, "PATRONI_ETCD3_PORT: 'x' is not an integer");
    assert_warning(
        &loaded,
        "PATRONI_POSTGRESQL_DATADIR is not a Patroni setting",
    );
    assert!(!loaded.config.ctl.insecure);
    assert_eq!(loaded.config.postgresql.data_dir, PathBuf::from("/data"));
    // An empty variable counts as unset.
    assert_eq!(loaded.config.restapi.listen.to_string(), "127.0.0.1:8008");
}

#[test]
fn env_legacy_log_names_and_other_sections_go_to_raw() {
    let c = load_ok(
        MINIMAL,
        &[
            ("PATRONI_LOGLEVEL", "DEBUG"),
            ("PATRONI_LOG_FORMAT", "%(asctime)s %(message)s"),
            ("PATRONI_LOG_FILE_NUM", "4"),
            ("PATRONI_CITUS_GROUP", "1"),
            ("PATRONI_CITUS_DATABASE", "citus"),
            ("PATRONI_KUBERNETES_LABELS", "{app: pg}"),
        ],
    )
    .config;
    assert_eq!(c.raw["log"]["level"], json!("DEBUG"));
    assert_eq!(c.raw["log"]["format"], json!("%(asctime)s %(message)s"));
    assert_eq!(c.raw["log"]["file_num"], json!(4));
    assert_eq!(c.raw["citus"], json!({"group": 1, "database": "citus"}));
    assert_eq!(c.raw["kubernetes"]["labels"], json!({"app": "pg"}));
}

#[test]
fn env_only_configuration() {
    let vars = [
        ("HOME", "/var/lib/pg"),
        ("PATRONI_NAME", "n1"),
        ("PATRONI_SCOPE", "demo"),
        ("PATRONI_RESTAPI_LISTEN", "127.0.0.1:8008"),
        ("PATRONI_ETCD3_HOSTS", "127.0.0.1:2379"),
        ("PATRONI_POSTGRESQL_LISTEN", "*:5432"),
        ("PATRONI_POSTGRESQL_DATA_DIR", "/pg"),
        ("PATRONI_SUPERUSER_USERNAME", "postgres"),
        ("PATRONI_SUPERUSER_PASSWORD", "pw"),
        ("PATRONI_REPLICATION_USERNAME", "replicator"),
    ];
    let loaded = load(ConfigSource::EnvOnly, &env(&vars)).expect("env-only config loads");
    let c = &loaded.config;
    assert_eq!(c.name, "n1");
    assert_eq!(c.namespace, "/service");
    assert_eq!(c.etcd.endpoints, vec!["http://127.0.0.1:2379"]);
    assert_eq!(c.postgresql.listen_addresses, "*");
    assert_eq!(c.postgresql.connect_address.to_string(), "127.0.0.1:5432");
    assert_warning(&loaded, "postgresql.connect_address is not set");
    assert_eq!(c.postgresql.pgpass, PathBuf::from("/var/lib/pg/pgpass"));
    assert!(!c.bootstrap.present);

    // Nothing at all: the first missing key is named.
    let err = load(ConfigSource::EnvOnly, &no_env()).expect_err("empty environment");
    assert_eq!(
        err.to_string(),
        "invalid configuration: name: missing (required)"
    );
}

#[test]
fn patroni_configuration_variable_is_the_whole_yaml() {
    let vars = [
        ("PATRONI_CONFIGURATION", POSTGRES0),
        // Ignored: PATRONI_CONFIGURATION is the whole configuration.
        ("PATRONI_NAME", "other"),
    ];
    let c = load(ConfigSource::EnvOnly, &env(&vars))
        .expect("loads")
        .config;
    assert_eq!(c.name, "postgresql0");

    let err = load(
        ConfigSource::EnvOnly,
        &env(&[("PATRONI_CONFIGURATION", "a: [")]),
    )
    .expect_err("bad YAML");
    assert!(
        err.to_string()
            .starts_with("invalid YAML in PATRONI_CONFIGURATION:"),
        "{err}"
    );

    // With a file, the variable is ignored (with a warning) and the file is used.
    let loaded = load_ok(MINIMAL, &[("PATRONI_CONFIGURATION", POSTGRES0)]);
    assert_eq!(loaded.config.name, "m1");
    assert_warning(&loaded, "PATRONI_CONFIGURATION is ignored");
}

// ---------------------------------------------------------------------------------------------
// Sources

#[test]
fn directory_source_merges_sorted_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::write(d.join("10-base.yml"), POSTGRES0).expect("write");
    std::fs::write(
        d.join("20-override.yaml"),
        "name: postgresql1\nrestapi:\n  listen: 127.0.0.1:8009\n  connect_address: ~\ntags:\n  nosync: true\n",
    )
    .expect("write");
    std::fs::write(d.join("30-ignored.txt"), "name: nope\n").expect("write");
    std::fs::create_dir(d.join("40-dir.yml")).expect("mkdir");
    std::fs::write(
        d.join("05-first.yml"),
        "name: overwritten\nscope: overwritten\n",
    )
    .expect("write");

    let loaded = load(ConfigSource::File(d), &no_env()).expect("directory loads");
    let c = &loaded.config;
    assert_eq!(c.name, "postgresql1");
    assert_eq!(c.scope, "batman");
    assert_eq!(c.restapi.listen.to_string(), "127.0.0.1:8009");
    // `connect_address: ~` removed the key, so it defaults to listen.
    assert_eq!(c.restapi.connect_address.to_string(), "127.0.0.1:8009");
    assert!(c.raw["restapi"].get("connect_address").is_none());
    // Mappings merge key by key and keep the first file's order.
    assert_eq!(
        Value::Object(c.tags.clone()),
        json!({"nofailover": false, "noloadbalance": false, "clonefrom": false, "nosync": true})
    );
    assert_eq!(
        c.restapi
            .authentication
            .as_ref()
            .map(|a| a.username.as_str()),
        Some("username")
    );

    // Environment still applies on top of a directory.
    let c = load(ConfigSource::File(d), &env(&[("PATRONI_NAME", "envname")]))
        .expect("loads")
        .config;
    assert_eq!(c.name, "envname");
}

#[test]
fn empty_directory_warns_then_fails_on_missing_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = load(ConfigSource::File(dir.path()), &no_env()).expect_err("nothing configured");
    assert_eq!(
        err.to_string(),
        "invalid configuration: name: missing (required)"
    );
}

#[test]
fn missing_file_error_names_the_path() {
    let err = load(
        ConfigSource::File(Path::new("/nonexistent/patroni.yml")),
        &no_env(),
    )
    .expect_err("missing file");
    assert!(matches!(err, ConfigError::Io { .. }));
    let msg = err.to_string();
    assert!(msg.contains("/nonexistent/patroni.yml"), "{msg}");
}

#[test]
fn yaml_syntax_error_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yml");
    std::fs::write(&path, "name: a\n  scope: [b\n").expect("write");
    let err = load(ConfigSource::File(&path), &no_env()).expect_err("bad yaml");
    match &err {
        ConfigError::Yaml { path_or_source, .. } => assert!(path_or_source.ends_with("bad.yml")),
        other => panic!("expected a YAML error, got {other:?}"),
    }
}

#[test]
fn yaml_anchors_and_merge_keys_work() {
    let yaml = format!(
        "{MINIMAL}x-auth: &auth\n  username: admin\n  password: pw\nctl:\n  authentication:\n    <<: *auth\n    password: other\n"
    );
    let loaded = load_ok(&yaml, &[]);
    assert_eq!(
        loaded.config.ctl.authentication,
        Some(Credentials {
            username: "admin".into(),
            password: "other".into()
        })
    );
    assert_warning(&loaded, "unknown configuration key x-auth");
}

// ---------------------------------------------------------------------------------------------
// Validation: every error names its key

#[test]
fn validation_errors_name_their_key() {
    let cases: &[(&str, &str, &str)] = &[
        ("name", "~", "name: missing (required)"),
        ("name", "[a]", "name: expected a string, found a list"),
        ("scope", "~", "scope: missing (required)"),
        ("scope", "''", "scope: missing (required)"),
        ("namespace", "{a: 1}", "namespace: expected a string, found a mapping"),
        ("restapi.listen", "~", "restapi.listen: missing (required)"),
        ("restapi.listen", "abc", "restapi.listen: 'abc' is not host:port"),
        ("restapi.listen", "8008", "restapi.listen: expected a string, found the number 8008"),
        ("restapi.listen", "'127.0.0.1:0'", "restapi.listen: port 0 in '127.0.0.1:0' is out of range 1..65535"),
        ("restapi.listen", "'127.0.0.1:70000'", "restapi.listen: port 70000 in '127.0.0.1:70000' is out of range 1..65535"),
        ("restapi.connect_address", "'h:x'", "restapi.connect_address: 'h:x' is not host:port"),
        ("restapi.verify_client", "sometimes", "restapi.verify_client: 'sometimes' is not one of none, optional, required"),
        ("restapi.allowlist", "127.0.0.1", "restapi.allowlist: expected a list, found '127.0.0.1'"),
        ("restapi.allowlist", "[[a]]", "restapi.allowlist: item 1: expected a string, found a list"),
        ("restapi.allowlist_include_members", "maybe", "restapi.allowlist_include_members: expected a boolean (true/false), found 'maybe'"),
        ("restapi.authentication", "{username: u}", "restapi.authentication.password: missing (required)"),
        ("restapi", "[]", "restapi: expected a mapping, found a list"),
        ("ctl.insecure", "[1]", "ctl.insecure: expected a boolean (true/false), found a list"),
        ("postgresql.listen", "~", "postgresql.listen: missing (required)"),
        ("postgresql.listen", "'*:abc'", "postgresql.listen: '*:abc' is not host:port"),
        ("postgresql.listen", "'*:0'", "postgresql.listen: port 0 in '*:0' is out of range 1..65535"),
        ("postgresql.data_dir", "~", "postgresql.data_dir: missing (required)"),
        ("postgresql.data_dir", "{}", "postgresql.data_dir: expected a string, found a mapping"),
        ("postgresql.connect_address", "'10.0.0.1'", "postgresql.connect_address: '10.0.0.1' is not host:port"),
        ("postgresql.authentication", "~", "postgresql.authentication.superuser: missing (required)"),
        ("postgresql.authentication.superuser", "~", "postgresql.authentication.superuser: missing (required)"),
        ("postgresql.authentication.replication", "~", "postgresql.authentication.replication: missing (required)"),
        ("postgresql.authentication.replication.username", "~", "postgresql.authentication.replication.username: missing (required)"),
        ("postgresql.authentication.superuser.password", "[x]", "postgresql.authentication.superuser.password: expected a string, found a list"),
        ("postgresql.pg_ctl_timeout", "-1", "postgresql.pg_ctl_timeout: expected a non-negative integer, found the number -1"),
        ("postgresql.pg_hba", "host all all", "postgresql.pg_hba: expected a list, found 'host all all'"),
        ("postgresql.parameters", "[a]", "postgresql.parameters: expected a mapping, found a list"),
        ("postgresql.callbacks", "{on_start: [a]}", "postgresql.callbacks.on_start: expected a string, found a list"),
        ("postgresql.basebackup", "max-rate", "postgresql.basebackup: expected a list or a mapping, found 'max-rate'"),
        ("postgresql.use_pg_rewind", "sure", "postgresql.use_pg_rewind: expected a boolean (true/false), found 'sure'"),
        ("postgresql", "~", "postgresql: missing (required)"),
        ("postgresql", "'x'", "postgresql: expected a mapping, found 'x'"),
        ("bootstrap.dcs.ttl", "abc", "bootstrap.dcs.ttl: expected an integer, found 'abc'"),
        ("bootstrap.dcs.loop_wait", "1.5", "bootstrap.dcs.loop_wait: expected an integer, found the number 1.5"),
        ("bootstrap.dcs.retry_timeout", "[]", "bootstrap.dcs.retry_timeout: expected an integer, found a list"),
        ("bootstrap.dcs.ttl", "9223372036854775807", "bootstrap.dcs.ttl: must be an integer from 1 to 86400, not 9223372036854775807"),
        ("bootstrap.dcs.loop_wait", "0", "bootstrap.dcs.loop_wait: must be an integer from 1 to 86400, not 0"),
        ("bootstrap.dcs.primary_start_timeout", "-1", "bootstrap.dcs.primary_start_timeout: must be an integer from 0 to 31536000, not -1"),
        ("bootstrap.dcs.maximum_lag_on_failover", "lots", "bootstrap.dcs.maximum_lag_on_failover: expected an integer, found 'lots'"),
        ("bootstrap.dcs.synchronous_mode", "sometimes", "bootstrap.dcs.synchronous_mode: expected a boolean or 'quorum', found 'sometimes'"),
        ("bootstrap.dcs.postgresql", "[]", "bootstrap.dcs.postgresql: expected a mapping, found a list"),
        ("bootstrap.dcs.postgresql.use_pg_rewind", "sure", "bootstrap.dcs.postgresql.use_pg_rewind: expected a boolean, found 'sure'"),
        ("bootstrap.dcs", "[]", "bootstrap.dcs: expected a mapping, found a list"),
        ("bootstrap.initdb", "[pgdata: /x]", "bootstrap.initdb: option 'pgdata' is not allowed for initdb"),
        ("bootstrap.initdb", "[nosync]", "bootstrap.initdb: option 'nosync' is not allowed for initdb"),
        ("bootstrap.initdb", "{pwfile: /x}", "bootstrap.initdb: option 'pwfile' is not allowed for initdb"),
        ("bootstrap.initdb", "[sync-only]", "bootstrap.initdb: option 'sync-only' is not allowed"),
        ("bootstrap.initdb", "[version]", "bootstrap.initdb: option 'version' is not allowed"),
        ("bootstrap.initdb", "[{a: 1, b: 2}]", "bootstrap.initdb: item 1: expected an option name or a single `option: value` pair, found a mapping"),
        ("bootstrap.initdb", "[{encoding: [UTF8]}]", "bootstrap.initdb: item 1: the value of 'encoding' must be a string, found a list"),
        ("bootstrap.initdb", "data-checksums", "bootstrap.initdb: expected a list or a mapping, found 'data-checksums'"),
        ("bootstrap.pg_hba", "[{a: b}]", "bootstrap.pg_hba: item 1: expected a string, found a mapping"),
        ("etcd3", "~", "etcd3: no DCS configured: add an etcd3 section with host/hosts/url"),
        ("etcd3", "{}", "etcd3: no etcd endpoints: set host, hosts or url"),
        ("etcd3", "[]", "etcd3: expected a mapping, found a list"),
        ("etcd3.host", "'h:99999'", "etcd3.host: port 99999 in 'h:99999' is out of range 1..65535"),
        ("etcd3.hosts", "{a: 1}", "etcd3.hosts: expected a list, found a mapping"),
        ("etcd3.hosts", "''", "etcd3.hosts: the list of hosts is empty"),
        ("etcd3.url", "'etcd:2379'", "etcd3.url: 'etcd:2379' is not a URL like http://host:2379"),
        ("etcd3.url", "'ftp://etcd:2379'", "etcd3.url: 'ftp://etcd:2379': the scheme must be http or https"),
        ("etcd3.protocol", "gopher", "etcd3.protocol: 'gopher' is not http or https"),
        ("etcd3.port", "0", "etcd3.port: expected a port number 1..65535, found the number 0"),
        ("etcd3.srv", "example.com", "etcd3.srv: DNS SRV discovery is not supported"),
        ("tags.nofailover", "maybe", "tags.nofailover: expected a boolean, found 'maybe'"),
        ("tags.nosync", "[true]", "tags.nosync: expected a boolean, found a list"),
        ("tags.clonefrom", "2", "tags.clonefrom: expected a boolean, found the number 2"),
        ("tags.failover_priority", "-1", "tags.failover_priority: expected a non-negative integer, found the number -1"),
        ("tags.sync_priority", "high", "tags.sync_priority: expected a non-negative integer, found 'high'"),
        ("tags.replicatefrom", "[a]", "tags.replicatefrom: expected a member name, found a list"),
        ("tags", "[a]", "tags: expected a mapping, found a list"),
    ];
    let mut failures = Vec::new();
    for (path, value, expected) in cases {
        let yaml = if *path == "etcd3.srv" {
            minimal_with("etcd3", &format!("{{srv: {value}}}"))
        } else {
            minimal_with(path, value)
        };
        match load_yaml(&yaml, &[]) {
            Ok(_) => failures.push(format!("{path} = {value}: loaded, expected {expected:?}")),
            Err(e) => {
                let msg = e.to_string();
                let want = format!("invalid configuration: {expected}");
                if !msg.starts_with(&want) {
                    failures.push(format!("{path} = {value}:\n   got  {msg}\n   want {want}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn other_dcs_only_is_an_error_naming_it() {
    let yaml = MINIMAL.replace(
        "etcd3:\n  host: 127.0.0.1:2379\n",
        "consul:\n  host: 127.0.0.1:8500\n",
    );
    let err = load_err(&yaml, &[]);
    assert!(
        err.starts_with("invalid configuration: consul: Patrol supports only etcd"),
        "{err}"
    );
}

#[test]
fn error_variants_carry_the_key() {
    let err = load_yaml(&minimal_with("postgresql.listen", "~"), &[]).expect_err("missing listen");
    match err {
        ConfigError::Invalid { key, message } => {
            assert_eq!(key, "postgresql.listen");
            assert_eq!(message, "missing (required)");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Field semantics

#[test]
fn namespace_is_normalised() {
    for (given, want, base) in [
        ("/service/", "/service", "/service/s"),
        ("service", "/service", "/service/s"),
        ("service/", "/service", "/service/s"),
        ("//a//b/", "/a/b", "/a/b/s"),
        ("/", "/", "/s"),
        ("''", "/", "/s"),
    ] {
        let c = load_ok(&minimal_with("namespace", given), &[]).config;
        assert_eq!(c.namespace, want, "namespace {given:?}");
        assert_eq!(c.base_path(), base, "namespace {given:?}");
    }
    let c = load_ok(&minimal_with("namespace", "~"), &[]).config;
    assert_eq!(c.namespace, "/service");
}

#[test]
fn host_port_parses_and_displays() {
    let hp: HostPort = "[::1]:8008".parse().expect("v6");
    assert_eq!(
        hp,
        HostPort {
            host: "::1".into(),
            port: 8008
        }
    );
    assert_eq!(hp.to_string(), "[::1]:8008");
    let hp: HostPort = "db.example.com:5432".parse().expect("name");
    assert_eq!(hp.to_string(), "db.example.com:5432");
    let hp: HostPort = ":8008".parse().expect("empty host");
    assert_eq!(hp.host, "");
    for bad in [
        "abc", "a:b", "[::1]", "a,b:1", "h:0", "h:65536", "h x:1", "[::1:80", "",
    ] {
        assert!(bad.parse::<HostPort>().is_err(), "{bad:?} should not parse");
    }

    let c = load_ok(&minimal_with("restapi.listen", "'[::]:8008'"), &[]).config;
    assert_eq!(c.restapi.listen.host, "::");
    assert_eq!(c.restapi.connect_address.to_string(), "[::]:8008");
}

#[test]
fn postgresql_listen_forms() {
    for (listen, addrs, port, connect) in [
        (
            "'127.0.0.1,127.0.0.2:5432'",
            "127.0.0.1,127.0.0.2",
            5432,
            "127.0.0.1:5432",
        ),
        ("'10.0.0.5'", "10.0.0.5", 5432, "10.0.0.5:5432"),
        ("'[::1]:5433'", "::1", 5433, "[::1]:5433"),
        ("'0.0.0.0:5434'", "0.0.0.0", 5434, "127.0.0.1:5434"),
    ] {
        let loaded = load_ok(&minimal_with("postgresql.listen", listen), &[]);
        let pg = &loaded.config.postgresql;
        assert_eq!(pg.listen_addresses, addrs, "{listen}");
        assert_eq!(pg.port, port, "{listen}");
        assert_eq!(pg.connect_address.to_string(), connect, "{listen}");
    }
}

#[test]
fn restapi_wildcard_listen_without_connect_address_warns() {
    let loaded = load_ok(&minimal_with("restapi.listen", "'0.0.0.0:8008'"), &[]);
    assert_eq!(
        loaded.config.restapi.connect_address.to_string(),
        "0.0.0.0:8008"
    );
    assert_warning(&loaded, "restapi.connect_address is not set");
}

#[test]
fn postgresql_defaults() {
    let c = load_ok(MINIMAL, &[("HOME", "/home/pg")]).config;
    let pg = &c.postgresql;
    assert_eq!(pg.pgpass, PathBuf::from("/home/pg/pgpass"));
    assert_eq!(pg.config_dir, PathBuf::from("/data"));
    assert_eq!(pg.database, "postgres");
    assert_eq!(pg.create_replica_methods, vec!["basebackup"]);
    assert_eq!(pg.pg_ctl_timeout, 60);
    assert_eq!(pg.use_pg_rewind, None);
    assert!(!pg.use_unix_socket && !pg.use_unix_socket_repl);
    assert!(!pg.remove_data_directory_on_rewind_failure);
    assert!(!pg.remove_data_directory_on_diverged_timelines);
    assert_eq!(pg.config_base_name, "postgresql");
    assert!(pg.pg_hba.is_none() && pg.pg_ident.is_none());
    assert!(pg.authentication.rewind.is_none());
    assert_eq!(pg.authentication.superuser.password, None);
    assert_eq!(c.restapi.request_queue_size, 5);
    assert!(c.tags.is_empty());
    assert!(!c.bootstrap.present);
    assert_eq!(c.bootstrap.method, "initdb");

    // Without HOME the pgpass goes to the user's home from the password database, never to a
    // shared directory such as /tmp.
    let c = load(
        ConfigSource::EnvOnly,
        &env(&[("PATRONI_CONFIGURATION", MINIMAL)]),
    )
    .expect("loads")
    .config;
    let home = nix::unistd::User::from_uid(nix::unistd::getuid())
        .expect("passwd")
        .expect("an entry")
        .dir;
    assert_eq!(c.postgresql.pgpass, home.join("pgpass"));
    assert!(!c.postgresql.pgpass.starts_with("/tmp"));
}

#[test]
fn allowlist_entries_must_parse() {
    for (entry, ok) in [
        ("10.0.0.0/8", true),
        ("127.0.0.1", true),
        ("::1", true),
        ("[fe80::1]", true),
        ("db-1.example.com", true),
        ("patroni_node_1", true),
        ("10.0.0.0/33", false),
        ("not a host", false),
        ("-bad.example", false),
        ("10.0.0.1/", false),
    ] {
        let yaml = MINIMAL.replacen(
            "restapi:\n",
            &format!("restapi:\n  allowlist: ['{entry}']\n"),
            1,
        );
        assert_ne!(yaml, MINIMAL, "MINIMAL has a restapi section");
        let r = load(
            ConfigSource::EnvOnly,
            &env(&[("PATRONI_CONFIGURATION", &yaml)]),
        );
        match (ok, r) {
            (true, Ok(_)) => {}
            (false, Err(e)) => assert!(e.to_string().contains("restapi.allowlist[0]"), "{e}"),
            (true, Err(e)) => panic!("{entry}: {e}"),
            (false, Ok(_)) => panic!("{entry} was accepted"),
        }
    }
}

#[test]
fn postgresql_optional_fields() {
    let yaml = format!(
        "{MINIMAL}  bin_dir: /usr/pgsql/bin\n  bin_name:\n    pg_ctl: pg_ctl16\n    pg_dump: x\n  database: app\n  use_unix_socket: yes\n  use_unix_socket_repl: 'on'\n  pg_ctl_timeout: '90'\n  use_pg_rewind: true\n  remove_data_directory_on_rewind_failure: 1\n  remove_data_directory_on_diverged_timelines: true\n  callbacks:\n    on_role_change: /bin/cb.sh\n    on_start: /bin/start.sh\n  recovery_conf:\n    restore_command: cp /a/%f %p\n  pg_hba: [host all all 0.0.0.0/0 md5]\n  pg_ident: [map a b]\n  custom_conf: /etc/pg.conf\n  pre_promote: /bin/pre\n  before_stop: /bin/stop\n  config_base_name: pgconf\n  proxy_address: 10.0.0.9:6432\n"
    );
    let loaded = load_ok(&yaml, &[]);
    let pg = &loaded.config.postgresql;
    assert_eq!(pg.bin("pg_ctl"), PathBuf::from("/usr/pgsql/bin/pg_ctl16"));
    assert_warning(&loaded, "postgresql.bin_name.pg_dump");
    assert_eq!(pg.database, "app");
    assert!(pg.use_unix_socket && pg.use_unix_socket_repl);
    assert_eq!(pg.pg_ctl_timeout, 90);
    assert_eq!(pg.use_pg_rewind, Some(true));
    assert!(pg.remove_data_directory_on_rewind_failure);
    assert!(pg.remove_data_directory_on_diverged_timelines);
    assert_eq!(
        pg.callbacks.keys().collect::<Vec<_>>(),
        vec!["on_role_change", "on_start"]
    );
    assert_eq!(pg.recovery_conf["restore_command"], json!("cp /a/%f %p"));
    assert_eq!(
        pg.pg_hba.as_deref(),
        Some(&["host all all 0.0.0.0/0 md5".to_string()][..])
    );
    assert_eq!(pg.pg_ident.as_deref(), Some(&["map a b".to_string()][..]));
    assert_eq!(pg.custom_conf.as_deref(), Some(Path::new("/etc/pg.conf")));
    assert_eq!(pg.pre_promote.as_deref(), Some("/bin/pre"));
    assert_eq!(pg.before_stop.as_deref(), Some("/bin/stop"));
    assert_eq!(pg.config_base_name, "pgconf");
    assert_eq!(pg.proxy_address.as_deref(), Some("10.0.0.9:6432"));
}

#[test]
fn option_lists_are_formatted() {
    let yaml = format!(
        "{MINIMAL}bootstrap:\n  initdb:\n    encoding: UTF8\n    locale: \"'en_US.UTF-8'\"\n    data-checksums: true\n    lc-messages: ''\n"
    );
    let c = load_ok(&yaml, &[]).config;
    assert_eq!(
        c.bootstrap.initdb,
        vec![
            "--encoding=UTF8",
            "--locale=en_US.UTF-8",
            "--data-checksums"
        ]
    );

    let yaml = format!(
        "{MINIMAL}  basebackup:\n    max-rate: 100M\n    checkpoint: fast\n    compress: 9\n"
    );
    let c = load_ok(&yaml, &[]).config;
    assert_eq!(
        c.postgresql.basebackup,
        vec!["--max-rate=100M", "--checkpoint=fast", "--compress=9"]
    );

    let yaml = format!(
        "{MINIMAL}  basebackup:\n    - verbose\n    - wal-method: fetch\n    - pgdata: /x\n"
    );
    let loaded = load_ok(&yaml, &[]);
    assert_eq!(loaded.config.postgresql.basebackup, vec!["--verbose"]);
    assert_warning(
        &loaded,
        "postgresql.basebackup: option 'wal-method' is not allowed",
    );
    assert_warning(
        &loaded,
        "postgresql.basebackup: option 'pgdata' is not allowed",
    );
}

#[test]
fn bootstrap_section_details() {
    let yaml = format!(
        "{MINIMAL}bootstrap:\n  method: restore\n  restore:\n    command: /bin/restore.sh\n    keep_existing_recovery_conf: true\n  post_init: /bin/post.sh\n  dcs:\n    synchronous_mode: on\n    failsafe_mode: 'yes'\n    pause: false\n    postgresql:\n      use_slots: off\n"
    );
    let loaded = load_ok(&yaml, &[]);
    let b = &loaded.config.bootstrap;
    assert!(b.present);
    assert_eq!(b.method, "restore");
    assert_eq!(
        b.custom.as_ref().map(|m| m["command"].clone()),
        Some(json!("/bin/restore.sh"))
    );
    assert_eq!(b.post_bootstrap.as_deref(), Some("/bin/post.sh"));
    // YAML 1.1 boolean words become booleans, as PyYAML would have read them.
    assert_eq!(b.dcs["synchronous_mode"], json!(true));
    assert_eq!(b.dcs["failsafe_mode"], json!(true));
    assert_eq!(b.dcs["postgresql"]["use_slots"], json!(false));
    assert_eq!(
        loaded
            .warnings
            .iter()
            .map(|w| w.split(':').next().unwrap_or_default())
            .collect::<Vec<_>>(),
        vec!["bootstrap.method", "bootstrap.dcs.failsafe_mode"],
        "{:#?}",
        loaded.warnings
    );
    assert_eq!(loaded.refusals.len(), 1, "{:#?}", loaded.refusals);
    assert!(loaded.refusals[0].starts_with("bootstrap.dcs.synchronous_mode = on: "));

    let c = load_ok(
        &minimal_with("bootstrap.dcs.synchronous_mode", "quorum"),
        &[],
    )
    .config;
    assert_eq!(c.bootstrap.dcs["synchronous_mode"], json!("quorum"));

    // A custom method without a command falls back to initdb.
    let loaded = load_ok(&minimal_with("bootstrap.method", "wal_g"), &[]);
    assert_eq!(loaded.config.bootstrap.method, "initdb");
    assert!(loaded.config.bootstrap.custom.is_none());
    assert_warning(&loaded, "bootstrap.wal_g.command is not set");

    // `bootstrap: {}` is present; Patroni drops a top-level null, so `bootstrap:` is not.
    assert!(
        load_ok(&format!("{MINIMAL}bootstrap: {{}}\n"), &[])
            .config
            .bootstrap
            .present
    );
    assert!(
        !load_ok(&format!("{MINIMAL}bootstrap:\n"), &[])
            .config
            .bootstrap
            .present
    );

    let c = load_ok(&minimal_with("bootstrap.post_bootstrap", "/bin/pb"), &[]).config;
    assert_eq!(c.bootstrap.post_bootstrap.as_deref(), Some("/bin/pb"));
}

#[test]
fn custom_replica_methods() {
    let yaml = format!(
        "{MINIMAL}  create_replica_methods: [wal_e, basebackup, missing]\n  wal_e:\n    command: /bin/wale_restore\n    no_leader: 1\n"
    );
    let loaded = load_ok(&yaml, &[]);
    let pg = &loaded.config.postgresql;
    assert_eq!(
        pg.create_replica_methods,
        vec!["wal_e", "basebackup", "missing"]
    );
    assert_eq!(
        pg.replica_methods["wal_e"]["command"],
        json!("/bin/wale_restore")
    );
    assert!(pg.replica_methods.get("missing").is_none());
    assert_warning(&loaded, "postgresql.missing.command is not set");
    assert!(!has_warning(
        &loaded,
        "unknown configuration key postgresql.wal_e"
    ));
}

#[test]
fn etcd_endpoint_forms() {
    for (section, want) in [
        ("{host: 'etcd1'}", vec!["http://etcd1:2379"]),
        (
            "{host: 'etcd1:2400', port: 2500}",
            vec!["http://etcd1:2500"],
        ),
        (
            "{hosts: 'a:1,b', port: 3000}",
            vec!["http://a:1", "http://b:3000"],
        ),
        (
            "{hosts: ['a:1', '[::1]:2'], protocol: https}",
            vec!["https://a:1", "https://[::1]:2"],
        ),
        ("{url: 'http://etcd'}", vec!["http://etcd:2379"]),
        ("{proxy: 'http://proxy:2379'}", vec!["http://proxy:2379"]),
        (
            "{url: 'https://x:1', hosts: ['a:2'], host: 'b:3'}",
            vec!["https://x:1"],
        ),
    ] {
        let c = load_ok(&minimal_with("etcd3", section), &[]).config;
        assert_eq!(c.etcd.endpoints, want, "etcd3: {section}");
    }
    let loaded = load_ok(&format!("{MINIMAL}etcd:\n  host: other:2379\n"), &[]);
    assert_eq!(loaded.config.etcd.endpoints, vec!["http://127.0.0.1:2379"]);
    assert_warning(&loaded, "Patrol uses etcd3 and ignores etcd");
}

// ---------------------------------------------------------------------------------------------
// Tags

#[test]
fn tags_keep_order_and_types() {
    let yaml = format!(
        "{MINIMAL}tags:\n  zone: eu-1\n  nofailover: false\n  rack: 7\n  weight: 1.5\n  replicatefrom: postgresql0\n  extra: {{a: [1, 2]}}\n  clonefrom: yes\n  failover_priority: '3'\n  noloadbalance: 'Off'\n  nosync: 0\n  nostream: ~\n"
    );
    let c = load_ok(&yaml, &[]).config;
    let keys: Vec<&str> = c.tags.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec![
            "zone",
            "nofailover",
            "rack",
            "weight",
            "replicatefrom",
            "extra",
            "clonefrom",
            "failover_priority",
            "noloadbalance",
            "nosync",
            "nostream"
        ]
    );
    assert_eq!(c.tags["zone"], json!("eu-1"));
    assert_eq!(c.tags["rack"], json!(7));
    assert_eq!(c.tags["weight"], json!(1.5));
    assert_eq!(c.tags["extra"], json!({"a": [1, 2]}));
    // Boolean tags spelled as PyYAML booleans become booleans; priorities become integers.
    assert_eq!(c.tags["clonefrom"], json!(true));
    assert_eq!(c.tags["noloadbalance"], json!(false));
    assert_eq!(c.tags["failover_priority"], json!(3));
    assert_eq!(c.tags["nosync"], json!(0));
    assert_eq!(c.tags["nostream"], Value::Null);
}

#[test]
fn contradictory_tags_warn_with_patroni_text() {
    let loaded = load_ok(
        &format!("{MINIMAL}tags:\n  nofailover: true\n  failover_priority: 1\n  nosync: false\n  sync_priority: 0\n"),
        &[],
    );
    assert!(loaded.warnings.contains(
        &"Conflicting configuration between nofailover: True and failover_priority: 1. Defaulting to nofailover: True".to_string()
    ), "{:#?}", loaded.warnings);
    assert!(loaded.warnings.contains(
        &"Conflicting configuration between nosync: False and sync_priority: 0. Defaulting to nosync: False".to_string()
    ), "{:#?}", loaded.warnings);
    // Both are kept.
    assert_eq!(loaded.config.tags["nofailover"], json!(true));
    assert_eq!(loaded.config.tags["failover_priority"], json!(1));

    let consistent = load_ok(
        &format!("{MINIMAL}tags:\n  nofailover: true\n  failover_priority: 0\n  nosync: false\n  sync_priority: 2\n"),
        &[],
    );
    assert!(
        !has_warning(&consistent, "Conflicting"),
        "{:#?}",
        consistent.warnings
    );
    // Only one of the pair: no warning.
    let single = load_ok(&format!("{MINIMAL}tags:\n  failover_priority: 0\n"), &[]);
    assert!(!has_warning(&single, "Conflicting"));
}

// ---------------------------------------------------------------------------------------------
// Secrets

#[test]
fn redacted_raw_masks_every_password() {
    let yaml = format!(
        "{MINIMAL}ctl:\n  authentication: {{username: u, password: ctlpw}}\n  keyfile_password: kfpw\nraft:\n  password: raftpw\nconsul:\n  url: 'http://user:urlpw@consul:8500/x'\n"
    );
    let loaded = load_ok(
        &yaml,
        &[
            ("PATRONI_SUPERUSER_PASSWORD", "supw"),
            ("PATRONI_ETCD3_PASSWORD", "etcdpw"),
            ("PATRONI_SUPERUSER_SSLPASSWORD", "sslpw"),
        ],
    );
    let c = &loaded.config;
    let redacted = c.redacted_raw().to_string();
    for secret in [
        "ctlpw", "kfpw", "raftpw", "urlpw", "supw", "etcdpw", "sslpw",
    ] {
        assert!(
            c.raw.to_string().contains(secret),
            "raw should hold {secret}"
        );
        assert!(!redacted.contains(secret), "{secret} leaked in {redacted}");
    }
    assert_eq!(
        c.redacted_raw()["ctl"]["authentication"]["password"],
        json!("******")
    );
    assert_eq!(
        c.redacted_raw()["consul"]["url"],
        json!("http://user:******@consul:8500/x")
    );
    assert_eq!(
        c.redacted_raw()["ctl"]["authentication"]["username"],
        json!("u")
    );

    let debug = format!("{c:?}");
    for secret in [
        "ctlpw", "kfpw", "raftpw", "urlpw", "supw", "etcdpw", "sslpw",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked in Debug output");
    }
}

// ---------------------------------------------------------------------------------------------
// Keys Patrol does not implement yet: warned about, or refused (unsupported.rs)

#[test]
fn unimplemented_local_keys_are_named_in_warnings() {
    let yaml = format!(
        "{MINIMAL}  callbacks:\n    on_role_change: /bin/cb.sh\n  before_stop: /bin/drain.sh\n  create_replica_methods: [pgbackrest, basebackup]\n  pgbackrest:\n    command: /bin/restore\nlog:\n  level: INFO\n  format: '%(message)s'\ntags:\n  replicatefrom: m2\n"
    );
    let loaded = load_ok(&yaml, &[]);
    for key in [
        "postgresql.callbacks.on_role_change: not implemented by Patrol yet, ignored: callback scripts are not run",
        "postgresql.before_stop: not implemented",
        "postgresql.create_replica_methods: not implemented by Patrol yet, ignored: replicas are created with pg_basebackup only",
        "log.format: not implemented",
        "tags.replicatefrom: not implemented",
    ] {
        assert_warning(&loaded, key);
    }
    assert!(
        !has_warning(&loaded, "unknown configuration key"),
        "{:#?}",
        loaded.warnings
    );
    assert!(loaded.refusals.is_empty());
    assert!(!loaded.config.allow_unsupported);
}

#[test]
fn unimplemented_keys_from_the_environment_say_so() {
    let loaded = load_ok(
        MINIMAL,
        &[
            ("PATRONI_LOG_DIR", "/var/log/patroni"),
            ("PATRONI_LOG_FILE_NUM", "10"),
            ("PATRONI_RESTAPI_REQUEST_QUEUE_SIZE", "10"),
        ],
    );
    assert_warning(
        &loaded,
        "log.dir (from the environment): not implemented by Patrol yet, ignored",
    );
    assert_warning(
        &loaded,
        "log.file_num (from the environment): not implemented",
    );
    // Implemented (the REST API's listen backlog): no warning.
    assert!(
        !has_warning(&loaded, "request_queue_size"),
        "{:#?}",
        loaded.warnings
    );
    assert_eq!(loaded.config.restapi.request_queue_size, 10);

    // A file key overridden from the environment is from the environment too; one only in
    // the file is not.
    let loaded = load_ok(
        &format!("{MINIMAL}log:\n  dir: /a\n  file_num: 3\n"),
        &[("PATRONI_LOG_DIR", "/b")],
    );
    assert_warning(&loaded, "log.dir (from the environment)");
    assert_warning(&loaded, "log.file_num: not implemented");

    let vars = [
        ("PATRONI_NAME", "n1"),
        ("PATRONI_SCOPE", "demo"),
        ("PATRONI_RESTAPI_LISTEN", "127.0.0.1:8008"),
        ("PATRONI_ETCD3_HOSTS", "127.0.0.1:2379"),
        ("PATRONI_POSTGRESQL_LISTEN", "127.0.0.1:5432"),
        ("PATRONI_POSTGRESQL_DATA_DIR", "/pg"),
        ("PATRONI_SUPERUSER_USERNAME", "postgres"),
        ("PATRONI_REPLICATION_USERNAME", "replicator"),
        ("PATRONI_LOG_FORMAT", "%(asctime)s %(message)s"),
    ];
    let loaded = load(ConfigSource::EnvOnly, &env(&vars)).expect("env-only config loads");
    assert_warning(
        &loaded,
        "log.format (from the environment): not implemented",
    );
}

#[test]
fn keys_asking_for_guarantees_are_refused_unless_allowed() {
    let yaml = format!(
        "{MINIMAL}  pre_promote: /bin/fence.sh\nwatchdog:\n  mode: required\nbootstrap:\n  dcs:\n    synchronous_mode: on\n    synchronous_mode_strict: true\n    standby_cluster:\n      host: 10.0.0.1\n      port: 5432\n"
    );
    let loaded = load_ok(&yaml, &[]);
    let keys: Vec<&str> = loaded
        .refusals
        .iter()
        .map(|r| r.split(" = ").next().unwrap_or_default())
        .collect();
    assert_eq!(
        keys,
        vec![
            "watchdog.mode",
            "postgresql.pre_promote",
            "bootstrap.dcs.synchronous_mode",
            "bootstrap.dcs.synchronous_mode_strict",
            "bootstrap.dcs.standby_cluster",
        ],
        "{:#?}",
        loaded.refusals
    );
    for r in &loaded.refusals {
        assert!(
            r.contains("so it refuses to start (--allow-unsupported or PATROL_ALLOW_UNSUPPORTED=1 starts it anyway"),
            "{r}"
        );
    }
    assert_eq!(
        loaded.refusals[2],
        "bootstrap.dcs.synchronous_mode = on: synchronous replication is not implemented: commits would be acknowledged before any replica has them, and a failover could lose them; Patrol does not give this guarantee yet, so it refuses to start (--allow-unsupported or PATROL_ALLOW_UNSUPPORTED=1 starts it anyway; see docs/patroni-compatibility.md)"
    );
    // What a reload sees: an error naming every key.
    let err = loaded.clone().usable().expect_err("refused");
    assert!(matches!(err, ConfigError::Unsupported { .. }));
    assert!(
        err.to_string().contains("watchdog.mode = required: ")
            && err.to_string().contains("bootstrap.dcs.standby_cluster = ")
    );

    // The override: the same keys become warnings, and the config says so.
    for yes in ["1", "true", "on", "yes"] {
        let allowed = load_ok(&yaml, &[("PATROL_ALLOW_UNSUPPORTED", yes)]);
        assert!(allowed.refusals.is_empty(), "{yes}");
        assert!(allowed.config.allow_unsupported);
        assert_warning(
            &allowed,
            "watchdog.mode = required: Patrol has no watchdog support",
        );
        assert_warning(
            &allowed,
            "runs without it (--allow-unsupported or PATROL_ALLOW_UNSUPPORTED=1 is set)",
        );
        assert!(allowed.usable().is_ok());
    }
    for no in ["0", "false", "", "maybe"] {
        let refused = load_ok(&yaml, &[("PATROL_ALLOW_UNSUPPORTED", no)]);
        assert_eq!(refused.refusals.len(), 5, "{no}");
        assert!(!refused.config.allow_unsupported);
    }
    // Off values ask for nothing.
    let off = load_ok(
        &format!("{MINIMAL}watchdog:\n  mode: off\nbootstrap:\n  dcs:\n    synchronous_mode: off\n    synchronous_mode_strict: false\n"),
        &[],
    );
    assert!(
        off.refusals.is_empty() && off.warnings.is_empty(),
        "{off:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Garbage input never panics

#[test]
fn garbage_documents_are_errors() {
    for text in [
        "- a\n- b\n",
        "just a scalar",
        "42",
        "true",
        "[1, 2, 3]",
        "{",
        "name: [unclosed",
        "? [a, b]\n: c\n",
        "\t\tname: tab",
        "name: &a [*a]",
        "%YAML 1.2\n---\nname: x\n---\nname: y\n",
        "name: !!binary aGVsbG8=\nscope: 1\n",
        "name: .nan\nscope: .inf\n",
        "name: {a: 1}\nscope: [x]\nrestapi: 5\npostgresql: 'x'\netcd3: true\n",
        "\u{0}",
        "",
    ] {
        let res = load_yaml(text, &[]);
        assert!(res.is_err(), "{text:?} should not load");
    }
}

/// Replace every node of valid documents by values of every type: loading must return
/// (Ok or Err) without panicking.
#[test]
fn wrong_types_everywhere_never_panic() {
    let replacements = [
        json!(null),
        json!(true),
        json!(-1),
        json!(0),
        json!(99_999_999_999_u64),
        json!(1.5),
        json!(""),
        json!("abc"),
        json!("yes"),
        json!(":"),
        json!("[::1"),
        json!([]),
        json!(["a", {"b": 1}]),
        json!({}),
        json!({"x": [1]}),
    ];
    for base in [SEED, POSTGRES0, MINIMAL] {
        let doc: Value = serde_yaml_ng::from_str(base).expect("base parses");
        let mut paths = Vec::new();
        collect_paths(&doc, &mut Vec::new(), &mut paths);
        for path in &paths {
            for replacement in &replacements {
                let mut mutated = doc.clone();
                replace_at(&mut mutated, path, replacement.clone());
                let Value::Object(map) = mutated else {
                    continue;
                };
                // Straight to the parser (no temp files), as `load` would after merging.
                let _ = super::parse::build(&map, "/home/x");
            }
        }
        // And whole-document replacements through the YAML front door.
        for replacement in &replacements {
            let text = serde_yaml_ng::to_string(replacement).expect("serialise");
            let _ = load(
                ConfigSource::EnvOnly,
                &env(&[("PATRONI_CONFIGURATION", &text)]),
            );
        }
    }
}

fn collect_paths(v: &Value, cur: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                cur.push(k.clone());
                out.push(cur.clone());
                collect_paths(child, cur, out);
                cur.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                cur.push(i.to_string());
                out.push(cur.clone());
                collect_paths(child, cur, out);
                cur.pop();
            }
        }
        _ => {}
    }
}

fn replace_at(v: &mut Value, path: &[String], replacement: Value) {
    let mut cur = v;
    for p in &path[..path.len() - 1] {
        cur = match cur {
            Value::Object(m) => m.get_mut(p).expect("path exists"),
            Value::Array(a) => &mut a[p.parse::<usize>().expect("index")],
            _ => return,
        };
    }
    let last = &path[path.len() - 1];
    match cur {
        Value::Object(m) => {
            m.insert(last.clone(), replacement);
        }
        Value::Array(a) => a[last.parse::<usize>().expect("index")] = replacement,
        _ => {}
    }
}

#[test]
fn garbage_environment_never_panics() {
    let nasty = [
        "",
        "[",
        "{",
        "- ",
        "]",
        "::::",
        "a: [b",
        "\u{0}",
        "%(",
        "[[[[]]]]",
        "99999999999999999999999",
    ];
    let keys = [
        "PATRONI_NAME",
        "PATRONI_RESTAPI_LISTEN",
        "PATRONI_RESTAPI_ALLOWLIST",
        "PATRONI_RESTAPI_HTTP_EXTRA_HEADERS",
        "PATRONI_RESTAPI_REQUEST_QUEUE_SIZE",
        "PATRONI_CTL_INSECURE",
        "PATRONI_ETCD3_HOSTS",
        "PATRONI_ETCD3_PORT",
        "PATRONI_ETCD3_URL",
        "PATRONI_LOG_FORMAT",
        "PATRONI_LOG_LOGGERS",
        "PATRONI_RAFT_PARTNER_ADDRS",
        "PATRONI_KUBERNETES_LABELS",
        "PATRONI_CITUS_GROUP",
        "PATRONI_",
        "PATRONI__HOST",
        "PATRONI_POSTGRESQL_LISTEN",
        "PATRONI_SUPERUSER_USERNAME",
    ];
    for value in nasty {
        let mut vars: Vec<(&str, &str)> = keys.iter().map(|k| (*k, value)).collect();
        vars.push(("PATRONI_SCOPE", "s"));
        let _ = load_yaml(MINIMAL, &vars);
        let _ = load(ConfigSource::EnvOnly, &env(&vars));
    }
}

#[test]
fn non_string_mapping_keys_are_stringified() {
    let yaml = format!("{MINIMAL}tags:\n  1: one\n  true: yes-key\n");
    let c = load_ok(&yaml, &[]).config;
    assert_eq!(c.tags["1"], json!("one"));
    assert_eq!(c.tags["true"], json!("yes-key"));
}
