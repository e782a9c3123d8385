//! The REST API (hyper, spec section 2): Patroni's status and health-check endpoints, the
//! cluster views (`/cluster`, `/history`, `/config`, `/metrics`) and the mutating endpoints
//! (`/config`, `/restart`, `/reinitialize`, `/switchover`, `/failover`, ...) with Patroni's codes
//! and texts. One request per connection, over HTTP or HTTPS (`restapi.certfile`).
//!
//! Layout: [`ROUTES`] is the one table of what is served (the dispatcher and the OpenAPI test
//! both read it); `health.rs`, `views.rs`, `metrics.rs` and `input.rs` are pure; `handlers.rs`
//! does the IO (DCS reads and writes, requests to the HA loop, peer probes); `access.rs` and
//! `tls.rs` are the security of the unsafe endpoints.
//!
//! Dangerous: the unsafe endpoints change the cluster. Every one passes [`access`] first and is
//! logged at INFO (`REST API: <method> <path> from <ip> user=<name|-> -> <code>`) whatever the
//! outcome; bodies are bounded (1 MiB, 10 s), and a client's mistake is a 4xx, never a 5xx or a
//! panic. Connections are bounded too: [`MAX_CONNECTIONS`] at once (one more is closed as soon
//! as it is accepted), 10 s for the TLS handshake and for the request's headers, so clients that
//! send a byte a second cannot hold the port; `restapi.request_queue_size` is the listen backlog,
//! as in Patroni.

mod access;
mod error;
mod handlers;
mod health;
mod input;
mod metrics;
mod tls;
mod views;

#[cfg(test)]
mod tests;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use patrol_dcs::EtcdDcs;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::ha::SharedState;
use patrol_dcs::PATRONI_VERSION;

pub use access::{AccessPolicy, Denied};
pub use error::ApiError;
pub use health::{health_code, status_json};
pub use input::{patch_config, restart_plan, switchover_plan, Action, RestartPlan};
pub use metrics::render as render_metrics;
pub use views::{cluster_json, history_json};

/// Largest request body accepted (413 beyond).
pub const MAX_BODY: u64 = 1 << 20;
/// Time allowed to receive the request headers, and then the body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for a whole connection (a restart may legitimately take minutes).
const CONNECTION_LIMIT: Duration = Duration::from_secs(15 * 60);
/// Connections served at once. Patroni starts a thread per connection without a limit; health
/// checks, peers and the router need a handful, so this only bounds what slow or hostile
/// clients can hold (each for at most [`READ_TIMEOUT`] before its request is complete).
pub const MAX_CONNECTIONS: usize = 128;
/// A rate-limited warning (the port is full) is logged at most this often.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(10);

/// Which checks a route passes before its handler runs (spec 2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Reads: open to all.
    Open,
    /// Unsafe: allowlist (with members), client certificate, Basic auth.
    Unsafe,
    /// Unsafe without the member part of the allowlist (`POST /failsafe`).
    UnsafeNoMembers,
}

/// What answers a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    Status,
    Health,
    Liveness,
    Readiness,
    Cluster,
    History,
    Config,
    Failsafe,
    Metrics,
    PatchConfig,
    PutConfig,
    Reload,
    Restart,
    CancelRestart,
    Reinitialize,
    Switchover,
    Failover,
    CancelSwitchover,
    Sigterm,
    PostFailsafe,
    Mpp,
}

/// One served (method, path). Paths are first path segments: Patroni routes on them
/// (`GET /cluster/x` is `/cluster`), and unknown GET/HEAD/OPTIONS paths are health checks.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: &'static str,
    pub path: &'static str,
    pub guard: Guard,
    pub handler: Handler,
}

const fn r(method: &'static str, path: &'static str, guard: Guard, handler: Handler) -> Route {
    Route {
        method,
        path,
        guard,
        handler,
    }
}

