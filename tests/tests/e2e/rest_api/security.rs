//! End to end: access control of the unsafe endpoints (spec 2.2) on real agents — Basic auth
//! (401 texts and `WWW-Authenticate`), `allowlist` refusing 127.0.0.1 (403),
//! `allowlist_include_members` admitting members' addresses, the audit log — and HTTPS with
//! client certificates (`verify_client: optional`), using certificates made by `openssl`; and
//! slow clients, which cannot hold the port (a cap on connections, a deadline for headers).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use patrol_tests::{chown_to_agent, wait_until, Cluster};
use serde_json::json;

use crate::support::http::call;
use crate::support::{wait_healthy, HEALTHY_TIMEOUT};

const BASIC_ADMIN: &str = "Basic YWRtaW46czNjcmV0"; // admin:s3cret
const BASIC_WRONG: &str = "Basic YWRtaW46d3Jvbmc="; // admin:wrong

/// Replaces the harness's one-line `restapi` section's opening with `with` (extra keys first).
fn restapi_with(yaml: &mut String, with: &str) {
    let before = yaml.clone();
    *yaml = yaml.replacen(
        "restapi: {listen: ",
        &format!("restapi: {{{with}, listen: "),
        1,
    );
    assert_ne!(
        *yaml, before,
        "the harness config has a one-line restapi section"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_allowlist_and_audit() {
    let mut cluster = Cluster::new(2).expect("cluster");
    // pg0: authentication, an allowlist without 127.0.0.1, but members' addresses admitted.
    cluster.set_config_override(0, |y| {
        restapi_with(
            y,
            "authentication: {username: admin, password: s3cret}, allowlist: [192.0.2.1, 198.51.100.0/24], allowlist_include_members: true",
        )
    });
    // pg1: an allowlist that does not admit 127.0.0.1.
    // pg1: an allowlist that does not admit 127.0.0.1; extra headers; Patroni's product token.
    cluster.set_config_override(1, |y| {
        restapi_with(
            y,
            "allowlist: [10.0.0.0/8], http_extra_headers: {X-Frame-Options: DENY}, server_tokens: ProductOnly",
        )
    });
    for i in 0..2 {
        cluster.start_node(i).expect("start agent");
    }
    wait_healthy(&cluster, &[0, 1], HEALTHY_TIMEOUT)
        .await
        .expect("cluster becomes healthy");
    let (p0, p1) = (cluster.api_port(0), cluster.api_port(1));

    // Reads stay open.
    assert_eq!(call(p0, "GET", "/patroni", None, &[]).await.code, 200);
    assert_eq!(call(p1, "GET", "/cluster", None, &[]).await.code, 200);

    // pg0: 127.0.0.1 is a member address, so the allowlist passes and auth decides.
    let r = call(p0, "POST", "/reload", None, &[]).await;
    assert_eq!((r.code, r.body.as_str()), (401, "no auth header received"));
    assert_eq!(
        r.header("www-authenticate").as_deref(),
        Some("Basic realm=\"Patroni\"")
    );
    let r = call(
        p0,
        "POST",
        "/reload",
        None,
        &[("Authorization", BASIC_WRONG)],
    )
    .await;
    assert_eq!((r.code, r.body.as_str()), (401, "not authenticated"));
    let r = call(
        p0,
        "POST",
        "/reload",
        None,
        &[("Authorization", "Bearer abc")],
    )
    .await;
    assert_eq!((r.code, r.body.as_str()), (401, "not authenticated"));
    let r = call(
        p0,
        "POST",
        "/reload",
        None,
        &[("Authorization", BASIC_ADMIN)],
    )
    .await;
    assert_eq!((r.code, r.body.as_str()), (202, "reload scheduled"));
    // Auth comes before the body is read: no 411 for an unauthenticated PATCH.
    let r = call(p0, "PATCH", "/config", None, &[]).await;
    assert_eq!(r.code, 401, "{}", r.body);
    let r = call(
        p0,
        "PATCH",
        "/config",
        Some(r#"{"patrol_auth":1}"#),
        &[("Authorization", BASIC_ADMIN)],
    )
    .await;
    assert_eq!((r.code, r.json()["patrol_auth"].clone()), (200, json!(1)));

    // pg1's extra headers go on answers with a body, not on status-only ones.
    let r = call(p1, "GET", "/patroni", None, &[]).await;
    assert_eq!(
        r.header("x-frame-options").as_deref(),
        Some("DENY"),
        "{}",
        r.head
    );
    assert_eq!(r.header("server").as_deref(), Some("Patroni"), "{}", r.head);
    let r = call(p1, "OPTIONS", "/", None, &[]).await;
    assert_eq!(r.header("x-frame-options"), None, "{}", r.head);

    // pg1: 127.0.0.1 is not in 10.0.0.0/8.
    let r = call(
        p1,
        "POST",
        "/reload",
        None,
        &[("Authorization", BASIC_ADMIN)],
    )
    .await;
    assert_eq!((r.code, r.body.as_str()), (403, "Access is denied"));
    let r = call(p1, "POST", "/switchover", Some(r#"{"leader":"pg0"}"#), &[]).await;
    assert_eq!((r.code, r.body.as_str()), (403, "Access is denied"));

    // The audit log names method, path, source, user and code, and never the password.
    let log0 = cluster.agent_log(0);
    assert!(
        log0.contains("REST API: POST /reload from 127.0.0.1 user=- -> 401"),
        "{log0}"
    );
    assert!(log0.contains("REST API: POST /reload from 127.0.0.1 user=admin -> 202"));
    assert!(log0.contains("REST API: PATCH /config from 127.0.0.1 user=admin -> 200"));
    assert!(
        !log0.contains("s3cret") && !log0.contains("wrong"),
        "a password in the log"
    );
    let log1 = cluster.agent_log(1);
    assert!(log1.contains("REST API: POST /reload from 127.0.0.1 user=admin -> 403"));
}

/// Runs a command, failing the test with its output when it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is it installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "this test needs `{tool}` on PATH (apt-get install {tool}); it does not skip silently"
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=patrol-test-ca",
        ])
        .arg("-keyout")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    for (name, ext) in [
        // Also a client certificate: members present it to each other, as Patroni's do.
        (
            "server",
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n",
        ),
        (
            "client",
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        ),
    ] {
        std::fs::write(p(&format!("{name}.ext")), ext).expect("write ext");
        run(Command::new("openssl")
            .args(["req", "-newkey", "rsa:2048", "-nodes", "-subj"])
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(p(&format!("{name}.key")))
            .arg("-out")
            .arg(p(&format!("{name}.csr"))));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "1", "-CAcreateserial"])
            .arg("-in")
            .arg(p(&format!("{name}.csr")))
            .arg("-CA")
            .arg(p("ca.pem"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p(&format!("{name}.ext")))
            .arg("-out")
            .arg(p(&format!("{name}.pem"))));
    }
    for f in std::fs::read_dir(dir).expect("read tls dir").flatten() {
        chown_to_agent(&f.path()).expect("chown");
    }
    (
        p("ca.pem"),
        p("server.pem"),
        p("server.key"),
        p("client.pem"),
        p("client.key"),
    )
}

