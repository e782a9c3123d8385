//! Field semantics, tags and secrets.

use super::*;

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
        "{MINIMAL}  basebackup:\n    max-rate: 100M\n    checkpoint: fast\n    compress: 9\n    dbname: x\n"
    );
    let loaded = load_ok(&yaml, &[]);
    assert_eq!(
        loaded.config.postgresql.basebackup,
        vec!["--max-rate=100M", "--checkpoint=fast"]
    );
    // Client-side compression and the connection are Patrol's (Patroni's rules on 15+).
    assert_warning(&loaded, "--compress=9: only server-side compression");
    assert_warning(&loaded, "option 'dbname' is not allowed");
    let yaml = format!("{MINIMAL}  basebackup:\n    compress: server-gzip:5\n");
    assert_eq!(
        load_ok(&yaml, &[]).config.postgresql.basebackup,
        vec!["--compress=server-gzip:5"]
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
        b.custom.as_ref().map(|m| m.command.clone()),
        Some(vec!["/bin/restore.sh".to_string()])
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
        Vec::<&str>::new(),
        "{:#?}",
        loaded.warnings
    );
    assert_eq!(loaded.refusals, Vec::<String>::new());

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
    assert_eq!(pg.replica_methods["wal_e"].command, ["/bin/wale_restore"]);
    assert!(pg.replica_methods["wal_e"].no_leader);
    // A method without a section runs its own name, as in Patroni.
    assert_eq!(pg.replica_methods["missing"].command, ["missing"]);
    assert!(!pg.replica_methods.contains_key("basebackup"));
    assert_warning(&loaded, "postgresql.missing.command is not set");
    // The old singular name.
    let yaml = format!("{MINIMAL}  create_replica_method: [wal_e]\n  wal_e:\n    command: w\n");
    let loaded = load_ok(&yaml, &[]);
    assert_eq!(loaded.config.postgresql.create_replica_methods, ["wal_e"]);
    assert!(!has_warning(&loaded, "unknown configuration key"));
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
    // Boolean tags spelled as PyYAML booleans become booleans; priorities written as strings
    // stay strings (Patroni publishes them as configured) and read as integers.
    assert_eq!(c.tags["clonefrom"], json!(true));
    assert_eq!(c.tags["noloadbalance"], json!(false));
    assert_eq!(c.tags["failover_priority"], json!("3"));
    assert_eq!(patrol_dcs::tags_failover_priority(&c.tags), 3);
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