/// Paths answered by the health-check rules (`health::health_code`) for GET, HEAD and OPTIONS.
pub const HEALTH_PATHS: &[&str] = &[
    "/",
    "/primary",
    "/master",
    "/read-write",
    "/leader",
    "/standby-leader",
    "/standby_leader",
    "/replica",
    "/read-only",
    "/health",
    "/sync",
    "/synchronous",
    "/quorum",
    "/async",
    "/asynchronous",
    "/read-only-sync",
    "/read-only-synchronous",
    "/read-only-quorum",
];

use Guard::{Open, Unsafe, UnsafeNoMembers};

/// Every endpoint besides [`HEALTH_PATHS`], in one table.
pub const ROUTES: &[Route] = &[
    r("GET", "/patroni", Open, Handler::Status),
    r("GET", "/liveness", Open, Handler::Liveness),
    r("HEAD", "/liveness", Open, Handler::Liveness),
    r("OPTIONS", "/liveness", Open, Handler::Liveness),
    r("GET", "/readiness", Open, Handler::Readiness),
    r("HEAD", "/readiness", Open, Handler::Readiness),
    r("OPTIONS", "/readiness", Open, Handler::Readiness),
    r("GET", "/cluster", Open, Handler::Cluster),
    r("GET", "/history", Open, Handler::History),
    r("GET", "/config", Open, Handler::Config),
    r("GET", "/failsafe", Open, Handler::Failsafe),
    r("GET", "/metrics", Open, Handler::Metrics),
    r("PATCH", "/config", Unsafe, Handler::PatchConfig),
    r("PUT", "/config", Unsafe, Handler::PutConfig),
    r("POST", "/reload", Unsafe, Handler::Reload),
    r("POST", "/restart", Unsafe, Handler::Restart),
    r("DELETE", "/restart", Unsafe, Handler::CancelRestart),
    r("POST", "/reinitialize", Unsafe, Handler::Reinitialize),
    r("POST", "/switchover", Unsafe, Handler::Switchover),
    r("POST", "/failover", Unsafe, Handler::Failover),
    r("DELETE", "/switchover", Unsafe, Handler::CancelSwitchover),
    r("POST", "/sigterm", Unsafe, Handler::Sigterm),
    r("POST", "/failsafe", UnsafeNoMembers, Handler::PostFailsafe),
    r("POST", "/citus", Unsafe, Handler::Mpp),
    r("POST", "/mpp", Open, Handler::Mpp),
];

/// Every (method, path) served: [`ROUTES`] plus GET/HEAD/OPTIONS of [`HEALTH_PATHS`].
pub fn all_routes() -> Vec<Route> {
    let mut out = ROUTES.to_vec();
    for p in HEALTH_PATHS {
        for m in ["GET", "HEAD", "OPTIONS"] {
            out.push(r(m, p, Open, Handler::Health));
        }
    }
    out
}

/// The route for a request: by method and first path segment; GET/HEAD/OPTIONS of anything
/// else are health checks; other methods have no route (501).
pub fn route_for(method: &str, path: &str) -> Option<Route> {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let seg = format!("/{first}");
    if let Some(rt) = ROUTES
        .iter()
        .find(|rt| rt.method == method && rt.path == seg)
    {
        return Some(*rt);
    }
    matches!(method, "GET" | "HEAD" | "OPTIONS").then(|| r("GET", "/", Open, Handler::Health))
}

/// What handlers need.
pub struct ApiContext {
    pub cfg: Arc<Config>,
    pub shared: Arc<SharedState>,
    /// For fresh reads (`/cluster`, validations) and writes (`config`, `failover`).
    pub dcs: Arc<EtcdDcs>,
    access: AccessPolicy,
    /// For `GET /patroni` of switchover candidates (2 s deadline).
    peers: reqwest::Client,
    server_header: HeaderValue,
    extra_headers: Vec<(HeaderName, HeaderValue)>,
    /// Our own PostgreSQL, queried live by `GET /patroni` (as Patroni does) so that WAL
    /// positions are current, not as old as the last HA cycle.
    pub(crate) pg: crate::postgres::PgClient,
}

