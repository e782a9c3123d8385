//! End to end: the REST API of a real 3-node cluster (real etcd, PostgreSQL 15, patrol agents)
//! answers Patroni 4's codes, texts and JSON: the cluster views, `/metrics`, PATCH/PUT
//! `/config` with compare-and-swap, the malformed-input table, restart (now and scheduled) and
//! reinitialize. Switchover/failover: `switchover`; auth, allowlist and TLS: `security`;
//! Patroni's `patronictl` as the client: `patronictl`.

mod patronictl;
mod security;
mod switchover;

use std::collections::BTreeSet;
use std::time::Duration;

use patrol_tests::{wait_until, Cluster};
use serde_json::{json, Value};

use crate::support::http::{call, call_within, iso_utc_in, send_raw, Resp};
use crate::support::{index_of, start_all, wait_healthy, HEALTHY_TIMEOUT, PROPAGATION_TIMEOUT};

fn assert_text(r: &Resp, code: u16, text: &str, what: &str) {
    assert_eq!(
        (r.code, r.body.as_str()),
        (code, text),
        "{what}: {}\n{}",
        r.head,
        r.body
    );
}

/// One row of the bad-input table: what, request, expected code and (for text answers) body.
struct Case {
    what: &'static str,
    method: &'static str,
    path: &'static str,
    body: Option<String>,
    code: u16,
    text: Option<String>,
}

fn case(
    what: &'static str,
    method: &'static str,
    path: &'static str,
    body: Option<String>,
    code: u16,
    text: Option<String>,
) -> Case {
    Case {
        what,
        method,
        path,
        body,
        code,
        text,
    }
}

/// An `X/Y` LSN as PostgreSQL prints it.
fn is_lsn(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.split_once('/').is_some_and(|(a, b)| {
            u64::from_str_radix(a, 16).is_ok() && u64::from_str_radix(b, 16).is_ok()
        })
    })
}

