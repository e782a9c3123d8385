//! The endpoint handlers: each turns a request into a [`Reply`], reading the DCS fresh where
//! Patroni does, writing `config`/`failover` with compare-and-swap where Patroni does, and
//! handing restart/reinitialize to the HA loop through `SharedState::request`.

use std::time::Duration;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request};
use patrol_dcs::{Cluster, DcsError};
use serde_json::{Map, Value};

use super::health::{health_code, liveness, readiness, status_json};
use super::input::{
    self, no_good_candidates, patch_config, reinitialize_options, restart_plan, switchover_outcome,
    switchover_plan, Action, RestartPlan, SwitchoverPlan,
};
use super::{metrics, views, ApiContext, Handler, Reply, MAX_BODY, READ_TIMEOUT};
use crate::config::Config;
use crate::ha::Request as HaRequest;
use crate::peer::member_client;

/// Deadline for a candidate's `GET /patroni` during switchover validation.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a switchover's outcome is polled in the DCS (Patroni: 1 s).
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The HTTP client for peers' `GET /patroni`. Like Patroni's member-to-member requests it does
/// not verify the peer's server certificate, and presents our client certificate
/// (`ctl.certfile`/`keyfile`, else `restapi.certfile`/`keyfile`) in case peers demand one.
pub(super) fn peer_client(cfg: &Config) -> reqwest::Client {
    member_client(cfg, PROBE_TIMEOUT)
}

/// Runs the handler of a route (access already checked).
pub(super) async fn dispatch(ctx: &ApiContext, h: Handler, req: Request<Incoming>) -> Reply {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    match h {
        Handler::Status => {
            // Patroni's GET /patroni runs the status query for each request. Also when the
            // last cycle has no status but PostgreSQL runs (the moments around a promotion):
            // that is when routers and peers most need the live role.
            let mut snap = ctx.shared.snapshot();
            if snap.status.is_some() || snap.node.state == "running" {
                if let Ok(Ok(mut fresh)) =
                    tokio::time::timeout(Duration::from_secs(2), ctx.pg.status()).await
                {
                    // Without a WAL receiver the SQL view gives a standby the last
                    // restartpoint's timeline, older than the one it replays after a failover;
                    // the HA loop read the real one from the WAL files. Peers racing for the
                    // key compare timelines with the cluster's history.
                    if let Some(known) = snap.status.as_ref().filter(|s| s.in_recovery) {
                        if fresh.in_recovery {
                            fresh.timeline = fresh.timeline.max(known.timeline);
                        }
                    }
                    snap.status = Some(fresh);
                }
            }
            Reply::json(200, status_json(&ctx.cfg, &snap))
        }
        Handler::Health => {
            let snap = ctx.shared.snapshot();
            let code = health_code(&ctx.cfg, &snap, &path, &query);
            if method == Method::GET {
                Reply::json(code.as_u16(), status_json(&ctx.cfg, &snap))
            } else {
                Reply::bare(code)
            }
        }
        Handler::Liveness => Reply::bare(liveness(&ctx.shared.snapshot())),
        Handler::Readiness => Reply::bare(readiness(&ctx.shared.snapshot(), &query)),
        Handler::Cluster => match fresh_cluster(ctx).await {
            Ok(c) => Reply::json(200, views::cluster_json(&c, &ctx.cfg.scope)),
            Err(r) => r,
        },
        Handler::History => match fresh_cluster(ctx).await {
            Ok(c) => Reply::json(200, views::history_json(&c)),
            Err(r) => r,
        },
        Handler::Config => match fresh_cluster(ctx).await {
            Ok(c) => match c.config {
                Some(cfg) if cfg.version > 0 => Reply::json(200, Value::Object(cfg.value.data)),
                _ => Reply::error(502),
            },
            Err(r) => r,
        },
        Handler::Failsafe => failsafe(ctx),
        Handler::Metrics => Reply::plain(200, metrics::render(&ctx.cfg, &ctx.shared.snapshot())),
        Handler::PatchConfig => with_body(req, true, |b| patch(ctx, b)).await,
        Handler::PutConfig => with_body(req, true, |b| put(ctx, b)).await,
        Handler::Reload => {
            // Patroni answers at once; the HA loop re-reads the file between cycles.
            let shared = ctx.shared.clone();
            tokio::spawn(async move {
                let (code, text) = shared.request(|reply| HaRequest::Reload { reply }).await;
                tracing::info!("reload: {code} {text}");
            });
            Reply::text(202, "reload scheduled")
        }
        Handler::Restart => with_body(req, false, |b| restart(ctx, b)).await,
        Handler::CancelRestart => {
            let (code, text) = ctx
                .shared
                .request(|reply| HaRequest::CancelRestart { reply })
                .await;
            Reply::text(code, text)
        }
        Handler::Reinitialize => with_body(req, false, |b| reinitialize(ctx, b)).await,
        Handler::Switchover => {
            with_body(req, true, |b| switchover(ctx, Action::Switchover, b)).await
        }
        Handler::Failover => with_body(req, true, |b| switchover(ctx, Action::Failover, b)).await,
        Handler::CancelSwitchover => cancel_switchover(ctx).await,
        Handler::Sigterm => Reply::text(202, "shutdown scheduled"),
        Handler::PostFailsafe => with_body(req, true, |b| post_failsafe(ctx, b)).await,
        // Citus: we are never a coordinator; the event is acknowledged, with the warning below.
        Handler::Mpp => {
            WARNED_MPP.call_once(warn_mpp);
            with_body(req, true, |_| async { Reply::text(200, "OK") }).await
        }
    }
}

