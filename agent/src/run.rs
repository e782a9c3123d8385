//! Process lifecycle (spec 5.1): connect to the DCS, refuse a duplicate name, bind the REST API,
//! run the HA loop and the watch, and shut down on SIGTERM/SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use patrol_dcs::{cluster_prefix, ClusterConfig, EtcdDcs, EtcdSettings};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiContext};
use crate::config::Config;
use crate::ha::{Exit, Ha, SharedState};
use crate::notify::Notifier;

/// Where the local configuration came from, to re-read it on SIGHUP or `POST /reload`: the
/// file (or directory), and the environment as it was at start (the `PATRONI_*` variables are
/// removed from the process environment so that children do not inherit them).
#[derive(Debug, Clone)]
pub struct ReloadSource {
    pub path: Option<std::path::PathBuf>,
    pub env: std::collections::BTreeMap<String, String>,
}

impl ReloadSource {
    /// The configuration as it is now; an error if it cannot be used, including a key that
    /// asks for a guarantee Patrol does not give (unless `PATROL_ALLOW_UNSUPPORTED` was set).
    pub fn load(&self) -> Result<crate::config::Loaded, crate::config::ConfigError> {
        let source = match &self.path {
            Some(p) => crate::config::ConfigSource::File(p),
            None => crate::config::ConfigSource::EnvOnly,
        };
        crate::config::load(source, &self.env)?.usable()
    }
}

/// How the member of `cfg` connects to etcd: endpoints, credentials, TLS, its cluster's prefix.
pub fn etcd_settings(cfg: &Config) -> EtcdSettings {
    EtcdSettings {
        endpoints: cfg.etcd.endpoints.clone(),
        username: cfg.etcd.username.clone(),
        password: cfg.etcd.password.clone(),
        tls: cfg.etcd.tls(),
        prefix: cluster_prefix(&cfg.namespace, &cfg.scope),
        member_name: cfg.name.clone(),
    }
}

/// Runs the agent until a signal or a fatal condition; tells systemd through `notifier` when
/// it is ready, what it does, and when it stops.
pub async fn run(cfg: Config, reload: ReloadSource, notifier: Notifier) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let timing = ClusterConfig::from_map(cfg.bootstrap.dcs.clone()).timing();
    let settings = etcd_settings(&cfg);
    let shutdown = CancellationToken::new();
    let shared = Arc::new(SharedState::default());
    spawn_signal_handler(shutdown.clone(), shared.clone(), notifier.clone())?;
    notifier.status("connecting to etcd");

    // Connect and read the cluster, retrying until etcd answers (spec 5.1).
    let retry = Duration::from_secs(timing.retry_timeout);
    let (dcs, cluster) = loop {
        let attempt = async {
            // The loop keeps the lease alive every cycle: that call leaves a stalled etcd
            // member, and the watch follows it, without progress requests of its own.
            let dcs = EtcdDcs::connect(&settings, timing.ttl, retry)
                .await?
                .without_watch_probes();
            let cluster = dcs.get_cluster().await?;
            Ok::<_, patrol_dcs::DcsError>((dcs, cluster))
        };
        match attempt.await {
            Ok(x) => break x,
            Err(e) => {
                tracing::error!("Can not get cluster from dcs: {e}");
                notifier.status(&format!("waiting for etcd: {e}"));
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    };
    let dcs = Arc::new(dcs);

    // A second agent with the same name must not start (spec 5.1).
    if let Some(m) = cluster.member(&cfg.name) {
        if member_alive(&cfg, &m.data.api_url).await {
            anyhow::bail!(
                "Can't start; there is already a node named '{}' running",
                cfg.name
            );
        }
    }

    // The agent's own connection must be usable before anything is bound: a bad TLS file
    // would otherwise leave it blind to its PostgreSQL (and publishing it as a replica).
    if let Err(e) = crate::postgres::Postgres::new(&cfg).local_conn_config().tls {
        anyhow::bail!("invalid configuration: {e}");
    }
    let listener = api::bind(&cfg).await?;
    let ctx = Arc::new(ApiContext::new(cfg.clone(), shared.clone(), dcs.clone()).await);
    let api_task = tokio::spawn(api::serve(listener, ctx, shutdown.child_token()));
    // READY=1 after the first cycle: the REST API serves, and the member key is published.
    let notify_task = tokio::spawn(crate::notify::report(notifier, shared.clone()));
    tracing::info!(
        "patrol {} starting: member {} of cluster {} (prefix {})",
        env!("CARGO_PKG_VERSION"),
        cfg.name,
        cfg.scope,
        dcs.prefix()
    );

    let cluster_rx = dcs.watch_cluster();
    let ha = Ha::new(
        cfg.clone(),
        dcs.clone(),
        crate::ha::Local::new(&cfg),
        crate::ha::HttpPeers,
        shared,
    )
    .with_reload(reload);
    let exit = ha.run(cluster_rx, shutdown.clone()).await;
    shutdown.cancel();
    notify_task.abort();
    let _ = tokio::time::timeout(Duration::from_secs(2), api_task).await;
    match exit {
        Exit::Shutdown => {
            tracing::info!("patrol stopped");
            Ok(())
        }
        Exit::Fatal(reason) => Err(anyhow::anyhow!(reason)),
    }
}

/// Another process answers `GET /liveness` at the member's `api_url` within 3 s.
async fn member_alive(cfg: &Config, api_url: &str) -> bool {
    let Some(base) = api_url.strip_suffix("/patroni") else {
        return false;
    };
    let client = crate::peer::member_client(cfg, Duration::from_secs(3));
    // As Patroni: any HTTP answer (even 401 or 503) means a process serves that member's API.
    client.get(format!("{base}/liveness")).send().await.is_ok()
}

fn spawn_signal_handler(
    token: CancellationToken,
    shared: Arc<SharedState>,
    notifier: Notifier,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("received SIGTERM");
                    notifier.stopping();
                    token.cancel();
                    return;
                }
                _ = int.recv() => {
                    tracing::info!("received SIGINT");
                    notifier.stopping();
                    token.cancel();
                    return;
                }
                _ = hup.recv() => {
                    tracing::info!("received SIGHUP: reloading the local configuration");
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let (code, text) = shared.request(|reply| crate::ha::Request::Reload { reply }).await;
                        tracing::info!("reload: {code} {text}");
                    });
                }
            }
        }
    });
    Ok(())
}
