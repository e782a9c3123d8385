//! Patroni's own configurations run unchanged: a 3-node cluster configured the way Patroni's
//! acceptance harness (`features/environment.py`) configures Patroni: PostgreSQL with
//! `ssl: on`, the three users with `sslmode: verify-ca` and a client certificate, a pg_hba whose
//! only TCP lines are `hostssl ... clientcert=verify-ca`, `use_unix_socket(_repl)`,
//! `wal_keep_segments` (converted to `wal_keep_size` on 15), csvlog with `log_statement: all`
//! and a quoted `post_bootstrap`. It bootstraps, replicates, fails over, and the old primary is
//! rewound (pg_rewind over a client-certificate connection) and streams again.

use std::process::Command;
use std::time::Duration;

use crate::support::workload::{last_run_log, primary_timeline, wait_streaming_from};
use crate::support::{index_of, start_all, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT};
use anyhow::Context;
use patrol_tests::{chown_to_agent, make_agent_dir, wait_until, Cluster, Signal};
use serde_yaml_ng::{Mapping, Value};

/// One self-signed certificate used as CA, server and client certificate, as the harness
/// makes it; the key is the agent user's, mode 0600 (PostgreSQL and libpq refuse others).
fn harness_certificate(dir: &std::path::Path) -> anyhow::Result<(String, String)> {
    make_agent_dir(dir)?;
    let (key, cert) = (dir.join("patroni.key"), dir.join("patroni.crt"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-nodes",
            "-new",
            "-x509",
            "-subj",
            "/CN=batman.patroni",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    chown_to_agent(&key)?;
    chown_to_agent(&cert)?;
    Ok((cert.display().to_string(), key.display().to_string()))
}

fn get<'a>(m: &'a mut Mapping, key: &str) -> &'a mut Mapping {
    let entry = m
        .entry(Value::from(key))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !entry.is_mapping() {
        *entry = Value::Mapping(Mapping::new());
    }
    entry.as_mapping_mut().expect("a mapping")
}

