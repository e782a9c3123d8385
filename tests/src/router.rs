//! `Router`: a `patrol-router` in front of a test [`Cluster`], on free loopback ports, killed on
//! drop (its log tail printed when the test panics).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::bins::bin;
use crate::cluster::Cluster;
use crate::ports::free_port;
use crate::process::Proc;
use crate::util::{block_on_thread, tail_lines};

/// How long [`Router::start`] waits for `/health` to answer.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Lines of the router's log printed when a test panics.
const DUMP_LINES: usize = 300;

/// A running `patrol-router` for one cluster.
#[derive(Debug)]
pub struct Router {
    proc: Proc,
    write_port: u16,
    read_port: u16,
    admin_port: u16,
    config_path: PathBuf,
}

impl Router {
    /// Writes a router config for `cluster` (its etcd, namespace and scope; write, read and
    /// admin on free 127.0.0.1 ports; then the lines of `extra_yaml`, e.g. `write: {hold_ms:
    /// 500}`) into the cluster's root dir, starts `patrol-router -c <file>` as the current user
    /// with `RUST_LOG=info,patrol_router=debug` (log next to the config), and waits until its
    /// `/health` answers (any status).
    pub fn start(cluster: &Cluster, extra_yaml: &str) -> anyhow::Result<Router> {
        let hosts: Vec<String> = cluster
            .etcd_cluster()
            .host_ports()
            .iter()
            .map(|h| format!("'{h}'"))
            .collect();
        let etcd = format!("etcd: {{hosts: [{}]}}", hosts.join(", "));
        Self::start_with_etcd(cluster, &etcd, extra_yaml)
    }

    /// Like [`Router::start`] with another `etcd:` section (one line of YAML), e.g. TLS.
    pub fn start_with_etcd(
        cluster: &Cluster,
        etcd_yaml: &str,
        extra_yaml: &str,
    ) -> anyhow::Result<Router> {
        Self::start_with_env(cluster, etcd_yaml, extra_yaml, &[])
    }

    /// Like [`Router::start_with_etcd`] with environment variables added (e.g.
    /// `NOTIFY_SOCKET`).
    pub fn start_with_env(
        cluster: &Cluster,
        etcd_yaml: &str,
        extra_yaml: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Router> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let (write_port, read_port, admin_port) = (free_port(), free_port(), free_port());
        let mut yaml = format!(
            "\
{etcd_yaml}
namespace: {ns}
scope: {scope}
listen: {{write: '127.0.0.1:{write_port}', read: '127.0.0.1:{read_port}', admin: '127.0.0.1:{admin_port}'}}
",
            ns = cluster.namespace(),
            scope = cluster.scope(),
        );
        yaml.push_str(extra_yaml);
        if !yaml.ends_with('\n') {
            yaml.push('\n');
        }
        let config_path = cluster.root().join(format!("router{n}.yml"));
        std::fs::write(&config_path, &yaml)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let mut cmd = Command::new(bin("patrol-router"));
        cmd.arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info,patrol_router=debug")
            .envs(env.iter().copied())
            .current_dir(cluster.root());
        let log = cluster.root().join(format!("router{n}.log"));
        let proc = Proc::spawn(format!("patrol-router {n}"), cmd, log)?;
        let mut router = Router {
            proc,
            write_port,
            read_port,
            admin_port,
            config_path,
        };
        router
            .wait_answering(START_TIMEOUT)
            .with_context(|| format!("router log tail:\n{}", router.proc.log_tail(40)))?;
        Ok(router)
    }

    /// Polls `/health` until it answers with any HTTP status, failing early if the router exits.
    fn wait_answering(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("{}/health", self.admin_url());
        let proc = &mut self.proc;
        block_on_thread(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()?;
            let deadline = Instant::now() + timeout;
            loop {
                if !proc.is_running() {
                    bail!("patrol-router exited ({:?})", proc.exit_status());
                }
                let last = match http.get(&url).send().await {
                    Ok(_) => return Ok(()),
                    Err(e) => format!("GET {url}: {e}"),
                };
                if Instant::now() >= deadline {
                    bail!("patrol-router not answering after {timeout:?} (last: {last})");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })?
    }

    pub fn write_port(&self) -> u16 {
        self.write_port
    }

    pub fn read_port(&self) -> u16 {
        self.read_port
    }

    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// `http://127.0.0.1:<admin port>`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// Whether the router process is still running.
    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }

    /// `GET <admin>/<path>`: status code and body (5 s timeout).
    pub async fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let url = format!("{}{path}", self.admin_url());
        crate::util::http_get(&url).await
    }

    /// `GET /stats.json`, parsed.
    pub async fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.get("/stats.json").await?;
        if status != 200 {
            bail!("GET /stats.json: HTTP {status}: {body}");
        }
        serde_json::from_str(&body).with_context(|| format!("parsing /stats.json: {body}"))
    }

    /// `GET /metrics` (Prometheus text).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let (status, body) = self.get("/metrics").await?;
        if status != 200 {
            bail!("GET /metrics: HTTP {status}: {body}");
        }
        Ok(body)
    }

    /// The tokio_postgres config of a superuser session through router port `port`.
    pub fn pg_config(&self, port: u16) -> tokio_postgres::Config {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(port)
            .user("postgres")
            .password("supersecret")
            .dbname("postgres")
            .connect_timeout(Duration::from_secs(60));
        cfg
    }

    /// Connects through router port `port`; the connection task is spawned on the current
    /// runtime. The error is tokio_postgres's own (e.g. with the router's `DbError`).
    pub async fn try_connect(
        &self,
        port: u16,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let (client, conn) = self.pg_config(port).connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            // The error (if any) surfaces on the client's next query.
            let _ = conn.await;
        });
        Ok(client)
    }

    /// A superuser session through the write port.
    pub async fn connect_write(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.try_connect(self.write_port)
            .await
            .with_context(|| format!("connecting through the write port {}", self.write_port))
    }

    /// A superuser session through the read port.
    pub async fn connect_read(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.try_connect(self.read_port)
            .await
            .with_context(|| format!("connecting through the read port {}", self.read_port))
    }

    /// Everything the router logged so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.proc.kill();
        if std::thread::panicking() {
            eprintln!(
                "===== {} {} (last {DUMP_LINES} lines) =====\n{}",
                self.proc.name(),
                self.proc.log_path().display(),
                tail_lines(self.proc.log_path(), DUMP_LINES)
            );
        }
    }
}
