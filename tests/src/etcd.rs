//! `Etcd`: an etcd member on free loopback ports with its own temp data dir, killed and removed
//! on drop; alone (`Etcd::start`) or one of an [`EtcdCluster`] of several. Faults on each
//! member: `pause`/`resume` (SIGSTOP/SIGCONT), `terminate` (SIGTERM), `kill`, `restart`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::Signal;

use crate::ports::free_port;
use crate::process::Proc;
use crate::util::{block_on_thread, random_u64, tail_lines};

const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);

/// A running etcd member (v3 API on `endpoint()`).
#[derive(Debug)]
pub struct Etcd {
    // Field order matters: the process dies before its dir is removed.
    proc: Proc,
    extra_args: Vec<String>,
    client_port: u16,
    /// A second client listener with TLS ([`Etcd::start_tls`]).
    tls_port: Option<u16>,
    peer_port: u16,
    /// Its name and place in its etcd cluster.
    membership: Membership,
    /// Stopped by the test ([`Etcd::kill`], [`Etcd::terminate`]) and not restarted since.
    down: bool,
    /// Frozen by [`Etcd::pause`] and not resumed since.
    paused: AtomicBool,
    dir: tempfile::TempDir,
}

/// A member's `--name`, `--initial-cluster` and `--initial-cluster-token`.
#[derive(Debug, Clone)]
struct Membership {
    name: String,
    initial_cluster: String,
    token: String,
}

impl Membership {
    fn alone(peer_port: u16) -> Membership {
        Membership {
            name: "default".into(),
            initial_cluster: format!("default=http://127.0.0.1:{peer_port}"),
            token: format!("t{:016x}", random_u64()),
        }
    }
}

fn etcd_binary() -> PathBuf {
    let usr = Path::new("/usr/bin/etcd");
    if usr.is_file() {
        usr.to_path_buf()
    } else {
        PathBuf::from("etcd")
    }
}

impl Etcd {
    /// Starts etcd and waits (up to 20 s) until `/health` reports healthy.
    pub fn start() -> anyhow::Result<Etcd> {
        Self::start_with(&[])
    }

    /// Like [`Etcd::start`] with extra command-line flags (e.g. `--quota-backend-bytes=...`).
    /// Retries with new ports if etcd exits early (a port taken between check and bind).
    pub fn start_with(extra_args: &[&str]) -> anyhow::Result<Etcd> {
        Self::start_inner(extra_args, false)
    }

    /// Like [`Etcd::start`], plus a TLS client listener ([`Etcd::tls_host_port`]) with
    /// `certs`' server certificate that requires a client certificate from the same CA. The
    /// plain listener stays, for the harness's own checks.
    pub fn start_tls(certs: &TestCerts) -> anyhow::Result<Etcd> {
        let flags = [
            format!("--cert-file={}", certs.server_cert().display()),
            format!("--key-file={}", certs.server_key().display()),
            format!("--trusted-ca-file={}", certs.ca().display()),
            "--client-cert-auth".to_string(),
        ];
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        Self::start_inner(&flags, true)
    }