impl ApiContext {
    /// Resolves the allowlist and prepares the headers and the peer client.
    pub async fn new(cfg: Arc<Config>, shared: Arc<SharedState>, dcs: Arc<EtcdDcs>) -> ApiContext {
        let access = AccessPolicy::new(&cfg.restapi).await;
        let peers = handlers::peer_client(&cfg);
        let server_header = server_header(cfg.restapi.server_tokens.as_deref());
        let extra_headers = extra_headers(&cfg);
        let pg = crate::postgres::PgClient::new(
            crate::postgres::Postgres::new(&cfg).local_conn_config(),
        );
        ApiContext {
            pg,
            cfg,
            shared,
            dcs,
            access,
            peers,
            server_header,
            extra_headers,
        }
    }
}

/// `restapi.server_tokens`: `ProductOnly` → `Patroni`, `Minimal` → `Patroni/<version>`,
/// otherwise our own product name (we do not pretend to be Python's BaseHTTP).
fn server_header(tokens: Option<&str>) -> HeaderValue {
    let v = match tokens.map(str::to_ascii_lowercase).as_deref() {
        Some("productonly") => "Patroni".to_string(),
        Some("minimal") => format!("Patroni/{PATRONI_VERSION}"),
        None | Some("original") => format!("Patrol/{}", env!("CARGO_PKG_VERSION")),
        Some(other) => {
            tracing::warn!(
                "restapi.server_tokens is set to \"{other}\"; valid values are \"Minimal\", \"ProductOnly\""
            );
            format!("Patrol/{}", env!("CARGO_PKG_VERSION"))
        }
    };
    HeaderValue::from_str(&v).expect("product tokens are valid header text")
}

/// `http_extra_headers` (+ `https_extra_headers` with TLS); unusable names or values are
/// skipped with a warning.
fn extra_headers(cfg: &Config) -> Vec<(HeaderName, HeaderValue)> {
    let api = &cfg.restapi;
    let mut all: Vec<(&String, &serde_json::Value)> = api.http_extra_headers.iter().collect();
    if api.certfile.is_some() {
        all.extend(api.https_extra_headers.iter());
    }
    let mut out = Vec::new();
    for (k, v) in all {
        let text = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&text),
        ) {
            (Ok(n), Ok(v)) => out.push((n, v)),
            _ => tracing::warn!("restapi extra header {k:?} is not a valid HTTP header; ignored"),
        }
    }
    out
}

/// A bound listener, with TLS when configured.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
}

/// Loads the TLS material and binds the listener, so that configuration and bind errors stop
/// the agent before the HA loop starts. The listen backlog is `restapi.request_queue_size`
/// (Patroni's meaning: its server's `request_queue_size`, default 5).
pub async fn bind(cfg: &Config) -> Result<Listener, ApiError> {
    let tls = tls::server_config(&cfg.restapi)?.map(TlsAcceptor::from);
    let addr = format!("{}", cfg.restapi.listen);
    let host = cfg.restapi.listen.host.trim_matches(['[', ']']);
    let target = if host.is_empty() || host == "*" {
        format!("0.0.0.0:{}", cfg.restapi.listen.port)
    } else {
        addr.clone()
    };
    let backlog = u32::try_from(cfg.restapi.request_queue_size).unwrap_or(u32::MAX);
    let tcp = listen(&target, backlog)
        .await
        .map_err(|source| ApiError::Bind { addr, source })?;
    Ok(Listener { tcp, tls })
}

/// Binds `target` (`host:port`, the first of its addresses that works) with `backlog`.
async fn listen(target: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(target).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted agent can bind while old connections linger.
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(backlog)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no address to listen on")
    }))
}

