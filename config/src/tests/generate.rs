//! `--generate-sample-config` and `--generate-config` (the pure part): the cases of Patroni's
//! `tests/test_config_generator.py`, the DSN parser's doctests, the layout, and that what is
//! written loads again.

use serde_json::json;

use super::*;
use crate::generate::*;

fn host() -> HostAddress {
    HostAddress {
        hostname: "test_hostname".into(),
        ip: "1.9.8.4".into(),
    }
}

/// Patroni's test environment (`TestGenerateConfig.setUp`).
fn patroni_env() -> BTreeMap<String, String> {
    env(&[
        ("PATRONI_SCOPE", "scope_from_env"),
        ("PATRONI_POSTGRESQL_BIN_DIR", "/bin/from/env"),
        ("PATRONI_SUPERUSER_USERNAME", "su_user_from_env"),
        ("PATRONI_SUPERUSER_PASSWORD", "su_pwd_from_env"),
        ("PATRONI_REPLICATION_USERNAME", "repl_user_from_env"),
        ("PATRONI_REPLICATION_PASSWORD", "repl_pwd_from_env"),
        ("PATRONI_REWIND_USERNAME", "rewind_user_from_env"),
        ("PGUSER", "pguser_from_env"),
        ("PGPASSWORD", "pguser_pwd_from_env"),
        ("PATRONI_RESTAPI_CONNECT_ADDRESS", "localhost:8080"),
        ("PATRONI_RESTAPI_LISTEN", "localhost:8080"),
        (
            "PATRONI_POSTGRESQL_BIN_POSTGRES",
            "custom_postgres_bin_from_env",
        ),
        ("PATRONI_ETCD3_HOSTS", "10.0.0.1:2379"),
    ])
}

fn sample_for(env: &BTreeMap<String, String>, pg_major: u32) -> Map<String, Value> {
    let env_config = env_configuration(env).expect("environment");
    sample(template(&host(), &env_config), pg_major)
}

/// Patroni's expected sample for PostgreSQL 17 (`test_generate_sample_config_17`).
#[test]
fn sample_takes_the_environment_and_patronis_defaults() {
    let got = Value::Object(sample_for(&patroni_env(), 170_000));
    let expected = json!({
        "scope": "scope_from_env",
        "name": "test_hostname",
        "log": {
            "type": "plain",
            "format": "%(asctime)s %(levelname)s: %(message)s",
            "level": "INFO",
            "traceback_level": "ERROR",
            "max_queue_size": 1000
        },
        "restapi": {"connect_address": "localhost:8080", "listen": "localhost:8080"},
        "etcd3": {"hosts": ["10.0.0.1:2379"]},
        "bootstrap": {"dcs": {
            "ttl": 30, "loop_wait": 10, "retry_timeout": 10,
            "postgresql": {
                "use_slots": true,
                "use_pg_rewind": true,
                "parameters": {
                    "wal_level": "replica", "hot_standby": "on", "max_connections": 100,
                    "max_wal_senders": 10, "max_prepared_transactions": 0,
                    "max_locks_per_transaction": 64, "track_commit_timestamp": "off",
                    "max_replication_slots": 10, "max_worker_processes": 8,
                    "wal_log_hints": "on", "wal_keep_size": "128MB"
                }
            }
        }},
        "postgresql": {
            "connect_address": "1.9.8.4:5432",
            "data_dir": NO_VALUE,
            "listen": "1.9.8.4:5432",
            "pg_hba": ["host all all all scram-sha-256",
                       "host replication repl_user_from_env all scram-sha-256"],
            "authentication": {
                "superuser": {"username": "su_user_from_env", "password": "su_pwd_from_env"},
                "replication": {"username": "repl_user_from_env", "password": "repl_pwd_from_env"},
                "rewind": {"username": "rewind_user_from_env", "password": NO_VALUE}
            },
            "bin_dir": "/bin/from/env",
            "bin_name": {"postgres": "custom_postgres_bin_from_env"},
            "parameters": {"password_encryption": "scram-sha-256"}
        },
        "tags": {
            "failover_priority": 1, "sync_priority": 1, "noloadbalance": false,
            "clonefrom": true, "nosync": false, "nostream": false
        }
    });
    assert_eq!(got, expected);
}