static WARNED_MPP: std::sync::Once = std::sync::Once::new();

/// Reads the JSON object body (spec 2.1): no `Content-Length` → 411 when required (empty
/// object when optional); over [`MAX_BODY`] → 413; not a JSON object, or an empty object when
/// required → 400; slower than [`READ_TIMEOUT`] → 408.
async fn read_body(req: Request<Incoming>, required: bool) -> Result<Map<String, Value>, Reply> {
    let Some(len) = req.headers().get(hyper::header::CONTENT_LENGTH) else {
        return if required {
            Err(Reply::error(411))
        } else {
            Ok(Map::new())
        };
    };
    let len: u64 = len
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Reply::error(400))?;
    if len > MAX_BODY {
        return Err(Reply::error(413));
    }
    if len == 0 && !required {
        return Ok(Map::new());
    }
    let limited = Limited::new(req.into_body(), MAX_BODY as usize);
    let bytes = match tokio::time::timeout(READ_TIMEOUT, limited.collect()).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => return Err(Reply::error(400)),
        Err(_) => return Err(Reply::error(408)),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) if !m.is_empty() || !required => Ok(m),
        _ => Err(Reply::error(400)),
    }
}

async fn with_body<F, Fut>(req: Request<Incoming>, required: bool, f: F) -> Reply
where
    F: FnOnce(Map<String, Value>) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    match read_body(req, required).await {
        Ok(b) => f(b).await,
        Err(r) => r,
    }
}

fn dcs_down(e: &DcsError) -> Reply {
    tracing::warn!("REST API: DCS is not accessible: {e}");
    Reply::text(503, "DCS is not accessible")
}

