//! etcd over TLS with client certificates (`--client-cert-auth`): an agent configured the
//! Patroni way (`etcd3: {protocol: https, cacert, cert, key}`) bootstraps against it,
//! `patrolctl` lists the cluster through it, and a router that reads the same agent config
//! routes writes to the leader.

use std::process::Command;
use std::time::Duration;

use patrol_tests::{wait_until, Cluster, Etcd, Router, TestCerts};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_patrolctl_and_router_speak_tls_to_etcd() {
    let certs = TestCerts::generate().expect("certificates");
    let etcd = Etcd::start_tls(&certs).expect("etcd with TLS");
    let tls_hp = etcd.tls_host_port().expect("TLS port");
    let mut c = Cluster::new(1).expect("cluster");
    let plain = format!("etcd3: {{hosts: [{}]}}", c.etcd().host_port());
    let section = format!(
        "etcd3: {{hosts: ['{tls_hp}'], protocol: https, cacert: '{}', cert: '{}', key: '{}'}}",
        certs.ca().display(),
        certs.client_cert().display(),
        certs.client_key().display()
    );
    c.set_config_override(0, move |y| *y = y.replace(&plain, &section));
    assert!(c.config_yaml(0).contains("protocol: https"));
    c.start_node(0).expect("start the agent");

    // The agent bootstraps: it can only hold the leader key through the TLS listener, which
    // demands its client certificate.
    let c = &c;
    wait_until("pg0 to lead", Duration::from_secs(90), || async move {
        let (_, body) = c.api_get(0, "/patroni").await?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok((v["role"] == "primary" && v["state"] == "running").then_some(()))
    })
    .await
    .expect("the agent bootstraps through etcd over TLS");
    let mut kv = etcd.client().await.expect("plain client to the same etcd");
    let key = format!("{}leader", c.prefix());
    let got = kv
        .get(key.as_str(), None)
        .await
        .expect("get the leader key");
    let leader = got
        .kvs()
        .first()
        .map(|k| k.value_str().unwrap_or("").to_string());
    assert_eq!(
        leader.as_deref(),
        Some(c.name(0)),
        "the leader key is in the TLS etcd"
    );

    // patrolctl with the agent's own config.
    let out = tokio::task::block_in_place(|| {
        Command::new(patrol_tests::bin("patrolctl"))
            .arg("-c")
            .arg(c.config_path(0))
            .arg("list")
            .env_remove("PATRONICTL_CONFIG_FILE")
            .env_remove("DCS_URL")
            .output()
            .expect("patrolctl")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(c.name(0)) && stdout.contains("Leader"),
        "patrolctl list over TLS: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );

    // A router taking etcd (hosts, protocol, TLS files) from the agent's config.
    let r = Router::start_with_etcd(
        c,
        &format!("agent_config: '{}'", c.config_path(0).display()),
        "",
    )
    .expect("router");
    wait_until(
        "the router to write to pg0",
        Duration::from_secs(30),
        || async {
            let s = r.stats().await?;
            Ok((s["write_backend"]["name"] == c.name(0)).then_some(()))
        },
    )
    .await
    .expect("the router reads the cluster through etcd over TLS");
    let w = r.connect_write().await.expect("write session");
    w.batch_execute("CREATE TABLE tls_t (v int); INSERT INTO tls_t VALUES (1)")
        .await
        .expect("a write through the router");
}