    fn start_inner(extra_args: &[&str], tls: bool) -> anyhow::Result<Etcd> {
        let mut dir = tempfile::Builder::new()
            .prefix("patrol-etcd-")
            .tempdir()
            .context("creating etcd temp dir")?;
        let extra_args: Vec<String> = extra_args.iter().map(|s| s.to_string()).collect();
        let mut last_err = None;
        for _ in 0..3 {
            let client_port = free_port();
            let tls_port = tls.then(free_port);
            let peer_port = free_port();
            remove_data(dir.path())?;
            let membership = Membership::alone(peer_port);
            let proc = spawn(
                dir.path(),
                client_port,
                tls_port,
                peer_port,
                &membership,
                &extra_args,
            )?;
            let mut etcd = Etcd {
                proc,
                extra_args: extra_args.clone(),
                client_port,
                tls_port,
                peer_port,
                membership,
                down: false,
                paused: AtomicBool::new(false),
                dir,
            };
            match etcd.wait_healthy(HEALTH_TIMEOUT) {
                Ok(()) => return Ok(etcd),
                Err(e) if !etcd.proc.is_running() => {
                    last_err = Some(e);
                    etcd.proc.kill();
                    // Take the dir back out for the next attempt.
                    let Etcd { dir: d, .. } = etcd;
                    dir = d;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("the loop ran at least once")).context("etcd did not start")
    }

    /// `http://127.0.0.1:<client port>`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:<client port>`, as Patroni's `etcd3.hosts` wants it.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `127.0.0.1:<TLS client port>` of an etcd from [`Etcd::start_tls`].
    pub fn tls_host_port(&self) -> Option<String> {
        self.tls_port.map(|p| format!("127.0.0.1:{p}"))
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    pub fn proc(&self) -> &Proc {
        &self.proc
    }

    /// The member's `--name` (`default` when alone, `e0`, `e1`, ... in an [`EtcdCluster`]).
    pub fn name(&self) -> &str {
        &self.membership.name
    }

    /// Freezes etcd (SIGSTOP): connections stay open, requests hang.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.proc.signal(Signal::SIGSTOP)?;
        self.paused.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Thaws etcd after [`Etcd::pause`] (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.proc.signal(Signal::SIGCONT)?;
        self.paused.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Neither stopped nor frozen by the test: the harness's own reads may go to it.
    pub fn is_serving(&self) -> bool {
        !self.down && !self.paused.load(Ordering::SeqCst)
    }

    /// SIGKILLs etcd; its data dir stays, so [`Etcd::restart`] brings the same data back.
    pub fn kill(&mut self) {
        self.proc.kill();
        self.down = true;
        self.paused.store(false, Ordering::SeqCst);
    }

    /// Stops etcd cleanly (SIGTERM, then SIGKILL if it is still there after 10 s).
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        let _ = self.proc.signal(Signal::SIGCONT);
        self.proc.signal(Signal::SIGTERM)?;
        let exited = self.proc.wait_exit(Duration::from_secs(10)).is_some();
        self.kill();
        anyhow::ensure!(exited, "etcd {} ignored SIGTERM for 10 s", self.name());
        Ok(())
    }

    /// Kills etcd if running and starts it again on the same ports and data, then waits
    /// until healthy (for a member of a cluster: until the cluster has a leader).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.proc = spawn(
            self.dir.path(),
            self.client_port,
            self.tls_port,
            self.peer_port,
            &self.membership,
            &self.extra_args,
        )?;
        self.down = false;
        self.wait_healthy(HEALTH_TIMEOUT)
    }

    pub fn log_path(&self) -> &Path {
        self.proc.log_path()
    }

    /// The last `n` lines of etcd's log.
    pub fn log_tail(&self, n: usize) -> String {
        tail_lines(self.proc.log_path(), n)
    }

    /// A connected etcd v3 client.
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        etcd_client::Client::connect([self.endpoint()], Some(opts))
            .await
            .with_context(|| format!("connecting to etcd at {}", self.endpoint()))
    }

    /// `GET /metrics` (Prometheus text: gRPC calls started, watchers, slow watchers, ...).
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("{}/metrics", self.endpoint());
        let (status, body) = crate::util::http_get(&url).await?;
        anyhow::ensure!(status == 200, "GET {url}: HTTP {status}");
        Ok(body)
    }

    /// Polls `/health` until it says `"health":"true"`, failing early if etcd exits.
    fn wait_healthy(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let url = format!("{}/health", self.endpoint());
        let proc = &mut self.proc;
        block_on_thread(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()?;
            let deadline = Instant::now() + timeout;
            loop {
                if !proc.is_running() {
                    bail!(
                        "etcd exited ({:?}) before becoming healthy; log tail:\n{}",
                        proc.exit_status(),
                        proc.log_tail(30)
                    );
                }
                let last = match http.get(&url).send().await {
                    Ok(resp) => match resp.json::<serde_json::Value>().await {
                        Ok(v) if v["health"] == "true" => return Ok(()),
                        Ok(v) => format!("unhealthy: {v}"),
                        Err(e) => format!("bad /health body: {e}"),
                    },
                    Err(e) => format!("GET {url}: {e}"),
                };
                if Instant::now() >= deadline {
                    bail!(
                        "etcd not healthy after {timeout:?} (last: {last}); log tail:\n{}",
                        proc.log_tail(30)
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })?
    }
}

/// An etcd cluster of one or more members on loopback, each with its own ports and data dir
/// (`--initial-cluster` naming them all), as production runs it with three. Each member can be
/// stopped, frozen and restarted on its own ([`EtcdCluster::member`]).
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Etcd>,
}