/// No agent died and none panicked.
fn assert_agents_alive(cluster: &mut Cluster) {
    for i in 0..cluster.len() {
        assert!(
            cluster.is_node_running(i),
            "agent {} exited",
            cluster.name(i)
        );
        let log = cluster.agent_log(i);
        assert!(
            !log.contains("panicked"),
            "agent {} panicked:\n{log}",
            cluster.name(i)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_config_and_bad_input() {
    let mut cluster = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut cluster).await;
    let lname = cluster.name(leader).to_owned();
    let lport = cluster.api_port(leader);
    let replica = (0..3).find(|&i| i != leader).expect("a replica");
    let rport = cluster.api_port(replica);
    let other = (0..3)
        .find(|&i| i != leader && i != replica)
        .expect("another replica");

    // ---- GET /cluster (fresh DCS read), once both replicas published their positions.
    let body = wait_until(
        "GET /cluster to show both replicas streaming with numeric lags",
        PROPAGATION_TIMEOUT,
        || async move {
            let r = call(rport, "GET", "/cluster", None, &[]).await;
            assert_eq!(r.code, 200, "{}", r.body);
            let v = r.json();
            let ok = v["members"].as_array().is_some_and(|ms| {
                ms.iter()
                    .filter(|m| m["role"] == "replica")
                    .filter(|m| m["state"] == "streaming" && m["lag"].is_u64())
                    .count()
                    == 2
            });
            Ok(ok.then_some((r, v)))
        },
    )
    .await
    .expect("cluster view");
    let (resp, v) = body;
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(v["scope"], json!(cluster.scope()));
    assert!(v.get("pause").is_none() && v.get("scheduled_switchover").is_none());
    let ms = v["members"].as_array().expect("members");
    let names: Vec<&str> = ms
        .iter()
        .map(|m| m["name"].as_str().expect("name"))
        .collect();
    assert_eq!(names, vec!["pg0", "pg1", "pg2"], "members sorted by name");
    for (i, m) in ms.iter().enumerate() {
        let want_api = format!("http://127.0.0.1:{}/patroni", cluster.api_port(i));
        assert_eq!(m["api_url"], json!(want_api));
        assert_eq!(m["host"], json!("127.0.0.1"));
        assert_eq!(m["port"], json!(cluster.pg_port(i)));
        assert_eq!(m["timeline"], json!(1));
        if i == leader {
            assert_eq!(m["role"], json!("leader"), "{m}");
            assert_eq!(m["state"], json!("running"), "{m}");
            assert!(m.get("lsn").is_none() && m.get("lag").is_none(), "{m}");
        } else {
            assert_eq!(m["role"], json!("replica"), "{m}");
            for k in ["lsn", "receive_lsn", "replay_lsn"] {
                assert!(is_lsn(&m[k]), "{k} of {m}");
            }
            for k in ["lag", "receive_lag", "replay_lag"] {
                assert!(m[k].is_u64(), "{k} of {m}");
            }
        }
    }

    // ---- GET /history, /config, /failsafe, /patroni.
    let r = call(lport, "GET", "/history", None, &[]).await;
    assert_eq!(
        (r.code, r.json()),
        (200, json!([])),
        "history on timeline 1"
    );
    let r = call(rport, "GET", "/config", None, &[]).await;
    assert_eq!(r.code, 200, "{}", r.body);
    let cfg = r.json();
    assert_eq!(
        (cfg["ttl"].clone(), cfg["loop_wait"].clone()),
        (json!(10), json!(1))
    );
    let r = call(lport, "GET", "/failsafe", None, &[]).await;
    assert_eq!(r.code, 502, "failsafe mode is off: {}", r.body);
    let r = call(lport, "GET", "/patroni", None, &[]).await;
    assert_eq!(r.code, 200);
    assert_eq!(r.json()["role"], json!("primary"));
    assert_eq!(r.json()["patroni"]["name"], json!(lname));

    // ---- Health checks: GET with JSON, HEAD/OPTIONS status only.
    let r = call(lport, "HEAD", "/primary", None, &[]).await;
    assert_eq!((r.code, r.body.as_str()), (200, ""));
    let r = call(lport, "OPTIONS", "/replica", None, &[]).await;
    assert_eq!((r.code, r.body.as_str()), (503, ""));
    let r = call(rport, "GET", "/replica?lag=1MB", None, &[]).await;
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.json()["role"], json!("replica"));

    // ---- GET /metrics.
    let r = call(lport, "GET", "/metrics", None, &[]).await;
    assert_eq!(r.code, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/plain")),
        "{}",
        r.head
    );
    let labels = format!("{{scope=\"{}\",name=\"{lname}\"}}", cluster.scope());
    assert!(
        r.body.contains(&format!("patroni_primary{labels} 1\n")),
        "{}",
        r.body
    );
    assert!(r
        .body
        .contains(&format!("patroni_postgres_state{labels} 5\n")));
    assert!(r.body.contains("# Values: 0=initdb, 1=initdb_failed,"));
    let mut typed = BTreeSet::new();
    for line in r.body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            typed.insert(rest.split_whitespace().next().expect("name").to_string());
        } else if !line.starts_with('#') {
            let name = line.split('{').next().expect("sample name");
            assert!(typed.contains(name), "sample without # TYPE: {line}");
            assert!(line.contains(&labels), "labels of {line}");
        }
    }
    assert!(typed.len() >= 23, "{typed:?}");
    let r = call(rport, "GET", "/metrics", None, &[]).await;
    let rlabels = format!(
        "{{scope=\"{}\",name=\"{}\"}}",
        cluster.scope(),
        cluster.name(replica)
    );
    assert!(
        r.body.contains(&format!("patroni_replica{rlabels} 1\n")),
        "{}",
        r.body
    );
    assert!(r
        .body
        .contains(&format!("patroni_postgres_streaming{rlabels} 1\n")));

    // ---- PATCH /config then GET /config.
    let patch = json!({"patrol_test": {"a": 1, "b": "x"}, "maximum_lag_on_failover": 2097152});
    let r = call(lport, "PATCH", "/config", Some(&patch.to_string()), &[]).await;
    assert_eq!(r.code, 200, "{}", r.body);
    let merged = r.json();
    assert_eq!(merged["patrol_test"], json!({"a": 1, "b": "x"}));
    assert_eq!(merged["maximum_lag_on_failover"], json!(2097152));
    assert_eq!(merged["ttl"], json!(10), "untouched keys stay");
    let r = call(rport, "GET", "/config", None, &[]).await;
    assert_eq!(r.json(), merged, "GET /config after PATCH");
    let stored: Value = serde_json::from_str(
        &cluster
            .etcd_get("config")
            .await
            .expect("etcd")
            .expect("config key"),
    )
    .expect("config JSON");
    assert_eq!(stored, merged, "the config key");
    let r = call(
        lport,
        "PATCH",
        "/config",
        Some(r#"{"patrol_test":{"a":null}}"#),
        &[],
    )
    .await;
    assert_eq!(r.json()["patrol_test"], json!({"b": "x"}), "null deletes");

    // ---- PUT /config replaces (echoing the body).
    let mut put = call(lport, "GET", "/config", None, &[]).await.json();
    put["patrol_put"] = json!(true);
    put.as_object_mut().expect("object").remove("patrol_test");
    let r = call(rport, "PUT", "/config", Some(&put.to_string()), &[]).await;
    assert_eq!((r.code, r.json()), (200, put.clone()), "PUT echoes");
    let r = call(lport, "GET", "/config", None, &[]).await;
    assert_eq!(r.json(), put, "GET /config after PUT");

    // ---- A direct write to etcd is seen at once (fresh reads), and PATCH keeps it.
    let mut direct = put.clone();
    direct["patrol_direct"] = json!(1);
    let mut etcd = cluster.etcd().client().await.expect("etcd client");
    etcd.put(
        format!("{}config", cluster.prefix()),
        serde_json::to_string(&direct).expect("json"),
        None,
    )
    .await
    .expect("direct put");
    let r = call(rport, "GET", "/config", None, &[]).await;
    assert_eq!(r.json()["patrol_direct"], json!(1));

    // ---- 409: concurrent PATCHes read the same revision; only one compare-and-swap wins.
    let mut saw_conflict = false;
    let mut winners = Vec::new();
    for round in 0..6 {
        let mut set = tokio::task::JoinSet::new();
        for k in 0..8 {
            let body = json!({"patrol_race": round * 100 + k}).to_string();
            set.spawn(async move {
                (
                    round * 100 + k,
                    call(lport, "PATCH", "/config", Some(&body), &[]).await,
                )
            });
        }
        while let Some(res) = set.join_next().await {
            let (value, r) = res.expect("task");
            match r.code {
                200 => winners.push(value),
                409 => saw_conflict = true,
                other => panic!("PATCH answered {other}: {}", r.body),
            }
        }
        if saw_conflict {
            break;
        }
    }
    assert!(
        saw_conflict,
        "no 409 among concurrent PATCHes (winners {winners:?})"
    );
    let last = call(lport, "GET", "/config", None, &[]).await.json()["patrol_race"].clone();
    assert!(
        winners.iter().any(|w| json!(w) == last),
        "the stored value {last} came from a PATCH that answered 200 ({winners:?})"
    );

    // ---- A key Patrol does not implement: the API writes it, as Patroni's would, and each
    // agent names it in a WARNING once, then says when it is gone.
    let r = call(
        lport,
        "PATCH",
        "/config",
        Some(r#"{"primary_stop_timeout":30}"#),
        &[],
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    let logged =
        "WARNING: dynamic configuration: primary_stop_timeout: not implemented by Patrol yet, ignored";
    let cl = &cluster;
    wait_until(
        "every agent to log the WARNING",
        PROPAGATION_TIMEOUT,
        || async move {
            Ok((0..cl.len())
                .all(|i| cl.agent_log(i).contains(logged))
                .then_some(()))
        },
    )
    .await
    .expect("WARNING logged");
    let r = call(
        lport,
        "PATCH",
        "/config",
        Some(r#"{"primary_stop_timeout":null}"#),
        &[],
    )
    .await;
    assert_eq!(r.code, 200, "{}", r.body);
    wait_until("every agent to log the all-clear", PROPAGATION_TIMEOUT, || async move {
        Ok((0..cl.len())
            .all(|i| {
                cl.agent_log(i).contains(
                    "dynamic configuration: it no longer asks for anything Patrol does not implement",
                )
            })
            .then_some(()))
    })
    .await
    .expect("all-clear logged");
    for i in 0..cluster.len() {
        assert_eq!(
            cluster.agent_log(i).matches(logged).count(),
            1,
            "{}: logged when it changed, not every cycle",
            cluster.name(i)
        );
    }

    // ---- Pause: the cluster view says so and the paused-state rules apply.
    let r = call(lport, "PATCH", "/config", Some(r#"{"pause":true}"#), &[]).await;
    assert_eq!(r.json()["pause"], json!(true));
    assert_eq!(
        call(rport, "GET", "/cluster", None, &[]).await.json()["pause"],
        json!(true)
    );
    let sw = json!({"leader": lname}).to_string();
    assert_text(
        &call(lport, "POST", "/switchover", Some(&sw), &[]).await,
        400,
        "Switchover is possible only to a specific candidate in a paused state",
        "switchover while paused",
    );
    let sched = json!({"schedule": iso_utc_in(3600)}).to_string();
    assert_text(
        &call(rport, "POST", "/restart", Some(&sched), &[]).await,
        500,
        "Can't schedule restart in the paused state",
        "scheduled restart while paused",
    );
    let r = call(
        lport,
        "PATCH",
        "/config",
        Some(r#"{"pause":null,"patrol_race":null,"patrol_put":null,"patrol_direct":null}"#),
        &[],
    )
    .await;
    assert!(r.json().get("pause").is_none(), "{}", r.body);
    assert!(call(rport, "GET", "/cluster", None, &[])
        .await
        .json()
        .get("pause")
        .is_none());

    // ---- Malformed and refused input: never a 5xx for a client's mistake.
    let rname = cluster.name(replica).to_owned();
    let oname = cluster.name(other).to_owned();
    let j = |v: Value| Some(v.to_string());
    let cases: Vec<Case> = vec![
        case("bad JSON", "PATCH", "/config", Some("not json".into()), 400, None),
        case("JSON array", "PATCH", "/config", Some("[1,2]".into()), 400, None),
        case("empty object", "PATCH", "/config", Some("{}".into()), 400, None),
        case("empty PUT", "PUT", "/config", Some("{}".into()), 400, None),
        case("empty failover", "POST", "/failover", Some("{}".into()), 400, None),
        case("restart array", "POST", "/restart", Some("[1]".into()), 400, None),
        case("reinitialize string", "POST", "/reinitialize", Some("\"x\"".into()), 400, None),
        case("role", "POST", "/restart", j(json!({"role": "master"})), 400,
         Some("PostgreSQL role should be either primary, standby_leader, or replica".into())),
        case("unknown filter", "POST", "/restart", j(json!({"when": "now"})), 400,
         Some("Unknown filter for the scheduled restart: when".into())),
        case("version", "POST", "/restart", j(json!({"postgres_version": "9"})), 400,
         Some("Invalid PostgreSQL version format: X.Y or X.Y.Z is accepted: 9".into())),
        case("timeout", "POST", "/restart", j(json!({"timeout": -5})), 400,
         Some("Timeout should be a positive number of seconds".into())),
        case("past", "POST", "/restart", j(json!({"schedule": "2020-01-01T00:00:00+00:00"})), 422,
         Some("Cannot schedule restart in the past".into())),
        case("garbage time", "POST", "/restart", j(json!({"schedule": "next tuesday"})), 422,
         Some("Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601".into())),
        case("no zone", "POST", "/restart", j(json!({"schedule": "2099-01-01T00:00:00"})), 400,
         Some("Timezone information is mandatory for the scheduled restart".into())),
        case("switchover time", "POST", "/switchover", j(json!({"leader": lname, "scheduled_at": "soon"})), 422,
         Some("Unable to parse scheduled timestamp. It should be in an unambiguous format, e.g. ISO 8601".into())),
        case("no candidate", "POST", "/failover", j(json!({"leader": lname})), 400,
         Some("Failover could be performed only to a specific candidate".into())),
        case("no leader", "POST", "/switchover", j(json!({"candidate": rname})), 400,
         Some("Switchover could be performed only from a specific leader".into())),
        case("failover scheduled", "POST", "/failover", j(json!({"candidate": rname, "scheduled_at": iso_utc_in(600)})), 400,
         Some("Failover can't be scheduled".into())),
        case("same", "POST", "/switchover", j(json!({"leader": lname, "candidate": lname})), 400,
         Some("Switchover target and source are the same".into())),
        case("wrong leader", "POST", "/switchover", j(json!({"leader": oname, "candidate": rname})), 412,
         Some("leader name does not match".into())),
        case("unknown candidate", "POST", "/switchover", j(json!({"leader": lname, "candidate": "nobody"})), 412,
         Some("candidate does not exists".into())),
        case("failover to nobody", "POST", "/failover", j(json!({"candidate": "nobody"})), 412,
         Some("candidate does not exists".into())),
        case("reinitialize the leader", "POST", "/reinitialize", None, 503,
         Some("I am the leader, can not reinitialize".into())),
        case("no restart scheduled", "DELETE", "/restart", None, 404,
         Some("no restarts are scheduled".into())),
        case("no switchover scheduled", "DELETE", "/switchover", None, 404,
         Some("no switchover is scheduled".into())),
        case("reload", "POST", "/reload", None, 202, Some("reload scheduled".into())),
        case("sigterm", "POST", "/sigterm", None, 202, Some("shutdown scheduled".into())),
        case("failsafe", "POST", "/failsafe", j(json!({"name": "x"})), 502, None),
        case("unknown method", "PUT", "/patroni", None, 501, None),
        case("DELETE /config", "DELETE", "/config", None, 501, None),
        case("first segment routes", "GET", "/cluster/anything", None, 200, None),
        case("unknown GET is a health check", "GET", "/no-such-check", None, 503, None),
    ];
    for Case {
        what,
        method,
        path,
        body,
        code,
        text,
    } in &cases
    {
        let r = call(lport, method, path, body.as_deref(), &[]).await;
        assert_eq!(
            r.code, *code,
            "{what}: {method} {path} {body:?} -> {}",
            r.body
        );
        match text {
            Some(t) => assert_eq!(&r.body, t, "{what}"),
            None if *code >= 400 && *code != 503 => assert!(
                r.body.contains(&format!("Error code: {code}")),
                "{what}: error page {}",
                r.body
            ),
            None => {}
        }
    }
    // Missing Content-Length where a body is required: 411, also for a chunked body.
    let raw = "POST /switchover HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let r = send_raw(lport, raw.as_bytes(), Duration::from_secs(10))
        .await
        .expect("raw");
    assert_eq!(r.code, 411, "{}", r.body);
    let raw = "PATCH /config HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n";
    let r = send_raw(lport, raw.as_bytes(), Duration::from_secs(10))
        .await
        .expect("raw");
    assert_eq!(r.code, 411, "chunked: {}", r.body);
    // Over 1 MiB: 413 before the body is read; a Content-Length that is not a number: 400.
    let raw =
        "PATCH /config HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2000000\r\n\r\n";
    let r = send_raw(lport, raw.as_bytes(), Duration::from_secs(10))
        .await
        .expect("raw");
    assert_eq!(r.code, 413, "{}", r.body);
    // A body shorter than announced: the read times out (408) or fails (400), never a 5xx.
    let raw = "POST /restart HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 50\r\n\r\n{\"role\":";
    let r = send_raw(lport, raw.as_bytes(), Duration::from_secs(20))
        .await
        .expect("raw");
    assert!(
        matches!(r.code, 400 | 408),
        "short body: {} {}",
        r.code,
        r.body
    );

    // The unsafe calls were audited, and the agents are fine.
    let log = cluster.agent_log(leader);
    assert!(
        log.contains("REST API: PATCH /config from 127.0.0.1 user=- -> 200"),
        "audit line missing"
    );
    assert!(log.contains("REST API: POST /switchover from 127.0.0.1 user=- -> 412"));
    assert!(log.contains("REST API: POST /reload from 127.0.0.1 user=- -> 202"));
    assert_eq!(
        index_of(
            &cluster,
            &cluster.leader().await.expect("etcd").expect("leader")
        ),
        Some(leader),
        "nothing above changed the leader"
    );
    assert_agents_alive(&mut cluster);
}

/// `postmaster_start_time` from node `i`'s `GET /patroni`.
async fn start_time(cluster: &Cluster, i: usize) -> Option<String> {
    let r = call(cluster.api_port(i), "GET", "/patroni", None, &[]).await;
    r.json()["postmaster_start_time"].as_str().map(String::from)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_reinitialize() {
    let mut cluster = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut cluster).await;
    let replicas: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (r1, r2) = (replicas[0], replicas[1]);
    let port = cluster.api_port(r1);
    let all: Vec<usize> = (0..3).collect();

    // ---- Immediate restart: 200, a new postmaster.
    let before = start_time(&cluster, r1).await.expect("start time");
    let r = call_within(
        port,
        "POST",
        "/restart",
        Some("{}"),
        &[],
        Duration::from_secs(120),
    )
    .await;
    assert_text(&r, 200, "restarted successfully", "POST /restart");
    let cl = &cluster;
    let b = before.clone();
    let after = wait_until("a new postmaster_start_time", PROPAGATION_TIMEOUT, || {
        let b = b.clone();
        async move { Ok(start_time(cl, r1).await.filter(|t| *t != b)) }
    })
    .await
    .expect("restarted");
    assert_ne!(after, before);
    wait_healthy(&cluster, &all, PROPAGATION_TIMEOUT)
        .await
        .expect("healthy after the restart");

    // ---- Filters that do not match: 503.
    let r = call_within(
        port,
        "POST",
        "/restart",
        Some(r#"{"role":"primary"}"#),
        &[],
        Duration::from_secs(60),
    )
    .await;
    assert_text(
        &r,
        503,
        "restart conditions are not satisfied",
        "role filter",
    );
    let r = call_within(
        port,
        "POST",
        "/restart",
        Some(r#"{"postgres_version":"10.0"}"#),
        &[],
        Duration::from_secs(60),
    )
    .await;
    assert_text(
        &r,
        503,
        "restart conditions are not satisfied",
        "version filter",
    );
    assert_eq!(
        start_time(&cluster, r1).await.as_deref(),
        Some(after.as_str()),
        "no restart"
    );

    // ---- Scheduled restart: 202, 409 for a second one, visible in /cluster, cancelled.
    let at = iso_utc_in(3600);
    let body = json!({"schedule": at, "role": "replica"}).to_string();
    assert_text(
        &call(port, "POST", "/restart", Some(&body), &[]).await,
        202,
        "Restart scheduled",
        "schedule",
    );
    assert_text(
        &call(port, "POST", "/restart", Some(&body), &[]).await,
        409,
        "Another restart is already scheduled",
        "second schedule",
    );
    let name = cluster.name(r1).to_owned();
    let n = name.clone();
    let want = at.clone();
    wait_until(
        "/cluster to show the scheduled restart",
        PROPAGATION_TIMEOUT,
        || {
            let (n, want) = (n.clone(), want.clone());
            async move {
                let v = call(cl.api_port(leader), "GET", "/cluster", None, &[])
                    .await
                    .json();
                let m = v["members"]
                    .as_array()
                    .and_then(|ms| ms.iter().find(|m| m["name"] == json!(n)).cloned());
                Ok(
                    m.filter(|m| m["scheduled_restart"]["schedule"] == json!(want))
                        .map(|_| ()),
                )
            }
        },
    )
    .await
    .expect("scheduled_restart in the member key");
    assert_text(
        &call(port, "DELETE", "/restart", None, &[]).await,
        200,
        "scheduled restart deleted",
        "cancel",
    );
    assert_text(
        &call(port, "DELETE", "/restart", None, &[]).await,
        404,
        "no restarts are scheduled",
        "cancel again",
    );

    // ---- A scheduled restart that comes due restarts PostgreSQL.
    let body = json!({"schedule": iso_utc_in(3)}).to_string();
    assert_text(
        &call(port, "POST", "/restart", Some(&body), &[]).await,
        202,
        "Restart scheduled",
        "soon",
    );
    let a = after.clone();
    wait_until(
        "the scheduled restart to happen",
        PROPAGATION_TIMEOUT,
        || {
            let a = a.clone();
            async move { Ok(start_time(cl, r1).await.filter(|t| *t != a)) }
        },
    )
    .await
    .expect("scheduled restart ran");

    // ---- Reinitialize a replica: its data directory is cloned again and it streams again.
    let client = cluster.connect(leader).await.expect("connect leader");
    client
        .batch_execute(
            "CREATE TABLE reinit_probe(v text); INSERT INTO reinit_probe VALUES ('before')",
        )
        .await
        .expect("write on the leader");
    let log_before = cluster.agent_log(r2).len();
    let r = call(
        cluster.api_port(r2),
        "POST",
        "/reinitialize",
        Some(r#"{"force":false}"#),
        &[],
    )
    .await;
    assert_text(&r, 200, "reinitialize started", "reinitialize");
    // The clone's end, not its start: the reason "cloning from" is logged just before the
    // member key says "creating replica", so the old "running, streaming" key may still be read
    // right after it.
    wait_until(
        "the reinitialized replica to clone",
        HEALTHY_TIMEOUT,
        || async move {
            let log = cl.agent_log(r2);
            let log = &log[log_before..];
            Ok((log.contains("cloning from") && log.contains("Clone finished")).then_some(()))
        },
    )
    .await
    .expect("clone finished");
    wait_healthy(&cluster, &all, HEALTHY_TIMEOUT)
        .await
        .expect("the reinitialized replica streams again");
    let c2 = cluster
        .connect(r2)
        .await
        .expect("connect reinitialized replica");
    let row = c2
        .query_one("SELECT v FROM reinit_probe", &[])
        .await
        .expect("the clone has the leader's data");
    assert_eq!(row.get::<_, String>(0), "before");
    assert_agents_alive(&mut cluster);
}
