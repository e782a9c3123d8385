//! End to end: `patrol --generate-config` against a real PostgreSQL 15 run by an agent, and
//! `patrol --generate-sample-config`; what they write passes `patrol --validate-config`, and
//! their failures exit 1 with Patroni's messages.

use std::path::Path;

use patrol_tests::{Cluster, PG_BIN_DIR};
use serde_json::Value;

use crate::support::{patrol_cli, wait_healthy, HEALTHY_TIMEOUT};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("not YAML ({e}):\n{text}"))
}

/// Exit 0 and "configuration is valid" from `patrol --validate-config <file>`.
async fn assert_valid(file: &Path, dir: &Path, agent_user: bool) {
    let file = file.to_str().expect("UTF-8 path");
    let out = patrol_cli(&["--validate-config", file], &[], dir, agent_user).await;
    assert!(
        out.status.success() && text(&out.stdout).contains("configuration is valid"),
        "--validate-config {file}: {}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_config_from_a_running_instance() {
    let mut cluster = Cluster::new(1).expect("cluster");
    cluster.start_node(0).expect("start pg0");
    wait_healthy(&cluster, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("pg0 bootstraps as leader");
    let dir = cluster.node_dir(0).to_path_buf();
    let port = cluster.pg_port(0).to_string();
    let dsn = |user: &str, password: &str| {
        format!("host=127.0.0.1 port={port} user={user} password={password} dbname=postgres")
    };

    // Into a file in a directory that does not exist yet.
    let out_file = dir.join("generated").join("patroni.yml");
    let out = patrol_cli(
        &[
            "--generate-config",
            "--dsn",
            &dsn("postgres", "supersecret"),
            out_file.to_str().expect("UTF-8"),
        ],
        &[],
        &dir,
        true,
    )
    .await;
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        text(&out.stderr)
    );
    let written = std::fs::read_to_string(&out_file).expect("the file was written");
    let mode = std::fs::metadata(&out_file)
        .expect("metadata")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600,
        "it holds the superuser's password"
    );
    let doc = yaml(&written);
    let data_dir = cluster.data_dir(0).display().to_string();
    let pg = &doc["postgresql"];
    assert_eq!(doc["scope"], cluster.scope(), "{written}");
    assert_eq!(pg["data_dir"], data_dir.as_str(), "{written}");
    assert_eq!(pg["bin_dir"], PG_BIN_DIR, "{written}");
    assert_eq!(
        pg["listen"],
        format!("127.0.0.1:{port}").as_str(),
        "{written}"
    );
    assert!(
        pg["connect_address"]
            .as_str()
            .is_some_and(|a| a.ends_with(&format!(":{port}"))),
        "{written}"
    );
    assert_eq!(
        pg["authentication"]["superuser"],
        serde_json::json!({"username": "postgres", "password": "supersecret",
            "sslmode": "prefer", "gssencmode": "prefer", "channel_binding": "prefer"}),
        "{written}"
    );
    assert_eq!(
        pg["parameters"]["hba_file"],
        format!("{data_dir}/pg_hba.conf").as_str(),
        "{written}"
    );
    let hba: Vec<&str> = pg["pg_hba"]
        .as_array()
        .expect("pg_hba")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for rule in [
        "local all all trust",
        "host replication replicator 127.0.0.1/32 scram-sha-256",
        "host all all 127.0.0.1/32 scram-sha-256",
    ] {
        assert!(hba.contains(&rule), "{rule} missing: {written}");
    }
    let params = &doc["bootstrap"]["dcs"]["postgresql"]["parameters"];
    // 50 in the local parameters is ignored, as Patroni ignores it: the dynamic default runs.
    assert_eq!(params["max_connections"], "100", "{written}");
    assert_eq!(params["shared_buffers"], "16MB", "{written}");
    assert_eq!(params["wal_keep_size"], "128MB", "{written}");
    assert!(params.get("port").is_none(), "{written}");
    assert_valid(&out_file, &dir, true).await;

    // To stdout, reaching the server through the libpq variables.
    let out = patrol_cli(
        &["--generate-config"],
        &[
            ("PGHOST", "127.0.0.1"),
            ("PGPORT", &port),
            ("PGUSER", "postgres"),
            ("PGPASSWORD", "supersecret"),
            ("PGDATABASE", "postgres"),
            ("PGSSLMODE", "disable"),
        ],
        &dir,
        true,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let from_env = yaml(&text(&out.stdout));
    assert_eq!(
        from_env["postgresql"]["authentication"]["superuser"],
        serde_json::json!({"username": "postgres", "password": "supersecret", "sslmode": "disable"})
    );
    assert_eq!(from_env["postgresql"]["data_dir"], data_dir.as_str());

    // Failures: Patroni's messages, exit code 1.
    let client = cluster.connect(0).await.expect("connect");
    client
        .batch_execute("CREATE ROLE plain LOGIN PASSWORD 'plainpw'")
        .await
        .expect("create a role that is not a superuser");
    for (dsn, expected) in [
        (
            "host:foo port:bar".to_string(),
            "Failed to parse DSN string",
        ),
        (
            dsn("postgres", "wrong"),
            "Failed to establish PostgreSQL connection: ",
        ),
        (
            dsn("plain", "plainpw"),
            "The provided user does not have superuser privilege",
        ),
    ] {
        let out = patrol_cli(&["--generate-config", "--dsn", &dsn], &[], &dir, true).await;
        assert_eq!(out.status.code(), Some(1), "{dsn}");
        assert!(
            text(&out.stderr).starts_with(expected),
            "{dsn}: {}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "{dsn}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_sample_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("sample.yml");
    let data_dir = dir.path().join("data").display().to_string();
    let env = [
        ("PATRONI_SCOPE", "demo"),
        ("PATRONI_NAME", "node1"),
        ("PATRONI_POSTGRESQL_BIN_DIR", PG_BIN_DIR),
        ("PATRONI_POSTGRESQL_DATA_DIR", data_dir.as_str()),
        ("PATRONI_REPLICATION_USERNAME", "repl"),
        ("PATRONI_ETCD3_HOSTS", "127.0.0.1:2379"),
    ];
    let out = patrol_cli(
        &["--generate-sample-config", file.to_str().expect("UTF-8")],
        &env,
        dir.path(),
        false,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(&file).expect("written");
    let doc = yaml(&written);
    assert_eq!(doc["scope"], "demo");
    assert_eq!(doc["name"], "node1");
    assert_eq!(doc["postgresql"]["data_dir"], data_dir.as_str());
    assert_eq!(
        doc["postgresql"]["pg_hba"],
        serde_json::json!([
            "host all all all scram-sha-256",
            "host replication repl all scram-sha-256"
        ])
    );
    assert_eq!(
        doc["bootstrap"]["dcs"]["postgresql"]["parameters"]["wal_keep_size"],
        "128MB"
    );
    assert_eq!(
        doc["postgresql"]["authentication"]["rewind"]["username"],
        "rewind_user"
    );
    // Quoted, so that PyYAML (Patroni) reads a string too.
    assert!(written.contains("hot_standby: 'on'"), "{written}");
    assert_valid(&file, dir.path(), false).await;

    // With nothing but the binaries' directory: Patroni's placeholders, still a valid file
    // (on stdout).
    let out = patrol_cli(
        &["--generate-sample-config"],
        &[("PATRONI_POSTGRESQL_BIN_DIR", PG_BIN_DIR)],
        dir.path(),
        false,
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let bare = text(&out.stdout);
    assert_eq!(yaml(&bare)["scope"], "#FIXME");
    std::fs::write(dir.path().join("bare.yml"), &bare).expect("write");
    assert_valid(&dir.path().join("bare.yml"), dir.path(), false).await;

    // No postgres binary: Patroni's message, exit code 1, nothing written.
    let missing = dir.path().join("missing.yml");
    let out = patrol_cli(
        &["--generate-sample-config", missing.to_str().expect("UTF-8")],
        &[("PATRONI_POSTGRESQL_BIN_DIR", "/nonexistent/bin")],
        dir.path(),
        false,
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("Failed to get postgres version: "),
        "{}",
        text(&out.stderr)
    );
    assert!(!missing.exists());

    // The actions exclude each other, as Patroni's.
    let out = patrol_cli(
        &["--generate-sample-config", "--generate-config"],
        &[],
        dir.path(),
        false,
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}
