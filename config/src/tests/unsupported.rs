//! Keys Patrol does not implement yet: warned about, or refused (`unsupported.rs`).

use super::*;

#[test]
fn unimplemented_local_keys_are_named_in_warnings() {
    let yaml = format!(
        "{MINIMAL}  callbacks:\n    on_start: /bin/cb.sh\n    on_role_change: /bin/cb.sh\n  before_stop: /bin/drain.sh\n  create_replica_methods: [pgbackrest, basebackup]\n  pgbackrest:\n    command: /bin/restore\n  custom_conf: /etc/pg.conf\nlog:\n  level: INFO\n  format: '%(message)s'\ntags:\n  replicatefrom: m2\n"
    );
    let loaded = load_ok(&yaml, &[]);
    assert_warning(&loaded, "postgresql.custom_conf: not implemented");
    assert!(
        !has_warning(&loaded, "log."),
        "the log section is implemented: {:#?}",
        loaded.warnings
    );
    assert!(
        !has_warning(&loaded, "replicatefrom"),
        "cascading replication is implemented: {:#?}",
        loaded.warnings
    );
    assert!(
        !has_warning(&loaded, "create_replica_methods"),
        "custom replica methods are implemented: {:#?}",
        loaded.warnings
    );
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
    const SSLCRL: &str = "postgresql.authentication.superuser.sslcrl";
    let loaded = load_ok(
        MINIMAL,
        &[
            ("PATRONI_SUPERUSER_SSLCRL", "/crl"),
            ("PATRONI_LOG_DIR", "/var/log/patroni"),
            ("PATRONI_RESTAPI_REQUEST_QUEUE_SIZE", "10"),
        ],
    );
    assert_warning(
        &loaded,
        &format!("{SSLCRL} (from the environment): not implemented by Patrol yet, ignored"),
    );
    // Implemented (the REST API's listen backlog, log files): no warning.
    for implemented in ["request_queue_size", "log.dir"] {
        assert!(!has_warning(&loaded, implemented), "{:#?}", loaded.warnings);
    }
    assert_eq!(loaded.config.restapi.request_queue_size, 10);
    assert_eq!(
        loaded.config.log.dir.as_deref(),
        Some(Path::new("/var/log/patroni"))
    );

    // A file key overridden from the environment is from the environment too; one only in
    // the file is not.
    let yaml = format!(
        "{}  custom_conf: /etc/pg.conf\n",
        MINIMAL.replace(
            "      username: postgres\n",
            "      username: postgres\n      sslcrl: /a\n"
        )
    );
    let loaded = load_ok(&yaml, &[("PATRONI_SUPERUSER_SSLCRL", "/b")]);
    assert_warning(&loaded, &format!("{SSLCRL} (from the environment)"));
    assert_warning(&loaded, "postgresql.custom_conf: not implemented");

    let vars = [
        ("PATRONI_NAME", "n1"),
        ("PATRONI_SCOPE", "demo"),
        ("PATRONI_RESTAPI_LISTEN", "127.0.0.1:8008"),
        ("PATRONI_ETCD3_HOSTS", "127.0.0.1:2379"),
        ("PATRONI_POSTGRESQL_LISTEN", "127.0.0.1:5432"),
        ("PATRONI_POSTGRESQL_DATA_DIR", "/pg"),
        ("PATRONI_SUPERUSER_USERNAME", "postgres"),
        ("PATRONI_SUPERUSER_SSLCRL", "/crl"),
        ("PATRONI_REPLICATION_USERNAME", "replicator"),
    ];
    let loaded = load(ConfigSource::EnvOnly, &env(&vars)).expect("env-only config loads");
    assert_warning(
        &loaded,
        &format!("{SSLCRL} (from the environment): not implemented"),
    );
}

#[test]
fn keys_asking_for_guarantees_are_refused_unless_allowed() {
    let yaml = format!(
        "{MINIMAL}  pre_promote: /bin/fence.sh\ncitus:\n  group: 0\n  database: citus\nbootstrap:\n  dcs:\n    synchronous_mode: on\n    synchronous_mode_strict: true\n    standby_cluster:\n      host: 10.0.0.1\n      port: 5432\n"
    );
    let loaded = load_ok(&yaml, &[]);
    let keys: Vec<&str> = loaded
        .refusals
        .iter()
        .map(|r| r.split(" = ").next().unwrap_or_default())
        .collect();
    assert_eq!(keys, vec!["citus"], "{:#?}", loaded.refusals);
    for r in &loaded.refusals {
        assert!(
            r.contains("so it refuses to start (--allow-unsupported or PATROL_ALLOW_UNSUPPORTED=1 starts it anyway"),
            "{r}"
        );
    }
    assert_eq!(
        loaded.refusals[0],
        "citus = {\"group\":0,\"database\":\"citus\"}: Citus clusters (a coordinator and worker groups registered with each other) are not managed: the node would run as a plain PostgreSQL cluster; Patrol does not give this guarantee yet, so it refuses to start (--allow-unsupported or PATROL_ALLOW_UNSUPPORTED=1 starts it anyway; see docs/patroni-compatibility.md)"
    );
    // What a reload sees: an error naming every key.
    let err = loaded.clone().usable().expect_err("refused");
    assert!(matches!(err, ConfigError::Unsupported { .. }));
    assert!(err.to_string().contains("citus = ") && !err.to_string().contains("pre_promote"),);

    // The override: the same keys become warnings, and the config says so.
    for yes in ["1", "true", "on", "yes"] {
        let allowed = load_ok(&yaml, &[("PATROL_ALLOW_UNSUPPORTED", yes)]);
        assert!(allowed.refusals.is_empty(), "{yes}");
        assert!(allowed.config.allow_unsupported);
        assert_warning(
            &allowed,
            "citus = {\"group\":0,\"database\":\"citus\"}: Citus clusters",
        );
        assert_warning(
            &allowed,
            "runs without it (--allow-unsupported or PATROL_ALLOW_UNSUPPORTED=1 is set)",
        );
        assert!(allowed.usable().is_ok());
    }
    for no in ["0", "false", "", "maybe"] {
        let refused = load_ok(&yaml, &[("PATROL_ALLOW_UNSUPPORTED", no)]);
        assert_eq!(refused.refusals.len(), 1, "{no}");
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