/// The harness's changes to a node's configuration (`_make_patroni_test_config`), applied to
/// the cluster's generated YAML.
fn harness_style(yaml: &mut String, cert: &str, key: &str, unix_socket: bool) {
    let mut doc: Value = serde_yaml_ng::from_str(yaml).expect("generated YAML parses");
    let root = doc.as_mapping_mut().expect("a mapping");
    let pg = get(root, "postgresql");
    pg.insert("use_unix_socket".into(), unix_socket.into());
    pg.insert("use_unix_socket_repl".into(), true.into());
    let params = get(pg, "parameters");
    for (k, v) in [
        ("ssl", "on"),
        ("ssl_ca_file", cert),
        ("ssl_cert_file", cert),
        ("ssl_key_file", key),
        ("logging_collector", "on"),
        ("log_destination", "csvlog"),
        ("log_statement", "all"),
        ("log_min_messages", "debug1"),
    ] {
        params.insert(k.into(), v.into());
    }
    let auth = get(pg, "authentication");
    for user in ["superuser", "replication", "rewind"] {
        let u = get(auth, user);
        u.insert("sslmode".into(), "verify-ca".into());
        u.insert("sslrootcert".into(), cert.into());
        u.insert("sslcert".into(), cert.into());
        u.insert("sslkey".into(), key.into());
    }
    let hba: Vec<Value> = [
        "local all all trust",
        "local replication all trust",
        "hostssl replication replicator all md5 clientcert=verify-ca",
        "hostssl all all all md5 clientcert=verify-ca",
    ]
    .into_iter()
    .map(Value::from)
    .collect();
    pg.insert("pg_hba".into(), Value::Sequence(hba));
    let bootstrap = get(root, "bootstrap");
    bootstrap.remove("pg_hba");
    bootstrap.insert(
        "post_bootstrap".into(),
        r#"psql -w -c "CREATE TABLE post_bootstrap_ran (v int)""#.into(),
    );
    let initdb: Vec<Value> = vec![
        Value::from("data-checksums"),
        serde_yaml_ng::from_str("{encoding: UTF8}").expect("yaml"),
        serde_yaml_ng::from_str("{auth: md5}").expect("yaml"),
        serde_yaml_ng::from_str("{auth-host: md5}").expect("yaml"),
    ];
    bootstrap.insert("initdb".into(), Value::Sequence(initdb));
    let dcs_params = get(get(get(bootstrap, "dcs"), "postgresql"), "parameters");
    dcs_params.remove("wal_keep_size");
    dcs_params.insert("wal_keep_segments".into(), 100.into());
    *yaml = serde_yaml_ng::to_string(&doc).expect("YAML");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patroni_harness_configuration_bootstraps_replicates_fails_over_and_rewinds() {
    let mut c = Cluster::new(3).expect("cluster");
    let (cert, key) = harness_certificate(&c.root().join("ssl")).expect("certificate");
    for i in 0..3 {
        let (cert, key) = (cert.clone(), key.clone());
        c.set_config_override(i, move |yaml| harness_style(yaml, &cert, &key, true));
    }
    c.connect_by_socket(true);
    let old = start_all(&mut c).await;

    // The parameters reached PostgreSQL as 15 wants them.
    let leader = c.connect(old).await.expect("connect to the leader");
    let row = leader
        .query_one(
            "SELECT current_setting('wal_keep_size'), current_setting('ssl'), \
             to_regclass('public.post_bootstrap_ran') IS NOT NULL",
            &[],
        )
        .await
        .expect("settings");
    assert_eq!(row.get::<_, String>(0), "1600MB");
    assert_eq!(row.get::<_, String>(1), "on");
    assert!(row.get::<_, bool>(2), "post_bootstrap did not run");

    // Replicas stream over TLS with the client certificate.
    let ssl_walsenders = wait_until("two walsenders over SSL", PROPAGATION_TIMEOUT, || {
        let leader = &leader;
        async move {
            let n: i64 = leader
                .query_one(
                    "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s \
                         ON s.pid = r.pid WHERE s.ssl AND r.state = 'streaming'",
                    &[],
                )
                .await?
                .get(0);
            Ok((n == 2).then_some(n))
        }
    })
    .await
    .expect("replicas stream over SSL");
    assert_eq!(ssl_walsenders, 2);
    leader
        .batch_execute("CREATE TABLE t (v text); INSERT INTO t VALUES ('before')")
        .await
        .expect("write");
    let tl_before = primary_timeline(&c, old).await.expect("timeline");
    drop(leader);

    // Fail over: the leader's host is lost.
    c.kill_node(old);
    c.signal_postgres(old, Signal::SIGKILL)
        .expect("SIGKILL postmaster");
    let cl = &c;
    let new = wait_until(
        "a new writable leader",
        Duration::from_secs(60),
        || async move {
            let Some(name) = cl.leader().await? else {
                return Ok(None);
            };
            let Some(i) = index_of(cl, &name) else {
                return Ok(None);
            };
            if i == old {
                return Ok(None);
            }
            let Ok(client) = cl.connect(i).await else {
                return Ok(None);
            };
            let primary: bool = !client
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await?
                .get::<_, bool>(0);
            Ok(primary.then_some(i))
        },
    )
    .await
    .expect("failover");
    let new_leader = c.connect(new).await.expect("connect to the new leader");
    new_leader
        .batch_execute("INSERT INTO t VALUES ('after')")
        .await
        .expect("write on the new leader");
    let tl_new = primary_timeline(&c, new).await.expect("timeline");
    assert!(tl_new > tl_before);

    // The old primary comes back: pg_rewind with the rewind user's certificate, then it follows.
    c.start_node(old).expect("restart the old node");
    wait_streaming_from(&c, old, new, tl_new, HEALTHY_TIMEOUT)
        .await
        .expect("the old primary streams from the new leader");
    // The task's end is logged by the loop's next cycle, possibly after streaming began.
    let cl = &c;
    wait_until(
        "the rewind to be logged as finished",
        PROPAGATION_TIMEOUT,
        || async move {
            let log = last_run_log(cl, old);
            Ok(
                (log.lines().any(|l| l.contains("pg_rewind: ")) && log.contains("Rewind finished"))
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "the old primary must have been rewound: {e:#}\n{}",
            last_run_log(&c, old)
        )
    });
    let old_client = c.connect(old).await.expect("connect to the old primary");
    wait_until(
        "the new row on the rewound node",
        PROPAGATION_TIMEOUT,
        || {
            let old_client = &old_client;
            async move {
                let n: i64 = old_client
                    .query_one("SELECT count(*) FROM t WHERE v = 'after'", &[])
                    .await?
                    .get(0);
                Ok((n == 1).then_some(()))
            }
        },
    )
    .await
    .expect("rows replicate to the rewound node");

    // log_statement: all logged every statement of the bootstrap, but not the roles' passwords.
    let mut logged = 0;
    for i in 0..3 {
        for entry in std::fs::read_dir(c.data_dir(i).join("log"))
            .expect("server log dir")
            .flatten()
        {
            let text = String::from_utf8_lossy(&std::fs::read(entry.path()).expect("read log"))
                .into_owned();
            logged += text.matches("statement: ").count();
            for secret in ["supersecret", "replsecret", "rewindsecret"] {
                assert!(
                    !text.contains(secret),
                    "{} holds a password:\n{}",
                    entry.path().display(),
                    text.lines()
                        .filter(|l| l.contains(secret))
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
        }
    }
    assert!(logged > 0, "log_statement: all logged no statement at all");
}

/// Without `use_unix_socket`, the agent's own connection goes over TCP, where this pg_hba
/// admits only TLS with a verified client certificate: the superuser's `sslmode: verify-ca`,
/// `sslrootcert`, `sslcert` and `sslkey` are what let it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_connects_over_tls_with_the_superuser_s_client_certificate() {
    let mut c = Cluster::new(1).expect("cluster");
    let (cert, key) = harness_certificate(&c.root().join("ssl")).expect("certificate");
    c.set_config_override(0, move |yaml| harness_style(yaml, &cert, &key, false));
    c.connect_by_socket(true);
    start_all(&mut c).await;
    let client = c.connect(0).await.expect("connect");
    let cl = &client;
    let (ssl, client_dn) = wait_until(
        "the agent's own session in pg_stat_ssl",
        PROPAGATION_TIMEOUT,
        || async move {
            let rows = cl
                .query(
                    "SELECT s.ssl, coalesce(s.client_dn, '') FROM pg_stat_activity a \
                     JOIN pg_stat_ssl s ON s.pid = a.pid WHERE a.application_name = 'Patrol'",
                    &[],
                )
                .await?;
            Ok(rows
                .first()
                .map(|r| (r.get::<_, bool>(0), r.get::<_, String>(1))))
        },
    )
    .await
    .expect("the agent is connected");
    assert!(ssl, "the agent's connection is not encrypted");
    assert!(
        client_dn.contains("batman.patroni"),
        "client DN {client_dn:?}"
    );
}