/// `curl` over HTTPS: (code, body). `extra` adds e.g. `--cert`.
fn curl(args: &[&str]) -> (u16, String) {
    let out = run(Command::new("curl")
        // A later --max-time (a switchover) overrides this one.
        .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}"])
        .args(args));
    let (body, code) = out.rsplit_once('\n').expect("curl output with a code");
    (code.trim().parse().expect("http code"), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_client_certificates() {
    require("openssl");
    require("curl");
    let mut cluster = Cluster::new(2).expect("cluster");
    // Both nodes use the same CA and certificate, kept in the cluster root.
    let dir = cluster.root().join("tls");
    std::fs::create_dir_all(&dir).expect("mkdir tls");
    chown_to_agent(&dir).expect("chown tls dir");
    let (ca, cert, key, ccert, ckey) = make_certs(&dir);
    let tls = format!(
        "certfile: {}, keyfile: {}, cafile: {}, verify_client: optional, authentication: {{username: admin, password: s3cret}}",
        cert.display(),
        key.display(),
        ca.display()
    );
    for i in 0..2 {
        let tls = tls.clone();
        cluster.set_config_override(i, move |y| restapi_with(y, &tls));
    }
    cluster.start_node(0).expect("start agent");
    wait_healthy(&cluster, &[0], HEALTHY_TIMEOUT)
        .await
        .expect("the node leads");
    let base = format!("https://127.0.0.1:{}", cluster.api_port(0));
    let cacert = ca.display().to_string();

    // Reads over HTTPS, the server verified against our CA; the member publishes https.
    let (code, body) = curl(&["--cacert", &cacert, &format!("{base}/patroni")]);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["role"], json!("primary"));
    let (code, body) = curl(&["--cacert", &cacert, &format!("{base}/cluster")]);
    assert_eq!(code, 200);
    assert!(
        body.contains(&format!("\"api_url\":\"{base}/patroni\"")),
        "{body}"
    );

    // Unsafe without a client certificate: 403 before auth is looked at.
    let (code, body) = curl(&[
        "--cacert",
        &cacert,
        "-X",
        "POST",
        "-u",
        "admin:s3cret",
        &format!("{base}/reload"),
    ]);
    assert_eq!((code, body.as_str()), (403, "client certificate required"));
    // With the certificate: auth decides.
    let (ccert, ckey) = (ccert.display().to_string(), ckey.display().to_string());
    let reload = format!("{base}/reload");
    let with_cert = |extra: &[&str]| {
        let mut args = vec![
            "--cacert",
            cacert.as_str(),
            "--cert",
            ccert.as_str(),
            "--key",
            ckey.as_str(),
        ];
        args.extend_from_slice(extra);
        curl(&args)
    };
    let (code, body) = with_cert(&["-X", "POST", &reload]);
    assert_eq!((code, body.as_str()), (401, "no auth header received"));
    let (code, body) = with_cert(&["-X", "POST", "-u", "admin:s3cret", &reload]);
    assert_eq!((code, body.as_str()), (202, "reload scheduled"));
    // The CA's own (self-signed, CA:TRUE) certificate as the client's, as Patroni's acceptance
    // harness uses one certificate for everything: trusted because it is in cafile, as
    // OpenSSL trusts it.
    let (ca_key, ca_pem) = (dir.join("ca.key").display().to_string(), cacert.clone());
    let (code, body) = curl(&[
        "--cacert",
        &cacert,
        "--cert",
        &ca_pem,
        "--key",
        &ca_key,
        "-X",
        "POST",
        "-u",
        "admin:s3cret",
        &reload,
    ]);
    assert_eq!((code, body.as_str()), (202, "reload scheduled"));
    // A self-signed certificate that is not in cafile gets no answer.
    let stranger = dir.join("stranger");
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=stranger", "-keyout"])
        .arg(stranger.with_extension("key"))
        .arg("-out")
        .arg(stranger.with_extension("pem")));
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["--cacert", &cacert, "--cert"])
        .arg(stranger.with_extension("pem"))
        .arg("--key")
        .arg(stranger.with_extension("key"))
        .args(["-X", "POST", "-u", "admin:s3cret", &reload])
        .output()
        .expect("run curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "000",
        "a certificate from no trusted CA must fail the handshake"
    );

    // A switchover over HTTPS: the candidate is probed over HTTPS (with our certificate).
    cluster.start_node(1).expect("start the second agent");
    wait_healthy(&cluster, &[0, 1], HEALTHY_TIMEOUT)
        .await
        .expect("the replica streams");
    let (code, body) = with_cert(&[
        "-X",
        "POST",
        "-u",
        "admin:s3cret",
        "-d",
        r#"{"leader":"pg0"}"#,
        "--max-time",
        "40",
        &format!("{base}/switchover"),
    ]);
    assert_eq!(
        (code, body.as_str()),
        (200, "Successfully switched over to \"pg1\"")
    );
    assert_eq!(
        cluster.leader().await.expect("etcd").as_deref(),
        Some("pg1")
    );

    // Plain HTTP on the TLS port gets no answer.
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .arg(format!("http://127.0.0.1:{}/patroni", cluster.api_port(0)))
        .output()
        .expect("run curl");
    assert_ne!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200",
        "plain HTTP must not be served"
    );
    for i in 0..2 {
        assert!(cluster.is_node_running(i), "agent {i} exited");
    }
}