async fn fresh_cluster(ctx: &ApiContext) -> Result<Cluster, Reply> {
    ctx.dcs.read_cluster().await.map_err(|e| dcs_down(&e))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// `GET /failsafe`: the `failsafe` key as last seen, only while failsafe mode is on.
fn failsafe(ctx: &ApiContext) -> Reply {
    let snap = ctx.shared.snapshot();
    let Some(c) = snap.node.cluster.as_deref() else {
        return Reply::error(502);
    };
    let on = c.config.as_ref().is_some_and(|x| x.value.failsafe_mode());
    match (&c.failsafe, on) {
        (Some(f), true) => Reply::json(200, Value::Object(f.clone())),
        _ => Reply::error(502),
    }
}

/// `POST /failsafe` (row D-2F): a primary that cannot reach the DCS asks whether it may go
/// on. 502 with failsafe mode off; 500 `Running as a leader` when our PostgreSQL is a primary
/// (checked live); else the caller is recorded as the leader to follow for `ttl` (row D-2F')
/// and the answer is 200 `Accepted`, with our received/replayed position in the `lsn` header.
async fn post_failsafe(ctx: &ApiContext, body: Map<String, Value>) -> Reply {
    let snap = ctx.shared.snapshot();
    let on = snap
        .node
        .cluster
        .as_deref()
        .and_then(|c| c.config.as_ref())
        .is_some_and(|x| x.value.failsafe_mode());
    if !on {
        return Reply::error(502);
    }
    let field = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_string);
    let (Some(name), Some(conn_url), Some(api_url)) =
        (field("name"), field("conn_url"), field("api_url"))
    else {
        return Reply::text(400, "name, conn_url and api_url are required strings");
    };
    let live = tokio::time::timeout(Duration::from_secs(2), ctx.pg.status())
        .await
        .ok()
        .and_then(Result::ok);
    let status = live.or(snap.status);
    if status.as_ref().is_some_and(|s| !s.in_recovery) {
        return Reply::text(500, "Running as a leader");
    }
    // Slot positions as Patroni sends them: name -> LSN as an integer; anything else is
    // left out.
    let slots = body
        .get("slots")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    ctx.shared
        .failsafe_called_by(patrol_ha::failsafe::FailsafeLeader {
            name,
            conn_url,
            api_url,
            slots,
        });
    let lsn = status.and_then(|s| s.receive_lsn.max(s.replay_lsn));
    let reply = Reply::text(200, "Accepted");
    match lsn {
        Some(l) => reply.with_owned_header("lsn", l.to_string()),
        None => reply,
    }
}

/// `PATCH /config`: merge, CAS on the observed revision, wake the HA loop.
async fn patch(ctx: &ApiContext, body: Map<String, Value>) -> Reply {
    let cluster = match fresh_cluster(ctx).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Some(current) = cluster.config.filter(|c| c.version > 0) else {
        return Reply::error(503);
    };
    let mut data = current.value.data;
    let before = data.clone();
    if patch_config(&mut data, &body) {
        if let Err((code, text)) = input::invalid_config(&data) {
            return Reply::text(code, text);
        }
        if let Err((code, text)) =
            input::unsupported_change(&before, &data, ctx.cfg.allow_unsupported)
        {
            return Reply::text(code, text);
        }
        let json = patrol_dcs::to_compact(&Value::Object(data.clone()));
        match ctx.dcs.set_config(&json, Some(current.version)).await {
            Ok(true) => {}
            Ok(false) => return Reply::error(409),
            Err(e) => return dcs_down(&e),
        }
    }
    ctx.shared.wakeup.notify_one();
    Reply::json(200, Value::Object(data))
}

/// `PUT /config`: replace unconditionally when different.
async fn put(ctx: &ApiContext, body: Map<String, Value>) -> Reply {
    let cluster = match fresh_cluster(ctx).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let same = cluster
        .config
        .as_ref()
        .is_some_and(|c| input::deep_compare(&body, &c.value.data));
    if !same {
        let before = cluster
            .config
            .as_ref()
            .map(|c| c.value.data.clone())
            .unwrap_or_default();
        if let Err((code, text)) = input::invalid_config(&body) {
            return Reply::text(code, text);
        }
        if let Err((code, text)) =
            input::unsupported_change(&before, &body, ctx.cfg.allow_unsupported)
        {
            return Reply::text(code, text);
        }
        let json = patrol_dcs::to_compact(&Value::Object(body.clone()));
        match ctx.dcs.set_config(&json, None).await {
            Ok(true) => ctx.shared.wakeup.notify_one(),
            Ok(false) | Err(_) => return Reply::error(502),
        }
    }
    Reply::json(200, Value::Object(body))
}

async fn restart(ctx: &ApiContext, body: Map<String, Value>) -> Reply {
    let cluster = match fresh_cluster(ctx).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let plan = match restart_plan(&body, cluster.is_paused(), now_ms()) {
        Ok(p) => p,
        Err((code, text)) => return Reply::text(code, text),
    };
    let (code, text) = match plan {
        RestartPlan::Now(filters) => {
            ctx.shared
                .request(|reply| HaRequest::Restart { filters, reply })
                .await
        }
        RestartPlan::At {
            filters,
            schedule,
            at_ms,
        } => {
            ctx.shared
                .request(|reply| HaRequest::ScheduleRestart {
                    filters,
                    schedule,
                    at_ms,
                    reply,
                })
                .await
        }
    };
    Reply::text(code, text)
}