/// `test_generate_sample_config_pre_13_dir_creation`: 9.4 gets md5, `wal_keep_segments`,
/// `hot_standby`, and no rewind password.
#[test]
fn sample_for_an_old_server() {
    let got = sample_for(&patroni_env(), 90_400);
    let dcs_params = &got["bootstrap"]["dcs"]["postgresql"]["parameters"];
    assert_eq!(dcs_params["wal_keep_segments"], json!(8));
    assert_eq!(dcs_params.get("wal_keep_size"), None);
    assert_eq!(dcs_params["wal_level"], json!("hot_standby"));
    assert_eq!(
        got["postgresql"]["pg_hba"],
        json!([
            "host all all all md5",
            "host replication repl_user_from_env all md5"
        ])
    );
    assert_eq!(
        got["postgresql"]["authentication"]["rewind"],
        json!({"username": "rewind_user_from_env"})
    );
}

#[test]
fn sample_without_environment_names_the_local_etcd_and_a_rewind_user() {
    let got = sample_for(&no_env(), 150_000);
    assert_eq!(got["scope"], json!(NO_VALUE));
    assert_eq!(got["etcd3"], json!({"hosts": [DEFAULT_ETCD]}));
    assert_eq!(got["restapi"]["listen"], json!("1.9.8.4:8008"));
    assert_eq!(
        got["postgresql"]["authentication"]["rewind"],
        json!({"username": "rewind_user", "password": NO_VALUE})
    );
    assert_eq!(got["postgresql"]["bin_dir"], json!(""));
    let v6 = HostAddress {
        hostname: "h".into(),
        ip: "fe80::1".into(),
    };
    let t = template(&v6, &Map::new());
    assert_eq!(t["postgresql"]["listen"], json!("[fe80::1]:5432"));
}

#[test]
fn patroni_configuration_replaces_the_variables_but_not_bootstrap_dcs() {
    let e = env(&[
        (
            "PATRONI_CONFIGURATION",
            "scope: from_yaml\nbootstrap: {dcs: {ttl: 99}}\netcd3: {host: 10.1.1.1:2379}",
        ),
        ("PATRONI_SCOPE", "ignored"),
    ]);
    let got = sample_for(&e, 150_000);
    assert_eq!(got["scope"], json!("from_yaml"));
    assert_eq!(got["bootstrap"]["dcs"]["ttl"], json!(30));
    assert_eq!(got["etcd3"], json!({"host": "10.1.1.1:2379"}));
}

#[test]
fn postgres_version_output() {
    assert_eq!(
        major_version_number("postgres (PostgreSQL) 15.4 (Debian 15.4-1)"),
        Some(150_000)
    );
    assert_eq!(
        major_version_number("postgres (PostgreSQL) 17.0"),
        Some(170_000)
    );
    assert_eq!(
        major_version_number("postgres (PostgreSQL) 9.6.24"),
        Some(90_600)
    );
    assert_eq!(
        major_version_number("postgres (PostgreSQL) 18beta1"),
        Some(180_000)
    );
    assert_eq!(major_version_number("garbage"), None);
    let t = template(&host(), &env_configuration(&patroni_env()).expect("env"));
    assert_eq!(
        sample_postgres_binary(&t),
        PathBuf::from("/bin/from/env/custom_postgres_bin_from_env")
    );
    assert_eq!(
        sample_postgres_binary(&template(&host(), &Map::new())),
        PathBuf::from("postgres")
    );
}