/// What the connection tells about the client.
#[derive(Debug, Clone, Copy)]
struct Conn {
    peer: SocketAddr,
    /// A verified client certificate was presented in the TLS handshake.
    client_cert: bool,
}

/// Serves until `shutdown`, at most [`MAX_CONNECTIONS`] connections at once.
pub async fn serve(listener: Listener, ctx: Arc<ApiContext>, shutdown: CancellationToken) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let mut warned: Option<tokio::time::Instant> = None;
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.tcp.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("REST API accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if !matches!(warned, Some(at) if at.elapsed() < FULL_WARNING_EVERY) {
                tracing::warn!(
                    "REST API: {MAX_CONNECTIONS} connections open; closing new ones (the last from {peer})"
                );
                warned = Some(tokio::time::Instant::now());
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let tls = listener.tls.clone();
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => {
                    let conn = Conn {
                        peer,
                        client_cert: false,
                    };
                    serve_connection(stream, ctx, conn).await;
                }
                Some(acceptor) => {
                    let tls_stream =
                        match tokio::time::timeout(READ_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!("REST API TLS handshake with {peer} failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!("REST API TLS handshake with {peer} timed out");
                                return;
                            }
                        };
                    let client_cert = tls_stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .is_some_and(|c| !c.is_empty());
                    let conn = Conn { peer, client_cert };
                    serve_connection(tls_stream, ctx, conn).await;
                }
            }
        });
    }
}

async fn serve_connection<I>(io: I, ctx: Arc<ApiContext>, conn: Conn)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(&ctx, req, conn).await) }
    });
    let http = http1::Builder::new()
        .keep_alive(false)
        .max_buf_size(64 * 1024)
        .header_read_timeout(READ_TIMEOUT)
        .timer(hyper_util::rt::TokioTimer::new())
        .serve_connection(TokioIo::new(io), svc);
    if tokio::time::timeout(CONNECTION_LIMIT, http).await.is_err() {
        tracing::warn!(
            "REST API connection from {} closed after {CONNECTION_LIMIT:?}",
            conn.peer
        );
    }
}

/// An answer before headers are applied.
pub(crate) struct Reply {
    code: StatusCode,
    body: Body,
    headers: Vec<(HeaderName, HeaderValue)>,
}

enum Body {
    /// `text/html` text through Patroni's `write_response`.
    Text(String),
    Json(serde_json::Value),
    /// `text/plain` (metrics).
    Plain(String),
    /// Python's `send_error` page.
    Error,
    /// Status line only (HEAD/OPTIONS, liveness, readiness).
    Bare,
}

