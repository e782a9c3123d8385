//! Example files (the seed's, a Patroni `postgres0.yml`) and the warnings for unknown and
//! unsupported keys.

use super::*;

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
    // Patroni's own example restores WAL from an archive (`recovery_conf`): implemented.
    assert_eq!(loaded.warnings, Vec::<String>::new());
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