impl EtcdCluster {
    /// Starts `n` members at once and waits (up to 20 s each) until every one reports healthy
    /// (the cluster has a leader). Retries with new ports if a member exits early.
    pub fn start(n: usize) -> anyhow::Result<EtcdCluster> {
        anyhow::ensure!(n > 0, "an etcd cluster has at least one member");
        if n == 1 {
            return Ok(EtcdCluster {
                members: vec![Etcd::start()?],
            });
        }
        let mut last_err = None;
        for _ in 0..3 {
            let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
            let initial_cluster = ports
                .iter()
                .enumerate()
                .map(|(i, (_, peer))| format!("e{i}=http://127.0.0.1:{peer}"))
                .collect::<Vec<_>>()
                .join(",");
            let token = format!("t{:016x}", random_u64());
            let mut members = Vec::with_capacity(n);
            for (i, &(client_port, peer_port)) in ports.iter().enumerate() {
                let dir = tempfile::Builder::new()
                    .prefix(&format!("patrol-etcd-e{i}-"))
                    .tempdir()
                    .context("creating etcd temp dir")?;
                let membership = Membership {
                    name: format!("e{i}"),
                    initial_cluster: initial_cluster.clone(),
                    token: token.clone(),
                };
                let proc = spawn(dir.path(), client_port, None, peer_port, &membership, &[])?;
                members.push(Etcd {
                    proc,
                    extra_args: Vec::new(),
                    client_port,
                    tls_port: None,
                    peer_port,
                    membership,
                    down: false,
                    paused: AtomicBool::new(false),
                    dir,
                });
            }
            let mut started = Ok(());
            for m in &mut members {
                started = m.wait_healthy(HEALTH_TIMEOUT);
                if started.is_err() {
                    break;
                }
            }
            match started {
                Ok(()) => return Ok(EtcdCluster { members }),
                Err(e) if members.iter_mut().any(|m| !m.proc.is_running()) => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("the loop ran at least once")).context("etcd cluster did not start")
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn member(&self, i: usize) -> &Etcd {
        &self.members[i]
    }

    pub fn member_mut(&mut self, i: usize) -> &mut Etcd {
        &mut self.members[i]
    }

    pub fn members(&self) -> &[Etcd] {
        &self.members
    }

    /// SIGKILLs every member.
    pub fn kill_all(&mut self) {
        self.members.iter_mut().for_each(Etcd::kill);
    }

    /// Every member's `127.0.0.1:<client port>`, in order (Patroni's `etcd3.hosts`).
    pub fn host_ports(&self) -> Vec<String> {
        self.members.iter().map(Etcd::host_port).collect()
    }

    /// Every member's `http://127.0.0.1:<client port>`, in order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Etcd::endpoint).collect()
    }

    /// The index of the member etcd's raft has elected leader, as the serving members see it.
    pub async fn leader_index(&self) -> anyhow::Result<usize> {
        let mut ids = Vec::new();
        let mut leader = None;
        for m in &self.members {
            if !m.is_serving() {
                ids.push(None);
                continue;
            }
            let st = m.client().await?.status().await?;
            ids.push(st.header().map(|h| h.member_id()));
            leader = leader.or(Some(st.leader()).filter(|l| *l != 0));
        }
        let leader = leader.context("no serving member knows a leader")?;
        ids.iter()
            .position(|id| *id == Some(leader))
            .context("the raft leader is not a serving member")
    }

    /// Makes member `to` etcd's raft leader (`MoveLeader`, sent to the current leader), and
    /// waits until every serving member sees it so.
    pub async fn move_leader(&self, to: usize) -> anyhow::Result<()> {
        let target = self.members[to]
            .client()
            .await?
            .status()
            .await?
            .header()
            .context("status without a header")?
            .member_id();
        let from = self.leader_index().await?;
        if from != to {
            self.members[from]
                .client()
                .await?
                .move_leader(target)
                .await
                .with_context(|| format!("moving etcd's leader from e{from} to e{to}"))?;
        }
        crate::wait_until(
            &format!("e{to} to be etcd's leader"),
            Duration::from_secs(20),
            || async { Ok((self.leader_index().await? == to).then_some(())) },
        )
        .await
    }

    /// A connected client for the harness's own reads and writes: to the members the test has
    /// neither stopped nor frozen (to all of them when there is none, so the call fails as
    /// etcd does).
    pub async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let serving: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.is_serving())
            .map(Etcd::endpoint)
            .collect();
        let endpoints = if serving.is_empty() {
            self.endpoints()
        } else {
            serving
        };
        let opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5));
        etcd_client::Client::connect(&endpoints, Some(opts))
            .await
            .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))
    }
}