impl Reply {
    pub(crate) fn text(code: u16, text: impl Into<String>) -> Reply {
        Reply::new(code, Body::Text(text.into()))
    }
    pub(crate) fn json(code: u16, v: serde_json::Value) -> Reply {
        Reply::new(code, Body::Json(v))
    }
    pub(crate) fn plain(code: u16, text: String) -> Reply {
        Reply::new(code, Body::Plain(text))
    }
    /// As Python's `send_error(code)`: an HTML error page.
    pub(crate) fn error(code: u16) -> Reply {
        Reply::new(code, Body::Error)
    }
    pub(crate) fn bare(code: StatusCode) -> Reply {
        Reply {
            code,
            body: Body::Bare,
            headers: Vec::new(),
        }
    }
    fn new(code: u16, body: Body) -> Reply {
        Reply {
            code: StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
            headers: Vec::new(),
        }
    }
    pub(crate) fn with_header(mut self, name: &'static str, value: &'static str) -> Reply {
        self.headers.push((
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
        self
    }
    /// A header whose value is only known at run time (a value that is not a valid header is
    /// left out).
    pub(crate) fn with_owned_header(mut self, name: &'static str, value: String) -> Reply {
        if let Ok(v) = HeaderValue::from_str(&value) {
            self.headers.push((HeaderName::from_static(name), v));
        }
        self
    }
    pub(crate) fn code(&self) -> u16 {
        self.code.as_u16()
    }
}

/// Python's `BaseHTTPRequestHandler` error page.
fn error_page(code: StatusCode) -> String {
    let (short, long) = match code.as_u16() {
        400 => ("Bad Request", "Bad request syntax or unsupported method."),
        408 => ("Request Timeout", "Request timed out; try again later."),
        409 => ("Conflict", "Request conflict."),
        411 => ("Length Required", "Client must specify Content-Length."),
        413 => ("Request Entity Too Large", "Entity is too large."),
        501 => ("Not Implemented", "Server does not support this operation."),
        502 => (
            "Bad Gateway",
            "Invalid responses from another server/proxy.",
        ),
        503 => (
            "Service Unavailable",
            "The server cannot process the request due to a high load.",
        ),
        _ => (code.canonical_reason().unwrap_or("Error"), ""),
    };
    format!(
        "<!DOCTYPE HTML>\n<html lang=\"en\">\n    <head>\n        <meta charset=\"utf-8\">\n        <title>Error response</title>\n    </head>\n    <body>\n        <h1>Error response</h1>\n        <p>Error code: {c}</p>\n        <p>Message: {short}.</p>\n        <p>Error code explanation: {c} - {long}</p>\n    </body>\n</html>\n",
        c = code.as_u16()
    )
}

fn finish(ctx: &ApiContext, reply: Reply) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(reply.code);
    let (content_type, body, extra) = match reply.body {
        Body::Bare => {
            return b
                .body(Full::new(Bytes::new()))
                .expect("a status-only response is valid")
        }
        Body::Text(t) => ("text/html", t, true),
        Body::Json(v) => ("application/json", v.to_string(), true),
        Body::Plain(t) => ("text/plain", t, true),
        Body::Error => ("text/html;charset=utf-8", error_page(reply.code), false),
    };
    b = b
        .header(hyper::header::SERVER, ctx.server_header.clone())
        .header(hyper::header::CONTENT_TYPE, content_type);
    for (k, v) in reply.headers {
        b = b.header(k, v);
    }
    if extra {
        for (k, v) in &ctx.extra_headers {
            b = b.header(k.clone(), v.clone());
        }
    }
    b.body(Full::new(Bytes::from(body)))
        .expect("response parts are valid")
}

async fn handle(ctx: &ApiContext, req: Request<Incoming>, conn: Conn) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let Some(route) = route_for(method.as_str(), &path) else {
        let reply = Reply::error(501);
        return finish(ctx, reply);
    };
    if route.guard == Guard::Open {
        let reply = handlers::dispatch(ctx, route.handler, req).await;
        return finish(ctx, reply);
    }
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let check_members = route.guard == Guard::Unsafe;
    let member_ips = if ctx.access.needs_member_ips(check_members) {
        let cluster = ctx.shared.snapshot().node.cluster;
        access::member_ips(cluster.as_deref()).await
    } else {
        Vec::new()
    };
    let client = access::Client {
        ip: conn.peer.ip(),
        has_client_cert: conn.client_cert,
        authorization: authorization.as_deref(),
    };
    let reply = match ctx.access.check(&client, check_members, &member_ips) {
        Err(d) => {
            let reply = Reply::text(d.code, d.text);
            if d.code == 401 {
                reply.with_header("www-authenticate", "Basic realm=\"Patroni\"")
            } else {
                reply
            }
        }
        Ok(()) => handlers::dispatch(ctx, route.handler, req).await,
    };
    tracing::info!(
        "REST API: {method} {path} from {ip} user={user} -> {code}",
        ip = conn.peer.ip().to_canonical(),
        user = access::claimed_user(authorization.as_deref()).unwrap_or_else(|| "-".into()),
        code = reply.code(),
    );
    finish(ctx, reply)
}