/// Patroni's doctests of `parse_dsn`, `_conninfo_uri_parse` and `_conninfo_dsn_parse`.
#[test]
fn dsn_strings() {
    let defaults = [
        ("sslmode", "prefer"),
        ("gssencmode", "prefer"),
        ("channel_binding", "prefer"),
        ("sslnegotiation", "postgres"),
    ];
    let with_defaults = |pairs: &[(&str, &str)]| {
        let mut m = env(&defaults);
        m.extend(env(pairs));
        Some(m)
    };
    assert_eq!(
        parse_dsn("postgresql://foo/postgres"),
        with_defaults(&[("dbname", "postgres"), ("host", "foo")])
    );
    assert_eq!(
        parse_dsn(" host = 'host' dbname = db\\ name requiressl=1 "),
        with_defaults(&[
            ("dbname", "db name"),
            ("host", "host"),
            ("sslmode", "require")
        ])
    );
    assert_eq!(parse_dsn("requiressl = 0\\"), with_defaults(&[]));
    assert_eq!(parse_dsn("foo=bar"), with_defaults(&[("foo", "bar")]));
    assert_eq!(
        parse_dsn("postgresql://u%2Fse:pass@:%2f123/db%2Fsdf?application_name=mya%2Fpp&ssl=true"),
        with_defaults(&[
            ("application_name", "mya/pp"),
            ("dbname", "db/sdf"),
            ("sslmode", "require"),
            ("password", "pass"),
            ("port", "/123"),
            ("user", "u/se"),
        ])
    );
    assert_eq!(
        parse_dsn("postgresql://u:p@[::1]:5433,h2/db"),
        with_defaults(&[
            ("dbname", "db"),
            ("host", "::1,h2"),
            ("port", "5433,"),
            ("password", "p"),
            ("user", "u"),
        ])
    );
    for bad in [
        "host=a foo = '",
        "host=a foo = ",
        "1",
        "host:foo port:bar user:foobar",
        "",
        "postgresql://h/%zz",
    ] {
        assert_eq!(parse_dsn(bad), None, "{bad:?}");
    }
}

