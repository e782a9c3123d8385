//! The REST API (hyper): `GET /patroni`, the health-check endpoints with Patroni's codes and
//! JSON, `/liveness` and `/readiness`. HEAD and OPTIONS answer with the status only (HAProxy's
//! `option httpchk` sends `OPTIONS /`). Read-only for now: unsafe endpoints answer 501.

mod health;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ha::SharedState;

pub use health::{health_code, status_json};

/// What handlers need.
pub struct ApiContext {
    pub cfg: Arc<Config>,
    pub shared: Arc<SharedState>,
}

/// Binds the listener (so bind errors surface before the loop starts).
pub async fn bind(cfg: &Config) -> anyhow::Result<TcpListener> {
    let addr = format!("{}", cfg.restapi.listen);
    let host = cfg.restapi.listen.host.trim_matches(['[', ']']);
    let target = if host.is_empty() || host == "*" {
        format!("0.0.0.0:{}", cfg.restapi.listen.port)
    } else {
        addr.clone()
    };
    TcpListener::bind(&target)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on restapi.listen {addr}: {e}"))
}

/// Serves until `shutdown`.
pub async fn serve(listener: TcpListener, ctx: Arc<ApiContext>, shutdown: CancellationToken) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("REST API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { Ok::<_, Infallible>(handle(&ctx, req, peer).await) }
            });
            let conn = http1::Builder::new()
                .keep_alive(false)
                .max_buf_size(64 * 1024)
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), svc);
            // A whole request must complete within a bound, so a slow client cannot hold a task.
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

fn respond(code: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .header("Content-Type", content_type)
        .header("Server", "Patrol")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn bare(code: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(code)
        .body(Full::new(Bytes::new()))
        .expect("static response parts are valid")
}

async fn handle(
    ctx: &ApiContext,
    req: Request<Incoming>,
    _peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let snap = ctx.shared.snapshot();
    match *req.method() {
        Method::GET => {
            if path == "/patroni" {
                let body = status_json(&ctx.cfg, &snap);
                return respond(StatusCode::OK, "application/json", body.to_string());
            }
            if path == "/liveness" {
                return bare(health::liveness(&snap));
            }
            if path.starts_with("/readiness") {
                return bare(health::readiness(&snap, &query));
            }
            let code = health_code(&ctx.cfg, &snap, &path, &query);
            let body = status_json(&ctx.cfg, &snap);
            respond(code, "application/json", body.to_string())
        }
        Method::HEAD | Method::OPTIONS => {
            let code = match path.as_str() {
                "/liveness" => health::liveness(&snap),
                p if p.starts_with("/readiness") => health::readiness(&snap, &query),
                _ => health_code(&ctx.cfg, &snap, &path, &query),
            };
            bare(code)
        }
        _ => respond(
            StatusCode::NOT_IMPLEMENTED,
            "text/html",
            format!("{} {} is not implemented yet", req.method(), path),
        ),
    }
}
