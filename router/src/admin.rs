//! The admin port: the stats page (HTML, auto-refresh), the same as JSON, `/metrics`, and
//! `/health` for an upstream load balancer. Optional Basic auth (not on `/health`). Bounded:
//! `admin.max_connections` at once, and a deadline for each request's headers.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::state::Shared;
use crate::table::Port;

fn epoch(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The stats as JSON (also what the HTML page renders).
pub fn stats_json(shared: &Shared) -> Value {
    let t = shared.table.load_full();
    let leader_since = shared
        .leader_since
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let members: Vec<Value> = t
        .members
        .iter()
        .map(|m| {
            json!({
                "name": m.name,
                "address": m.addr.map(|a| a.to_string()),
                "role": m.role,
                "sync_state": m.sync_role.map(|r| r.as_str()),
                "state": m.state,
                "timeline": m.timeline,
                "lag_bytes": m.lag_bytes,
                "lag_seconds": m.lag_seconds,
                "write_pool": m.in_write_pool,
                "read_pool": m.in_read_pool,
                "reason": m.reason,
                "sessions": {
                    "write": shared.sessions.count(Port::Write, &m.name),
                    "read": shared.sessions.count(Port::Read, &m.name),
                },
                "redirected_sessions": shared.local.as_ref().map(|l| json!({
                    "write": l.sessions(Port::Write, &m.name),
                    "read": l.sessions(Port::Read, &m.name),
                })),
            })
        })
        .collect();
    let events: Vec<Value> = shared
        .events
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .take(50)
        .map(|e| json!({"at": epoch(e.at), "text": e.text}))
        .collect();
    json!({
        "cluster": shared.cfg.scope,
        "namespace": shared.cfg.namespace,
        "leader": t.leader,
        "leader_since": leader_since.map(|(n, at)| json!({"name": n, "since": epoch(at)})),
        "write_backend": t.writer.as_ref().map(|w| json!({"name": w.name, "address": w.addr.to_string()})),
        "write_reason": t.writer_reason,
        "standby_cluster": t.standby_cluster,
        "read_backends": t.readers.iter().map(|r| r.name.clone()).collect::<Vec<_>>(),
        "dcs": {"healthy": t.dcs_healthy, "watch_reconnects": shared.metrics.watch_reconnects_total.get()},
        "sessions": shared.sessions.total(),
        "relay": if shared.splicer.is_some() { "kernel" } else { "user space" },
        // Clients on this host routed at connect time (their sessions bypass the relay).
        "redirect_local": shared.local.is_some(),
        "connections": shared.connections.load(std::sync::atomic::Ordering::Relaxed),
        "table_generation": t.generation,
        "members": members,
        "events": events,
        "uptime_seconds": shared.started.elapsed().as_secs(),
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The HTML stats page.
pub fn stats_html(shared: &Shared) -> String {
    let v = stats_json(shared);
    let s = |x: &Value| match x {
        Value::Null => "-".to_string(),
        Value::String(s) => esc(s),
        other => esc(&other.to_string()),
    };
    let mut rows = String::new();
    for m in v["members"].as_array().into_iter().flatten() {
        rows.push_str(&format!(
            "<tr class=\"{cls}\"><td>{name}</td><td>{addr}</td><td>{role}</td><td>{sync}</td><td>{state}</td><td>{tl}</td><td>{lag}</td><td>{lags}</td><td>{w}</td><td>{r}</td><td>{reason}</td><td>{ws}</td><td>{rs}</td></tr>\n",
            cls = if m["write_pool"] == true { "writer" } else if m["read_pool"] == true { "reader" } else { "out" },
            name = s(&m["name"]),
            addr = s(&m["address"]),
            role = s(&m["role"]),
            sync = s(&m["sync_state"]),
            state = s(&m["state"]),
            tl = s(&m["timeline"]),
            lag = s(&m["lag_bytes"]),
            lags = s(&m["lag_seconds"]),
            w = if m["write_pool"] == true { "yes" } else { "-" },
            r = if m["read_pool"] == true { "yes" } else { "-" },
            reason = s(&m["reason"]),
            ws = with_redirected(s(&m["sessions"]["write"]), &m["redirected_sessions"]["write"]),
            rs = with_redirected(s(&m["sessions"]["read"]), &m["redirected_sessions"]["read"]),
        ));
    }
    let mut events = String::new();
    for e in v["events"].as_array().into_iter().flatten() {
        let at = e["at"].as_f64().unwrap_or(0.0);
        let ts = chrono_like(at);
        events.push_str(&format!("<li><code>{ts}</code> {}</li>\n", s(&e["text"])));
    }
    let leader_for = v["leader_since"]["since"]
        .as_f64()
        .map(|since| format!(" for {:.0} s", epoch(SystemTime::now()) - since))
        .unwrap_or_default();
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="2">
<title>patrol-router: {cluster}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #999; padding: 4px 8px; }}
tr.writer {{ background: #cfe8cf; }} tr.reader {{ background: #dde8f8; }} tr.out {{ background: #f3e3e3; }}
.dcs-ok {{ color: #070; }} .dcs-bad {{ color: #a00; font-weight: bold; }}
</style></head><body>
<h1>patrol-router: cluster <span id="cluster">{cluster}</span></h1>
<p>{leader_kind}: <b id="leader">{leader}</b>{leader_for}. Write port → <b id="writer">{writer}</b> {wreason}</p>
<p>Read pool: <b id="readers">{readers}</b>. Sessions: {sessions} (relayed in {relay}{redirect}). etcd view: <span class="{dcs_cls}">{dcs}</span> (watch re-established {reconnects} times).</p>
<table id="members"><tr><th>member</th><th>address</th><th>role</th><th>sync</th><th>state</th><th>TL</th><th>lag bytes</th><th>lag s</th><th>write pool</th><th>read pool</th><th>why not</th><th>write sessions</th><th>read sessions</th></tr>
{rows}</table>
<h2>Recent events</h2><ul id="events">
{events}</ul>
<p><a href="/stats.json">JSON</a> · <a href="/metrics">metrics</a></p>
</body></html>
"#,
        cluster = s(&v["cluster"]),
        leader_kind = if v["standby_cluster"] == true {
            "Standby leader (standby cluster)"
        } else {
            "Leader"
        },
        leader = s(&v["leader"]),
        writer = s(&v["write_backend"]["name"]),
        wreason = if v["write_backend"].is_null() {
            format!("({})", s(&v["write_reason"]))
        } else {
            String::new()
        },
        readers = v["read_backends"]
            .as_array()
            .map(|a| a.iter().map(&s).collect::<Vec<_>>().join(", "))
            .filter(|x| !x.is_empty())
            .unwrap_or_else(|| "none".into()),
        sessions = s(&v["sessions"]),
        dcs_cls = if v["dcs"]["healthy"] == true {
            "dcs-ok"
        } else {
            "dcs-bad"
        },
        dcs = if v["dcs"]["healthy"] == true {
            "current".to_string()
        } else {
            "LOST: routing writes to the last leader only while its agent confirms it is primary"
                .to_string()
        },
        reconnects = s(&v["dcs"]["watch_reconnects"]),
        relay = s(&v["relay"]),
        redirect = if v["redirect_local"] == true {
            "; local clients routed at connect time"
        } else {
            ""
        },
    )
}

/// A session count with the member's redirected sessions beside it, when there are any.
fn with_redirected(relayed: String, redirected: &Value) -> String {
    match redirected.as_u64() {
        Some(n) if n > 0 => format!("{relayed} + {n} redirected"),
        _ => relayed,
    }
}

/// `HH:MM:SS` UTC of an epoch time (no date crate needed for the page).
fn chrono_like(epoch_secs: f64) -> String {
    let s = epoch_secs as u64 % 86_400;
    format!("{:02}:{:02}:{:02}Z", s / 3600, (s / 60) % 60, s % 60)
}

fn authorized(shared: &Shared, req: &Request<Incoming>) -> bool {
    let Some((user, pass)) = &shared.cfg.admin_auth else {
        return true;
    };
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    let got = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .unwrap_or("");
    got.as_bytes().ct_eq(expected.as_bytes()).into()
}

fn reply(code: StatusCode, ctype: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("Content-Type", ctype)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

async fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if path == "/health" {
        let t = shared.table.load();
        let ok = t.dcs_healthy || t.writer.is_some();
        return reply(
            if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE },
            "application/json",
            json!({"dcs_healthy": t.dcs_healthy, "write_backend": t.writer.as_ref().map(|w| w.name.clone())}).to_string(),
        );
    }
    if !authorized(shared, &req) {
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            "text/plain",
            "authentication required\n".into(),
        );
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"patrol-router\""),
        );
        return r;
    }
    match path.as_str() {
        "/" | "/stats" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            stats_html(shared),
        ),
        "/stats.json" => reply(
            StatusCode::OK,
            "application/json",
            stats_json(shared).to_string(),
        ),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            shared.metrics.render(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

/// Upper bound for one admin connection (kept alive, it serves many requests).
const CONNECTION_LIMIT: Duration = Duration::from_secs(60);

/// Serves the admin port until `shutdown`: at most `admin.max_connections` connections at once
/// (one more is closed as soon as it is accepted), each with `admin.header_timeout_ms` to send a
/// request's headers and [`CONNECTION_LIMIT`] in all.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, shutdown: CancellationToken) {
    let max = shared.cfg.admin_max_connections;
    let slots = Arc::new(Semaphore::new(max));
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(_) => { tokio::time::sleep(Duration::from_millis(20)).await; continue; }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shared
                .metrics
                .rejected_total
                .with_label_values(&["admin", "max_connections"])
                .inc();
            shared.warn_limited(
                "admin port full",
                format!(
                    "admin port: {max} connections open (admin.max_connections); closing new ones \
                     (the last from {peer})"
                ),
            );
            drop(stream);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(|req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, req).await) }
            });
            let conn = http1::Builder::new()
                .keep_alive(true)
                .timer(TokioTimer::new())
                .header_read_timeout(shared.cfg.admin_header_timeout)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
            drop(slot);
        });
    }
}