async fn reinitialize(ctx: &ApiContext, body: Map<String, Value>) -> Reply {
    let (force, from_leader) = reinitialize_options(&body);
    let (code, text) = ctx
        .shared
        .request(|reply| HaRequest::Reinitialize {
            force,
            from_leader,
            reply,
        })
        .await;
    Reply::text(code, text)
}

/// Whether any of the members answers `GET /patroni` as able to take over (reachable, not
/// `nofailover`, no failed watchdog).
async fn any_good_candidate(ctx: &ApiContext, members: &[(String, String)]) -> bool {
    let mut set = tokio::task::JoinSet::new();
    for (name, url) in members.iter().filter(|(_, u)| !u.is_empty()) {
        let (client, name, url) = (ctx.peers.clone(), name.clone(), url.clone());
        set.spawn(async move {
            let body: Value = match client.get(&url).send().await {
                Ok(r) => match r.json().await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!("member {name}: {url} did not answer JSON: {e}");
                        return None;
                    }
                },
                Err(e) => {
                    tracing::warn!("member {name}: request to {url} failed: {e:?}");
                    return None;
                }
            };
            let p = patrol_ha::PeerStatus::from_status(&name, &body);
            Some(!p.nofailover && !p.watchdog_failed)
        });
    }
    while let Some(r) = set.join_next().await {
        if let Ok(Some(true)) = r {
            set.abort_all();
            return true;
        }
    }
    false
}

/// `POST /switchover` and `POST /failover` (spec 2.7).
async fn switchover(ctx: &ApiContext, requested: Action, body: Map<String, Value>) -> Reply {
    let cluster = match fresh_cluster(ctx).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let show = |v: Option<&Value>| v.map_or_else(|| "None".to_string(), |v| v.to_string());
    tracing::info!(
        "received {} request with leader={} candidate={} scheduled_at={}",
        requested.name(),
        show(body.get("leader")),
        show(body.get("candidate").or_else(|| body.get("member"))),
        show(body.get("scheduled_at")),
    );
    let plan: SwitchoverPlan = match switchover_plan(requested, &body, &cluster, now_ms()) {
        Ok(p) => p,
        Err((code, text)) => return Reply::text(code, text),
    };
    if plan.scheduled_at.is_none() && !any_good_candidate(ctx, &plan.probe).await {
        return Reply::text(412, no_good_candidates(plan.action));
    }
    let key = plan.failover_key().to_json();
    match ctx.dcs.set_failover(&key, None).await {
        Ok(true) => {}
        Ok(false) | Err(_) => return Reply::text(503, "failed to write failover key into DCS"),
    }
    ctx.shared.wakeup.notify_one();
    if plan.scheduled_at.is_some() {
        return Reply::text(202, format!("{} scheduled", plan.action.title()));
    }
    let loop_wait = cluster
        .config
        .as_ref()
        .map(|c| c.value.timing().loop_wait)
        .unwrap_or(10);
    let limit = Duration::from_secs(2 * loop_wait.max(10));
    let leader_before = cluster.leader_name().map(str::to_string);
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(POLL_INTERVAL).await;
        let Ok(now) = ctx.dcs.read_cluster().await else {
            continue;
        };
        if let Some((code, text)) = switchover_outcome(
            &now,
            leader_before.as_deref(),
            plan.candidate.as_deref(),
            plan.action,
        ) {
            return Reply::text(code, text);
        }
    }
    Reply::text(503, format!("{} status unknown", plan.action.title()))
}

/// `DELETE /switchover`: reset a scheduled switchover to `{}` with compare-and-swap.
async fn cancel_switchover(ctx: &ApiContext) -> Reply {
    let cluster = match fresh_cluster(ctx).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match cluster.failover {
        Some(f) if f.value.scheduled_at.is_some() => {
            match ctx.dcs.set_failover("{}", Some(f.version)).await {
                Ok(true) => Reply::text(200, "scheduled switchover deleted"),
                Ok(false) => Reply::error(409),
                Err(e) => dcs_down(&e),
            }
        }
        _ => Reply::text(404, "no switchover is scheduled"),
    }
}

/// Logged once per process, on the first `POST /citus`.
fn warn_mpp() {
    tracing::warn!("POST /citus: Patrol does not implement Citus; event acknowledged, ignored");
}