/// Slow clients cannot hold the REST API: `restapi.request_queue_size` is the listen backlog
/// (as Patroni); at most 128 connections are served at once (more are closed when accepted),
/// and each has 10 s to send its headers however it trickles them. A health check is answered
/// beside 120 slow clients, and again within seconds once slow clients took every slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_hold_the_rest_api() {
    let mut cluster = Cluster::new(1).expect("cluster");
    cluster.set_config_override(0, |y| restapi_with(y, "request_queue_size: 64"));
    cluster.start_node(0).expect("start agent");
    let port = cluster.api_port(0);
    let c = &cluster;
    wait_until(
        "the REST API to answer",
        Duration::from_secs(60),
        || async move { Ok(c.api_get(0, "/liveness").await.ok().map(|_| ())) },
    )
    .await
    .expect("the REST API answers");
    let ss = run(Command::new("ss").args(["-ltnH", &format!("sport = :{port}")]));
    assert_eq!(
        ss.split_whitespace().nth(2),
        Some("64"),
        "the listen backlog (Send-Q of the listening socket) is request_queue_size: {ss}"
    );

    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let every = Duration::from_millis(500);
    let mut slow = crate::support::slow::open_many(addr, "/patroni", 120, every)
        .await
        .expect("slow clients");
    let r = call(port, "GET", "/liveness", None, &[]).await;
    assert!(r.code > 0, "answered beside 120 slow clients: {r:?}");
    slow.extend(
        crate::support::slow::open_many(addr, "/patroni", 20, every)
            .await
            .expect("more slow clients"),
    );
    let t = std::time::Instant::now();
    wait_until(
        "a health check to be answered",
        Duration::from_secs(60),
        || async move { Ok(c.api_get(0, "/liveness").await.ok().map(|_| ())) },
    )
    .await
    .expect("the REST API answers again");
    eprintln!("answered again after {:.1?}", t.elapsed());

    let lived = crate::support::slow::lifetimes(&mut slow, Duration::from_secs(60))
        .await
        .expect("every slow connection is closed, trickling bytes or not");
    let (at_once, held) = crate::support::slow::split(&lived, Duration::from_secs(10));
    eprintln!("{at_once} slow connections closed at once, {held} at the header deadline");
    assert!(
        at_once >= 1,
        "connections beyond 128 are closed at once: {lived:?}"
    );
    assert!(
        held >= 120 && at_once + held == lived.len(),
        "the others hold a slot until the header deadline: {lived:?}"
    );
    let log = cluster.agent_log(0);
    assert!(log.contains("REST API: 128 connections open"), "{log}");
}
