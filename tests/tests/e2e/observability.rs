//! Prometheus and Grafana files against the real tools: `promtool` accepts
//! `grafana/prometheus.yml` (a copy rendered with a test cluster's ports), `grafana/alerts.yml`
//! and every expression of the dashboard and the rules; a real Prometheus scrapes a running
//! 3-node cluster's router (and the agents, when they answer `/metrics`); every expression that
//! uses the router's metrics returns data from it (the agents' too when they are scraped); and
//! `PatrolRouterNoWriteBackend` fires while the cluster has no leader.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::start_all;
use anyhow::{bail, Context};
use patrol_tests::{free_port, wait_until, workspace_dir, Cluster, Proc, Router, Signal};
use serde_json::Value;

/// The agent metrics (spec 2.6 of the Patroni reference: Patroni 4.x's `GET /metrics`).
const PATRONI_METRICS: &[&str] = &[
    "patroni_version",
    "patroni_postgres_running",
    "patroni_postmaster_start_time",
    "patroni_primary",
    "patroni_xlog_location",
    "patroni_standby_leader",
    "patroni_replica",
    "patroni_sync_standby",
    "patroni_quorum_standby",
    "patroni_xlog_received_location",
    "patroni_xlog_replayed_location",
    "patroni_xlog_replayed_timestamp",
    "patroni_xlog_paused",
    "patroni_postgres_streaming",
    "patroni_postgres_in_archive_recovery",
    "patroni_postgres_server_version",
    "patroni_cluster_unlocked",
    "patroni_failsafe_mode_is_active",
    "patroni_postgres_timeline",
    "patroni_dcs_last_seen",
    "patroni_pending_restart",
    "patroni_is_paused",
    "patroni_postgres_state",
];

/// An expression to check, and where it comes from.
#[derive(Debug, Clone)]
struct Expr {
    origin: String,
    expr: String,
}

impl Expr {
    /// Metric names it uses (`patroni_*`, `patrol_router_*`).
    fn metrics(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let b = self.expr.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
            if ident(b[i]) && (i == 0 || !ident(b[i - 1])) {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let w = &self.expr[start..i];
                if w.starts_with("patroni_") || w.starts_with("patrol_router_") {
                    out.insert(w.to_string());
                }
            } else {
                i += 1;
            }
        }
        out
    }

    fn uses_agent_metrics(&self) -> bool {
        self.metrics().iter().any(|m| m.starts_with("patroni_"))
    }

    /// The expression with every comparison against a number made a `bool` one, so it returns
    /// its series whether or not the condition holds (alert rules are empty while all is well).
    fn with_bool_comparisons(&self) -> String {
        let mut out = String::new();
        let s = self.expr.as_str();
        let mut i = 0;
        while i < s.len() {
            let rest = &s[i..];
            let op = ["==", "!=", ">=", "<=", ">", "<"]
                .into_iter()
                .find(|op| rest.starts_with(op));
            if let Some(op) = op {
                let after = rest[op.len()..].trim_start();
                if after.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
                    out.push_str(op);
                    out.push_str(" bool");
                    i += op.len();
                    continue;
                }
                out.push_str(op);
                i += op.len();
                continue;
            }
            let c = rest.chars().next().expect("non-empty");
            out.push(c);
            i += c.len_utf8();
        }
        out
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every PromQL expression of the dashboard (with `$scope` as `.*`) and of the alert rules.
fn expressions() -> Vec<Expr> {
    let g = workspace_dir().join("grafana");
    let dash: Value =
        serde_json::from_str(&read(&g.join("patrol-dashboard.json"))).expect("dashboard JSON");
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().expect("expr");
            out.push(Expr {
                origin: format!("dashboard panel {:?} {}", p["title"], t["refId"]),
                expr: e.replace("$scope", ".*"),
            });
        }
    }
    // Template variables: `label_values(<metric>, <label>)` needs the metric.
    for v in dash["templating"]["list"].as_array().into_iter().flatten() {
        let q = v["query"].as_str().unwrap_or("");
        let metric = q
            .strip_prefix("label_values(")
            .and_then(|r| r.split(',').next())
            .unwrap_or(q);
        out.push(Expr {
            origin: format!("dashboard variable {}", v["name"]),
            expr: metric.trim().to_string(),
        });
    }
    let rules: serde_json::Value =
        serde_yaml_ng::from_str(&read(&g.join("alerts.yml"))).expect("alerts YAML");
    for group in rules["groups"].as_array().expect("groups") {
        for r in group["rules"].as_array().expect("rules") {
            out.push(Expr {
                origin: format!("alert {}", r["alert"].as_str().unwrap_or("?")),
                expr: r["expr"].as_str().expect("expr").to_string(),
            });
        }
    }
    out
}

fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("run promtool (is prometheus installed?)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A rules file with every expression as a recording rule: promtool parses each.
fn write_record_rules(dir: &Path, exprs: &[Expr]) -> PathBuf {
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(
            |(i, e)| serde_json::json!({"record": format!("patrol_test:expr_{i}"), "expr": e.expr}),
        )
        .collect();
    let doc = serde_json::json!({"groups": [{"name": "expressions", "rules": rules}]});
    let path = dir.join("expressions.yml");
    std::fs::write(&path, serde_yaml_ng::to_string(&doc).expect("yaml")).expect("write rules");
    path
}

#[test]
fn promtool_accepts_the_shipped_files_and_every_expression() {
    let g = workspace_dir().join("grafana");
    let (ok, out) = promtool(&[
        "check",
        "rules",
        &g.join("alerts.yml").display().to_string(),
    ]);
    assert!(ok, "promtool check rules grafana/alerts.yml:\n{out}");
    let (ok, out) = promtool(&[
        "check",
        "config",
        &g.join("prometheus.yml").display().to_string(),
    ]);
    assert!(ok, "promtool check config grafana/prometheus.yml:\n{out}");
    let exprs = expressions();
    assert!(exprs.len() >= 20, "{exprs:?}");
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = write_record_rules(dir.path(), &exprs);
    let (ok, out) = promtool(&["check", "rules", &rules.display().to_string()]);
    assert!(
        ok,
        "promtool rejects a dashboard or alert expression:\n{out}"
    );
    // The check is real: a broken expression is refused.
    let broken = write_record_rules(
        dir.path(),
        &[Expr {
            origin: "test".into(),
            expr: "sum by (scope (patroni_primary)".into(),
        }],
    );
    assert!(!promtool(&["check", "rules", &broken.display().to_string()]).0);
    // Every metric name exists: the agents' are Patroni's (spec 2.6), the router's are
    // checked against its /metrics by the end-to-end test below.
    for e in &exprs {
        for m in e.metrics() {
            if m.starts_with("patroni_") {
                assert!(
                    PATRONI_METRICS.contains(&m.as_str()),
                    "{}: {m} is not a Patroni metric",
                    e.origin
                );
            }
        }
    }
}

/// Renders `grafana/prometheus.yml` for the test: 1 s intervals, the real targets, and the
/// rules file `rules`.
fn render_prometheus_yml(rules: &Path, agents: &[String], router: &str) -> String {
    let text = read(&workspace_dir().join("grafana/prometheus.yml"));
    let mut doc: Value = serde_yaml_ng::from_str(&text).expect("prometheus.yml");
    doc["global"]["scrape_interval"] = "1s".into();
    doc["global"]["evaluation_interval"] = "1s".into();
    doc["rule_files"] = serde_json::json!([rules.display().to_string()]);
    let jobs = doc["scrape_configs"]
        .as_array_mut()
        .expect("scrape_configs");
    jobs.retain_mut(|j| match j["job_name"].as_str() {
        Some("patrol") if !agents.is_empty() => {
            j["static_configs"] = serde_json::json!([{"targets": agents}]);
            true
        }
        Some("patrol-router") => {
            j["static_configs"] = serde_json::json!([{"targets": [router]}]);
            true
        }
        _ => false,
    });
    serde_yaml_ng::to_string(&doc).expect("yaml")
}

struct Prometheus {
    proc: Proc,
    url: String,
    http: reqwest::Client,
}

impl Prometheus {
    async fn query(&self, q: &str) -> anyhow::Result<Vec<Value>> {
        let v: Value = self
            .http
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", q)])
            .send()
            .await?
            .json()
            .await?;
        if v["status"] != "success" {
            bail!("query {q:?}: {v}");
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// (state) of alert `name`, if Prometheus lists it.
    async fn alert_state(&self, name: &str) -> anyhow::Result<Option<String>> {
        let v: Value = self
            .http
            .get(format!("{}/api/v1/alerts", self.url))
            .send()
            .await?
            .json()
            .await?;
        Ok(v["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["labels"]["alertname"] == name)
            .and_then(|a| a["state"].as_str().map(String::from)))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.proc.kill();
        if std::thread::panicking() {
            eprintln!(
                "===== prometheus (last 40 lines) =====\n{}",
                self.proc.log_tail(40)
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prometheus_scrapes_a_cluster_and_every_expression_returns_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let mut cluster = Cluster::new(3).expect("cluster");
    let leader = start_all(&mut cluster).await;
    let router = Router::start(&cluster, "").expect("router");

    // Agents are scraped when they answer /metrics.
    let mut agents = Vec::new();
    for i in 0..3 {
        let (code, _) = cluster.api_get(i, "/metrics").await.expect("GET /metrics");
        if code == 200 {
            agents.push(format!("127.0.0.1:{}", cluster.api_port(i)));
        }
    }
    let agents_scraped = agents.len() == 3;
    println!(
        "agents' GET /metrics: {}",
        if agents_scraped {
            "200, scraped"
        } else {
            "not served by this build; patroni_* expressions are only parsed"
        }
    );

    // The rules as shipped, with short `for` so the test does not wait minutes.
    let rules = d.join("alerts.yml");
    let text = read(&workspace_dir().join("grafana/alerts.yml"));
    let short: String = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 2s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&rules, short).expect("write rules");
    let config = d.join("prometheus.yml");
    let router_target = format!("127.0.0.1:{}", router.admin_port());
    std::fs::write(
        &config,
        render_prometheus_yml(&rules, &agents, &router_target),
    )
    .expect("write prometheus.yml");
    let (ok, out) = promtool(&["check", "config", &config.display().to_string()]);
    assert!(ok, "promtool check config (rendered copy):\n{out}");

    let port = free_port();
    let mut cmd = Command::new("prometheus");
    cmd.arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", d.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .current_dir(d);
    let prom = Prometheus {
        proc: Proc::spawn("prometheus", cmd, d.join("prometheus.log")).expect("prometheus"),
        url: format!("http://127.0.0.1:{port}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client"),
    };
    wait_until("Prometheus ready", Duration::from_secs(60), || async {
        let r = prom
            .http
            .get(format!("{}/-/ready", prom.url))
            .send()
            .await?;
        Ok((r.status().as_u16() == 200).then_some(()))
    })
    .await
    .expect("prometheus ready");

    // Traffic through the router: sessions held on both ports, a few writes and reads.
    let write = router.connect_write().await.expect("write session");
    write
        .batch_execute("CREATE TABLE obs (v int); INSERT INTO obs SELECT generate_series(1, 100)")
        .await
        .expect("writes");
    let read = router.connect_read().await.expect("read session");
    wait_until(
        "the read pool to serve",
        Duration::from_secs(30),
        || async {
            Ok(read
                .query_one("SELECT count(*) FROM obs", &[])
                .await
                .ok()
                .map(|_| ()))
        },
    )
    .await
    .expect("read through the router");

    // The leader loses its agent (PostgreSQL keeps running): once its key expires and another
    // member is promoted, the router closes the write session to the old leader itself.
    cluster.kill_node(leader);
    wait_until(
        "the router to close the write session to the old leader",
        Duration::from_secs(120),
        || async {
            let m = router.metrics().await?;
            Ok(
                m.contains("patrol_router_sessions_killed_total{port=\"write\"}")
                    .then_some(()),
            )
        },
    )
    .await
    .expect("write session closed by the router");

    let exprs = expressions();
    wait_until(
        "Prometheus to scrape the router",
        Duration::from_secs(60),
        || async {
            let r = prom.query("up{job=\"patrol-router\"} == 1").await?;
            Ok((!r.is_empty()).then_some(()))
        },
    )
    .await
    .expect("router scraped");
    let state = prom
        .alert_state("PatrolRouterNoWriteBackend")
        .await
        .expect("alerts");
    assert_ne!(
        state.as_deref(),
        Some("firing"),
        "PatrolRouterNoWriteBackend fires while the cluster has a leader"
    );
    if agents_scraped {
        for e in exprs.iter().filter(|e| e.uses_agent_metrics()) {
            let q = e.with_bool_comparisons();
            wait_until(
                &format!("{} to return data: {q}", e.origin),
                Duration::from_secs(60),
                || async { Ok((!prom.query(&q).await?.is_empty()).then_some(())) },
            )
            .await
            .expect("agent expression returns data");
        }
    }

    // No leader: every agent stops. The router's alert fires.
    for i in 0..3 {
        if cluster.is_node_running(i) {
            cluster.stop_node(i, Signal::SIGTERM).expect("stop agent");
        }
    }
    for i in 0..3 {
        cluster.wait_node_exit(i, Duration::from_secs(60)).await;
    }
    wait_until(
        "PatrolRouterNoWriteBackend to fire",
        Duration::from_secs(120),
        || async {
            let s = prom.alert_state("PatrolRouterNoWriteBackend").await?;
            if s.as_deref() == Some("firing") {
                Ok(Some(()))
            } else {
                bail!("state {s:?}")
            }
        },
    )
    .await
    .expect("no-leader alert fires");
    println!("PatrolRouterNoWriteBackend fired while the cluster had no leader");
    drop(write);

    // Every router metric the files use is one the router exports (labelled ones appear once
    // used: sessions were killed by now).
    let exported = router.metrics().await.expect("router /metrics");
    for e in &exprs {
        for m in e
            .metrics()
            .iter()
            .filter(|m| m.starts_with("patrol_router_"))
        {
            let base = m
                .strip_suffix("_bucket")
                .or_else(|| m.strip_suffix("_sum"))
                .or_else(|| m.strip_suffix("_count"))
                .unwrap_or(m);
            assert!(
                exported.contains(&format!("# TYPE {base} ")),
                "{}: the router does not export {m}",
                e.origin
            );
        }
    }

    // Every router expression returns data (comparisons as `bool`: alert conditions hold or
    // not, the series must be there). Range functions need a few scrapes.
    let router_exprs: Vec<&Expr> = exprs.iter().filter(|e| !e.uses_agent_metrics()).collect();
    assert!(router_exprs.len() >= 10, "{router_exprs:?}");
    for e in router_exprs {
        let q = e.with_bool_comparisons();
        let result = wait_until(
            &format!("{} to return data: {q}", e.origin),
            Duration::from_secs(60),
            || async {
                let r = prom.query(&q).await.context("query")?;
                Ok((!r.is_empty()).then_some(r))
            },
        )
        .await
        .expect("router expression returns data");
        println!("{}: {} series", e.origin, result.len());
    }
}

#[test]
fn bool_comparisons_keep_every_series() {
    let e = Expr {
        origin: "t".into(),
        expr: "up{job=\"patrol\"} == 0 or x >= 1 and y > z".into(),
    };
    assert_eq!(
        e.with_bool_comparisons(),
        "up{job=\"patrol\"} == bool 0 or x >= bool 1 and y > z"
    );
    assert_eq!(
        e.metrics(),
        BTreeSet::new(),
        "only patroni_/patrol_router_ names count"
    );
}
