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
        "{MINIMAL}log:\n  level: DEBUG\n  dir: /var/log\nconsul:\n  host: x:8500\nwatchdog:\n  mode: required\n  device: /dev/watchdog\nthread_pool_size: 5\nttl: 40\n"
    );
    let loaded = load_ok(&yaml, &[]);
    assert_warning(&loaded, "the consul section is ignored");
    assert_warning(&loaded, "ttl is a dynamic configuration setting");
    assert!(!has_warning(&loaded, "log."), "{:#?}", loaded.warnings);
    assert_eq!(
        loaded.config.log.dir.as_deref(),
        Some(Path::new("/var/log"))
    );
    assert!(!has_warning(&loaded, "thread_pool_size"));
    assert!(loaded.refusals.is_empty(), "{:#?}", loaded.refusals);
    assert_eq!(loaded.config.watchdog.mode, WatchdogMode::Required);

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
    assert_eq!(unknown.config.watchdog.mode, WatchdogMode::Off);
}

/// Patroni's `parse_mode`, `WatchdogConfig.timeout` and `timing_slack`.
#[test]
fn watchdog_section_is_read_as_patroni_reads_it() {
    let default = load_ok(MINIMAL, &[]).config.watchdog;
    assert_eq!(default, Watchdog::default());
    assert_eq!(default.mode, WatchdogMode::Automatic);
    assert_eq!(default.device, std::path::Path::new("/dev/watchdog"));
    assert_eq!(
        (default.timeout(30), default.timing_slack(30, 10)),
        (25, 15)
    );

    for (mode, want) in [
        ("required", WatchdogMode::Required),
        ("Require", WatchdogMode::Required),
        ("auto", WatchdogMode::Automatic),
        ("AUTOMATIC", WatchdogMode::Automatic),
        ("off", WatchdogMode::Off),
        ("disabled", WatchdogMode::Off),
        ("disable", WatchdogMode::Off),
        ("false", WatchdogMode::Off),
        ("true", WatchdogMode::Off),
    ] {
        let l = load_ok(&format!("{MINIMAL}watchdog:\n  mode: {mode}\n"), &[]);
        assert_eq!(l.config.watchdog.mode, want, "{mode}");
    }
    // `true` is no mode in Patroni either (str(True) is "True"): off, with a warning.
    let t = load_ok(&format!("{MINIMAL}watchdog:\n  mode: true\n"), &[]);
    assert_warning(&t, "watchdog.mode the boolean true is not recognized");
    // An empty section is Patroni's `{mode: automatic}`.
    let empty = load_ok(&format!("{MINIMAL}watchdog:\n"), &[]);
    assert_eq!(empty.config.watchdog, Watchdog::default());

    let l = load_ok(
        &format!("{MINIMAL}watchdog:\n  mode: required\n  device: /tmp/wd.fifo\n  safety_margin: -1\n  driver: testing\n"),
        &[],
    );
    let wd = l.config.watchdog;
    assert_eq!(
        (wd.mode, wd.driver, wd.device.to_str()),
        (
            WatchdogMode::Required,
            WatchdogDriver::Testing,
            Some("/tmp/wd.fifo")
        )
    );
    assert_eq!(
        (wd.timeout(30), wd.timeout(31), wd.timing_slack(20, 10)),
        (15, 15, 0)
    );
    let margin = |m: i64| Watchdog {
        safety_margin: m,
        ..Watchdog::default()
    };
    assert_eq!(margin(0).timeout(20), 20);
    assert_eq!(margin(10).timeout(30), 20);
    // ttl shorter than 2 x loop_wait: no slack left.
    assert!(margin(5).timing_slack(10, 10) < 0);

    let odd = load_ok(&format!("{MINIMAL}watchdog:\n  driver: acme\n"), &[]);
    assert_eq!(odd.config.watchdog.driver, WatchdogDriver::Unknown);
    assert_warning(&odd, "watchdog.driver \"acme\" is not known");
    let err = load_err(
        &format!("{MINIMAL}watchdog:\n  mode: required\n  driver: acme\n"),
        &[],
    );
    assert!(err.contains("watchdog.driver"), "{err}");
    for bad in ["-2", "five", "1.5"] {
        let err = load_err(
            &format!("{MINIMAL}watchdog:\n  safety_margin: {bad}\n"),
            &[],
        );
        assert!(err.contains("watchdog.safety_margin"), "{bad}: {err}");
    }
}