/// The settings rows of Patroni's `MockCursor` for `--generate-config`.
fn rows() -> Vec<(String, String)> {
    [
        ("data_directory", "data"),
        ("cluster_name", "my_cluster"),
        ("archive_command", "my archive command"),
        ("hba_file", "data/pg_hba.conf"),
        ("ident_file", "data/pg_ident.conf"),
        ("config_file", "data/postgresql.conf"),
        ("port", "1984"),
        ("listen_addresses", "6.6.6.6"),
        ("max_connections", "42"),
        ("max_locks_per_transaction", "73"),
        ("max_replication_slots", "21"),
        ("max_wal_senders", "37"),
        ("wal_level", "replica"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect()
}

fn running(env: &BTreeMap<String, String>, dsn: Option<&str>) -> Running {
    let env_config = env_configuration(env).expect("environment");
    Running::new(template(&host(), &env_config), env_config, dsn).expect("dsn parses")
}

/// `test_generate_config_running_instance_14` and `_17`.
#[test]
fn running_instance_with_a_dsn() {
    let env = patroni_env();
    for (version, sslnegotiation) in [(140_000, false), (170_000, true)] {
        let mut r = running(&env, Some("host=foo port=bar user=foobar password=qwerty"));
        let su = r.superuser(&env, "os_user");
        assert_eq!(su.username, "foobar");
        assert_eq!(su.password.as_deref(), Some("qwerty"));
        r.connected(version, true).expect("superuser");
        r.settings(&rows(), &env);
        assert_eq!(r.hba_file(), Some(PathBuf::from("data/pg_hba.conf")));
        r.set_hba("host all all all md5\n#host all all all md5\n  host all all all md5\n\nhostall all all md5\n");
        assert_eq!(r.ident_file(), Some(PathBuf::from("data/pg_ident.conf")));
        r.set_ident("# something very interesting\n  \n");
        r.set_bin_dir("/bin/dir/from/running");
        let got = r.finish();
        let mut su = json!({
            "username": "foobar", "password": "qwerty", "channel_binding": "prefer",
            "gssencmode": "prefer", "sslmode": "prefer", "sslnegotiation": "postgres"
        });
        if !sslnegotiation {
            su.as_object_mut().expect("map").remove("sslnegotiation");
        }
        assert_eq!(got["scope"], json!("my_cluster"));
        assert_eq!(
            got["postgresql"],
            json!({
                "connect_address": "1.9.8.4:bar",
                "listen": "6.6.6.6:1984",
                "data_dir": "data",
                "bin_dir": "/bin/dir/from/running",
                "bin_name": {"postgres": "custom_postgres_bin_from_env"},
                "parameters": {
                    "archive_command": "my archive command",
                    "hba_file": "data/pg_hba.conf",
                    "ident_file": "data/pg_ident.conf",
                    "config_file": "data/postgresql.conf"
                },
                "pg_hba": ["host all all all md5", "host all all all md5"],
                "authentication": {
                    "superuser": su,
                    "replication": {"username": NO_VALUE, "password": NO_VALUE}
                }
            }),
            "server {version}"
        );
        assert_eq!(
            got["bootstrap"]["dcs"]["postgresql"],
            json!({"use_slots": true, "parameters": {
                "wal_level": "replica", "hot_standby": "on", "max_connections": "42",
                "max_wal_senders": "37", "max_prepared_transactions": 0,
                "max_locks_per_transaction": "73", "track_commit_timestamp": "off",
                "max_replication_slots": "21", "max_worker_processes": 8, "wal_log_hints": "on"
            }})
        );
    }
}

/// `test_generate_config_running_instance_17_connect_from_env`, and the fallbacks for the
/// superuser's name and password.
#[test]
fn running_instance_from_the_environment() {
    let mut vars = patroni_env();
    vars.insert("PGCHANNELBINDING".into(), "disable".into());
    vars.insert("PGSSLNEGOTIATION".into(), "direct".into());
    vars.insert("PGPORT".into(), "1984".into());
    let mut r = running(&vars, None);
    let su = r.superuser(&vars, "os_user");
    assert_eq!(su.username, "pguser_from_env");
    assert_eq!(su.password.as_deref(), Some("pguser_pwd_from_env"));
    r.connected(170_000, true).expect("superuser");
    r.settings(&rows(), &vars);
    let got = r.finish();
    assert_eq!(got["postgresql"]["connect_address"], json!("1.9.8.4:1984"));
    assert_eq!(
        got["postgresql"]["authentication"]["superuser"],
        json!({"username": "pguser_from_env", "password": "pguser_pwd_from_env",
               "channel_binding": "disable", "sslnegotiation": "direct"})
    );

    // Without PGUSER/PGPASSWORD: the PATRONI_SUPERUSER_* variables, then the OS user and no
    // password (the caller asks for one).
    vars.remove("PGUSER");
    vars.remove("PGPASSWORD");
    let mut r = running(&vars, None);
    let su = r.superuser(&vars, "os_user");
    assert_eq!(
        (su.username.as_str(), su.password.as_deref()),
        ("su_user_from_env", Some("su_pwd_from_env"))
    );
    let bare = env(&[]);
    let mut r = running(&bare, None);
    let mut su = r.superuser(&bare, "os_user");
    assert_eq!(
        (su.username.as_str(), su.password.as_deref()),
        ("os_user", None)
    );
    r.set_password(&mut su, "typed".into());
    assert_eq!(
        r.finish()["postgresql"]["authentication"]["superuser"],
        json!({"username": "os_user", "password": "typed"})
    );
}

#[test]
fn running_instance_errors() {
    let e = running_err(Some("host:foo port:bar user:foobar"));
    assert_eq!(e.to_string(), "Failed to parse DSN string");
    let env = patroni_env();
    let mut r = running(&env, Some("host=foo user=foobar password=pwd_from_dsn"));
    r.superuser(&env, "os_user");
    assert_eq!(
        r.connected(170_000, false).map_err(|e| e.to_string()),
        Err("The provided user does not have superuser privilege".to_string())
    );
}

fn running_err(dsn: Option<&str>) -> GenerateError {
    let env_config = env_configuration(&no_env()).expect("environment");
    Running::new(template(&host(), &env_config), env_config, dsn).expect_err("must fail")
}

#[test]
fn files_elsewhere_are_not_read_and_include_needs_16() {
    let env = no_env();
    let mut r = running(&env, Some("host=h"));
    r.superuser(&env, "me");
    r.connected(150_000, true).expect("superuser");
    let mut rows = rows();
    rows[3].1 = "/etc/postgresql/15/main/pg_hba.conf".into();
    r.settings(&rows, &env);
    assert_eq!(r.hba_file(), None);
    r.set_hba("include_dir conf.d\nlocal all all peer\n");
    assert_eq!(
        r.finish()["postgresql"]["pg_hba"],
        json!(["local all all peer"])
    );

    let mut r = running(&env, Some("host=h"));
    r.connected(160_000, true).expect("superuser");
    r.set_hba("include_dir conf.d\nlocal all all peer\n");
    assert_eq!(
        r.finish()["postgresql"]["pg_hba"],
        json!(["include_dir conf.d", "local all all peer"])
    );
}

/// The layout: Patroni's section order, sorted keys, the bootstrap comments, strings that
/// YAML would read as something else quoted.
#[test]
fn rendered_layout() {
    let text = render(&sample_for(&no_env(), 150_000));
    let expected = r#"scope: '#FIXME'
name: test_hostname

log:
  format: '%(asctime)s %(levelname)s: %(message)s'
  level: INFO
  max_queue_size: 1000
  traceback_level: ERROR
  type: plain

restapi:
  connect_address: 1.9.8.4:8008
  listen: 1.9.8.4:8008

etcd3:
  hosts:
  - 127.0.0.1:2379

# The bootstrap configuration. Works only when the cluster is not yet initialized.
# If the cluster is already initialized, all changes in the `bootstrap` section are ignored!
bootstrap:
  # This section will be written into <dcs>:/<namespace>/<scope>/config after initializing
  # new cluster and all other cluster members will use it as a `global configuration`.
  # WARNING! If you want to change any of the parameters that were set up
  # via `bootstrap.dcs` section, please use `patronictl edit-config`!
  dcs:
    loop_wait: 10
    retry_timeout: 10
    ttl: 30
    postgresql:
      parameters:
        hot_standby: 'on'
        max_connections: 100
        max_locks_per_transaction: 64
        max_prepared_transactions: 0
        max_replication_slots: 10
        max_wal_senders: 10
        max_worker_processes: 8
        track_commit_timestamp: 'off'
        wal_keep_size: 128MB
        wal_level: replica
        wal_log_hints: 'on'
      use_pg_rewind: true
      use_slots: true

postgresql:
  authentication:
    replication:
      password: '#FIXME'
      username: replicator
    rewind:
      password: '#FIXME'
      username: rewind_user
    superuser:
      password: '#FIXME'
      username: postgres
  bin_dir: ''
  connect_address: 1.9.8.4:5432
  data_dir: '#FIXME'
  listen: 1.9.8.4:5432
  parameters:
    password_encryption: scram-sha-256
  pg_hba:
  - host all all all scram-sha-256
  - host replication replicator all scram-sha-256

tags:
  clonefrom: true
  failover_priority: 1
  noloadbalance: false
  nostream: false
  nosync: false
  sync_priority: 1
"#;
    assert_eq!(text, expected, "got:\n{text}");
}

/// What is written reads back as the same document, and the agent's loader takes it
/// (no error, nothing refused).
#[test]
fn generated_configurations_load() {
    let mut r = running(
        &patroni_env(),
        Some("host=foo port=5433 user=foobar password=qwerty"),
    );
    r.superuser(&patroni_env(), "os_user");
    r.connected(150_000, true).expect("superuser");
    let mut rows = rows();
    rows[6].1 = "5433".into();
    r.settings(&rows, &patroni_env());
    r.set_hba("local all all trust\nhost all all 0.0.0.0/0 scram-sha-256\n");
    r.set_ident("map1 root postgres\n");
    r.set_bin_dir("/usr/lib/postgresql/15/bin");
    for doc in [
        sample_for(&no_env(), 150_000),
        sample_for(&patroni_env(), 120_000),
        r.finish(),
    ] {
        let text = render(&doc);
        let back = crate::source::parse_yaml_mapping(&text, "generated").expect("YAML");
        assert_eq!(Value::Object(back), Value::Object(doc.clone()), "{text}");
        let loaded = load_ok(&text, &[]);
        assert!(loaded.refusals.is_empty(), "{:?}", loaded.refusals);
    }
}
