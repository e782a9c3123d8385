//! The `PATRONI_*` environment, every family, and `PATRONI_CONFIGURATION`.

use super::*;

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

/// Every `PATRONI_LOG_*` variable, converted as Patroni converts it: integers with
/// `parse_int` (`0640` octal), a format without `%(...)` as a YAML list, mappings as YAML.
#[test]
fn env_log_section() {
    use crate::log::{LogAttr, LogFormat, LogLevel, LogType};
    let c = load_ok(
        MINIMAL,
        &[
            ("PATRONI_LOG_TYPE", "json"),
            ("PATRONI_LOG_LEVEL", "WARNING"),
            ("PATRONI_LOG_TRACEBACK_LEVEL", "DEBUG"),
            ("PATRONI_LOG_FORMAT", "message, {levelname: level}"),
            ("PATRONI_LOG_DATEFORMAT", "%H:%M:%S"),
            ("PATRONI_LOG_STATIC_FIELDS", "app: patroni, dc: 1"),
            ("PATRONI_LOG_MAX_QUEUE_SIZE", "50"),
            ("PATRONI_LOG_DIR", "/var/log/patroni"),
            ("PATRONI_LOG_MODE", "0640"),
            ("PATRONI_LOG_FILE_SIZE", "0x400"),
            ("PATRONI_LOG_FILE_NUM", "2"),
            ("PATRONI_LOG_LOGGERS", "patroni.ha: DEBUG"),
            ("PATRONI_LOG_DEDUPLICATE_HEARTBEAT_LOGS", "on"),
        ],
    );
    assert!(c.warnings.is_empty(), "{:#?}", c.warnings);
    let log = c.config.log;
    assert_eq!(log.kind, LogType::Json);
    assert_eq!(log.level, LogLevel::Warning);
    assert_eq!(log.traceback_level, LogLevel::Debug);
    let LogFormat::Json(fields) = &log.format else {
        panic!("json fields: {:?}", log.format)
    };
    let keys: Vec<(Option<LogAttr>, &str)> =
        fields.iter().map(|f| (f.attr, f.key.as_str())).collect();
    assert_eq!(
        keys,
        vec![
            (Some(LogAttr::Message), "message"),
            (Some(LogAttr::Levelname), "level")
        ]
    );
    assert_eq!(log.dateformat.as_deref(), Some("%H:%M:%S"));
    assert_eq!(
        Value::Object(log.static_fields),
        json!({"app": "patroni", "dc": 1})
    );
    assert_eq!(log.max_queue_size, 50);
    assert_eq!(log.dir, Some(PathBuf::from("/var/log/patroni")));
    assert_eq!(log.mode, Some(0o640));
    assert_eq!((log.file_size, log.file_num), (1024, 2));
    assert_eq!(
        log.loggers[0].targets,
        vec!["patrol_agent::ha", "patrol_ha"]
    );
    assert_eq!(log.loggers[0].level, Some(LogLevel::Debug));

    let bad = load_err(MINIMAL, &[("PATRONI_LOG_LEVEL", "LOUD")]);
    assert!(bad.contains("log.level: expected one of DEBUG"), "{bad}");
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