/// Removes a data dir left by an attempt that failed to start.
fn remove_data(dir: &Path) -> anyhow::Result<()> {
    let data = dir.join("data");
    if data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
    }
    Ok(())
}

fn spawn(
    dir: &Path,
    client_port: u16,
    tls_port: Option<u16>,
    peer_port: u16,
    membership: &Membership,
    extra: &[String],
) -> anyhow::Result<Proc> {
    let mut client = format!("http://127.0.0.1:{client_port}");
    if let Some(p) = tls_port {
        client.push_str(&format!(",https://127.0.0.1:{p}"));
    }
    let peer = format!("http://127.0.0.1:{peer_port}");
    let mut cmd = Command::new(etcd_binary());
    // Keep the developer's ETCD_* settings out of the test etcd.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ETCD") {
            cmd.env_remove(k);
        }
    }
    cmd.arg(format!("--name={}", membership.name))
        .arg(format!("--data-dir={}", dir.join("data").display()))
        .arg(format!("--listen-client-urls={client}"))
        .arg(format!("--advertise-client-urls={client}"))
        .arg(format!("--listen-peer-urls={peer}"))
        .arg(format!("--initial-advertise-peer-urls={peer}"))
        .arg(format!("--initial-cluster={}", membership.initial_cluster))
        .arg("--initial-cluster-state=new")
        .arg(format!("--initial-cluster-token={}", membership.token))
        .arg("--logger=zap")
        .arg("--log-outputs=stderr")
        .args(extra)
        .current_dir(dir);
    Proc::spawn("etcd", cmd, dir.join("etcd.log"))
}

/// A test CA with a server certificate for 127.0.0.1 and a client certificate, made with the
/// `openssl` tool in a world-readable temp dir (agents run as another user and read them).
#[derive(Debug)]
pub struct TestCerts {
    dir: tempfile::TempDir,
}

impl TestCerts {
    pub fn generate() -> anyhow::Result<TestCerts> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("patrol-certs-")
            .tempdir()
            .context("creating the certificates' temp dir")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let run = |args: &[&str]| -> anyhow::Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
                .context("running openssl")?;
            if !out.status.success() {
                bail!(
                    "openssl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(())
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        run(&[
            &[
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=patrol test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ][..],
            &ec[..],
        ]
        .concat())?;
        for (name, cn, ext) in [
            (
                "server",
                "127.0.0.1",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
            ),
            ("client", "patrol", "extendedKeyUsage=clientAuth\n"),
        ] {
            let (key, csr, pem, extfile) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            std::fs::write(dir.path().join(&extfile), ext)?;
            run(&[
                &[
                    "req",
                    "-subj",
                    &format!("/CN={cn}"),
                    "-keyout",
                    &key,
                    "-out",
                    &csr,
                ][..],
                &ec[..],
            ]
            .concat())?;
            run(&[
                "x509",
                "-req",
                "-days",
                "2",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-extfile",
                &extfile,
                "-out",
                &pem,
            ])?;
        }
        for f in std::fs::read_dir(dir.path())? {
            std::fs::set_permissions(f?.path(), std::fs::Permissions::from_mode(0o644))?;
        }
        Ok(TestCerts { dir })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.pem")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }
}
