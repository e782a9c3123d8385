//! `patrol-router`: routes the write port to the confirmed leader and the read port across
//! replicas within a lag limit, from an etcd watch plus live probes of each member's REST API.
#![deny(unsafe_code)]

pub mod admin;
pub mod cancel;
pub mod config;
pub mod control;
pub mod haproxy_sync;
pub mod kernel;
pub mod metrics;
pub mod proxy;
pub mod redirect_local;
pub mod state;
pub mod table;

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use config::Config;
use state::Shared;
use table::Port;

/// Binds every listener first (so a bad address fails before anything runs), then serves until
/// SIGTERM/SIGINT. With `haproxy`, also keeps that HAProxy in step with the routing table.
pub async fn run(cfg: Config, haproxy: Option<haproxy_sync::Settings>) -> anyhow::Result<()> {
    let write = TcpListener::bind(cfg.write_listen)
        .await
        .with_context(|| format!("cannot listen on listen.write {}", cfg.write_listen))?;
    let read = TcpListener::bind(cfg.read_listen)
        .await
        .with_context(|| format!("cannot listen on listen.read {}", cfg.read_listen))?;
    let admin = TcpListener::bind(cfg.admin_listen)
        .await
        .with_context(|| format!("cannot listen on listen.admin {}", cfg.admin_listen))?;
    let settings = cfg.etcd_settings();
    let dcs = loop {
        match patrol_dcs::EtcdDcs::connect(&settings, 30, std::time::Duration::from_secs(3)).await {
            Ok(d) => break d,
            Err(e) => {
                tracing::error!(
                    "cannot connect to etcd ({}): {e}; retrying",
                    cfg.endpoints.join(",")
                );
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    let dcs = Arc::new(dcs);
    let (cluster_rx, health_rx) = dcs.watch_with_health();
    let (heartbeat_tx, heartbeat_rx) = tokio::sync::watch::channel(false);
    let shared = Shared::new(Arc::new(cfg));
    let shutdown = CancellationToken::new();
    tracing::info!(
        "patrol-router {}: cluster {} (write {}, read {}, admin {})",
        env!("CARGO_PKG_VERSION"),
        shared.cfg.scope,
        shared.cfg.write_listen,
        shared.cfg.read_listen,
        shared.cfg.admin_listen
    );
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(control::run_control(
        shared.clone(),
        cluster_rx.clone(),
        health_rx,
        heartbeat_rx,
    ));
    tasks.spawn(control::run_dcs_heartbeat(
        shared.clone(),
        dcs.clone(),
        heartbeat_tx,
    ));
    if let Some(h) = haproxy {
        tasks.spawn(haproxy_sync::run(h, shared.clone(), cluster_rx.clone()));
    }
    tasks.spawn(control::run_probes(shared.clone(), cluster_rx));
    if shared.splicer.is_some() {
        tracing::info!("splice: established sessions are relayed in the kernel");
        let s = shared.clone();
        tasks.spawn(async move {
            if let Some(splicer) = &s.splicer {
                if let Err(e) = splicer.watch_ends().await {
                    tracing::error!("splice: watching session ends failed: {e}");
                }
            }
        });
    }
    if shared.local.is_some() {
        tracing::info!(
            "redirect_local: clients on this host are routed at connect time, straight to the backend"
        );
        tasks.spawn(control::run_redirect_sweeps(shared.clone()));
    }
    // The listeners were bound by tokio (SO_REUSEADDR, non-blocking); each data thread
    // registers its own clone of them with its event loop.
    let write = write.into_std().context("listen.write")?;
    let read = read.into_std().context("listen.read")?;
    // Accepted connections inherit TCP keepalive from their listener: a client host that
    // vanished does not hold its session (and slot) forever.
    for (l, key) in [(&write, "listen.write"), (&read, "listen.read")] {
        if let Err(e) = proxy::keepalive(l) {
            tracing::warn!("{key}: cannot turn TCP keepalive on: {e}");
        }
    }
    for n in 0..shared.cfg.threads {
        let thread = data_thread(n, shared.clone(), &write, &read, shutdown.child_token())?;
        // A data thread that ends before shutdown (it cannot, short of a panic) ends the router.
        tasks.spawn(async move {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        });
    }
    tasks.spawn(admin::serve(shared.clone(), admin, shutdown.child_token()));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    // systemd (`Type=notify`): the ports accept and etcd is connected; clients that arrive
    // before the first routing table are held as during any leader change.
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    tokio::select! {
        _ = term.recv() => tracing::info!("received SIGTERM"),
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT"),
        r = tasks.join_next() => {
            // A critical task ended: exit non-zero rather than route from a stale view.
            anyhow::bail!("a router task ended unexpectedly: {r:?}");
        }
    }
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    shutdown.cancel();
    if shared.local.is_some() {
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(local) = &s.local {
                local.cut_all();
            }
        })
        .await;
    }
    drop(dcs);
    Ok(())
}

/// Starts one data-path thread: a single-threaded event loop accepting on (clones of) both
/// listeners. One loop per thread keeps every wake-up of a session on one core, with no work
/// stealing between threads; with several threads the kernel hands each new connection to one
/// of them.
fn data_thread(
    n: usize,
    shared: Arc<Shared>,
    write: &std::net::TcpListener,
    read: &std::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let (w, r) = (write.try_clone()?, read.try_clone()?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a data-path event loop")?;
    std::thread::Builder::new()
        .name(format!("data-{n}"))
        .spawn(move || {
            rt.block_on(async move {
                let (w, r) = match (TcpListener::from_std(w), TcpListener::from_std(r)) {
                    (Ok(w), Ok(r)) => (w, r),
                    (Err(e), _) | (_, Err(e)) => {
                        tracing::error!("data thread {n}: cannot register the listeners: {e}");
                        return;
                    }
                };
                let window = shared.cfg.busy_poll;
                let spinner = async move {
                    if window.is_zero() {
                        std::future::pending::<()>().await
                    } else {
                        proxy::spin(window).await
                    }
                };
                tokio::select! {
                    _ = async {
                        tokio::join!(
                            proxy::serve(shared.clone(), Port::Write, w, shutdown.clone()),
                            proxy::serve(shared, Port::Read, r, shutdown),
                        )
                    } => {}
                    _ = spinner => {}
                }
            })
        })
        .context("starting a data-path thread")
}

/// Tells systemd through `NOTIFY_SOCKET` when it is set (nothing otherwise); a failure is
/// logged, never fatal. The variable stays in the environment: the router's children
/// (`haproxy -c`, `ip`) do not speak the protocol.
fn notify_systemd(states: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!("cannot notify systemd (NOTIFY_SOCKET): {e}");
    }
}
