//! A fleet of clusters on one real etcd: every member runs the agent's own HA loop
//! (`patrol_agent::ha::Ha::run`) with the agent's real etcd client (`EtcdDcs`: watch, lease,
//! transactions), and a simulated PostgreSQL behind the `LocalPostgres` port (`crate::pg`), so
//! that hundreds of clusters fit on one machine and etcd sees what as many real agents would
//! send it. For the fleet benchmark (`patrol-tests` example `fleet_bench`); never shipped.
//!
//! Each cluster is its own simulated world; nothing happens in it unless `busy`: then its
//! primary takes writes and its standbys stream, so that WAL positions move as in a cluster
//! under load.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use patrol_agent::config::{load, Config, ConfigSource};
use patrol_agent::ha::{Ha, SharedState};
use patrol_dcs::{ClusterConfig, EtcdDcs};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pg::{SimPeers, SimPostgres};
use crate::world::{lock, Agent, Node, Shared, SimPg, World};

/// What the fleet is made of.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// etcd's client endpoints (`host:port`), given to every member as `etcd3.hosts`.
    pub endpoints: Vec<String>,
    pub clusters: usize,
    pub members: usize,
    /// `bootstrap.dcs` as a YAML flow mapping.
    pub dcs: String,
    /// Primaries take writes and standbys stream (WAL positions move).
    pub busy: bool,
    /// The clusters' names are `<scope_prefix><k>`, under the namespace `/service/`.
    pub scope_prefix: String,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            endpoints: Vec::new(),
            clusters: 100,
            members: 3,
            // Patroni's default timing.
            dcs: "{ttl: 30, loop_wait: 10, retry_timeout: 10}".into(),
            busy: false,
            scope_prefix: "fleet-".into(),
        }
    }
}

pub struct Fleet {
    worlds: Vec<Shared>,
    token: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// How the fleet's clusters are doing.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FleetHealth {
    /// One running primary, every other member a standby streaming from it.
    pub healthy: usize,
    pub clusters: usize,
}

impl Fleet {
    /// Starts every member's agent; they connect, race for `initialize`, bootstrap and clone
    /// as real agents do. Returns at once; [`Fleet::health`] tells how far they are.
    pub fn start(opts: &FleetOptions) -> anyhow::Result<Fleet> {
        anyhow::ensure!(!opts.endpoints.is_empty(), "the fleet needs etcd endpoints");
        let token = CancellationToken::new();
        let mut worlds = Vec::with_capacity(opts.clusters);
        let mut tasks = Vec::new();
        for k in 0..opts.clusters {
            let scope = format!("{}{k:05}", opts.scope_prefix);
            let mut world = World::new(k as u64 + 1);
            for i in 0..opts.members {
                world.nodes.push(Node {
                    name: format!("m{i}"),
                    cfg: member_config(opts, &scope, i)?,
                    pg: SimPg::default(),
                    agent: Agent::Live,
                    epoch: 1,
                    partitioned: false,
                    shared: Arc::new(SharedState::default()),
                    settle_after_cycle: None,
                });
            }
            let w: Shared = Arc::new(std::sync::Mutex::new(world));
            for i in 0..opts.members {
                tasks.push(tokio::spawn(member(w.clone(), i, token.child_token())));
            }
            if opts.busy {
                tasks.push(tokio::spawn(postgres_activity(
                    w.clone(),
                    token.child_token(),
                )));
            }
            worlds.push(w);
        }
        Ok(Fleet {
            worlds,
            token,
            tasks,
        })
    }

    pub fn health(&self) -> FleetHealth {
        let healthy = self
            .worlds
            .iter()
            .filter(|w| cluster_healthy(&lock(w)))
            .count();
        FleetHealth {
            healthy,
            clusters: self.worlds.len(),
        }
    }

    /// Stops every agent (their leases end with their keep-alives).
    pub async fn stop(self) {
        self.token.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

fn cluster_healthy(w: &World) -> bool {
    let primaries: Vec<usize> = (0..w.nodes.len())
        .filter(|&i| w.nodes[i].pg.writable())
        .collect();
    let [p] = primaries[..] else {
        return false;
    };
    (0..w.nodes.len()).filter(|&i| i != p).all(|i| {
        let pg = &w.nodes[i].pg;
        pg.running && pg.in_recovery && pg.upstream == Some(p)
    })
}

fn member_config(opts: &FleetOptions, scope: &str, i: usize) -> anyhow::Result<Arc<Config>> {
    // Nothing listens on these addresses: peers are asked through the simulated world.
    let (pg, api) = (crate::PG_PORT as usize + i, 8008 + i);
    let hosts = opts.endpoints.join(", ");
    let dcs = &opts.dcs;
    let yaml = format!(
        r#"
scope: {scope}
namespace: /service/
name: m{i}
restapi:
  listen: 127.0.0.1:{api}
  connect_address: 127.0.0.1:{api}
etcd3:
  hosts: [{hosts}]
bootstrap:
  dcs: {dcs}
postgresql:
  listen: 127.0.0.1:{pg}
  connect_address: 127.0.0.1:{pg}
  data_dir: /nonexistent/patrol-fleet/{scope}/m{i}
  pgpass: /nonexistent/patrol-fleet/{scope}/pgpass{i}
  authentication:
    superuser: {{username: postgres, password: fleet}}
    replication: {{username: replicator, password: fleet}}
watchdog:
  mode: off
"#
    );
    let env = BTreeMap::from([("PATRONI_CONFIGURATION".to_string(), yaml)]);
    let loaded = load(ConfigSource::EnvOnly, &env)?;
    Ok(Arc::new(loaded.config))
}

/// One member: the agent's connection to etcd (retried as the agent does), then its HA loop.
async fn member(w: Shared, i: usize, token: CancellationToken) {
    let (cfg, shared) = {
        let w = lock(&w);
        (w.nodes[i].cfg.clone(), w.nodes[i].shared.clone())
    };
    let timing = ClusterConfig::from_map(cfg.bootstrap.dcs.clone()).timing();
    let settings = patrol_agent::etcd_settings(&cfg);
    let retry = Duration::from_secs(timing.retry_timeout);
    let dcs = loop {
        let connected = tokio::select! {
            _ = token.cancelled() => return,
            c = EtcdDcs::connect(&settings, timing.ttl, retry) => c,
        };
        match connected {
            // As the agent connects (`patrol_agent::run`).
            Ok(d) => break Arc::new(d.without_watch_probes()),
            Err(_) => tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            },
        }
    };
    let pg = SimPostgres {
        w: w.clone(),
        i,
        epoch: 1,
    };
    let peers = SimPeers { w, i, epoch: 1 };
    let rx = dcs.watch_cluster();
    let ha = Ha::new(cfg, dcs, pg, peers, shared);
    let _ = ha.run(rx, token).await;
}

/// A busy cluster: writes on its primary, streaming to its standbys, every 100 ms.
async fn postgres_activity(w: Shared, token: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => crate::driver::run_postgres(&mut lock(&w)),
        }
    }
}
